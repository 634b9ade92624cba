"""Trove's prepare cast and conductor, played by agent_rpc, against a real private broker.

In place of the guest, an RPC server on the host listens as trove's agent does (topic
guestagent.<id>, exchange trove, version 1.3, trove's serializers), and answers `prepare` as
trove's agent does: it reads the context's notification, then casts heartbeats and
notify_end to trove-conductor through the serializers trove.conductor.api uses.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler.boottest import agent_rpc
from assembler.boottest.datastore import prepare_kwargs
from assembler.boottest.rabbit import SERVER, Broker
from assembler.run import run

with warnings.catch_warnings():  # the OpenStack stack's import-time deprecation noise
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.simplefilter("ignore", DeprecationWarning)
    import oslo_messaging
    from oslo_config import cfg
    from oslo_messaging.rpc import dispatcher
    from trove.common.context import TroveContext
    from trove.common.notification import DBaaSInstanceCreate
    from trove.common.rpc.conductor_guest_serializer import ConductorGuestSerializer
    from trove.common.rpc.secure_serializer import SecureSerializer
    from trove.common.rpc.serializer import TroveRequestContextSerializer
    from trove.common.serializable_notification import SerializableNotification

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    if not SERVER.exists():  # a skip would hide a host that cannot run the boot test
        pytest.fail(f"{SERVER} is missing: run `make setup` (apt package rabbitmq-server)")
    with Broker() as b:
        yield b


def _guest() -> str:
    return str(uuid.uuid4())


class FakeAgent:
    """trove's guest agent as far as prepare goes (trove.guestagent.datastore.manager):
    `statuses` are the heartbeats it casts, in order, then notify_end unless `end` is False."""

    def __init__(
        self, url: str, guest_id: str, statuses: tuple[str, ...], end: bool = True
    ) -> None:
        self.target = oslo_messaging.Target(version="1.3")  # trove's API_LATEST_VERSION
        self.guest_id = guest_id
        self.statuses = statuses
        self.end = end
        self.prepared: list[tuple[Any, dict[str, Any]]] = []
        self.called = threading.Event()
        conf = agent_rpc.messaging_conf(cfg, oslo_messaging)
        self.transport = oslo_messaging.get_rpc_transport(conf, url=url)
        self.conductor = oslo_messaging.get_rpc_client(
            self.transport,
            oslo_messaging.Target(topic="trove-conductor", version="1.0"),
            # trove.conductor.api.API.get_client: ConductorGuestSerializer, no key.
            serializer=ConductorGuestSerializer(TroveRequestContextSerializer(None), None),
        )
        self.server = oslo_messaging.get_rpc_server(
            self.transport,
            oslo_messaging.Target(topic=f"guestagent.{guest_id}", server=guest_id, version="1.3"),
            [self],
            serializer=SecureSerializer(TroveRequestContextSerializer(None), None),
            access_policy=dispatcher.DefaultRPCAccessPolicy,
        )
        self._worker: threading.Thread | None = None

    def rpc_ping(self, ctxt: Any) -> bool:
        return True

    def get_filesystem_stats(self, ctxt: Any, fs_path: str | None) -> dict[str, Any]:
        return {"total": 0.97, "free": 10**9, "used": 0.01}  # a 1 GB volume, as trove's units

    def prepare(self, ctxt: Any, **kwargs: Any) -> None:
        # What the real agent does first (EndNotification): fails without trove_notification.
        ctxt.notification.payload.update({"instance_id": self.guest_id})
        self.prepared.append((ctxt, kwargs))
        # Started before it is published: __exit__ may run the moment `called` is set.
        worker = threading.Thread(target=self._report, args=(ctxt,), daemon=True)
        worker.start()
        self._worker = worker
        self.called.set()

    def _report(self, ctxt: Any) -> None:
        for status in self.statuses:
            time.sleep(0.3)
            # trove.guestagent.datastore.service.BaseDbStatus.set_status: a fresh context.
            self.conductor.prepare(version="1.0").cast(
                TroveContext(), "heartbeat", instance_id=self.guest_id,
                sent=time.time(), payload={"service_status": status},
            )  # fmt: skip
        if self.end:
            serialized = SerializableNotification.serialize(ctxt, ctxt.notification)
            self.conductor.prepare(version="1.0").cast(
                ctxt, "notify_end", serialized_notification=serialized, notification_args={}
            )

    def __enter__(self) -> FakeAgent:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._worker is not None:
            self._worker.join(10)
        self.server.stop()
        agent_rpc._wait_stopped(self.server)
        self.transport.cleanup()


def _kwargs() -> dict[str, Any]:
    return prepare_kwargs("postgresql", "15", 1024, "appdb", "app", "s3cret")


def test_prepare_reaches_the_agent_as_trove_s_taskmanager_sends_it(broker: Broker) -> None:
    guest = _guest()
    since = time.monotonic()
    with FakeAgent(broker.host_url, guest, ("building", "healthy")) as agent:
        answer = agent_rpc.prepare_database(
            broker.host_url, guest, _kwargs(), 20, since, "postgresql"
        )
    assert answer["ok"], answer
    assert [s["status"] for s in answer["statuses"]] == ["building", "healthy"]
    assert all(0 < s["seconds"] < 10 for s in answer["statuses"])
    assert [n["method"] for n in answer["notifications"]] == ["notify_end"]
    assert answer["detail"].startswith("healthy ") and "prepare ended at" in answer["detail"]
    ((ctxt, kwargs),) = agent.prepared
    # Deserialized by trove's own serializer into the notification trove's API attached.
    assert isinstance(ctxt, TroveContext)
    assert isinstance(ctxt.notification, DBaaSInstanceCreate)
    payload = ctxt.notification.payload
    assert payload["request_id"] == answer["request_id"] == ctxt.request_id
    assert payload["server_type"] == "guest"
    assert {"tenant_id", "client_ip", "server_ip", "datastore_version"} <= set(payload)
    assert kwargs == _kwargs() | {"config_contents": kwargs["config_contents"]}
    assert kwargs["ds_version"] == "15" and isinstance(kwargs["config_contents"], str)


def test_failed_to_spawn_fails_at_once(broker: Broker) -> None:
    guest = _guest()
    t0 = time.monotonic()
    with FakeAgent(broker.host_url, guest, ("building", "failed to spawn"), end=False):
        answer = agent_rpc.prepare_database(broker.host_url, guest, _kwargs(), 30, t0)
    assert not answer["ok"]
    assert answer["detail"].startswith("the agent reported 'failed to spawn' ")
    assert [s["status"] for s in answer["statuses"]] == ["building", "failed to spawn"]
    assert time.monotonic() - t0 < 10  # not the 30 s deadline


def test_an_agent_that_goes_quiet_ends_at_the_deadline(broker: Broker) -> None:
    guest = _guest()
    t0 = time.monotonic()
    with FakeAgent(broker.host_url, guest, ("building",), end=False) as agent:
        answer = agent_rpc.prepare_database(broker.host_url, guest, _kwargs(), 3, t0)
    assert agent.called.is_set()
    assert not answer["ok"]
    assert answer["detail"].startswith("no healthy status within 3 s; heard: building (")
    assert [s["status"] for s in answer["statuses"]] == ["building"]
    # The wait itself; stopping the conductor's RPC server adds ~2 s of oslo.messaging polling.
    assert 3 <= answer["seconds"] < 4, answer["seconds"]


def test_prepare_cast_before_the_agent_listens_is_kept(broker: Broker) -> None:
    """cast_prepare makes the agent's queue first, as trove's API does: an agent that starts
    consuming only later still gets prepare."""
    guest = _guest()
    agent_rpc.cast_prepare(broker.host_url, guest, _kwargs(), manager="postgresql")
    with FakeAgent(broker.host_url, guest, ()) as agent:
        assert agent.called.wait(10), "the cast was dropped"


def test_other_guests_heartbeats_are_not_ours(broker: Broker) -> None:
    guest, other = _guest(), _guest()
    with (
        agent_rpc.Conductor(broker.host_url) as conductor,
        FakeAgent(broker.host_url, other, ("healthy",)) as agent,
    ):
        agent_rpc.cast_prepare(broker.host_url, other, _kwargs())
        assert conductor.wait_for(lambda h: len(h) >= 2, time.monotonic() + 10)
        assert agent.called.is_set()
        assert conductor.heard(guest) == []
        assert [h.status for h in conductor.heard(other) if h.method == "heartbeat"] == ["healthy"]


def test_the_child_process_runs_prepare_from_its_spec_file(broker: Broker, tmp_path: Path) -> None:
    """What the harness runs: the old argv, then a prepare spec; one JSON line back."""
    guest = _guest()
    spec = tmp_path / "prepare.json"
    spec.write_text(json.dumps(agent_rpc.prepare_spec(_kwargs(), 20, "postgresql")))
    since = time.monotonic()
    argv = [sys.executable, "-m", "assembler.boottest.agent_rpc", broker.host_url, guest,
            "20", repr(since), "/var/lib/postgresql", "1.0"]  # fmt: skip
    with FakeAgent(broker.host_url, guest, ("building", "healthy")) as agent:
        old = json.loads(run(argv, timeout=60).strip().splitlines()[-1])
        new = json.loads(run([*argv, str(spec)], timeout=60).strip().splitlines()[-1])
    assert set(old) == {"rpc", "volume"} and old["volume"]["ok"], old  # unchanged without spec
    assert new["rpc"]["ok"] and new["volume"]["ok"], new
    assert new["prepare"]["ok"], new["prepare"]
    assert [s["status"] for s in new["prepare"]["statuses"]] == ["building", "healthy"]
    assert len(agent.prepared) == 1

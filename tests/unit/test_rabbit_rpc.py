"""The boot test's message bus: a private RabbitMQ broker, and calling a guest agent over it.

Tests marked `broker` run a real broker on 127.0.0.1 (~4 s to start) and, in place of the
guest, an RPC server on the host that listens as trove's agent does: same topic, exchange,
version, access policy and trove's own serializers, so agent_rpc's calls are decoded exactly
as the real agent would decode them. The rest are pure.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler.boottest import agent_rpc

with warnings.catch_warnings():  # the OpenStack stack's import-time deprecation noise
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.simplefilter("ignore", DeprecationWarning)
    import oslo_messaging
    from oslo_config import cfg
    from oslo_messaging.rpc import dispatcher
    from trove.common.context import TroveContext
    from trove.common.rpc.secure_serializer import SecureSerializer
    from trove.common.rpc.serializer import TroveRequestContextSerializer

from assembler.boottest.agent_rpc import AgentRpcError, BrokerUnreachable, BusAddress
from assembler.boottest.rabbit import SERVER, Broker, free_ports, summarize_failure
from assembler.run import run

GUEST_ID = "0e5c1b2a-0000-4000-8000-00000000beef"


# Pure parts ------------------------------------------------------------------------------


def test_broker_urls() -> None:
    broker = Broker()
    broker.port = 41234
    assert broker.host_url == "rabbit://guest:guest@127.0.0.1:41234/"
    assert (
        broker.url_from_guest("169.254.0.100", 5672) == "rabbit://guest:guest@169.254.0.100:5672/"
    )
    fwd = broker.forward("169.254.0.100", 5672)
    assert (fwd.guest_addr, fwd.guest_port, fwd.host_port) == ("169.254.0.100", 5672, 41234)


def test_bus_address_from_transport_url() -> None:
    addr = BusAddress.parse("rabbit://guest:gu%40st@127.0.0.1:5999/")
    assert addr == BusAddress("127.0.0.1", 5999, "guest", "gu@st", "/")
    assert BusAddress.parse("rabbit://u:p@h/vh").vhost == "vh"
    with pytest.raises(Exception, match="single-host rabbit://"):
        BusAddress.parse("rabbit://u:p@h1:1,u:p@h2:2/")


def test_failure_summary_prefers_erlangs_last_words() -> None:
    log = ["2026 [info] <0.1.0> starting", "2026 [error] <0.2.0> reason: eaddrinuse"]
    out = ["banner", "init terminating in do_boot ({error,{could_not_start_listener}})"]
    text = summarize_failure(log, out)
    assert text.startswith("a port it needs is in use: init terminating in do_boot")
    assert summarize_failure([*log[:1], "x [error] <0.3.0> boom"], ["banner"]) == "boom"
    assert summarize_failure([], []) == "no log output"


# A real broker ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    if not SERVER.exists():  # a skip would hide a host that cannot run the boot test
        pytest.fail(f"{SERVER} is missing: run `make setup` (apt package rabbitmq-server)")
    with Broker() as b:
        yield b


class FakeAgent:
    """What trove's guestagent Manager answers to the two read-only calls we make."""

    def __init__(self, mount_point: Path) -> None:
        # trove's RpcService gives the manager the server's target: API_LATEST_VERSION 1.3.
        self.target = oslo_messaging.Target(version="1.3")
        self.mount_point = mount_point
        self.contexts: list[Any] = []

    def rpc_ping(self, context: Any) -> bool:
        self.contexts.append(context)
        return True

    def get_filesystem_stats(self, context: Any, fs_path: str | None) -> dict[str, Any]:
        # Like the agent: statvfs of its own mount point whatever fs_path says; GB, bytes, GB.
        self.contexts.append(context)
        st = os.statvfs(self.mount_point)
        total, free = st.f_blocks * st.f_bsize, st.f_bfree * st.f_bsize
        return {
            "block_size": st.f_bsize,
            "total_blocks": st.f_blocks,
            "free_blocks": st.f_bfree,
            "avail_blocks": st.f_bavail,
            "total": round(total / 1024**3, 2),
            "free": free,
            "used": round((total - free) / 1024**3, 2),
            "mgr_extra_info": {},
        }


class BrokenAgent(FakeAgent):
    def get_filesystem_stats(self, context: Any, fs_path: str | None) -> dict[str, Any]:
        raise RuntimeError(f"Filesystem not found ({self.mount_point})")  # trove's own words


class AgentServer:
    """An RPC server on the host standing in for the guest's agent (trove.cmd.guest)."""

    def __init__(self, url: str, guest_id: str, endpoint: FakeAgent) -> None:
        conf = agent_rpc.messaging_conf(cfg, oslo_messaging)
        self.transport = oslo_messaging.get_rpc_transport(conf, url=url)
        target = oslo_messaging.Target(
            topic=agent_rpc.topic_of(guest_id), server=guest_id, version="1.3"
        )
        self.server = oslo_messaging.get_rpc_server(
            self.transport,
            target,
            [endpoint],
            # The default executor, threading; the agent uses eventlet: the wire is the same.
            serializer=SecureSerializer(TroveRequestContextSerializer(None), None),
            access_policy=dispatcher.DefaultRPCAccessPolicy,
        )

    def __enter__(self) -> AgentServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.server.wait()
        self.transport.cleanup()


def _descendants(roots: tuple[int, ...]) -> set[int]:
    """roots and every process below them, from /proc."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def _listeners() -> list[tuple[str, int, set[int]]]:
    """(address, port, pids) of every listening TCP socket, from `ss -ltnpH`."""
    rows = []
    for line in run(["ss", "-ltnpH"]).splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        rows.append((addr.strip("[]").split("%")[0], int(port), pids))
    return rows


def _loopback(addr: str) -> bool:
    return addr not in ("*", "0.0.0.0", "::") and ipaddress.ip_address(addr).is_loopback


@pytest.mark.broker
def test_broker_listens_on_loopback_only(broker: Broker) -> None:
    assert broker.start_seconds is not None and broker.start_seconds < 30
    rows = _listeners()
    for port in broker.listen_ports:  # AMQP, Erlang distribution, epmd
        addrs = [addr for addr, p, _ in rows if p == port]
        assert addrs, f"nothing listens on {port}"
        assert all(_loopback(a) for a in addrs), f"port {port} listens on {addrs}"
    # Whatever else the broker's processes opened (management UI, a helper node) counts too.
    ours = _descendants(broker.pids)
    theirs = [(a, p) for a, p, pids in rows if pids & ours]
    assert {p for _, p in theirs} >= set(broker.listen_ports)
    assert all(_loopback(a) for a, _ in theirs), theirs


@pytest.mark.broker
def test_ping_and_filesystem_stats_reach_the_agent(broker: Broker, tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    with AgentServer(broker.host_url, GUEST_ID, agent):
        t0 = time.monotonic()
        assert agent_rpc.ping(broker.host_url, GUEST_ID, timeout=5) is True
        ping_seconds = time.monotonic() - t0
        stats = agent_rpc.filesystem_stats(broker.host_url, GUEST_ID, "/var/lib/mysql")
    assert ping_seconds < 3, f"rpc_ping round trip took {ping_seconds:.2f} s"
    assert stats["free"] == stats["free_blocks"] * stats["block_size"]
    assert 0 < stats["used"] <= stats["total"]
    # trove's serializer on the agent's side made a TroveContext of what we sent.
    assert len(agent.contexts) == 2
    assert all(isinstance(c, TroveContext) for c in agent.contexts)


@pytest.mark.broker
def test_agent_error_is_one_line(broker: Broker, tmp_path: Path) -> None:
    broken = GUEST_ID + "-broken"
    failed = r"^the agent failed get_filesystem_stats: RuntimeError: Filesystem not found \(/"
    with (
        AgentServer(broker.host_url, broken, BrokenAgent(tmp_path)),
        pytest.raises(AgentRpcError, match=failed) as caught,
    ):
        agent_rpc.filesystem_stats(broker.host_url, broken, "/var/lib/mysql")
    assert "\n" not in str(caught.value)


@pytest.mark.broker
def test_wrong_password_is_a_refused_login(broker: Broker) -> None:
    url = broker.host_url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(BrokerUnreachable, match=r"^broker at 127\.0\.0\.1:\d+ refused the login"):
        agent_rpc.ping(url, GUEST_ID)


@pytest.mark.broker
def test_no_agent_on_the_topic_fails_at_once(broker: Broker) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentRpcError, match=r"^no agent listens on topic guestagent\.nobody "):
        agent_rpc.ping(broker.host_url, "nobody", timeout=5)
    assert time.monotonic() - t0 < 5


@pytest.mark.broker
def test_agent_gone_after_listening_times_out(broker: Broker, tmp_path: Path) -> None:
    # The agent's queue outlives it (not auto-delete): calls then wait for their timeout.
    with AgentServer(broker.host_url, GUEST_ID + "-gone", FakeAgent(tmp_path)):
        pass
    t0 = time.monotonic()
    with pytest.raises(AgentRpcError, match=r"^no answer to rpc_ping on topic .* within 2 s"):
        agent_rpc.ping(broker.host_url, GUEST_ID + "-gone", timeout=2)
    assert 1.5 < time.monotonic() - t0 < 5


@pytest.mark.broker
def test_wait_for_agent_retries_until_it_answers(broker: Broker, tmp_path: Path) -> None:
    guest = GUEST_ID + "-late"
    started = threading.Event()
    stop = threading.Event()

    def late_agent() -> None:
        time.sleep(2.0)  # the agent is still booting
        with AgentServer(broker.host_url, guest, FakeAgent(tmp_path)):
            started.set()
            stop.wait(30)

    thread = threading.Thread(target=late_agent, daemon=True)
    thread.start()
    try:
        seconds = agent_rpc.wait_for_agent(broker.host_url, guest, 20, ping_timeout=2, interval=0.5)
    finally:
        stop.set()
        thread.join(10)
    assert started.is_set()
    assert 2.0 <= seconds < 10


@pytest.mark.broker
def test_wait_for_agent_gives_up_at_its_deadline(broker: Broker) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentRpcError, match=r"did not answer rpc_ping within 2 s; last: no agent"):
        agent_rpc.wait_for_agent(broker.host_url, "never", 2, ping_timeout=1, interval=0.5)
    assert time.monotonic() - t0 < 5


def test_unreachable_broker_fails_fast() -> None:
    port = free_ports(1)[0]
    url = f"rabbit://guest:guest@127.0.0.1:{port}/"
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=rf"^broker unreachable at 127\.0\.0\.1:{port}: "):
        agent_rpc.ping(url, GUEST_ID)
    with pytest.raises(BrokerUnreachable):
        agent_rpc.wait_for_agent(url, GUEST_ID, 30)
    assert time.monotonic() - t0 < 5


@pytest.mark.broker
def test_broker_stops_cleanly() -> None:
    with Broker() as b:
        pids, ports = b.pids, b.listen_ports
        assert agent_rpc.check_broker(BusAddress.parse(b.host_url)) is None
    assert not _descendants(pids) - set(pids)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert not [(a, p) for a, p, _ in _listeners() if p in ports]


@pytest.mark.broker
def test_volume_stats_must_be_the_attached_volume_s(broker: Broker, tmp_path: Path) -> None:
    """An agent whose mount point never got the volume answers for the root filesystem: the
    answer comes, but its size gives it away (here the host's filesystem stands in for it)."""
    guest = GUEST_ID + "-volume"
    with AgentServer(broker.host_url, guest, FakeAgent(tmp_path)):
        real = os.statvfs(tmp_path)
        size_gb = real.f_blocks * real.f_bsize / 1024**3
        small = agent_rpc.taskmanager_calls(broker.host_url, guest, 10, time.monotonic(), "/m", 1.0)
        right = agent_rpc.taskmanager_calls(
            broker.host_url, guest, 10, time.monotonic(), "/m", size_gb
        )
    assert small["rpc"]["ok"] and right["rpc"]["ok"]
    assert not small["volume"]["ok"], small
    assert "not the 1 GB volume" in small["volume"]["detail"]
    assert right["volume"]["ok"], right

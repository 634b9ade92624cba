"""Call a Trove guest agent over the message bus from the host, as Trove's taskmanager does.

What goes on the wire is what trove.guestagent.api.API sends (trove 26.0.0): an RPC call on
topic `guestagent.<guest_id>` of exchange `trove` (control_exchange), API version 1.0, the
request context serialized by trove's own serializers (SecureSerializer around
TroveRequestContextSerializer; key None as no instance_rpc_encr_key is injected), so the agent
deserializes it exactly as it would Trove's. We build those pieces ourselves instead of calling
trove.rpc.get_client, which reads a process-wide transport set up from trove's global config.

The oslo.messaging configuration is a private ConfigOpts, so nothing here touches the global
cfg.CONF that trove's modules register their options on.

Every failure is an AgentRpcError with one line saying what failed: the broker unreachable or
refusing the login, no agent consuming the topic yet, no answer in time, or the agent's error.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from assembler import cancel
from assembler.errors import AssemblerError, UsageError

log = logging.getLogger(__name__)

EXCHANGE = "trove"  # trove's control_exchange default; the agent's conf sets it too
API_VERSION = "1.0"  # trove.guestagent.api.API.API_BASE_VERSION: rpc_ping, get_filesystem_stats
DEFAULT_MOUNT_POINT = "/var/lib/mysql"  # [mysql] mount_point, where the agent mounts /dev/vdb
PING_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
RETRY_INTERVAL = 2.0  # between pings while the agent is still starting
STATS_KEYS = ("total", "free", "used")


class AgentRpcError(AssemblerError):
    """A call to the guest agent over the bus failed; the message says which part failed."""


class BrokerUnreachable(AgentRpcError):
    """The broker itself cannot be reached or refuses us: waiting for the agent is pointless."""


def topic_of(guest_id: str) -> str:
    """The agent's topic (trove.guestagent.api.API._get_routing_key)."""
    return f"guestagent.{guest_id}"


@dataclass(frozen=True)
class BusAddress:
    """The one broker of a `rabbit://user:password@host:port/vhost` transport URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> BusAddress:
        parts = urlsplit(url)
        if parts.scheme != "rabbit" or not parts.hostname or "," in parts.netloc:
            raise UsageError(f"not a single-host rabbit:// transport URL: {url}")
        return cls(
            host=parts.hostname,
            port=parts.port or 5672,
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(parts.path[1:]) or "/",
        )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _DropReturnedOnClose(logging.Filter):
    """Drop py-amqp's warning about a returned message arriving while a channel closes.

    We publish calls as mandatory, so an agent that is not listening yet is reported at once
    (MessageUndeliverable) instead of after the call timeout; the broker's basic.return then
    reaches a channel oslo.messaging is closing, and py-amqp warns about it on every ping.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "during closing channel" not in record.getMessage()


_AMQP_FILTER = _DropReturnedOnClose()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _libraries() -> tuple[ModuleType, ModuleType, Any, Any, Any]:
    """oslo.messaging, oslo.config and trove's pieces, imported when first needed.

    They come with the `boot` extra; the rest of the project runs without them.
    """
    try:
        with warnings.catch_warnings():
            # Import-time noise of the OpenStack stack (eventlet, oslo.service, webob warn
            # that they are deprecated), nothing the user of a boot test can act on.
            warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
            warnings.simplefilter("ignore", DeprecationWarning)
            import oslo_messaging
            from oslo_config import cfg
            from trove.common.context import TroveContext
            from trove.common.rpc.secure_serializer import SecureSerializer
            from trove.common.rpc.serializer import TroveRequestContextSerializer
    except ImportError as exc:
        raise UsageError(
            f"calling the guest agent needs the `boot` extra ({exc.name} is missing): "
            "pip install -e '.[boot]'"
        ) from exc
    return oslo_messaging, cfg, TroveContext, SecureSerializer, TroveRequestContextSerializer


def messaging_conf(cfg: ModuleType, oslo_messaging: ModuleType) -> Any:
    """A ConfigOpts of our own carrying every oslo.messaging option, control_exchange trove."""
    conf = cfg.ConfigOpts()
    # list_opts(): the library's own list of its options, for config generators.
    for group, opts in importlib.import_module("oslo_messaging.opts").list_opts():
        conf.register_opts(opts, group=group)
    # oslo.messaging 18 reads [oslo_messaging_metrics] and [oslo_messaging_tracing] from the
    # transport's conf but registers them on the global cfg.CONF only, and list_opts() omits
    # them; without them here the first call dies with NoSuchOptError.
    for module, group in (
        ("oslo_messaging._metrics.client", "oslo_messaging_metrics"),
        ("oslo_messaging._tracing.client", "oslo_messaging_tracing"),
    ):
        with contextlib.suppress(ImportError):
            opts = getattr(importlib.import_module(module), group, None)
            if opts is not None:
                conf.register_opts(opts, group=group)
    conf([], project="trove-image-assembler", default_config_files=[], default_config_dirs=[])
    conf.set_override("control_exchange", EXCHANGE)
    return conf


def check_broker(address: BusAddress, timeout: float = CONNECT_TIMEOUT) -> None:
    """Log in to the broker once, so an unreachable one fails now and in one line.

    oslo.messaging itself would retry the connection of its reply queue forever.
    """
    try:
        import amqp
    except ImportError as exc:
        raise UsageError("calling the guest agent needs the `boot` extra") from exc
    conn = amqp.Connection(
        host=str(address),
        userid=address.user,
        password=address.password,
        virtual_host=address.vhost,
        connect_timeout=timeout,
        read_timeout=timeout,  # something that accepts but never speaks AMQP fails too
        write_timeout=timeout,
    )
    try:
        conn.connect()
    except amqp.exceptions.AccessRefused as exc:
        raise BrokerUnreachable(f"broker at {address} refused the login of {address.user}") from exc
    except (OSError, amqp.exceptions.AMQPError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BrokerUnreachable(f"broker unreachable at {address}: {reason}") from exc
    finally:
        if not conn.connected:
            with contextlib.suppress(Exception):
                conn.collect()  # drop the socket: no close handshake on a failed connect
    with contextlib.suppress(Exception):
        conn.close()


class AgentClient:
    """One transport to the bus, calling one guest's agent: `with AgentClient(url, id) as c:`."""

    def __init__(self, url: str, guest_id: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.guest_id = guest_id
        self.topic = topic_of(guest_id)
        self.address = BusAddress.parse(url)
        self.connect_timeout = connect_timeout
        self._transport: Any = None
        self._client: Any = None
        self._messaging: Any = None
        self._context: Any = None

    def __enter__(self) -> AgentClient:
        messaging, cfg, context_cls, secure, request_context = _libraries()
        check_broker(self.address, self.connect_timeout)
        logging.getLogger("amqp").addFilter(_AMQP_FILTER)
        conf = messaging_conf(cfg, messaging)
        self._messaging = messaging
        self._transport = messaging.get_rpc_transport(conf, url=self.url)
        # The serializer stack trove.rpc.get_client builds; key None: no instance encryption.
        serializer = secure(request_context(None), None)
        self._client = messaging.get_rpc_client(
            self._transport,
            messaging.Target(topic=self.topic, version=API_VERSION),
            serializer=serializer,
            # Mandatory publish: with no queue bound to the topic the broker returns the
            # message and the call fails at once instead of after its timeout.
            transport_options=messaging.TransportOptions(at_least_once=True),
        )
        self._context = context_cls()  # an anonymous request context, as from a service
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport is not None:
            self._transport.cleanup()
            self._transport = None

    def call(self, method: str, timeout: float, **kwargs: Any) -> Any:
        """One synchronous call; every failure becomes an AgentRpcError naming what failed."""
        assert self._client is not None, "use AgentClient as a context manager"
        messaging = self._messaging
        prepared = self._client.prepare(version=API_VERSION, timeout=timeout, retry=0)
        try:
            return prepared.call(self._context, method, **kwargs)
        except messaging.MessageUndeliverable as exc:
            raise AgentRpcError(
                f"no agent listens on topic {self.topic} (exchange {EXCHANGE}) at {self.address}"
            ) from exc
        except messaging.MessagingTimeout as exc:
            raise AgentRpcError(
                f"no answer to {method} on topic {self.topic} within {timeout:.0f} s "
                "(its queue exists, but nothing consumed the call)"
            ) from exc
        except messaging.MessageDeliveryFailure as exc:
            raise BrokerUnreachable(f"broker unreachable at {self.address}: {exc}") from exc
        except messaging.RemoteError as exc:  # an exception oslo.messaging could not rebuild
            raise AgentRpcError(
                f"the agent failed {method}: {exc.exc_type}: {_first_line(exc.value)}"
            ) from exc
        except messaging.MessagingException as exc:
            raise AgentRpcError(f"{method} on topic {self.topic} failed: {exc}") from exc
        except Exception as exc:
            # The agent's own exceptions come back rebuilt: trove's and other non-builtin
            # ones as "<Name>_Remote" subclasses, builtins as themselves; both carry the
            # remote traceback after their message.
            name = type(exc).__name__.removesuffix("_Remote")
            text = str(exc)
            remote = type(exc).__module__.endswith("_Remote") or "Traceback (most" in text
            where = f"the agent failed {method}" if remote else f"{method} on {self.topic} failed"
            raise AgentRpcError(f"{where}: {name}: {_first_line(text)}") from exc

    def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """rpc_ping: the agent's RPC server is up and answers (trove's answer is True)."""
        answer = self.call("rpc_ping", timeout)
        if answer is not True:
            raise AgentRpcError(f"rpc_ping on topic {self.topic} answered {answer!r}, not True")
        return True

    def filesystem_stats(
        self, fs_path: str | None = DEFAULT_MOUNT_POINT, timeout: float = PING_TIMEOUT
    ) -> dict[str, Any]:
        """get_filesystem_stats: the agent's volume, as statvfs of its mount point sees it.

        The agent answers for its configured `[<manager>] mount_point` whatever fs_path says
        (trove itself sends None); total and used are GB, free is bytes.
        """
        answer = self.call("get_filesystem_stats", timeout, fs_path=fs_path)
        if not isinstance(answer, dict) or not all(
            isinstance(answer.get(k), int | float) for k in STATS_KEYS
        ):
            raise AgentRpcError(
                f"get_filesystem_stats on topic {self.topic} answered {answer!r}, "
                f"not a dict with {', '.join(STATS_KEYS)}"
            )
        return answer


def ping(url: str, guest_id: str, timeout: float = PING_TIMEOUT) -> bool:
    """One rpc_ping to guest_id's agent through the broker at url; True or AgentRpcError."""
    with AgentClient(url, guest_id) as client:
        return client.ping(timeout)


def filesystem_stats(
    url: str, guest_id: str, fs_path: str | None = DEFAULT_MOUNT_POINT, timeout: float = 10.0
) -> dict[str, Any]:
    """get_filesystem_stats from guest_id's agent: a dict with total, free and used."""
    with AgentClient(url, guest_id) as client:
        return client.filesystem_stats(fs_path, timeout)


def _attempts(deadline: float, interval: float) -> Iterator[int]:
    """Attempt numbers until the deadline, sleeping between attempts, cancel-aware."""
    attempt = 0
    while True:
        cancel.check()
        attempt += 1
        yield attempt
        if time.monotonic() + interval > deadline:
            return
        time.sleep(interval)


def wait_for_agent(
    url: str,
    guest_id: str,
    deadline_seconds: float,
    ping_timeout: float = PING_TIMEOUT,
    interval: float = RETRY_INTERVAL,
    since: float | None = None,
) -> float:
    """Ping until the agent first answers; return the seconds it took.

    Seconds count from `since` (a time.monotonic() value, e.g. when QEMU started) or from
    this call. The real agent needs ~80 s under TCG before its RPC server exists, so every
    ping is short and failures are retried until the deadline; a broker that cannot be
    reached fails at once, since waiting will not bring it.
    """
    started = time.monotonic() if since is None else since
    deadline = time.monotonic() + deadline_seconds
    last = "no attempt made"
    with AgentClient(url, guest_id) as client:
        for attempt in _attempts(deadline, interval):
            timeout = max(0.5, min(ping_timeout, deadline - time.monotonic()))
            try:
                client.ping(timeout)
            except BrokerUnreachable:
                raise
            except AgentRpcError as exc:
                last = str(exc)
                log.debug("rpc_ping attempt %d: %s", attempt, last)
                continue
            seconds = time.monotonic() - started
            log.info("the agent answered rpc_ping after %.1f s", seconds)
            return seconds
    raise AgentRpcError(
        f"the agent on topic {client.topic} did not answer rpc_ping within "
        f"{deadline_seconds:.0f} s; last: {last}"
    )


def taskmanager_calls(
    url: str,
    guest_id: str,
    deadline_seconds: float,
    since: float,
    mount_point: str,
    volume_gb: float | None = None,
) -> dict[str, Any]:
    """What the boot test asks the agent, as Trove's taskmanager would: rpc_ping until it
    answers, then get_filesystem_stats of its volume. Each answer: ok, detail, seconds.

    With volume_gb (the size of the disk attached as the volume) the stats must be that disk's
    filesystem: a mount point left on the root filesystem answers, but with the root's size."""
    answers: dict[str, Any] = {}
    begun = time.monotonic()
    try:
        after = wait_for_agent(url, guest_id, deadline_seconds, since=since)
    except AgentRpcError as exc:
        answers["rpc"] = {"ok": False, "detail": str(exc), "seconds": time.monotonic() - begun}
        return answers
    answers["rpc"] = {
        "ok": True,
        "detail": f"rpc_ping answered {after:.0f} s after QEMU started",
        "seconds": time.monotonic() - begun,
    }
    begun = time.monotonic()
    try:
        stats = filesystem_stats(url, guest_id, mount_point)
    except AgentRpcError as exc:
        answers["volume"] = {"ok": False, "detail": str(exc), "seconds": time.monotonic() - begun}
        return answers
    total = float(stats.get("total", 0))
    detail = f"get_filesystem_stats: {mount_point} of {total} GB, {stats.get('used')} GB used"
    ok = total > 0
    if volume_gb is not None:
        # ext4 keeps a few percent for itself; a bigger filesystem is not the volume.
        ok = ok and total <= volume_gb * 1.02
        if not ok:
            detail += f": not the {volume_gb:g} GB volume (its filesystem was never mounted there)"
    answers["volume"] = {"ok": ok, "detail": detail, "seconds": time.monotonic() - begun}
    return answers


def main(argv: list[str] | None = None) -> int:
    """`python -m assembler.boottest.agent_rpc URL GUEST_ID DEADLINE SINCE MOUNT_POINT [GB]`: the
    taskmanager calls, answered as one JSON line. The boot test runs them in a process of their
    own: the oslo.messaging stack starts green threads whose teardown can hang the thread that
    ran them, and the harness must never hang."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    url, guest_id, deadline, since, mount_point, *size = args
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    volume_gb = float(size[0]) if size else None
    answers = taskmanager_calls(
        url, guest_id, float(deadline), float(since), mount_point, volume_gb
    )
    print(json.dumps(answers), flush=True)
    return 0


if __name__ == "__main__":
    import os

    code = main()
    # Skip interpreter teardown: the same green threads could hang it, and all is said.
    os._exit(code)

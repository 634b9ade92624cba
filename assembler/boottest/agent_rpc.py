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
import dataclasses
import importlib
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
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
LOOPBACK = "127.0.0.1"


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


# Playing the taskmanager's prepare and the conductor ------------------------------------

PREPARE_VERSION = "1.1"  # trove.guestagent.api.API.prepare: 1.1 carries ds_version
CONDUCTOR_TOPIC = "trove-conductor"  # CONF.conductor_queue
CONDUCTOR_VERSION = "1.0"  # trove.conductor.api.API.API_LATEST_VERSION
CONDUCTOR_SERVER = "assembler-boottest"  # the real conductor uses CONF.host
# trove.taskmanager.models._service_is_active: what makes the instance ACTIVE, and what it
# keeps waiting through; any other status is a failure ('failed to spawn', 'guestagent error',
# 'crashed', 'blocked', ...).
ACTIVE_STATUSES = ("healthy", "running", "instance ready")
WAITING_STATUSES = ("new", "building", "unknown", "deleted")
NOTIFICATION_CLASS = "trove.common.notification.DBaaSInstanceCreate"


def taskmanager_context(guest_id: str, ds_version: str, manager: str) -> Any:
    """A request context as trove's taskmanager holds it while it casts `prepare`.

    The API attached a DBaaSInstanceCreate notification (trove/instance/service.py create:
    request_id, tenant_id, client_ip and server_ip of the request, then notify_start's traits);
    the guest API's NotificationCastWrapper sets server_type "guest" for the cast. The agent
    updates that notification's payload at once and sends it back in notify_end.
    """
    _libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from trove.common.context import TroveContext
        from trove.common.notification import DBaaSInstanceCreate
    request_id = f"req-{uuid.uuid4()}"
    tenant = "assembler-boottest"
    context = TroveContext(request_id=request_id, project_id=tenant, user_id=tenant)
    context.notification = DBaaSInstanceCreate(
        context,
        request_id=request_id,
        server_type="guest",
        tenant_id=tenant,
        client_ip=LOOPBACK,
        server_ip=LOOPBACK,
        name=f"boottest-{guest_id[:8]}",
        flavor_id="boottest",
        datastore=manager,
        datastore_version=ds_version,
        image_id="boottest",
        availability_zone="nova",
        region_name="RegionOne",
    )
    return context


def _wait_stopped(server: Any, attempts: int = 100) -> None:
    """server.wait(), which on a loaded host can come before the listener thread it joins has
    started ("cannot join thread before it is started"): retried until it has."""
    for _ in range(attempts - 1):
        try:
            server.wait()
            return
        except RuntimeError:
            time.sleep(0.1)
    server.wait()


def cast_prepare(
    url: str, guest_id: str, kwargs: dict[str, Any], context: Any = None, manager: str = ""
) -> str:
    """Cast `prepare` to guest_id's agent as trove's guest API does; return its request_id.

    Like trove (guestagent/api.py _create_guest_queue) this first starts and stops an RPC
    server without endpoints on the agent's topic, so the agent's queue exists and the cast is
    kept for an agent that is not consuming yet. (The boot test casts only after rpc_ping
    answered, when the queue exists anyway; the step makes cast_prepare right on its own.)
    """
    messaging, cfg, _context_cls, secure, request_context = _libraries()
    if "ds_version" not in kwargs:
        raise UsageError("prepare arguments without ds_version: version 1.1 carries it")
    if context is None:
        context = taskmanager_context(guest_id, str(kwargs["ds_version"]), manager or "unknown")
    address = BusAddress.parse(url)
    check_broker(address)
    serializer = secure(request_context(None), None)
    transport = messaging.get_rpc_transport(messaging_conf(cfg, messaging), url=url)
    try:
        queue_maker = messaging.get_rpc_server(
            transport,
            messaging.Target(topic=topic_of(guest_id), server=guest_id, version=API_VERSION),
            [],
            serializer=serializer,
        )
        queue_maker.start()
        queue_maker.stop()
        _wait_stopped(queue_maker)
        client = messaging.get_rpc_client(
            transport,
            messaging.Target(topic=topic_of(guest_id), version=API_VERSION),
            serializer=serializer,
        )
        try:
            client.prepare(version=PREPARE_VERSION, retry=0).cast(context, "prepare", **kwargs)
        except messaging.MessagingException as exc:
            raise AgentRpcError(f"casting prepare to {topic_of(guest_id)} failed: {exc}") from exc
    finally:
        transport.cleanup()
    log.info("cast prepare (%s) to %s", context.request_id, topic_of(guest_id))
    return str(context.request_id)


@dataclass(frozen=True)
class Heard:
    """One cast the conductor received: a heartbeat's status or a notification."""

    method: str
    instance_id: str | None
    received: float  # time.monotonic()
    status: str | None = None  # heartbeat: payload["service_status"]
    sent: float | None = None  # heartbeat: the agent's timestamp
    request_id: str | None = None  # notifications: the request they belong to
    message: str | None = None  # notify_exc_info: what failed


class _ConductorEndpoint:
    """The methods of trove's conductor Manager, with the arguments the agent casts."""

    def __init__(self, record: Callable[[Heard], None], target: Any) -> None:
        self.target = target
        self._record = record

    def heartbeat(
        self, ctxt: Any, instance_id: str, payload: dict[str, Any], sent: float | None = None
    ) -> None:
        status = payload.get("service_status") if isinstance(payload, dict) else None
        now = time.monotonic()
        self._record(Heard("heartbeat", instance_id, now, status=status, sent=sent))

    def update_backup(
        self,
        ctxt: Any,
        instance_id: str,
        backup_id: str,
        sent: float | None = None,
        **backup_fields: Any,
    ) -> None:
        state = backup_fields.get("state")
        self._record(Heard("update_backup", instance_id, time.monotonic(), status=state))

    def report_root(self, ctxt: Any, instance_id: str, user: str | None = None) -> None:
        self._record(Heard("report_root", instance_id, time.monotonic()))

    def notify_end(
        self, ctxt: Any, serialized_notification: dict[str, Any], notification_args: Any
    ) -> None:
        self._record(self._notification("notify_end", ctxt, serialized_notification))

    def notify_exc_info(
        self,
        ctxt: Any,
        serialized_notification: dict[str, Any],
        message: str,
        exception: Any,
    ) -> None:
        heard = self._notification("notify_exc_info", ctxt, serialized_notification)
        self._record(dataclasses.replace(heard, message=_first_line(str(message))))

    @staticmethod
    def _notification(method: str, ctxt: Any, serialized: dict[str, Any]) -> Heard:
        payload = serialized if isinstance(serialized, dict) else {}
        request_id = payload.get("request_id") or getattr(ctxt, "request_id", None)
        return Heard(method, payload.get("instance_id"), time.monotonic(), request_id=request_id)


class Conductor:
    """Trove's conductor as far as the boot test needs it: an RPC server on topic
    `trove-conductor` that records what the agent casts (`with Conductor(url) as c:`).

    Casts to a topic nobody consumes are dropped, so enter it before anything is cast. The
    serializers are trove's SecureSerializer stack with no key, as everywhere in this module:
    the real conductor's ConductorHostSerializer looks up instance keys in trove's database,
    and with none injected both pass the agent's plain JSON through unchanged.
    """

    def __init__(self, url: str, server: str = CONDUCTOR_SERVER) -> None:
        self.url = url
        self.address = BusAddress.parse(url)
        self.server = server
        self._heard: list[Heard] = []
        self._changed = threading.Condition()
        self._transport: Any = None
        self._rpc: Any = None

    def _record(self, heard: Heard) -> None:
        log.debug("conductor heard %s", heard)
        with self._changed:
            self._heard.append(heard)
            self._changed.notify_all()

    def heard(self, instance_id: str | None = None) -> list[Heard]:
        """Everything received so far, for one instance if given."""
        with self._changed:
            return [h for h in self._heard if instance_id is None or h.instance_id == instance_id]

    def wait_for(self, done: Callable[[list[Heard]], bool], deadline: float) -> bool:
        """Block until done(everything heard) is true (True) or time.monotonic() > deadline."""
        with self._changed:
            while not done(list(self._heard)):
                cancel.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))  # wake for cancellation too
            return True

    def __enter__(self) -> Conductor:
        messaging, cfg, _context_cls, secure, request_context = _libraries()
        from oslo_messaging.rpc import dispatcher

        check_broker(self.address)
        logging.getLogger("amqp").addFilter(_AMQP_FILTER)
        self._transport = messaging.get_rpc_transport(messaging_conf(cfg, messaging), url=self.url)
        endpoint = _ConductorEndpoint(self._record, messaging.Target(version=CONDUCTOR_VERSION))
        self._rpc = messaging.get_rpc_server(
            self._transport,
            messaging.Target(topic=CONDUCTOR_TOPIC, server=self.server, version=CONDUCTOR_VERSION),
            [endpoint],
            serializer=secure(request_context(None), None),
            access_policy=dispatcher.DefaultRPCAccessPolicy,
        )
        try:
            self._rpc.start()
        except BaseException:
            self._transport.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rpc is not None:
            self._rpc.stop()
            _wait_stopped(self._rpc)
            self._rpc = None
        if self._transport is not None:
            self._transport.cleanup()
            self._transport = None


def _failed(status: str) -> bool:
    return status not in ACTIVE_STATUSES and status not in WAITING_STATUSES


def prepare_database(
    url: str,
    guest_id: str,
    kwargs: dict[str, Any],
    deadline_seconds: float,
    since: float | None = None,
    manager: str = "",
) -> dict[str, Any]:
    """Cast `prepare` and follow the agent's heartbeats as trove's taskmanager waits for the
    instance to become ACTIVE; then wait for prepare's notify_end, as databases and users are
    made only after the agent reports its status.

    Returns {"ok", "detail", "seconds" (this step's duration), "statuses": [{"status",
    "seconds"}], "notifications": [{"method", "seconds", ...}], "request_id"}; the seconds of
    statuses and notifications count from `since` (e.g. QEMU's start), else from this call.
    """
    begun = time.monotonic()
    origin = begun if since is None else since
    deadline = begun + deadline_seconds
    answer: dict[str, Any] = {"ok": False, "statuses": [], "notifications": []}

    def finish(ok: bool, detail: str, heard: list[Heard]) -> dict[str, Any]:
        statuses = [h for h in heard if h.method == "heartbeat"]
        answer["statuses"] = [
            {"status": h.status, "seconds": round(h.received - origin, 1)} for h in statuses
        ]
        answer["notifications"] = [
            {"method": h.method, "seconds": round(h.received - origin, 1)}
            | ({"message": h.message} if h.message else {})
            for h in heard
            if h.method != "heartbeat"
        ]
        answer.update(ok=ok, detail=detail, seconds=time.monotonic() - begun)
        return answer

    try:
        with Conductor(url) as conductor:
            request_id = cast_prepare(url, guest_id, kwargs, manager=manager)
            answer["request_id"] = request_id

            def ours(heard: list[Heard]) -> list[Heard]:
                return [
                    h
                    for h in heard
                    if (h.method == "heartbeat" and h.instance_id == guest_id)
                    or (h.method != "heartbeat" and h.request_id == request_id)
                ]

            def settled(heard: list[Heard]) -> bool:
                return any(
                    h.method == "notify_exc_info"
                    or (h.status is not None and h.method == "heartbeat" and _failed(h.status))
                    or (h.method == "heartbeat" and h.status in ACTIVE_STATUSES)
                    for h in ours(heard)
                )

            conductor.wait_for(settled, deadline)
            heard = ours(conductor.heard())
            verdict = _verdict(heard, origin, deadline_seconds)
            if verdict is not None:
                return finish(False, verdict, heard)
            active = next(h for h in heard if h.status in ACTIVE_STATUSES)

            def ended(heard: list[Heard]) -> bool:
                return any(h.method in ("notify_end", "notify_exc_info") for h in ours(heard))

            conductor.wait_for(ended, deadline)
            heard = ours(conductor.heard())
    except AgentRpcError as exc:
        return finish(False, str(exc), [])
    detail = f"{active.status} {active.received - origin:.0f} s after QEMU started"
    failure = next((h for h in heard if h.method == "notify_exc_info"), None)
    if failure is not None:
        return finish(False, f"{detail}, then prepare failed: {failure.message}", heard)
    end = next((h for h in heard if h.method == "notify_end"), None)
    if end is None:
        detail += f"; no notify_end within {deadline_seconds:.0f} s (users may not exist yet)"
    else:
        detail += f"; prepare ended at {end.received - origin:.0f} s"
    return finish(True, detail, heard)


def _verdict(heard: list[Heard], origin: float, deadline_seconds: float) -> str | None:
    """Why prepare failed, from what was heard by its deadline; None if it became active."""
    statuses = [h for h in heard if h.method == "heartbeat" and h.status is not None]
    for h in heard:
        if h.method == "notify_exc_info":
            return f"prepare failed: {h.message}"
        if h.method == "heartbeat" and h.status is not None:
            if h.status in ACTIVE_STATUSES:
                return None
            if _failed(h.status):
                return f"the agent reported {h.status!r} {h.received - origin:.0f} s after start"
    said = ", ".join(f"{h.status} ({h.received - origin:.0f} s)" for h in statuses)
    return f"no healthy status within {deadline_seconds:.0f} s; heard: {said or 'nothing'}"


PREPARE_FLAG = "--prepare"


def prepare_spec(
    kwargs: dict[str, Any],
    deadline_seconds: float,
    manager: str = "",
    query: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What main reads from its prepare file (as JSON): prepare's arguments and deadline, the
    manager (for the context's notification only), and optionally query_round_trip's
    arguments (host, port, user, password, database, timeout) for a query from the host once
    prepare ended. {"prepare": kwargs, "deadline": seconds} alone is a whole spec."""
    spec: dict[str, Any] = {"prepare": kwargs, "deadline": deadline_seconds, "manager": manager}
    if query is not None:
        spec["query"] = query
    return spec


def run_prepare_spec(url: str, guest_id: str, spec: dict[str, Any], since: float) -> dict[str, Any]:
    """prepare_database by a prepare_spec, then its query if it has one: answers by key."""
    from assembler.boottest.datastore import prepare_kwargs, query_round_trip

    manager = str(spec.get("manager") or "")
    # "build": prepare's arguments made here, from trove's own classes and templates, so the
    # harness never imports trove (its import brings eventlet into the harness's process).
    kwargs = dict(spec["prepare"]) if "prepare" in spec else prepare_kwargs(**spec["build"])
    answers: dict[str, Any] = {}
    answers["prepare"] = prepare = prepare_database(
        url, guest_id, kwargs, float(spec["deadline"]), since, manager
    )
    query = spec.get("query")
    if prepare["ok"] and query:
        begun = time.monotonic()
        ok, detail = query_round_trip(
            manager,
            str(query["host"]),
            int(query["port"]),
            str(query["user"]),
            str(query["password"]),
            str(query["database"]),
            float(query["timeout"]),
        )
        answers["query"] = {"ok": ok, "detail": detail, "seconds": time.monotonic() - begun}
    return answers


def main(argv: list[str] | None = None) -> int:
    """`python -m assembler.boottest.agent_rpc URL GUEST_ID DEADLINE SINCE MOUNT_POINT [GB
    [SPEC]]` (or `--prepare SPEC` anywhere): the taskmanager calls, answered as one JSON line;
    with SPEC (a file holding a prepare_spec as JSON) also prepare, under key "prepare" (and
    "query"), once rpc_ping answered. The boot test runs them in a process of their own: the
    oslo.messaging stack starts green threads whose teardown can hang the thread that ran
    them, and the harness must never hang."""
    import json
    import sys
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    spec: dict[str, Any] | None = None
    if PREPARE_FLAG in args:
        at = args.index(PREPARE_FLAG)
        spec = json.loads(Path(args[at + 1]).read_text())
        del args[at : at + 2]
    url, guest_id, deadline, since, mount_point, *rest = args
    if len(rest) > 1 and spec is None:
        spec = json.loads(Path(rest[1]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    volume_gb = float(rest[0]) if rest else None
    answers = taskmanager_calls(
        url, guest_id, float(deadline), float(since), mount_point, volume_gb
    )
    if spec is not None and answers.get("rpc", {}).get("ok"):
        answers.update(run_prepare_spec(url, guest_id, spec, float(since)))
    print(json.dumps(answers), flush=True)
    return 0


if __name__ == "__main__":
    import os

    code = main()
    # Skip interpreter teardown: the same green threads could hang it, and all is said.
    os._exit(code)

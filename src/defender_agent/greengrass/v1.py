"""The Greengrass v1 deployment: a long-lived Lambda, as the public sample documents it.

Set the Lambda's handler to ``defender_agent.greengrass.v1.function_handler``,
make it long-lived, give it the ``/proc`` volume resource (read-only, mounted at
``/host-proc``) and these variables:

* ``PROCFS_PATH`` — where the host's ``/proc`` is mounted (default ``/host-proc``);
* ``SAMPLE_INTERVAL_SECONDS`` — the report interval, at least 300 (a value that is
  not a number, or is lower, is taken as 300 with one warning).

When the core imports the module, the agent's loop starts in a thread: the same
:class:`~defender_agent.agent.Agent` as ``run`` (baseline across cycles, reply
matching, Throttled hold, status file), publishing JSON reports with
``greengrasssdk.client("iot-data").publish(...)`` to the thing's defender topic.
Replies come back through the group's subscriptions (IoT Cloud
``$aws/things/<thing>/defender/metrics/json/+`` to this Lambda) as calls of
:func:`function_handler`. The thing is the core's (``AWS_IOT_THING_NAME``).

``greengrasssdk`` exists only inside a v1 core: it is imported when the loop
starts. The code runs on Python 3.8, the v1 Lambda runtime.

>>> sample_interval("600"), sample_interval(None), sample_interval("120")[0]
((600, None), (300, None), 300)
>>> sample_interval("5m")
(300, "SAMPLE_INTERVAL_SECONDS='5m' is not a number: using 300 s")
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

from defender_agent.errors import ConfigError, ConnectError, PublishError
from defender_agent.transport.base import ConnectionListener, MessageHandler

__all__ = [
    "DEFAULT_PROCFS",
    "INTERVAL_ENV",
    "MIN_INTERVAL_S",
    "PROCFS_ENV",
    "GreengrassV1Transport",
    "build",
    "function_handler",
    "sample_interval",
    "start",
]

log = logging.getLogger(__name__)

PROCFS_ENV = "PROCFS_PATH"
DEFAULT_PROCFS = "/host-proc"
INTERVAL_ENV = "SAMPLE_INTERVAL_SECONDS"
MIN_INTERVAL_S = 300
#: Where the Lambda keeps report ids and the baseline (the Lambda's writable /tmp).
STATE_DIR = "/tmp/defender-agent"  # noqa: S108 - the v1 Lambda container's own /tmp


def sample_interval(raw: Optional[str]) -> tuple[int, Optional[str]]:
    """The interval from ``SAMPLE_INTERVAL_SECONDS``, and the warning to log, if any."""
    if raw is None or not raw.strip():
        return MIN_INTERVAL_S, None
    try:
        value = float(raw)
    except ValueError:
        return MIN_INTERVAL_S, f"{INTERVAL_ENV}={raw!r} is not a number: using {MIN_INTERVAL_S} s"
    if not math.isfinite(value) or value < MIN_INTERVAL_S:
        why = f"{INTERVAL_ENV}={raw!r} is under Device Defender's {MIN_INTERVAL_S} s"
        return MIN_INTERVAL_S, f"{why}: using {MIN_INTERVAL_S} s"
    return int(value), None


class GreengrassV1Transport:
    """The v1 core's local MQTT as a transport: ``greengrasssdk``'s ``iot-data`` client.

    Publishing is the SDK's (synchronous; the core queues the message for the
    cloud). Messages the group routes to this Lambda reach :meth:`deliver`, from
    :func:`function_handler`, and go to the handler of the matching subscription.

    Args:
        client: an ``iot-data`` client; ``None`` makes one at :meth:`connect`.
    """

    where = "the Greengrass v1 core (greengrasssdk iot-data)"

    def __init__(self, client: Optional[Any] = None) -> None:  # noqa: ANN401 - the SDK's client
        self._client = client
        self._connected = False
        self._handlers: dict[str, MessageHandler] = {}
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the client is made."""
        return self._connected

    def set_connection_listener(self, listener: Optional[ConnectionListener]) -> None:
        """The core's local link does not drop under a Lambda: nothing to tell."""

    def connect(self) -> None:
        """Make the ``iot-data`` client (ConnectError when greengrasssdk cannot)."""
        if self._client is None:
            try:
                import greengrasssdk  # type: ignore[import-not-found]  # noqa: PLC0415

                self._client = greengrasssdk.client("iot-data")
            except Exception as exc:  # not inside a v1 core, or the SDK is missing
                raise ConnectError(
                    f"greengrasssdk is unusable ({type(exc).__name__}: {exc}): the v1 handler "
                    "runs only as a Lambda on a Greengrass v1 core, with greengrasssdk in its "
                    "deployment package"
                ) from exc
        self._connected = True

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Hand messages routed to this Lambda on ``topic_filter`` to ``handler``."""
        with self._lock:
            self._handlers[topic_filter] = handler

    def publish(self, topic: str, payload: bytes) -> Future[None]:
        """Publish through the core; the future is done when the SDK returned."""
        result: Future[None] = Future()
        try:
            self._client.publish(topic=topic, queueFullPolicy="AllOrException", payload=payload)  # type: ignore[union-attr]
        except Exception as exc:  # the SDK's errors (queue full, core not running, ...)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            result.set_exception(PublishError(f"publish to {topic}: {reason}"))
        else:
            result.set_result(None)
        return result

    def disconnect(self) -> None:
        """Stop publishing (the SDK's client has nothing to close)."""
        self._connected = False

    def deliver(self, topic: str, payload: bytes) -> bool:
        """A message the group routed to this Lambda; whether a subscription took it."""
        from defender_agent.transport.topics import topic_matches  # noqa: PLC0415

        with self._lock:
            handlers = [h for f, h in self._handlers.items() if topic_matches(f, topic)]
        for handler in handlers:
            handler(topic, payload)
        return bool(handlers)


_transport: Optional[GreengrassV1Transport] = None  # where function_handler delivers
_runner: Optional[threading.Thread] = None
_runner_lock = threading.Lock()


def build(
    environ: Optional[Mapping[str, str]] = None,
    client: Optional[Any] = None,  # noqa: ANN401 - the SDK's client (tests pass a fake)
    clock: Optional[Any] = None,  # noqa: ANN401 - an agent Clock (tests pass a simulated one)
) -> Any:  # noqa: ANN401 - an Agent (imported lazily)
    """The agent of this Lambda, its transport the one :func:`function_handler` delivers to.

    Raises:
        ConfigError: the thing name (``AWS_IOT_THING_NAME``) is missing or invalid,
            or ``PROCFS_PATH`` is not a directory.
    """
    global _transport  # noqa: PLW0603 - the Lambda's one transport
    from defender_agent.agent import Agent  # noqa: PLC0415
    from defender_agent.config import load_config, validate_thing_name  # noqa: PLC0415
    from defender_agent.state import StateDir  # noqa: PLC0415

    env = dict(os.environ if environ is None else environ)
    thing = env.get("AWS_IOT_THING_NAME", "")
    try:
        validate_thing_name(thing)
    except ValueError as exc:
        raise ConfigError(f"AWS_IOT_THING_NAME: {exc}") from None
    interval, warning = sample_interval(env.get(INTERVAL_ENV))
    if warning is not None:
        log.warning("%s", warning)
    flags = {
        "thing_name": thing,
        "client_id": thing,
        "interval": str(interval),
        "format": "json",
        "proc_root": env.get(PROCFS_ENV) or DEFAULT_PROCFS,
        "state_dir": env.get("DEFENDER_AGENT_STATE_DIR") or STATE_DIR,
    }
    labels = {"proc_root": PROCFS_ENV, "interval": INTERVAL_ENV, "thing_name": "AWS_IOT_THING_NAME"}
    config = load_config(flags, None, {}, command="greengrass-v1", labels=labels)
    collector = _collector(config)
    transport = GreengrassV1Transport(client)
    agent = Agent(config, collector, transport, StateDir(Path(flags["state_dir"])), clock=clock)
    _transport = transport
    log.info(
        "defender-agent: thing %s, every %d s, /proc at %s", thing, interval, flags["proc_root"]
    )
    return agent


def start(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Start the agent's loop in a daemon thread, once; whether this call started it.

    Raises:
        ConfigError: as :func:`build`.
    """
    global _runner  # noqa: PLW0603 - one loop per Lambda process
    with _runner_lock:
        if _runner is not None:
            return False
        agent = build(environ)
        _runner = threading.Thread(target=_run, args=(agent,), name="defender-agent", daemon=True)
        _runner.start()
        return True


def _collector(config: Any) -> Any:  # noqa: ANN401
    from defender_agent.cycle import Collector  # noqa: PLC0415

    return Collector(config.collector, state_dir=config.agent.state_dir)


def _run(agent: Any) -> None:  # noqa: ANN401
    try:
        agent.run()
    except Exception:  # the Lambda must not die silently: say why
        log.exception("the defender-agent loop stopped")


def function_handler(event: Any, context: Any) -> None:  # noqa: ANN401 - the Lambda's signature
    """Messages routed to this Lambda: the replies to the reports (accepted/rejected).

    The core passes a JSON message as its decoded value, and the topic in
    ``context.client_context.custom["subject"]``.
    """
    transport = _transport
    if transport is None:
        return
    custom = getattr(getattr(context, "client_context", None), "custom", None) or {}
    topic = custom.get("subject") if isinstance(custom, dict) else None
    if not isinstance(topic, str):
        log.warning("a message without a topic was routed to this Lambda; ignored")
        return
    if isinstance(event, (bytes, bytearray)):
        payload = bytes(event)
    elif isinstance(event, str):
        payload = event.encode()
    else:
        payload = json.dumps(event).encode()
    if not transport.deliver(topic, payload):
        log.debug("a message on %s is not a reply to this agent; ignored", topic)


def _autostart() -> None:
    """Start at import inside a v1 core (where greengrasssdk is importable)."""
    if os.environ.get("DEFENDER_AGENT_V1_AUTOSTART", "1") == "0":
        return
    if "AWS_IOT_THING_NAME" not in os.environ:
        return
    try:
        import greengrasssdk  # noqa: F401, PLC0415
    except ImportError:
        return
    if not logging.getLogger().handlers:  # the Lambda runtime's stdout goes to the core's log
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        start()
    except ConfigError as exc:
        log.error("defender-agent cannot start: %s", exc)  # noqa: TRY400 - one line


_autostart()

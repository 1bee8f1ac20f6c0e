"""Alerts: each violation event, as AWS's Device Defender SNS message, to MQTT and webhooks.

AWS sends a Detect alarm to the profile's ``alertTargets`` SNS topic as a JSON object. This
service sends the same object (:func:`alert_message`) to

* an MQTT topic on the service's own broker (``[detect] alert_topic``, QoS 1), and
* webhooks (``[detect] webhooks``): an HTTP ``POST`` with ``Content-Type:
  application/json``, a timeout per attempt, and up to ``webhook_retries`` retries after
  1, 2, 4, … seconds (capped at 30 s) when the attempt fails or answers other than 2xx;
* and, for a profile whose ``alertTargets`` name an SNS topic ARN mapped by
  ``[detect] sns_targets`` (``ARN=mqtt:TOPIC`` or ``ARN=https://…``), to that target too. An
  ARN without a mapping is stored and shown by the API, and delivers nothing more.

A behavior with ``suppressAlerts`` sends nothing (its events are still listed by the API),
as on AWS, where the flag stops only the SNS notifications.

Delivery never holds up ingest: :meth:`Alerts.submit` only hands the event to the alerts'
own thread (an asyncio loop) and returns. At most ``queue_max`` deliveries wait or run
at a time; beyond, new events are dropped and counted (``dropped``), and a warning line
says so at most every 10 s. A webhook that is down costs its own retries only.

The message (``violationEventTime`` in epoch milliseconds, as AWS's messages have it):

>>> from defender_agent.detect.store import EventRow
>>> event = EventRow("3f1c", "gw-1", "starter", {"name": "ports"}, "STATIC", False,
...                  "in-alarm", 1_700_000_000.25, {"ports": [8123]})
>>> alert_message(event)  # doctest: +NORMALIZE_WHITESPACE
{'violationEventTime': 1700000000250, 'thingName': 'gw-1', 'behavior': {'name': 'ports'},
 'violationEventType': 'in-alarm', 'metricValue': {'ports': [8123]}, 'violationId': '3f1c',
 'securityProfileName': 'starter'}
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Final, Optional
from urllib.parse import urlsplit

from defender_agent.detect.store import EventRow
from defender_agent.logs import shown

__all__ = ["AlertSettings", "Alerts", "alert_message", "targets_for", "webhook_label"]

log = logging.getLogger(__name__)

_BACKOFF_MAX_S: Final = 30.0
_WARN_EVERY_S: Final = 10.0

#: Publishes ``(topic, payload)`` on the service's broker (the transport's ``publish``).
Publish = Callable[[str, bytes], object]


def alert_message(event: EventRow) -> dict[str, Any]:
    """The JSON object of AWS's Detect SNS notification for one violation event."""
    doc: dict[str, Any] = {
        "violationEventTime": round(event.event_time * 1000),
        "thingName": event.thing,
        "behavior": dict(event.behavior),
        "violationEventType": event.event_type,
    }
    if event.metric_value is not None:
        doc["metricValue"] = dict(event.metric_value)
    doc["violationId"] = event.violation_id
    doc["securityProfileName"] = event.profile
    if event.additional_info:
        doc["violationEventAdditionalInfo"] = dict(event.additional_info)
    return doc


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go (the ``[detect]`` settings).

    Attributes:
        topic: The MQTT topic on the service's broker; "" for none.
        webhooks: URLs every alert is POSTed to.
        timeout_s: Seconds one POST may take.
        retries: Retries of a failed POST.
        queue_max: Deliveries waiting or running at most; beyond, events are dropped.
        sns_targets: SNS topic ARN -> ``mqtt:TOPIC`` or a webhook URL.
    """

    topic: str = "defender-agent/alerts"
    webhooks: tuple[str, ...] = ()
    timeout_s: float = 5.0
    retries: int = 3
    queue_max: int = 1000
    sns_targets: tuple[tuple[str, str], ...] = ()


def targets_for(
    settings: AlertSettings, alert_targets: Mapping[str, Mapping[str, str]]
) -> tuple[list[str], list[str]]:
    """The MQTT topics and webhook URLs of an alert of a profile with ``alert_targets``.

    >>> s = AlertSettings(topic="a", webhooks=("http://h/1",),
    ...                   sns_targets=(("arn:sns:ops", "mqtt:ops"), ("arn:sns:x", "http://h/2")))
    >>> targets_for(s, {"SNS": {"alertTargetArn": "arn:sns:ops", "roleArn": "r"}})
    (['a', 'ops'], ['http://h/1'])
    >>> targets_for(s, {"SNS": {"alertTargetArn": "arn:sns:x"}})
    (['a'], ['http://h/1', 'http://h/2'])
    """
    topics = [settings.topic] if settings.topic else []
    hooks = list(settings.webhooks)
    mapped = dict(settings.sns_targets)
    for target in alert_targets.values():
        where = mapped.get(str(target.get("alertTargetArn", "")))
        if where is None:
            continue
        if where.startswith("mqtt:"):
            if where[5:] not in topics:
                topics.append(where[5:])
        elif where not in hooks:
            hooks.append(where)
    return topics, hooks


class Alerts:
    """Delivers alerts on its own thread; :meth:`submit` never waits.

    Args:
        settings: Where alerts go.
        publish: Publishes on the service's broker (None: no MQTT alerts).
    """

    def __init__(self, settings: AlertSettings, publish: Optional[Publish] = None) -> None:
        self.settings = settings
        self._publish = publish
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._session: Any = None
        self._pending = 0
        self._jobs: list[Callable[[], None]] = []  # handed to the loop by one wake-up
        self._tasks: set[asyncio.Future[None]] = set()
        self._last_warning = -_WARN_EVERY_S
        self.submitted = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the alerts' thread and event loop."""
        with self._lock:
            if self._thread is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name="dd-detect-alerts", daemon=True
            )
            self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close_session())
            loop.close()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stop(self, timeout: float = 5.0) -> None:
        """Give the deliveries in progress up to ``timeout`` s, then stop the thread."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(max(0.1, deadline - time.monotonic()) + 1)

    @property
    def pending(self) -> int:
        """Deliveries waiting or running."""
        with self._lock:
            return self._pending

    def counters(self) -> dict[str, int]:
        """``submitted``, ``delivered``, ``failed`` (gave up), ``dropped`` (queue full)."""
        with self._lock:
            return {
                "submitted": self.submitted,
                "delivered": self.delivered,
                "failed": self.failed,
                "dropped": self.dropped,
            }

    def submit(
        self, event: EventRow, alert_targets: Optional[Mapping[str, Mapping[str, str]]] = None
    ) -> None:
        """Send one event to its targets (unless suppressed); returns at once."""
        if event.suppressed:
            return
        topics, hooks = targets_for(self.settings, alert_targets or {})
        if not topics and not hooks:
            return
        payload = json.dumps(alert_message(event), separators=(",", ":")).encode()
        jobs = len(hooks) + (1 if topics else 0)
        loop = self._loop
        with self._lock:
            self.submitted += 1
            if loop is None or self._pending + jobs > self.settings.queue_max:
                self.dropped += 1
                warn = time.monotonic() - self._last_warning >= _WARN_EVERY_S
                if warn:
                    self._last_warning = time.monotonic()
                dropped = self.dropped
            else:
                self._pending += jobs
                warn = False
                dropped = -1
        if dropped >= 0:
            if warn:
                log.warning(
                    "detect alerts: %d waiting, the queue is full; %d alert(s) dropped so far",
                    self.pending,
                    dropped,
                )
            return
        assert loop is not None
        jobs_now = [functools.partial(self._spawn, url, payload) for url in hooks]
        if topics:
            jobs_now.insert(0, functools.partial(self._mqtt, topics, payload))
        with self._lock:
            wake = not self._jobs  # (else a wake-up is already on its way)
            self._jobs.extend(jobs_now)
        if wake:
            loop.call_soon_threadsafe(self._run_jobs)

    def _run_jobs(self) -> None:
        """On the loop: run every job submitted since the last wake-up (one per burst)."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                job()
            except Exception:  # a bug in one must not cost the others
                log.exception("detect alerts: a delivery could not start")

    def _done(self, ok: bool) -> None:
        with self._lock:
            self._pending -= 1
            if ok:
                self.delivered += 1
            else:
                self.failed += 1

    def _mqtt(self, topics: Sequence[str], payload: bytes) -> None:
        ok = True
        for topic in topics:
            try:
                if self._publish is not None:
                    self._publish(topic, payload)
            except Exception as exc:  # a closed connection: counted, never raised
                ok = False
                log.warning("detect alert to MQTT topic %s failed: %s", shown(topic), exc)
        self._done(ok)

    def _spawn(self, url: str, payload: bytes) -> None:
        task = asyncio.ensure_future(self._post(url, payload))
        self._tasks.add(task)  # (the loop keeps only weak references to its tasks)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, payload: bytes) -> None:
        import aiohttp  # noqa: PLC0415 - the service extra; only when webhooks are set

        if self._session is None:
            self._session = aiohttp.ClientSession()
        delay = 1.0
        why = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
            try:
                async with self._session.post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                ) as response:
                    if 200 <= response.status < 300:
                        self._done(True)
                        return
                    why = f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                why = type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else str(exc)
        self._done(False)
        log.warning(
            "detect alert to webhook %s failed after %d attempt(s): %s",
            shown(webhook_label(url)),
            self.settings.retries + 1,
            shown(why),
        )


def webhook_label(url: str) -> str:
    """A webhook as logs show it: scheme, host and port only.

    Webhook URLs often carry a secret (a token in the path or the query, a password), so
    no log line names more than where the alert went.

    >>> webhook_label("https://user:pw@hooks.example.com:8443/T0K3N/x?key=s3cret")
    'https://hooks.example.com:8443/...'
    >>> webhook_label("http://127.0.0.1/hook"), webhook_label("not a url")
    ('http://127.0.0.1/...', 'a webhook')
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.scheme or not parts.hostname:
        return "a webhook"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/..."

"""MemoryTransport and MemoryBroker: the Transport contract in memory, and failures on demand."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from defender_agent.errors import ConnectError, PublishError, TlsSetupError, TransportError
from defender_agent.transport import MemoryBroker, MemoryTransport, Transport

REPORTS = "$aws/things/+/defender/metrics/+"


def report_topic(thing: str = "t1") -> str:
    return f"$aws/things/{thing}/defender/metrics/json"


class Inbox:
    """A thread-safe message handler that remembers what it got."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    @property
    def topics(self) -> list[str]:
        with self.lock:
            return [topic for topic, _ in self.messages]


def connected(broker: MemoryBroker | None = None, client_id: str = "memory") -> MemoryTransport:
    transport = MemoryTransport(broker, client_id=client_id)
    transport.connect()
    return transport


def is_up(transport: Transport) -> bool:
    """``transport.connected`` (through a call, so mypy does not narrow it between steps)."""
    return transport.connected


def error_of(future: Future[None]) -> BaseException | None:
    assert future.done()
    return future.exception(timeout=0)


def test_it_is_a_transport() -> None:
    transport: Transport = MemoryTransport()  # mypy checks the protocol
    assert not is_up(transport)
    transport.connect()
    assert is_up(transport)
    transport.disconnect()
    transport.disconnect()  # idempotent
    assert not is_up(transport)


# -- publish and subscribe ----------------------------------------------------------------------


def test_a_client_gets_its_own_messages_when_subscribed() -> None:
    transport, inbox = connected(), Inbox()
    transport.subscribe(REPORTS, inbox)
    future = transport.publish(report_topic(), b"{}")
    assert future.result(timeout=0) is None
    assert inbox.messages == [(report_topic(), b"{}")]
    assert transport.published == [(report_topic(), b"{}")]


@pytest.mark.parametrize(
    ("topic_filter", "topic", "delivered"),
    [
        ("$aws/things/t1/defender/metrics/json", "$aws/things/t1/defender/metrics/json", True),
        ("$aws/things/+/defender/metrics/+", "$aws/things/t2/defender/metrics/cbor", True),
        (
            "$aws/things/+/defender/metrics/+",
            "$aws/things/t2/defender/metrics/json/accepted",
            False,
        ),
        ("$aws/things/t1/#", "$aws/things/t1/defender/metrics/json/rejected", True),
        ("$aws/things/t1/#", "$aws/things/t1", True),  # '#' also matches the parent level
        ("#", "$aws/things/t1/defender/metrics/json", False),  # '$' topics need an explicit level
        ("+/things/t1", "$aws/things/t1", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("$share/g/$aws/things/+/defender/metrics/+", report_topic(), True),
    ],
)
def test_filters_match_like_mqtt(topic_filter: str, topic: str, delivered: bool) -> None:
    transport, inbox = connected(), Inbox()
    transport.subscribe(topic_filter, inbox)
    assert transport.deliver(topic, b"x") == int(delivered)
    assert inbox.topics == ([topic] if delivered else [])


def test_two_transports_on_one_broker_talk_like_a_device_and_a_service() -> None:
    broker = MemoryBroker()
    device, service = connected(broker, "device"), connected(broker, "service")
    assert broker.clients == [device, service]

    def answer(topic: str, payload: bytes) -> None:  # replies from inside a delivery
        service.publish(topic + "/accepted", payload[::-1])

    service.subscribe(REPORTS, answer)
    replies = Inbox()
    device.subscribe(report_topic() + "/+", replies)
    device.publish(report_topic(), b"abc").result(timeout=0)
    assert replies.messages == [(report_topic() + "/accepted", b"cba")]
    assert device.published == [(report_topic(), b"abc")]
    assert service.published == [(report_topic() + "/accepted", b"cba")]


def test_a_shared_group_gets_each_message_once_in_turn() -> None:
    broker = MemoryBroker()
    workers = [connected(broker, f"w{i}") for i in range(3)]
    inboxes = [Inbox() for _ in workers]
    for worker, inbox in zip(workers, inboxes):
        worker.subscribe("$share/svc/" + REPORTS, inbox)
    auditor = Inbox()
    connected(broker, "auditor").subscribe("$share/audit/" + REPORTS, auditor)
    plain = Inbox()
    connected(broker, "plain").subscribe(REPORTS, plain)
    for n in range(6):
        assert broker.publish(report_topic(f"t{n}"), b"r") == 3  # one per group + the plain one
    assert [len(inbox.messages) for inbox in inboxes] == [2, 2, 2]
    assert len(auditor.messages) == len(plain.messages) == 6
    assert sorted(t for inbox in inboxes for t in inbox.topics) == sorted(plain.topics)


def test_subscribe_replaces_the_handler_of_the_same_filter() -> None:
    transport, first, second = connected(), Inbox(), Inbox()
    transport.subscribe(REPORTS, first)
    transport.subscribe(REPORTS, second)
    assert transport.subscriptions == {REPORTS: second}
    transport.deliver(report_topic(), b"x")
    assert (first.messages, len(second.messages)) == ([], 1)


def test_payload_is_copied_as_bytes() -> None:
    transport, inbox = connected(), Inbox()
    transport.subscribe(REPORTS, inbox)
    payload = bytearray(b"abc")
    transport.publish(report_topic(), payload)  # type: ignore[arg-type]  # a buffer is accepted
    payload[0] = ord("z")
    assert transport.published == [(report_topic(), b"abc")]
    assert inbox.messages == [(report_topic(), b"abc")]
    assert type(inbox.messages[0][1]) is bytes


# -- what the contract refuses -------------------------------------------------------------------


def test_subscribe_needs_a_connection() -> None:
    transport = MemoryTransport()
    with pytest.raises(TransportError, match="not connected"):
        transport.subscribe(REPORTS, Inbox())
    assert transport.subscriptions == {}


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("", "empty topic filter"),
        ("a/#/b", "'#' must be the last level"),
        ("a/b+", "a wildcard must be a whole level"),
        ("$share/g/", "a shared subscription needs"),
        ("$share/+/a", "a shared subscription needs"),
    ],
)
def test_malformed_filters_are_refused(topic_filter: str, reason: str) -> None:
    transport = connected()
    with pytest.raises(TransportError, match=reason):
        transport.subscribe(topic_filter, Inbox())
    assert transport.subscriptions == {}


def test_publish_without_a_connection_fails_its_future() -> None:
    transport = MemoryTransport()
    error = error_of(transport.publish(report_topic(), b"{}"))
    assert isinstance(error, PublishError) and "not connected" in str(error)
    assert transport.published == []


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#"])
def test_publish_to_a_bad_topic_fails_its_future(topic: str) -> None:
    transport = connected()
    assert isinstance(error_of(transport.publish(topic, b"{}")), PublishError)
    assert transport.published == []
    with pytest.raises(ValueError, match="cannot publish"):
        transport.broker.publish(topic, b"{}")


# -- failures on demand ----------------------------------------------------------------------


def test_fail_next_connects_then_succeed() -> None:
    transport = MemoryTransport()
    transport.fail_next_connects(2)
    for attempt in (1, 2):
        with pytest.raises(ConnectError, match=f"injected connect failure \\(attempt {attempt}\\)"):
            transport.connect()
        assert not is_up(transport)
    transport.connect()
    assert is_up(transport) and transport.connect_attempts == 3


def test_fail_next_connects_with_a_class_or_an_instance() -> None:
    transport = MemoryTransport()
    transport.fail_next_connects(1, TlsSetupError)
    with pytest.raises(TlsSetupError, match="injected"):
        transport.connect()
    transport.fail_next_connects(1, ConnectError("broker refused: not authorized"))
    with pytest.raises(ConnectError, match="not authorized"):
        transport.connect()
    transport.connect()
    assert is_up(transport)


def test_fail_next_publishes_fails_futures_then_recovers() -> None:
    transport = connected()
    transport.fail_next_publishes(2)
    first, second, third = (transport.publish(report_topic(), b"%d" % n) for n in range(3))
    assert isinstance(error_of(first), PublishError)
    assert isinstance(error_of(second), PublishError)
    assert error_of(third) is None
    assert transport.published == [(report_topic(), b"2")]


def test_fail_next_publishes_synchronously_raises_from_publish() -> None:
    transport = connected()
    transport.fail_next_publishes(1, RuntimeError("AWS_ERROR_MQTT_NO_CONNECTION"), synchronous=True)
    with pytest.raises(RuntimeError, match="AWS_ERROR_MQTT_NO_CONNECTION"):
        transport.publish(report_topic(), b"{}")
    assert error_of(transport.publish(report_topic(), b"{}")) is None


def test_a_count_of_zero_cancels_and_a_negative_count_is_refused() -> None:
    transport = connected()
    transport.fail_next_publishes(5)
    transport.fail_next_publishes(0)
    assert error_of(transport.publish(report_topic(), b"{}")) is None
    with pytest.raises(ValueError, match="count"):
        transport.fail_next_connects(-1)


def test_fail_next_subscribes() -> None:
    transport = connected()
    transport.fail_next_subscribes(1)
    with pytest.raises(TransportError, match="injected SUBACK failure"):
        transport.subscribe(REPORTS, Inbox())
    assert transport.subscriptions == {}
    transport.subscribe(REPORTS, Inbox())
    assert list(transport.subscriptions) == [REPORTS]


def test_publishes_wait_for_their_puback_when_auto_ack_is_off() -> None:
    transport = MemoryTransport(auto_ack=False)
    transport.connect()
    inbox = Inbox()
    transport.subscribe(REPORTS, inbox)
    futures = [transport.publish(report_topic(), b"%d" % n) for n in range(3)]
    assert not any(f.done() for f in futures)
    assert len(inbox.messages) == 3  # the broker has them; only the PUBACK is missing
    assert transport.pending == 3
    assert transport.ack_pending() == 3
    assert all(error_of(f) is None for f in futures)
    lost = transport.publish(report_topic(), b"x")
    assert transport.ack_pending(PublishError("PUBACK lost")) == 1
    assert str(error_of(lost)) == "PUBACK lost"
    assert transport.ack_pending() == 0


def test_disconnect_fails_the_publishes_still_waiting() -> None:
    transport = MemoryTransport(auto_ack=False)
    transport.connect()
    waiting = transport.publish(report_topic(), b"{}")
    transport.disconnect()
    error = error_of(waiting)
    assert isinstance(error, PublishError) and "disconnected" in str(error)
    assert transport.pending == 0 and transport.disconnects == 1


# -- the link drops and comes back --------------------------------------------------------------


def test_drop_and_restore_the_link() -> None:
    broker = MemoryBroker()
    device, service = connected(broker, "device"), connected(broker, "service")
    events: list[tuple[bool, str]] = []
    device.set_connection_listener(lambda up, reason: events.append((up, reason)))
    at_service, at_device = Inbox(), Inbox()
    service.subscribe(REPORTS, at_service)
    device.subscribe("$aws/things/t1/#", at_device)

    device.drop_link("keep-alive timeout")
    assert not is_up(device) and events == [(False, "keep-alive timeout")]
    queued = device.publish(report_topic(), b"during")  # waits in the client's queue
    assert not queued.done() and device.pending == 1
    assert broker.publish(report_topic(), b"lost") == 1  # the service only
    assert at_device.messages == []
    device.drop_link()  # already down: nothing more to tell
    assert len(events) == 1

    device.restore_link()
    assert is_up(device) and events[-1] == (True, "link restored")
    assert error_of(queued) is None
    assert at_service.messages == [(report_topic(), b"lost"), (report_topic(), b"during")]
    assert device.published == [(report_topic(), b"during")]
    device.restore_link()  # already up: nothing happens
    assert len(events) == 2


def test_restore_link_after_a_disconnect_does_nothing() -> None:
    transport = connected()
    transport.drop_link()
    queued = transport.publish(report_topic(), b"{}")
    transport.disconnect()
    assert isinstance(error_of(queued), PublishError)
    transport.restore_link()
    assert not is_up(transport)


def test_connect_after_a_drop_brings_the_link_back_and_sends_the_queue() -> None:
    transport, inbox = connected(), Inbox()
    transport.subscribe(REPORTS, inbox)
    transport.drop_link()
    queued = transport.publish(report_topic(), b"{}")
    transport.connect()
    assert is_up(transport) and error_of(queued) is None
    assert inbox.topics == [report_topic()]


def test_subscriptions_survive_a_reconnect_but_nothing_arrives_while_away() -> None:
    broker = MemoryBroker()
    transport, inbox = connected(broker), Inbox()
    transport.subscribe(REPORTS, inbox)
    transport.disconnect()
    assert broker.clients == []
    assert broker.publish(report_topic(), b"missed") == 0
    transport.connect()
    assert broker.publish(report_topic(), b"seen") == 1
    assert inbox.messages == [(report_topic(), b"seen")]


# -- handlers that fail, and threads -------------------------------------------------------------


def test_a_failing_handler_is_logged_and_kept_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    sender, receiver, other = connected(broker), connected(broker, "rx"), connected(broker)
    inbox = Inbox()

    def explode(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    receiver.subscribe(REPORTS, explode)
    other.subscribe(REPORTS, inbox)
    assert error_of(sender.publish(report_topic(), b"{}")) is None
    assert len(inbox.messages) == 1  # the other subscriber still got it
    assert [str(e) for e in receiver.handler_errors] == ["handler bug"]
    assert sender.handler_errors == []
    assert "rx: the handler of $aws/things/+/defender/metrics/+ raised" in caplog.text


def test_concurrent_publishers_and_subscribers() -> None:
    broker = MemoryBroker()
    inbox = Inbox()
    connected(broker, "sink").subscribe("$share/g/" + REPORTS, inbox)
    senders = [connected(broker, f"s{i}") for i in range(8)]
    start = threading.Barrier(len(senders) + 1)

    def send(transport: MemoryTransport, n: int) -> None:
        start.wait()
        for k in range(200):
            transport.publish(report_topic(f"t{n}"), b"%d" % k).result(timeout=5)

    def churn() -> None:  # subscribe/unsubscribe-like churn on another client
        start.wait()
        extra = connected(broker, "churn")
        for k in range(200):
            extra.subscribe(f"x/{k}", Inbox())
            extra.drop_link()
            extra.restore_link()

    threads = [threading.Thread(target=send, args=(s, n)) for n, s in enumerate(senders)]
    threads.append(threading.Thread(target=churn))
    for thread in threads[:-1]:
        thread.start()
    threads[-1].start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert len(inbox.messages) == 8 * 200
    for n, sender in enumerate(senders):
        assert [p for _, p in sender.published] == [b"%d" % k for k in range(200)]
        assert {t for t, _ in sender.published} == {report_topic(f"t{n}")}

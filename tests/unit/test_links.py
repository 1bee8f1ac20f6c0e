"""The awscrt links turn awscrt's synchronous errors into the transport's own errors.

A link is built without connecting, so these tests need no broker.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
from awscrt import io
from awscrt.exceptions import AwsCrtError

from defender_agent.errors import PublishError, TransportError
from defender_agent.transport._link import Link, LinkSetup
from defender_agent.transport._mqtt3 import Mqtt3Link
from defender_agent.transport._mqtt5 import Mqtt5Link
from defender_agent.transport.base import MqttSettings

SETTINGS = MqttSettings(endpoint="127.0.0.1", port=1, client_id="t", use_tls=False)
SETUP = LinkSetup(tls_ctx=None, socket_options=io.SocketOptions(), proxy=None, ws_transform=None)
CLOSED = AwsCrtError(1051, "AWS_IO_SOCKET_NOT_CONNECTED", "socket is not connected.")


class Events:
    def link_up(self, link: Link, session_present: bool, reason: str) -> None:
        pass

    def link_down(self, link: Link, reason: str) -> None:
        pass

    def message(self, topic_filter: Optional[str], topic: str, payload: bytes) -> None:
        pass


def _raise(*_args: Any, **_kwargs: Any) -> Any:  # stands in for awscrt calls
    raise CLOSED


def test_mqtt5_publish_rejected_at_once_is_a_publish_error() -> None:
    link = Mqtt5Link(SETTINGS, SETUP, Events())
    try:
        with pytest.raises(PublishError, match=r"^publish to a/#: .*AWS_ERROR_MQTT5_PUBLISH"):
            link.publish("a/#", b"{}")  # awscrt checks the packet before queueing it
    finally:
        link.close(1)


@pytest.mark.parametrize("link_class", [Mqtt3Link, Mqtt5Link])
def test_synchronous_awscrt_errors_are_transport_errors(
    link_class: type[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = link_class(SETTINGS, SETUP, Events())
    client = link._conn if link_class is Mqtt3Link else link._client
    monkeypatch.setattr(client, "publish", _raise)
    monkeypatch.setattr(client, "subscribe", _raise)
    try:
        with pytest.raises(PublishError) as published:
            link.publish("a/b", b"{}")
        assert str(published.value) == (
            "publish to a/b: AWS_IO_SOCKET_NOT_CONNECTED: socket is not connected."
        )
        assert published.value.__cause__ is CLOSED
        with pytest.raises(TransportError, match=r"^subscribe a/\+: AWS_IO_SOCKET_NOT_CONNECTED"):
            link.subscribe("a/+")
    finally:
        link.close(1)

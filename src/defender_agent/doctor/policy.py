"""AWS IoT policy text and what a refused connection or subscription means (pure).

AWS IoT answers a policy problem in two ways: a CONNECT the policy does not allow
is answered by closing the connection (no CONNACK code), and a SUBSCRIBE to a topic
filter the policy does not allow gets a SUBACK failure (0x80). The agent needs
``iot:Subscribe`` on the topic filters of the replies and ``iot:Receive`` on their
topics, for its thing name and report format.
"""

from __future__ import annotations

import json
import re
from typing import Optional

__all__ = ["connect_refused_fix", "region_of", "subscribe_statement"]

_ENDPOINT = re.compile(r"\.iot\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?\.?$")


def region_of(endpoint: str) -> Optional[str]:
    """The AWS region in an AWS IoT data endpoint, else ``None``.

    >>> region_of("a1b2c3-ats.iot.eu-west-1.amazonaws.com")
    'eu-west-1'
    >>> region_of("localhost") is None
    True
    """
    match = _ENDPOINT.search(endpoint.lower())
    return match.group(1) if match else None


def _partition(endpoint: str) -> str:
    return "aws-cn" if endpoint.lower().rstrip(".").endswith(".amazonaws.com.cn") else "aws"


def subscribe_statement(thing: str, fmt: str, endpoint: str, account: Optional[str] = None) -> str:
    """The IoT policy statements that let ``thing`` subscribe to and receive its replies.

    The region comes from the endpoint; the account id cannot be known on the device
    (``account`` when given, else ``*``).

    >>> print(subscribe_statement("gw-1", "json", "x-ats.iot.us-east-1.amazonaws.com", "123"))
    ... # doctest: +NORMALIZE_WHITESPACE
    [{"Effect": "Allow", "Action": "iot:Subscribe", "Resource":
      ["arn:aws:iot:us-east-1:123:topicfilter/$aws/things/gw-1/defender/metrics/json/accepted",
       "arn:aws:iot:us-east-1:123:topicfilter/$aws/things/gw-1/defender/metrics/json/rejected"]},
     {"Effect": "Allow", "Action": "iot:Receive", "Resource":
      ["arn:aws:iot:us-east-1:123:topic/$aws/things/gw-1/defender/metrics/json/accepted",
       "arn:aws:iot:us-east-1:123:topic/$aws/things/gw-1/defender/metrics/json/rejected"]}]
    """
    prefix = f"arn:{_partition(endpoint)}:iot:{region_of(endpoint) or '*'}:{account or '*'}"
    topics = [
        f"$aws/things/{thing}/defender/metrics/{fmt}/{kind}" for kind in ("accepted", "rejected")
    ]
    statements = [
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": [f"{prefix}:topicfilter/{t}" for t in topics],
        },
        {
            "Effect": "Allow",
            "Action": "iot:Receive",
            "Resource": [f"{prefix}:topic/{t}" for t in topics],
        },
    ]
    return json.dumps(statements)


def connect_refused_fix(reason: str, client_id: str, thing: str, endpoint: str) -> str:
    """What to do when MQTT CONNECT fails after a good TLS handshake, in words.

    >>> connect_refused_fix("CONNACK NOT_AUTHORIZED", "gw", "gw", "h").split(":")[0]
    'the broker refused this client'
    >>> "iot:Connect" in connect_refused_fix("AWS_ERROR_MQTT_UNEXPECTED_HANGUP: closed", "gw",
    ...                                      "gw", "x.iot.us-east-1.amazonaws.com")
    True
    """
    region = region_of(endpoint)
    if "CONNACK" in reason:
        return (
            "the broker refused this client: check that the certificate is allowed to "
            f"connect as client id {client_id!r} (for AWS IoT: the certificate is ACTIVE, "
            "attached to the thing and to a policy allowing iot:Connect on "
            f"arn:aws:iot:{region or '*'}:*:client/{client_id})"
        )
    return (
        "the broker closed the connection after the TLS handshake; AWS IoT does that when "
        "the policy attached to the certificate does not allow iot:Connect on "
        f"arn:aws:iot:{region or '*'}:*:client/{client_id}, when the certificate is "
        "INACTIVE or not attached to a policy, or when another device connects with the "
        f"same client id (thing {thing!r}; see packaging/aws/iot-policy.json)"
    )

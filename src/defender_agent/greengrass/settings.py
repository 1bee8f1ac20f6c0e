"""A Greengrass component's configuration as the agent's settings (pure).

The component configuration has the sections and keys of the TOML file
(``agent``, ``collector``, ``custom_metrics``, ``logging``), as JSON::

    {"agent": {"interval": 300, "format": "cbor", "short_names": true},
     "collector": {"list_size": 50},
     "custom_metrics": {"enabled": ["cpu_usage"]}}

plus ``SampleIntervalSeconds``, the key of AWS's ``aws.greengrass.DeviceDefender``
component, taken as ``agent.interval`` when that is not given, so a deployment
written for AWS's component works unchanged. ``accessControl`` (the nucleus's own
key) is ignored; ``mqtt`` is refused (the nucleus holds the connection to AWS IoT
Core). Numbers the nucleus hands back as ``300.0`` count as whole numbers. The
thing name is the core's (``AWS_IOT_THING_NAME``) unless ``agent.thing_name`` is set.

>>> component_document({"SampleIntervalSeconds": 600.0, "accessControl": {}}, thing_name="gw")
{'agent': {'interval': 600, 'thing_name': 'gw'}}
>>> config = config_from_component({"agent": {"format": "cbor"}}, thing_name="gw", environ={})
>>> config.agent.interval, config.agent.format, config.effective_thing_name
(300, 'cbor', 'gw')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from defender_agent.config import MIN_INTERVAL_S, Config, load_config
from defender_agent.errors import ConfigError
from defender_agent.rules import validate_thing_name

__all__ = [
    "AWS_INTERVAL_KEY",
    "DOCUMENT_NAME",
    "component_document",
    "config_from_component",
]

#: The interval key of AWS's ``aws.greengrass.DeviceDefender`` component.
AWS_INTERVAL_KEY = "SampleIntervalSeconds"
#: How messages name the component configuration.
DOCUMENT_NAME = "component configuration"
#: Keys of the component configuration that belong to the nucleus, not to the agent.
_NUCLEUS_KEYS = ("accessControl",)


def _whole(value: object) -> object:
    """JSON numbers the nucleus returns as floats: ``300.0`` -> ``300``, recursively.

    >>> _whole({"a": [1.0, 2.5, True], "b": 3.0})
    {'a': [1, 2.5, True], 'b': 3}
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole(item) for item in value]
    return value


def _interval(value: object) -> object:
    """``SampleIntervalSeconds`` as AWS's component takes it: a number or a numeric string.

    >>> _interval("300"), _interval(600), _interval("soon")
    (300, 600, 'soon')
    """
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # the interval's own check names the key and the value
        return _whole(number)
    return value


def component_document(value: Mapping[str, Any], *, thing_name: Optional[str]) -> dict[str, Any]:
    """The TOML-shaped settings in a component configuration.

    Raises:
        ConfigError: a section is not an object, or ``mqtt`` is given.
    """
    document: dict[str, Any] = {}
    for key, item in value.items():
        if key in _NUCLEUS_KEYS or key == AWS_INTERVAL_KEY:
            continue
        if key == "mqtt":
            raise ConfigError(
                f"{DOCUMENT_NAME}: mqtt: not used under Greengrass (the nucleus holds the "
                "connection to AWS IoT Core); remove it"
            )
        if not isinstance(item, dict):
            raise ConfigError(f"{DOCUMENT_NAME}: {key} must be an object (a section)")
        document[key] = _whole(item)
    if AWS_INTERVAL_KEY in value:
        agent = document.setdefault("agent", {})
        agent.setdefault("interval", _interval(_whole(value[AWS_INTERVAL_KEY])))
    if thing_name:
        document.setdefault("agent", {}).setdefault("thing_name", thing_name)
    return document


def config_from_component(
    value: Mapping[str, Any],
    *,
    thing_name: Optional[str],
    flags: Optional[Mapping[str, object]] = None,
    environ: Optional[Mapping[str, str]] = None,
    config_file: Optional[Path] = None,
    labels: Optional[Mapping[str, str]] = None,
) -> Config:
    """The agent's configuration from a component configuration (and flags, the environment).

    Precedence: options > ``DEFENDER_AGENT_*`` > the component configuration >
    the TOML file, if any (``config_file``, else as ``run`` finds it) > defaults.

    Raises:
        ConfigError: one line naming the key and what is wrong with it.
    """
    document = component_document(value, thing_name=thing_name)
    config = load_config(
        flags,
        config_file,
        environ,
        command="greengrass",
        labels=labels,
        document=(DOCUMENT_NAME, document),
    )
    agent, sources = config.agent, config.sources
    if agent.interval < MIN_INTERVAL_S and not agent.allow_short_interval:
        where = sources["interval"]
        given = value.get("agent")
        if AWS_INTERVAL_KEY in value and not (isinstance(given, dict) and "interval" in given):
            where = f"{DOCUMENT_NAME}: {AWS_INTERVAL_KEY}"
        raise ConfigError(
            f"{where}: interval {agent.interval} s is under the {MIN_INTERVAL_S} s Device "
            "Defender allows per thing (agent.allow_short_interval for testing)"
        )
    try:
        validate_thing_name(config.effective_thing_name)
    except ValueError as exc:
        raise ConfigError(f"{sources['thing_name']}: invalid thing name: {exc}") from None
    if agent.dry_run:
        raise ConfigError(f"{sources['dry_run']}: dry_run has no use under Greengrass")
    return config

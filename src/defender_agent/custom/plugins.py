"""Custom metrics from Python plugins: entry points in the group ``defender_agent.custom_metrics``.

A distribution declares one entry point per metric, named after the metric::

    [project.entry-points."defender_agent.custom_metrics"]
    battery_level = "my_package.metrics:battery"

The object it points to provides:

* ``type``: the metric type (``"number"``, ``"number-list"``, ``"string-list"``,
  ``"ip-address-list"``, or a :class:`~defender_agent.model.CustomMetricType`);
* ``name`` (optional): the metric name in reports, the entry point's name by default;
* ``collect()``: returns the value of this cycle (a number, or an iterable of
  numbers, strings or IP addresses), or ``None`` for no value this cycle.
  A callable object with ``name``/``type`` attributes may be the collector
  itself; a class is instantiated once, without arguments.

A plugin is only used when its entry point's name is listed in
``[custom_metrics] enabled``: installing a package never adds a metric to the
reports by itself. Plugins run inside the agent, so a plugin
must be quick; exceptions are caught and the metric left out.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable, Final, Optional, Union

from defender_agent.custom._base import MetricError
from defender_agent.custom.checks import check_name, parse_type
from defender_agent.model import CustomMetricType

if TYPE_CHECKING:  # importlib.metadata costs ~5 MiB: loaded only when plugins are looked up
    import importlib.metadata

__all__ = ["ENTRY_POINT_GROUP", "PluginSource", "discover_plugins", "load_plugin"]

log = logging.getLogger(__name__)

#: The entry point group plugins are declared in.
ENTRY_POINT_GROUP: Final = "defender_agent.custom_metrics"


def _group(group: str) -> Iterable[importlib.metadata.EntryPoint]:
    import importlib.metadata  # noqa: PLC0415 - see the module's imports

    if sys.version_info >= (3, 10):
        return importlib.metadata.entry_points(group=group)
    else:  # noqa: RET505 - an else mypy understands as the 3.9 branch
        return importlib.metadata.entry_points().get(group, ())  # 3.9: a dict of group -> list


def discover_plugins(group: str = ENTRY_POINT_GROUP) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plugins' entry points by name, without importing them.

    When two distributions declare the same name, the first one found on
    ``sys.path`` is used (as Python imports it).
    """
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in _group(group):
        if entry_point.name in found and found[entry_point.name].value != entry_point.value:
            log.warning(
                "custom metric plugin %s is declared twice (%s and %s); using the first",
                entry_point.name,
                found[entry_point.name].value,
                entry_point.value,
            )
        found.setdefault(entry_point.name, entry_point)
    return found


class PluginSource:
    """A loaded plugin, as a metric source.

    Attributes:
        name: the metric name.
        type: the metric type.
        origin: where it comes from (``module:attribute``), for messages.
    """

    def __init__(
        self, name: str, metric_type: CustomMetricType, collect: Callable[[], object], origin: str
    ) -> None:
        self.name = name
        self.type = metric_type
        self.origin = origin
        self._collect = collect

    def __repr__(self) -> str:
        return f"PluginSource({self.name!r}, {self.type.value!r}, {self.origin!r})"

    def sample(self) -> Optional[object]:
        """Call the plugin's ``collect()``."""
        return self._collect()


def load_plugin(entry_point: importlib.metadata.EntryPoint) -> Union[PluginSource, MetricError]:
    """Import a plugin and check its shape; a broken plugin gives the reason instead."""
    origin = entry_point.value
    try:
        obj = entry_point.load()
        if isinstance(obj, type):
            obj = obj()
    except Exception as exc:  # third-party code: any error leaves out this plugin only
        log.debug("loading plugin %s failed", origin, exc_info=True)
        return MetricError("load", f"cannot load plugin {origin}: {type(exc).__name__}: {exc}")
    name = getattr(obj, "name", entry_point.name)
    why = check_name(name)
    if why is not None:
        return MetricError("load", f"plugin {origin} has a bad name: {why}")
    try:
        metric_type = parse_type(getattr(obj, "type", None))
    except ValueError as exc:
        return MetricError("load", f"plugin {origin} has a bad type: {exc}")
    collect = getattr(obj, "collect", None)
    if not callable(collect):
        collect = obj if callable(obj) else None
    if collect is None:
        return MetricError("load", f"plugin {origin} has no collect() and is not callable")
    return PluginSource(name, metric_type, collect, origin)

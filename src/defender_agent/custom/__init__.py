"""Custom metrics: built-ins, commands and plugins, checked against the service's rules.

The collector builds one :class:`CustomMetrics` from the ``[custom_metrics]``
configuration and calls :meth:`CustomMetrics.collect` every cycle::

    from defender_agent.custom import CustomMetrics, CustomMetricsConfig

    metrics = CustomMetrics(CustomMetricsConfig(enabled=("cpu_usage", "memory_usage")), procfs)
    metrics.collect()        # [CustomMetric('memory_usage', ...)]: cpu_usage takes its baseline
    metrics.collect()        # both

Modules: :mod:`.settings` (the built-in names and the configuration table),
:mod:`.checks` (name and value rules), :mod:`.builtins`, :mod:`.exec_metric`
(commands), :mod:`.plugins` (entry points), :mod:`.registry` (collection).
The names below are imported on first use, so reading a configuration does
not import the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defender_agent._lazy import lazy_getattr

if TYPE_CHECKING:
    from defender_agent.custom.checks import Invalid, check_name, check_value
    from defender_agent.custom.exec_metric import ExecSpec
    from defender_agent.custom.plugins import ENTRY_POINT_GROUP
    from defender_agent.custom.registry import CustomMetrics
    from defender_agent.custom.settings import (
        BUILTIN_NAMES,
        BUILTINS,
        BuiltinInfo,
        CustomMetricsConfig,
        parse_custom_metrics_table,
    )

__all__ = [
    "BUILTINS",
    "BUILTIN_NAMES",
    "ENTRY_POINT_GROUP",
    "BuiltinInfo",
    "CustomMetrics",
    "CustomMetricsConfig",
    "ExecSpec",
    "Invalid",
    "check_name",
    "check_value",
    "parse_custom_metrics_table",
]

__getattr__ = lazy_getattr(
    globals(),
    {
        "defender_agent.custom.checks": ("Invalid", "check_name", "check_value"),
        "defender_agent.custom.exec_metric": ("ExecSpec",),
        "defender_agent.custom.plugins": ("ENTRY_POINT_GROUP",),
        "defender_agent.custom.registry": ("CustomMetrics",),
        "defender_agent.custom.settings": (
            "BUILTINS",
            "BUILTIN_NAMES",
            "BuiltinInfo",
            "CustomMetricsConfig",
            "parse_custom_metrics_table",
        ),
    },
)

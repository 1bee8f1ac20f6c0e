"""Custom metrics: built-ins, commands and plugins, checked against the service's rules.

The collector builds one :class:`CustomMetrics` from the ``[custom_metrics]``
configuration and calls :meth:`CustomMetrics.collect` every cycle::

    from defender_agent.custom import CustomMetrics, CustomMetricsConfig

    metrics = CustomMetrics(CustomMetricsConfig(enabled=("cpu_usage", "memory_usage")), procfs)
    metrics.collect()        # [CustomMetric('memory_usage', ...)]: cpu_usage takes its baseline
    metrics.collect()        # both

Modules: :mod:`.checks` (name and value rules), :mod:`.builtins`,
:mod:`.exec_metric` (commands), :mod:`.plugins` (entry points),
:mod:`.registry` (configuration and collection).
"""

from defender_agent.custom.builtins import BUILTINS, BuiltinInfo
from defender_agent.custom.checks import Invalid, check_name, check_value
from defender_agent.custom.exec_metric import ExecSpec
from defender_agent.custom.plugins import ENTRY_POINT_GROUP
from defender_agent.custom.registry import (
    BUILTIN_NAMES,
    CustomMetrics,
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

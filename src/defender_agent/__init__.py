"""defender_agent: an AWS IoT Device Defender agent.

The public API, for embedding the collector, reports and validator::

    from defender_agent import Collector, CollectorConfig, encode_fitted

    collector = Collector(CollectorConfig(include_custom_metrics=True))
    collector.cycle()                      # the baseline
    report = collector.cycle()             # one complete report
    encoded = encode_fitted(report, "cbor", short_names=True)   # within IoT Core's 128 KB
    encoded.payload                        # the bytes to publish

Everything not listed in ``__all__`` is internal and may change.
"""

from defender_agent.cycle import Collector, CollectorConfig
from defender_agent.errors import (
    AgentError,
    CollectorError,
    ConfigError,
    ProcParseError,
    ReportDecodeError,
    ReportError,
    ReportTooLargeError,
    StateError,
)
from defender_agent.model import (
    Connection,
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.report.document import to_document
from defender_agent.report.fit import EncodedReport, encode_fitted
from defender_agent.report.names import NameStyle
from defender_agent.report.serialize import encode_report
from defender_agent.report.validate import (
    PayloadFormat,
    Problem,
    Severity,
    ValidationPolicy,
    ValidationResult,
    validate_document,
    validate_payload,
)

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "Collector",
    "CollectorConfig",
    "CollectorError",
    "ConfigError",
    "Connection",
    "ConnectionList",
    "CustomMetric",
    "CustomMetricType",
    "EncodedReport",
    "ListeningPort",
    "NameStyle",
    "NetworkStats",
    "PayloadFormat",
    "PortList",
    "Problem",
    "ProcParseError",
    "Report",
    "ReportDecodeError",
    "ReportError",
    "ReportTooLargeError",
    "Severity",
    "StateError",
    "ValidationPolicy",
    "ValidationResult",
    "__version__",
    "encode_fitted",
    "encode_report",
    "to_document",
    "validate_document",
    "validate_payload",
]

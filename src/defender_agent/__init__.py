"""defender_agent: an AWS IoT Device Defender agent.

The public API, for embedding the collector, reports, validator and transports::

    from defender_agent import Collector, CollectorConfig, encode_fitted

    collector = Collector(CollectorConfig(include_custom_metrics=True))
    collector.cycle()                      # the baseline
    report = collector.cycle()             # one complete report
    encoded = encode_fitted(report, "cbor", short_names=True)   # within IoT Core's 128 KB
    encoded.payload                        # the bytes to publish

and back: :func:`validate_payload` checks received bytes against the service's
rules, :func:`decode_report` turns the accepted document into a :class:`Report`.

To send it, any :class:`Transport` will do: :class:`MqttTransport` reaches AWS IoT
Core with the :class:`MqttSettings` given; :class:`MemoryTransport` (and a shared
:class:`MemoryBroker`) keeps everything in the process, for tests and embedding.

Names are imported when first used, so ``import defender_agent`` is cheap.
Everything not listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defender_agent._lazy import lazy_exports

if TYPE_CHECKING:
    from defender_agent.cycle import Collector, CollectorConfig
    from defender_agent.errors import (
        AgentError,
        CollectorError,
        ConfigError,
        ConnectError,
        PublishError,
        ReportDecodeError,
        ReportError,
        ReportTooLargeError,
        StateError,
        TlsSetupError,
        TransportError,
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
    from defender_agent.report.decode import decode_report
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
    from defender_agent.transport.base import MqttSettings, Transport
    from defender_agent.transport.memory import MemoryBroker, MemoryTransport
    from defender_agent.transport.mqtt import MqttTransport

__version__ = "0.1.0"

#: Where each public name lives (imported on first use).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "defender_agent.cycle": ("Collector", "CollectorConfig"),
    "defender_agent.errors": (
        "AgentError",
        "CollectorError",
        "ConfigError",
        "ConnectError",
        "PublishError",
        "ReportDecodeError",
        "ReportError",
        "ReportTooLargeError",
        "StateError",
        "TlsSetupError",
        "TransportError",
    ),
    "defender_agent.model": (
        "Connection",
        "ConnectionList",
        "CustomMetric",
        "CustomMetricType",
        "ListeningPort",
        "NetworkStats",
        "PortList",
        "Report",
    ),
    "defender_agent.report.decode": ("decode_report",),
    "defender_agent.report.document": ("to_document",),
    "defender_agent.report.fit": ("EncodedReport", "encode_fitted"),
    "defender_agent.report.names": ("NameStyle",),
    "defender_agent.report.serialize": ("encode_report",),
    "defender_agent.report.validate": (
        "PayloadFormat",
        "Problem",
        "Severity",
        "ValidationPolicy",
        "ValidationResult",
        "validate_document",
        "validate_payload",
    ),
    "defender_agent.transport.base": ("MqttSettings", "Transport"),
    "defender_agent.transport.memory": ("MemoryBroker", "MemoryTransport"),
    "defender_agent.transport.mqtt": ("MqttTransport",),
}

__all__ = [
    "AgentError",
    "Collector",
    "CollectorConfig",
    "CollectorError",
    "ConfigError",
    "ConnectError",
    "Connection",
    "ConnectionList",
    "CustomMetric",
    "CustomMetricType",
    "EncodedReport",
    "ListeningPort",
    "MemoryBroker",
    "MemoryTransport",
    "MqttSettings",
    "MqttTransport",
    "NameStyle",
    "NetworkStats",
    "PayloadFormat",
    "PortList",
    "Problem",
    "PublishError",
    "Report",
    "ReportDecodeError",
    "ReportError",
    "ReportTooLargeError",
    "Severity",
    "StateError",
    "TlsSetupError",
    "Transport",
    "TransportError",
    "ValidationPolicy",
    "ValidationResult",
    "__version__",
    "decode_report",
    "encode_fitted",
    "encode_report",
    "to_document",
    "validate_document",
    "validate_payload",
]

if not TYPE_CHECKING:  # mypy sees the imports above; at run time names load on first use
    __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

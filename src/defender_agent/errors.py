"""The exception tree of defender_agent.

::

    AgentError
    ├── ConfigError            bad configuration value or option (names the key)
    ├── CollectorError         a metric source failed
    ├── ReportError            a report could not be built, encoded or decoded
    │   ├── ReportDecodeError  a payload is not a JSON object / CBOR map
    │   └── ReportTooLargeError     a report cannot be made to fit the size limit
    ├── StateError             the state directory cannot be used
    └── TransportError         MQTT connection, subscription or publish failed
        ├── ConnectError       one connection attempt failed (the caller retries)
        ├── PublishError       a publish was not acknowledged
        └── TlsSetupError      certificate, key or CA files are unusable (fatal)

Every message is one line that names what is wrong; the CLI prints it without
a traceback.
"""

from __future__ import annotations

__all__ = [
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
]


class AgentError(Exception):
    """Base class of every error defender_agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration value or command-line option is invalid."""


class CollectorError(AgentError):
    """A metric source could not be read."""


class ReportError(AgentError):
    """A report could not be built, encoded or decoded."""


class ReportDecodeError(ReportError):
    """A payload is not a well-formed JSON object or CBOR map."""


class ReportTooLargeError(ReportError):
    """A report cannot be brought under the size limit."""


class StateError(AgentError):
    """The state directory or a state file cannot be used."""


class TransportError(AgentError):
    """An MQTT operation failed."""


class ConnectError(TransportError):
    """One connection attempt failed; connecting again later may succeed."""


class PublishError(TransportError):
    """A publish was not acknowledged (the link dropped, or the broker refused it)."""


class TlsSetupError(TransportError):
    """The certificate, key or CA files cannot be used; retrying will not help."""

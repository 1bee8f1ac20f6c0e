"""Why a TLS handshake failed, in words: awscrt says only ``TLS (SSL) negotiation failed``.

After awscrt's handshake fails, :func:`diagnose` makes one handshake of its own with
Python's :mod:`ssl` against the same endpoint and port, with the same CA file, client
certificate and ALPN list (and a short timeout), and :func:`explain` turns the
:mod:`ssl` error into a sentence: the server's certificate is not signed by the CA
file, is for another name, has expired; the server refused our client certificate;
no ALPN protocol or TLS version in common; no TLS on that port.

:func:`explain` is pure (worked examples below); :func:`diagnose` does the I/O and
never raises. WebSocket and proxied connections are not diagnosed (the TLS peer there
is not the endpoint alone).
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Optional

from defender_agent.transport._awscrt_tls import alpn_protocols
from defender_agent.transport.base import MqttSettings

__all__ = ["diagnose", "explain", "looks_like_tls_failure"]

#: OpenSSL verification codes: the chain does not lead to a trusted CA.
_UNTRUSTED: Final = frozenset({2, 7, 18, 19, 20, 21, 24, 27, 28})
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_NAME_MISMATCH: Final = frozenset({62, 64})  # host name, IP address

#: TLS alerts the server sends about our client certificate (OpenSSL reason names).
_CLIENT_CERT_ALERTS: Final = {
    "TLSV1_ALERT_UNKNOWN_CA": "the server refused our client certificate: it is not signed "
    "by a CA the server trusts (the server asked for a client certificate this CA did not "
    "sign)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused our client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server refused our client certificate: it has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server refused our client certificate: it is revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server refused our client certificate: unsupported",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server asked for a client certificate and got none",
    "TLSV1_ALERT_ACCESS_DENIED": "the server refused the connection (access denied)",
}
_OTHER_ALERTS: Final = {
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "the server accepts none of the ALPN protocols offered",
    "NO_APPLICATION_PROTOCOL": "the server accepts none of the ALPN protocols offered",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.2 or later needed)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.2 or later needed)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS on this port (a plain MQTT port?)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (no cipher or "
    "certificate in common)",
}

#: How long the diagnostic connection and handshake may take.
TIMEOUT_S: Final = 5.0
#: How long to wait for an alert after the handshake (TLS 1.3 reports a refused client
#: certificate only then).
_PROBE_S: Final = 1.0


def looks_like_tls_failure(reason: str) -> bool:
    """Whether awscrt's failure text is about TLS (worth a diagnosis).

    >>> looks_like_tls_failure("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE: TLS (SSL) negotiation "
    ...                        "failed")
    True
    >>> looks_like_tls_failure("AWS_IO_SOCKET_CONNECTION_REFUSED: socket connection refused.")
    False
    """
    return "AWS_IO_TLS" in reason or "TLS (SSL)" in reason


def explain(
    error: BaseException,
    *,
    ca_file: Optional[str],
    endpoint: str,
    server_names: Sequence[str] = (),
) -> Optional[str]:
    """The cause of a failed :mod:`ssl` handshake in words; ``None`` when it is not TLS's.

    Args:
        error: what the handshake (or the read right after it) raised.
        ca_file: the CA file used to verify the server (``None``: the system store).
        endpoint: the host name connected to.
        server_names: the names in the server's certificate (for a name mismatch).

    >>> bad_ca = ssl.SSLCertVerificationError(1, "certificate verify failed")
    >>> bad_ca.verify_code, bad_ca.verify_message = 20, "unable to get local issuer certificate"
    >>> explain(bad_ca, ca_file="/etc/ca.pem", endpoint="iot.example")
    "the server's certificate is not signed by CA /etc/ca.pem"
    >>> other = ssl.SSLCertVerificationError(1, "certificate verify failed")
    >>> other.verify_code, other.verify_message = 62, "Hostname mismatch"
    >>> explain(other, ca_file=None, endpoint="iot.example", server_names=["a.test", "b.test"])
    "the server's certificate is for a.test, b.test, not iot.example"
    >>> refused = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    >>> refused.reason = "TLSV1_ALERT_UNKNOWN_CA"
    >>> explain(refused, ca_file="ca.pem", endpoint="h")  # doctest: +ELLIPSIS
    'the server refused our client certificate: it is not signed by a CA the server trusts...'
    >>> explain(ConnectionRefusedError(111, "Connection refused"), ca_file=None, endpoint="h")
    """
    trusted = f"CA {ca_file}" if ca_file else "any CA of the system store"
    if isinstance(error, ssl.SSLCertVerificationError):
        code = getattr(error, "verify_code", None)
        if code in _UNTRUSTED:
            return f"the server's certificate is not signed by {trusted}"
        if code in _NAME_MISMATCH:
            names = ", ".join(server_names) if server_names else "another name"
            return f"the server's certificate is for {names}, not {endpoint}"
        if code == _EXPIRED:
            return "the server's certificate has expired"
        if code == _NOT_YET_VALID:
            return "the server's certificate is not valid yet (is this machine's clock right?)"
        detail = getattr(error, "verify_message", None) or str(error)
        return f"the server's certificate was not accepted: {detail}"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None) or ""
        if reason in _CLIENT_CERT_ALERTS:
            return _CLIENT_CERT_ALERTS[reason]
        if reason in _OTHER_ALERTS:
            return _OTHER_ALERTS[reason]
        return f"TLS handshake failed: {' '.join(str(error).split())}"
    return None


def _certificate_names(der: bytes) -> list[str]:
    """The DNS names and IP addresses (else the CN) of a DER certificate; [] if unreadable."""
    pem = ssl.DER_cert_to_PEM_cert(der)
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as sink:
            sink.write(pem)
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except Exception:  # an unusual certificate: the sentence says "another name"
        return []
    finally:
        Path(path).unlink()
    names = [
        str(value)
        for kind, value in decoded.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    ]
    if names:
        return names
    return [
        str(value)
        for rdn in decoded.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]


def _server_names(settings: MqttSettings, timeout_s: float) -> list[str]:
    """The names in the server's certificate, fetched without verifying it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        address = (settings.endpoint, settings.port)
        with (
            socket.create_connection(address, timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=settings.endpoint) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return []
    return _certificate_names(der) if der else []


def _context(settings: MqttSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    protocols = alpn_protocols(settings)
    if protocols:
        context.set_alpn_protocols(protocols)
    return context


def diagnose(settings: MqttSettings, timeout_s: float = TIMEOUT_S) -> Optional[str]:
    """One handshake with Python's ssl, as awscrt made it; the cause of its failure in words.

    Returns:
        The cause, or ``None`` when this handshake worked, failed for a reason that is
        not TLS's (the network), or the connection is not diagnosable (WebSocket, proxy,
        plain TCP). Never raises.
    """
    if not settings.use_tls or settings.websocket or settings.proxy_host:
        return None
    ca_file = str(settings.ca_file) if settings.ca_file is not None else None
    try:
        context = _context(settings)
    except (OSError, ValueError, ssl.SSLError):
        return None  # the TLS file checks report unusable files already
    try:
        address = (settings.endpoint, settings.port)
        with (
            socket.create_connection(address, timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=settings.endpoint) as tls,
        ):
            tls.settimeout(_PROBE_S)
            try:  # TLS 1.3: a refused client certificate arrives as an alert now
                tls.recv(1)
            except (socket.timeout, TimeoutError):
                return None
    except ssl.SSLCertVerificationError as exc:
        names: list[str] = []
        if getattr(exc, "verify_code", None) in _NAME_MISMATCH:
            names = _server_names(settings, timeout_s)
        return explain(exc, ca_file=ca_file, endpoint=settings.endpoint, server_names=names)
    except ssl.SSLError as exc:
        return explain(exc, ca_file=ca_file, endpoint=settings.endpoint)
    except (OSError, ValueError):
        return None
    return None

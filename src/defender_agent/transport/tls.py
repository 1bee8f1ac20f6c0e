"""Preflight checks of the TLS files, run before any connection is tried.

awscrt reports a bad certificate, key or CA only as ``AWS_IO_TLS_CTX_ERROR``
(which file?) or, for an untrusted server, after a 10-30 s s2n "blinding"
delay. :func:`check_tls_files` checks the files with the
standard library first, so a configuration mistake is a one-line
:class:`~defender_agent.errors.TlsSetupError` that names the file:

* missing, unreadable, a directory or absurdly large;
* a CA file without a parseable PEM certificate;
* a certificate that does not parse, or is expired or not yet valid;
* a key that does not parse, is encrypted, or does not belong to the certificate.

Problems that do not stop a connection come back as warnings: a private key
other users can read, a certificate about to expire, an expired certificate
in the CA bundle, a CA file that holds no CA certificate (a device certificate
given as the CA, say).

Example:
    >>> from defender_agent.transport.base import MqttSettings
    >>> check_tls_files(MqttSettings(endpoint="localhost", use_tls=False))
    []
"""

from __future__ import annotations

import logging
import re
import ssl
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional

from defender_agent.errors import TlsSetupError
from defender_agent.transport.base import MqttSettings

__all__ = ["check_tls_files"]

log = logging.getLogger(__name__)

#: No PEM certificate, key or CA bundle is anywhere near this size; protects against
#: a path like /dev/zero.
MAX_PEM_BYTES = 4 * 1024 * 1024
#: Warn when the device certificate expires within this many days.
EXPIRY_WARNING_DAYS = 30
_DAY_S = 86400.0

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY_MARKERS = (
    b"-----BEGIN PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----",
)
_PEM_ENCRYPTED_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def check_tls_files(settings: MqttSettings) -> list[str]:
    """Check the CA, certificate and key files the settings name.

    Nothing is checked when ``use_tls`` is False. The certificate and key are
    required for mutual TLS, and not used with ``websocket`` (SigV4 signs the
    connection instead); the CA file is optional (the system store is used).

    Args:
        settings: the connection settings.

    Returns:
        Warnings, each a sentence naming the file (empty when all is well).

    Raises:
        TlsSetupError: a file is unusable; the one-line message names the file and why.
    """
    if not settings.use_tls:
        return []
    warnings: list[str] = []
    if settings.ca_file is not None:
        warnings += _check_ca(settings.ca_file)
    else:
        log.debug("no ca_file: the server is verified against the system trust store")
    if settings.websocket:
        if settings.cert_file is not None or settings.key_file is not None:
            warnings.append(
                "cert_file/key_file are not used with websocket (SigV4 credentials sign the "
                "connection)"
            )
        return warnings
    if settings.cert_file is None or settings.key_file is None:
        missing = "cert_file" if settings.cert_file is None else "key_file"
        raise TlsSetupError(f"mutual TLS needs a certificate and a key: {missing} is not set")
    warnings += _check_certificate(settings.cert_file)
    warnings += _check_key(settings.key_file, settings.cert_file)
    return warnings


def _read(path: Path, what: str) -> bytes:
    """The file's bytes, or a TlsSetupError naming the file and the OS problem."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise TlsSetupError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsSetupError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise TlsSetupError(f"{what} {path} cannot be read: permission denied") from None
    except OSError as exc:
        raise TlsSetupError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_PEM_BYTES:
        raise TlsSetupError(f"{what} {path} is too large to be a PEM file")
    if not data.strip():
        raise TlsSetupError(f"{what} {path} is empty")
    return data


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's message without CPython's source location, for one-line errors."""
    message = str(exc.args[-1]) if exc.args else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", message)


def _check_ca(path: Path) -> list[str]:
    data = _read(path, "CA file")
    if _PEM_CERT not in data:
        raise TlsSetupError(f"CA file {path} contains no PEM certificate (BEGIN CERTIFICATE)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"CA file {path} does not parse as PEM certificates: {_ssl_reason(exc)}"
        ) from exc
    warnings = []
    if not context.cert_store_stats().get("x509_ca"):  # OpenSSL's X509_check_ca on each one
        first = _decode_cert(path)
        warnings.append(
            f"CA file {path} holds no CA certificate ({_subject(first or {})} is not a CA); "
            "is it the device certificate?"
        )
    now = time.time()
    for cert in context.get_ca_certs():
        not_after = cert.get("notAfter")
        if isinstance(not_after, str) and _cert_time(not_after) < now:
            warnings.append(
                f"CA file {path} contains an expired certificate ({_subject(cert)}, "
                f"expired {not_after})"
            )
    return warnings


def _check_certificate(path: Path) -> list[str]:
    data = _read(path, "certificate")
    if _PEM_CERT not in data:
        hint = " (it holds a private key: cert and key swapped?)" if _is_key(data) else ""
        raise TlsSetupError(f"certificate {path} contains no PEM certificate{hint}")
    try:
        pem = data.decode("ascii")
        der = ssl.PEM_cert_to_DER_cert(pem[pem.index(_PEM_CERT.decode()) :])
        # Loading as a trust anchor is the public stdlib way to make OpenSSL parse X.509.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ValueError, ssl.SSLError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else "bad PEM encoding"
        raise TlsSetupError(f"certificate {path} does not parse: {reason}") from exc
    return _check_validity(path)


def _check_validity(path: Path) -> list[str]:
    decoded = _decode_cert(path)
    if decoded is None:
        return []
    not_before, not_after = decoded.get("notBefore"), decoded.get("notAfter")
    if not isinstance(not_before, str) or not isinstance(not_after, str):
        log.debug("certificate %s: no validity dates decoded; date check skipped", path)
        return []
    now = time.time()
    if _cert_time(not_before) > now:
        raise TlsSetupError(f"certificate {path} is not valid yet (valid from {not_before})")
    expiry = _cert_time(not_after)
    if expiry < now:
        raise TlsSetupError(f"certificate {path} expired on {not_after}")
    days_left = (expiry - now) / _DAY_S
    if days_left < EXPIRY_WARNING_DAYS:
        return [f"certificate {path} expires in {days_left:.0f} days ({not_after}); renew it"]
    return []


def _decode_cert(path: Path) -> Optional[dict[str, object]]:
    """Decode a PEM certificate with CPython's private test helper, if it exists.

    The standard library has no public certificate parser; ``_ssl._test_decode_cert``
    is present in CPython 3.9-3.13. Any other interpreter skips the date check.
    """
    module = getattr(ssl, "_ssl", None)
    decode: Optional[Callable[[str], dict[str, object]]] = getattr(
        module, "_test_decode_cert", None
    )
    if decode is None:
        log.debug("ssl._ssl._test_decode_cert is missing: certificate date check skipped")
        return None
    try:
        return decode(str(path))
    except (ssl.SSLError, OSError, ValueError, TypeError) as exc:
        log.debug("certificate %s: dates not decoded (%s); date check skipped", path, exc)
        return None


def _cert_time(value: str) -> float:
    """Seconds since the epoch of an OpenSSL date (``Jan  2 00:00:00 2020 GMT``)."""
    return float(ssl.cert_time_to_seconds(value))


def _subject(cert: Mapping[str, object]) -> str:
    subject = cert.get("subject")
    if isinstance(subject, tuple):
        for rdn in subject:
            for name, value in rdn:
                if name == "commonName":
                    return f"CN={value}"
    return "unnamed"


def _is_key(data: bytes) -> bool:
    return any(marker in data for marker in _PEM_KEY_MARKERS + _PEM_ENCRYPTED_MARKERS)


def _refuse_password() -> bytes:
    # Never let OpenSSL prompt on a terminal for an encrypted key's password.
    raise TlsSetupError("the private key is encrypted")


def _check_key(path: Path, cert: Path) -> list[str]:
    warnings = []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0  # _read below names the problem
    data = _read(path, "private key")
    if any(marker in data for marker in _PEM_ENCRYPTED_MARKERS):
        raise TlsSetupError(
            f"private key {path} is encrypted; the MQTT client needs an unencrypted key"
        )
    if not any(marker in data for marker in _PEM_KEY_MARKERS):
        hint = " (it holds a certificate: cert and key swapped?)" if _PEM_CERT in data else ""
        raise TlsSetupError(f"private key {path} contains no PEM private key{hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(path), password=_refuse_password)
    except TlsSetupError:
        raise TlsSetupError(f"private key {path} is encrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsSetupError(
                f"private key {path} does not belong to certificate {cert}"
            ) from exc
        raise TlsSetupError(f"private key {path} does not parse: {_ssl_reason(exc)}") from exc
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"private key {path} is readable by other users (mode {mode:04o}); chmod 600 it"
        )
    elif mode & (stat.S_IWGRP | stat.S_IWOTH):
        warnings.append(
            f"private key {path} is writable by other users (mode {mode:04o}); chmod 600 it"
        )
    return warnings

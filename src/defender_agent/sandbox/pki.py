"""A throwaway PKI for the sandbox, made in pure Python with ``cryptography``.

:func:`ensure_pki` fills a directory (mode 0700) with::

    ca.crt ca.key            the sandbox root CA (CN "defender-agent sandbox CA")
    server.crt server.key    the broker: CN localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
    thing.crt thing.key      the agent's client certificate, CN = the thing name
    service.crt service.key  the Device Defender service's client certificate,
                             CN "defender-service"

Every key is ECDSA P-256 (a few milliseconds to make; awscrt, the Python ``ssl``
module and mosquitto all take them), written mode 0600 in PKCS #8 PEM. Files that
are still good are reused, so a restart makes nothing: a certificate is made
again when it is missing, does not parse, does not match its key, was not issued
by the current CA, names another subject, or expires within
:data:`RENEW_BEFORE_DAYS`; a new CA makes every leaf again. A lock file
serialises two sandboxes that share the directory.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     first = ensure_pki(Path(tmp) / "pki", "gw-1")
...     again = ensure_pki(Path(tmp) / "pki", "gw-1")
...     (first.made, again.made, oct(first.thing.key.stat().st_mode & 0o777))
(('ca', 'server', 'thing', 'service'), (), '0o600')
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from defender_agent.errors import StateError
from defender_agent.sandbox.private import private_dir

__all__ = [
    "CA_NAME",
    "RENEW_BEFORE_DAYS",
    "SERVICE_NAME",
    "VALID_DAYS",
    "CertAndKey",
    "SandboxPki",
    "ensure_pki",
    "issue_client",
]

#: The CN of the sandbox root CA.
CA_NAME: Final = "defender-agent sandbox CA"
#: The CN (and MQTT identity) of the local Device Defender service.
SERVICE_NAME: Final = "defender-service"
#: How long new certificates are valid.
VALID_DAYS: Final = 397
#: Certificates expiring sooner than this are made again (more than the agent's 30-day warning).
RENEW_BEFORE_DAYS: Final = 31
_BACKDATE: Final = datetime.timedelta(hours=1)  # tolerate a little clock skew
_SERVER_NAMES: Final = ("localhost",)
_SERVER_ADDRESSES: Final = ("127.0.0.1", "::1")

_Name = Union[x509.DNSName, x509.IPAddress]


@dataclass(frozen=True)
class CertAndKey:
    """A certificate and its private key (PEM files).

    Attributes:
        cert: The certificate.
        key: The private key (mode 0600).
    """

    cert: Path
    key: Path


@dataclass(frozen=True)
class SandboxPki:
    """The files of the sandbox PKI.

    Attributes:
        directory: The directory that holds them (mode 0700).
        ca_cert: The root CA certificate: what clients and the broker trust.
        ca_key: The root CA's private key.
        server: The broker's certificate (localhost, 127.0.0.1, ::1).
        thing: The agent's client certificate (CN = ``thing_name``).
        service: The service's client certificate (CN = ``service_name``).
        thing_name: The thing the agent reports for.
        service_name: The service's identity.
        made: What this call made anew, of ``ca``, ``server``, ``thing``, ``service``
            (empty when every file was reused).
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server: CertAndKey
    thing: CertAndKey
    service: CertAndKey
    thing_name: str
    service_name: str
    made: tuple[str, ...] = ()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _common_name(cert: x509.Certificate) -> Optional[str]:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically (temporary file in the same directory, then rename)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _save(pair: CertAndKey, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    # the key first: a crash in between leaves a key without a certificate, made again next time
    _write(pair.key, _key_pem(key), 0o600)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load(pair: CertAndKey) -> Optional[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """The certificate and key, or None when either is missing, unreadable or not P-256."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return None
    with contextlib.suppress(OSError):
        if pair.key.stat().st_mode & 0o077:
            pair.key.chmod(0o600)
    return cert, key


def _in_date(cert: x509.Certificate, now: datetime.datetime) -> bool:
    renew = datetime.timedelta(days=RENEW_BEFORE_DAYS)
    return cert.not_valid_before_utc <= now and now + renew < cert.not_valid_after_utc


def _builder(
    subject: str,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(CA_NAME, _name(CA_NAME), key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    *,
    server: bool,
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        names: list[_Name] = [x509.DNSName(name) for name in _SERVER_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(addr)) for addr in _SERVER_ADDRESSES]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _leaf_ok(
    pair: CertAndKey,
    ca_cert: x509.Certificate,
    common_name: str,
    now: datetime.datetime,
) -> bool:
    loaded = _load(pair)
    if loaded is None:
        return False
    cert = loaded[0]
    if _common_name(cert) != common_name or not _in_date(cert, now):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_name(name: str, what: str) -> None:
    if not name or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"{what} {name!r} is empty or has a control character")


def ensure_pki(
    directory: Path,
    thing_name: str,
    *,
    service_name: str = SERVICE_NAME,
    now: Optional[datetime.datetime] = None,
) -> SandboxPki:
    """Make the sandbox PKI in ``directory``, reusing every file that is still good.

    Args:
        directory: Where the files go; created mode 0700 (an existing directory of
            this user is made 0700).
        thing_name: The CN of the agent's client certificate.
        service_name: The CN of the service's client certificate.
        now: The time to check validity against and to issue from (default: now).

    Returns:
        The paths, and what was made anew.

    Raises:
        StateError: The directory cannot be created or written, or belongs to another user.
        ValueError: A name is empty or has a control character.
    """
    _check_name(thing_name, "thing name")
    _check_name(service_name, "service name")
    if thing_name == service_name:
        raise ValueError(f"the thing name must not be the service's identity {service_name!r}")
    directory = Path(directory)
    now = now or _now()
    private_dir(directory, "sandbox PKI directory", tighten=True)
    ca_pair = CertAndKey(directory / "ca.crt", directory / "ca.key")
    leaves = (
        ("server", CertAndKey(directory / "server.crt", directory / "server.key"), "localhost"),
        ("thing", CertAndKey(directory / "thing.crt", directory / "thing.key"), thing_name),
        ("service", CertAndKey(directory / "service.crt", directory / "service.key"), service_name),
    )
    made: list[str] = []
    try:
        with _locked(directory):
            ca = _load(ca_pair)
            if ca is None or _common_name(ca[0]) != CA_NAME or not _in_date(ca[0], now):
                ca = _make_ca(now)
                _save(ca_pair, *ca)
                made.append("ca")
            for role, pair, common_name in leaves:
                if "ca" in made or not _leaf_ok(pair, ca[0], common_name, now):
                    _save(pair, *_make_leaf(ca, common_name, server=role == "server", now=now))
                    made.append(role)
    except OSError as exc:
        raise StateError(f"sandbox PKI directory {directory}: {exc.strerror or exc}") from exc
    return SandboxPki(
        directory=directory,
        ca_cert=ca_pair.cert,
        ca_key=ca_pair.key,
        server=leaves[0][1],
        thing=leaves[1][1],
        service=leaves[2][1],
        thing_name=thing_name,
        service_name=service_name,
        made=tuple(made),
    )


def issue_client(
    pki: SandboxPki,
    common_name: str,
    directory: Optional[Path] = None,
    *,
    now: Optional[datetime.datetime] = None,
) -> CertAndKey:
    """Issue another client certificate from the sandbox CA (a second thing, a test client).

    Args:
        pki: The sandbox PKI (its CA signs).
        common_name: The certificate's CN: the MQTT identity the embedded broker sees.
        directory: Where ``<common_name>.crt`` and ``.key`` go (default: the PKI directory).
        now: The time to issue from (default: now).

    Returns:
        The new certificate and key (overwritten if they existed).

    Raises:
        StateError: The CA cannot be read, or the files cannot be written.
        ValueError: The name is empty, has a control character or a ``/``.
    """
    _check_name(common_name, "client name")
    if "/" in common_name or common_name.startswith("."):
        raise ValueError(f"client name {common_name!r} cannot be a file name")
    ca = _load(CertAndKey(pki.ca_cert, pki.ca_key))
    if ca is None:
        raise StateError(f"sandbox CA {pki.ca_cert}: missing or unreadable")
    target = Path(directory) if directory is not None else pki.directory
    pair = CertAndKey(target / f"{common_name}.crt", target / f"{common_name}.key")
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        _save(pair, *_make_leaf(ca, common_name, server=False, now=now or _now()))
    except OSError as exc:
        raise StateError(f"client certificate {pair.cert}: {exc.strerror or exc}") from exc
    return pair

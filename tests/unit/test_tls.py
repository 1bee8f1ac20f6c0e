"""check_tls_files: each unusable TLS file is one TlsSetupError naming it; lesser problems warn.

The PKI is made here with ``cryptography`` (ECDSA P-256, milliseconds): a root CA,
a device certificate and key it signed, and variants (expired, not yet valid,
expiring soon, a key of another certificate, an encrypted key, a leaf as the CA).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

pytest.importorskip("cryptography")
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from defender_agent.errors import TlsSetupError
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.tls import MAX_PEM_BYTES, check_tls_files

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: Optional[tuple[str, ec.EllipticCurvePrivateKey]] = None,
    ca: bool = False,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 365 * DAY,
) -> x509.Certificate:
    issuer_cn, issuer_key = issuer if issuer is not None else (cn, key)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey, password: Optional[bytes] = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@dataclass
class Pki:
    """Files in one directory; ``write`` adds more."""

    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: Path
    cert: Path
    key: Path

    def write(self, filename: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.directory / filename
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def device(
        self,
        filename: str,
        not_before: datetime.datetime = NOW - DAY,
        not_after: datetime.datetime = NOW + 365 * DAY,
    ) -> tuple[Path, Path]:
        """A device certificate (valid between the dates) and its key, signed by the CA."""
        key = new_key()
        issuer = ("Test Root CA", self.ca_key)
        cert = certificate(filename, key, issuer=issuer, not_before=not_before, not_after=not_after)
        return (
            self.write(f"{filename}.crt", cert_pem(cert)),
            self.write(f"{filename}.key", key_pem(key)),
        )

    def settings(self, **changes: object) -> MqttSettings:
        fields: dict[str, object] = {
            "endpoint": "example-ats.iot.eu-west-1.amazonaws.com",
            "ca_file": self.ca,
            "cert_file": self.cert,
            "key_file": self.key,
        }
        fields.update(changes)
        return MqttSettings(**fields)  # type: ignore[arg-type]  # the test's own field values


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("tls")
    ca_key = new_key()
    ca = directory / "ca.crt"
    ca.write_bytes(cert_pem(certificate("Test Root CA", ca_key, ca=True)))
    made = Pki(directory, ca_key, ca, directory / "unset", directory / "unset")
    made.cert, made.key = made.device("thing1")
    return made


def refused(settings: MqttSettings) -> str:
    with pytest.raises(TlsSetupError) as info:
        check_tls_files(settings)
    return str(info.value)


def test_a_good_set_passes_without_warnings(pki: Pki) -> None:
    assert check_tls_files(pki.settings()) == []
    assert check_tls_files(pki.settings(ca_file=None)) == []  # the system store is used


def test_nothing_is_checked_without_tls(pki: Pki) -> None:
    missing = pki.directory / "missing.crt"
    assert check_tls_files(pki.settings(use_tls=False, cert_file=missing, key_file=missing)) == []


@pytest.mark.parametrize("unset", ["cert_file", "key_file"])
def test_mutual_tls_needs_both_files(pki: Pki, unset: str) -> None:
    message = refused(pki.settings(**{unset: None}))
    assert message == f"mutual TLS needs a certificate and a key: {unset} is not set"


def test_websocket_ignores_the_device_files_with_a_warning(pki: Pki) -> None:
    assert check_tls_files(pki.settings(websocket=True, cert_file=None, key_file=None)) == []
    (warning,) = check_tls_files(pki.settings(websocket=True))
    assert warning.startswith("cert_file/key_file are not used with websocket")


# -- files that cannot be read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "what"),
    [("ca_file", "CA file"), ("cert_file", "certificate"), ("key_file", "private key")],
)
def test_a_missing_file_is_named(pki: Pki, field: str, what: str) -> None:
    missing = pki.directory / "nowhere" / "file.pem"
    assert refused(pki.settings(**{field: missing})) == f"{what} {missing} does not exist"


def test_a_directory_an_empty_file_and_a_huge_file(pki: Pki) -> None:
    assert refused(pki.settings(cert_file=pki.directory)).endswith("is a directory, not a file")
    empty = pki.write("empty.crt", b"  \n")
    assert refused(pki.settings(cert_file=empty)) == f"certificate {empty} is empty"
    huge = pki.write("huge.crt", b"\n" * (MAX_PEM_BYTES + 1))
    assert refused(pki.settings(ca_file=huge)) == f"CA file {huge} is too large to be a PEM file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file(pki: Pki) -> None:
    locked = pki.write("locked.key", key_pem(new_key()), mode=0o000)
    assert refused(pki.settings(key_file=locked)) == (
        f"private key {locked} cannot be read: permission denied"
    )


# -- files that are not what they should be ---------------------------------------------------


def test_garbage_instead_of_pem(pki: Pki) -> None:
    garbage = pki.write("garbage.pem", b"hello, this is not PEM\n")
    assert refused(pki.settings(ca_file=garbage)) == (
        f"CA file {garbage} contains no PEM certificate (BEGIN CERTIFICATE)"
    )
    assert refused(pki.settings(cert_file=garbage)) == (
        f"certificate {garbage} contains no PEM certificate"
    )
    assert refused(pki.settings(key_file=garbage)) == (
        f"private key {garbage} contains no PEM private key"
    )


def test_pem_armour_around_garbage(pki: Pki) -> None:
    body = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    bad_cert = pki.write("bad.crt", body)
    assert refused(pki.settings(cert_file=bad_cert)).startswith(
        f"certificate {bad_cert} does not parse: "
    )
    assert refused(pki.settings(ca_file=bad_cert)).startswith(
        f"CA file {bad_cert} does not parse as PEM certificates: "
    )
    bad_key = pki.write("bad.key", body.replace(b"CERTIFICATE", b"PRIVATE KEY"))
    assert refused(pki.settings(key_file=bad_key)).startswith(
        f"private key {bad_key} does not parse: "
    )


def test_certificate_and_key_swapped(pki: Pki) -> None:
    message = refused(pki.settings(cert_file=pki.key, key_file=pki.cert))
    assert message == (
        f"certificate {pki.key} contains no PEM certificate (it holds a private key: cert and key "
        "swapped?)"
    )
    assert refused(pki.settings(key_file=pki.cert)) == (
        f"private key {pki.cert} contains no PEM private key (it holds a certificate: cert and key "
        "swapped?)"
    )


def test_a_key_that_does_not_belong_to_the_certificate(pki: Pki) -> None:
    other = pki.write("other.key", key_pem(new_key()))
    assert refused(pki.settings(key_file=other)) == (
        f"private key {other} does not belong to certificate {pki.cert}"
    )


def test_an_encrypted_key(pki: Pki) -> None:
    encrypted = pki.write("encrypted.key", key_pem(new_key(), password=b"secret"))
    assert refused(pki.settings(key_file=encrypted)) == (
        f"private key {encrypted} is encrypted; the MQTT client needs an unencrypted key"
    )


# -- validity dates ----------------------------------------------------------------------------


def test_an_expired_certificate(pki: Pki) -> None:
    cert, key = pki.device("expired", not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    message = refused(pki.settings(cert_file=cert, key_file=key))
    assert message.startswith(f"certificate {cert} expired on ")
    assert str((NOW - DAY).year) in message


def test_a_certificate_not_valid_yet(pki: Pki) -> None:
    cert, key = pki.device("notyet", not_before=NOW + 2 * DAY, not_after=NOW + 30 * DAY)
    message = refused(pki.settings(cert_file=cert, key_file=key))
    assert message.startswith(f"certificate {cert} is not valid yet (valid from ")


def test_a_certificate_about_to_expire_warns(pki: Pki) -> None:
    cert, key = pki.device("soon", not_after=NOW + 10 * DAY + datetime.timedelta(hours=1))
    (warning,) = check_tls_files(pki.settings(cert_file=cert, key_file=key))
    assert warning.startswith(f"certificate {cert} expires in 10 days (")
    assert warning.endswith("); renew it")


def test_an_expired_certificate_in_the_ca_bundle_warns(pki: Pki) -> None:
    old_key = new_key()
    old_ca = certificate("Old CA", old_key, ca=True, not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    bundle = pki.write("bundle.crt", pki.ca.read_bytes() + cert_pem(old_ca))
    (warning,) = check_tls_files(pki.settings(ca_file=bundle))
    assert warning.startswith(
        f"CA file {bundle} contains an expired certificate (CN=Old CA, expired "
    )


# -- permissions and the CA ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "warning"),
    [
        (0o600, None),
        (0o400, None),
        (0o640, "readable by other users (mode 0640)"),
        (0o644, "readable by other users (mode 0644)"),
        (0o620, "writable by other users (mode 0620)"),
    ],
)
def test_key_permissions(pki: Pki, mode: int, warning: Optional[str]) -> None:
    key = pki.write(f"mode{mode:o}.key", pki.key.read_bytes(), mode=mode)
    warnings = check_tls_files(pki.settings(key_file=key))
    if warning is None:
        assert warnings == []
    else:
        assert warnings == [f"private key {key} is {warning}; chmod 600 it"]


def test_a_ca_file_that_holds_no_ca(pki: Pki) -> None:
    (warning,) = check_tls_files(pki.settings(ca_file=pki.cert))  # the device certificate
    assert warning == (
        f"CA file {pki.cert} holds no CA certificate (CN=thing1 is not a CA); "
        "is it the device certificate?"
    )


def test_a_ca_bundle_with_one_ca_among_leaves_is_fine(pki: Pki) -> None:
    bundle = pki.write("mixed.crt", pki.cert.read_bytes() + pki.ca.read_bytes())
    assert check_tls_files(pki.settings(ca_file=bundle)) == []

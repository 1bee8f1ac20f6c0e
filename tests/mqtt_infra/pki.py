"""A throwaway test PKI made with the ``openssl`` command (RSA-2048, one ECDSA P-256 client).

Layout of the directory :func:`make_pki` fills::

    ca.crt ca.key              the test root CA (CN "Test Root CA")
    otherca.crt otherca.key    an unrelated CA (CN "Other CA")
    server.crt server.key      CN localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
    <name>.crt <name>.key      client certificates, CN = <name>, signed by ca.crt:
                               thing1 thing2 subscriber responder thingec (ECDSA P-256),
                               expired (valid 2020-01-01..2020-01-02),
                               notyet (valid from 2099-01-01);
                               rogue is signed by otherca.crt instead
    wrong.key                  an RSA key that matches no certificate

Keys are mode 0600. Serial numbers are random (``-set_serial``) so the leaf
certificates can be signed in parallel; the whole PKI takes a few seconds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLIENTS", "Pki", "make_pki", "openssl_available"]

#: Client names signed by the test CA with normal validity.
GOOD_CLIENTS = ("thing1", "thing2", "subscriber", "responder")
#: Every name :meth:`Pki.client` knows.
CLIENTS = (*GOOD_CLIENTS, "thingec", "rogue", "expired", "notyet")

DAYS = "365"  # more than the agent's 30-day expiry warning
CLIENT_EXT = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
SERVER_EXT = (
    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
    "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
)
# `openssl ca` is the only openssl 3.0 command that takes explicit validity dates.
CA_CONF = """\
[ca]
default_ca = dated
[dated]
database = {db}/index.txt
serial = {db}/serial
new_certs_dir = {db}
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
[client_ext]
extendedKeyUsage = clientAuth
basicConstraints = CA:FALSE
"""


def openssl_available() -> bool:
    """Whether the ``openssl`` command is installed."""
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class Pki:
    """Paths of a PKI made by :func:`make_pki`."""

    dir: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    wrong_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """``(cert, key)`` of a client: one of :data:`CLIENTS`."""
        if name not in CLIENTS:
            raise KeyError(f"the test PKI has no client {name!r} (known: {', '.join(CLIENTS)})")
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _openssl(directory: Path, *args: str) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _serial() -> str:
    return "0x" + secrets.token_hex(8)


def _self_signed_ca(directory: Path, name: str, cn: str) -> None:
    _openssl(
        directory,
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", DAYS,
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _csr(directory: Path, name: str, *, ec: bool = False) -> None:
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    if not ec:
        newkey = ["-newkey", "rsa:2048"]
    _openssl(
        directory, "req", *newkey, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}",
    )  # fmt: skip


def _sign(directory: Path, name: str, ca: str, extfile: str) -> None:
    _openssl(
        directory,
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-set_serial", _serial(), "-days", DAYS, "-sha256", "-extfile", extfile,
        "-out", f"{name}.crt",
    )  # fmt: skip


def _client(directory: Path, name: str, ca: str = "ca", *, ec: bool = False) -> None:
    _csr(directory, name, ec=ec)
    _sign(directory, name, ca, "client.ext")


def _server(directory: Path) -> None:
    _csr(directory, "server")
    _sign(directory, "server", "ca", "server.ext")


def _dated_client(directory: Path, name: str, start: str, end: str) -> None:
    db = directory / f"{name}.db"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text(secrets.token_hex(8).upper() + "\n")
    conf = directory / f"{name}.cnf"
    conf.write_text(CA_CONF.format(db=db))
    _csr(directory, name)
    _openssl(
        directory,
        "ca", "-batch", "-config", conf.name, "-cert", "ca.crt", "-keyfile", "ca.key",
        "-in", f"{name}.csr", "-out", f"{name}.crt", "-startdate", start, "-enddate", end,
        "-extensions", "client_ext", "-notext",
    )  # fmt: skip


def _wrong_key(directory: Path) -> None:
    _openssl(directory, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "wrong.key")  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """Create the test PKI in ``directory`` (created if needed) and return its paths.

    Raises:
        RuntimeError: an openssl command failed (its stderr is in the message).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "client.ext").write_text(CLIENT_EXT)
    (directory / "server.ext").write_text(SERVER_EXT)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        # First the two CAs and the unrelated key, then everything they sign.
        first = [
            pool.submit(_self_signed_ca, directory, "ca", "Test Root CA"),
            pool.submit(_self_signed_ca, directory, "otherca", "Other CA"),
            pool.submit(_wrong_key, directory),
        ]
        for job in first:
            job.result()
        jobs = [pool.submit(_client, directory, name) for name in GOOD_CLIENTS]
        jobs += [
            pool.submit(_server, directory),
            pool.submit(_client, directory, "thingec", ec=True),
            pool.submit(_client, directory, "rogue", "otherca"),
            pool.submit(_dated_client, directory, "expired", "20200101000000Z", "20200102000000Z"),
            pool.submit(_dated_client, directory, "notyet", "20990101000000Z", "20990102000000Z"),
        ]
        for job in jobs:
            job.result()
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        dir=directory,
        ca=directory / "ca.crt",
        other_ca=directory / "otherca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        wrong_key=directory / "wrong.key",
    )

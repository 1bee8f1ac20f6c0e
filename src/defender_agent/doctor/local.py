"""The checks that need no network: TLS files, key permissions, thing name, clock, state, /proc.

Each function returns :class:`~.result.Result` values; the judgements are pure functions
of what was read (worked examples below), the reading is small and local.
"""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from defender_agent.config import MIN_INTERVAL_S, Config
from defender_agent.doctor.result import Result
from defender_agent.errors import AgentError, TlsSetupError
from defender_agent.rules import validate_thing_name
from defender_agent.state import StateDir
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.tls import EXPIRY_WARNING_DAYS, check_tls_files

__all__ = [
    "cert_dates",
    "check_clock",
    "check_interval",
    "check_key_permissions",
    "check_proc",
    "check_state_dir",
    "check_thing_name",
    "check_tls_files_result",
    "decode_certificate",
    "expiry_result",
    "tls_file_fix",
]

_DAY_S = 86400.0
#: Before this (2020-01-01) a clock is certainly wrong: a board without an RTC at 1970.
_SANE_EPOCH = 1_577_836_800.0


def decode_certificate(path: Path) -> Optional[dict[str, object]]:
    """A PEM certificate's fields as :mod:`ssl` decodes them; ``None`` if it cannot.

    The standard library's only certificate decoder is CPython's private
    ``_ssl._test_decode_cert`` (3.9-3.13); without it the date checks are skipped.
    """
    decode: Optional[Callable[[str], dict[str, object]]] = getattr(
        getattr(ssl, "_ssl", None), "_test_decode_cert", None
    )
    if decode is None:
        return None
    try:
        return decode(str(path))
    except (ssl.SSLError, OSError, ValueError, TypeError):
        return None


def decode_der(der: bytes) -> Optional[dict[str, object]]:
    """:func:`decode_certificate` of a DER certificate (a server's, from a handshake)."""
    fd, name = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as sink:
            sink.write(ssl.DER_cert_to_PEM_cert(der))
        return decode_certificate(Path(name))
    finally:
        Path(name).unlink()


def cert_dates(decoded: Optional[dict[str, object]]) -> Optional[tuple[float, float]]:
    """``(notBefore, notAfter)`` in epoch seconds, from a decoded certificate.

    >>> cert_dates({"notBefore": "Jan  1 00:00:00 2020 GMT",
    ...             "notAfter": "Jan  2 00:00:00 2020 GMT"})
    (1577836800.0, 1577923200.0)
    >>> cert_dates({}) is None
    True
    """
    if not decoded:
        return None
    before, after = decoded.get("notBefore"), decoded.get("notAfter")
    if not isinstance(before, str) or not isinstance(after, str):
        return None
    return float(ssl.cert_time_to_seconds(before)), float(ssl.cert_time_to_seconds(after))


def tls_file_fix(message: str) -> str:
    """What to do about a :class:`TlsSetupError`, in words.

    >>> tls_file_fix("certificate /c.pem expired on Jan  2 00:00:00 2020 GMT")[:40]
    'make a new certificate for the thing (aw'
    >>> tls_file_fix("private key /k does not belong to certificate /c")[:34]
    'cert_file and key_file must be the'
    """
    if "expired" in message or "not valid yet" in message:
        if "not valid yet" in message:
            return (
                "set this machine's clock (timedatectl set-ntp true), or use a certificate "
                "valid now"
            )
        return (
            "make a new certificate for the thing (aws iot create-keys-and-certificate), "
            "attach it to the thing and its policy, and point cert_file and key_file at the "
            "new files"
        )
    if "does not belong" in message:
        return (
            "cert_file and key_file must be the two halves of one pair: use the key made with "
            "this certificate"
        )
    if "permission denied" in message:
        return (
            "let the user the agent runs as read the file (chown defender-agent FILE; "
            "chmod 600 for the key)"
        )
    if "does not exist" in message or "is not set" in message:
        return (
            "set the path (ca_file, cert_file, key_file in [mqtt] or -r/-c/-k) to an existing file"
        )
    if "encrypted" in message:
        return "decrypt the key (openssl pkey -in KEY -out KEY.plain) and keep it mode 600"
    if "swapped" in message:
        return "swap cert_file and key_file"
    if message.startswith("CA file"):
        return "use the CA that signed the broker's certificate (AWS IoT: AmazonRootCA1.pem)"
    return "give the file AWS IoT issued (PEM), readable by the agent's user"


def expiry_result(not_after: float, now: float, path: Path) -> Result:
    """The certificate's remaining life: a warning under 30 days.

    >>> expiry_result(86400 * 100, 0, Path("c.pem")).status
    'ok'
    >>> r = expiry_result(86400 * 10, 0, Path("c.pem")); r.status, r.detail
    ('warn', 'c.pem expires in 10 days (1970-01-11)')
    """
    days = (not_after - now) / _DAY_S
    when = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    if days < EXPIRY_WARNING_DAYS:
        return Result(
            "certificate expiry",
            "warn",
            f"{path} expires in {days:.0f} days ({when})",
            fix="renew the certificate before it expires (a new certificate, attached to the "
            "thing and its policy)",
        )
    return Result("certificate expiry", "ok", f"{path} valid for {days:.0f} more days ({when})")


def check_tls_files_result(settings: MqttSettings, now: float) -> list[Result]:
    """CA, certificate and key readable, matching, in date; then the certificate's expiry."""
    name = "CA, certificate and key"
    if not settings.use_tls:
        return [Result(name, "skip", "plain TCP to a loopback broker: no TLS files")]
    try:
        warnings = check_tls_files(settings)
    except TlsSetupError as exc:
        return [Result(name, "fail", str(exc), fix=tls_file_fix(str(exc)))]
    # a key readable by others is the next check's subject
    warnings = [w for w in warnings if not w.startswith("private key")]
    expiring = [w for w in warnings if " expires in " in w]
    others = [w for w in warnings if w not in expiring]
    if settings.websocket:
        detail = f"CA {settings.ca_file or 'system store'}; WebSocket: SigV4, no certificate"
    else:
        detail = (
            f"CA {settings.ca_file or '(system store)'}, certificate {settings.cert_file} and "
            f"key {settings.key_file} readable and matching, in date"
        )
    results = [
        Result(name, "warn", "; ".join(others), fix="see the message")
        if others
        else Result(name, "ok", detail)
    ]
    if settings.cert_file is not None and not settings.websocket:
        dates = cert_dates(decode_certificate(settings.cert_file))
        if dates is not None:
            results.append(expiry_result(dates[1], now, settings.cert_file))
    return results


def check_key_permissions(settings: MqttSettings) -> Result:
    """The private key: mode 600 (or 400), owned by the user the agent runs as.

    >>> check_key_permissions(MqttSettings(endpoint="h", use_tls=False)).status
    'skip'
    """
    name = "key permissions"
    key = settings.key_file
    if not settings.use_tls or settings.websocket or key is None:
        return Result(name, "skip", "no private key in use")
    try:
        info = key.stat()
    except OSError as exc:
        return Result(
            name, "fail", f"{key}: {exc.strerror or exc}", fix=tls_file_fix("does not exist")
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Result(
            name,
            "warn",
            f"{key} is mode {mode:04o}: other users can read or change it",
            fix=f"chmod 600 {key} (owner: the user the agent runs as)",
        )
    if info.st_uid != os.geteuid():
        return Result(
            name,
            "warn",
            f"{key} is mode {mode:04o} but owned by uid {info.st_uid}, not this user "
            f"({os.geteuid()})",
            fix=f"chown the key to the user the agent runs as (chown defender-agent {key})",
        )
    return Result(name, "ok", f"{key} mode {mode:04o}, owned by this user")


def check_thing_name(config: Config) -> Result:
    """A valid thing name; a warning when it is not the client id (AWS IoT policy variables).

    >>> from defender_agent.config import load_config
    >>> check_thing_name(load_config({"client_id": "gw", "dry_run": True}, environ={})).detail
    'gw (reports on $aws/things/gw/defender/metrics/json)'
    """
    thing = config.effective_thing_name
    try:
        validate_thing_name(thing)
    except ValueError as exc:
        return Result(
            "thing name",
            "fail",
            f"{thing!r}: {exc}",
            fix="use the thing's name as registered in AWS IoT (thing_name, -t)",
        )
    topic = f"$aws/things/{thing}/defender/metrics/{config.agent.format}"
    if config.effective_client_id != thing:
        return Result(
            "thing name",
            "warn",
            f"{thing} (reports on {topic}), but the client id is {config.effective_client_id}",
            fix="AWS IoT's policy variable ${iot:Connection.Thing.ThingName} is set only when "
            "the client id is the thing name: use the thing name as client id, or a policy "
            "naming the topics",
        )
    return Result("thing name", "ok", f"{thing} (reports on {topic})")


def check_clock(
    now: float,
    cert_not_before: Optional[float],
    server_not_before: Optional[float],
    server_time: Optional[float],
    server_time_source: str = "",
) -> Result:
    """The system clock: after 2020, after both certificates' notBefore, close to the server's.

    >>> check_clock(1.7e9, 1.6e9, 1.6e9, 1.7e9 + 2, "HTTP Date").detail
    'now 2023-11-14 22:13:20 UTC; 2 s from the HTTP Date of the endpoint'
    >>> check_clock(1.7e9, 1.8e9, None, None).status
    'fail'
    >>> check_clock(1.7e9, None, None, 1.7e9 + 900, "HTTP Date").status
    'fail'
    """
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    fix = "set the clock: enable NTP (timedatectl set-ntp true) or set it by hand (date -s)"
    if now < _SANE_EPOCH:
        return Result("system clock", "fail", f"now {shown}: before 2020, surely wrong", fix=fix)
    if cert_not_before is not None and now < cert_not_before:
        return Result(
            "system clock", "fail", f"now {shown}: before the certificate's notBefore", fix=fix
        )
    if server_not_before is not None and now < server_not_before:
        return Result(
            "system clock",
            "fail",
            f"now {shown}: before the server certificate's notBefore",
            fix=fix,
        )
    if server_time is None:
        return Result("system clock", "ok", f"now {shown}; skew not measured (no server time)")
    skew = now - server_time
    detail = f"now {shown}; {abs(skew):.0f} s from the {server_time_source} of the endpoint"
    if abs(skew) > 300:
        return Result("system clock", "fail", detail, fix=fix)
    if abs(skew) > 30:
        return Result("system clock", "warn", detail, fix=fix)
    return Result("system clock", "ok", detail)


def check_state_dir(path: Path) -> Result:
    """The state directory exists (or can be made) and a file can be written in it."""
    try:
        StateDir(path).ensure()
        fd, probe = tempfile.mkstemp(prefix=".doctor.", dir=path)
        os.close(fd)
        Path(probe).unlink()
    except (AgentError, OSError) as exc:
        return Result(
            "state directory",
            "fail",
            f"{path}: {exc}",
            fix=f"create {path} writable by the agent's user (systemd: StateDirectory=), "
            "or set agent.state_dir / --state-dir",
        )
    return Result("state directory", "ok", f"{path} writable")


def check_proc(config: Config) -> Result:
    """One collection (the baseline) from the proc root: every source read, the socket source."""
    from defender_agent.cycle import Collector  # noqa: PLC0415 - only when checked

    root = config.collector.proc_root
    try:
        collector = Collector(config.collector_config(), state_dir=None)
        collector.cycle()  # the baseline
        collector.cycle()  # a report: the sockets are read
        health = collector.health()
    except AgentError as exc:
        return Result("proc", "fail", str(exc), fix="set collector.socket_source or install psutil")
    sources = health.get("sources")
    missing = {
        name: info.get("missing")
        for name, info in (sources.items() if isinstance(sources, dict) else [])
        if isinstance(info, dict) and info.get("missing")
    }
    where = f"{root or '/proc'}"
    if missing:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(missing.items()))
        return Result(
            "proc",
            "fail",
            f"{where}: cannot read {listed}",
            fix="run the agent where it can read /proc (systemd: no ProcSubset=pid, "
            "no ProtectProc=invisible), or set collector.proc_root",
        )
    return Result(
        "proc", "ok", f"{where} readable; sockets from {health.get('socket_source') or '?'}"
    )


def check_interval(config: Config) -> Result:
    """The interval: at least Device Defender's 300 s.

    >>> from defender_agent.config import load_config
    >>> check_interval(load_config({"dry_run": True, "client_id": "g"}, environ={})).detail
    '300 s'
    """
    interval = config.agent.interval
    if interval >= MIN_INTERVAL_S:
        return Result("interval", "ok", f"{interval} s")
    if config.agent.allow_short_interval:
        return Result(
            "interval",
            "warn",
            f"{interval} s, under the {MIN_INTERVAL_S} s Device Defender allows "
            "(allow_short_interval): AWS IoT throttles the extra reports",
            fix=f"use interval = {MIN_INTERVAL_S} or more outside tests",
        )
    return Result(
        "interval",
        "fail",
        f"{interval} s is under the {MIN_INTERVAL_S} s Device Defender allows",
        fix=f"set interval to {MIN_INTERVAL_S} s or more",
    )

"""The network probes: name resolution, TCP connect, the TLS handshake, the server's time.

These use the standard library's :mod:`socket` and :mod:`ssl`, not awscrt: awscrt
gives one opaque error for a whole connection ("TLS (SSL) negotiation failed", after
a blinding delay of up to 30 s), while a probe per stage says *which* stage failed
and why (:func:`defender_agent.transport.diagnose.explain` words the TLS causes), and
each is bounded by its own timeout. The MQTT checks that follow use the agent's own
transport (:mod:`.mqtt`), so a pass there means the agent connects the same way.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import ssl
import threading
from typing import Callable, Optional, TypeVar

from defender_agent.doctor.local import cert_dates, decode_der
from defender_agent.doctor.result import Result
from defender_agent.transport._awscrt_tls import alpn_protocols
from defender_agent.transport.base import MqttSettings
from defender_agent.transport.diagnose import explain

__all__ = ["ServerTime", "check_resolve", "check_tcp", "check_tls", "server_time", "within"]

T = TypeVar("T")


class TimedOutError(Exception):
    """A call did not finish within its time."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread, waiting at most ``seconds`` (then :class:`TimedOutError`).

    For calls that take no timeout of their own (``getaddrinfo``, an MQTT client). A call
    that times out is abandoned, not stopped.

    >>> within(1, lambda: 42)
    42
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="defender-agent-doctor", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimedOutError(f"no answer within {seconds:g} s")
    if "error" in box:
        error = box["error"]
        assert isinstance(error, BaseException)
        raise error
    return box["value"]  # type: ignore[return-value]


def _target(settings: MqttSettings) -> tuple[str, int, str]:
    """Where the TCP connection goes: the proxy when there is one."""
    if settings.proxy_host:
        return settings.proxy_host, settings.proxy_port, "proxy"
    return settings.endpoint, settings.port, "endpoint"


def check_resolve(settings: MqttSettings, timeout: float) -> tuple[Result, list[str]]:
    """The endpoint's (or proxy's) name resolves; the addresses."""
    host, port, what = _target(settings)
    try:
        infos = within(timeout, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except TimedOutError:
        return (
            Result(
                "name resolution",
                "fail",
                f"{host}: no answer from the resolver within {timeout:g} s",
                fix="check /etc/resolv.conf and that a DNS server is reachable",
            ),
            [],
        )
    except (OSError, UnicodeError) as exc:
        return (
            Result(
                "name resolution",
                "fail",
                f"{what} {host} does not resolve: {getattr(exc, 'strerror', None) or exc}",
                fix="check the endpoint's spelling (AWS IoT: aws iot describe-endpoint "
                "--endpoint-type iot:Data-ATS) and the DNS setup",
            ),
            [],
        )
    addresses = sorted({str(info[4][0]) for info in infos})
    return Result("name resolution", "ok", f"{host} -> {', '.join(addresses)}"), addresses


def check_tcp(settings: MqttSettings, timeout: float) -> Result:
    """A TCP connection to the endpoint's (or proxy's) port."""
    host, port, what = _target(settings)
    try:
        with socket.create_connection((host, port), timeout):
            pass
    except (socket.timeout, TimeoutError):
        return Result(
            "TCP connect",
            "fail",
            f"{host}:{port}: no answer within {timeout:g} s (dropped by a firewall?)",
            fix=f"let this machine reach {host} on TCP port {port} (a firewall, a proxy: "
            "--proxy-host), or use port 443 with ALPN where only 443 is open",
        )
    except ConnectionRefusedError:
        return Result(
            "TCP connect",
            "fail",
            f"{host}:{port}: connection refused (nothing listens on that port)",
            fix=f"check the {what}'s port (AWS IoT: 8883, or 443 with ALPN)",
        )
    except OSError as exc:
        return Result(
            "TCP connect",
            "fail",
            f"{host}:{port}: {exc.strerror or exc}",
            fix="check the network route to the endpoint",
        )
    return Result("TCP connect", "ok", f"{host}:{port} ({what}) accepts connections")


def _context(settings: MqttSettings, alpn: Optional[list[str]]) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None and settings.key_file is not None and not settings.websocket:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def check_tls(settings: MqttSettings, timeout: float) -> Result:
    """The TLS handshake as the agent makes it (CA, client certificate, ALPN on 443)."""
    name = "TLS handshake"
    if not settings.use_tls:
        return Result(name, "skip", "plain TCP (insecure_plaintext)")
    if settings.proxy_host:
        return Result(name, "skip", "through a proxy: checked as part of the MQTT connection")
    alpn = alpn_protocols(settings)
    ca = str(settings.ca_file) if settings.ca_file is not None else None
    try:
        context = _context(settings, alpn)
    except (OSError, ssl.SSLError) as exc:
        return Result(
            name, "fail", f"cannot load the TLS files: {exc}", fix="see the TLS files check"
        )
    try:
        with socket.create_connection((settings.endpoint, settings.port), timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=settings.endpoint) as tls:
                version, chosen = tls.version(), tls.selected_alpn_protocol()
                tls.settimeout(min(1.0, timeout))
                # TLS 1.3: a refused client certificate arrives as an alert now
                with contextlib.suppress(socket.timeout, TimeoutError):
                    tls.recv(1)
    except (socket.timeout, TimeoutError):
        return Result(
            name,
            "fail",
            f"no TLS handshake within {timeout:g} s: the port accepts connections but does "
            "not answer (a firewall, a transparent proxy, or the wrong port)",
            fix="check the endpoint and port; where only 443 is open, use port 443 (ALPN "
            "x-amzn-mqtt-ca is offered there)",
        )
    except ssl.SSLError as exc:
        names: list[str] = []
        if isinstance(exc, ssl.SSLCertVerificationError) and getattr(exc, "verify_code", 0) in (
            62,
            64,
        ):
            names = _server_names(settings, timeout)
        cause = explain(exc, ca_file=ca, endpoint=settings.endpoint, server_names=names)
        return Result(name, "fail", cause or str(exc), fix=_tls_fix(cause or ""))
    except OSError as exc:
        return Result(
            name,
            "fail",
            f"the connection failed during the handshake: {exc.strerror or exc}",
            fix="check that this port speaks TLS (AWS IoT: 8883, or 443 with ALPN)",
        )
    detail = (
        f"{version}"
        + (f", ALPN {chosen}" if chosen else "")
        + f", server verified by {ca or 'the system store'}"
    )
    if alpn and chosen is None:
        return Result(
            name,
            "warn",
            detail + f"; ALPN {alpn[0]} offered but not chosen by the server",
            fix="AWS IoT on port 443 needs ALPN x-amzn-mqtt-ca; check a proxy in between",
        )
    return Result(name, "ok", detail)


def _tls_fix(cause: str) -> str:
    """What to do about a TLS failure's cause, in words.

    >>> _tls_fix("the server's certificate is not signed by CA /x.pem")[:33]
    'use the CA that signed the server'
    """
    if "not signed by" in cause:
        return (
            "use the CA that signed the server certificate (AWS IoT ATS endpoints: "
            "AmazonRootCA1.pem) as ca_file"
        )
    if "is for " in cause:
        return (
            "use the endpoint name the server certificate is for (AWS IoT: aws iot "
            "describe-endpoint --endpoint-type iot:Data-ATS)"
        )
    if "client certificate" in cause:
        return (
            "the server does not accept this device certificate: for AWS IoT register and "
            "activate it (aws iot update-certificate --new-status ACTIVE), in this region "
            "and account"
        )
    if "not valid yet" in cause or "expired" in cause:
        return "check this machine's clock (timedatectl set-ntp true)"
    if "ALPN" in cause:
        return "on port 443 AWS IoT needs ALPN x-amzn-mqtt-ca (the agent offers it); check the port"
    if "does not speak TLS" in cause:
        return "this port is plain MQTT: use the broker's TLS port"
    return "check the endpoint, port and CA"


def _server_names(settings: MqttSettings, timeout: float) -> list[str]:
    cert = _server_certificate(settings, timeout)
    if not cert:
        return []
    return [
        str(value)
        for kind, value in cert.get("subjectAltName", ())  # type: ignore[attr-defined]
        if kind in ("DNS", "IP Address")
    ]


def _server_certificate(settings: MqttSettings, timeout: float) -> Optional[dict[str, object]]:
    """The server's certificate, decoded, fetched without verifying it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((settings.endpoint, settings.port), timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=settings.endpoint) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return decode_der(der) if der else None


class ServerTime:
    """What the endpoint says about time: its certificate's notBefore, an HTTP ``Date``."""

    def __init__(self, not_before: Optional[float], now: Optional[float], source: str = "") -> None:
        self.not_before = not_before
        self.now = now
        self.source = source


def server_time(settings: MqttSettings, timeout: float) -> ServerTime:
    """The server certificate's notBefore and, on port 443, the HTTP ``Date`` of the endpoint.

    AWS IoT's data endpoint answers HTTPS on 443 (mutual TLS, ALPN ``http/1.1``) with a
    ``Date`` header; MQTT brokers on other ports give no time, and the skew is then not
    measured. Never raises.
    """
    if not settings.use_tls or settings.proxy_host:
        return ServerTime(None, None)
    dates = cert_dates(_server_certificate(settings, timeout))
    not_before = dates[0] if dates else None
    if settings.port != 443 or settings.websocket:
        return ServerTime(not_before, None)
    try:
        context = _context(settings, ["http/1.1"])
        with socket.create_connection((settings.endpoint, 443), timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=settings.endpoint) as tls:
                request = (
                    f"HEAD / HTTP/1.1\r\nHost: {settings.endpoint}\r\nConnection: close\r\n\r\n"
                )
                tls.sendall(request.encode())
                head = tls.recv(4096).decode("latin-1")
    except (OSError, ValueError, ssl.SSLError):
        return ServerTime(not_before, None)
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "date":
            try:
                return ServerTime(
                    not_before,
                    email.utils.parsedate_to_datetime(value.strip()).timestamp(),
                    "HTTP Date",
                )
            except (TypeError, ValueError):
                break
    return ServerTime(not_before, None)

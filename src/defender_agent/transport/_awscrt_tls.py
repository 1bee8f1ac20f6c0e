"""How to reach the broker, in awscrt terms: TLS context, socket, HTTP proxy, SigV4 signing.

Every :class:`~defender_agent.transport.base.MqttSettings` field that is not
MQTT itself is turned into awscrt objects here, in one place:

* :func:`build_tls_context` — mutual TLS from the certificate and key files (or
  server-only TLS for WebSocket), the CA file or the system store, TLS 1.2 at
  least, the server certificate always verified, and ALPN ``x-amzn-mqtt-ca``
  when asked or on port 443. The context is built here rather than by the
  awsiotsdk builders, which add ALPN only on port 443.
* :func:`build_socket_options` — the TCP connect timeout.
* :func:`build_proxy_options` — an HTTP CONNECT tunnel, with basic auth.
* :func:`signing_region` and :func:`sigv4_handshake_transform` — WebSocket
  handshakes presigned with SigV4 for ``iotdevicegateway``.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from awscrt import auth, http, io, mqtt5

from defender_agent.errors import TlsSetupError
from defender_agent.transport.base import MqttSettings

__all__ = [
    "ALPN_MQTT",
    "alpn_protocols",
    "build_proxy_options",
    "build_socket_options",
    "build_tls_context",
    "signing_region",
    "sigv4_handshake_transform",
]

#: The ALPN protocol AWS IoT Core expects for MQTT with mutual TLS on port 443.
ALPN_MQTT = "x-amzn-mqtt-ca"
#: The SigV4 service name of the AWS IoT data plane's MQTT-over-WebSocket.
SIGNING_SERVICE = "iotdevicegateway"

# xxxx-ats.iot.eu-west-1.amazonaws.com, xxxx.iot.cn-north-1.amazonaws.com.cn
_ENDPOINT_REGION = re.compile(r"\.iot\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?\.?$")

#: ``transform(transform_args)`` as awscrt calls it before each WebSocket handshake.
HandshakeTransform = Callable[..., None]


def alpn_protocols(settings: MqttSettings) -> Optional[list[str]]:
    """The ALPN list to offer, or ``None`` for no ALPN.

    Examples:
        >>> alpn_protocols(MqttSettings(endpoint="h", port=443))
        ['x-amzn-mqtt-ca']
        >>> alpn_protocols(MqttSettings(endpoint="h", port=8883)) is None
        True
        >>> alpn_protocols(MqttSettings(endpoint="h", port=18443, alpn=True))
        ['x-amzn-mqtt-ca']
        >>> alpn_protocols(MqttSettings(endpoint="h", port=443, websocket=True))
        ['http/1.1']
    """
    if not settings.use_tls:
        return None
    if settings.websocket:
        # What the AWS SDKs offer for WebSocket on 443; no ALPN on other ports.
        return ["http/1.1"] if settings.port == 443 else None
    wanted = settings.alpn if settings.alpn is not None else settings.port == 443
    return [ALPN_MQTT] if wanted else None


def build_tls_context(settings: MqttSettings) -> Optional[io.ClientTlsContext]:
    """The client TLS context for the settings; ``None`` when ``use_tls`` is False.

    Run :func:`~defender_agent.transport.tls.check_tls_files` first: its errors
    name the file, awscrt's do not.

    Raises:
        TlsSetupError: awscrt refused the files or the options.
    """
    if not settings.use_tls:
        return None
    try:
        if settings.websocket:
            options = io.TlsContextOptions()
        else:
            if settings.cert_file is None or settings.key_file is None:
                raise TlsSetupError("mutual TLS needs cert_file and key_file")
            options = io.TlsContextOptions.create_client_with_mtls_from_path(
                str(settings.cert_file), str(settings.key_file)
            )
        options.min_tls_ver = io.TlsVersion.TLSv1_2
        options.verify_peer = True  # never turned off: the server must prove it is the broker
        if settings.ca_file is not None:
            options.override_default_trust_store_from_path(None, str(settings.ca_file))
        alpn = alpn_protocols(settings)
        if alpn:
            if not io.is_alpn_available():
                raise TlsSetupError(f"ALPN {alpn[0]} is needed but this TLS library lacks ALPN")
            options.alpn_list = alpn
        return io.ClientTlsContext(options)
    except (OSError, RuntimeError, ValueError) as exc:
        paths = [settings.ca_file]
        if not settings.websocket:
            paths = [settings.cert_file, settings.key_file, settings.ca_file]
        files = ", ".join(str(path) for path in paths if path is not None)
        raise TlsSetupError(f"TLS setup failed ({files or 'system trust store'}): {exc}") from exc


def build_socket_options(settings: MqttSettings) -> io.SocketOptions:
    """TCP options: the connect timeout is ``connect_timeout_s`` (at least 1 ms)."""
    options = io.SocketOptions()
    options.connect_timeout_ms = max(1, int(settings.connect_timeout_s * 1000))
    return options


def build_proxy_options(settings: MqttSettings) -> Optional[http.HttpProxyOptions]:
    """An HTTP CONNECT tunnel through ``proxy_host``, or ``None`` without a proxy.

    Raises:
        TlsSetupError: a proxy password without a user name.
    """
    if not settings.proxy_host:
        return None
    if settings.proxy_password is not None and settings.proxy_username is None:
        raise TlsSetupError("proxy_password is set but proxy_username is not")
    basic = settings.proxy_username is not None
    return http.HttpProxyOptions(
        host_name=settings.proxy_host,
        port=settings.proxy_port,
        auth_type=(
            http.HttpProxyAuthenticationType.Basic
            if basic
            else http.HttpProxyAuthenticationType.Nothing
        ),
        auth_username=settings.proxy_username if basic else None,
        auth_password=(settings.proxy_password or "") if basic else None,
        connection_type=http.HttpProxyConnectionType.Tunneling,
    )


def signing_region(settings: MqttSettings) -> str:
    """The SigV4 region: ``signing_region``, else the one in an AWS IoT endpoint name.

    Examples:
        >>> signing_region(MqttSettings(endpoint="abc-ats.iot.eu-west-1.amazonaws.com"))
        'eu-west-1'
        >>> signing_region(MqttSettings(endpoint="localhost", signing_region="us-east-1"))
        'us-east-1'

    Raises:
        TlsSetupError: no region given and none in the endpoint name.
    """
    if settings.signing_region:
        return settings.signing_region
    match = _ENDPOINT_REGION.search(settings.endpoint.lower())
    if match is None:
        raise TlsSetupError(
            f"websocket needs a signing region: set signing_region (the endpoint "
            f"{settings.endpoint!r} does not name one)"
        )
    return match.group(1)


def sigv4_handshake_transform(
    region: str, credentials: auth.AwsCredentialsProvider
) -> HandshakeTransform:
    """A WebSocket handshake transform that presigns the request's query with SigV4.

    A new signing config is made for every handshake: awscrt fixes the signing
    date when the config is created, and reconnects may come hours later. The
    session token is added after signing, unsigned, as AWS IoT expects.

    Args:
        region: the signing region.
        credentials: where credentials come from (the standard AWS chain).
    """

    def transform(transform_args: mqtt5.WebsocketHandshakeTransformArgs, **_kwargs: object) -> None:
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS,
            credentials_provider=credentials,
            region=region,
            service=SIGNING_SERVICE,
            omit_session_token=True,
        )
        # awscrt catches an exception raised here and cancels the handshake with it.
        signed = auth.aws_sign_request(transform_args.http_request, config)
        signed.add_done_callback(lambda done: transform_args.set_done(done.exception()))

    return transform

"""SigV4 verification against requests signed by botocore's own SigV4Auth."""

from __future__ import annotations

import time
from typing import Optional

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from defender_agent.service.api.sigv4 import SignatureError, load_keys, verify

KEY_ID, SECRET = "AKIDTEST", "s3cret/with+chars"
KEYS = {KEY_ID: SECRET}


def _signed(
    method: str,
    url: str,
    body: bytes = b"",
    *,
    secret: str = SECRET,
    region: str = "eu-west-1",
) -> AWSRequest:
    headers = {"Content-Type": "application/json"}
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(Credentials(KEY_ID, secret), "iot", region).add_auth(request)
    return request


def _verify(request: AWSRequest, *, region: str = "eu-west-1", now: Optional[float] = None) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(request.url)
    headers = {k: str(v) for k, v in request.headers.items()}
    headers.setdefault("Host", parts.netloc)
    body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
    return verify(
        request.method,
        parts.path,
        parts.query,
        headers,
        body,
        KEYS.get,
        region=region,
        service="iot",
        now=time.time() if now is None else now,
    )


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "http://127.0.0.1:8080/security-profiles", b""),
        (
            "GET",
            "http://127.0.0.1:8080/security-profiles?maxResults=5&metricName=aws%3Anum-ports",
            b"",
        ),
        ("POST", "http://127.0.0.1:8080/security-profiles/p-1", b'{"behaviors": []}'),
        (
            "PUT",
            "http://localhost/security-profiles/p/targets?securityProfileTargetArn=arn%3Aaws%3Aiot%3Aeu-west-1%3A1%3Aall%2Fthings",
            b"",
        ),
        (
            "GET",
            "http://[::1]:9/violation-events?startTime=2026-12-07T01%3A02%3A03Z&endTime=x",
            b"",
        ),
        ("DELETE", "http://127.0.0.1/custom-metric/a%3Ab", b""),
    ],
)
def test_botocore_signatures_verify(method: str, url: str, body: bytes) -> None:
    assert _verify(_signed(method, url, body)) == KEY_ID


def _code(request: AWSRequest, **kwargs: object) -> str:
    with pytest.raises(SignatureError) as exc:
        _verify(request, **kwargs)  # type: ignore[arg-type]
    return exc.value.code


def test_wrong_secret_is_invalid_signature() -> None:
    assert _code(_signed("GET", "http://h/security-profiles", secret="other")) == (
        "InvalidSignatureException"
    )


def test_unknown_key_is_unrecognized_client() -> None:
    request = _signed("GET", "http://h/security-profiles")
    request.headers.replace_header(
        "Authorization", str(request.headers["Authorization"]).replace(KEY_ID, "AKIDOTHER")
    )
    assert _code(request) == "UnrecognizedClientException"


def test_missing_and_malformed_authorization() -> None:
    request = _signed("GET", "http://h/security-profiles")
    del request.headers["Authorization"]
    assert _code(request) == "MissingAuthenticationTokenException"
    request.headers["Authorization"] = "Basic dXNlcjpwYXNz"
    assert _code(request) == "IncompleteSignatureException"


def test_tampering_is_detected() -> None:
    request = _signed("POST", "http://h/security-profiles/p", b'{"behaviors": []}')
    request.data = b'{"behaviors": [1]}'
    assert _code(request) == "InvalidSignatureException"
    request = _signed("GET", "http://h/security-profiles?maxResults=5")
    request.url = "http://h/security-profiles?maxResults=6"
    assert _code(request) == "InvalidSignatureException"


def test_region_scope_and_clock_skew() -> None:
    assert _code(_signed("GET", "http://h/x", region="us-east-1")) == "InvalidSignatureException"
    request = _signed("GET", "http://h/x")
    assert _code(request, now=time.time() + 16 * 60) == "InvalidSignatureException"
    assert _code(request, now=time.time() - 16 * 60) == "InvalidSignatureException"
    assert _verify(request, now=time.time() + 14 * 60) == KEY_ID


def test_credentials_file_profiles() -> None:
    keys = load_keys(
        "[default]\naws_access_key_id = A1\naws_secret_access_key = s1\n"
        "[partial]\naws_access_key_id = A2\n"
    )
    assert keys == {"A1": "s1"}

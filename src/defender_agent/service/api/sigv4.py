"""AWS Signature Version 4: verifying a signed HTTP request (pure; no I/O).

The client (boto3, the AWS CLI) signs the request as AWS documents it ("Create a signed
AWS API request"); the server rebuilds the same canonical request from what it received
and compares signatures in constant time:

1. ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
   SignedHeaders=h1;h2, Signature=HEX``.
2. The canonical request: method, the URI path (normalised, each segment URI-encoded
   again: for non-S3 services the signer encodes the already-encoded path), the query
   (each name and value encoded, sorted), the signed headers (lower-case names, values
   with runs of blanks made one), the signed header list, and the hex SHA-256 of the body.
3. The string to sign: ``AWS4-HMAC-SHA256``, ``X-Amz-Date``, the scope, the hex SHA-256
   of the canonical request; the key is ``HMAC(HMAC(HMAC(HMAC("AWS4"+secret, DATE),
   REGION), SERVICE), "aws4_request")``.

A worked example (AWS's own documented test-suite request ``get-vanilla``, its example
keys):

>>> headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z",
...     "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/"
...     "service/aws4_request, SignedHeaders=host;x-amz-date, Signature="
...     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"}
>>> keys = {"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
>>> verify("GET", "/", "", headers, b"", keys.get, region="us-east-1",
...        service="service", now=1440938160.0)
'AKIDEXAMPLE'
>>> verify("GET", "/", "", headers, b"", {"AKIDEXAMPLE": "wrong"}.get, region="us-east-1",
...        service="service", now=1440938160.0)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
defender_agent.service.api.sigv4.SignatureError: InvalidSignatureException: The request ...
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import posixpath
import re
import time
from collections.abc import Mapping
from typing import Callable, Final, Optional
from urllib.parse import quote, unquote

__all__ = [
    "MAX_SKEW_S",
    "SignatureError",
    "canonical_query",
    "canonical_uri",
    "signing_key",
    "verify",
]

#: The largest difference between the request's time and ours (AWS: 15 minutes).
MAX_SKEW_S: Final = 15 * 60

_ALGORITHM: Final = "AWS4-HMAC-SHA256"
_AUTH: Final = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,"
    r"\s*Signature=([0-9a-fA-F]+)\s*$"
)
_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


class SignatureError(Exception):
    """A request that does not authenticate; ``code`` is AWS's exception name.

    ``MissingAuthenticationTokenException`` (no Authorization header),
    ``UnrecognizedClientException`` (unknown access key, malformed header) or
    ``InvalidSignatureException`` (wrong signature, scope or time).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def canonical_uri(raw_path: str) -> str:
    """The path as the signer saw it: dot segments removed, then URI-encoded again.

    >>> canonical_uri("/security-profiles/my%20profile")
    '/security-profiles/my%2520profile'
    >>> canonical_uri("/a/./b/../c"), canonical_uri("")
    ('/a/c', '/')
    """
    path = raw_path or "/"
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if path.endswith("/") and normal != "/":
        normal += "/"
    return quote(normal, safe="/~")


def canonical_query(raw_query: str) -> str:
    """Each name and value decoded then encoded (RFC 3986 unreserved kept), sorted.

    >>> canonical_query("maxResults=5&metricName=aws%3Anum-ports&a")
    'a=&maxResults=5&metricName=aws%3Anum-ports'
    """
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key of a day, region and service."""
    key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _amz_time(text: str) -> float:
    """``20150830T123600Z`` as epoch seconds."""
    return float(calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ")))


def verify(  # noqa: PLR0917 - the parts of a request
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_of: Callable[[str], Optional[str]],
    *,
    region: str,
    service: str,
    now: float,
) -> str:
    """Check a request's SigV4 signature; returns the access key id that signed it.

    Args:
        method: The HTTP method.
        raw_path: The path as received (still percent-encoded).
        raw_query: The query string as received (without ``?``).
        headers: The request headers (any case).
        body: The request body.
        secret_of: The secret access key of an access key id (None: unknown).
        region: The only region accepted in the credential scope.
        service: The only service accepted (``iot``).
        now: The server's time (epoch seconds).

    Raises:
        SignatureError: The request does not authenticate (``.code`` is AWS's name).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization")
    if not auth:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH.match(auth.strip())
    if not auth.startswith(_ALGORITHM) or match is None:
        raise SignatureError(
            "IncompleteSignatureException",
            f"Authorization header requires {_ALGORITHM} with Credential, SignedHeaders "
            "and Signature",
        )
    credential, signed_text, signature = match.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError(
            "IncompleteSignatureException",
            "Credential must be ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
        )
    access_key, date, scope_region, scope_service, _ = parts
    secret = secret_of(access_key)
    if secret is None:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    amz_date = lower.get("x-amz-date", "")
    try:
        signed_at = _amz_time(amz_date)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException", "X-Amz-Date must be YYYYMMDDTHHMMSSZ"
        ) from None
    if abs(now - signed_at) > MAX_SKEW_S:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is more than 15 minutes from the server's time "
            f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}",
        )
    if date != amz_date[:8]:
        raise SignatureError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date: {date}",
        )
    if scope_region != region:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region: expected {region}, not {scope_region}",
        )
    if scope_service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'",
        )
    signed = signed_text.lower().split(";")
    if "host" not in signed:
        raise SignatureError("InvalidSignatureException", "The host header must be signed")
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = lower.get("x-amz-content-sha256")
    if claimed is not None and claimed != payload_hash:
        raise SignatureError(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    header_lines = "".join(f"{h}:{' '.join(lower.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            header_lines,
            ";".join(signed),
            payload_hash,
        )
    )
    scope = f"{date}/{scope_region}/{scope_service}/aws4_request"
    to_sign = "\n".join(
        (_ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    key = signing_key(secret, date, scope_region, scope_service)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureError("InvalidSignatureException", _MISMATCH)
    return access_key


def load_keys(text: str) -> dict[str, str]:
    r"""Access key id -> secret from an AWS credentials file's text (every profile).

    >>> load_keys("[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n"
    ...           "[other]\naws_access_key_id=AK2\naws_secret_access_key=s2\n")
    {'AK1': 's1', 'AK2': 's2'}

    A file that does not parse is a ValueError naming the line, never its text (it may be
    a secret):

    >>> load_keys("[default]\naws_access_key_id = AK1\nwJalrXUtnFEMI/K7MDENG\n")
    Traceback (most recent call last):
    ...
    ValueError: not an AWS credentials file: line 3 is not 'name = value'

    Raises:
        ValueError: The text is not an INI file of ``[profile]`` sections.
    """
    import configparser  # noqa: PLC0415 - only when loading

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as exc:
        raise ValueError(
            f"not an AWS credentials file: line {exc.lineno} comes before any [profile]"
        ) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _line in exc.errors)
        raise ValueError(
            f"not an AWS credentials file: line {lines} is not 'name = value'"
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise ValueError(
            f"not an AWS credentials file: profile [{exc.section}] twice (line {exc.lineno})"
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ValueError(
            f"not an AWS credentials file: {exc.option} twice in [{exc.section}] "
            f"(line {exc.lineno})"
        ) from None
    except configparser.Error:
        raise ValueError("not an AWS credentials file") from None
    keys: dict[str, str] = {}
    for name in parser.sections():
        section = parser[name]
        key_id = section.get("aws_access_key_id", "").strip()
        secret = section.get("aws_secret_access_key", "").strip()
        if key_id and secret:
            keys[key_id] = secret
    return keys

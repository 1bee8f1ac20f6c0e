"""Who may see the dashboard and ``/metrics``, and CSRF protection for what changes state.

* **Loopback needs nothing; anything else needs credentials.** :func:`require_auth` refuses
  (:class:`~defender_agent.errors.ConfigError`) a non-loopback listen address without
  ``[http] dashboard_token`` or ``dashboard_user`` + ``dashboard_password``.
* **Credentials**: ``Authorization: Bearer TOKEN`` (Prometheus' ``bearer_token``), HTTP Basic
  (the browser's own prompt; Prometheus' ``basic_auth``), or, for a browser with a token,
  ``?token=TOKEN`` once: the answer sets an HttpOnly, SameSite=Strict session cookie and
  redirects to the same page without the token. Every comparison is constant-time
  (:func:`hmac.compare_digest`).
* **Failures are rate-limited** per client address: after :data:`MAX_FAILURES` failures in
  :data:`WINDOW_S` seconds the address gets ``429`` until the window has passed (the table
  of addresses is bounded).
* **CSRF**: a state-changing request (anything but GET/HEAD) must carry ``X-CSRF-Token``
  equal to the token the pages carry in ``<meta name="csrf-token">`` (an HMAC of a
  per-process secret), and an ``Origin``, when sent, must be this server's. A form on
  another site can set neither.

>>> auth = Authenticator(AuthSettings(token="s3cret-token"), secret=b"k" * 32)
>>> auth.token_ok("s3cret-token"), auth.token_ok("S3CRET-TOKEN"), auth.enabled
(True, False, True)
>>> auth.csrf_ok(auth.csrf_token()), auth.csrf_ok("x")
(True, False)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Optional
from urllib.parse import urlsplit

from aiohttp import web

from defender_agent.errors import ConfigError

__all__ = [
    "COOKIE",
    "MAX_FAILURES",
    "WINDOW_S",
    "AuthSettings",
    "Authenticator",
    "FailureLimiter",
    "require_auth",
]

#: The session cookie's name.
COOKIE: Final = "defender_agent_session"
#: Failed attempts allowed per client address and window.
MAX_FAILURES: Final = 10
#: The window of :data:`MAX_FAILURES`, in seconds.
WINDOW_S: Final = 60.0
_MAX_CLIENTS: Final = 10_000


@dataclass(frozen=True)
class AuthSettings:
    """The dashboard's credentials (``[http] dashboard_token``, ``dashboard_user``, ...)."""

    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigError("[http] dashboard_user and dashboard_password go together")
        for name in ("token", "password"):
            value = getattr(self, name)
            if value is not None and len(value) < 8:
                raise ConfigError(f"[http] dashboard_{name} is too short (at least 8 characters)")

    @property
    def configured(self) -> bool:
        """Whether any credential is set."""
        return self.token is not None or self.user is not None


def require_auth(host: str, settings: AuthSettings, *, loopback: bool) -> None:
    """Refuse to serve the dashboard on a non-loopback address without credentials.

    >>> require_auth("0.0.0.0", AuthSettings(), loopback=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    defender_agent.errors.ConfigError: the dashboard on 0.0.0.0 (not loopback) needs ...
    """
    if not loopback and not settings.configured:
        raise ConfigError(
            f"the dashboard on {host} (not loopback) needs [http] dashboard_token or "
            "dashboard_user and dashboard_password"
        )


class FailureLimiter:
    """Failed attempts per client address in a fixed window; bounded memory.

    >>> clock = iter([0.0, 1.0, 2.0, 61.0]).__next__
    >>> limit = FailureLimiter(max_failures=2, window=60.0, clock=clock)
    >>> limit.fail("a"), limit.fail("a"), limit.blocked("a"), limit.blocked("a")
    (False, True, True, False)
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_S,
        clock: object = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def fail(self, client: str) -> bool:
        """Count a failure; True when the client is now blocked."""
        now = self._now()
        with self._lock:
            start, count = self._clients.pop(client, (now, 0))
            if now - start >= self._window:
                start, count = now, 0
            self._clients[client] = (start, count + 1)
            while len(self._clients) > _MAX_CLIENTS:
                self._clients.popitem(last=False)
            return count + 1 >= self._max

    def blocked(self, client: str) -> bool:
        """Whether the client has used up its failures in the current window."""
        now = self._now()
        with self._lock:
            entry = self._clients.get(client)
            if entry is None:
                return False
            if now - entry[0] >= self._window:
                del self._clients[client]
                return False
            return entry[1] >= self._max


class Authenticator:
    """Checks requests against :class:`AuthSettings`; makes the session and CSRF tokens.

    Args:
        settings: The credentials; none configured lets every request in (loopback).
        secret: The per-process key of the cookie and CSRF tokens (random by default).
    """

    def __init__(self, settings: AuthSettings, *, secret: Optional[bytes] = None) -> None:
        self.settings = settings
        self._secret = secret or secrets.token_bytes(32)
        self.limiter = FailureLimiter()

    @property
    def enabled(self) -> bool:
        """Whether requests need credentials."""
        return self.settings.configured

    def _mac(self, what: str) -> str:
        return hmac.new(self._secret, what.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self) -> str:
        """The token state-changing requests must send in ``X-CSRF-Token``."""
        return self._mac("csrf")

    def csrf_ok(self, token: Optional[str]) -> bool:
        """Whether ``token`` is the CSRF token (constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token().encode())

    def session(self) -> str:
        """The session cookie's value."""
        return self._mac("session")

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` is the configured token (constant time)."""
        want = self.settings.token
        return want is not None and hmac.compare_digest(token.encode(), want.encode())

    def basic_ok(self, encoded: str) -> bool:
        """Whether a Basic ``user:password`` (base64) is the configured pair (constant time)."""
        user, password = self.settings.user, self.settings.password
        if user is None or password is None:
            return False
        try:
            text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        got_user, _, got_password = text.partition(":")
        same_user = hmac.compare_digest(got_user.encode(), user.encode())
        same_password = hmac.compare_digest(got_password.encode(), password.encode())
        return same_user and same_password

    def credentials_ok(self, request: web.Request) -> bool:
        """Whether the request carries valid credentials (header or session cookie)."""
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.session().encode()):
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self.token_ok(value.strip())
        if scheme.lower() == "basic":
            return self.basic_ok(value)
        return False

    def check(self, request: web.Request) -> Optional[web.StreamResponse]:
        """None when the request may go on; else the answer to send (401, 429, 403, 303).

        The CSRF check applies to state-changing methods whether or not credentials are
        configured (a page on another site can make a browser on this machine post to
        127.0.0.1).
        """
        if self.enabled:
            denied = self._authenticate(request)
            if denied is not None:
                return denied
        if request.method not in ("GET", "HEAD") and not self._same_origin(request):
            return web.json_response({"error": "cross-site request refused"}, status=403)
        return None

    def _authenticate(self, request: web.Request) -> Optional[web.StreamResponse]:
        client = request.remote or "?"
        if self.limiter.blocked(client):
            return web.json_response(
                {"error": "too many failed attempts; try again later"},
                status=429,
                headers={"Retry-After": str(int(WINDOW_S))},
            )
        token = request.query.get("token")
        if token is not None and request.method == "GET":
            if self.token_ok(token):
                query = {k: v for k, v in request.query.items() if k != "token"}
                target = request.rel_url.with_query(query)
                answer = web.HTTPSeeOther(str(target))
                answer.set_cookie(COOKIE, self.session(), httponly=True, samesite="Strict")
                return answer
            self.limiter.fail(client)
            return self._unauthorized()
        if self.credentials_ok(request):
            return None
        if "Authorization" in request.headers:
            self.limiter.fail(client)
        return self._unauthorized()

    def _unauthorized(self) -> web.StreamResponse:
        headers = {}
        if self.settings.user is not None:
            headers["WWW-Authenticate"] = 'Basic realm="defender-agent", charset="UTF-8"'
        return web.json_response({"error": "authentication required"}, status=401, headers=headers)

    def _same_origin(self, request: web.Request) -> bool:
        if not self.csrf_ok(request.headers.get("X-CSRF-Token")):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.host

"""The dashboard and ``/metrics`` on the service's HTTP server (an installer).

:func:`install` adds, to the one :class:`aiohttp.web.Application` of
:class:`~defender_agent.service.http.HttpServer`:

* ``/`` (a redirect) and the pages ``/dashboard/`` (fleet), ``/dashboard/thing?name=``,
  ``/dashboard/violations``, ``/dashboard/profiles``: static HTML whose scripts fetch JSON
  from ``/dashboard/api/...`` and build the page with DOM text nodes only (never HTML
  from data: a thing named ``<img src=x onerror=alert(1)>`` is shown as those characters);
* ``/dashboard/static/...``: the scripts, the style sheet and the vendored chart library
  (uPlot), all inside the wheel (no CDN);
* ``/dashboard/api/verification`` (POST): set a violation's verification state (CSRF token);
* ``/metrics``: :mod:`defender_agent.web.metrics`.

Every answer of these routes carries a Content-Security-Policy without inline scripts or
styles, ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and no-store caching
for data. Database reads run in the loop's executor, on a store of the dashboard's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Final, Optional, TypeVar

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from defender_agent.detect.contract import ViolationFilter, Violations
from defender_agent.errors import StateError
from defender_agent.logs import shown
from defender_agent.service.storage import Store, open_store
from defender_agent.web import data
from defender_agent.web.auth import Authenticator, AuthSettings, require_auth
from defender_agent.web.metrics import ServiceCollector, registry_for

if TYPE_CHECKING:
    from defender_agent.service.http import HttpContext

__all__ = ["CSP", "PAGES", "Dashboard", "install"]

log = logging.getLogger(__name__)

#: The Content-Security-Policy of every page and asset.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Page path (under /dashboard/) -> its title, its ``<main>`` in static/, the nav entry it
#: belongs to, and its scripts and style sheets (besides common.js and app.css) in static/.
PAGES: Final = {
    "": ("Fleet", "fleet.html", "/dashboard/", ("fleet.js",)),
    "thing": (
        "Thing",
        "thing.html",
        "/dashboard/",
        ("vendor/uPlot.min.css", "vendor/uPlot.iife.min.js", "thing.js"),
    ),
    "violations": ("Violations", "violations.html", "/dashboard/violations", ("violations.js",)),
    "profiles": ("Security profiles", "profiles.html", "/dashboard/profiles", ("profiles.js",)),
}
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_STATES: Final = ("UNKNOWN", "TRUE_POSITIVE", "BENIGN_POSITIVE", "FALSE_POSITIVE")
_DAY: Final = 86_400.0
_MAX_RANGE: Final = 366 * _DAY
_MAX_LISTED: Final = 2_000
_ASSET_PATH: Final = "[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?"

T = TypeVar("T")


def _assets() -> dict[str, bytes]:
    """Every file of static/ (and static/vendor/) by its path relative to static/."""
    root = resources.files("defender_agent.web") / "static"
    out: dict[str, bytes] = {}
    for entry in root.iterdir():
        if entry.is_file():
            out[entry.name] = entry.read_bytes()
        elif entry.is_dir():
            for sub in entry.iterdir():
                if sub.is_file():
                    out[f"{entry.name}/{sub.name}"] = sub.read_bytes()
    return out


def _page(
    assets: Mapping[str, bytes], title: str, main: str, nav: str, files: tuple[str, ...]
) -> str:
    """A page: static/layout.html around its ``<main>``, its nav entry marked current.

    The CSRF token (``{{csrf}}``) is filled in per request.
    """
    head = "".join(
        f'<link rel="stylesheet" href="/dashboard/static/{name}">\n'
        if name.endswith(".css")
        else f'<script src="/dashboard/static/{name}" defer></script>\n'
        for name in ("common.js", *files)
    )
    link = f'<a href="{nav}">'
    return (
        assets["layout.html"]
        .decode()
        .replace("{{title}}", title)
        .replace("{{head}}", head)
        .replace(link, f'<a href="{nav}" class="current">')
        .replace("{{main}}", assets[main].decode())
    )


def _json_default(value: object) -> object:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _json(doc: object, status: int = 200) -> web.Response:
    text = json.dumps(doc, default=_json_default, allow_nan=False, separators=(",", ":"))
    return web.Response(
        text=text,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _bad(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


def _seconds(text: Optional[str], default: float) -> float:
    """A query's epoch seconds; raises ValueError on anything but a finite number."""
    if text is None or text == "":
        return default
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """The installer's state: credentials, the dashboard's store, the handlers.

    Args:
        context: The server's shared context (config, database, Detect, counters).
        auth: The credentials (from ``[http]``).
        loopback: Whether the server listens on loopback only.
        per_thing_metrics: Per-thing series in ``/metrics``.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        context: HttpContext,
        auth: AuthSettings,
        *,
        loopback: bool,
        per_thing_metrics: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context = context
        self.auth = Authenticator(auth)
        self._loopback = loopback
        self._per_thing = per_thing_metrics
        self._clock = clock
        self._assets = _assets()
        self._pages = {path: _page(self._assets, *spec) for path, spec in PAGES.items()}
        self._store: Optional[Store] = None
        self._store_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @property
    def violations(self) -> Optional[Violations]:
        """Detect's violations (None when its engine is off)."""
        return self.context.violations

    def store(self) -> Store:
        """The dashboard's own store (opened at first use, in an executor thread)."""
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.context.db_url)
            return self._store

    def close(self) -> None:
        """Close the dashboard's store."""
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def guarded(self, handler: Handler) -> Handler:
        """The handler behind authentication, CSRF and the security headers."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            denied = self.auth.check(request)
            if denied is not None:
                if isinstance(denied, web.HTTPException):
                    denied = _plain(denied)
                _secure(denied)
                return denied
            try:
                answer = await handler(request)
            except web.HTTPException as exc:
                answer = _plain(exc)
            except StateError as exc:
                log.warning("dashboard: %s", exc)
                answer = _bad("the service database is not available", 503)
            except Exception:  # a bug: one logged traceback, a plain 500, the server goes on
                log.exception("dashboard: %s failed", shown(request.path))
                answer = _bad("internal error (logged by the service)", 500)
            _secure(answer)
            return answer

        return wrapped

    # ------------------------------------------------------------------ pages and assets
    async def page(self, request: web.Request) -> web.StreamResponse:
        """One of :data:`PAGES`, with the CSRF token in its ``<meta>``."""
        html = self._pages.get(request.match_info.get("page", ""))
        if html is None:
            raise web.HTTPNotFound()
        html = html.replace("{{csrf}}", self.auth.csrf_token())
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        """A file of static/ (only those shipped; never a path from the request)."""
        name = request.match_info["name"]
        body = self._assets.get(name)
        suffix = name[name.rfind(".") :] if "." in name else ""
        if body is None or suffix not in _TYPES or suffix == ".html":
            raise web.HTTPNotFound()
        return web.Response(
            body=body,
            headers={"Content-Type": _TYPES[suffix], "Cache-Control": "max-age=300"},
        )

    async def root(self, _request: web.Request) -> web.StreamResponse:
        """``/`` and ``/dashboard``: to the fleet page."""
        raise web.HTTPFound("/dashboard/")

    # ------------------------------------------------------------------ data
    async def fleet(self, request: web.Request) -> web.StreamResponse:
        """The fleet page's data.

        Query: ``q`` (name contains), ``state``, ``sort``, ``desc``, ``offset``, ``limit``
        (at most 1000).
        """
        q = request.query
        try:
            query = data.FleetQuery(
                text=q.get("q", "")[:128],
                state=q.get("state", ""),
                sort=q.get("sort", "name"),
                descending=q.get("desc", "") in ("1", "true"),
                offset=_bounded(q.get("offset", "0"), 0, _MAX_OFFSET),
                limit=_bounded(q.get("limit", "200"), 1, 1000),
            )
        except ValueError:
            return _bad(f"offset: an integer 0..{_MAX_OFFSET}; limit: an integer 1..1000")
        if query.sort not in data.SORT_KEYS:
            return _bad(f"sort: one of {', '.join(data.SORT_KEYS)}")
        things = self.context.stats().things
        doc = await self._run(
            lambda: data.fleet(
                self.store(),
                self._clock(),
                things=things,
                violations=self.violations,
                query=query,
            )
        )
        return _json(doc)

    async def thing(self, request: web.Request) -> web.StreamResponse:
        """A thing page's data: ``?name=``, ``since``, ``until`` (epoch seconds)."""
        name = request.query.get("name", "")
        now = self._clock()
        try:
            until = _seconds(request.query.get("until"), now)
            since = _seconds(request.query.get("since"), until - _DAY)
        except ValueError:
            return _bad("since and until must be epoch seconds")
        if not name or len(name) > 128:
            return _bad("name: a thing name is required (1-128 characters)")
        if not 0 < until - since <= _MAX_RANGE:
            return _bad("since must be before until, at most 366 days apart")
        counts = self.context.stats().things.get(name)
        doc = await self._run(
            lambda: data.thing_detail(
                self.store(),
                name,
                since,
                until,
                now,
                counts=counts,
                violations=self.violations,
            )
        )
        if doc is None:
            return _bad(f"no stored report of thing {shown(name)}", 404)
        return _json(doc)

    async def violations_data(self, request: web.Request) -> web.StreamResponse:
        """Active (``view=active``) or past (``view=history``, ``days``) violations, filtered."""
        q = request.query
        where = ViolationFilter(
            thing_name=q.get("thing") or None,
            security_profile_name=q.get("profile") or None,
            verification_state=q.get("state") or None,
        )
        behavior = q.get("behavior") or None
        view = q.get("view", "active")
        try:
            days = min(max(_seconds(q.get("days"), 7.0), 0.01), 366.0)
        except ValueError:
            return _bad("days must be a number")
        if view not in ("active", "history"):
            return _bad("view must be active or history")
        violations = self.violations
        if violations is None:
            return _json({"detect": False, "items": [], "truncated": False})
        now = self._clock()

        def read() -> tuple[list[Mapping[str, Any]], bool]:
            if view == "active":
                items = data.active_violations(violations, where)
            else:
                items, token = [], None
                while len(items) < _MAX_LISTED:
                    page = violations.list_events(
                        where, start_time=now - days * _DAY, end_time=now, limit=250, token=token
                    )
                    items.extend(page.items)
                    token = page.next_token
                    if not token:
                        break
            if behavior is not None:
                items = [i for i in items if (i.get("behavior") or {}).get("name") == behavior]
            return items[-_MAX_LISTED:], len(items) > _MAX_LISTED

        items, truncated = await self._run(read)
        return _json({"detect": True, "items": items, "truncated": truncated})

    async def set_verification(self, request: web.Request) -> web.StreamResponse:
        """POST ``{"violationId", "verificationState", "description"}`` (CSRF-checked)."""
        violations = self.violations
        if violations is None:
            return _bad("Detect is not running", 409)
        try:
            body = await request.json()
        except ValueError:
            return _bad("the body must be JSON")
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object")
        vid, state = body.get("violationId"), body.get("verificationState")
        description = body.get("description")
        if not isinstance(vid, str) or not 0 < len(vid) <= 128:
            return _bad("violationId: a string of 1-128 characters")
        if state not in _STATES:
            return _bad(f"verificationState: one of {', '.join(_STATES)}")
        if description is not None and (
            not isinstance(description, str) or len(description) > 1000
        ):
            return _bad("description: a string of at most 1000 characters")
        found = await self._run(lambda: violations.set_verification_state(vid, state, description))
        if not found:
            return _bad(f"no violation {shown(vid)}", 404)
        return _json({"violationId": vid, "verificationState": state})

    async def profiles(self, _request: web.Request) -> web.StreamResponse:
        """Every security profile: behaviors in words, targets, things in alarm."""
        registry, violations = self.context.registry, self.violations

        def read() -> list[dict[str, Any]]:
            alarms: dict[str, set[str]] = {}
            for item in data.active_violations(violations):
                profile = str(item.get("securityProfileName", ""))
                alarms.setdefault(profile, set()).add(str(item.get("thingName", "")))
            return [
                {
                    "name": p.name,
                    "version": p.version,
                    "targets": list(p.targets),
                    "behaviors": [
                        {
                            "name": str(b.get("name", "")),
                            "metric": str(b.get("metric", "")),
                            "words": data.behavior_words(b),
                        }
                        for b in p.behaviors
                    ],
                    "in_alarm": sorted(alarms.get(p.name, ())),
                }
                for p in sorted(registry.profiles(), key=lambda p: p.name)
            ]

        return _json({"detect": violations is not None, "profiles": await self._run(read)})

    async def metrics(self, _request: web.Request) -> web.StreamResponse:
        """The Prometheus exposition."""

        def scrape() -> bytes:
            collector = ServiceCollector(
                self.context.stats,
                self.store(),
                self.violations,
                per_thing=self._per_thing,
                clock=self._clock,
            )
            return bytes(generate_latest(registry_for(collector)))

        body = await self._run(scrape)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _plain(exc: web.HTTPException) -> web.Response:
    """An HTTP exception as a response (aiohttp wants exceptions raised, not returned)."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-length"}
    answer = web.Response(status=exc.status, text=exc.text or "", headers=headers)
    for name, morsel in exc.cookies.items():
        answer.cookies[name] = morsel
    return answer


def _secure(answer: web.StreamResponse) -> None:
    headers = answer.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"


def routes(app: web.Application, dashboard: Dashboard) -> None:
    """Add the dashboard's routes to ``app``."""
    g = dashboard.guarded
    app.router.add_get("/", g(dashboard.root))
    app.router.add_get("/dashboard", g(dashboard.root))
    app.router.add_get(
        "/dashboard/static/{name:[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?}", g(dashboard.asset)
    )
    app.router.add_get("/dashboard/api/fleet", g(dashboard.fleet))
    app.router.add_get("/dashboard/api/thing", g(dashboard.thing))
    app.router.add_get("/dashboard/api/violations", g(dashboard.violations_data))
    app.router.add_get("/dashboard/api/profiles", g(dashboard.profiles))
    app.router.add_post("/dashboard/api/verification", g(dashboard.set_verification))
    app.router.add_get("/dashboard/{page:(|thing|violations|profiles)}", g(dashboard.page))
    app.router.add_get("/metrics", g(dashboard.metrics))

    async def close(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, dashboard.close)

    app.on_cleanup.append(close)


def install(app: web.Application, context: HttpContext) -> None:
    """The :data:`~defender_agent.service.http.Installer` of the dashboard and ``/metrics``.

    Raises:
        ConfigError: The server listens beyond loopback without dashboard credentials.
    """
    from defender_agent.service.http import is_loopback, parse_listen  # noqa: PLC0415

    http = context.config.http
    host = parse_listen(http.listen)[0] if http.listen else "127.0.0.1"
    settings = AuthSettings(http.dashboard_token, http.dashboard_user, http.dashboard_password)
    loopback = is_loopback(host)
    require_auth(host, settings, loopback=loopback)
    dashboard = Dashboard(
        context, settings, loopback=loopback, per_thing_metrics=http.metrics_per_thing
    )
    routes(app, dashboard)


_MAX_OFFSET: Final = 10**9


def _bounded(text: str, low: int, high: int) -> int:
    """An integer query value within [low, high] (ValueError otherwise).

    >>> _bounded("20", 0, 100), _bounded(" 0", 0, 100)
    (20, 0)
    >>> _bounded("9" * 30, 0, 100)
    Traceback (most recent call last):
    ...
    ValueError: 999999999999999999999999999999 is not in 0..100
    """
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is not in {low}..{high}")
    return value

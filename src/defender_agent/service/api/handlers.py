"""The Detect operations of the AWS IoT API, over the registry and the engine's violations.

:func:`install` adds one aiohttp route per operation of :data:`.protocol.ROUTES`. Each
request is read (at most :data:`~defender_agent.service.http.MAX_BODY` bytes: larger is
``RequestEntityTooLargeException``, 413), authenticated (:mod:`.sigv4` against the keys
of ``[http] credentials_file``, re-read when the file changes), parsed and checked
against botocore's model (:mod:`.protocol`), then handled in the event loop's executor
(the database calls block). Every failure is AWS's error shape (:mod:`.errors`); an
error the operation does not declare in the model is answered as
``InvalidRequestException``, so botocore always raises a ``ClientError`` it knows.

Failed authentications (a wrong signature, an unknown key; not a missing one) are
counted per client address with the dashboard's limiter
(:class:`~defender_agent.web.auth.FailureLimiter`, bounded memory): after
:data:`~defender_agent.web.auth.MAX_FAILURES` within
:data:`~defender_agent.web.auth.WINDOW_S` seconds, every request from that address is
``ThrottlingException`` (429) until the window ends; signatures are compared in
constant time (:mod:`.sigv4`).

Choices where AWS leaves room (docs/detect.md, "The API"):

* ``DeleteCustomMetric`` refuses (``InvalidRequestException``) a metric a security
  profile still uses: AWS's documentation asks to remove it from every profile first.
* ``DeleteSecurityProfile`` / ``DeleteThingGroup`` of a missing resource succeed.
* ``ListActiveViolations`` & co. answer ``InvalidRequestException`` when Detect's
  engine is not running in this service (``[detect] enabled = false``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, Callable, Final, Optional

from aiohttp import web

from defender_agent.detect.contract import ViolationFilter
from defender_agent.detect.registry import RegistryError, SqlRegistry
from defender_agent.errors import ConfigError, StateError
from defender_agent.logs import shown
from defender_agent.service.api.errors import ApiError
from defender_agent.service.api.model import MODEL
from defender_agent.service.api.protocol import ROUTES, dumps, parse_input
from defender_agent.service.api.sigv4 import SignatureError, load_keys, verify
from defender_agent.service.http import MAX_BODY, HttpContext
from defender_agent.web.auth import MAX_FAILURES, WINDOW_S, FailureLimiter

__all__ = ["OPERATIONS", "Api", "install"]

log = logging.getLogger(__name__)

_INVALID: Final = "InvalidRequestException"
_DEFAULT_PAGE: Final = 100
#: Larger than any offset this service issues in a nextToken (and than SQL integers take).
_MAX_OFFSET: Final = 2**53
_AUTH_CODES: Final = frozenset(
    {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "RequestEntityTooLargeException",
        "UnknownOperationException",
        "ServiceUnavailableException",
    }
)
_OWN_PREFIXES: Final = ("/dashboard", "/metrics")
#: Checked by Detect's rules (detect.behaviors), not by the model's generic constraints.
_BEHAVIORS: Final = frozenset({"behaviors"})

Params = dict[str, Any]
Result = Optional[Mapping[str, Any]]


class _Keys:
    """The access keys of ``[http] credentials_file``, read again when the file changes."""

    def __init__(self, path: Optional[Path]) -> None:
        self._path = path
        self._stamp: Optional[tuple[int, int]] = None
        self._keys: dict[str, str] = {}
        self._problem = ""
        if path is None:
            log.warning("no [http] credentials_file: every request to the Detect API is refused")
        else:
            self._load()
            if not self._keys:
                log.warning("%s holds no access key: every API request is refused", path)

    def _load(self) -> None:
        assert self._path is not None
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._keys = load_keys(self._path.read_text(encoding="utf-8"))
                self._stamp = stamp
        except (OSError, UnicodeError, ValueError) as exc:
            raise ConfigError(f"http credentials_file {self._path}: {exc}") from exc

    def secret_of(self, key_id: str) -> Optional[str]:
        """The secret of an access key id (None: unknown); the file is re-read if changed."""
        if self._path is not None:
            try:
                self._load()
                self._problem = ""
            except ConfigError as exc:  # keep the keys read last; say so once per problem
                if str(exc) != self._problem:
                    self._problem = str(exc)
                    log.warning("%s (keeping the keys read before)", exc)
        return self._keys.get(key_id)


def _limit(params: Params) -> int:
    return int(params.get("maxResults") or _DEFAULT_PAGE)


def _offset_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _read_offset(token: Optional[str]) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        offset = int(text[2:]) if text.startswith("o:") else -1
    except (ValueError, UnicodeError):
        offset = -1
    if not 0 <= offset <= _MAX_OFFSET:
        raise ApiError(_INVALID, "nextToken is not a token this service issued")
    return offset


def _filter(params: Params) -> ViolationFilter:
    return ViolationFilter(
        thing_name=params.get("thingName"),
        security_profile_name=params.get("securityProfileName"),
        behavior_criteria_type=params.get("behaviorCriteriaType"),
        list_suppressed_alerts=params.get("listSuppressedAlerts"),
        verification_state=params.get("verificationState"),
    )


class Api:
    """The operations, each ``(params) -> output`` (synchronous: run in an executor)."""

    def __init__(self, context: HttpContext) -> None:
        registry = context.registry
        if not isinstance(registry, SqlRegistry):
            raise ConfigError("the Detect API needs the SQL registry (detect.registry)")
        self.registry = registry
        self.context = context
        self.keys = _Keys(context.config.http.credentials_file)
        #: Failed authentications per client address (the dashboard's limiter and limits).
        self.failures = FailureLimiter()
        self.region = context.config.http.region
        self._store: Any = None
        self._store_lock = threading.Lock()  # handlers run on the executor's threads
        self.handlers: dict[str, Callable[[Params], Result]] = {
            name: getattr(self, _snake(name)) for name in ROUTES
        }

    # ------------------------------------------------------------------ helpers
    def _behavior_errors(self, behaviors: object) -> list[str]:
        from defender_agent.detect.behaviors import validate_behaviors  # noqa: PLC0415

        return validate_behaviors(behaviors, self.registry.custom_metric_types())

    def _violations(self) -> Any:  # noqa: ANN401 - contract.Violations
        if self.context.violations is None:
            raise ApiError(
                _INVALID, "Detect's engine is not running in this service ([detect] enabled)"
            )
        return self.context.violations

    # ------------------------------------------------------------------ security profiles
    def create_security_profile(self, p: Params) -> Result:
        """``CreateSecurityProfile``."""
        return self.registry.create_profile(
            p["securityProfileName"],
            p,
            now=time.time(),
            check=functools.partial(_member_problems, p),
        )

    def describe_security_profile(self, p: Params) -> Result:
        """``DescribeSecurityProfile``."""
        return self.registry.describe_profile(p["securityProfileName"])

    def update_security_profile(self, p: Params) -> Result:
        """``UpdateSecurityProfile``."""
        changes: dict[str, Any] = {}
        for member in (
            "securityProfileDescription",
            "behaviors",
            "alertTargets",
            "additionalMetricsToRetain",
            "additionalMetricsToRetainV2",
            "metricsExportConfig",
        ):
            if p.get(member) is not None:
                changes[member] = p[member]
        deletions = {
            "deleteBehaviors": ("behaviors",),
            "deleteAlertTargets": ("alertTargets",),
            "deleteAdditionalMetricsToRetain": (
                "additionalMetricsToRetain",
                "additionalMetricsToRetainV2",
            ),
            "deleteMetricsExportConfig": ("metricsExportConfig",),
        }
        for flag, members in deletions.items():
            if not p.get(flag):
                continue
            for member in members:
                if member in changes:
                    raise ApiError(_INVALID, f"{flag}: cannot be true when {member} is given")
                changes[member] = None
        return self.registry.update_profile(
            p["securityProfileName"],
            changes,
            expected_version=p.get("expectedVersion"),
            now=time.time(),
            check=functools.partial(_member_problems, p),
        )

    def delete_security_profile(self, p: Params) -> Result:
        """``DeleteSecurityProfile``."""
        self.registry.delete_profile(
            p["securityProfileName"], expected_version=p.get("expectedVersion")
        )
        return None

    def list_security_profiles(self, p: Params) -> Result:
        """``ListSecurityProfiles``."""
        if p.get("metricName") and p.get("dimensionName"):
            raise ApiError(_INVALID, "metricName and dimensionName cannot both be given")
        items, token = self.registry.list_profiles(
            limit=_limit(p),
            token=p.get("nextToken"),
            metric_name=p.get("metricName"),
            dimension_name=p.get("dimensionName"),
        )
        return {"securityProfileIdentifiers": items, "nextToken": token}

    def validate_security_profile_behaviors(self, p: Params) -> Result:
        """``ValidateSecurityProfileBehaviors``."""
        errors = self._behavior_errors(p["behaviors"])
        return {"valid": not errors, "validationErrors": [{"errorMessage": m} for m in errors]}

    def attach_security_profile(self, p: Params) -> Result:
        """``AttachSecurityProfile``."""
        self.registry.attach(p["securityProfileName"], p["securityProfileTargetArn"])
        return None

    def detach_security_profile(self, p: Params) -> Result:
        """``DetachSecurityProfile``."""
        self.registry.detach(p["securityProfileName"], p["securityProfileTargetArn"])
        return None

    def list_targets_for_security_profile(self, p: Params) -> Result:
        """``ListTargetsForSecurityProfile``."""
        targets, token = self.registry.targets_of(
            p["securityProfileName"], limit=_limit(p), token=p.get("nextToken")
        )
        return {"securityProfileTargets": [{"arn": t} for t in targets], "nextToken": token}

    def list_security_profiles_for_target(self, p: Params) -> Result:
        """``ListSecurityProfilesForTarget``."""
        rows, token = self.registry.profiles_for_target(
            p["securityProfileTargetArn"],
            recursive=bool(p.get("recursive")),
            limit=_limit(p),
            token=p.get("nextToken"),
        )
        mappings = [
            {"securityProfileIdentifier": {"name": n, "arn": a}, "target": {"arn": t}}
            for n, a, t in rows
        ]
        return {"securityProfileTargetMappings": mappings, "nextToken": token}

    # ------------------------------------------------------------------ custom metrics
    def create_custom_metric(self, p: Params) -> Result:
        """``CreateCustomMetric``."""
        return self.registry.create_custom_metric(
            p["metricName"],
            p["metricType"],
            p.get("displayName"),
            now=time.time(),
            client_token=p.get("clientRequestToken"),
        )

    def describe_custom_metric(self, p: Params) -> Result:
        """``DescribeCustomMetric``."""
        return self.registry.describe_custom_metric(p["metricName"])

    def list_custom_metrics(self, p: Params) -> Result:
        """``ListCustomMetrics``."""
        names, token = self.registry.list_custom_metrics(limit=_limit(p), token=p.get("nextToken"))
        return {"metricNames": names, "nextToken": token}

    def update_custom_metric(self, p: Params) -> Result:
        """``UpdateCustomMetric``."""
        return self.registry.update_custom_metric(
            p["metricName"], p["displayName"], now=time.time()
        )

    def delete_custom_metric(self, p: Params) -> Result:
        """``DeleteCustomMetric``."""
        self.registry.delete_custom_metric(p["metricName"])
        return None

    # ------------------------------------------------------------------ violations
    def list_active_violations(self, p: Params) -> Result:
        """``ListActiveViolations``."""
        try:
            page = self._violations().list_active(
                _filter(p), limit=_limit(p), token=p.get("nextToken")
            )
        except ValueError as exc:
            raise ApiError(_INVALID, str(exc)) from None
        return {"activeViolations": page.items, "nextToken": page.next_token}

    def list_violation_events(self, p: Params) -> Result:
        """``ListViolationEvents``."""
        try:
            page = self._violations().list_events(
                _filter(p),
                start_time=float(p["startTime"]),
                end_time=float(p["endTime"]),
                limit=_limit(p),
                token=p.get("nextToken"),
            )
        except ValueError as exc:
            raise ApiError(_INVALID, str(exc)) from None
        return {"violationEvents": page.items, "nextToken": page.next_token}

    def put_verification_state_on_violation(self, p: Params) -> Result:
        """``PutVerificationStateOnViolation``."""
        try:
            found = self._violations().set_verification_state(
                p["violationId"], p["verificationState"], p.get("verificationStateDescription")
            )
        except ValueError as exc:
            raise ApiError(_INVALID, str(exc)) from None
        if not found:
            raise ApiError(_INVALID, f"Violation {p['violationId']} does not exist")
        return None

    def list_metric_values(self, p: Params) -> Result:
        """``ListMetricValues``."""
        if p.get("dimensionName"):
            raise ApiError(_INVALID, "dimensionName: dimensions are not stored by this service")
        with self._store_lock:  # two first requests at once open one store, not two
            if self._store is None:
                from defender_agent.service.storage import open_store  # noqa: PLC0415

                self._store = open_store(self.context.db_url, create=False)
        offset, limit = _read_offset(p.get("nextToken")), _limit(p)
        values = self._store.metric_values(
            p["thingName"],
            p["metricName"],
            since=float(p["startTime"]),
            until=float(p["endTime"]),
            limit=offset + limit + 1,
        )
        page = values[offset : offset + limit]
        token = _offset_token(offset + limit) if len(values) > offset + limit else None
        data = [{"timestamp": v.timestamp, "value": v.value.to_json()} for v in page]
        return {"metricDatumList": data, "nextToken": token}

    # ------------------------------------------------------------------ thing groups
    def create_thing_group(self, p: Params) -> Result:
        """``CreateThingGroup``."""
        return self.registry.create_group(
            p["thingGroupName"],
            p.get("parentGroupName"),
            p.get("thingGroupProperties") or {},
            now=time.time(),
        )

    def describe_thing_group(self, p: Params) -> Result:
        """``DescribeThingGroup``."""
        return self.registry.describe_group(p["thingGroupName"])

    def delete_thing_group(self, p: Params) -> Result:
        """``DeleteThingGroup``."""
        self.registry.delete_group(p["thingGroupName"], expected_version=p.get("expectedVersion"))
        return None

    def list_thing_groups(self, p: Params) -> Result:
        """``ListThingGroups``."""
        items, token = self.registry.list_groups(
            limit=_limit(p),
            token=p.get("nextToken"),
            parent=p.get("parentGroup"),
            prefix=p.get("namePrefixFilter"),
            recursive=bool(p.get("recursive")),
        )
        return {"thingGroups": items, "nextToken": token}

    def _group_and_thing(self, p: Params) -> tuple[str, str]:
        group = p.get("thingGroupName") or _arn_tail(p.get("thingGroupArn"), "thinggroup/")
        thing = p.get("thingName") or _arn_tail(p.get("thingArn"), "thing/")
        if not group:
            raise ApiError(_INVALID, "thingGroupName or thingGroupArn is required")
        if not thing:
            raise ApiError(_INVALID, "thingName or thingArn is required")
        return group, thing

    def add_thing_to_thing_group(self, p: Params) -> Result:
        """``AddThingToThingGroup``."""
        self.registry.add_to_group(*self._group_and_thing(p))
        return None

    def remove_thing_from_thing_group(self, p: Params) -> Result:
        """``RemoveThingFromThingGroup``."""
        self.registry.remove_from_group(*self._group_and_thing(p))
        return None

    def list_things_in_thing_group(self, p: Params) -> Result:
        """``ListThingsInThingGroup``."""
        group = p["thingGroupName"]
        if not p.get("recursive"):
            names, token = self.registry.things_in_group(
                group, limit=_limit(p), token=p.get("nextToken")
            )
            return {"things": names, "nextToken": token}
        groups = [group]
        children, _ = self.registry.list_groups(limit=10_000, token=None, parent=group)
        groups += [c["groupName"] for c in children]
        every: set[str] = set()
        for name in groups:
            found, _ = self.registry.things_in_group(name, limit=1_000_000, token=None)
            every.update(found)
        offset, limit = _read_offset(p.get("nextToken")), _limit(p)
        ordered = sorted(every)
        token = _offset_token(offset + limit) if len(ordered) > offset + limit else None
        return {"things": ordered[offset : offset + limit], "nextToken": token}

    def close(self) -> None:
        """Close the metric-value store this API opened (the registry is the caller's)."""
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _member_problems(params: Params, custom: Mapping[str, str]) -> list[str]:
    """Detect's rules for ``behaviors``; the metrics to retain must exist.

    The registry calls it with the custom metrics (name -> type) read in the transaction
    that writes the profile, so a ``DeleteCustomMetric`` cannot come in between.

    >>> _member_problems({"additionalMetricsToRetain": ["aws:num-listening-tcp-ports", "gone"]}, {})
    ["additionalMetricsToRetain[1]: 'gone' is neither a Detect metric nor a custom metric"]
    """
    from defender_agent.detect.behaviors import (  # noqa: PLC0415
        metric_kind,
        validate_behaviors,
    )

    errors = []
    if params.get("behaviors") is not None:
        errors += validate_behaviors(params["behaviors"], custom)
    retained = [
        (f"additionalMetricsToRetainV2[{i}].metric", entry.get("metric", ""))
        for i, entry in enumerate(params.get("additionalMetricsToRetainV2") or ())
    ]
    retained += [
        (f"additionalMetricsToRetain[{i}]", name)
        for i, name in enumerate(params.get("additionalMetricsToRetain") or ())
    ]
    for where, metric in retained:
        if metric_kind(metric, custom) is None:
            errors.append(f"{where}: {metric!r} is neither a Detect metric nor a custom metric")
    return errors


def _arn_tail(arn: Optional[str], marker: str) -> Optional[str]:
    if not arn or marker not in arn:
        return None
    return arn.rsplit(marker, 1)[1] or None


def _subject(params: Params) -> str:
    """What a change was about, for its log line (names from the network, escaped).

    >>> _subject({"securityProfileName": "p", "securityProfileTargetArn": "arn:x"})
    "'p' 'arn:x'"
    """
    names = (
        "securityProfileName",
        "metricName",
        "thingGroupName",
        "thingGroupArn",
        "thingName",
        "thingArn",
        "violationId",
        "securityProfileTargetArn",
    )
    return " ".join(shown(params[n], 200) for n in names if params.get(n)) or "-"


def _snake(name: str) -> str:
    """``CreateSecurityProfile`` -> ``create_security_profile``.

    >>> _snake("ListSecurityProfilesForTarget")
    'list_security_profiles_for_target'
    """
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _error_response(error: ApiError, request_id: str) -> web.Response:
    headers = {**error.headers(), "x-amzn-RequestId": request_id}
    return web.Response(status=error.status, body=error.body(), headers=headers)


#: The errors each operation declares in the model.
_ERRORS: Final = {
    name: frozenset(e["shape"] for e in op.get("errors", ()))
    for name, op in MODEL["operations"].items()
}


def _declared(operation: str, code: str) -> str:
    """The code to answer: one the operation declares (else InvalidRequestException).

    >>> _declared("DeleteCustomMetric", "ResourceNotFoundException")
    'InvalidRequestException'
    >>> _declared("DescribeCustomMetric", "ResourceNotFoundException")
    'ResourceNotFoundException'
    """
    if code in _AUTH_CODES or code in _ERRORS[operation]:
        return code
    return _INVALID


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse_if_blocked(api: Api, client: str) -> None:
    """ThrottlingException while ``client`` has used up its failed authentications."""
    if api.failures.blocked(client):
        raise ApiError(
            "ThrottlingException",
            f"too many failed authentications from this address: try again in {int(WINDOW_S)} s",
        )


def _endpoint(api: Api, operation: str) -> Handler:
    route = ROUTES[operation]
    handle = api.handlers[operation]

    async def endpoint(request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        client = request.remote or "?"
        try:
            _refuse_if_blocked(api, client)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(
                    "RequestEntityTooLargeException",
                    f"the request body is larger than {MAX_BODY} bytes",
                ) from None
            try:
                key_id = verify(
                    request.method,
                    request.rel_url.raw_path,
                    request.rel_url.raw_query_string,
                    request.headers,
                    body,
                    api.keys.secret_of,
                    region=api.region,
                    service="iot",
                    now=time.time(),
                )
            except SignatureError as exc:
                # a request without a signature cannot guess a secret: not counted
                missing = exc.code == "MissingAuthenticationTokenException"
                if not missing and api.failures.fail(client):
                    log.warning(
                        "api: %d failed authentications from %s within %d s: its requests "
                        "are refused (ThrottlingException) until the window ends",
                        MAX_FAILURES,
                        shown(client),
                        int(WINDOW_S),
                    )
                raise ApiError(exc.code, exc.message) from None
            params = parse_input(
                operation,
                request.match_info,
                request.query.items(),
                request.headers,
                body,
                checked_elsewhere=_BEHAVIORS,
            )
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, functools.partial(handle, params))
        except ApiError as exc:
            exc.code = _declared(operation, exc.code)
            log.debug("%s %s: %s", operation, exc.code, shown(exc.message))
            return _error_response(exc, request_id)
        except RegistryError as exc:
            error = ApiError(_declared(operation, exc.code), str(exc))
            return _error_response(error, request_id)
        except StateError as exc:
            log.warning("%s: %s", operation, exc)
            error = ApiError("ServiceUnavailableException", "the service's database failed")
            return _error_response(error, request_id)
        except Exception:  # a bug: the request fails, the server goes on
            log.exception("%s failed", operation)
            error = ApiError("InternalFailureException", "internal error")
            return _error_response(error, request_id)
        if route.method != "GET" and operation != "ValidateSecurityProfileBehaviors":
            log.info("api: %s %s by %s", operation, _subject(params), key_id)
        headers = {"x-amzn-RequestId": request_id}
        if result is None:
            return web.Response(status=route.status, headers=headers)
        return web.Response(
            status=route.status,
            body=dumps(result),
            headers={**headers, "Content-Type": "application/json"},
        )

    return endpoint


@web.middleware
async def _unknown_route(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request no route matched gets AWS's shape (the dashboard's paths excepted)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        if request.match_info.http_exception is None or request.path.startswith(_OWN_PREFIXES):
            raise
        error = ApiError(
            "UnknownOperationException",
            f"no operation at {request.method} {request.path[:200]}",
        )
        return _error_response(error, str(uuid.uuid4()))


#: The operations served, by name (the keys of :data:`.protocol.ROUTES`).
OPERATIONS: Final = tuple(ROUTES)


def install(app: web.Application, context: HttpContext) -> None:
    """Add the API's routes (static paths before parameterised ones) to ``app``.

    Raises:
        ConfigError: ``[http] credentials_file`` cannot be read.
    """
    api = Api(context)
    ordered = sorted(ROUTES.values(), key=lambda r: ("{" in r.path, r.path, r.method))
    for route in ordered:
        app.router.add_route(route.method, route.path, _endpoint(api, route.name))
    app.middlewares.append(_unknown_route)

    async def close(_app: web.Application) -> None:
        api.close()

    app.on_cleanup.append(close)

"""Bad input to the Detect API: each answer is AWS's error shape naming what is wrong.

Raw HTTP requests (signed with botocore's own SigV4Auth where the test needs a valid
signature) to a running server: malformed JSON, an unknown metric, a wrong value member,
101 behaviors, a bad signature, no signature, a huge body, an unknown route. Nothing is
half-written and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from defender_agent.service.api import handlers
from tests.api_infra import REGION, Api, running_api

PORTS = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(tmp_path_factory.mktemp("api")) as running:
        yield running


def _send(
    api: Api,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    secret: Optional[str] = None,
    sign: bool = True,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = AWSRequest(method=method, url=api.url + path, data=body)
    if sign:
        credentials = Credentials(api.key_id, secret or api.secret)
        SigV4Auth(credentials, "iot", REGION).add_auth(request)
    prepared = request.prepare()
    raw = urllib.request.Request(
        prepared.url, data=body or None, method=method, headers=dict(prepared.headers.items())
    )
    try:
        with urllib.request.urlopen(raw, timeout=10) as resp:
            status, headers, text = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, text = exc.code, dict(exc.headers), exc.read()
    return status, headers, json.loads(text) if text else {}


def _error(answer: tuple[int, dict[str, str], dict[str, Any]]) -> tuple[int, str, str]:
    status, headers, body = answer
    return status, headers.get("x-amzn-ErrorType", ""), body.get("message", "")


def _create(api: Api, body: object) -> tuple[int, str, str]:
    return _error(_send(api, "POST", "/security-profiles/bad", json.dumps(body).encode()))


def _no_profiles(api: Api) -> bool:
    return bool(_send(api, "GET", "/security-profiles")[2]["securityProfileIdentifiers"] == [])


def test_malformed_json(api: Api) -> None:
    status, code, message = _error(_send(api, "POST", "/security-profiles/bad", b'{"behaviors": ['))
    assert (status, code) == (400, "InvalidRequestException")
    assert "not valid JSON" in message
    assert _no_profiles(api)


@pytest.mark.parametrize(
    ("behavior", "named"),
    [
        ({"name": "x", "metric": "no_such_metric"}, "behaviors[0].metric"),
        (
            {
                "name": "x",
                "metric": "aws:num-listening-tcp-ports",
                "criteria": {"comparisonOperator": "greater-than", "value": {"ports": [1]}},
            },
            "behaviors[0].criteria.value",
        ),
        (
            {
                "name": "x",
                "metric": "aws:listening-tcp-ports",
                "criteria": {
                    "comparisonOperator": "in-port-set",
                    "value": {"ports": [1]},
                    "durationSeconds": 300,
                },
            },
            "behaviors[0].criteria.durationSeconds",
        ),
    ],
)
def test_bad_behaviors_name_the_field(api: Api, behavior: dict[str, Any], named: str) -> None:
    status, code, message = _create(api, {"behaviors": [behavior]})
    assert (status, code) == (400, "InvalidRequestException")
    assert named in message
    # ValidateSecurityProfileBehaviors reports the same problems, as validationErrors
    _, _, answer = _send(
        api,
        "POST",
        "/security-profile-behaviors/validate",
        json.dumps({"behaviors": [behavior]}).encode(),
    )
    assert answer["valid"] is False
    assert "; ".join(e["errorMessage"] for e in answer["validationErrors"]) == message
    assert _no_profiles(api)


def test_101_behaviors(api: Api) -> None:
    behaviors = [dict(PORTS, name=f"b{i}") for i in range(101)]
    status, code, message = _create(api, {"behaviors": behaviors})
    assert (status, code) == (400, "InvalidRequestException")
    assert message.startswith("behaviors: has 101 behaviors")
    assert _create(api, {"behaviors": behaviors[:100]})[0] == 200
    _send(api, "DELETE", "/security-profiles/bad")


def test_authentication_failures(api: Api) -> None:
    assert _error(_send(api, "GET", "/security-profiles", secret="not-the-secret"))[:2] == (
        403,
        "InvalidSignatureException",
    )
    assert _error(_send(api, "GET", "/security-profiles", sign=False))[:2] == (
        403,
        "MissingAuthenticationTokenException",
    )
    # an unsigned write changes nothing
    body = json.dumps({"behaviors": [PORTS]}).encode()
    assert _send(api, "POST", "/security-profiles/sneaky", body, sign=False)[0] == 403
    assert _no_profiles(api)


def test_huge_body(api: Api) -> None:
    body = b'{"securityProfileDescription": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, code, message = _error(_send(api, "POST", "/security-profiles/bad", body))
    assert (status, code) == (413, "RequestEntityTooLargeException")
    assert "larger than" in message
    assert _no_profiles(api)


def test_unknown_route(api: Api) -> None:
    status, code, message = _error(_send(api, "GET", "/no-such-thing/here"))
    assert (status, code) == (404, "UnknownOperationException")
    assert "/no-such-thing/here" in message
    status, code, _ = _error(_send(api, "PATCH", "/security-profiles"))
    assert (status, code) == (404, "UnknownOperationException")
    # and the server still answers
    assert _send(api, "GET", "/custom-metrics")[0] == 200


def test_a_retained_metric_must_exist(api: Api) -> None:
    body = {"behaviors": [PORTS], "additionalMetricsToRetainV2": [{"metric": "no_such"}]}
    status, code, message = _create(api, body)
    assert (status, code) == (400, "InvalidRequestException")
    assert message.startswith("additionalMetricsToRetainV2[0].metric: 'no_such' is neither")
    assert _no_profiles(api)


def test_a_database_failure_is_503(tmp_path: Path) -> None:
    with running_api(tmp_path) as own:
        own.registry.close()  # every registry call now fails with StateError
        status, code, message = _error(_send(own, "GET", "/security-profiles"))
        assert (status, code) == (503, "ServiceUnavailableException")
        assert message == "the service's database failed"


def test_a_bug_is_500_and_the_server_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(self: object, params: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handlers.Api, "list_custom_metrics", boom)
    with running_api(tmp_path) as own:
        status, code, message = _error(_send(own, "GET", "/custom-metrics"))
        assert (status, code, message) == (500, "InternalFailureException", "internal error")
        assert _send(own, "GET", "/security-profiles")[0] == 200
    assert "ListCustomMetrics failed" in caplog.text


def test_keys_rotate_without_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_api(tmp_path) as own:
        old_id, old_secret = own.key_id, own.secret
        own.credentials_file.write_text(
            "[new]\naws_access_key_id = AKIANEWKEY0000000001\n"
            "aws_secret_access_key = the-new-secret-of-the-rotated-key\n",
            encoding="utf-8",
        )
        assert _error(_send(own, "GET", "/custom-metrics"))[:2] == (
            403,
            "UnrecognizedClientException",
        )
        own.key_id, own.secret = "AKIANEWKEY0000000001", "the-new-secret-of-the-rotated-key"
        assert _send(own, "GET", "/custom-metrics")[0] == 200
        # a file that breaks keeps the keys read last, with one warning
        own.credentials_file.write_bytes(b"\xff\xfe not text")
        assert _send(own, "GET", "/custom-metrics")[0] == 200
        assert _send(own, "GET", "/custom-metrics")[0] == 200
    assert caplog.text.count("keeping the keys read before") == 1
    assert old_secret not in caplog.text and old_id not in caplog.text


def test_each_change_is_one_audit_line(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="defender_agent.service.api.handlers")
    body = json.dumps({"behaviors": [PORTS]}).encode()
    assert _send(api, "POST", "/security-profiles/audited%0Aline", body)[0] == 400  # bad name
    assert _send(api, "POST", "/security-profiles/audited", body)[0] == 200
    assert _send(api, "GET", "/security-profiles/audited")[0] == 200
    assert _send(api, "DELETE", "/security-profiles/audited")[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("api: ")]
    assert lines == [
        f"api: CreateSecurityProfile 'audited' by {api.key_id}",
        f"api: DeleteSecurityProfile 'audited' by {api.key_id}",
    ]


def test_failed_authentication_is_limited_per_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After MAX_FAILURES bad signatures an address is refused, even with the right key;
    another address is not; unsigned requests do not count."""
    import http.client

    from defender_agent.web.auth import MAX_FAILURES

    def unsigned_from(api: Api, source: str) -> str:
        port = int(api.url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", "/security-profiles")
            return conn.getresponse().getheader("x-amzn-ErrorType") or ""
        finally:
            conn.close()

    with running_api(tmp_path) as api:
        for _ in range(2 * MAX_FAILURES):  # unsigned: not counted
            assert unsigned_from(api, "127.0.0.1") == "MissingAuthenticationTokenException"
        assert _send(api, "GET", "/security-profiles")[0] == 200
        for _ in range(MAX_FAILURES):
            assert _error(_send(api, "GET", "/security-profiles", secret="guess"))[:2] == (
                403,
                "InvalidSignatureException",
            )
        status, code, message = _error(_send(api, "GET", "/security-profiles"))
        assert (status, code) == (429, "ThrottlingException")
        assert "too many failed authentications" in message
        assert unsigned_from(api, "127.0.0.2") == "MissingAuthenticationTokenException"
        assert unsigned_from(api, "127.0.0.1") == "ThrottlingException"
    warnings = [
        r.getMessage() for r in caplog.records if "failed authentications" in r.getMessage()
    ]
    expected = (
        f"api: {MAX_FAILURES} failed authentications from '127.0.0.1' within 60 s: its requests "
        "are refused (ThrottlingException) until the window ends"
    )
    assert warnings == [expected]


def test_boto3_raises_missing_authentication_token_for_an_unsigned_request(api: Api) -> None:
    """AWS's front door answers an unsigned request so; botocore raises it as a ClientError."""
    import boto3  # type: ignore[import-untyped]
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    unsigned = boto3.client(
        "iot",
        endpoint_url=api.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as refused:
        unsigned.list_security_profiles()
    error = refused.value.response
    assert error["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert error["Error"]["Message"] == "Missing Authentication Token"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_boto3_sees_a_blocked_address_as_throttling(tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from defender_agent.web.auth import MAX_FAILURES

    with running_api(tmp_path) as api:
        wrong = boto3.client(
            "iot",
            endpoint_url=api.url,
            region_name=REGION,
            aws_access_key_id=api.key_id,
            aws_secret_access_key="guess",
            config=Config(retries={"total_max_attempts": 1}),
        )
        for _ in range(MAX_FAILURES):
            with pytest.raises(ClientError) as failed:
                wrong.list_security_profiles()
            assert failed.value.response["Error"]["Code"] == "InvalidSignatureException"
        right = api.client(config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(ClientError) as refused:
            right.list_security_profiles()
        assert refused.value.response["Error"]["Code"] == "ThrottlingException"


def test_hostile_bodies_tokens_and_times_are_400_not_500(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON nested past the parser's depth, a forged offset token too large for SQL, and
    non-finite times: each one InvalidRequestException naming it, no traceback logged."""
    import base64

    deep = b'{"behaviors":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _error(_send(api, "POST", "/security-profiles/deep", deep)) == (
        400,
        "InvalidRequestException",
        "the request body is nested too deeply",
    )
    forged = base64.urlsafe_b64encode(b"o:" + b"9" * 40).decode()
    values = (
        "/metric-values?thingName=t&metricName=aws%3Anum-listening-tcp-ports"
        "&startTime=1&endTime=2&nextToken=" + forged
    )
    assert _error(_send(api, "GET", values)) == (
        400,
        "InvalidRequestException",
        "nextToken is not a token this service issued",
    )
    for bad in ("nan", "inf", "1e999"):
        status, code, message = _error(
            _send(api, "GET", f"/violation-events?startTime={bad}&endTime=2")
        )
        assert (status, code) == (400, "InvalidRequestException")
        assert message == f"startTime: {bad!r} is not a valid timestamp"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _no_profiles(api)


def test_concurrent_first_metric_value_requests_open_one_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListMetricValues opens its store on first use; two at once open one (none leaks)."""
    import threading
    import time

    from defender_agent.service import storage

    opened: list[object] = []
    real_open = storage.open_store

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # both requests are past the "no store yet" test before this returns
        store = real_open(*args, **kwargs)
        opened.append(store)
        return store

    with running_api(tmp_path) as running:
        monkeypatch.setattr(storage, "open_store", slow_open)
        api = handlers.Api(running.server.context)
        params: dict[str, Any] = {"thingName": "t", "metricName": "aws:num-listening-tcp-ports"}
        params.update(startTime=0.0, endTime=1.0)
        threads = [
            threading.Thread(target=api.list_metric_values, args=(params,)) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        api.close()
        assert len(opened) == 1


def test_a_mangled_credentials_file_never_shows_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line that is not ``name = value`` (here a secret wrapped onto its own line) keeps
    the keys read last, with one warning naming the line number, never its text."""
    leaked = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYLEAKED"
    with running_api(tmp_path) as own:
        own.credentials_file.write_text(
            f"[default]\naws_access_key_id = {own.key_id}\naws_secret_access_key =\n{leaked}\n",
            encoding="utf-8",
        )
        assert _send(own, "GET", "/custom-metrics")[0] == 200
        assert _send(own, "GET", "/custom-metrics")[0] == 200
    (warning,) = [r.getMessage() for r in caplog.records if "keeping the keys" in r.getMessage()]
    assert "line 4 is not 'name = value'" in warning
    assert leaked not in caplog.text and own.secret not in caplog.text

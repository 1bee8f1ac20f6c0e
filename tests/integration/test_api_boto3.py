"""Contract: a real boto3 IoT client calls every Detect operation of the service's API.

botocore serialises each request from its own model and parses each response with it;
every parsed response is then checked against the operation's output shape by botocore's
own validator (required members, types), so a wrong shape fails here. Errors must come
back as the ``ClientError`` code and HTTP status AWS IoT uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

from defender_agent.service.api.handlers import OPERATIONS
from defender_agent.service.metrics_map import MetricValue
from tests.api_infra import ACCOUNT, REGION, Api, running_api

ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"
PORTS = {
    "name": "ports",
    "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}},
}
BYTES = {
    "name": "bytes_out",
    "metric": "aws:all-bytes-out",
    "criteria": {
        "comparisonOperator": "greater-than",
        "value": {"count": 100000},
        "durationSeconds": 300,
        "consecutiveDatapointsToAlarm": 2,
        "consecutiveDatapointsToClear": 2,
    },
}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("pg_url")
    with running_api(tmp_path, db_url) as running:
        yield running


class Checked:
    """A boto3 client whose every response is validated against its output shape."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.called: set[str] = set()
        self.model = client.meta.service_model

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        operation = self.client.meta.method_to_api_mapping[name]

        def call(**kwargs: Any) -> Any:
            response = method(**kwargs)
            self.called.add(operation)
            body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
            shape = self.model.operation_model(operation).output_shape
            if shape is not None:
                report = ParamValidator().validate(body, shape)
                assert not report.has_errors(), report.generate_report()
                unknown = set(body) - set(shape.members)
                assert not unknown, f"{operation}: members not in the model: {unknown}"
            else:
                assert body == {}
            return response

        return call


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return (
        exc.value.response["Error"]["Code"],
        exc.value.response["ResponseMetadata"]["HTTPStatusCode"],
    )


def test_every_operation_round_trips(api: Api) -> None:
    iot = Checked(api.client())
    # custom metrics
    created = iot.create_custom_metric(metricName="open_files", metricType="number")
    assert created["metricArn"] == f"{ARN}:custommetric/open_files"
    iot.update_custom_metric(metricName="open_files", displayName="Open files")
    described = iot.describe_custom_metric(metricName="open_files")
    assert described["displayName"] == "Open files"
    assert described["metricType"] == "number"
    iot.create_custom_metric(metricName="unused", metricType="string-list")
    assert iot.list_custom_metrics(maxResults=1)["metricNames"] == ["open_files"]
    iot.delete_custom_metric(metricName="unused")
    assert iot.list_custom_metrics()["metricNames"] == ["open_files"]

    # thing groups
    group = iot.create_thing_group(thingGroupName="floor1")
    assert group["thingGroupArn"] == f"{ARN}:thinggroup/floor1"
    iot.create_thing_group(thingGroupName="room7", parentGroupName="floor1")
    iot.add_thing_to_thing_group(thingGroupName="room7", thingName="gw-7")
    iot.add_thing_to_thing_group(thingGroupArn=group["thingGroupArn"], thingName="gw-1")
    assert iot.list_things_in_thing_group(thingGroupName="floor1")["things"] == ["gw-1"]
    recursive = iot.list_things_in_thing_group(thingGroupName="floor1", recursive=True)
    assert recursive["things"] == ["gw-1", "gw-7"]
    names = [g["groupName"] for g in iot.list_thing_groups()["thingGroups"]]
    assert names == ["floor1", "room7"]
    assert iot.list_thing_groups(parentGroup="floor1")["thingGroups"][0]["groupName"] == "room7"
    room = iot.describe_thing_group(thingGroupName="room7")
    assert room["thingGroupMetadata"]["parentGroupName"] == "floor1"

    # security profiles
    custom = {
        "name": "files",
        "metric": "open_files",
        "criteria": {"comparisonOperator": "greater-than", "value": {"number": 100}},
    }
    made = iot.create_security_profile(
        securityProfileName="baseline",
        securityProfileDescription="ports and bytes",
        behaviors=[PORTS, BYTES, custom],
        alertTargets={
            "SNS": {
                "alertTargetArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
                "roleArn": f"arn:aws:iam::{ACCOUNT}:role/dd",
            }
        },
        additionalMetricsToRetainV2=[{"metric": "aws:num-messages-sent"}],
    )
    assert made["securityProfileArn"] == f"{ARN}:securityprofile/baseline"
    profile = iot.describe_security_profile(securityProfileName="baseline")
    assert profile["version"] == 1
    assert profile["behaviors"] == [PORTS, BYTES, custom]
    assert abs(profile["creationDate"].timestamp() - time.time()) < 60
    updated = iot.update_security_profile(
        securityProfileName="baseline", behaviors=[PORTS, custom], expectedVersion=1
    )
    assert updated["version"] == 2
    assert [b["name"] for b in updated["behaviors"]] == ["ports", "files"]
    assert updated["alertTargets"]["SNS"]["alertTargetArn"].endswith(":alerts")
    cleared = iot.update_security_profile(securityProfileName="baseline", deleteAlertTargets=True)
    assert "alertTargets" not in cleared
    iot.create_security_profile(securityProfileName="other", behaviors=[BYTES])
    listed = iot.list_security_profiles(maxResults=1)
    assert [p["name"] for p in listed["securityProfileIdentifiers"]] == ["baseline"]
    rest = iot.list_security_profiles(nextToken=listed["nextToken"])
    assert [p["name"] for p in rest["securityProfileIdentifiers"]] == ["other"]
    assert "nextToken" not in rest
    by_metric = iot.list_security_profiles(metricName="open_files")
    assert [p["name"] for p in by_metric["securityProfileIdentifiers"]] == ["baseline"]
    valid = iot.validate_security_profile_behaviors(behaviors=[PORTS])
    assert valid["valid"] is True
    assert valid["validationErrors"] == []

    # attachments
    things = f"{ARN}:all/things"
    room7 = f"{ARN}:thinggroup/room7"
    iot.attach_security_profile(securityProfileName="baseline", securityProfileTargetArn=things)
    iot.attach_security_profile(
        securityProfileName="other", securityProfileTargetArn=f"{ARN}:thinggroup/floor1"
    )
    targets = iot.list_targets_for_security_profile(securityProfileName="baseline")
    assert targets["securityProfileTargets"] == [{"arn": things}]
    mapped = iot.list_security_profiles_for_target(securityProfileTargetArn=room7, recursive=True)
    assert [
        m["securityProfileIdentifier"]["name"] for m in mapped["securityProfileTargetMappings"]
    ] == ["other"]
    assert (
        iot.list_security_profiles_for_target(securityProfileTargetArn=room7)[
            "securityProfileTargetMappings"
        ]
        == []
    )
    iot.detach_security_profile(
        securityProfileName="other", securityProfileTargetArn=f"{ARN}:thinggroup/floor1"
    )
    views = {p.name: p for p in api.registry.profiles()}
    assert views["baseline"].targets == (things,) and views["other"].targets == ()

    # violations (the engine's store, empty here: test_api_violations fills it)
    assert iot.list_active_violations(thingName="gw-1")["activeViolations"] == []
    now = time.time()
    events = iot.list_violation_events(startTime=now - 3600, endTime=now)
    assert events["violationEvents"] == []

    # metric values from the service's store
    api.store.record("gw-1", 1, now - 10, "json", [MetricValue("aws:all-bytes-out", count=9)])
    api.store.record("gw-1", 2, now - 5, "json", [MetricValue("aws:all-bytes-out", count=12)])
    page = iot.list_metric_values(
        thingName="gw-1",
        metricName="aws:all-bytes-out",
        startTime=now - 60,
        endTime=now + 1,
        maxResults=1,
    )
    assert [d["value"] for d in page["metricDatumList"]] == [{"count": 9}]
    more = iot.list_metric_values(
        thingName="gw-1",
        metricName="aws:all-bytes-out",
        startTime=now - 60,
        endTime=now + 1,
        nextToken=page["nextToken"],
    )
    assert [d["value"] for d in more["metricDatumList"]] == [{"count": 12}]
    assert abs(more["metricDatumList"][0]["timestamp"].timestamp() - (now - 5)) < 0.01

    # deletions
    iot.remove_thing_from_thing_group(thingGroupName="room7", thingName="gw-7")
    assert iot.list_things_in_thing_group(thingGroupName="room7")["things"] == []
    with pytest.raises(ClientError) as conflict:
        iot.delete_thing_group(thingGroupName="room7", expectedVersion=2)
    assert _code(conflict) == ("VersionConflictException", 409)
    iot.delete_thing_group(thingGroupName="room7", expectedVersion=1)
    iot.delete_security_profile(securityProfileName="other")
    iot.delete_security_profile(securityProfileName="baseline", expectedVersion=3)
    assert iot.list_security_profiles()["securityProfileIdentifiers"] == []

    missing = set(OPERATIONS) - iot.called - {"PutVerificationStateOnViolation"}
    assert not missing, f"not called: {sorted(missing)}"


def test_errors_are_aws_codes_and_statuses(api: Api) -> None:
    iot = api.client()
    iot.create_security_profile(securityProfileName="p", behaviors=[PORTS])
    cases: list[tuple[Any, dict[str, Any], tuple[str, int]]] = [
        (
            iot.describe_security_profile,
            {"securityProfileName": "nope"},
            ("ResourceNotFoundException", 404),
        ),
        (
            iot.create_security_profile,
            {"securityProfileName": "p"},
            ("ResourceAlreadyExistsException", 409),
        ),
        (
            iot.update_security_profile,
            {"securityProfileName": "p", "expectedVersion": 7},
            ("VersionConflictException", 409),
        ),
        (
            iot.delete_security_profile,
            {"securityProfileName": "p", "expectedVersion": 7},
            ("VersionConflictException", 409),
        ),
        (
            iot.attach_security_profile,
            {"securityProfileName": "p", "securityProfileTargetArn": f"{ARN}:thinggroup/none"},
            ("ResourceNotFoundException", 404),
        ),
        (
            iot.attach_security_profile,
            {
                "securityProfileName": "p",
                "securityProfileTargetArn": "arn:aws:iot:us-east-1:1:all/things",
            },
            ("InvalidRequestException", 400),
        ),
        (iot.describe_custom_metric, {"metricName": "nope"}, ("ResourceNotFoundException", 404)),
        (
            iot.put_verification_state_on_violation,
            {"violationId": "nope", "verificationState": "BENIGN_POSITIVE"},
            ("InvalidRequestException", 400),
        ),
        (iot.list_security_profiles, {"nextToken": "!!"}, ("InvalidRequestException", 400)),
        (iot.list_active_violations, {"nextToken": "garbage"}, ("InvalidRequestException", 400)),
    ]
    for call, kwargs, expected in cases:
        with pytest.raises(ClientError) as exc:
            call(**kwargs)
        assert _code(exc) == expected, (call, kwargs)
    # nothing half-written: the conflicting update left version 1
    assert iot.describe_security_profile(securityProfileName="p")["version"] == 1


def test_limit_of_profiles_per_target(api: Api) -> None:
    iot = api.client()
    things = f"{ARN}:all/things"
    for i in range(6):
        iot.create_security_profile(securityProfileName=f"p{i}", behaviors=[PORTS])
    for i in range(5):
        iot.attach_security_profile(securityProfileName=f"p{i}", securityProfileTargetArn=things)
    with pytest.raises(ClientError) as exc:
        iot.attach_security_profile(securityProfileName="p5", securityProfileTargetArn=things)
    assert _code(exc) == ("LimitExceededException", 410)


def test_a_custom_metric_in_use_is_not_deleted(api: Api) -> None:
    iot = api.client()
    iot.create_custom_metric(metricName="temp", metricType="number")
    behavior = {
        "name": "hot",
        "metric": "temp",
        "criteria": {"comparisonOperator": "greater-than", "value": {"number": 70}},
    }
    iot.create_security_profile(securityProfileName="p", behaviors=[behavior])
    with pytest.raises(ClientError) as exc:
        iot.delete_custom_metric(metricName="temp")
    assert _code(exc) == ("InvalidRequestException", 400)
    assert "security profile(s) p" in str(exc.value)
    iot.update_security_profile(securityProfileName="p", deleteBehaviors=True)
    iot.delete_custom_metric(metricName="temp")
    assert iot.list_custom_metrics()["metricNames"] == []


def test_concurrent_updates_one_wins(api: Api) -> None:
    """Two clients update version 1 at once: one gets version 2, the other a conflict."""
    import threading

    iot = api.client()
    iot.create_security_profile(securityProfileName="p", behaviors=[PORTS])
    results: list[str] = []

    def update(description: str) -> None:
        client = api.client()
        try:
            client.update_security_profile(
                securityProfileName="p", securityProfileDescription=description, expectedVersion=1
            )
            results.append("ok")
        except ClientError as exc:
            results.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=update, args=(f"d{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["VersionConflictException"] * 3 + ["ok"]
    assert iot.describe_security_profile(securityProfileName="p")["version"] == 2


def test_a_retried_custom_metric_create_answers_as_the_first(api: Api) -> None:
    iot = api.client()
    first = iot.create_custom_metric(
        metricName="m", metricType="number", clientRequestToken="token-1"
    )
    again = iot.create_custom_metric(
        metricName="m", metricType="number", clientRequestToken="token-1"
    )
    assert again["metricArn"] == first["metricArn"]
    with pytest.raises(ClientError) as exc:
        iot.create_custom_metric(metricName="m", metricType="number", clientRequestToken="t-2")
    assert _code(exc) == ("ResourceAlreadyExistsException", 409)

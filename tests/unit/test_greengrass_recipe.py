"""The component recipe: what both nuclei accept (nucleus lite's rules), its defaults, its grants."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from defender_agent.agent.clock import report_topic
from defender_agent.greengrass.settings import config_from_component

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "packaging" / "greengrass" / "recipe.json"

#: The recipe variables nucleus lite substitutes.
LITE_VARIABLES = {
    "artifacts:path",
    "artifacts:decompressedPath",
    "kernel:rootPath",
    "iot:thingName",
    "work:path",
}
TOP_KEYS = {
    "RecipeFormatVersion",
    "ComponentName",
    "ComponentVersion",
    "ComponentType",
    "ComponentDescription",
    "ComponentPublisher",
    "ComponentConfiguration",
    "ComponentDependencies",
    "Manifests",
}
LIFECYCLE_STEPS = {"install", "run", "startup", "Setenv"}
STEP_KEYS = {"Script", "RequiresPrivilege", "Setenv", "Timeout"}
ARTIFACT_KEYS = {"Uri", "Unarchive", "Permission", "Digest", "Algorithm"}


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gg_build", TEMPLATE.parent / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(bucket: str = "bucket") -> str:
    build = load_build()
    text: str = build.render_recipe(
        TEMPLATE.read_text(encoding="utf-8"),
        name="com.example.DefenderAgent",
        version="1.2.3",
        wheel="defender_agent-1.2.3-py3-none-any.whl",
        bucket=bucket,
    )
    return text


def lite_problems(text: str) -> list[str]:
    """What nucleus lite (or the Java nucleus) would refuse or misread in a recipe."""
    problems: list[str] = []
    recipe: dict[str, Any] = json.loads(text)
    for key in recipe:
        if key not in TOP_KEYS:
            problems.append(f"unknown or wrongly cased top-level key {key!r}")
    if recipe.get("ComponentType") != "aws.greengrass.generic":
        problems.append("only generic components")
    for variable in re.findall(r"\{([^{}\"]+)\}", text):
        if variable not in LITE_VARIABLES:
            problems.append(f"variable {{{variable}}} is not substituted by nucleus lite")
    for manifest in recipe.get("Manifests", []):
        if manifest.get("Platform") != {"os": "linux", "runtime": "*"}:
            problems.append(f"platform {manifest.get('Platform')}: need os linux, runtime *")
        lifecycle = manifest.get("Lifecycle", {})
        for step, body in lifecycle.items():
            if step not in LIFECYCLE_STEPS:
                problems.append(f"lifecycle step {step!r} is not supported")
            if isinstance(body, dict):
                for key in body:
                    if key not in STEP_KEYS:
                        problems.append(f"{step}.{key} is not supported (Skipif, ...)")
        for artifact in manifest.get("Artifacts", []):
            for key in artifact:
                if key not in ARTIFACT_KEYS:
                    problems.append(f"artifact key {key!r}")
    if re.search(r"\"/.*/\"", text):
        problems.append("a regular expression")
    return problems


def test_the_recipe_keeps_nucleus_lites_rules() -> None:
    assert lite_problems(rendered()) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r.replace('"run": {', '"shutdown": {"Script": "x"}, "run": {'), "shutdown"),
        (lambda r: r.replace('"Script": "exec', '"Skipif": "onpath x", "Script": "exec'), "Skipif"),
        (lambda r: r.replace('"runtime": "*"', '"runtime": "aws_nucleus_classic"'), "platform"),
        (lambda r: r.replace('"os": "linux"', '"os": "/linux|darwin/"'), "platform"),
        (lambda r: r.replace("{work:path}/state", "{configuration:/state}"), "configuration"),
        (lambda r: r.replace('"Manifests"', '"manifests"'), "manifests"),
    ],
)
def test_the_checker_catches_each_rule(edit: Any, expected: str) -> None:
    problems = lite_problems(edit(rendered()))
    assert any(expected in p for p in problems), problems


def test_no_placeholder_is_left_and_the_uri_names_the_bucket() -> None:
    text = rendered()
    assert "COMPONENT_" not in text and "{WHEEL}" not in text and "BUCKET_NAME" not in text
    recipe = json.loads(text)
    (manifest,) = recipe["Manifests"]
    (artifact,) = manifest["Artifacts"]
    assert artifact == {
        "Uri": "s3://bucket/com.example.DefenderAgent/1.2.3/defender-agent.zip",
        "Unarchive": "ZIP",
    }
    install = manifest["Lifecycle"]["install"]["Script"]
    assert "--no-index" in install  # offline: the wheels come with the artifact
    assert "{artifacts:decompressedPath}/defender-agent/defender_agent-1.2.3-py3" in install
    assert "defender-agent greengrass" in manifest["Lifecycle"]["run"]["Script"]


def test_the_default_configuration() -> None:
    defaults = json.loads(rendered())["ComponentConfiguration"]["DefaultConfiguration"]
    config = config_from_component(defaults, thing_name="core1", environ={})
    assert config.agent.interval == 300
    assert config.agent.format == "json"
    assert config.agent.short_names is False
    assert config.collector.include_custom_metrics is False  # cpu_usage is opt-in
    assert config.custom_metrics.empty


def test_access_control_grants_exactly_this_things_defender_topics() -> None:
    defaults = json.loads(rendered())["ComponentConfiguration"]["DefaultConfiguration"]
    policies = defaults["accessControl"]
    assert list(policies) == ["aws.greengrass.ipc.mqttproxy"]
    granted: dict[str, set[str]] = {}
    for policy in policies["aws.greengrass.ipc.mqttproxy"].values():
        for operation in policy["operations"]:
            granted.setdefault(operation, set()).update(policy["resources"])
    reports = {report_topic("{iot:thingName}", fmt) for fmt in ("json", "cbor")}
    replies = {f"{topic}/{suffix}" for topic in reports for suffix in ("accepted", "rejected")}
    assert granted == {
        "aws.greengrass#PublishToIoTCore": reports,
        "aws.greengrass#SubscribeToIoTCore": replies,
    }

"""The AWS CLI (awscli from PyPI, a real subprocess) drives the service's Detect API unchanged.

A create -> attach -> list-violations script, and ``defender-agent aws-setup``'s printed
commands (and ``--apply``'s boto3 calls), run against the API with nothing changed but the
endpoint (``--endpoint-url``, or ``AWS_ENDPOINT_URL_IOT`` for ``--apply``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_infra import ACCOUNT, REGION, Api, running_api

AWS = Path(sys.executable).parent / "aws"
pytestmark = pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI (awscli) is not installed")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with running_api(tmp_path) as running:
        yield running


def _env(api: Api, tmp: Path) -> dict[str, str]:
    config = tmp / "aws-config"
    config.write_text(f"[default]\nregion = {REGION}\noutput = json\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(api.credentials_file),
        AWS_CONFIG_FILE=str(config),
        AWS_PAGER="",
    )
    return env


def _sh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**env, "PATH": f"{AWS.parent}:{env.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_create_attach_list_violations_script(api: Api, tmp_path: Path) -> None:
    url = api.url
    script = f"""
aws iot create-custom-metric --metric-name open_files --metric-type number \\
    --endpoint-url {url}
aws iot create-security-profile --security-profile-name ports-allow-list \\
    --behaviors '[{{"name":"ports","metric":"aws:listening-tcp-ports",
      "criteria":{{"comparisonOperator":"in-port-set","value":{{"ports":[22,443]}}}}}},
      {{"name":"files","metric":"open_files",
      "criteria":{{"comparisonOperator":"greater-than","value":{{"number":500}}}}}}]' \\
    --endpoint-url {url}
aws iot attach-security-profile --security-profile-name ports-allow-list \\
    --security-profile-target-arn arn:aws:iot:{REGION}:{ACCOUNT}:all/registered-things \\
    --endpoint-url {url}
aws iot list-targets-for-security-profile --security-profile-name ports-allow-list \\
    --endpoint-url {url}
aws iot list-active-violations --endpoint-url {url}
"""
    done = _sh(script, _env(api, tmp_path))
    assert done.returncode == 0, done.stderr
    documents = [json.loads(d) for d in _json_documents(done.stdout)]
    assert documents[0]["metricName"] == "open_files"
    assert documents[1]["securityProfileName"] == "ports-allow-list"
    assert documents[2]["securityProfileTargets"][0]["arn"].endswith(":all/registered-things")
    assert documents[3] == {"activeViolations": []}


def test_errors_reach_the_cli_as_aws_errors(api: Api, tmp_path: Path) -> None:
    done = _sh(
        f"aws iot describe-security-profile --security-profile-name nope --endpoint-url {api.url}",
        _env(api, tmp_path),
    )
    assert done.returncode == 255  # the AWS CLI v1 exit status of a service error
    assert "ResourceNotFoundException" in done.stderr
    assert "Security profile nope does not exist" in done.stderr


def test_aws_setup_commands_run_unchanged(api: Api, tmp_path: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "defender_agent", "aws-setup", "--include-custom-metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "DEFENDER_AGENT_CONFIG": os.devnull},
    ).stdout.splitlines()
    commands = [line for line in printed if line.startswith("aws ")]
    attach = [line[2:] for line in printed if line.startswith("# aws iot attach-")]
    assert commands and attach, printed
    attach = [a.replace("<region>", REGION).replace("<account-id>", ACCOUNT) for a in attach]
    script = "\n".join(f"{c} --endpoint-url {shlex.quote(api.url)}" for c in commands + attach)
    done = _sh(script, _env(api, tmp_path))
    assert done.returncode == 0, done.stderr
    assert api.registry.custom_metric_types() == {"cpu_usage": "number"}
    (profile,) = api.registry.profiles()
    assert profile.targets == (f"arn:aws:iot:{REGION}:{ACCOUNT}:all/registered-things",)
    assert any(b["metric"] == "cpu_usage" for b in profile.behaviors)


def test_aws_setup_apply_with_boto3(api: Api, tmp_path: Path) -> None:
    env = {**_env(api, tmp_path), "AWS_ENDPOINT_URL_IOT": api.url}
    env["DEFENDER_AGENT_CONFIG"] = os.devnull
    argv = [sys.executable, "-m", "defender_agent", "aws-setup", "--include-custom-metrics"]
    for _ in range(2):  # idempotent: the second run finds everything in place
        done = subprocess.run(
            [*argv, "--apply"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    assert api.registry.custom_metric_types() == {"cpu_usage": "number"}
    assert [p.name for p in api.registry.profiles()] == ["defender-agent"]


def _json_documents(text: str) -> list[str]:
    """Split the concatenated pretty-printed JSON documents the CLI wrote."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        doc, end = decoder.raw_decode(text, i)
        out.append(json.dumps(doc))
        i = end
    return out

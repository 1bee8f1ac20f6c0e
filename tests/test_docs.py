"""The documentation resolves inside the repository.

Every ``protocol.md §N`` (or ``protocol §N``, or a bare ``§N`` in a file that cites the
protocol) names a numbered heading of ``docs/protocol.md``; every ``*.md`` a file names
exists in the repository; every relative link of the README and ``docs/`` points to a file
that exists, and to a heading of it when it has an anchor; nothing refers to notes kept
outside the repository. The IoT policy the README prints is the one in ``packaging/aws``
and allows exactly the agent's topics.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from defender_agent.agent import report_topic

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "protocol.md"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

#: Where references are looked for: the code, the docs, and everything shipped beside them.
SCANNED_DIRS = ("src", "docs", "tests", "bench", "examples", "packaging", "scripts")
SCANNED_FILES = ("README.md", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".service", ".json", ".cfg", ".ini", ""}

_NUMBER = r"\d+(?:\.\d+)*"
#: A section list: "§2.2-§2.4" (or with an en dash), "§3, §7.2", "§4 and §7".
_SECTIONS = rf"§\s?{_NUMBER}(?:(?:\s?[-\u2013,]\s?|\s(?:and|or)\s)§\s?{_NUMBER})*"
_MD_CITATION = re.compile(rf"(?P<file>[\w./-]*\.md)`?\s?(?P<sections>{_SECTIONS})")
_PROTOCOL_CITATION = re.compile(rf"\bprotocol\s(?P<sections>{_SECTIONS})")
_BARE = re.compile(rf"§\s?(?P<number>{_NUMBER})")
#: Section signs of other documents, which this repository does not carry.
_FOREIGN = re.compile(r"(?:RFC\s?\d+|MQTT\s?[\d.]+|PEP\s?\d+)[,)]?\s?$")
_MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.md)\b")
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)

#: Notes that live outside the repository, which users of the repository cannot read.
FORBIDDEN = (
    "pitfalls.md",
    "platform.md",
    "style.md",
    "the protocol notes",
    "../shared",
    "/work/",
)


def scanned_files() -> Iterator[Path]:
    for name in SCANNED_FILES:
        yield ROOT / name
    for directory in SCANNED_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
                continue
            parts = set(path.relative_to(ROOT).parts)
            if parts & {"__pycache__", ".venvs", "results", "fixtures"} or any(
                part.endswith(".egg-info") for part in parts
            ):
                continue
            yield path


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def section_numbers(markdown: str) -> set[str]:
    """The numbers of the numbered headings: ``## 2. The report`` -> "2", ``### 2.6 …`` -> "2.6"."""
    numbers = set()
    for match in _HEADING.finditer(_FENCE.sub("", markdown)):
        found = re.match(rf"({_NUMBER})\.?\s", match["text"])
        if found:
            numbers.add(found[1])
    return numbers


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: ``### 2.4 Standard metrics`` -> ``24-standard-metrics``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(m["text"]) for m in _HEADING.finditer(_FENCE.sub("", markdown))}


def resolve_md(name: str, cited_from: Path) -> Path | None:
    """The file a ``*.md`` citation means: a repository path, or a file of ``docs/``."""
    for candidate in (
        ROOT / name,
        cited_from.parent / name,
        ROOT / "docs" / Path(name).name,
    ):
        if candidate.is_file() and ROOT in candidate.resolve().parents:
            return candidate
    return None


PROTOCOL_SECTIONS = section_numbers(text_of(PROTOCOL)) if PROTOCOL.exists() else set()


# --------------------------------------------------------------------------- the helpers
def test_the_helpers() -> None:
    assert slug("2.4 Standard metrics") == "24-standard-metrics"
    assert slug("Footprint of `defender-agent run`") == "footprint-of-defender-agent-run"
    assert slug("7. The local service's rules") == "7-the-local-services-rules"
    assert section_numbers("## 1. Topics\n### 1.1 Topics\n```\n## 9. no\n```\n") == {"1", "1.1"}
    match = _MD_CITATION.search("as protocol.md §2.2-§2.4 and §7 say")
    assert match is not None and re.findall(_NUMBER, match["sections"]) == ["2.2", "2.4", "7"]
    assert _FOREIGN.search("MQTT 3.1.1 ")
    assert _FOREIGN.search("RFC 8949 ")


def test_protocol_has_the_sections_the_code_relies_on() -> None:
    # What each number is cited for in the code: topics, thing names, the report's fields,
    # custom metrics, the example, throttling, replies, Detect, the local service's rules.
    expected = {"1.1", "1.2", "2.1", "2.2", "2.3", "2.4", "2.6", "2.7", "3", "4.1", "4.2"}
    expected |= {"4.3", "5.1", "5.2", "5.3", "5.4", "8"} | {f"7.{n}" for n in range(1, 10)}
    assert expected <= PROTOCOL_SECTIONS


# --------------------------------------------------------------------------- citations
def citations() -> Iterator[tuple[Path, int, str, str]]:
    """(file, line, the cited document, section number) of every section citation."""
    for path in scanned_files():
        text = text_of(path)
        cites_protocol = path == PROTOCOL or "protocol.md" in text or "protocol §" in text
        claimed: set[int] = set()
        for pattern in (_MD_CITATION, _PROTOCOL_CITATION):
            for match in pattern.finditer(text):
                document = match.groupdict().get("file") or "protocol.md"
                line = text.count("\n", 0, match.start()) + 1
                start = match.start("sections")
                for number in re.finditer(_NUMBER, match["sections"]):
                    claimed.add(start + number.start())
                    yield path, line, document, number[0]
        if not cites_protocol:
            continue
        for match in _BARE.finditer(text):
            if match.start("number") in claimed or _FOREIGN.search(text[: match.start()][-20:]):
                continue
            line = text.count("\n", 0, match.start()) + 1
            yield path, line, "protocol.md", match["number"]


def test_every_section_citation_resolves() -> None:
    problems = []
    count = 0
    for path, line, document, number in citations():
        count += 1
        target = resolve_md(document, path)
        where = f"{rel(path)}:{line}: {document} §{number}"
        if target is None:
            problems.append(f"{where}: no such file in the repository")
        elif number not in section_numbers(text_of(target)):
            problems.append(f"{where}: no heading numbered {number} in {rel(target)}")
    assert count > 100  # the code cites the protocol throughout
    assert not problems, "\n".join(problems)


def test_every_md_path_named_exists() -> None:
    problems = []
    for path in scanned_files():
        text = text_of(path)
        for match in _MD_PATH.finditer(text):
            name = match[1]
            if resolve_md(name, path) is None:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{rel(path)}:{line}: {name} does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("forbidden", FORBIDDEN)
def test_nothing_refers_to_notes_outside_the_repository(forbidden: str) -> None:
    found = [
        f"{rel(path)}:{text_of(path)[: text_of(path).index(forbidden)].count(chr(10)) + 1}"
        for path in scanned_files()
        if forbidden in text_of(path) and path != Path(__file__)
    ]
    assert not found, f"{forbidden!r} in " + ", ".join(found)


# --------------------------------------------------------------------------- links
@pytest.mark.parametrize("document", [README, *DOCS], ids=rel)
def test_every_relative_link_resolves(document: Path) -> None:
    text = _FENCE.sub("", text_of(document))
    problems = []
    links = list(_LINK.finditer(text))
    assert links or document.name != "README.md"
    for match in links:
        target = match["target"]
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists() or ROOT not in [linked, *linked.parents]:
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(text_of(linked)):
            problems.append(f"{target}: no heading #{anchor} in {rel(linked)}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- AWS CLI calls
#: Options of the AWS CLI itself, and its own additions to create-keys-and-certificate.
CLI_OPTIONS = {
    "--region",
    "--endpoint-url",
    "--query",
    "--output",
    "--certificate-pem-outfile",
    "--public-key-outfile",
    "--private-key-outfile",
}


def readme_aws_calls() -> list[list[str]]:
    """The ``aws iot …`` calls of the README's shell blocks, as argument lists."""
    calls = []
    for block in re.findall(r"^```bash\n(.*?)^```", text_of(README), re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            substituted = re.match(r"^\w+=\$\((.*)\)\s*$", line)  # VAR=$(aws iot ...)
            argv = shlex.split(substituted[1] if substituted else line, comments=True)
            if argv[:2] == ["aws", "iot"]:
                calls.append(argv)
    return calls


def test_the_readmes_aws_commands_fit_the_api() -> None:
    botocore = pytest.importorskip("botocore.session")
    model = botocore.get_session().get_service_model("iot")
    calls = readme_aws_calls()
    assert len(calls) >= 8
    for argv in calls:
        operation = model.operation_model("".join(w.title() for w in argv[2].split("-")))
        members = operation.input_shape.members
        given = set()
        for option in (a for a in argv[3:] if a.startswith("--")):
            if option in CLI_OPTIONS:
                continue
            words = option[2:].split("-")
            key = words[0] + "".join(w.title() for w in words[1:])
            assert key in members, f"{' '.join(argv[:3])}: no option {option}"
            given.add(key)
        missing = set(operation.input_shape.required_members) - given
        assert not missing, f"{' '.join(argv[:3])}: missing {sorted(missing)}"


# --------------------------------------------------------------------------- our own commands
def readme_agent_calls() -> dict[tuple[str, ...], set[str]]:
    """The long options the README's shell blocks give each ``defender-agent`` (sub)command."""
    calls: dict[tuple[str, ...], set[str]] = {}
    for block in re.findall(r"^```bash\n(.*?)^```", text_of(README), re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            for at, word in enumerate(argv):
                program = word.endswith("bin/defender-agent") or (word, at) == ("defender-agent", 0)
                if not program or at + 1 >= len(argv):
                    continue
                command = tuple(argv[at + 1 : at + 3 if argv[at + 1] == "data" else at + 2])
                options = {a.split("=")[0] for a in argv[at + 1 :] if a.startswith("--")}
                calls.setdefault(command, set()).update(options)
    return calls


def test_the_readmes_defender_agent_options_exist() -> None:
    calls = readme_agent_calls()
    assert {("sandbox",), ("run",), ("collect",), ("aws-setup",)} <= set(calls)
    problems = []
    for command, options in sorted(calls.items()):
        result = subprocess.run(
            [sys.executable, "-m", "defender_agent", *command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        problems += [
            f"defender-agent {' '.join(command)} {option}"
            for option in sorted(options)
            if not re.search(rf"{re.escape(option)}\b", result.stdout)
        ]
    assert not problems, "not in --help: " + ", ".join(problems)


# --------------------------------------------------------------------------- the IoT policy
POLICY_FILE = ROOT / "packaging" / "aws" / "iot-policy.json"


def policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(POLICY_FILE.read_text(encoding="utf-8"))
    return document


def test_the_readme_shows_the_policy_file() -> None:
    blocks = re.findall(r"^```json\n(.*?)^```", text_of(README), re.MULTILINE | re.DOTALL)
    shown = [json.loads(block) for block in blocks if '"iot:Connect"' in block]
    assert shown == [policy()]
    assert "packaging/aws/iot-policy.json" in text_of(README)


def test_the_policy_allows_exactly_the_agents_topics() -> None:
    thing = "${iot:Connection.Thing.ThingName}"
    prefix = "arn:aws:iot:REGION:ACCOUNT:"
    allowed: dict[str, set[str]] = {}
    for statement in policy()["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        allowed.setdefault(statement["Action"], set()).update(resources)
    reports = {report_topic(thing, fmt) for fmt in ("json", "cbor")}
    replies = {f"{topic}/{status}" for topic in reports for status in ("accepted", "rejected")}
    assert allowed == {
        "iot:Connect": {f"{prefix}client/{thing}"},
        "iot:Publish": {f"{prefix}topic/{topic}" for topic in reports},
        "iot:Subscribe": {f"{prefix}topicfilter/{topic}" for topic in replies},
        "iot:Receive": {f"{prefix}topic/{topic}" for topic in replies},
    }

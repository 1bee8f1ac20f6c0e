"""``defender-agent status``: what the running (or last) agent reported, from its status file.

``status --check`` is for supervisors (a container ``HEALTHCHECK``, a monitoring script):
exit 0 when healthy, 1 when not (the reason on one line, :mod:`defender_agent.health`),
2 when the status cannot be read or the options are wrong. ``--service`` reads the
local service's status instead of the agent's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from defender_agent.cli._common import (
    COMMANDS,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    seconds,
)
from defender_agent.health import agent_problem, service_problem
from defender_agent.replies import rejection_text
from defender_agent.state import StateDir, default_state_dir

__all__ = ["add_parser", "command", "render"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add ``status`` to the command line."""
    p = sub.add_parser(
        "status",
        help=COMMANDS["status"][1],
        description="Print the status the agent keeps in its state directory: reports sent, "
        "accepted, rejected (by error code), unanswered and dropped, the last acceptance and "
        "the last rejection. Exit 1 when there is no status file. With --check: exit 0 "
        "when healthy, 1 when not (the reason on one line), 2 when the status cannot be read.",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the agent's state directory (default: as 'run')",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config file whose agent.state_dir to use (default: as 'run')",
    )
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 healthy, 1 unhealthy (reason on one line), 2 status "
        "unreadable; for a container HEALTHCHECK or a monitoring script",
    )
    p.add_argument(
        "--service",
        action="store_true",
        help="the local service's status (service-status.json in [service] state_dir) "
        "instead of the agent's",
    )
    p.add_argument(
        "--max-age",
        type=seconds,
        metavar="SECONDS",
        help="--check: the longest time without an accepted report (agent; default two "
        "intervals + 60 s) or since the status was written (service; default 60 s)",
    )
    p.add_argument(
        "--max-disconnected",
        type=seconds,
        metavar="SECONDS",
        help="--check: the longest time the MQTT link may be down (default: one interval "
        "for the agent, 60 s for the service)",
    )
    p.set_defaults(func=command)


def _ago(stamp: Any, now: float) -> str:  # noqa: ANN401 - a JSON value
    if not isinstance(stamp, (int, float)):
        return "never"
    seconds = max(0, int(now - stamp))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
    return f"{when} ({seconds} s ago)"


def _alive(pid: Any) -> bool:  # noqa: ANN401 - a JSON value
    return isinstance(pid, int) and pid > 0 and Path(f"/proc/{pid}").exists()


def _collector_lines(health: Any) -> list[str]:  # noqa: ANN401 - a JSON value
    """The collector's sources that had a problem in their last read, one line each."""
    if not isinstance(health, dict):
        return []
    lines = []
    sources = health.get("sources")
    for name, source in sorted(sources.items() if isinstance(sources, dict) else []):
        if not isinstance(source, dict):
            continue
        problems = []
        if source.get("missing"):
            problems.append(f"unreadable ({source['missing']})")
        if source.get("malformed"):
            problems.append(
                f"{source['malformed']} malformed line(s) skipped "
                f"({source.get('malformed_total', source['malformed'])} in all)"
            )
        if problems:
            lines.append(f"collector: {name}: " + "; ".join(problems))
    return lines


def render(status: dict[str, Any], now: float) -> str:
    """The status as lines for a person.

    >>> print(render({"thing_name": "gw", "counters": {"sent": 2, "accepted": 1,
    ...               "rejected": {"Throttled": 1}}}, 0).splitlines()[3])
    reports: built 0, sent 2, accepted 1, rejected 1 (Throttled 1), unanswered 0, dropped 0
    >>> print(render({"dry_run": True, "state_error": "cannot write status.json: disk full",
    ...               "collector": {"socket_source": "proc", "duration_ms": 2.5, "sources":
    ...               {"net/dev": {"missing": "Permission denied"}}}}, 0))
    ... # doctest: +ELLIPSIS
    thing: None  topic: None
    agent: pid None (not running), started never
    dry run: reports printed, nothing sent  updated never
    ...
    collector: last cycle 2.5 ms, sockets from proc
    collector: net/dev: unreadable (Permission denied)
    state NOT saved: cannot write status.json: disk full
    >>> print(render({"replies_missing": True, "counters": {"unanswered_in_a_row": 4}},
    ...              0).splitlines()[-1])
    problem: replies missing: 4 reports in a row unanswered (subscribing again, then reconnecting)
    """
    c = status.get("counters") or {}
    rejected = c.get("rejected") or {}
    by_code = ", ".join(f"{rejection_text(code, None)} {n}" for code, n in sorted(rejected.items()))
    running = "running" if _alive(status.get("pid")) else "not running"
    if status.get("dry_run"):
        link = "dry run: reports printed, nothing sent"
    else:
        link = f"endpoint: {status.get('endpoint')}  connected: {status.get('connected')}"
    lines = [
        f"thing: {status.get('thing_name')}  topic: {status.get('topic')}",
        (
            f"agent: pid {status.get('pid')} ({running}), "
            f"started {_ago(status.get('started_at'), now)}"
        ),
        f"{link}  updated {_ago(status.get('updated_at'), now)}",
        (
            f"reports: built {c.get('built', 0)}, sent {c.get('sent', 0)}, accepted "
            f"{c.get('accepted', 0)}, rejected {sum(rejected.values())}"
            + (f" ({by_code})" if by_code else "")
            + f", unanswered {c.get('unanswered', 0)}, dropped {c.get('dropped', 0)}"
        ),
        (
            f"held after Throttled: {c.get('held', 0)}, invalid: {c.get('invalid', 0)}, "
            f"errors: {c.get('cycle_errors', 0)}, awaiting reply: {c.get('awaiting_reply', 0)}"
        ),
        f"last accepted: {_ago(c.get('last_accepted_at'), now)}",
    ]
    last = c.get("last_rejection")
    if isinstance(last, dict):
        lines.append(
            f"last rejection: report {last.get('report_id')} "
            f"{rejection_text(last.get('code'), last.get('message'))} "
            f"at {_ago(last.get('at'), now)}"
        )
    failure = c.get("last_cycle_error")
    failure_text = None
    if isinstance(failure, dict):
        failure_text = f"{failure.get('stage')}: {failure.get('error')}"
        lines.append(f"last cycle error: {failure_text} at {_ago(failure.get('at'), now)}")
    if c.get("last_error") and c["last_error"] != failure_text:
        lines.append(f"last error: {c['last_error']}")
    health = status.get("collector")
    if isinstance(health, dict):
        took = health.get("duration_ms")
        took_text = f"{took:g} ms" if isinstance(took, (int, float)) else "?"
        source = health.get("socket_source")
        lines.append(
            f"collector: last cycle {took_text}" + (f", sockets from {source}" if source else "")
        )
    lines += _collector_lines(health)
    if status.get("replies_missing"):
        lines.append(
            f"problem: replies missing: {c.get('unanswered_in_a_row', '?')} reports in a row "
            "unanswered (subscribing again, then reconnecting)"
        )
    if status.get("state_error"):
        lines.append(f"state NOT saved: {status['state_error']}")
    return "\n".join(lines)


def _check(args: argparse.Namespace, state: StateDir, name: str) -> int:
    """``--check``: one line and exit 0 (healthy), 1 (unhealthy) or 2 (unreadable)."""
    who = "service" if args.service else "agent"
    status = state.load(name)
    if status is None:
        print(f"UNKNOWN: no readable {who} status in {state.path / name}.json")
        return EXIT_USAGE
    now = time.time()
    if args.service:
        problem = service_problem(
            status,
            now,
            max_age=args.max_age,
            max_disconnected=60.0 if args.max_disconnected is None else args.max_disconnected,
        )
    else:
        problem = agent_problem(
            status, now, max_age=args.max_age, max_disconnected=args.max_disconnected
        )
    if problem is not None:
        print(f"UNHEALTHY: {problem}")
        return EXIT_INVALID
    print(f"OK: {who} healthy")
    return EXIT_OK


def command(args: argparse.Namespace) -> int:
    """Print the status file (or check it, with ``--check``)."""
    state_dir = args.state_dir
    if state_dir is None:  # as 'run' finds it: --config, DEFENDER_AGENT_*, the config file
        from defender_agent.config import load_config  # noqa: PLC0415

        loaded = load_config({}, args.config, command="status")
        state_dir = loaded.service.state_dir if args.service else loaded.agent.state_dir
    state = StateDir(state_dir or default_state_dir())
    name = "service-status" if args.service else "status"
    if args.check:
        return _check(args, state, name)
    status = state.load(name)
    if args.service:  # the service's status file, as it is
        if status is None:
            print(f"no service status in {state.path} (is 'defender-agent service' running?)")
            return EXIT_INVALID
        print(json.dumps(status, indent=2, sort_keys=True))
        return EXIT_OK
    if status is None:
        print(f"no agent status in {state.path} (has 'defender-agent run' used this state dir?)")
        return EXIT_INVALID
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render(status, time.time()))
    return EXIT_OK

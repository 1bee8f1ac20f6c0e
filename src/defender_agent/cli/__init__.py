"""The ``defender-agent`` command line: thin over the library, one module per subcommand.

* ``run`` — the agent: publish a report every interval, track the replies.
* ``status`` — the running agent's counters, from its state directory.
* ``collect`` — the public sample's standalone collector: print complete reports.
* ``validate FILE`` — check a report against the Device Defender rules.
* ``service`` — a local Device Defender service on an MQTT broker, storing accepted reports.
* ``aws-setup`` — the AWS calls that create the configured custom metrics and a security profile.
* ``data`` — query the local service's stored metric values (things, list-metric-values, export).

Errors are one line on stderr (escaped and cut as log lines are, :mod:`defender_agent.logs`);
bad options exit 2, never a traceback. ``--log-level``, ``--log-format`` and ``--config`` go
before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Callable, Optional

from defender_agent import __version__
from defender_agent.cli._common import (
    COMMANDS,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    Parser,
    setup_logging,
)
from defender_agent.errors import AgentError
from defender_agent.logs import get_logger, one_line

__all__ = ["build_parser", "main"]

log = get_logger("defender_agent")


#: Options accepted before the subcommand as well as after it: flag -> dest
_GLOBAL_OPTIONS: dict[str, str] = {
    "--log-level": "log_level",
    "--log-format": "log_format",
    "--config": "config",
}


def build_parser(load: Optional[Collection[str]] = None, *, stubs: bool = True) -> Parser:
    """Build the argument parser (exposed for documentation and tests).

    ``--log-level``, ``--log-format`` and ``--config`` are accepted before the
    subcommand and after it; after it wins.

    Args:
        load: the subcommands whose modules are imported and whose options are
            parsed; the others get a stub that only lists them in ``--help``.
            ``None`` loads all of them.
        stubs: whether the subcommands not loaded get their stub (``False`` when
            only the loaded one can be asked for: one parser less per command).
    """
    parser = Parser(
        prog="defender-agent",
        description="AWS IoT Device Defender agent: collects device-side metrics and "
        "builds, validates and publishes Device Defender reports.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, "global_")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for name, (module, summary) in COMMANDS.items():
        if load is None or name in load:
            try:
                importlib.import_module(module).add_parser(sub)
            except ImportError as exc:  # an optional extra is not installed
                log.debug("%s unavailable: %s", name, exc)
                stub = sub.add_parser(name, help=f"{summary} (unavailable: {exc.name} missing)")
                stub.set_defaults(func=_unavailable(name, exc))
            _add_global_options(sub.choices[name], "")
        elif stubs:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The global options the command's own parser does not define already."""
    defined = parser._option_string_actions
    if "--log-level" not in defined:
        parser.add_argument(
            "--log-level",
            dest=prefix + "log_level",
            default=None,
            choices=("debug", "info", "warning", "error"),
            help="log verbosity on stderr (default: warning, info for run and service)",
        )
    if "--log-format" not in defined:
        parser.add_argument(
            "--log-format",
            dest=prefix + "log_format",
            default=None,
            choices=("text", "json"),
            help="log line format (default: text)",
        )
    if prefix and "--config" not in defined:
        parser.add_argument(
            "--config",
            dest=prefix + "config",
            type=Path,
            default=None,
            metavar="FILE",
            help="TOML config file, for the commands that read one "
            "(default: $DEFENDER_AGENT_CONFIG, else /etc/defender-agent/config.toml if present)",
        )


def _merge_global_options(args: argparse.Namespace) -> None:
    """Give each command the options given before it, unless it was given them after it."""
    for dest in _GLOBAL_OPTIONS.values():
        if getattr(args, dest, None) is None:
            setattr(args, dest, getattr(args, "global_" + dest, None))


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def command(_args: argparse.Namespace) -> int:
        raise AgentError(
            f"'{name}' needs {exc.name}, which is not installed "
            f"(pip install 'defender-agent[{name}]' installs what it needs)"
        )

    return command


def _command_name(argv: Sequence[str]) -> Optional[str]:
    """The subcommand in ``argv`` (the first word that is not an option or its value).

    >>> _command_name(["--log-level", "debug", "--config=x.toml", "collect", "-n", "1"])
    'collect'
    """
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    name = _command_name(words)
    if name in COMMANDS:  # the top-level --help before the command lists every command
        asks_help = any(word in ("-h", "--help") for word in words[: words.index(name)])
        parser = build_parser({name}, stubs=asks_help)
    else:
        parser = build_parser()
    args = parser.parse_args(words)
    _merge_global_options(args)
    # collect's path logs through logs.get_logger only: logging waits for a first record
    setup_logging(args.log_level or "warning", args.log_format or "text", defer=name == "collect")
    try:
        return int(args.func(args))
    except AgentError as exc:
        print(f"defender-agent: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug: one line for the user, the traceback at debug level
        log.debug("internal error", exc_info=True)
        print(
            f"defender-agent: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            "(run with --log-level debug for details)",
            file=sys.stderr,
        )
        return EXIT_SOFTWARE

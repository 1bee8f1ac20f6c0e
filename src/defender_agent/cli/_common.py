"""What every subcommand shares: the parser class, exit codes, option types, logging setup.

The log formatters are :mod:`defender_agent.logs`; ``setup_logging`` is re-exported here.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Callable, NoReturn, Optional

from defender_agent.logs import get_logger, setup_logging

if TYPE_CHECKING:
    from types import FrameType

__all__ = [
    "COMMANDS",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_USAGE",
    "Parser",
    "count",
    "positive",
    "seconds",
    "setup_logging",
    "stop_on_signals",
]

#: Subcommand -> (module, one-line help). Only the module of the command being run is
#: imported, so ``run`` does not pay for the service's storage or aws-setup's code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("defender_agent.cli.run", "publish a report to AWS IoT Device Defender every interval"),
    "status": ("defender_agent.cli.status", "show the agent's counters and last replies"),
    "doctor": (
        "defender_agent.cli.doctor",
        "check the agent's setup end to end: files, clock, network, TLS, MQTT, policy",
    ),
    "collect": (
        "defender_agent.cli.collect",
        "collect metrics and print reports (the sample's standalone collector)",
    ),
    "validate": (
        "defender_agent.cli.validate",
        "check a report file against the Device Defender rules",
    ),
    "sandbox": (
        "defender_agent.cli.sandbox",
        "run the agent, the local service and a broker on this machine",
    ),
    "service": (
        "defender_agent.cli.service",
        "run a local Device Defender service on an MQTT broker",
    ),
    "data": (
        "defender_agent.cli.service_data",
        "query the local Device Defender service's stored metric values",
    ),
    "greengrass": (
        "defender_agent.cli.greengrass",
        "run as a Greengrass v2 component, publishing through the nucleus's IPC",
    ),
    "aws-setup": (
        "defender_agent.cli.aws_setup",
        "print (or make) the AWS calls for a security profile and the custom metrics",
    ),
}

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: an internal error


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (logged), when running in the main thread."""
    import signal  # noqa: PLC0415 - only for the commands that run until stopped
    import threading  # noqa: PLC0415

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        get_logger("defender_agent").info("%s received: stopping", signal.Signals(signum).name)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    """A whole number >= 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value

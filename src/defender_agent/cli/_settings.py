"""Command-line options for configuration settings, and the one way a command loads its config.

An option of a setting has ``dest`` = the setting's flat name and default ``None`` (not
given): the default lives in the section dataclass only, and ``--help`` shows it from
there. Options are parsed by the setting's own parser inside the loader, so a bad value
reads the same from an option, a variable or the file: ``option --interval: expected a
whole number, got '5m'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Union

from defender_agent.config import Config, load_config, setting_named

__all__ = ["SettingOptions", "load_for"]

#: No forward reference (a string) here: typing compiles those at import (~1.5 ms).
_Container = Union[argparse.ArgumentParser, argparse._ArgumentGroup]


def _label(flags: tuple[str, ...]) -> str:
    """The spelling named in messages: the first long option without '_', else the first.

    >>> _label(("-t", "--thing_name", "--thing-name"))
    '--thing-name'
    """
    longs = [f for f in flags if f.startswith("--")]
    plain = [f for f in longs if "_" not in f]
    return (plain or longs or list(flags))[0]


class SettingOptions:
    """Adds the options of settings to one subcommand's parser and records their spelling.

    Args:
        parser: the subcommand's parser.
    """

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.labels: dict[str, str] = {}

    def add(
        self,
        name: str,
        *flags: str,
        group: Optional[_Container] = None,
        help: Optional[str] = None,
        **extra: Any,  # noqa: ANN401 - argparse's keyword arguments
    ) -> None:
        """An option taking a value, parsed by the setting's parser."""
        setting = setting_named(name)
        text = setting.help_with_default if help is None else help.replace("%", "%%")
        (group or self.parser).add_argument(*flags, dest=name, default=None, help=text, **extra)
        self.labels[name] = _label(flags)

    def switch(
        self,
        name: str,
        *flags: str,
        value: bool = True,
        group: Optional[_Container] = None,
        help: Optional[str] = None,
    ) -> None:
        """An option without a value that sets the boolean setting to ``value``."""
        text = setting_named(name).help if help is None else help
        (group or self.parser).add_argument(
            *flags,
            dest=name,
            action="store_const",
            const=value,
            default=None,
            help=text.replace("%", "%%"),
        )
        self.labels[name] = _label(flags)

    def common(self) -> None:
        """``--config``, ``--log-level`` and ``--log-format`` (also accepted before the command)."""
        self.parser.add_argument(
            "--config",
            type=Path,
            default=None,
            metavar="FILE",
            help="TOML config file (default: $DEFENDER_AGENT_CONFIG, else "
            "/etc/defender-agent/config.toml if present)",
        )
        self.add("log_level", "--log-level", choices=("debug", "info", "warning", "error"))
        self.add("log_format", "--log-format", choices=("text", "json"))

    def finish(self) -> None:
        """Record the options on the parser, for :func:`load_for`."""
        self.parser.set_defaults(setting_labels=dict(self.labels))


def load_for(args: argparse.Namespace, command: str, **extra: Optional[object]) -> Config:
    """Load the configuration of ``command`` from the file, the environment and ``args``.

    Args:
        args: the parsed command line (options of :class:`SettingOptions`).
        command: whose consistency rules to check (see :func:`~defender_agent.config.load_config`).
        **extra: more flag values by setting name (``None``: not given).

    Raises:
        ConfigError: a bad value or combination, naming the key and its source.
    """
    labels: dict[str, str] = getattr(args, "setting_labels", {})
    flags: dict[str, object] = {name: getattr(args, name, None) for name in labels}
    flags.update(extra)
    return load_config(flags, getattr(args, "config", None), command=command, labels=labels)

"""Value parsers of the configuration settings: one per kind of value, pure.

Every parser takes the raw value and ``text``: whether it came as text (an
environment variable or a command-line option, parsed from a string) or as a
typed TOML value (where ``interval = "300"`` is a string, not a number, and is
rejected). A bad value raises :class:`ValueError` (or :class:`TypeError` for a
value of the wrong type) with a message that the loader prefixes with the key
and its source.

>>> integer(1, 10)("7", text=True)
7
>>> integer(1, 10)("7", text=False)
Traceback (most recent call last):
...
TypeError: expected a whole number, got the string '7'
>>> boolean("yes", text=True), boolean(False, text=False)
(True, False)
>>> versions("1.0, 1.1", text=True) == frozenset({"1.0", "1.1"})
True
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Optional, Protocol, TypeVar

from defender_agent.rules import validate_thing_name

__all__ = [
    "Converter",
    "boolean",
    "choice",
    "directory",
    "integer",
    "optional_boolean",
    "optional_path",
    "optional_text",
    "patterns",
    "seconds",
    "sns_targets",
    "text",
    "thing_name",
    "tls_required",
    "versions",
    "webhook_urls",
]

T_co = TypeVar("T_co", covariant=True)
L = TypeVar("L", bound=str)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_VERSION = re.compile(r"[0-9]+\.[0-9]+")


class Converter(Protocol[T_co]):
    """Parse one raw setting value (``text``: it came as a string to be parsed)."""

    def __call__(self, value: object, *, text: bool) -> T_co:
        """Return the parsed value; raise ValueError or TypeError naming what is wrong."""
        ...


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def text(value: object, *, text: bool = True) -> str:
    """Any string, kept as is.

    >>> text(" a ", text=False)
    ' a '
    """
    return _string(value, "a string")


def optional_text(value: object, *, text: bool = True) -> Optional[str]:
    """A string, stripped; empty means unset (``None``).

    >>> optional_text("  ", text=False) is None
    True
    """
    stripped = _string(value, "a string").strip()
    return stripped or None


def optional_path(value: object, *, text: bool = True) -> Optional[Path]:
    """A path (``~`` expanded); empty means unset.

    >>> optional_path("~root/x", text=True)
    PosixPath('/root/x')
    """
    if isinstance(value, Path):
        return value.expanduser()
    stripped = optional_text(value, text=True)
    return Path(stripped).expanduser() if stripped else None


def directory(value: object, *, text: bool = True) -> Path:
    """An existing directory.

    >>> directory("/", text=False)
    PosixPath('/')
    >>> directory("/nonexistent/proc", text=True)
    Traceback (most recent call last):
    ...
    ValueError: '/nonexistent/proc' is not a directory
    """
    path = optional_path(value, text=True)
    if path is None:
        raise ValueError("expected a directory, got an empty string")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory")
    return path


def boolean(value: object, *, text: bool) -> bool:
    """``true``/``false``; from text also ``1/0``, ``yes/no``, ``on/off``.

    >>> boolean("off", text=True)
    False
    >>> boolean("true", text=False)
    Traceback (most recent call last):
    ...
    TypeError: expected true or false, got the string 'true'
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and text:
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if isinstance(value, str):
        raise TypeError(f"expected true or false, got the string {value!r}")
    raise TypeError(f"expected true or false, got {value!r}")


def tls_required(value: object, *, text: bool) -> bool:
    """``mqtt.tls``: ``true`` only; ``false`` is refused, naming the setting for plain TCP.

    >>> tls_required(True, text=False)
    True
    >>> tls_required("false", text=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: TLS cannot be switched off with tls = false: ... mqtt.insecure_plaintext = true ...
    """
    if boolean(value, text=text):
        return True
    raise ValueError(
        "TLS cannot be switched off with tls = false: for plain TCP to a broker on this host "
        "set mqtt.insecure_plaintext = true (DEFENDER_AGENT_INSECURE_PLAINTEXT, "
        "--insecure-plaintext)"
    )


def optional_boolean(value: object, *, text: bool) -> Optional[bool]:
    """``true``/``false``, or ``"auto"`` (``None``: the program decides).

    >>> optional_boolean("auto", text=False) is None
    True
    """
    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return None
    return boolean(value, text=text)


def _parsed(value: object, text: bool, parse: Callable[[str], object], what: str) -> object:
    """``value`` itself, or what ``parse`` makes of it when it came as text.

    A string from the TOML file, where a number is expected, is refused.
    """
    if not isinstance(value, str):
        return value
    if not text:
        raise TypeError(f"expected {what}, got the string {value!r}")
    try:
        return parse(value.strip())
    except ValueError:
        raise ValueError(f"expected {what}, got {value!r}") from None


def integer(low: int, high: int) -> Converter[int]:
    """A whole number from ``low`` to ``high``.

    >>> integer(1, 65535)(70000, text=False)
    Traceback (most recent call last):
    ...
    ValueError: expected a whole number from 1 to 65535, got 70000
    """

    def convert(value: object, *, text: bool) -> int:
        number = _parsed(value, text, int, "a whole number")
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"expected a whole number, got {value!r}")
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {number}")
        return number

    return convert


def seconds(low: float, high: float) -> Converter[float]:
    """A finite number of seconds from ``low`` to ``high``.

    >>> seconds(0, 60)(2, text=False)
    2.0
    >>> seconds(0, 60)("nan", text=True)
    Traceback (most recent call last):
    ...
    ValueError: expected 0 to 60 seconds, got 'nan'
    """

    def convert(value: object, *, text: bool) -> float:
        number = _parsed(value, text, float, "a number of seconds")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError(f"expected a number of seconds, got {value!r}")
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"expected {low:g} to {high:g} seconds, got {value!r}")
        return float(number)

    return convert


def choice(options: tuple[L, ...]) -> Converter[L]:
    """One of ``options`` (case-insensitive).

    >>> choice(("json", "cbor"))("CBOR", text=False)
    'cbor'
    """

    def convert(value: object, *, text: bool) -> L:
        lowered = _string(value, "a string").strip().lower()
        for option in options:
            if lowered == option:
                return option
        raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")

    return convert


def patterns(value: object, *, text: bool) -> tuple[str, ...]:
    """Glob patterns: a list, or one string of comma-separated patterns.

    >>> patterns("lo, docker*,", text=True)
    ('lo', 'docker*')
    """
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [_string(item, "a glob pattern").strip() for item in value]
    else:
        raise TypeError(f"expected a list of glob patterns, got {type(value).__name__}")
    return tuple(item for item in items if item)


def thing_name(value: object, *, text: bool) -> str:
    """A Device Defender thing name (see :func:`defender_agent.rules.validate_thing_name`).

    >>> thing_name("", text=False)
    Traceback (most recent call last):
    ...
    ValueError: invalid thing name '': must be 1 to 128 bytes of UTF-8, got 0
    """
    name = _string(value, "a thing name")
    try:
        return validate_thing_name(name)
    except ValueError as exc:
        raise ValueError(f"invalid thing name {name!r}: {exc}") from None


def versions(value: object, *, text: bool) -> frozenset[str]:
    """Report header versions ``<int>.<int>``: a list, or one comma-separated string.

    >>> versions(["1.0", "x"], text=False)
    Traceback (most recent call last):
    ...
    ValueError: expected versions such as 1.0,1.1 (each <int>.<int>), got 'x'
    """
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [_string(item, "a version string").strip() for item in value]
    else:
        raise TypeError(f"expected a list of versions, got {type(value).__name__}")
    found = [item for item in items if item]
    if not found:
        raise ValueError("expected versions such as 1.0,1.1, got none")
    for item in found:
        if not _VERSION.fullmatch(item):
            raise ValueError(f"expected versions such as 1.0,1.1 (each <int>.<int>), got {item!r}")
    return frozenset(found)


def _items(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [_string(item, what).strip() for item in value]
    else:
        raise TypeError(f"expected a list of {what}s, got {type(value).__name__}")
    return [item for item in items if item]


def _check_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if (
        not sep
        or scheme.lower() not in ("http", "https")
        or not rest
        or any(c.isspace() for c in url)
    ):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


def webhook_urls(value: object, *, text: bool) -> tuple[str, ...]:
    """Webhook URLs (``http://`` or ``https://``): a list, or one comma-separated string.

    >>> webhook_urls("http://127.0.0.1:9000/hook, https://alerts.example/x", text=True)
    ('http://127.0.0.1:9000/hook', 'https://alerts.example/x')
    >>> webhook_urls(["ftp://x"], text=False)
    Traceback (most recent call last):
    ...
    ValueError: expected an http:// or https:// URL, got 'ftp://x'
    """
    return tuple(_check_url(url) for url in _items(value, "URL"))


def sns_targets(value: object, *, text: bool) -> tuple[tuple[str, str], ...]:
    """``ARN=TARGET`` pairs: an SNS topic ARN and where its alerts go here instead.

    A target is ``mqtt:TOPIC`` (a topic on the service's broker) or an ``http(s)://`` URL
    (a webhook). A list, or one comma-separated string.

    >>> sns_targets(["arn:aws:sns:us-east-1:123456789012:ops=mqtt:ops/alerts"], text=False)
    (('arn:aws:sns:us-east-1:123456789012:ops', 'mqtt:ops/alerts'),)
    >>> sns_targets("arn:aws:sns:x=mail:me", text=True)
    Traceback (most recent call last):
    ...
    ValueError: expected ARN=mqtt:TOPIC or ARN=http(s)://URL, got 'arn:aws:sns:x=mail:me'
    """
    pairs = []
    for item in _items(value, "ARN=TARGET pair"):
        arn, sep, target = (part.strip() for part in item.partition("="))
        ok = bool(sep and arn.startswith("arn:") and target)
        if ok and target.startswith("mqtt:"):
            ok = len(target) > len("mqtt:") and not any(c in target for c in "+#")
        elif ok:
            try:
                _check_url(target)
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(f"expected ARN=mqtt:TOPIC or ARN=http(s)://URL, got {item!r}")
        pairs.append((arn, target))
    return tuple(pairs)

"""The curated public API: sorted, complete, and every name importable and documented."""

from __future__ import annotations

import defender_agent


def test_all_is_sorted_and_exported() -> None:
    names = defender_agent.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(defender_agent, name), name


def test_public_names_have_docstrings() -> None:
    for name in defender_agent.__all__:
        obj = getattr(defender_agent, name)
        if callable(obj):
            assert obj.__doc__, name


def test_version_matches_the_cli() -> None:
    from importlib.metadata import version

    assert defender_agent.__version__ == version("defender-agent")

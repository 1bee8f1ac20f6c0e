"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package that re-exports names from its submodules imports those submodules
only when a name is first used, so importing one small part of the project
(the CLI of one command, say) does not pay for all of it.

Example:
    >>> namespace = {"__name__": "pkg", "__all__": ["JSONDecoder"]}
    >>> getattr_, dir_ = lazy_exports(namespace, {"json.decoder": ("JSONDecoder",)})
    >>> dir_()
    ['JSONDecoder', '__all__', '__name__']
    >>> getattr_("JSONDecoder").__name__, "JSONDecoder" in namespace
    ('JSONDecoder', True)
    >>> getattr_("nothing")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'nothing'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Callable

__all__ = ["lazy_exports", "lazy_getattr"]


def lazy_getattr(
    namespace: MutableMapping[str, object], exports: Mapping[str, tuple[str, ...]]
) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports each exported name from its module on first use.

    Args:
        namespace: the package's ``globals()``; a loaded name is stored there, so the
            next lookup does not come back here.
        exports: module name -> the names the package takes from it.

    Returns:
        The function to assign to the package's ``__getattr__``.
    """
    home = {name: module for module, names in exports.items() for name in names}
    package = namespace["__name__"]

    def __getattr__(name: str) -> object:  # noqa: N807  # the PEP 562 hook's own name
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


def lazy_exports(
    namespace: MutableMapping[str, object], exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """:func:`lazy_getattr` and a ``__dir__`` that lists the names not loaded yet too.

    Args:
        namespace: the package's ``globals()``, with its ``__all__``.
        exports: module name -> the names the package takes from it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def __dir__() -> list[str]:  # noqa: N807  # the PEP 562 hook's own name
        public = namespace.get("__all__", [])
        assert isinstance(public, list)
        return sorted(set(namespace) | set(public))

    return lazy_getattr(namespace, exports), __dir__

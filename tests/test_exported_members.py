"""The public API of ``defender_agent`` and ``defender_agent.transport``.

For each package: ``__all__`` is sorted and unique and every name in it can be
imported; the lazy-loading table and the imports mypy reads name the same
things from the same modules; each member is documented; and importing the
package imports none of the heavy modules behind it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import subprocess
import sys
from importlib.metadata import version
from types import ModuleType

import pytest

PACKAGES = ["defender_agent", "defender_agent.transport"]


@pytest.fixture(params=PACKAGES)
def package(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def exported(package: ModuleType) -> list[str]:
    return [name for name in package.__all__ if not name.startswith("__")]


def type_checking_imports(package: ModuleType) -> dict[str, tuple[str, ...]]:
    """module -> names, from the ``if TYPE_CHECKING:`` block of the package's source."""
    tree = ast.parse(inspect.getsource(package))
    found: dict[str, tuple[str, ...]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                found[stmt.module] = tuple(alias.name for alias in stmt.names)
    return found


def test_all_is_sorted_unique_and_importable(package: ModuleType) -> None:
    names = package.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(package, name) is not None, name
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)  # the star import users write
    assert set(names) <= set(namespace)


def test_lazy_table_and_type_checking_imports_agree_with_all(package: ModuleType) -> None:
    table: dict[str, tuple[str, ...]] = package._EXPORTS
    assert type_checking_imports(package) == table
    listed = [name for names in table.values() for name in names]
    assert sorted(listed) == sorted(exported(package))
    for module, names in table.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(package, name)


def test_unknown_names_raise_attribute_error(package: ModuleType) -> None:
    with pytest.raises(
        AttributeError, match=f"module '{package.__name__}' has no attribute 'Nope'"
    ):
        package.Nope  # noqa: B018  # the attribute access is the test
    assert not hasattr(package, "Nope")
    assert set(package.__all__) <= set(dir(package))


def own_docstring(obj: object) -> str:
    """The object's own docstring, not an inherited or a generated one."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return ""  # the signature dataclasses writes when there is no docstring
        return doc
    return getattr(obj, "__doc__", None) or ""


def alias_comment(package: ModuleType, name: str) -> str:
    """The ``#:`` comment above ``name = ...`` in the module that defines a type alias."""
    for module_name in package._EXPORTS:
        if name in package._EXPORTS[module_name]:
            lines = inspect.getsource(importlib.import_module(module_name)).splitlines()
            for index, line in enumerate(lines):
                if line.startswith(f"{name} = ") and index and lines[index - 1].startswith("#:"):
                    return lines[index - 1]
    return ""


def test_every_member_is_documented(package: ModuleType) -> None:
    undocumented = []
    for name in exported(package):
        obj = getattr(package, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not own_docstring(obj).strip():
                undocumented.append(name)
        elif not alias_comment(package, name):  # a type alias: its `#:` comment documents it
            undocumented.append(name)
    assert undocumented == []


def test_the_version_is_the_distribution_version() -> None:
    import defender_agent

    assert defender_agent.__version__ == version("defender-agent")


@pytest.mark.parametrize(
    ("statement", "must_not_load"),
    [
        (
            "import defender_agent",
            ["defender_agent.cycle", "defender_agent.report.validate", "awscrt"],
        ),
        (
            "from defender_agent.transport import MemoryTransport",
            ["awscrt", "defender_agent.cycle"],
        ),
        ("from defender_agent import MqttSettings", ["awscrt", "defender_agent.report.validate"]),
    ],
)
def test_importing_the_api_loads_only_what_is_used(
    statement: str, must_not_load: list[str]
) -> None:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(result.stdout.split())
    assert "defender_agent" in loaded
    assert loaded.isdisjoint(must_not_load)

"""Plugins discovered through the entry point group of a real distribution.

The distribution is ``tests/plugins/defender-agent-testplugin``. It is not
installed: the module fixture lays it out in a temporary directory as an
installer would (its module beside a ``.dist-info`` with ``METADATA`` and the
``entry_points.txt`` made from its ``pyproject.toml``) and puts that directory
on ``sys.path`` for this module's tests only, so ``importlib.metadata`` finds it
and nothing is left in the environment or in the source tree.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from defender_agent.custom import ENTRY_POINT_GROUP, CustomMetrics, CustomMetricsConfig
from defender_agent.custom._base import MetricError
from defender_agent.custom.plugins import PluginSource, discover_plugins, load_plugin
from defender_agent.custom.registry import parse_custom_metrics_table
from defender_agent.errors import ConfigError
from defender_agent.model import CustomMetric, CustomMetricType
from defender_agent.procfs import ProcFS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PLUGIN = Path(__file__).parents[1] / "plugins" / "defender-agent-testplugin"
DIST = "defender-agent-testplugin"
MODULE = "defender_agent_testplugin"


def lay_out_distribution(project_dir: Path, site: Path) -> Path:
    """Lay a one-module project out in ``site`` as pip would install it; returns the .dist-info."""
    project = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, dist_version = project["name"], project["version"]
    module = name.replace("-", "_")
    shutil.copyfile(project_dir / f"{module}.py", site / f"{module}.py")
    info = site / f"{module}-{dist_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {dist_version}\n", encoding="utf-8"
    )
    sections = []
    for group, entry_points in project.get("entry-points", {}).items():
        lines = [f"{ep_name} = {value}" for ep_name, value in entry_points.items()]
        sections.append("\n".join([f"[{group}]", *lines]) + "\n")
    (info / "entry_points.txt").write_text("\n".join(sections), encoding="utf-8")
    return info


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the test plugin's distribution, on sys.path for this module only."""
    directory = tmp_path_factory.mktemp("plugin-site")
    lay_out_distribution(PLUGIN, directory)
    sys.modules.pop(MODULE, None)  # the doctest collection may have imported the source copy
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(directory))  # also invalidates the import caches
        yield directory
    sys.modules.pop(MODULE, None)
    importlib.invalidate_caches()


@pytest.fixture
def test_plugin(site: Path) -> str:
    """The name of the test plugin's distribution, found on sys.path."""
    return DIST


def test_the_distribution_is_the_temporary_one(site: Path) -> None:
    distribution = importlib.metadata.distribution(DIST)
    assert Path(str(distribution.locate_file(""))) == site
    assert distribution.version == "1.0.0"
    module = importlib.import_module(MODULE)
    assert Path(str(module.__file__)).parent == site


@pytest.fixture
def discovered(test_plugin: str) -> dict[str, importlib.metadata.EntryPoint]:
    return discover_plugins()


def test_discovery_finds_every_entry_point_without_importing(discovered) -> None:
    ours = {name: ep for name, ep in discovered.items() if name.startswith("testplugin_")}
    assert sorted(ours) == [
        "testplugin_bad_value",
        "testplugin_broken",
        "testplugin_class",
        "testplugin_missing",
        "testplugin_number",
        "testplugin_strings",
    ]
    assert all(ep.group == ENTRY_POINT_GROUP for ep in ours.values())
    assert ours["testplugin_number"].value == "defender_agent_testplugin:battery"


def test_discovery_of_an_empty_group() -> None:
    assert discover_plugins("defender_agent.no_such_group") == {}


def test_load_each_plugin_shape(discovered) -> None:
    number = load_plugin(discovered["testplugin_number"])
    assert isinstance(number, PluginSource)
    assert (number.name, number.type, number.sample()) == (
        "battery_level",
        CustomMetricType.NUMBER,
        82.5,
    )
    strings = load_plugin(
        discovered["testplugin_strings"]
    )  # a function: named after its entry point
    assert isinstance(strings, PluginSource)
    assert (strings.name, strings.type) == ("testplugin_strings", CustomMetricType.STRING_LIST)
    cls = load_plugin(discovered["testplugin_class"])  # a class: instantiated once
    assert isinstance(cls, PluginSource)
    assert (cls.name, cls.type) == ("peer_addresses", CustomMetricType.IP_ADDRESS_LIST)
    assert "PeerAddresses" in repr(cls)


def test_a_plugin_that_cannot_be_loaded(discovered) -> None:
    missing = load_plugin(discovered["testplugin_missing"])
    assert isinstance(missing, MetricError)
    assert missing.reason.startswith(
        "cannot load plugin defender_agent_testplugin:does_not_exist: AttributeError"
    )


class _EntryPoint:
    """Just enough of an EntryPoint for load_plugin."""

    def __init__(self, obj: object, name: str = "ep_name") -> None:
        self.name, self.value, self._obj = name, "pkg.mod:obj", obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def load_fake(obj: object) -> PluginSource | MetricError:
    return load_plugin(_EntryPoint(obj))  # type: ignore[arg-type]  # a duck-typed stand-in


class _Shape:
    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (
            ImportError("no module named pkg"),
            "cannot load plugin pkg.mod:obj: ImportError: no module named pkg",
        ),
        (_Shape(type="number"), "has no collect() and is not callable"),
        (_Shape(type="numbers", collect=lambda: 1), "has a bad type: expected one of number"),
        (_Shape(collect=lambda: 1), "has a bad type"),
        (
            _Shape(name="aws:x", type="number", collect=lambda: 1),
            "has a bad name: 'aws:x' starts with",
        ),
        (_Shape(name=5, type="number", collect=lambda: 1), "has a bad name: expected a string"),
    ],
)
def test_bad_plugin_shapes(obj: object, reason: str) -> None:
    result = load_fake(obj)
    assert isinstance(result, MetricError)
    assert reason in result.reason


def test_plugin_type_may_be_the_enum() -> None:
    result = load_fake(_Shape(type=CustomMetricType.NUMBER_LIST, collect=lambda: [1]))
    assert isinstance(result, PluginSource)
    assert result.name == "ep_name" and result.sample() == [1]


# --------------------------------------------------------------------------- configuration
def test_config_accepts_installed_plugin_names(test_plugin: str) -> None:
    config = parse_custom_metrics_table({"enabled": ["uptime", "testplugin_number"]}, "agent.toml")
    assert config.enabled == ("uptime", "testplugin_number")


def test_config_rejects_names_that_are_neither(test_plugin: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_custom_metrics_table({"enabled": ["testplugin_numbr"]}, "agent.toml")
    message = str(info.value)
    assert message.startswith(
        "agent.toml: custom_metrics.enabled[0]: unknown metric 'testplugin_numbr'; "
        "did you mean 'testplugin_number'?"
    )
    assert "testplugin_class" in message  # the installed plugins are listed


# --------------------------------------------------------------------------- collection
def test_enabled_plugins_are_collected_checked_and_isolated(
    test_plugin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enabled = (
        "testplugin_number",
        "testplugin_strings",
        "testplugin_class",
        "testplugin_broken",
        "testplugin_bad_value",
        "testplugin_missing",
        "not_installed",
    )
    with caplog.at_level(logging.WARNING, logger="defender_agent"):
        metrics = CustomMetrics(CustomMetricsConfig(enabled=enabled), ProcFS(tmp_path))
        collected = metrics.collect()
    assert collected == [
        CustomMetric("battery_level", CustomMetricType.NUMBER, 82.5),
        CustomMetric("testplugin_strings", CustomMetricType.STRING_LIST, ("home-5G", "office_net")),
        CustomMetric(
            "peer_addresses", CustomMetricType.IP_ADDRESS_LIST, ("192.0.2.1", "2001:db8::1")
        ),
    ]
    assert metrics.names_and_types() == [
        ("battery_level", CustomMetricType.NUMBER),
        ("testplugin_strings", CustomMetricType.STRING_LIST),
        ("peer_addresses", CustomMetricType.IP_ADDRESS_LIST),
        ("broken_metric", CustomMetricType.NUMBER),
        ("bad_value", CustomMetricType.STRING_LIST),
    ]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        (
            "custom metric testplugin_missing: left out of every report: cannot load plugin "
            "defender_agent_testplugin:does_not_exist: AttributeError: module "
            "'defender_agent_testplugin' has no attribute 'does_not_exist'"
        ),
        (
            "custom metric not_installed: left out of every report: neither a built-in metric nor "
            "an installed plugin"
        ),
        "custom metric broken_metric: left out: RuntimeError: sensor offline",
        (
            "custom metric bad_value: left out: invalid string-list: item 0: 'has space' has "
            "characters outside [A-Za-z0-9:_-/.]"
        ),
    ]


def test_plugins_off(test_plugin: str, tmp_path: Path) -> None:
    metrics = CustomMetrics(
        CustomMetricsConfig(enabled=("testplugin_number",)), ProcFS(tmp_path), plugins=False
    )
    assert metrics.names_and_types() == []
    assert metrics.collect() == []


def test_installing_a_plugin_does_not_enable_it(test_plugin: str, tmp_path: Path) -> None:
    assert CustomMetrics(CustomMetricsConfig(), ProcFS(tmp_path)).collect() == []

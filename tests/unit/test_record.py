"""Records (defender_agent._record) behave as the dataclasses they replace.

Each record class of the report model, the configuration and the validator is compared
with a real dataclass built from the same fields and options: constructor, repr,
equality, hash, ordering, immutability and ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from defender_agent import _record
from defender_agent.config import AgentSection, CollectorConfig, Config, LoggingSection, MqttSection
from defender_agent.custom.settings import CustomMetricsConfig
from defender_agent.model import (
    Connection,
    ConnectionList,
    CustomMetric,
    CustomMetricType,
    ListeningPort,
    NetworkStats,
    PortList,
    Report,
)
from defender_agent.report.fit import EncodedReport
from defender_agent.report.validate import Problem, Severity, ValidationPolicy, ValidationResult
from defender_agent.service.metrics_map import MetricValue

CONN = Connection("203.0.113.7", 8883, 50312, "eth0")
PORTS = PortList((ListeningPort(22, "eth0"), ListeningPort(80)), 2)

#: class -> (frozen, order, two different argument tuples)
CASES: dict[type[Any], tuple[bool, bool, tuple[Any, ...], tuple[Any, ...]]] = {
    ListeningPort: (True, True, (22, "eth0"), (80, "eth0")),
    Connection: (True, True, ("203.0.113.7", 8883, 50312), ("2001:db8::5", 443, 1, "wlan0")),
    PortList: (True, False, ((ListeningPort(1),), 1), (None, 0)),
    ConnectionList: (True, False, ((CONN,), 5), ((), 0)),
    NetworkStats: (True, False, (1, 2, 3, 4), (None, 2, 3, 4)),
    CustomMetric: (
        True,
        False,
        ("cpu", CustomMetricType.NUMBER, 1.5),
        ("u", CustomMetricType.STRING_LIST, ("a",)),
    ),
    Report: (True, False, (7,), (8, "1.0", PORTS, None, ConnectionList((CONN,), 1))),
    CustomMetricsConfig: (True, False, (("uptime",),), ((), Path("/data"))),
    MqttSection: (True, False, ("iot.example.com", 8883), ()),
    AgentSection: (True, False, ("thing-1", "cbor"), ()),
    CollectorConfig: (True, False, (Path("/proc"), 5), (Path("/proc"),)),
    LoggingSection: (True, False, ("debug",), ()),
    Problem: (True, False, ("$", "bad"), ("$.x", "odd", Severity.WARNING)),
    ValidationPolicy: (True, False, (True,), ()),
    ValidationResult: (True, False, (None, None, None, ()), ({}, None, None, (Problem("$", "x"),))),
    EncodedReport: (True, False, (Report(1), {}, b"{}"), (Report(2), {"a": 1}, b"")),
    MetricValue: (True, False, ("aws:all-bytes-in", 5), ("m", None, ("192.0.2.1/32",))),
}


def twin(cls: type[Any], frozen: bool, order: bool) -> type[Any]:
    """The real dataclass with the record's fields, defaults and options."""
    namespace: dict[str, Any] = {"__annotations__": {}, "__qualname__": cls.__qualname__}
    for f in dataclasses.fields(cls):
        namespace["__annotations__"][f.name] = f.type
        if f.default_factory is not dataclasses.MISSING:
            namespace[f.name] = dataclasses.field(default_factory=f.default_factory, repr=f.repr)
        elif f.default is not dataclasses.MISSING:
            namespace[f.name] = dataclasses.field(default=f.default, repr=f.repr)
    made = type(cls.__name__, (), namespace)
    return dataclasses.dataclass(frozen=frozen, order=order)(made)


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_a_record_behaves_as_its_dataclass(cls: type[Any]) -> None:
    frozen, order, args_a, args_b = CASES[cls]
    real = twin(cls, frozen, order)
    a, b, a2 = cls(*args_a), cls(*args_b), cls(*args_a)
    ra, rb = real(*args_a), real(*args_b)
    assert repr(a) == repr(ra) and repr(b) == repr(rb)
    assert (a == a2, a == b, a != b, a == ra) == (True, False, True, False)
    try:
        assert hash(a) == hash(ra) == hash(a2)
    except TypeError as exc:  # a field holds a dict: neither hashes
        with pytest.raises(TypeError, match=str(exc)):
            hash(ra)
    if order:
        assert (a < b, a <= b, a > b, a >= b) == (ra < rb, ra <= rb, ra > rb, ra >= rb)
    else:
        with pytest.raises(TypeError):
            _ = a < b
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
        setattr(a, name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(a, name)
    # keywords, replace (ours and dataclasses'), fields, asdict, pickle
    kw = {f.name: getattr(b, f.name) for f in dataclasses.fields(cls)}
    assert cls(**kw) == b
    assert dataclasses.replace(a, **kw) == b == _record.replace(a, **kw)
    assert [f.name for f in dataclasses.fields(a)] == [f.name for f in dataclasses.fields(real)]
    assert dataclasses.asdict(a) == dataclasses.asdict(ra)
    assert dataclasses.is_dataclass(a)
    assert pickle.loads(pickle.dumps(b)) == b
    if sys.version_info >= (3, 10):  # dataclasses write __match_args__ from 3.10 on
        assert cls.__match_args__ == real.__match_args__


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_constructor_errors_match_the_dataclass(cls: type[Any]) -> None:
    frozen, order, args_a, _ = CASES[cls]
    real = twin(cls, frozen, order)
    many = (*args_a, *([None] * (len(dataclasses.fields(cls)) + 1 - len(args_a))))
    first = dataclasses.fields(cls)[0].name
    calls = [((), {}), (many, {}), (args_a, {"nope": 1}), (args_a, {first: 1})]
    for args, kwargs in calls:
        try:
            real(*args, **kwargs)
        except TypeError as exc:
            # (Python 3.9 says "__init__() ...", 3.10+ "Name.__init__() ...")
            expected = str(exc).split("__init__()", 1)[1]
            with pytest.raises(TypeError) as ours:
                cls(*args, **kwargs)
            assert str(ours.value).split("__init__()", 1)[1] == expected
        else:
            cls(*args, **kwargs)


def test_hand_written_constructors_have_the_dataclass_signature() -> None:
    for cls in (
        ListeningPort,
        Connection,
        PortList,
        ConnectionList,
        NetworkStats,
        CustomMetric,
        Report,
        MetricValue,
    ):
        real = twin(cls, True, False)
        assert str(inspect.signature(cls)).replace("'", "") == str(inspect.signature(real)).replace(
            "'", ""
        ), cls.__name__


def test_defaults_and_factories_are_per_instance() -> None:
    a, b = Config(), Config()
    assert a.sources == {} and a.sources is not b.sources
    assert CollectorConfig().custom_metrics == CustomMetricsConfig()
    assert "extra" not in repr(a)  # field(repr=False)


def test_post_init_runs_and_an_unfrozen_record_is_unhashable() -> None:
    seen = []

    @_record.record  # mypy sees no dataclass here: the calls below are typed Any
    class Box:
        value: int = 0

        def __post_init__(self) -> None:
            seen.append(self.value)

    make: Any = Box
    box = make(3)
    box.value = 4
    assert seen == [3] and box == make(4) and Box.__hash__ is None


def test_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b' follows default"):

        @_record.record
        class Bad:
            a: int = 0
            b: int

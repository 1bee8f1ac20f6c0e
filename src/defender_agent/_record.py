"""Value classes that behave as dataclasses but cost next to nothing to create at import.

:func:`dataclasses.dataclass` writes up to ten methods per class as source text and
compiles each (and imports :mod:`inspect`): about 1 ms a class, which every start-up of
``collect`` and ``run`` paid some twenty times. :func:`record` gives a class an
``__init__`` that takes the dataclass's arguments (positional or keyword, defaults, default
factories) and raises its errors, unless the class writes its own (the classes built in
bulk do: a generic one is slower per instance), and shares one ``__repr__``, ``__eq__``,
``__hash__``, ordering and frozen ``__setattr__`` among all records. Behaviour is
that of the dataclass with the same options: equality and ordering as tuples of the
fields between instances of the same class, the hash of that tuple when frozen (none
when ``eq`` without ``frozen``), :class:`dataclasses.FrozenInstanceError` on assignment,
``__match_args__``, ``__post_init__``. :func:`dataclasses.replace`,
:func:`dataclasses.fields`, :func:`dataclasses.asdict` and
:func:`dataclasses.is_dataclass` work on records too: their ``__dataclass_fields__``
is built (importing :mod:`dataclasses`) the first time something asks for it.

For mypy a record *is* a dataclass: a module declares ::

    if TYPE_CHECKING:
        from dataclasses import dataclass as record, field
    else:
        from defender_agent._record import field, record

so that type checking sees the constructor, the fields and the frozen attributes.

>>> @record(frozen=True, order=True)
... class Point:
...     x: int
...     y: int = 0
...     tags: tuple[str, ...] = field(default_factory=tuple, repr=False)
>>> p = Point(1, y=2)
>>> p, p == Point(1, 2), p < Point(1, 3), hash(p) == hash(Point(1, 2))
(Point(x=1, y=2), True, True, True)
>>> replace(p, y=5)
Point(x=1, y=5)
>>> p.x = 3
Traceback (most recent call last):
...
dataclasses.FrozenInstanceError: cannot assign to field 'x'
>>> import dataclasses
>>> dataclasses.replace(p, x=0), [f.name for f in dataclasses.fields(p)]
(Point(x=0, y=2), ['x', 'y', 'tags'])
>>> Point()
Traceback (most recent call last):
...
TypeError: Point.__init__() missing 1 required positional argument: 'x'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MISSING", "Field", "field", "fields", "record", "replace"]

T = TypeVar("T")

_FIELDS = "__record_fields__"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: No default (the field is required).
MISSING: Any = _Missing()


class Field:
    """A record field's default (or default factory), metadata and whether ``repr`` shows it.

    Also a non-data descriptor whose class-level value is the default, so that a real
    dataclass given one as a default sees the plain default (``setting()`` of the
    configuration sections is used by dataclasses and records alike).
    """

    __slots__ = ("default", "default_factory", "metadata", "name", "repr")

    def __init__(
        self,
        default: object = MISSING,
        default_factory: Optional[Callable[[], object]] = None,
        metadata: Optional[Mapping[str, object]] = None,
        repr: bool = True,
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.metadata: Mapping[str, object] = metadata or {}
        self.repr = repr
        self.name = ""

    def __get__(self, instance: object, owner: Optional[type] = None) -> object:
        if self.default is MISSING:  # a factory: as a dataclass default, none
            raise AttributeError(self.name)
        return self.default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Field({self.name!r}, default={self.default!r})"


def field(
    *,
    default: Any = MISSING,  # noqa: ANN401 - any field's default
    default_factory: Optional[Callable[[], Any]] = None,
    metadata: Optional[Mapping[str, object]] = None,
    repr: bool = True,
) -> Any:  # noqa: ANN401 - as dataclasses.field: the default's type for the checker
    """A field with a default factory, metadata or left out of ``repr``."""
    if default is not MISSING and default_factory is not None:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, metadata, repr)


def fields(cls_or_record: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    cls = cls_or_record if isinstance(cls_or_record, type) else type(cls_or_record)
    found: tuple[Field, ...] = cls.__dict__[_FIELDS]
    return found


def replace(obj: T, **changes: Any) -> T:  # noqa: ANN401 - a field's new value
    """A copy of a record (or a dataclass instance) with some fields changed."""
    cls = type(obj)
    if _FIELDS not in cls.__dict__:
        import dataclasses  # noqa: PLC0415 - a real dataclass

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    for f in cls.__dict__[_FIELDS]:
        if f.name not in changes:
            changes[f.name] = obj.__dict__[f.name]
    new: T = cls(**changes)
    return new


# --------------------------------------------------------------------------- shared methods
def _values(self: object) -> tuple[object, ...]:
    d = self.__dict__
    return tuple(d[name] for name in type(self).__record_names__)  # type: ignore[attr-defined]


def _repr(self: object) -> str:
    shown = ", ".join(
        f"{name}={self.__dict__[name]!r}"
        for name in type(self).__record_repr__  # type: ignore[attr-defined]
    )
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _hash(self: object) -> int:
    return hash(_values(self))


def _lt(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        return _values(self) < _values(other)
    return NotImplemented


def _le(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        return _values(self) <= _values(other)
    return NotImplemented


def _gt(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        return _values(self) > _values(other)
    return NotImplemented


def _ge(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        return _values(self) >= _values(other)
    return NotImplemented


def _frozen_error(name: str) -> Exception:
    from dataclasses import FrozenInstanceError  # noqa: PLC0415 - only on the error

    return FrozenInstanceError(f"cannot assign to field {name!r}")


def _setattr(self: object, name: str, value: object) -> None:
    raise _frozen_error(name)


def _delattr(self: object, name: str) -> None:
    raise _frozen_error(name)


class _DataclassFields:
    """``__dataclass_fields__``, built on first use so that :mod:`dataclasses` works on records."""

    def __get__(self, instance: object, owner: type) -> dict[str, Any]:
        import dataclasses  # noqa: PLC0415 - only when dataclasses' functions are used

        built: dict[str, Any] = {}
        hints = vars(owner).get("__annotations__", {})
        for f in owner.__dict__[_FIELDS]:
            if f.default_factory is not None:
                real = dataclasses.field(
                    default_factory=f.default_factory, metadata=f.metadata, repr=f.repr
                )
            else:
                real = dataclasses.field(default=f.default, metadata=f.metadata, repr=f.repr)
            if real.default is MISSING:
                real.default = dataclasses.MISSING
            real.name = f.name
            real.type = hints.get(f.name, Any)
            real._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
            built[f.name] = real
        type.__setattr__(owner, "__dataclass_fields__", built)
        return built


def _listed(missing: list[str]) -> str:
    """Python's own wording for missing arguments.

    >>> _listed(["a"]), _listed(["a", "b"]), _listed(["a", "b", "c"])
    ("1 required positional argument: 'a'", "2 required positional arguments: 'a' and 'b'", \
"3 required positional arguments: 'a', 'b', and 'c'")
    """
    quoted = [repr(name) for name in missing]
    if len(quoted) > 2:
        text = ", ".join(quoted[:-1]) + ", and " + quoted[-1]
    else:
        text = " and ".join(quoted)
    s = "s" if len(quoted) > 1 else ""
    return f"{len(quoted)} required positional argument{s}: {text}"


def _make_init(
    cls: type, fields_: tuple[Field, ...], frozen: bool, post_init: bool
) -> Callable[..., None]:
    """The ``__init__`` a dataclass with these fields would have.

    Positional or keyword arguments in field order, the defaults and default
    factories, and the same errors.
    """
    names = tuple(f.name for f in fields_)
    where = f"{cls.__qualname__}.__init__()"
    defaults = {f.name: f.default for f in fields_ if f.default is not MISSING}
    factories = {f.name: f.default_factory for f in fields_ if f.default_factory is not None}
    required = tuple(n for n in names if n not in defaults and n not in factories)
    count = len(names)
    takes = (
        f"{count + 1}"
        if not (defaults or factories)
        else f"from {len(required) + 1} to {count + 1}"
    )
    plural = "" if takes == "1" else "s"

    def __init__(self: object, *args: object, **kwargs: object) -> None:  # noqa: N807
        if len(args) > count:
            raise TypeError(
                f"{where} takes {takes} positional argument{plural} but {len(args) + 1} were given"
            )
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name in values:
                raise TypeError(f"{where} got multiple values for argument {name!r}")
            if name not in names:
                raise TypeError(f"{where} got an unexpected keyword argument {name!r}")
            values[name] = value
        if len(values) < count:
            missing = [n for n in required if n not in values]
            if missing:
                raise TypeError(f"{where} missing {_listed(missing)}")
            for name, factory in factories.items():
                if name not in values:
                    values[name] = factory()
            for name, default in defaults.items():
                values.setdefault(name, default)
        d = self.__dict__
        for name in names:
            d[name] = values[name]
        if post_init:
            self.__post_init__()  # type: ignore[attr-defined]

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def record(
    cls: Optional[type[T]] = None, *, frozen: bool = False, order: bool = False, eq: bool = True
) -> Any:  # noqa: ANN401 - a class decorator, or a decorator factory as dataclass
    """Make ``cls`` a record: the dataclass of the same options, without its creation cost."""

    def wrap(cls: type[T]) -> type[T]:
        hints: dict[str, str] = vars(cls).get("__annotations__", {})
        made: list[Field] = []
        for name, hint in hints.items():
            if str(hint).startswith(("ClassVar", "typing.ClassVar", "InitVar")):
                raise TypeError(f"{cls.__name__}.{name}: ClassVar/InitVar are not supported")
            value = cls.__dict__.get(name, MISSING)
            f = value if isinstance(value, Field) else Field(value)
            f.name = name
            if f.default_factory is None and f.default is not MISSING:
                type.__setattr__(cls, name, f.default)  # as dataclass: the plain default
            elif name in cls.__dict__:
                type.__delattr__(cls, name)
            made.append(f)
        required_after_default = [
            f.name
            for i, f in enumerate(made)
            if f.default is MISSING
            and f.default_factory is None
            and any(g.default is not MISSING or g.default_factory is not None for g in made[:i])
        ]
        if required_after_default:
            raise TypeError(f"non-default argument {required_after_default[0]!r} follows default")
        names = tuple(f.name for f in made)
        attrs: dict[str, object] = {
            _FIELDS: tuple(made),
            "__record_names__": names,
            "__record_repr__": tuple(f.name for f in made if f.repr),
            "__match_args__": names,
            "__dataclass_fields__": _DataclassFields(),
            "__repr__": _repr,
        }
        if "__init__" not in cls.__dict__:
            attrs["__init__"] = _make_init(cls, tuple(made), frozen, hasattr(cls, "__post_init__"))
        if eq:
            attrs["__eq__"] = _eq
            attrs["__hash__"] = _hash if frozen else None
        if order:
            attrs.update(__lt__=_lt, __le__=_le, __gt__=_gt, __ge__=_ge)
        if frozen:
            attrs.update(__setattr__=_setattr, __delattr__=_delattr)
        for name, value in attrs.items():
            if name not in cls.__dict__ or name in ("__hash__", "__dataclass_fields__"):
                type.__setattr__(cls, name, value)
        return cls

    return wrap if cls is None else wrap(cls)

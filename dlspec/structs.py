"""Records cheaper to define than dataclasses, for the classes `dlspec check` imports.

``@dataclass`` writes the source of up to six methods for each class and compiles it when its
module is imported (about 0.15 ms a class, 0.3 ms a frozen one); a check imports some fifty
such classes, and its start-up is what it is measured on. A :class:`Struct` compiles one
method, ``__init__``, when it makes its first instance; the others are written once, here,
for every struct. Otherwise a struct
is what the dataclass it replaces was:

* ``class Layout(Struct)``: ``@dataclass(frozen=True, slots=True)``: immutable (assigning
  raises :class:`dataclasses.FrozenInstanceError`), hashable, copied and pickled by making it
  anew from its fields;
* ``class Step(Struct, frozen=False)``: ``@dataclass``: mutable, unhashable, with a
  ``__dict__``;
* ``eq=False`` keeps object identity for ``==`` and ``hash`` (``@dataclass(eq=False)``).

Fields are the annotated names, the bases' first; a default is a value or
``field(default_factory=...)``. :func:`replace` copies a struct (or a dataclass) with some
fields changed, as :func:`dataclasses.replace` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, Field, FrozenInstanceError, field
from typing import Any, TypeVar

from typing_extensions import dataclass_transform

R = TypeVar("R")


def _init(fields: tuple[str, ...], defaults: dict[str, Any], frozen: bool) -> Any:
    """An ``__init__`` that sets ``fields`` (through ``object.__setattr__`` when frozen)."""
    params, lines, scope = [], [], {"_set": object.__setattr__, "_MISSING": MISSING}
    for name in fields:
        value = defaults.get(name, MISSING)
        if isinstance(value, Field):
            scope[f"_{name}_factory"] = value.default_factory
            params.append(f"{name}=_MISSING")
            value = f"_{name}_factory() if {name} is _MISSING else {name}"
        else:
            if value is not MISSING:
                scope[f"_{name}_default"] = value
            params.append(name if value is MISSING else f"{name}=_{name}_default")
            value = name
        lines.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(lines)
    exec(source, scope)  # the source is made of the class's own field names
    return scope["__init__"]


def _first_init(cls: StructType, frozen: bool) -> Any:
    """An ``__init__`` that compiles the class's own (:func:`_init`) when the first instance
    is made, and hands over to it: most struct classes a check imports make none."""

    def __init__(self: Struct, *args: Any, **kwargs: Any) -> None:
        init = _init(cls.__struct_fields__, cls.__struct_defaults__, frozen)
        type.__setattr__(cls, "__init__", init)
        init(self, *args, **kwargs)

    return __init__


def _values(struct: Struct) -> tuple[Any, ...]:
    return tuple(getattr(struct, f) for f in type(struct).__struct_fields__)


def _eq(self: Struct, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    assert isinstance(other, Struct)
    return _values(self) == _values(other)


def _hash(self: Struct) -> int:
    return hash(_values(self))


def _repr(self: Struct) -> str:
    shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in type(self).__struct_fields__)
    return f"{type(self).__qualname__}({shown})"


def _refuse_set(self: Struct, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Struct, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _reduce(self: Struct) -> tuple[type, tuple[Any, ...]]:  # copy and pickle: make it anew
    return type(self), _values(self)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class StructType(type):
    """Makes a struct class from its annotated fields: ``__init__``, ``__match_args__`` and,
    for a frozen one, ``__slots__``; the other methods come from this module."""

    __struct_fields__: tuple[str, ...]  # every field, the bases' first
    __struct_defaults__: dict[str, Any]  # field -> its default (a value, or a Field)

    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        frozen: bool = True,
        eq: bool = True,
    ) -> StructType:
        own = list(namespace.get("__annotations__", {}))
        base = bases[0] if bases else object
        fields = getattr(base, "__struct_fields__", ()) + tuple(own)
        defaults = {
            **getattr(base, "__struct_defaults__", {}),
            **{f: namespace.pop(f) for f in own if f in namespace},
        }
        namespace.update(
            __struct_fields__=fields, __struct_defaults__=defaults, __match_args__=fields
        )
        if frozen:
            namespace.update(
                __slots__=tuple(own),
                __setattr__=_refuse_set,
                __delattr__=_refuse_delete,
                __reduce__=_reduce,
            )
        if eq:
            namespace.update(__eq__=_eq, __hash__=_hash if frozen else None)
        namespace.setdefault("__repr__", _repr)
        cls = super().__new__(mcs, name, bases, namespace)
        if own and "__init__" not in namespace:  # a class's own is kept, as dataclass keeps it
            type.__setattr__(cls, "__init__", _first_init(cls, frozen))
        return cls


class Struct(metaclass=StructType, frozen=False, eq=False):
    """The base of every struct (see the module's docstring): no methods of a frozen one,
    which a mutable struct would inherit, and no ``__dict__``, which a frozen one would."""

    __slots__ = ()


def replace(record: R, /, **changes: Any) -> R:
    """A copy of a struct with the fields ``changes`` names set anew (the others shared), or
    :func:`dataclasses.replace`'s copy of a dataclass: a caller needs not know which it has."""
    if not isinstance(record, Struct):
        return dataclasses.replace(record, **changes)  # type: ignore[type-var]
    cls = type(record)
    values = [changes.pop(f) if f in changes else getattr(record, f) for f in cls.__struct_fields__]
    if changes:
        raise TypeError(f"{cls.__name__} has no field {next(iter(changes))!r}")
    return cls(*values)

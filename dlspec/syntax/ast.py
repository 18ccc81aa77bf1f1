"""The typed syntax tree of a spec: what the user wrote, each node with its source span.

Nothing here is checked beyond syntax: names are resolved, arguments validated (with pydantic,
against each layer kind's schema) and shapes inferred by :mod:`dlspec.analysis`. The nodes are
frozen records rather than pydantic models: the parser builds them from a tree the grammar
has already checked, so validating them again would buy nothing and cost start-up time, which
`dlspec check` is measured on. For the same reason they are not dataclasses either: a frozen,
slotted dataclass compiles six methods for each class when the module is imported (9 ms of a
check's start-up for these 28 classes); :class:`_NodeType` compiles one, ``__init__``, and the
others are written once, in :class:`_Record`, for every node.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, FrozenInstanceError, field
from typing import Any

from typing_extensions import dataclass_transform

from dlspec.diagnostics import Span


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class _NodeType(type):
    """Makes a class of frozen records from its annotated fields, as
    ``@dataclass(frozen=True, slots=True)`` does: slots, ``__init__`` (the fields of the bases
    first; a default is a value or a ``field(default_factory=...)``) and ``__match_args__``;
    equality, hash, repr and immutability come from :class:`_Record`."""

    _fields: tuple[str, ...]  # every field, the bases' first
    _defaults: dict[str, Any]  # field -> its default (a value, or a Field with a factory)

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _NodeType:
        own = list(namespace.get("__annotations__", {}))
        base = bases[0] if bases else object
        fields = getattr(base, "_fields", ()) + tuple(own)
        defaults = {
            **getattr(base, "_defaults", {}),
            **{f: namespace.pop(f) for f in own if f in namespace},
        }
        namespace.update(
            __slots__=tuple(own), _fields=fields, _defaults=defaults, __match_args__=fields
        )
        if own:
            namespace["__init__"] = _init(fields, defaults)
        return super().__new__(mcs, name, bases, namespace)


def _init(fields: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    """An ``__init__`` that sets ``fields`` (frozen, so through ``object.__setattr__``)."""
    params, lines, scope = [], [], {"_set": object.__setattr__, "_MISSING": MISSING}
    for name in fields:
        value = defaults.get(name, MISSING)
        if isinstance(value, Field):
            scope[f"_{name}_factory"] = value.default_factory
            params.append(f"{name}=_MISSING")
            lines.append(
                f"_set(self, {name!r}, _{name}_factory() if {name} is _MISSING else {name})"
            )
            continue
        if value is not MISSING:
            scope[f"_{name}_default"] = value
            params.append(f"{name}=_{name}_default")
        else:
            params.append(name)
        lines.append(f"_set(self, {name!r}, {name})")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(lines)
    exec(source, scope)  # the source is made of the class's own field names
    return scope["__init__"]


class _Record(metaclass=_NodeType):
    """What every node does with its fields: compare, hash, print, and refuse to change."""

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in type(self)._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in type(self)._fields)
        return f"{type(self).__qualname__}({shown})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # copy and pickle: make it anew
        return type(self), self._values()


class Node(_Record):
    span: Span


class Ident(Node):
    name: str


# expressions -------------------------------------------------------------------------------


class Num(Node):
    value: int | float
    text: str


class Ref(Node):
    name: str


class Str(Node):
    value: str


class BinOp(Node):
    op: str  # +, -, *, //, /, %, **
    left: Expr
    right: Expr


class Neg(Node):
    operand: Expr


class Compare(Node):
    op: str  # ==, !=, <, <=, >, >=
    left: Expr
    right: Expr


class BoolOp(Node):
    op: str  # and, or, not (``right`` is None for not)
    left: Expr
    right: Expr | None


class ShapeRef(Node):
    """``input.shape[0]``: a dimension of a tensor of the scope (``attr`` must be shape)."""

    tensor: Ident
    attr: Ident
    index: Expr


class ListExpr(Node):
    items: list[Expr]


class CallExpr(Node):
    """A call used as a value, e.g. ``optimizer = Adam(lr=1e-3)`` in a train section."""

    name: Ident
    args: list[Arg]


Expr = Num | Ref | Str | BinOp | Neg | Compare | BoolOp | ShapeRef | ListExpr | CallExpr


class Arg(Node):
    name: Ident | None  # None for a positional argument
    value: Expr


# statements --------------------------------------------------------------------------------


class Call(Node):
    """A layer kind or block applied with arguments: ``Conv2d(32, kernel=3)``."""

    name: Ident
    args: list[Arg]


class Residual(Node):
    """``residual { body } [shortcut { body }]``: output = body(x) + shortcut(x)."""

    body: list[Statement]
    shortcut: list[Statement] | None


class Loop(Node):
    """``for i in range(n)`` after an operation: ``n`` copies, copy ``k`` evaluated with
    ``i = k`` (its arguments, and a residual's body, may read ``i``)."""

    index: Ident
    count: Expr


class LayerStmt(Node):
    names: list[Ident]  # the tensors it writes (``q, k, v = Chunk(3)``); [] when unnamed
    op: Call | Residual
    repeat: Expr | Loop | None  # ``Block(64) * 3``, ``Block(2 ** i) for i in range(3)``
    sources: list[Ident]  # ``<- a, b``; empty: the previous statement's output


class Check(Node):
    quantity: Ident  # params, trainable_params, shape, macs, train_memory
    op: str  # ==, !=, <, <=, >, >=
    value: Expr
    args: list[Arg] = field(default_factory=list)  # train_memory(batch=32)


class ExpectStmt(Node):
    """``expect ...`` checks the statement before it; ``expect total ...`` the whole model."""

    total: bool
    checks: list[Check]


class InputDecl(Node):
    name: Ident
    dtype: Ident
    dims: list[Expr]


class OutputDecl(Node):
    names: list[Ident]


class Setting(Node):
    name: Ident
    value: Expr


class TrainSection(Node):
    settings: list[Setting]


class IfStmt(Node):
    """``if cond { ... } else { ... }``, chosen when the spec is analyzed."""

    condition: Expr
    body: list[Statement]
    orelse: list[Statement]


class LetStmt(Node):
    """``let hh = input.shape[0] // 2``: a name for a value, read by later statements of the
    body (and of the bodies inside it)."""

    name: Ident
    value: Expr


Statement = InputDecl | OutputDecl | LayerStmt | ExpectStmt | TrainSection | IfStmt | LetStmt


class Param(Node):
    name: Ident
    type: Ident
    default: Expr | None


class Definition(Node):
    keyword: str  # "model" or "block"
    name: Ident
    params: list[Param]
    body: list[Statement]
    inputs: list[Ident]  # a block's named inputs (`<- tgt, memory`); [] = one, `input`


class Document(_Record):
    """A whole spec file: its model and block definitions."""

    definitions: list[Definition]

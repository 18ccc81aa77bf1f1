"""The typed syntax tree of a spec: what the user wrote, each node with its source span.

Nothing here is checked beyond syntax: names are resolved, arguments validated (with pydantic,
against each layer kind's schema) and shapes inferred by :mod:`dlspec.analysis`. The nodes are
frozen records rather than pydantic models: the parser builds them from a tree the grammar
has already checked, so validating them again would buy nothing and cost start-up time, which
`dlspec check` is measured on. For the same reason they are not dataclasses either, but
:class:`~dlspec.structs.Struct` records (frozen and slotted, as the dataclasses they replace):
``@dataclass`` would compile six methods for each of these 28 classes when the module is
imported.
"""

from __future__ import annotations

from dataclasses import field

from dlspec.diagnostics import Span
from dlspec.structs import Struct


class Node(Struct):
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


class Document(Struct):
    """A whole spec file: its model and block definitions."""

    definitions: list[Definition]

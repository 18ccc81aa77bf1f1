"""The typed syntax tree of a spec: what the user wrote, each node with its source span.

Nothing here is checked beyond syntax: names are resolved, arguments validated and shapes
inferred by :mod:`dlspec.analysis`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from dlspec.diagnostics import Span


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)
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
    op: Literal["+", "-", "*", "//", "/", "%"]
    left: Expr
    right: Expr


class Neg(Node):
    operand: Expr


class ListExpr(Node):
    items: list[Expr]


class CallExpr(Node):
    """A call used as a value, e.g. ``optimizer = Adam(lr=1e-3)`` in a train section."""

    name: Ident
    args: list[Arg]


Expr = Num | Ref | Str | BinOp | Neg | ListExpr | CallExpr


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


class LayerStmt(Node):
    name: Ident | None
    op: Call | Residual
    repeat: Expr | None  # ``Block(64) * 3``
    sources: list[Ident]  # ``<- a, b``; empty: the previous statement's output


class Check(Node):
    quantity: Ident  # params, trainable_params, shape, macs
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: Expr


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


Statement = InputDecl | OutputDecl | LayerStmt | ExpectStmt | TrainSection


class Param(Node):
    name: Ident
    type: Ident
    default: Expr | None


class Definition(Node):
    keyword: Literal["model", "block"]
    name: Ident
    params: list[Param]
    body: list[Statement]


class Spec(BaseModel):
    definitions: list[Definition]


for _model in (BinOp, Neg, ListExpr, CallExpr, Arg, Call, Residual, LayerStmt, Check):
    _model.model_rebuild()

"""Evaluating the integer/float expressions of a spec (``4 * d``, ``64*24*24``, ``T``)."""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dlspec.diagnostics import fail
from dlspec.layers.symbolic import Poly, SymbolicError
from dlspec.syntax import ast

CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "True": True,
    "False": False,
    "none": None,
    "None": None,
}

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "/": operator.truediv,
    "%": operator.mod,
}


def did_you_mean(name: str, candidates: Iterable[str]) -> list[str]:
    """A note suggesting the closest known name, matching case-insensitively first."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered:
        return [f"did you mean {lowered[name.lower()]}?"]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    return [f"did you mean {' or '.join(close)}?"] if close else []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Poly)) and not isinstance(value, bool)


def evaluate(expr: ast.Expr, env: Mapping[str, Any]) -> Any:
    """The value of an expression: int, float, str, bool, None, list or a symbolic ``Poly``."""
    if isinstance(expr, (ast.Num, ast.Str)):
        return expr.value
    if isinstance(expr, ast.Ref):
        if expr.name in env:
            return env[expr.name]
        if expr.name in CONSTANTS:
            return CONSTANTS[expr.name]
        raise fail(
            "E208",
            f"unknown name {expr.name!r}",
            expr.span,
            did_you_mean(expr.name, env) or ["names here are the parameters in scope"],
        )
    if isinstance(expr, ast.ListExpr):
        return [evaluate(item, env) for item in expr.items]
    if isinstance(expr, ast.Neg):
        value = evaluate(expr.operand, env)
        if not _is_number(value):
            raise fail("E212", f"cannot negate {value!r}", expr.span)
        return -value
    if isinstance(expr, ast.BinOp):
        return _binop(expr, evaluate(expr.left, env), evaluate(expr.right, env))
    raise fail("E212", f"a call ({expr.name.name}(...)) is not a value here", expr.span)


def _binop(expr: ast.BinOp, left: Any, right: Any) -> Any:
    if not (_is_number(left) and _is_number(right)):
        raise fail("E212", f"cannot compute {left!r} {expr.op} {right!r}", expr.span)
    if expr.op in ("//", "/", "%") and isinstance(right, (int, float)) and right == 0:
        raise fail("E212", "division by zero", expr.span)
    if expr.op == "/" and (isinstance(left, Poly) or isinstance(right, Poly)):
        raise fail("E212", "use // to divide a symbolic dimension", expr.span)
    try:
        return _OPS[expr.op](left, right)
    except (SymbolicError, TypeError) as exc:
        raise fail("E212", f"cannot compute {left} {expr.op} {right}: {exc}", expr.span) from exc


def expect_int(expr: ast.Expr, env: Mapping[str, Any], what: str, minimum: int = 1) -> int:
    value = evaluate(expr, env)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise fail("E204", f"{what} must be a whole number >= {minimum}, got {value!r}", expr.span)
    return value

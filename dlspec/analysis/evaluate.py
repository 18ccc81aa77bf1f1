"""Evaluating the expressions of a spec (``4 * d``, ``64*24*24``, ``T``, ``input.shape[0]``,
``stride == 1 and c_in == c_out``). Tensors of the scope are in the environment as their
:class:`TensorType`, readable through ``.shape[i]`` only."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dlspec.diagnostics import fail
from dlspec.layers import provenance
from dlspec.layers.base import TensorType
from dlspec.layers.provenance import Tree
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

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "/": operator.truediv,
    "%": operator.mod,
    "**": operator.pow,
}
# ``**`` refuses results beyond this many bits (a 64-bit size and some headroom for a
# product of sizes) before computing them, and symbolic powers beyond this exponent
MAX_POWER_BITS = 128
MAX_EXPONENT = 64


def did_you_mean(name: str, candidates: Iterable[str]) -> list[str]:
    """A note suggesting the closest known name, matching case-insensitively first."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered:
        return [f"did you mean {lowered[name.lower()]}?"]
    import difflib  # only for a name that is wrong: a check of a good spec never needs it

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
            if isinstance(env[expr.name], TensorType):
                raise fail(
                    "E212",
                    f"{expr.name} is a tensor; read its sizes as {expr.name}.shape[i]",
                    expr.span,
                )
            return env[expr.name]
        if expr.name in CONSTANTS:
            return CONSTANTS[expr.name]
        indexes = getattr(env, "indexes", {})
        loop = indexes.get(expr.name)
        if loop is not None and expr.name not in env:
            raise fail(
                "E208",
                f"{expr.name} is the index of the repetition at line {loop.line}; it exists "
                "only in that statement",
                expr.span,
                [f"`{expr.name}` counts the copies of `... for {expr.name} in range(n)`"],
            )
        live = getattr(env, "looping", [])  # the indexes of repetitions being analyzed
        raise fail(
            "E208",
            f"unknown name {expr.name!r}",
            expr.span,
            did_you_mean(expr.name, env)
            or ([f"the loop index here is {live[-1]}"] if live else [])
            or ["names here are the parameters in scope"],
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
    if isinstance(expr, ast.Compare):
        return _compare(expr, evaluate(expr.left, env), evaluate(expr.right, env))
    if isinstance(expr, ast.BoolOp):
        return _boolean(expr, env)
    if isinstance(expr, ast.ShapeRef):
        return _shape_ref(expr, env)
    raise fail("E212", f"a call ({expr.name.name}(...)) is not a value here", expr.span)


def _compare(expr: ast.Compare, left: Any, right: Any) -> bool:
    if expr.op not in ("==", "!=") and not (_is_number(left) and _is_number(right)):
        raise fail("E212", f"cannot compare {left!r} {expr.op} {right!r}", expr.span)
    try:
        return _COMPARE[expr.op](left, right)
    except SymbolicError as exc:
        raise fail("E212", f"{left} {expr.op} {right}: {exc}", expr.span) from exc


def truth(expr: ast.Expr, env: Mapping[str, Any]) -> bool:
    """The value of a condition, which must be true or false (not a number: write ``!= 0``)."""
    value = evaluate(expr, env)
    if not isinstance(value, bool):
        raise fail("E212", f"a condition must be true or false, got {value!r}", expr.span)
    return value


def _boolean(expr: ast.BoolOp, env: Mapping[str, Any]) -> bool:
    left = truth(expr.left, env)
    if expr.op == "not":
        return not left
    assert expr.right is not None
    if expr.op == "and":
        return left and truth(expr.right, env)
    return left or truth(expr.right, env)


def _shape_ref(expr: ast.ShapeRef, env: Mapping[str, Any]) -> Any:
    """``x.shape[i]``: dimension i (per sample; negative from the end) of the tensor x."""
    name = expr.tensor.name
    tensor = env.get(name)
    if not isinstance(tensor, TensorType):
        tensors = [k for k, v in env.items() if isinstance(v, TensorType)]
        raise fail(
            "E208",
            f"no tensor named {name!r} here",
            expr.tensor.span,
            did_you_mean(name, tensors) or ["tensors here: " + (", ".join(tensors) or "none")],
        )
    if expr.attr.name != "shape":
        raise fail("E212", f"a tensor has .shape, not .{expr.attr.name}", expr.attr.span)
    index = evaluate(expr.index, env)
    rank = len(tensor.shape)
    if not isinstance(index, int) or isinstance(index, bool) or not -rank <= index < rank:
        raise fail(
            "E204",
            f"{name}.shape[{index}] is out of range: {name} is {tensor}, with dimensions "
            f"{-rank} to {rank - 1} (per sample)",
            expr.index.span,
        )
    return tensor.shape[index]


def _binop(expr: ast.BinOp, left: Any, right: Any) -> Any:
    if not (_is_number(left) and _is_number(right)):
        raise fail("E212", f"cannot compute {left!r} {expr.op} {right!r}", expr.span)
    if expr.op == "**":
        _check_power(expr, left, right)
    if expr.op in ("//", "/", "%") and isinstance(right, (int, float)) and right == 0:
        raise fail("E212", "division by zero", expr.span)
    if expr.op == "/" and (isinstance(left, Poly) or isinstance(right, Poly)):
        raise fail("E212", "use // to divide a symbolic dimension", expr.span)
    try:
        return _OPS[expr.op](left, right)
    except (SymbolicError, TypeError) as exc:
        raise fail("E212", f"cannot compute {left} {expr.op} {right}: {exc}", expr.span) from exc


def _check_power(expr: ast.BinOp, base: Any, exponent: Any) -> None:
    """Refuse a power that has no real value (``(-8) ** 0.5``), divides by zero, or would be
    too large to hold (``2 ** 10_000``: more bits than a 64-bit size, computed by estimate
    before Python spends time on it); a symbolic base takes a whole exponent >= 0."""
    if isinstance(exponent, Poly):
        raise fail("E212", f"the exponent {exponent} of ** must be a fixed number", expr.span)
    if isinstance(base, Poly):
        if not isinstance(exponent, int) or exponent < 0:
            raise fail(
                "E212",
                f"{base} ** {exponent}: a symbolic base takes a whole exponent >= 0",
                expr.span,
            )
        if exponent > MAX_EXPONENT:
            raise fail("E212", f"{base} ** {exponent}: the exponent is too large", expr.span)
        return
    if base == 0 and exponent < 0:
        raise fail("E212", "division by zero (0 to a negative power)", expr.span)
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise fail("E212", f"({base}) ** {exponent} has no real value", expr.span)
    magnitude = abs(float(base))
    if magnitude > 0 and float(exponent) * math.log2(magnitude) > MAX_POWER_BITS:
        raise fail(
            "E212",
            f"{base} ** {exponent} is larger than 2^{MAX_POWER_BITS}, the largest value a "
            "spec computes with",
            expr.span,
        )


def expect_int(expr: ast.Expr, env: Mapping[str, Any], what: str, minimum: int = 1) -> int:
    value = evaluate(expr, env)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise fail("E204", f"{what} must be a whole number >= {minimum}, got {value!r}", expr.span)
    return value


def trees(
    expr: ast.Expr, env: Mapping[str, Any], named: Mapping[str, tuple[Tree, Tree]]
) -> tuple[Tree, Tree]:
    """The local and root expressions (:mod:`provenance`) of a spec expression that
    :func:`evaluate` accepts: what a condition tests, in the names of the class and of the
    model. ``named`` gives them for parameters whose values cannot carry them (bools,
    strings)."""
    if isinstance(expr, ast.Ref) and expr.name in named:
        return named[expr.name]
    if isinstance(expr, ast.BinOp | ast.Compare | ast.BoolOp) and expr.right is not None:
        left, right = trees(expr.left, env, named), trees(expr.right, env, named)
        return tuple(  # type: ignore[return-value]
            provenance.combine(expr.op, a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(expr, ast.Neg | ast.BoolOp):
        head = "neg" if isinstance(expr, ast.Neg) else "not"
        operand = trees(expr.operand if isinstance(expr, ast.Neg) else expr.left, env, named)
        return (head, operand[0]), (head, operand[1])
    value = evaluate(expr, env)
    return provenance.local_of(value), provenance.root_of(value)

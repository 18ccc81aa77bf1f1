"""Numbers that remember their expressions (dlspec.layers.provenance): the arithmetic,
the simplification and the Python they print as, against plain evaluation."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dlspec.layers import provenance
from dlspec.layers.provenance import Sym, Tree

NAMES = ("a", "b", "c")


@st.composite
def trees(draw: st.DrawFn, depth: int = 3) -> Tree:
    if depth == 0 or draw(st.booleans()):
        if draw(st.booleans()):
            return provenance.name(draw(st.sampled_from(NAMES)))
        return provenance.const(draw(st.integers(-5, 9)))
    op = draw(st.sampled_from(["+", "-", "*", "//", "neg"]))
    if op == "neg":
        return ("neg", draw(trees(depth - 1)))
    right = draw(trees(depth - 1))
    if op == "//":
        right = provenance.const(draw(st.integers(1, 5)))
    return (op, draw(trees(depth - 1)), right)


def _value(tree: Tree, values: dict[str, int]) -> Any:
    return eval(provenance.python(tree), {}, dict(values))


@settings(deadline=None)
@given(trees(), st.fixed_dictionaries({n: st.integers(-20, 20) for n in NAMES}))
def test_simplified_and_printed_expressions_compute_the_same(
    tree: Tree, values: dict[str, int]
) -> None:
    assert _value(provenance.simplify(tree), values) == _value(tree, values)


@settings(deadline=None)
@given(st.integers(1, 50), st.integers(1, 9), st.integers(1, 9))
def test_arithmetic_keeps_value_and_expression(a: int, b: int, k: int) -> None:
    x = provenance.parameter(a, "a")
    y = provenance.fresh(b, "b")  # a callee's name, its root a constant
    z = (x * k + y - 3) // 2 + 1
    assert isinstance(z, Sym) and z == (a * k + b - 3) // 2 + 1
    assert _value(z.local, {"a": a, "b": b}) == z
    assert provenance.names(z.root) == {"a"}
    assert str(z) == str(int(z)) and f"{z:,}" == f"{int(z):,}"
    moved = provenance.rebase(z, {"b": provenance.name("c")})
    assert provenance.names(moved.local) == {"a", "c"} and moved == z


def test_floor_division_identities() -> None:
    h = provenance.name("h")
    halved = ("+", ("//", ("-", h, provenance.const(2)), provenance.const(2)), provenance.const(1))
    assert provenance.python(provenance.simplify(halved)) == "h // 2"
    twice = ("//", ("//", h, provenance.const(2)), provenance.const(4))
    assert provenance.python(provenance.simplify(twice)) == "h // 8"
    assert provenance.python(("-", h, ("-", h, h))) == "h - (h - h)"


def test_printing_writes_the_expression() -> None:
    x = provenance.parameter(8, "heads") // 2
    assert f"view({x})" == "view(4)"
    with provenance.printing(provenance.python):
        assert f"view({x})" == "view(heads // 2)" and str([x]) == "[heads // 2]"

"""Where a number came from: values that remember the expression that computed them.

The analyzer elaborates one instance of a spec (numbers), but the generated PyTorch classes
are functions of their arguments. So every number derived from a parameter is a :class:`Sym`
(an ``int``) or :class:`SymFloat` (a ``float``) carrying two expressions besides its value:

* ``local``: over the names of the class being analyzed (a block's parameters and the sizes
  of its input tensors, ``in_channels``...; the model's parameters), from which the code
  generator writes ``nn.Linear(4 * d, d)``;
* ``root``: over the model's parameters alone, which tells whether the number can change
  when the user builds the model with other arguments (a repetition count, a condition).

Layer rules see ordinary ints (a ``Sym`` compares, hashes and prints as its value), and their
arithmetic keeps the expressions, the way torch.fx's proxies record a program by running it.
At a block boundary the callee's names are fresh (:func:`fresh`) and the outputs are mapped
back into the caller's names (:func:`rebase`). Expressions are tuples: ``("n", name)``,
``("c", value)``, ``(op, left, right)`` for a binary operator, ``("neg", x)``, ``("not", x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

Tree = tuple[Any, ...]

# Python's precedence, lowest first; an operand of lower precedence than its operator is
# parenthesised
_PRECEDENCE = {
    "or": 1,
    "and": 2,
    "not": 3,
    "==": 4,
    "!=": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "//": 6,
    "%": 6,
    "neg": 7,
    "**": 8,
}


def const(value: Any) -> Tree:
    return ("c", value)


def name(text: str) -> Tree:
    return ("n", text)


def combine(op: str, left: Tree, right: Tree) -> Tree:
    """``left op right``, with the identities that keep generated code readable applied
    (``x + 0``, ``x * 1``, ``x // 1``) and constant operands folded."""
    lc, rc = left[0] == "c", right[0] == "c"
    if lc and rc and op in _FOLD:
        return const(_FOLD[op](left[1], right[1]))
    if rc and ((op in ("+", "-") and right[1] == 0) or (op in ("*", "//") and right[1] == 1)):
        return left
    if lc and ((op == "+" and left[1] == 0) or (op == "*" and left[1] == 1)):
        return right
    return (op, left, right)


_FOLD: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "**": lambda a, b: a**b,
}


def local_of(value: Any) -> Tree:
    return value.local if isinstance(value, Sym | SymFloat) else const(value)


def root_of(value: Any) -> Tree:
    return value.root if isinstance(value, Sym | SymFloat) else const(value)


def carries(value: Any) -> bool:
    """Whether ``value`` (or an item of it) remembers an expression."""
    if isinstance(value, Sym | SymFloat):
        return True
    return isinstance(value, tuple | list) and any(carries(v) for v in value)


def _lift(op: str, a: Any, b: Any, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    local = combine(op, local_of(a), local_of(b))
    root = combine(op, root_of(a), root_of(b))
    return Sym(value, local, root) if isinstance(value, int) else SymFloat(value, local, root)


def _plain(value: Any) -> Any:
    if isinstance(value, Sym):
        return int(value)
    if isinstance(value, SymFloat):
        return float(value)
    return value


def _binary(op: str, compute: Callable[[Any, Any], Any]) -> tuple[Callable, Callable]:
    def forward(self: Any, other: Any) -> Any:
        if isinstance(other, bool) or not isinstance(other, int | float):
            return NotImplemented
        return _lift(op, self, other, compute(_plain(self), _plain(other)))

    def reflected(self: Any, other: Any) -> Any:
        if isinstance(other, bool) or not isinstance(other, int | float):
            return NotImplemented
        return _lift(op, other, self, compute(_plain(other), _plain(self)))

    return forward, reflected


class _Arithmetic:
    """The operators of :class:`Sym` and :class:`SymFloat`: each computes the plain value
    and the two expressions."""

    local: Tree
    root: Tree

    __add__, __radd__ = _binary("+", lambda a, b: a + b)
    __sub__, __rsub__ = _binary("-", lambda a, b: a - b)
    __mul__, __rmul__ = _binary("*", lambda a, b: a * b)
    __floordiv__, __rfloordiv__ = _binary("//", lambda a, b: a // b)
    __truediv__, __rtruediv__ = _binary("/", lambda a, b: a / b)
    __mod__, __rmod__ = _binary("%", lambda a, b: a % b)
    __pow__, __rpow__ = _binary("**", lambda a, b: a**b)

    def __neg__(self) -> Any:
        value = -_plain(self)
        local, root = ("neg", self.local), ("neg", self.root)
        return Sym(value, local, root) if isinstance(value, int) else SymFloat(value, local, root)

    def __pos__(self) -> Any:
        return self


# How a number prints while code is generated (:func:`printing`): the forward templates of
# layer kinds are text, and a size in them must be the expression, not the value
_PRINTING: list[Callable[[Tree], str]] = []


@contextmanager
def printing(render: Callable[[Tree], str]) -> Iterator[None]:
    """While active, a :class:`Sym` or :class:`SymFloat` prints (``str``, ``repr``, an
    f-string) as ``render`` writes its local expression: layer kinds write sizes into the
    text of generated code with ordinary formatting, and get the expression."""
    _PRINTING.append(render)
    try:
        yield
    finally:
        _PRINTING.pop()


class _Printing:
    local: Tree

    def __str__(self) -> str:
        if _PRINTING:
            return _PRINTING[-1](self.local)
        return super().__repr__()

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        if _PRINTING and not spec:
            return _PRINTING[-1](self.local)
        return super().__format__(spec)


class Sym(_Printing, _Arithmetic, int):
    """An int that remembers how it was computed (``local`` and ``root`` expressions)."""

    def __new__(cls, value: int, local: Tree, root: Tree) -> Sym:
        obj = int.__new__(cls, value)
        obj.local, obj.root = local, root
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sym, (int(self), self.local, self.root))

    def __copy__(self) -> Sym:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Sym:
        return self

    __hash__ = int.__hash__


class SymFloat(_Printing, _Arithmetic, float):
    """A float that remembers how it was computed."""

    def __new__(cls, value: float, local: Tree, root: Tree) -> SymFloat:
        obj = float.__new__(cls, value)
        obj.local, obj.root = local, root
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (SymFloat, (float(self), self.local, self.root))

    def __copy__(self) -> SymFloat:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SymFloat:
        return self

    __hash__ = float.__hash__


def fresh(value: Any, local: str) -> Any:
    """``value`` under a new local name (a callee's parameter), keeping where it came from in
    the model (its root). Values that cannot carry a name (bools, strings) stay as they are."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    cls = Sym if isinstance(value, int) else SymFloat
    return cls(_plain(value), name(local), root_of(value))


def plain(value: Any) -> Any:
    """``value`` without its expressions (lists and tuples item by item)."""
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return _plain(value)


def substitute(tree: Tree, mapping: Mapping[str, Tree]) -> Tree:
    """``tree`` with each name that ``mapping`` has replaced by its expression."""
    head = tree[0]
    if head == "n":
        return mapping.get(tree[1], tree)
    if head == "c":
        return tree
    if head in ("neg", "not"):
        return (head, substitute(tree[1], mapping))
    return combine(head, substitute(tree[1], mapping), substitute(tree[2], mapping))


def rebase(value: Any, mapping: Mapping[str, Tree]) -> Any:
    """``value`` with its local expression in the caller's names (a block's output seen from
    the statement that called it)."""
    if isinstance(value, Sym):
        return Sym(int(value), substitute(value.local, mapping), value.root)
    if isinstance(value, SymFloat):
        return SymFloat(float(value), substitute(value.local, mapping), value.root)
    if isinstance(value, list | tuple):
        return type(value)(rebase(v, mapping) for v in value)
    return value


def simplified(value: Any) -> Any:
    """``value`` with its expressions simplified (:func:`simplify`): what a loop hands from
    copy to copy, whose expressions would otherwise grow with every copy."""
    if isinstance(value, Sym):
        return Sym(int(value), simplify(value.local), simplify(value.root))
    if isinstance(value, SymFloat):
        return SymFloat(float(value), simplify(value.local), simplify(value.root))
    return value


def names(tree: Tree) -> set[str]:
    """The names an expression reads."""
    head = tree[0]
    if head == "n":
        return {tree[1]}
    if head == "c":
        return set()
    return set().union(*(names(t) for t in tree[1:]))


def python(tree: Tree, context: int = 0, literal: Callable[[Any], str] = repr) -> str:
    """An expression as Python source, parenthesised only where Python needs it; constants
    are written by ``literal``."""
    head = tree[0]
    if head == "n":
        return str(tree[1])
    if head == "c":
        text = literal(tree[1])
        return f"({text})" if text.startswith("-") and context >= _PRECEDENCE["neg"] else text
    precedence = _PRECEDENCE[head]
    if head in ("neg", "not"):
        operand = python(tree[1], precedence, literal)
        text = f"-{operand}" if head == "neg" else f"not {operand}"
    else:
        # left-associative operators: a right operand of the same precedence needs brackets
        # (``a - (b - c)``); ``**`` is right-associative
        right_side = precedence if head == "**" else precedence + 1
        left_side = precedence + 1 if head == "**" else precedence
        left = python(tree[1], left_side, literal)
        right = python(tree[2], right_side, literal)
        text = f"{left} {head} {right}"
    return f"({text})" if precedence < context else text


def parameter(value: Any, text: str) -> Any:
    """A model parameter's value: named ``text`` both locally and in the model."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    cls = Sym if isinstance(value, int) else SymFloat
    return cls(_plain(value), name(text), name(text))


def as_float(value: Any) -> Any:
    """``float(value)``, keeping its expressions."""
    if isinstance(value, Sym):
        return SymFloat(float(value), value.local, value.root)
    return value if isinstance(value, float) else float(value)


def size_names(inputs: list[tuple[str, int]], taken: set[str]) -> list[list[str]]:
    """The local names of the sizes of a body's input tensors, given as (name, rank):
    ``in_channels``, ``in_height``, ``in_width`` for an image ``input``, ``in_length`` and
    ``in_features`` for a sequence, ``in_dim2``... for other ranks; a named input ``skip``
    gives ``skip_channels``.
    Names in ``taken`` (the body's parameters) are avoided."""
    out = []
    for tensor, rank in inputs:
        prefix = "in" if tensor == "input" else tensor
        names_ = []
        for dim in range(rank):
            if rank == 3:  # an image: (C, H, W)
                text = f"{prefix}_{('channels', 'height', 'width')[dim]}"
            elif rank <= 2 and dim == rank - 1:
                text = f"{prefix}_features"
            elif rank == 2:  # a sequence: (T, D)
                text = f"{prefix}_length"
            elif dim == 0:
                text = f"{prefix}_channels"
            else:
                text = f"{prefix}_dim{dim}"
            while text in taken:
                text += "_"
            taken.add(text)
            names_.append(text)
        out.append(names_)
    return out


def simplify(tree: Tree) -> Tree:
    """``tree`` with its sums and products collected (``in_height + 2 - 3 + 1`` is
    ``in_height``) and exact floor-division identities applied (``(h - 2) // 2 + 1`` is
    ``h // 2``), for code a person reads. Comparisons and logic keep their shape."""
    head = tree[0]
    if head in ("n", "c"):
        return tree
    if head in ("+", "-", "*", "//", "neg"):
        # floor division's exact part taken rounded down (``(h + 1) // 2``) or toward zero
        # (``(k - 1) // 2``): whichever writes shorter
        forms = []
        for toward_zero in (False, True):
            poly = _as_poly(tree, {}, toward_zero)
            if poly is not None:
                forms.append(_from_poly(poly[0], poly[1]))
        if forms:
            return min(forms, key=lambda form: len(python(form)))
    if head in ("neg", "not"):
        return (head, simplify(tree[1]))
    return (head, simplify(tree[1]), simplify(tree[2]))


def _as_poly(tree: Tree, atoms: dict[str, Tree], toward_zero: bool) -> tuple[Any, dict] | None:
    """``tree`` as a polynomial over names and opaque parts (floor divisions; ``%``, ``**``
    and ``/``, equal ones one atom), returned with the atoms' trees; None where it is not a
    number (a comparison, a float constant)."""
    from dlspec.layers.symbolic import Poly

    head = tree[0]
    if head in ("%", "**", "/"):  # opaque, simplified inside: ``w + 2 ** i - 2 ** i`` is w
        part = (head, simplify(tree[1]), simplify(tree[2]))
        key = next((k for k, v in atoms.items() if v == part), f"\0{len(atoms)}")
        atoms[key] = part
        return Poly.symbol(key), atoms
    if head == "n":
        return Poly.symbol(tree[1]), atoms
    if head == "c":
        value = tree[1]
        return (value, atoms) if isinstance(value, int) and not isinstance(value, bool) else None
    if head == "neg":
        inner = _as_poly(tree[1], atoms, toward_zero)
        return None if inner is None else (-inner[0], atoms)
    if head not in ("+", "-", "*", "//"):
        return None
    left = _as_poly(tree[1], atoms, toward_zero)
    right = _as_poly(tree[2], atoms, toward_zero)
    if left is None or right is None:
        return None
    a, b = left[0], right[0]
    if head == "+":
        return a + b, atoms
    if head == "-":
        return a - b, atoms
    if head == "*":
        return a * b, atoms
    if isinstance(b, Poly):  # sizes are positive: (3 * dim) // dim is 3
        quotient = _divided(a, b)
        return None if quotient is None else (quotient, atoms)
    if b <= 0:
        return None
    if isinstance(a, int):
        return a // b, atoms
    # the part b divides exactly: its coefficients rounded down, or toward 0
    exact = {
        m: b * (abs(c) // b) * (1 if c > 0 else -1) if toward_zero else c - c % b
        for m, c in a.terms.items()
    }
    rest = a - Poly.make(exact)
    whole = Poly.make({m: c // b for m, c in exact.items()})
    if isinstance(rest, int):
        return whole + rest // b, atoms
    key = f"\0{len(atoms)}"
    numerator = _from_poly(rest, atoms)
    if numerator[0] == "//":  # (x // a) // b is x // (a * b)
        numerator, b = numerator[1], numerator[2][1] * b
    atoms[key] = ("//", numerator, const(b))
    return whole + Poly.symbol(key), atoms


def _divided(a: Any, b: Any) -> Any:
    """``a / b`` where ``b`` is one term that divides every term of ``a`` exactly (then floor
    division is exact), else None."""
    from dlspec.layers.symbolic import Poly

    if len(b.terms) != 1:
        return None
    ((divisor, scale),) = b.terms.items()
    powers = dict(divisor)
    terms = a.terms if isinstance(a, Poly) else {(): a}
    out = {}
    for mono, coeff in terms.items():
        have = dict(mono)
        if coeff % scale or any(have.get(sym, 0) < power for sym, power in powers.items()):
            return None
        left = {sym: power - powers.get(sym, 0) for sym, power in have.items()}
        out[tuple(sorted((sym, power) for sym, power in left.items() if power))] = coeff // scale
    return Poly.make(out)


def _from_poly(value: Any, atoms: dict[str, Tree]) -> Tree:
    """A polynomial as a tree: its terms by falling degree, the constant last."""
    if isinstance(value, int):
        return const(value)
    terms = sorted(value.terms.items(), key=lambda t: (-sum(p for _, p in t[0]), t[0]))
    out: Tree | None = None
    for mono, coeff in terms:
        factors: list[Tree] = []
        for sym, power in mono:
            atom = atoms.get(sym, name(sym))
            factors += [atom] * power
        body: Tree | None = None
        for factor in factors:
            body = factor if body is None else ("*", body, factor)
        magnitude = abs(coeff)
        if body is None:
            body = const(magnitude)
        elif magnitude != 1:
            body = ("*", const(magnitude), body)
        if out is None:
            out = ("neg", body) if coeff < 0 else body
        else:
            out = ("-" if coeff < 0 else "+", out, body)
    assert out is not None
    return out

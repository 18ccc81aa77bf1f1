"""Integer polynomials over symbolic dimensions (``T``, ``S``...).

A tensor dimension is either a plain ``int`` or a :class:`Poly`. Layer shape rules are written
with ordinary arithmetic (``(h + 2 * p - k) // s + 1``) and work unchanged for both; MAC counts
become formulas such as ``2*T^2*512 + ...`` that are evaluated at the spec's bindings.
"""

from __future__ import annotations

from collections.abc import Mapping

Monomial = tuple[tuple[str, int], ...]  # ((symbol, power), ...) sorted by symbol; () is 1


class SymbolicError(ValueError):
    """An operation that has no exact polynomial result (e.g. ``T // 3``)."""


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    powers = dict(a)
    for sym, p in b:
        powers[sym] = powers.get(sym, 0) + p
    return tuple(sorted(powers.items()))


class Poly:
    """An immutable polynomial with integer coefficients; normalised so that a constant
    polynomial never escapes arithmetic (it is returned as an ``int``)."""

    __slots__ = ("terms",)
    terms: dict[Monomial, int]

    def __init__(self, terms: Mapping[Monomial, int]) -> None:
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def symbol(name: str) -> Poly:
        return Poly({((name, 1),): 1})

    @staticmethod
    def make(terms: Mapping[Monomial, int]) -> Dim:
        p = Poly(terms)
        if not p.terms:
            return 0
        if set(p.terms) == {()}:
            return p.terms[()]
        return p

    @property
    def symbols(self) -> set[str]:
        return {s for m in self.terms for s, _ in m}

    def value_at(self, bindings: Mapping[str, int]) -> int:
        total = 0
        for mono, coeff in self.terms.items():
            value = coeff
            for sym, power in mono:
                if sym not in bindings:
                    raise SymbolicError(f"no value for symbolic dimension {sym}")
                value *= bindings[sym] ** power
            total += value
        return total

    def degree(self, sym: str) -> int:
        return max((dict(m).get(sym, 0) for m in self.terms), default=0)

    # arithmetic -------------------------------------------------------------------------
    def __add__(self, other: Dim) -> Dim:
        terms = dict(self.terms)
        for m, c in as_poly(other).terms.items():
            terms[m] = terms.get(m, 0) + c
        return Poly.make(terms)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Poly.make({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: Dim) -> Dim:
        return self + (-other)

    def __rsub__(self, other: Dim) -> Dim:
        return (-self) + other

    def __mul__(self, other: Dim) -> Dim:
        terms: dict[Monomial, int] = {}
        for ma, ca in self.terms.items():
            for mb, cb in as_poly(other).terms.items():
                m = _mono_mul(ma, mb)
                terms[m] = terms.get(m, 0) + ca * cb
        return Poly.make(terms)

    __rmul__ = __mul__

    def __pow__(self, exponent: int) -> Dim:
        if not isinstance(exponent, int) or exponent < 0:
            raise SymbolicError(f"{self} ** {exponent} is not a polynomial")
        result: Dim = 1
        for _ in range(exponent):
            result = result * self
        return result

    def __floordiv__(self, other: Dim) -> Dim:
        if not isinstance(other, int) or other == 0:
            raise SymbolicError(f"cannot divide {self} by {other}")
        if any(c % other for c in self.terms.values()):
            raise SymbolicError(
                f"{self} is not divisible by {other} for every value of its symbols"
            )
        return Poly.make({m: c // other for m, c in self.terms.items()})

    def __mod__(self, other: Dim) -> Dim:
        if (
            isinstance(other, int)
            and other != 0
            and all(c % other == 0 for c in self.terms.values())
        ):
            return 0
        raise SymbolicError(f"{self} mod {other} depends on the value of its symbols")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return False
        return isinstance(other, Poly) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.terms.items())))

    def __lt__(self, other: Dim) -> bool:
        raise SymbolicError(f"cannot compare symbolic {self} with {other}")

    __le__ = __gt__ = __ge__ = __lt__

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        def mono_key(item: tuple[Monomial, int]) -> tuple[int, Monomial]:
            return (-sum(p for _, p in item[0]), item[0])

        parts: list[str] = []
        for mono, coeff in sorted(self.terms.items(), key=mono_key):
            factors = [s if p == 1 else f"{s}^{p}" for s, p in mono]
            if not factors:
                body = str(abs(coeff))
            elif abs(coeff) == 1:
                body = "*".join(factors)
            else:
                body = "*".join([str(abs(coeff)), *factors])
            if not parts:
                parts.append(("-" if coeff < 0 else "") + body)
            else:
                parts.append(("- " if coeff < 0 else "+ ") + body)
        return " ".join(parts)


Dim = int | Poly


def as_poly(value: Dim) -> Poly:
    return value if isinstance(value, Poly) else Poly({(): value})


def value_at(value: Dim, bindings: Mapping[str, int]) -> int:
    """The concrete value of a dimension or formula at the given symbol bindings."""
    return value if isinstance(value, int) else value.value_at(bindings)


def is_symbolic(value: Dim) -> bool:
    return isinstance(value, Poly)


def fmt_dim(value: Dim) -> str:
    text = str(value)
    return f"({text})" if isinstance(value, Poly) and len(value.terms) > 1 else text


def product(dims: tuple[Dim, ...] | list[Dim]) -> Dim:
    total: Dim = 1
    for d in dims:
        total = total * d
    return total

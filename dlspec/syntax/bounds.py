"""Bounds on a parse tree, checked before it becomes a syntax tree: nesting depth and the size
of number literals.

Both protect what follows from user input: every later pass walks the tree recursively
(Lark's transformer, the evaluator), so a tree deeper than :data:`MAX_DEPTH` (500 minus signs,
a sum of 10,000 terms) would overflow Python's stack; and a literal with thousands of digits
would make ``int()`` refuse it, or a float overflow to infinity. The walk here is iterative.
"""

from __future__ import annotations

import math

from lark import Token, Tree

from dlspec.diagnostics import Diagnostic, Span

#: Deepest nesting of expressions and statements a spec may have (parse-tree levels).
MAX_DEPTH = 100
#: Largest integer literal (torch sizes and counts are 64-bit integers).
MAX_LITERAL = 2**63 - 1
#: The largest count, size or length a record or an option may give: 2^53, where integers
#: stop being exact as floats and the memory and FLOP figures computed from them overflow.
MAX_COUNT = 2**53
_MAX_DIGITS = 40  # longer literal text is refused before converting it


def _span(token: Token) -> Span:
    line, column = token.line or 1, token.column or 1
    return Span(line, column, token.end_line or line, token.end_column or column + 1)


def _first_token(tree: Tree[Token]) -> Token | None:
    stack: list[Tree[Token] | Token] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, Token):
            return item
        stack.extend(child for child in reversed(item.children) if child is not None)
    return None


def literal_problem(text: str) -> str | None:
    """Why a NUMBER literal cannot be used (too many digits, an integer beyond 64 bits, a
    float that overflows to infinity), or None."""
    from dlspec.syntax.parser import parse_number

    digits = sum(c.isdigit() for c in text)
    if digits > _MAX_DIGITS:
        return f"a number literal of {digits:,} digits is too large"
    value = parse_number(text)
    if isinstance(value, float) and math.isnan(value):  # --set n=nan: Python reads it
        return f"{text} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{text} is too large for a floating-point number"
    if isinstance(value, int) and abs(value) > MAX_LITERAL:
        return f"{text} is larger than {MAX_LITERAL:,} (2^63 - 1), the largest size torch holds"
    return None


def check_bounds(tree: Tree[Token], max_depth: int = MAX_DEPTH) -> list[Diagnostic]:
    """Diagnostics (E602 nesting, E603 literals) for a parse tree; empty when it is safe to
    transform and evaluate."""
    problems: list[Diagnostic] = []
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 0)]
    deep_lines: set[int | None] = set()
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Token):
            if item.type == "NUMBER" and (problem := literal_problem(str(item))):
                problems.append(
                    Diagnostic.at(
                        "E603",
                        problem,
                        _span(item),
                        [f"number literals are limited to {MAX_LITERAL:,}"],
                    )
                )
            continue
        if depth > max_depth:  # its subtree is not walked; one report per line
            token = _first_token(item)
            line = token.line if token is not None else None
            if line in deep_lines:
                continue
            deep_lines.add(line)
            problems.append(
                Diagnostic.at(
                    "E602",
                    f"the spec nests more than {max_depth} levels deep here",
                    _span(token) if token is not None else None,
                    [
                        "deep nesting comes from long chains of operators or signs, "
                        "e.g. --...-2 or 1+1+...+1; write the value out instead"
                    ],
                )
            )
            continue
        stack.extend((child, depth + 1) for child in item.children if child is not None)
    return problems

"""Text -> parse tree (Lark, LALR) -> typed syntax tree (:mod:`dlspec.syntax.ast`).

Syntax errors become diagnostics (E101-E103) that say where and what was expected. The
transformer only builds nodes; every semantic check happens later, in the analyzer.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta

from dlspec.diagnostics import Diagnostic, Span, source_lines
from dlspec.syntax import ast, parser_cache
from dlspec.syntax.bounds import check_bounds

SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
# sizes in bytes: 8GiB, 80GB
BYTE_SUFFIXES = {f"{k}iB": 1024 ** (i + 1) for i, k in enumerate("KMGT")} | {
    f"{k}B": v for k, v in SUFFIXES.items()
}

# How terminals are named in "expected ..." messages.
FRIENDLY = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "COMPARE": "a comparison (==, <, ...)",
    "DEFINE": "'model' or 'block'",
    "TOTAL": "'total'",
    "$END": "end of file",
}


def grammar_text() -> str:
    """The grammar: shipped inside the package (wheel), or from the source tree's grammar/."""
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    for folder in (package, os.path.dirname(package)):
        path = os.path.join(folder, "grammar", "dlspec.lark")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as file:
                return file.read()
    from importlib import resources  # a package that is not a folder (a zip); costs an import

    return resources.files("dlspec").joinpath("grammar/dlspec.lark").read_text(encoding="utf-8")


def _span(meta: Meta | Token) -> Span:
    assert meta.line is not None and meta.column is not None
    return Span(meta.line, meta.column, meta.end_line or meta.line, meta.end_column or meta.column)


def _ident(tok: Token) -> ast.Ident:
    return ast.Ident(span=_span(tok), name=str(tok))


def parse_number(text: str) -> int | float:
    """``18_496`` -> 18496, ``1e-3`` -> 0.001, ``10M`` -> 10_000_000, ``8GiB`` -> 8 x 2^30
    bytes, ``80GB`` -> 80 x 10^9 (int when exact)."""
    scale = 1
    unit = next((u for u in BYTE_SUFFIXES if text.endswith(u)), None)
    if unit is not None:
        text, scale = text[: -len(unit)], BYTE_SUFFIXES[unit]
    elif text[-1] in SUFFIXES:
        text, scale = text[:-1], SUFFIXES[text[-1]]
    text = text.replace("_", "")
    if all(c.isdigit() for c in text):
        return int(text) * scale
    value = float(text) * scale
    return int(value) if scale > 1 and value.is_integer() else value


@v_args(meta=True)
class _ToAst(Transformer[Token, ast.Document]):
    """Parse tree -> typed syntax tree. Explicit methods, one per rule."""

    def __init__(self) -> None:
        super().__init__()
        # lark wraps each rule method anew on every lookup (functools.update_wrapper, a
        # tenth of a 10,000-layer check); bound once here, lookups find the instance's
        for name in dir(type(self)):
            if not name.startswith("_") and name not in vars(Transformer):
                setattr(self, name, getattr(self, name))

    def start(self, meta: Meta, items: list[ast.Definition]) -> ast.Document:
        return ast.Document(definitions=items)

    def definition(self, meta: Meta, items: list[Any]) -> ast.Definition:
        keyword, name, params, inputs, *body = items
        return ast.Definition(
            span=_span(meta),
            keyword=str(keyword),
            name=_ident(name),
            params=params or [],
            body=body,
            inputs=inputs or [],
        )

    def params(self, meta: Meta, items: list[Any]) -> list[ast.Param]:
        return [p for p in items if p is not None]

    def param(self, meta: Meta, items: list[Any]) -> ast.Param:
        name, type_, default = items
        return ast.Param(span=_span(meta), name=_ident(name), type=_ident(type_), default=default)

    def input_decl(self, meta: Meta, items: list[Any]) -> ast.InputDecl:
        name, dtype, *dims = items
        return ast.InputDecl(
            span=_span(meta),
            name=_ident(name),
            dtype=_ident(dtype),
            dims=[d for d in dims if d is not None],
        )

    def output_decl(self, meta: Meta, items: list[Token]) -> ast.OutputDecl:
        return ast.OutputDecl(span=_span(meta), names=[_ident(t) for t in items])

    def layer_stmt(self, meta: Meta, items: list[Any]) -> ast.LayerStmt:
        *names, op, repeat, sources = items
        return ast.LayerStmt(
            span=_span(meta),
            names=[_ident(t) for t in names if t is not None],
            op=op,
            repeat=repeat,
            sources=sources or [],
        )

    def repeat(self, meta: Meta, items: list[ast.Expr]) -> ast.Expr:
        return items[0]

    def loop(self, meta: Meta, items: list[Any]) -> ast.Loop:
        return ast.Loop(span=_span(meta), index=_ident(items[0]), count=items[1])

    def let_stmt(self, meta: Meta, items: list[Any]) -> ast.LetStmt:
        return ast.LetStmt(span=_span(meta), name=_ident(items[0]), value=items[1])

    def sources(self, meta: Meta, items: list[Token]) -> list[ast.Ident]:
        return [_ident(t) for t in items]

    def call(self, meta: Meta, items: list[Any]) -> ast.Call:
        name, args = items
        return ast.Call(span=_span(meta), name=_ident(name), args=args or [])

    def arguments(self, meta: Meta, items: list[Any]) -> list[ast.Arg]:
        return [a for a in items if a is not None]

    check_args = arguments

    def arg(self, meta: Meta, items: list[Any]) -> ast.Arg:
        return ast.Arg(span=_span(meta), name=None, value=items[0])

    def kwarg(self, meta: Meta, items: list[Any]) -> ast.Arg:
        return ast.Arg(span=_span(meta), name=_ident(items[0]), value=items[1])

    def residual(self, meta: Meta, items: list[Any]) -> ast.Residual:
        *body, shortcut = items
        return ast.Residual(span=_span(meta), body=body, shortcut=shortcut)

    def shortcut(self, meta: Meta, items: list[Any]) -> list[Any]:
        return items

    def expect_stmt(self, meta: Meta, items: list[Any]) -> ast.ExpectStmt:
        total, *checks = items
        return ast.ExpectStmt(span=_span(meta), total=total is not None, checks=checks)

    def check(self, meta: Meta, items: list[Any]) -> ast.Check:
        quantity, args, op, value = items
        return ast.Check(
            span=_span(meta), quantity=_ident(quantity), op=str(op), value=value, args=args or []
        )

    def train_section(self, meta: Meta, items: list[ast.Setting]) -> ast.TrainSection:
        return ast.TrainSection(span=_span(meta), settings=items)

    def setting(self, meta: Meta, items: list[Any]) -> ast.Setting:
        return ast.Setting(span=_span(meta), name=_ident(items[0]), value=items[1])

    def if_stmt(self, meta: Meta, items: list[Any]) -> ast.IfStmt:
        condition, *body, orelse = items
        return ast.IfStmt(span=_span(meta), condition=condition, body=body, orelse=orelse or [])

    def else_branch(self, meta: Meta, items: list[Any]) -> list[Any]:
        return items

    def else_if(self, meta: Meta, items: list[Any]) -> list[Any]:
        return items  # [the nested if_stmt]

    def compare(self, meta: Meta, items: list[Any]) -> ast.Compare:
        return ast.Compare(span=_span(meta), op=str(items[1]), left=items[0], right=items[2])

    def or_op(self, meta: Meta, items: list[Any]) -> ast.BoolOp:
        return ast.BoolOp(span=_span(meta), op="or", left=items[0], right=items[1])

    def and_op(self, meta: Meta, items: list[Any]) -> ast.BoolOp:
        return ast.BoolOp(span=_span(meta), op="and", left=items[0], right=items[1])

    def not_op(self, meta: Meta, items: list[Any]) -> ast.BoolOp:
        return ast.BoolOp(span=_span(meta), op="not", left=items[0], right=None)

    def shape_ref(self, meta: Meta, items: list[Any]) -> ast.ShapeRef:
        tensor, attr, index = items
        return ast.ShapeRef(span=_span(meta), tensor=_ident(tensor), attr=_ident(attr), index=index)

    # values
    def string(self, meta: Meta, items: list[Token]) -> ast.Str:
        return ast.Str(span=_span(meta), value=str(items[0])[1:-1])

    def list_value(self, meta: Meta, items: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(span=_span(meta), items=[i for i in items if i is not None])

    def call_value(self, meta: Meta, items: list[Any]) -> ast.CallExpr:
        return ast.CallExpr(span=_span(meta), name=_ident(items[0]), args=items[1] or [])

    def number(self, meta: Meta, items: list[Token]) -> ast.Num:
        text = str(items[0])
        return ast.Num(span=_span(meta), value=parse_number(text), text=text)

    def ref(self, meta: Meta, items: list[Token]) -> ast.Ref:
        return ast.Ref(span=_span(meta), name=str(items[0]))

    def neg(self, meta: Meta, items: list[Any]) -> ast.Neg:
        return ast.Neg(span=_span(meta), operand=items[0])

    def _binop(self, op: str, meta: Meta, items: list[Any]) -> ast.BinOp:
        return ast.BinOp(span=_span(meta), op=op, left=items[0], right=items[1])

    def add(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("+", meta, items)

    def sub(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("-", meta, items)

    def mul(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("*", meta, items)

    def floordiv(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("//", meta, items)

    def truediv(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("/", meta, items)

    def mod(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("%", meta, items)

    def pow(self, meta: Meta, items: list[Any]) -> ast.BinOp:
        return self._binop("**", meta, items)


def _expected(parser: Lark, names: set[str]) -> str:
    shown = set()
    for name in names:
        if name in FRIENDLY:
            shown.add(FRIENDLY[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            shown.add(name)
            continue
        shown.add(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    return ", ".join(sorted(shown))


@functools.cache
def _parser() -> Lark:
    return parser_cache.parser(grammar_text())


def _end_span(text: str) -> Span:
    lines = source_lines(text.rstrip())
    return Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)


def _syntax_diagnostic(parser: Lark, err: UnexpectedInput, text: str) -> Diagnostic:
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        err = UnexpectedEOF(err.expected)
    if isinstance(err, UnexpectedEOF):
        return Diagnostic.at(
            "E103",
            f"unexpected end of file; expected {_expected(parser, set(err.expected))}",
            _end_span(text),
        )
    line, col = err.line, err.column
    if isinstance(err, UnexpectedCharacters):
        return Diagnostic.at(
            "E102", f"unexpected character {err.char!r}", Span(line, col, line, col + 1)
        )
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    width = max(1, len(str(tok)))
    return Diagnostic.at(
        "E101",
        f"unexpected {str(tok)!r}; expected {_expected(parser, set(err.accepts or err.expected))}",
        Span(line, col, line, col + width),
    )


def parse_tree(text: str) -> tuple[Tree[Token] | None, list[Diagnostic]]:
    """Spec text -> Lark parse tree (positions kept), or the first syntax error, or the
    limits it breaks (nesting depth, literal sizes) before anything walks it recursively."""
    parser = _parser()
    try:
        tree = parser.parse(text)
    except UnexpectedInput as err:
        return None, [_syntax_diagnostic(parser, err, text)]
    problems = check_bounds(tree)
    return (None, problems) if problems else (tree, [])


def parse(text: str) -> tuple[ast.Document | None, list[Diagnostic]]:
    """Parse spec text into its syntax tree, or report the first syntax error.

    Only the first syntax error is reported: after one, the nesting and positions of what
    follows are guesses, and guesses make noisy diagnostics. Semantic checks, which run on a
    well-formed tree, collect every problem."""
    tree, diagnostics = parse_tree(text)
    if tree is None:
        return None, diagnostics
    return _ToAst().transform(tree), []

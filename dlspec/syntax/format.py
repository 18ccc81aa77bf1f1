"""The canonical layout of a spec (``dlspec fmt``): parse tree + comments -> text.

The layout, in short: four spaces per nesting level; spaces around ``=``, ``:``, binary
operators, ``<-`` and after commas, none in keyword arguments (``kernel=3``); one statement a
line; at most one blank line in a row, none after ``{`` or before ``}``, one between
definitions. A layer's ``expect`` and the trailing comments of one body share a column, three
spaces right of the longest statement that carries one (statements ending past column
:data:`ALIGN_LIMIT` take their ``expect`` on the next line, in that column). A call, a
parameter list or a list longer than :data:`LINE_LENGTH` is filled line by line, each
continuation aligned after the opening bracket; an ``expect`` that does not fit puts one check
a line, and a long sum breaks before its ``+`` and ``-``.

A rule without a layout of its own here (a grammar rule newer than this module) is written
from its tokens with the canonical spacing, so no spec that parses fails to format.

Comments are kept: an own-line comment stays before what follows it, a trailing comment stays
at the end of its statement's line. A comment inside a statement (between the arguments of a
call, say) moves to the line before that statement.

The parse tree drops comments, so :func:`scan` finds them (and the braces) in the text, and
they are placed back by position.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lark import Token, Tree

from dlspec.diagnostics import Diagnostic, source_lines
from dlspec.syntax.parser import parse_tree

LINE_LENGTH = 100
ALIGN_LIMIT = 48  # a statement ending past this column takes its `expect` on the next line
GAP = 3  # spaces between the longest aligned statement and the expect/comment column
INDENT = 4

Pos = tuple[int, int]  # (line, column), 1-based
Node = Tree[Any]  # a parse-tree node; its children are nodes, tokens or None

# binding strength of each operator, loosest first; `compare` takes its operator from the tree
_PRECEDENCE = {"or_op": 1, "and_op": 2, "compare": 4, "add": 5, "sub": 5}
_PRECEDENCE |= {"mul": 6, "floordiv": 6, "truediv": 6, "mod": 6, "pow": 8}
_OPERATOR = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "truediv": "/", "mod": "%"}
_OPERATOR["pow"] = "**"
_OPERATOR |= {"or_op": "or", "and_op": "and"}
_PREFIX = {"not_op": ("not ", 3), "neg": ("-", 7)}  # prefix operators and their strength
_NESTED = {"definition", "train_section", "if_stmt"}  # statements holding a body of their own

# the tokens of a spec, for rules written from their source text (numbers before names)
_TOKEN = re.compile(
    r"\"[^\"\n]*\"|'[^'\n]*'|#[^\n]*"
    r"|(?:\d[\d_]*(?:\.\d[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?[A-Za-z]*"
    r"|[A-Za-z_][A-Za-z0-9_]*|<-|==|!=|<=|>=|//|\*\*|\S"
)


@dataclass(frozen=True)
class Comment:
    line: int
    column: int
    text: str
    own_line: bool  # nothing but whitespace before it on its line


@dataclass
class _Row:
    """One line group of a body: a comment, or a statement (with its attached ``expect``)."""

    lines: list[str]  # first line without indentation, later lines with absolute indentation
    blank_before: bool
    is_code: bool = True
    expect: Node | None = None
    comment: str | None = None
    end_line: int = 0  # the source line where the row ends (for trailing comments)
    comments: list[str] = field(default_factory=list)


def format_text(text: str) -> tuple[str | None, list[Diagnostic]]:
    """The spec ``text`` in the canonical layout, or the syntax error that prevents it."""
    tree, diagnostics = parse_tree(text)
    if tree is None:
        return None, diagnostics
    return format_tree(text, tree), []


def format_tree(text: str, tree: Node) -> str:
    """The canonical layout of ``text``, whose parse tree is ``tree``."""
    return _Formatter(text).spec(tree)


def spaced(text: str) -> str:
    """The tokens of ``text`` (comments dropped) with the canonical spacing: one space
    between tokens, none inside brackets, before ``,`` or after a prefix ``-``, and none
    around ``=`` inside parentheses (keyword arguments)."""
    out = ""
    depth = 0
    prev = ""
    prefix = False  # `prev` is a prefix minus
    for tok in (t for t in _TOKEN.findall(text) if not t.startswith("#")):
        operand = prev[:1].isalnum() or prev[:1] in "_\"')]"
        tight = (
            not out
            or prefix
            or prev in ("(", "[", ".")
            or tok in (")", "]", ",", ".")
            or (tok in ("(", "[") and operand)
            or ("=" in (tok, prev) and depth > 0)
        )
        out += ("" if tight else " ") + tok
        prefix = tok == "-" and not (operand and prev not in ("and", "or", "not"))
        depth += {"(": 1, ")": -1}.get(tok, 0)
        prev = tok
    return out


def _start(node: Node | Token) -> Pos:
    if isinstance(node, Token):
        return (node.line or 0, node.column or 0)
    return (node.meta.line, node.meta.column)


def _end(node: Node | Token) -> Pos:
    if isinstance(node, Token):
        return (node.end_line or 0, node.end_column or 0)
    return (node.meta.end_line, node.meta.end_column)


def _blank_before(rows: list[_Row], line: int, prev_line: int, top: bool) -> bool:
    """A blank line before an item that starts on ``line``: where the source has one (but
    never first in a body), and at the top level after every definition."""
    return bool(rows) and (line - prev_line > 1 or (top and rows[-1].is_code))


T = TypeVar("T")


def _present(items: Sequence[T | None]) -> list[T]:
    return [i for i in items if i is not None]


@dataclass(frozen=True)
class Brace:
    line: int
    column: int
    char: str  # "{" or "}"


def scan(text: str) -> tuple[list[Comment], list[Brace]]:
    """The comments and braces of ``text``: every ``#`` and brace outside a string (strings
    end on their line, so one pass over each line finds them)."""
    comments, braces = [], []
    for number, line in enumerate(source_lines(text), start=1):
        quote = ""
        for index, char in enumerate(line):
            if quote:
                quote = "" if char == quote else quote
            elif char in "\"'":
                quote = char
            elif char == "#":
                own = not line[:index].strip()
                comments.append(Comment(number, index + 1, line[index:].rstrip(), own))
                break
            elif char in "{}":
                braces.append(Brace(number, index + 1, char))
    return comments, braces


class _Formatter:
    def __init__(self, text: str) -> None:
        self.text = text
        self.comments, self.braces = scan(text)
        self.next_comment = 0

    # -- comments and braces ------------------------------------------------------------

    def _take(self, before: Pos) -> list[Comment]:
        """The comments not yet placed that start before ``before``."""
        taken = []
        while self.next_comment < len(self.comments):
            c = self.comments[self.next_comment]
            if (c.line, c.column) >= before:
                break
            taken.append(c)
            self.next_comment += 1
        return taken

    def _peek(self, before: Pos) -> list[Comment]:
        return [c for c in self.comments[self.next_comment :] if (c.line, c.column) < before]

    def _body_braces(self, after: Pos) -> tuple[Brace, Brace]:
        """The first ``{`` at or after ``after`` and the ``}`` that closes it."""
        depth = 0
        opening: Brace | None = None
        for brace in self.braces:
            if opening is None:
                if (brace.line, brace.column) >= after and brace.char == "{":
                    opening = brace
                continue
            if brace.char == "{":
                depth += 1
            elif depth:
                depth -= 1
            else:
                return opening, brace
        raise AssertionError("unbalanced braces in a parsed spec")

    # -- bodies -------------------------------------------------------------------------

    def spec(self, tree: Node) -> str:
        end = (10**9, 0)
        lines = self._body(list(tree.children), 0, None, end, top=True)[0]
        return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"

    def _body(
        self,
        statements: list[Node],
        indent: int,
        opening: Brace | None,
        closing: Pos,
        top: bool = False,
    ) -> tuple[list[str], str | None]:
        """A body's lines (absolutely indented) and the comment trailing its ``{``."""
        rows: list[_Row] = []
        opener_comment = None
        prev_line = 0 if opening is None else opening.line
        if opening is not None:
            pending = self._peek(_start(statements[0]) if statements else closing)
            if pending and not pending[0].own_line and pending[0].line == opening.line:
                opener_comment = pending[0].text
                self.next_comment += 1
        i = 0
        while i < len(statements):
            stmt = statements[i]
            prev_line = self._place(self._take(_start(stmt)), rows, prev_line, top)
            first = _start(stmt)[0]
            blank = _blank_before(rows, first, prev_line, top)
            hoisted_at = len(rows)
            hoisted = self._take(self._header_end(stmt))
            row = self._statement(stmt, indent)
            hoisted += self._take(_end(stmt))
            end_line = _end(stmt)[0]
            nxt = statements[i + 1] if i + 1 < len(statements) else None
            if (
                stmt.data == "layer_stmt"
                and nxt is not None
                and nxt.data == "expect_stmt"
                and nxt.children[0] is None
                and all(not c.own_line for c in self._peek(_start(nxt)))
            ):
                row.comments.extend(c.text for c in self._take(_start(nxt)))
                row.expect = nxt
                hoisted += self._take(_end(nxt))
                end_line = _end(nxt)[0]
                i += 1
            for j, c in enumerate(hoisted):
                rows.insert(hoisted_at + j, _Row([c.text], blank and j == 0, is_code=False))
            row.blank_before = blank and not hoisted
            row.end_line = end_line
            rows.append(row)
            prev_line = end_line
            i += 1
        self._place(self._take(closing), rows, prev_line, top)
        return self._render(rows, indent), opener_comment

    def _header_end(self, stmt: Node) -> Pos:
        """Where the part of ``stmt`` before its body ends (the whole statement when it has
        no body): comments up to there move before the statement."""
        op = stmt.children[-3] if stmt.data == "layer_stmt" else None
        if stmt.data in _NESTED or (op is not None and op.data == "residual"):
            opening = self._body_braces(_start(stmt))[0]
            return (opening.line, opening.column)
        return _end(stmt)

    def _place(self, comments: list[Comment], rows: list[_Row], prev_line: int, top: bool) -> int:
        for c in comments:
            last = rows[-1] if rows else None
            if last is not None and last.is_code and not c.own_line and c.line == last.end_line:
                last.comments.append(c.text)
                continue
            blank = _blank_before(rows, c.line, prev_line, top)
            rows.append(_Row([c.text], blank, is_code=False, end_line=c.line))
            prev_line = c.line
        return prev_line

    def _render(self, rows: list[_Row], indent: int) -> list[str]:
        for row in rows:
            row.comment = "  ".join(row.comments) or None

        def aligned(row: _Row) -> bool:
            carries = row.expect is not None or row.comment is not None
            return row.is_code and carries and len(row.lines) == 1 and fits(row)

        def fits(row: _Row) -> bool:
            return indent + len(row.lines[0]) <= ALIGN_LIMIT

        widths = [indent + len(r.lines[0]) for r in rows if aligned(r)]
        column = max(widths) + GAP if widths else indent + INDENT
        out: list[str] = []
        for row in rows:
            if row.blank_before and out:
                out.append("")
            lines = [" " * indent + row.lines[0], *row.lines[1:]]
            if not row.is_code:
                out.extend(lines)
                continue
            expect = self._expect(row.expect, column) if row.expect is not None else []
            if aligned(row):
                if expect:
                    lines = [lines[0].ljust(column) + expect[0], *expect[1:]]
                    if row.comment:
                        lines[-1] += " " * GAP + row.comment
                elif row.comment:
                    lines[0] = lines[0].ljust(column) + row.comment
            else:
                if row.comment:
                    lines[-1] += "  " + row.comment
                if expect:
                    lines += [" " * column + expect[0], *expect[1:]]
            out.extend(lines)
        return out

    # -- statements ---------------------------------------------------------------------

    def _statement(self, stmt: Node, indent: int) -> _Row:
        kind = stmt.data
        if kind == "definition":
            return self._definition(stmt, indent)
        if kind == "train_section":
            lines = self._nested("train {", stmt, list(stmt.children), indent)
            return _Row([*lines, " " * indent + "}"], False)
        if kind == "setting":
            name, value = stmt.children
            return _Row(self._value_lines(f"{name} = ", value, indent), False)
        if kind == "layer_stmt":
            return _Row(self._layer(stmt, indent), False)
        if kind == "input_decl":
            name, dtype, *dims = stmt.children
            shape = ", ".join(self._expr(d) for d in _present(dims))
            return _Row([f"input {name}: {dtype}[{shape}]"], False)
        if kind == "let_stmt":
            name, value = stmt.children
            return _Row(self._value_lines(f"let {name} = ", value, indent), False)
        if kind == "output_decl":
            return _Row(["output " + ", ".join(str(t) for t in stmt.children)], False)
        if kind == "expect_stmt":
            return _Row(self._expect(stmt, indent), False)
        if kind == "if_stmt":
            return _Row([*self._if(stmt, "if ", _start(stmt), indent), " " * indent + "}"], False)
        return _Row([self._tokens(stmt)], False)

    def _tokens(self, node: Node) -> str:
        """A rule without a layout of its own, from its source text (see :func:`spaced`)."""
        return spaced(self.text[node.meta.start_pos : node.meta.end_pos])

    def _if(self, node: Node, head: str, after: Pos, indent: int) -> list[str]:
        """``if condition {``, its body and its ``else`` branches, without the last ``}``;
        ``after``: where to look for the body's ``{``."""
        condition, *body, other = node.children
        opening, closing = self._body_braces(after)
        lines, comment = self._body(body, indent + INDENT, opening, (closing.line, closing.column))
        head += self._expr(condition) + " {" + (f"  {comment}" if comment else "")
        lines = [head, *lines]
        if other is None:
            return lines
        after = (closing.line, closing.column + 1)
        head = " " * indent + "} else "
        if other.data == "else_if":
            return lines + self._if(other.children[0], head + "if ", after, indent)
        opening, closing = self._body_braces(after)
        rest, comment = self._body(
            list(other.children), indent + INDENT, opening, (closing.line, closing.column)
        )
        return [*lines, head + "{" + (f"  {comment}" if comment else ""), *rest]

    def _nested(self, head: str, node: Node, statements: list[Node], indent: int) -> list[str]:
        """``head {`` and the indented body of ``node`` (without the closing brace)."""
        opening, closing = self._body_braces(_start(node))
        body, comment = self._body(
            statements, indent + INDENT, opening, (closing.line, closing.column)
        )
        return [head + (f"  {comment}" if comment else ""), *body]

    def _definition(self, node: Node, indent: int) -> _Row:
        keyword, name, params, sources, *body = node.children
        head = f"{keyword} {name}"
        tail = " {" if sources is None else " <- " + ", ".join(map(str, sources.children)) + " {"
        if params is not None and _present(params.children):
            items = [self._param(p) for p in _present(params.children)]
            header = self._fill(head + "(", items, ")" + tail, indent)
        else:
            header = [head + tail]
        nested = self._nested("", node, body, indent)
        header[-1] += nested[0]  # the comment after `{`, if any
        return _Row([*header, *nested[1:], " " * indent + "}"], False)

    def _param(self, node: Node) -> str:
        name, type_, default = node.children
        return f"{name}: {type_}" + (f" = {self._value(default)}" if default is not None else "")

    def _layer(self, node: Node, indent: int) -> list[str]:
        *names, op, repeat, sources = node.children
        named = [str(t) for t in names if t is not None]
        prefix = ", ".join(named) + " = " if named else ""
        suffix = ""
        if repeat is not None and repeat.data == "loop":
            index, count = repeat.children
            suffix = f" for {index} in range({self._expr(count)})"
        elif repeat is not None:
            suffix = f" * {self._expr(repeat.children[0], 7)}"
        if sources is not None:
            suffix += " <- " + ", ".join(str(t) for t in sources.children)
        if op.data == "call":
            kind, arguments = op.children
            args = [self._arg(a) for a in _present(arguments.children)] if arguments else []
            if not args:
                return [f"{prefix}{kind}{suffix}"]
            return self._fill(f"{prefix}{kind}(", args, ")" + suffix, indent)
        *body, shortcut = op.children
        lines = self._nested(prefix + "residual {", op, body, indent)
        if shortcut is not None:
            lines += self._nested(
                " " * indent + "} shortcut {", shortcut, shortcut.children, indent
            )
        return [*lines, " " * indent + "}" + suffix]

    def _expect(self, node: Node, column: int) -> list[str]:
        """An expect statement starting at ``column``: on one line, or one check a line."""
        total, *checks = node.children
        head = "expect " + ("total " if total is not None else "")
        texts = [self._check(c) for c in checks]
        if column + len(head) + len(", ".join(texts)) <= LINE_LENGTH:
            return [head + ", ".join(texts)]
        lines: list[str] = []
        at = column + len(head)
        for k, check in enumerate(checks):
            comma = "," if k < len(checks) - 1 else ""
            broken = self._check_lines(check, at, comma)
            lines += [(head if k == 0 else " " * at) + broken[0], *broken[1:]]
        return lines

    def _check(self, node: Node) -> str:
        *_, value = node.children
        return f"{self._quantity(node)} {self._value(value)}"

    def _quantity(self, node: Node) -> str:
        """A check up to its value: ``params ==``, ``train_memory(batch=32) <``."""
        return " ".join(
            self._tokens(c) if isinstance(c, Tree) else str(c) for c in node.children[:-1] if c
        ).replace(" (", "(")

    def _check_lines(self, node: Node, column: int, comma: str) -> list[str]:
        """One check; a sum too long for the line breaks before its ``+`` / ``-``."""
        value = node.children[-1]
        text = self._check(node) + comma
        if column + len(text) <= LINE_LENGTH or value.data not in ("add", "sub"):
            return [text]
        terms: list[tuple[str, Node]] = []
        while isinstance(value, Tree) and value.data in ("add", "sub"):
            terms.insert(0, (_OPERATOR[value.data], value.children[1]))
            value = value.children[0]
        start = self._quantity(node) + " "
        at = column + len(start) - 2  # operands line up; the operator hangs left of them
        lines = [start + self._expr(value, 1)]
        for operator, term in terms:
            piece = f"{operator} {self._expr(term, 2)}"
            width = (column if len(lines) == 1 else 0) + len(lines[-1]) + 1 + len(piece)
            if width + len(comma) <= LINE_LENGTH:
                lines[-1] += " " + piece
            else:
                lines.append(" " * at + piece)
        lines[-1] += comma
        return lines

    # -- values -------------------------------------------------------------------------

    def _fill(self, head: str, items: list[str], tail: str, column: int) -> list[str]:
        """``head`` + items joined by commas + ``tail``; when too long for the line, as many
        items a line as fit, continuation lines aligned after ``head``."""
        if column + len(head) + len(", ".join(items)) + len(tail) <= LINE_LENGTH:
            return [head + ", ".join(items) + tail]
        at = column + len(head)
        lines = [head]
        for k, item in enumerate(items):
            piece = item + ("," if k < len(items) - 1 else tail)
            current = lines[-1]
            width = (column if len(lines) == 1 else 0) + len(current)
            fresh = k == 0
            if fresh or width + 1 + len(piece) <= LINE_LENGTH:
                lines[-1] = current + ("" if fresh else " ") + piece
            else:
                lines.append(" " * at + piece)
        return lines

    def _value_lines(self, head: str, value: Node, column: int) -> list[str]:
        """``head`` + a value, a list or call filled across lines when too long."""
        if value.data == "list_value":
            items = [self._value(v) for v in _present(value.children)]
            return self._fill(head + "[", items, "]", column)
        if value.data == "call_value":
            name, arguments = value.children
            items = [self._arg(a) for a in _present(arguments.children)]
            return self._fill(f"{head}{name}(", items, ")", column)
        return [head + self._value(value)]

    def _arg(self, node: Node) -> str:
        if node.data == "kwarg":
            return f"{node.children[0]}={self._value(node.children[1])}"
        return self._value(node.children[0])

    def _value(self, node: Node | Token) -> str:
        if isinstance(node, Token):  # a value a newer grammar leaves as a bare token
            return str(node)
        if node.data == "string":
            return str(node.children[0])
        if node.data == "list_value":
            return "[" + ", ".join(self._value(v) for v in _present(node.children)) + "]"
        if node.data == "call_value":
            name, arguments = node.children
            return f"{name}(" + ", ".join(self._arg(a) for a in _present(arguments.children)) + ")"
        return self._expr(node)

    def _expr(self, node: Node | Token, context: int = 0) -> str:
        """An expression with the parentheses its precedence needs (``context``: the binding
        strength of the surrounding operator)."""
        if isinstance(node, Token):
            return str(node)
        kind = node.data
        if kind in ("number", "ref"):
            return str(node.children[0])
        if kind == "shape_ref":
            tensor, attribute, index = node.children
            return f"{tensor}.{attribute}[{self._expr(index)}]"
        if kind in _PREFIX:
            operator, strength = _PREFIX[kind]
            text = operator + self._expr(node.children[0], strength)
        elif kind in _PRECEDENCE:
            strength = _PRECEDENCE[kind]
            *operands, right = node.children
            operator = str(operands.pop()) if kind == "compare" else _OPERATOR[kind]
            # ** binds right to left: its left operand is parenthesised at equal strength
            # (its right operand may be a bare prefix minus: 2 ** -i)
            power = kind == "pow"
            left = self._expr(operands[0], strength + (kind == "compare" or power))
            right_strength = _PREFIX["neg"][1] if power else strength + 1
            text = f"{left} {operator} {self._expr(right, right_strength)}"
        else:
            return f"({self._tokens(node)})" if context else self._tokens(node)
        return f"({text})" if strength < context else text

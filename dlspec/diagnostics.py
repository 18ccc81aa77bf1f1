"""Diagnostics: every problem a user can cause, with a code, a place and the numbers."""

from typing import Literal, NamedTuple

from typing_extensions import Self

from dlspec.terminal import printable
from dlspec.validation import Field, Validated

Severity = Literal["error", "warning"]

#: Every diagnostic code dlspec emits, with a one-line title (in the manual: docs/diagnostics.md).
CODES: dict[str, str] = {
    "E001": "spec file not found or unreadable",
    "E002": "spec file is empty",
    "E003": "spec file is binary or not UTF-8 text",
    "E004": "spec file is too large",
    "E101": "syntax error: unexpected token",
    "E102": "syntax error: unexpected character",
    "E103": "syntax error: unexpected end of file",
    "E201": "unknown layer kind or block",
    "E202": "unknown argument",
    "E203": "missing argument",
    "E204": "invalid argument value",
    "E205": "too many positional arguments",
    "E206": "duplicate name",
    "E207": "invalid name",
    "E208": "unknown name in an expression",
    "E209": "recursive block",
    "E210": "no model, or an ambiguous model choice",
    "E211": "bad --set override",
    "E212": "invalid expression",
    "E213": "argument given twice",
    "E214": "invalid train section",
    "E301": "expected parameter count does not match",
    "E302": "expected output shape does not match",
    "E303": "expected MAC count does not match",
    "E304": "model budget exceeded",
    "E305": "invalid expectation",
    "E401": "input size does not match the previous layer",
    "E402": "zero or negative size after a layer",
    "E403": "residual branches have different shapes",
    "E404": "wrong input rank or dtype for a layer",
    "E405": "operation not supported on a symbolic dimension",
    "E406": "unknown tensor",
    "E407": "wrong number of inputs",
    "E408": "invalid input or output declaration",
    "E409": "a dimension exceeds what a layer supports",
    "E410": "a statement reads the previous output, but it gave several",
    "E411": "a statement names another number of outputs than it gives",
    "E412": "a repeated step's outputs cannot be the next copy's inputs",
    "E601": "the model is too large: too many layers after repetition",
    "E602": "the spec nests too deeply",
    "E603": "a number literal is too large",
    "E604": "the model needs more memory than allowed",
    "W501": "softmax before a cross-entropy loss",
    "W502": "two linear layers with no nonlinearity between them",
    "W503": "pooling drops rows or columns",
    "W504": "one layer holds most of the parameters",
    "W505": "enormous layer",
    "W506": "a statement whose output nothing reads",
}


def source_lines(text: str) -> list[str]:
    """The lines of a spec as the parser numbers them: split at ``\n`` only. (``splitlines``
    also splits at form feeds, U+2028 and other separators, which the grammar reads as
    whitespace or as text inside a comment or string: lines would be miscounted.)"""
    return text.split("\n")


class Span(NamedTuple):
    """A 1-based source range; ``end_column`` is exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int


class Diagnostic(Validated):
    severity: Severity
    code: str
    message: str
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def at(cls, code: str, message: str, span: Span | None, notes: list[str] | None = None) -> Self:
        severity: Severity = "warning" if code.startswith("W") else "error"
        where = {}
        if span is not None:
            where = dict(zip(("line", "column", "end_line", "end_column"), span, strict=True))
        return cls(severity=severity, code=code, message=message, notes=notes or [], **where)

    def render(self, path: str, source: str | None) -> str:
        """Compiler-style text: ``path:line:col: error[E301]: ...``, the line, a caret."""
        loc = f"{path}:{self.line}:{self.column}" if self.line else path
        out = [f"{loc}: {self.severity}[{self.code}]: {self.message}"]
        lines = source_lines(source) if source else []
        if self.line and self.column and 0 < self.line <= len(lines):
            text = lines[self.line - 1].expandtabs(1)
            width = 1
            if self.end_line == self.line and self.end_column:
                width = max(1, self.end_column - self.column)
            elif self.end_line and self.end_line > self.line:
                width = max(1, len(text.rstrip()) - self.column + 1)
            gutter = " " * len(str(self.line))
            out.append(f" {self.line} | {text}")
            out.append(f" {gutter} | {' ' * (self.column - 1)}{'^' * width}")
        out.extend(f"  = {note}" for note in self.notes)
        return printable("\n".join(out))


class DiagnosticError(Exception):
    """Raised to abandon one unit of work (a statement, a layer) with a diagnostic; the
    pipeline catches it, records the diagnostic and carries on with the next unit."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def fail(
    code: str, message: str, span: Span | None, notes: list[str] | None = None
) -> DiagnosticError:
    return DiagnosticError(Diagnostic.at(code, message, span, notes))


def n(value: int) -> str:
    """A number as people read it: 18,874,880."""
    return f"{value:,}"

"""The dlspec language server (``dlspec lsp``, over stdin/stdout).

* diagnostics on open, change and save: the codes, spans and notes of ``dlspec check``;
* hover on a layer statement: its kind, output shape, parameters, MACs and memory, from the
  check report (the same rows as ``dlspec check --format json``);
* go to definition: from a block's use to its ``block`` definition, from a tensor name
  (``<- a, b``, ``tie=tok_emb``) to the statement that defines it;
* completion of layer kinds (and the spec's blocks) and, inside a call, of the kind's
  arguments, from the layer registry;
* formatting: the layout of ``dlspec fmt``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from dlspec import __version__
from dlspec.analysis.check import check_text
from dlspec.api import SpecError, load_text
from dlspec.diagnostics import Diagnostic, Span
from dlspec.lsp.framing import DROPPED, FramedInput
from dlspec.lsp.hover import hover_text
from dlspec.lsp.schema import argument_items, block_parameters, kind_items, name_items
from dlspec.syntax import ast
from dlspec.syntax.format import format_text
from dlspec.syntax.parser import parse
from dlspec.syntax.source import MAX_BYTES

server = LanguageServer("dlspec", __version__)
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def lsp_range(span: Span | None) -> types.Range:
    """A 1-based, end-exclusive dlspec span as a 0-based LSP range."""
    if span is None:
        return types.Range(types.Position(0, 0), types.Position(0, 0))
    return types.Range(
        types.Position(span.line - 1, span.column - 1),
        types.Position(span.end_line - 1, span.end_column - 1),
    )


def lsp_diagnostic(diag: Diagnostic) -> types.Diagnostic:
    span = None
    if diag.line and diag.column:
        span = Span(
            diag.line, diag.column, diag.end_line or diag.line, diag.end_column or diag.column + 1
        )
    severity = types.DiagnosticSeverity.Error
    if diag.severity == "warning":
        severity = types.DiagnosticSeverity.Warning
    message = "\n".join([diag.message, *diag.notes])
    return types.Diagnostic(
        range=lsp_range(span), message=message, severity=severity, code=diag.code, source="dlspec"
    )


def opened(ls: LanguageServer, uri: str) -> TextDocument | None:
    """The document at ``uri`` if the client opened it and it is within a spec's size limit,
    else None: the server reads nothing from disk (pygls would read a never-opened URI, be it
    a FIFO or /dev/zero) and analyses no document larger than `dlspec check` would."""
    doc = ls.workspace.text_documents.get(unquote(uri))
    if doc is None or len(doc.source) > MAX_BYTES:  # characters: at most 4 bytes each
        return None
    return doc


def _report_diagnostics(doc: TextDocument) -> list[Diagnostic]:
    try:
        return load_text(doc.source, doc.path).report.diagnostics
    except SpecError as err:
        return err.diagnostics


def _publish(ls: LanguageServer, uri: str) -> None:
    doc = opened(ls, uri)
    if doc is None:
        if unquote(uri) in ls.workspace.text_documents:  # open, but too large to analyse
            too_large = Diagnostic.at(
                "E004", f"the document is over {MAX_BYTES:,} characters, the limit for a spec", None
            )
            ls.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=uri, diagnostics=[lsp_diagnostic(too_large)])
            )
        return
    diagnostics = [lsp_diagnostic(d) for d in _report_diagnostics(doc)]
    ls.text_document_publish_diagnostics(
        types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=doc.version)
    )


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: LanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: LanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: LanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: LanguageServer, params: types.HoverParams) -> types.Hover | None:
    doc = opened(ls, params.text_document.uri)
    if doc is None:
        return None
    checked = check_text(doc.source, doc.path)
    # while the spec has errors, the statements that did analyze keep their figures
    report = checked.partial_report or checked.report
    text = hover_text(report, params.position.line + 1, checked.bound)
    if text is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))


def _word_at(doc: TextDocument, position: types.Position) -> str | None:
    line = doc.lines[position.line] if position.line < len(doc.lines) else ""
    for match in WORD.finditer(line):
        if match.start() <= position.character <= match.end():
            return match.group()
    return None


def _statements(body: Sequence[ast.Node]) -> Iterator[ast.Node]:
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.LayerStmt) and isinstance(stmt.op, ast.Residual):
            yield from _statements([*stmt.op.body, *(stmt.op.shortcut or [])])


def _definition_span(spec: ast.Document, word: str, line: int) -> Span | None:
    """Where ``word`` is defined: a block or model, else a named statement, an input, a `let`
    or a loop index of the definition that contains ``line``."""
    for definition in spec.definitions:
        if definition.name.name == word:
            return definition.name.span
    for definition in spec.definitions:
        if not definition.span.line <= line <= definition.span.end_line:
            continue
        for stmt in _statements(definition.body):
            names = stmt.names if isinstance(stmt, ast.LayerStmt) else [getattr(stmt, "name", None)]
            if isinstance(stmt, ast.LayerStmt) and isinstance(stmt.repeat, ast.Loop):
                names = [*names, stmt.repeat.index]
            for name in names:
                if isinstance(name, ast.Ident) and name.name == word:
                    return name.span
    return None


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
def definition(ls: LanguageServer, params: types.DefinitionParams) -> types.Location | None:
    doc = opened(ls, params.text_document.uri)
    if doc is None:
        return None
    word = _word_at(doc, params.position)
    spec = parse(doc.source)[0]
    if word is None or spec is None:
        return None
    span = _definition_span(spec, word, params.position.line + 1)
    return None if span is None else types.Location(uri=doc.uri, range=lsp_range(span))


def _open_call(text: str) -> str | None:
    """The name before the innermost ``(`` still open at the end of ``text``."""
    depth = 0
    for index in range(len(text) - 1, -1, -1):
        char = text[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", text[:index])
                return match.group(1) if match else None
            depth -= 1
        elif char in "{}":
            return None
    return None


@server.feature(
    types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=["(", ",", " "])
)
def completion(ls: LanguageServer, params: types.CompletionParams) -> types.CompletionList | None:
    doc = opened(ls, params.text_document.uri)
    if doc is None:
        return None
    before = doc.source[: doc.offset_at_position(params.position)]
    call = _open_call(before)
    blocks = block_parameters(doc.source)
    if call is None:
        items = kind_items(list(blocks))
    else:  # its arguments, then the names a value may read
        items = argument_items(call, blocks) + name_items(doc.source)
    return types.CompletionList(is_incomplete=False, items=items)


@server.feature(types.TEXT_DOCUMENT_FORMATTING)
def formatting(
    ls: LanguageServer, params: types.DocumentFormattingParams
) -> list[types.TextEdit] | None:
    """The whole document in the layout of ``dlspec fmt`` (nothing while it does not parse)."""
    doc = opened(ls, params.text_document.uri)
    if doc is None:
        return None
    formatted = format_text(doc.source)[0]
    if formatted is None or formatted == doc.source:
        return None
    end = types.Position(line=len(doc.lines), character=0)
    whole = types.Range(start=types.Position(line=0, character=0), end=end)
    return [types.TextEdit(range=whole, new_text=formatted)]


@server.feature(DROPPED)
def dropped(ls: LanguageServer, params: Any) -> None:
    """A malformed message that :class:`FramedInput` dropped: tell the client why."""
    reason = getattr(params, "reason", None) or "malformed"
    ls.window_log_message(
        types.LogMessageParams(
            type=types.MessageType.Warning, message=f"dlspec: dropped a message: {reason}"
        )
    )


class _FirstLine(logging.Formatter):
    """pygls's log records on stderr, a line each: the message's first line, no traceback
    (a request with malformed params is answered with an error reply; the log says which)."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [""]
        return f"dlspec lsp: {record.levelname.lower()}: {lines[0]}"


def serve() -> None:
    """Speak the protocol on stdin/stdout until the client says exit; malformed or oversized
    messages are dropped (:mod:`dlspec.lsp.framing`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FirstLine())
    handler.setLevel(logging.WARNING)
    log = logging.getLogger("pygls")
    log.addHandler(handler)
    log.propagate = False
    server.start_io(stdin=FramedInput(sys.stdin.buffer))  # type: ignore[arg-type]

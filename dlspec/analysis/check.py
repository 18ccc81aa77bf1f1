"""The static pipeline behind ``dlspec check``: read -> parse -> analyze -> lint -> report."""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING

from dlspec import collector
from dlspec.analysis.graph import ModelGraph
from dlspec.analysis.infer import Analyzer
from dlspec.analysis.limits import BudgetExceeded, LayerBudget, Limits
from dlspec.analysis.lints import lint
from dlspec.analysis.report import Report, build_report
from dlspec.diagnostics import Diagnostic
from dlspec.structs import Struct
from dlspec.syntax.bounds import literal_problem
from dlspec.syntax.parser import parse
from dlspec.syntax.source import Source, read_source, read_stdin

if TYPE_CHECKING:
    from pathlib import Path


class Checked(Struct, frozen=False):
    """A spec after the static pipeline: its source, its graph (None on errors), its report."""

    path: str
    source: Source | None
    graph: ModelGraph | None
    report: Report
    overrides: dict[str, str] = field(default_factory=dict)  # the --set values
    model: str | None = None  # the model asked for, when the file defines several
    # with errors that stopped the analysis: the model as far as it did analyze (what comes
    # before the error and beside it), and its report, for an editor's hover and the viewer
    partial: ModelGraph | None = None
    partial_report: Report | None = None
    bound: dict[int, list[str]] = field(default_factory=dict)  # each `let`'s values, by line

    @property
    def ok(self) -> bool:
        return self.report.ok


def check_text(
    text: str,
    path: str = "<spec>",
    overrides: dict[str, str] | None = None,
    batch: int = 1,
    model: str | None = None,
    limits: Limits | None = None,
) -> Checked:
    with collector.paused():  # many small objects, none in a cycle
        return _check(Source(path, text), overrides, batch, model, limits or Limits())


def _check(
    source: Source,
    overrides: dict[str, str] | None,
    batch: int,
    model: str | None,
    limits: Limits,
) -> Checked:
    path, text = source.path, source.text
    if problems := _override_problems(overrides or {}):
        return _refused(source, problems, batch)
    spec, diagnostics = parse(text)
    graph, partial = None, None
    bound: dict[int, list[str]] = {}
    if spec is not None:
        analyzer = Analyzer(spec, overrides, LayerBudget(limits.max_layers))
        try:
            graph = analyzer.run(model)
        except BudgetExceeded as exc:  # stop expanding: the rest would only cost time
            return _refused(source, [*analyzer.diagnostics, exc.diagnostic], batch)
        except RecursionError:  # blocks calling blocks, hundreds deep: the stack ran out
            deep = Diagnostic.at(
                "E602",
                "block calls nest too deeply to analyse (hundreds of blocks, each calling the "
                "next)",
                None,
                ["flatten the chain: a block may repeat a layer or call one block many times"],
            )
            return _refused(source, [*analyzer.diagnostics, deep], batch)
        diagnostics = analyzer.diagnostics
        bound = analyzer.bound
        if graph is not None:
            diagnostics = diagnostics + lint(graph)
        elif analyzer.partial is not None and analyzer.partial.steps:
            partial = analyzer.partial
    diagnostics.sort(key=lambda d: (d.line or 0, d.column or 0))
    report = build_report(path, graph, diagnostics, batch)
    partial_report = None if partial is None else build_report(path, partial, [], batch)
    return Checked(
        path,
        source,
        graph if report.ok else None,
        report,
        dict(overrides or {}),
        model,
        partial,
        partial_report,
        bound,
    )


def program_graph(
    text: str, overrides: dict[str, str] | None = None, model: str | None = None
) -> ModelGraph:
    """The graph of spec text that checks without errors, analyzed as a program: every number
    derived from a parameter keeps the expression that computed it, which code generation
    translates (:mod:`dlspec.layers.provenance`). Raises ValueError on errors."""
    spec, _ = parse(text)
    graph = None if spec is None else Analyzer(spec, overrides, program=True).run(model)
    if graph is None:
        raise ValueError("the spec has errors: run dlspec check")
    return graph


def _override_problems(overrides: dict[str, str]) -> list[Diagnostic]:
    """E211 for each ``--set`` number that no spec could write as a literal (thousands of
    digits, beyond 64 bits, a float overflowing to infinity): bounded as literals are."""
    problems = []
    for name, value in overrides.items():
        try:
            problem = literal_problem(value.strip())
        except ValueError:
            continue  # not a number: the analysis checks it against the parameter's type
        if problem is not None:
            problems.append(Diagnostic.at("E211", f"--set {name}={value}: {problem}", None))
    return problems


def _refused(source: Source, diagnostics: list[Diagnostic], batch: int) -> Checked:
    diagnostics.sort(key=lambda d: (d.line or 0, d.column or 0))
    return Checked(source.path, source, None, build_report(source.path, None, diagnostics, batch))


def check_file(
    path: str | Path,
    overrides: dict[str, str] | None = None,
    batch: int = 1,
    model: str | None = None,
    limits: Limits | None = None,
) -> Checked:
    """:func:`check_text` for the spec file at ``path`` (E001-E004 when it cannot be read);
    ``-`` is standard input, named ``<stdin>``."""
    stdin = str(path) == "-"
    name = "<stdin>" if stdin else str(path)
    source, problem = read_stdin() if stdin else read_source(path)
    if source is None:
        assert problem is not None
        return Checked(name, None, None, build_report(name, None, [problem], batch))
    return check_text(source.text, name, overrides, batch, model, limits)

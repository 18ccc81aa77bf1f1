"""The Python API: load a spec, read its report, get the generated code or a torch module.

    >>> spec = dlspec.load("specs/cnn.dl", num_classes=43)
    >>> spec.report.trainable_params
    9553547
    >>> model = spec.to_torch()  # an nn.Module built by running spec.code

Nothing here imports torch until :meth:`Spec.to_torch` is called.
"""

from __future__ import annotations

import hashlib
import linecache
import types
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dlspec.analysis.check import Checked, check_file, check_text, program_graph
from dlspec.analysis.graph import ModelGraph
from dlspec.analysis.report import Report
from dlspec.diagnostics import Diagnostic

if TYPE_CHECKING:
    from torch import nn


class SpecError(Exception):
    """A spec with errors. ``diagnostics`` holds every problem found (warnings too) and
    ``str()`` renders them as ``dlspec check`` does: ``file:line:col``, the line, a caret."""

    def __init__(self, checked: Checked) -> None:
        text = checked.source.text if checked.source is not None else None
        super().__init__(
            "\n".join(d.render(checked.path, text) for d in checked.report.diagnostics)
        )
        self.path = checked.path
        self.report: Report = checked.report
        self.diagnostics: list[Diagnostic] = checked.report.diagnostics


@dataclass(frozen=True)
class Spec:
    """A spec that checked without errors, for the model and parameter values it was loaded
    with: its ``report`` (the JSON report of ``dlspec check``), its analyzed ``graph``, its
    text, and the PyTorch code generated from it."""

    path: str
    source_text: str
    graph: ModelGraph
    report: Report
    overrides: dict[str, str] = field(default_factory=dict)  # the --set values it was given
    model: str | None = None

    @cached_property
    def code(self) -> str:
        """The generated ``model.py``: standalone, importing only torch. Raises
        :class:`~dlspec.backends.torch_codegen.GenerationError` for what generated code
        cannot express for every value of the class's arguments."""
        from dlspec.backends.torch_codegen import generate

        return generate(program_graph(self.source_text, self.overrides, self.model), self.path)

    def to_torch(self) -> nn.Module:
        """A new instance of the generated model class (fresh random weights on every call).
        The class comes from running :attr:`code`, so what runs is exactly what you read;
        tracebacks show its lines."""
        return self._model_class()

    @cached_property
    def _model_class(self) -> type[nn.Module]:
        digest = hashlib.sha256(self.code.encode()).hexdigest()[:12]
        filename = f"<dlspec model {self.graph.name} from {self.path} {digest}>"
        linecache.cache[filename] = (len(self.code), None, self.code.splitlines(True), filename)
        module = types.ModuleType(f"dlspec_generated_{self.graph.name}")
        exec(compile(self.code, filename, "exec"), module.__dict__)
        model_class: type[nn.Module] = module.__dict__[self.graph.name]
        return model_class


def load(path: str | Path, /, *, model: str | None = None, **overrides: object) -> Spec:
    """Check the spec file at ``path`` and return it as a :class:`Spec`; raise
    :class:`SpecError` when it has errors (a missing file included).

    ``overrides`` set model parameters, like ``dlspec check --set``:
    ``load("specs/cnn.dl", num_classes=43)``. ``model`` picks a model when the file defines
    several (so a model parameter called ``model`` cannot be overridden here).
    """
    return spec_of(check_file(path, _override_texts(overrides), model=model))


def load_text(
    text: str, path: str = "<spec>", /, *, model: str | None = None, **overrides: object
) -> Spec:
    """:func:`load` for spec text in memory; ``path`` names it in diagnostics and code."""
    return spec_of(check_text(text, path, _override_texts(overrides), model=model))


def spec_of(checked: Checked) -> Spec:
    """The :class:`Spec` of a checked file; raises :class:`SpecError` when it has errors."""
    if not checked.ok or checked.graph is None or checked.source is None:
        raise SpecError(checked)
    text, graph = checked.source.text, checked.graph
    return Spec(checked.path, text, graph, checked.report, checked.overrides, checked.model)


def _override_texts(overrides: dict[str, object]) -> dict[str, str]:
    """Python values as ``--set`` text, which the analyzer parses and type-checks."""
    texts = {}
    for name, value in overrides.items():
        if isinstance(value, bool):
            texts[name] = str(value).lower()
        elif isinstance(value, (int, float, str)):
            texts[name] = str(value)
        else:
            raise TypeError(f"{name}={value!r}: a parameter value is an int, float, bool or str")
    return texts

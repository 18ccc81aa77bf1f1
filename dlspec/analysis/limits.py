"""Limits decided before work starts: the size of the expanded graph and the memory a command
would allocate.

A spec is small text that can describe an enormous model (``Block * 1000000000``,
``LSTM(4, num_layers=10000000)``, a 160 TB weight matrix). The analyzer charges every layer it
analyzes to a :class:`LayerBudget`: a repetition's alike copies are analyzed once
(:class:`dlspec.analysis.graph.Copies`), so they cost one copy, and a repetition whose copies
keep differing is charged in full before the rest of its copies are built. The commands that
build the model's modules (build, export, bench) then bound the layers they would make,
every copy counted (:func:`layer_problem`), and the memory they would allocate
(:func:`memory_problem`). Each refusal names the figure and the option that raises the
limit: ``--max-layers``, ``--max-memory``. Nesting depth and literal sizes are bounded on the
parse tree (:mod:`dlspec.syntax.bounds`).
"""

from __future__ import annotations

import os
import re

from dlspec.analysis.graph import ModelGraph
from dlspec.analysis.render import human_bytes
from dlspec.analysis.report import Report
from dlspec.diagnostics import Diagnostic, Span, n
from dlspec.structs import Struct

#: Layers the analysis may build (stacked sub-layers counted, a repetition's alike copies
#: once), and layers build, export and bench may make (every copy counted), by default:
#: twice the 10,000 that `dlspec check` analyses in about a second (bench/check_speed.py).
MAX_LAYERS = 20_000

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


class Limits(Struct):
    """What a run may use: ``max_layers`` expanded layers, ``max_memory`` bytes (None: this
    machine's physical memory)."""

    max_layers: int = MAX_LAYERS
    max_memory: int | None = None

    def memory(self) -> int:
        """The memory limit in bytes."""
        return self.max_memory if self.max_memory is not None else physical_memory()


class BudgetExceeded(Exception):
    """The spec expands to more layers than allowed; the analysis stops (E601)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class LayerBudget:
    """Counts the layers the analyzer expands and stops it at ``limit``."""

    def __init__(self, limit: int = MAX_LAYERS) -> None:
        self.limit = limit
        self.used = 0

    def require(self, count: int, span: Span | None, what: str) -> None:
        """Refuse when ``count`` more layers would exceed the limit (nothing is charged)."""
        if self.used + count > self.limit:
            raise BudgetExceeded(
                Diagnostic.at(
                    "E601",
                    f"{what} expands the model to {n(self.used + count)} layers, more than the "
                    f"limit of {n(self.limit)}",
                    span,
                    [
                        f"{n(self.used)} layers so far + {n(count)} more here; "
                        "--max-layers N raises the limit"
                    ],
                )
            )

    def charge(self, count: int, span: Span | None, what: str) -> None:
        """Count ``count`` layers, refusing first when they exceed the limit."""
        self.require(count, span, what)
        self.used += count


def layers_built(graph: ModelGraph) -> int:
    """The layers a module of ``graph`` is made of: every copy of a repetition, and each
    stacked sub-layer (an LSTM's ``num_layers``), counted."""
    return sum(times * leaf.layer.copies() for leaf, times in graph.counted_leaves() if leaf.layer)


def layer_problem(graph: ModelGraph, limits: Limits) -> str | None:
    """Why a command that builds the model of ``graph`` would make more layers than
    ``limits`` allow (None when it would not): checking it analyzed each alike copy once."""
    count = layers_built(graph)
    if count <= limits.max_layers:
        return None
    return (
        f"{graph.name} is made of {n(count)} layers, more than the limit of "
        f"{n(limits.max_layers)} for building it; --max-layers N raises the limit"
    )


def physical_memory() -> int:
    """This machine's physical memory in bytes (a large figure where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**50


def parse_size(text: str) -> int:
    """``64G``, ``512M``, ``1.5T`` or a plain byte count -> bytes (binary units). Raises
    ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a size such as 64G or 512M, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def memory_needed(report: Report, batch: int, *, training: bool) -> int:
    """Bytes a command allocates for the model of ``report`` at ``batch`` samples: the
    weights and activations, and with ``training`` gradients and Adam's two moments too (the
    report's fp32 estimates, scaled from its batch)."""
    memory = report.memory
    if memory is None:
        return 0
    activations = memory.activations_bytes // memory.batch * batch
    if training:
        return memory.training_adam_bytes - memory.activations_bytes + activations
    return memory.parameters_bytes + activations


def memory_problem(report: Report, batch: int, *, training: bool, limits: Limits) -> str | None:
    """Why the model of ``report`` cannot be allocated under ``limits`` (None when it can)."""
    needed = memory_needed(report, batch, training=training)
    limit = limits.memory()
    if needed <= limit:
        return None
    what = "training it" if training else "running it"
    return (
        f"{report.model} needs about {human_bytes(needed)} for {what} at batch {n(batch)} "
        f"({n(report.total_params)} parameters), more than the {human_bytes(limit)} allowed; "
        "make the model smaller, or raise the limit with --max-memory SIZE (e.g. 512G)"
    )

"""Warnings about specs that are valid but probably not what the user wants (W501-W505)."""

from __future__ import annotations

from collections import Counter

from dlspec.analysis.graph import Copies, Graph, ModelGraph, Step
from dlspec.diagnostics import Diagnostic, n
from dlspec.layers.base import numel

# Families through which a linear map stays linear (W502 looks through them).
TRANSPARENT = ("regularization", "reshape")
HUGE_PARAMS = 1_000_000_000


def _graphs(graph: Graph) -> list[Graph]:
    """Every graph of the model: the top level, block bodies, residual branches, and the first
    two copies of a repetition (what holds between them holds between all)."""
    out = [graph]
    for step in graph.steps:
        for sub in (step.body, step.shortcut):
            if isinstance(sub, Copies):
                first = [sub.copy(i) for i in range(min(2, sub.count))]
                out.extend(_graphs(Graph(sub.inputs, first, [])))
            elif sub is not None:
                out.extend(_graphs(sub))
    return out


def _linear_source(step: Step, producers: dict[str, Step], reads: Counter[str]) -> Step | None:
    """The dense layer whose output reaches ``step`` through nothing but reshapes and dropout,
    each tensor on the way read by nothing else; None when there is none."""
    while len(step.inputs) == 1:
        tensor = step.inputs[0].name
        source = producers.get(tensor)
        if source is None or reads[tensor] != 1 or source.layer is None:
            return None
        if source.layer.family == "dense":
            return source
        if source.layer.family not in TRANSPARENT:
            return None
        step = source
    return None


def lint(graph: ModelGraph) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    outputs = {t.name for t in graph.outputs}
    for last in [s for s in graph.steps if any(t.name in outputs for t in s.outputs)]:
        if (
            last is not None
            and last.layer is not None
            and last.layer.probabilities
            and graph.train.task in ("classify", "language_model")
        ):
            diags.append(
                Diagnostic.at(
                    "W501",
                    f"{last.name}: {last.layer.kind} right before the output; the cross-entropy "
                    "loss applies log-softmax itself, so training would normalise twice",
                    last.span,
                    [
                        "end the model with the logits (remove this layer); "
                        "apply softmax at inference"
                    ],
                )
            )
    for body in _graphs(graph.body):
        linear = [s for s in body.steps if s.layer is not None and s.layer.family == "dense"]
        if len(linear) < 2:  # W502 is about two of them
            continue
        made = {t.name: s for s in body.steps for t in s.outputs}
        reads = Counter(t.name for s in body.steps for t in s.inputs)
        for step in linear:
            dense = _linear_source(step, made, reads)
            if dense is not None:
                diags.append(
                    Diagnostic.at(
                        "W502",
                        f"{dense.name} and {step.name} are linear layers with no nonlinearity "
                        "between them: together they are one linear map with more parameters",
                        step.span,
                        ["add an activation (e.g. ReLU) between them, or merge them"],
                    )
                )
    leaves = list(graph.counted_leaves())  # a repetition's alike copies once, with a count
    total = sum(leaf.params * times for leaf, times in leaves)
    with_params = [(leaf.params, leaf) for leaf, _ in leaves if leaf.params]
    if sum(times for leaf, times in leaves if leaf.params) >= 3 and total:
        most, big = max(with_params, key=lambda pair: pair[0])
        # the primer's tip is about a dense layer after a big feature map; an LM's embedding
        # or recurrent core holding most parameters is normal
        if most > total / 2 and big.layer is not None and big.layer.family == "dense":
            diags.append(
                Diagnostic.at(
                    "W504",
                    f"{big.path} holds {most / total:.1%} of the parameters "
                    f"({n(most)} of {n(total)})",
                    big.span,
                    [
                        "a large dense layer after a big feature map is the usual cause; pool "
                        "further (or use AdaptiveAvgPool2d) before flattening"
                    ],
                )
            )
    for leaf, _ in leaves:
        count = sum(numel(s) for s in leaf.weights.values())
        if count >= HUGE_PARAMS:
            diags.append(
                Diagnostic.at(
                    "W505",
                    f"{leaf.path} has {n(count)} parameters = {count * 4 / 2**30:,.1f} GiB in fp32 "
                    f"({count * 16 / 2**30:,.1f} GiB to train with Adam)",
                    leaf.span,
                )
            )
    return diags

"""Warnings about specs that are valid but probably not what the user wants (W501-W506)."""

from __future__ import annotations

from collections import Counter
from dataclasses import field

from dlspec.analysis.graph import Copies, Graph, ModelGraph, Step
from dlspec.diagnostics import Diagnostic, n
from dlspec.layers.base import numel
from dlspec.structs import Struct

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


class Unread(Struct, frozen=False):
    """A statement whose outputs reach no output of the model: nothing reads them and they
    are not outputs of their scope (the model, a block, a residual's branch), or they are a
    block's outputs that its use leaves unread. Torch computes it and keeps its parameters,
    which get no gradient; an ONNX exporter drops them. ``feeders`` are the statements read
    only by it (directly or through each other)."""

    step: Step  # its first use, for a block's statement
    scope: str  # where it is ("model Net", "block Layer", "residual r")
    output: bool  # an output of its block, which some uses leave unread
    feeders: list[Step]
    paths: list[str] = field(default_factory=list)  # its and its feeders' paths, every use
    params: int = 0  # their parameters, every use together
    uses: int = 0  # the model holds it this many times (block uses, copies)
    unread_at: list[str] = field(default_factory=list)  # an output's: ``name (line N)`` per use


def _needed(step: Step, wanted: set[str], dead: dict[int, list[Step]]) -> list[str]:
    """The inputs ``step`` reads to compute its outputs named in ``wanted``, noting the dead
    steps of its sub-graphs in ``dead`` (by graph id)."""
    if step.body is None:  # a layer reads all its inputs
        return [t.name for t in step.inputs]
    if step.form == "residual":  # the sum needs both branches, which read the one input
        for sub in (step.body, step.shortcut):
            if sub is not None:
                _flow(sub, {t.name for t in sub.outputs}, dead)
        return [t.name for t in step.inputs]
    body = step.body  # a block use or repetition: its outputs are its body's, one to one
    inner = {b.name for b, t in zip(body.outputs, step.outputs, strict=True) if t.name in wanted}
    live = _flow(body, inner, dead)
    return [t.name for t, b in zip(step.inputs, body.inputs, strict=True) if b.name in live]


def _flow(graph: Graph, wanted: set[str], dead: dict[int, list[Step]]) -> set[str]:
    """The tensors of ``graph`` that reach its outputs named in ``wanted``; its steps that
    reach none go to ``dead[id(graph)]``, and so on in its live steps' sub-graphs. A
    repetition's copies are read as analyzed (:meth:`Graph.runs`, never built one by one):
    the last analyzed copy stands for the alike ones after it, which may read any of its
    outputs, so all of them count as wanted (a last copy's unread output goes unseen)."""
    live = set(wanted)
    dead[id(graph)] = []
    runs = graph.runs()
    if runs and runs[-1].times > 1:
        live.update(t.name for t in runs[-1].step.outputs)
    for step in reversed([run.step for run in runs]):
        outputs = {t.name for t in step.outputs} & live
        if outputs:
            live.update(_needed(step, outputs, dead))
        else:
            dead[id(graph)].insert(0, step)
    return live


def unread(model: ModelGraph) -> list[Unread]:
    """Every statement the model computes for nothing (W506), in spec order; a block's
    statement once, with the figures of all its uses."""
    dead: dict[int, list[Step]] = {}
    _flow(model.body, {t.name for t in model.outputs}, dead)
    found: dict[tuple[int, int], Unread] = {}

    def visit(graph: Graph, scope: str, use: Step | None, times: int) -> None:
        """Note the sinks of ``graph`` (which runs ``times`` times) and look inside its live
        steps."""
        gone = dead[id(graph)]
        made = {t.name: s for s in gone for t in s.outputs}
        runs = graph.runs()
        read = {t.name for run in runs for t in run.step.inputs}
        returned = {t.name for t in graph.outputs}
        for sink in (s for s in gone if not any(t.name in read for t in s.outputs)):
            chain, todo = [sink], [t.name for t in sink.inputs]
            while todo:
                source = made.get(todo.pop())
                if source is not None and source not in chain:
                    chain.append(source)
                    todo.extend(t.name for t in source.inputs)
            output = any(t.name in returned for t in sink.outputs)
            entry = found.setdefault(
                (sink.span.line, sink.span.column),
                Unread(sink, scope, output, sorted(chain[1:], key=_order)),
            )
            entry.paths.extend(s.path for s in chain)
            entry.params += times * sum(s.params for s in chain)
            entry.uses += times
            if output and use is not None:
                entry.unread_at += [
                    f"{t.name} (line {use.span.line})"
                    for b, t in zip(graph.outputs, use.outputs, strict=True)
                    if b.name in {o.name for o in sink.outputs}
                ]
        for run in runs:
            step, each = run.step, times * run.times
            if step in gone:
                continue
            if step.form == "residual":
                for sub in (step.body, step.shortcut):
                    if sub is not None:
                        visit(sub, f"residual {step.name}", None, each)
            elif step.body is not None and step.block is not None:
                visit(step.body, f"block {step.block.name}", step, each)
            elif step.body is not None:  # a repetition's copies
                visit(step.body, scope, use, each)

    visit(model.body, f"model {model.name}", None, 1)
    return sorted(found.values(), key=lambda u: _order(u.step))


def _order(step: Step) -> tuple[int, int]:
    return step.span.line, step.span.column


def _unread_diagnostic(entry: Unread) -> Diagnostic:
    step = entry.step
    if entry.output:
        what = f"it is an output of {entry.scope}, {_listed(entry.unread_at)}, which nothing reads"
    else:
        what = f"nothing reads its output and it is not an output of {entry.scope}"
    feeders = [s.name for s in entry.feeders]
    also = f" (and so is what {_listed(feeders)} computes for it)" if feeders else ""
    notes = []
    if entry.params:
        held = _listed([s.name for s in [step, *entry.feeders] if s.params])
        count = f"{n(entry.params)} parameters"
        if entry.uses > 1:
            count += f" ({n(entry.params // entry.uses)} in each of {entry.uses} uses)"
        notes.append(
            f"the {count} of {held} stay in the torch module (check counts them) but "
            "get no gradient and never train; ONNX export drops them"
        )
    notes.append("read it, name it in `output`, or remove it")
    return Diagnostic.at(
        "W506", f"{step.name}: {what}: {step.label} is computed for nothing{also}", step.span, notes
    )


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def lint(graph: ModelGraph) -> list[Diagnostic]:
    diags: list[Diagnostic] = [_unread_diagnostic(entry) for entry in unread(graph)]
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

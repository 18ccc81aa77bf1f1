"""Training memory, statically: what autograd keeps for the backward pass, and the peak of a
training step.

Activations are the tensors torch's autograd saves for the backward pass in training mode
(:meth:`dlspec.layers.base.Layer.saves`), each storage once: a tensor two layers keep (ReLU's
output is the next convolution's input) is counted once, at the first layer that keeps it,
and a view (Flatten, Reshape, Identity) is the tensor it views, its whole storage. Where a
tensor lies in its storage is followed too (:mod:`dlspec.layers.layout`): a reshape torch
cannot view copies, and so does a kernel that reads its input as rows (Linear) or dense
(GroupNorm) where it is a slice, a transpose or a learned tensor repeated per sample.
Parameters are not activations; they are counted as weights.

The training peak is the largest moment of a step: while a layer's backward runs, the
weights (fp32 master copies, buffers included), the optimizer's state, the activations of the
layers before it, the gradients of the parameters after it and its own output and input
gradients are alive; at the optimizer step, all gradients and the step's temporaries. Under
bf16/fp16 autocast, floating activations take 2 bytes and the half-precision weight copies
that matrix products keep are added to the activations. Not counted: the loss's tensors,
the CUDA context, the allocator's caching.

On several GPUs (:class:`Parallel`) the figures are one GPU's, at its share of the batch:
under DDP the whole model's states and a second copy of the gradients (the reducer's
buckets); under FSDP its shards of the weights, gradients and optimizer state, exactly as
``fully_shard`` pads them (tests/test_fsdp.py measures them), and the parameters it gathers
while the backward pass runs, whole units at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import field
from math import prod
from typing import Literal, NamedTuple

from dlspec.analysis.graph import Copies, Graph, ModelGraph, Step
from dlspec.layers.base import FIXED_BYTES, Given, Layer, Saved, TensorType, numel
from dlspec.layers.layout import BATCH as STAND_IN
from dlspec.layers.layout import (
    Layout,
    as_rows,
    contiguous,
    elementwise,
    is_dense,
)
from dlspec.layers.symbolic import Dim, Poly, product, value_at
from dlspec.structs import Struct, replace
from dlspec.syntax.parser import parse_number

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
Device = Literal["cuda", "cpu"]
DEVICES: tuple[Device, ...] = ("cuda", "cpu")
# Per optimizer: state tensors per trainable parameter, and the temporaries of its step: on
# CUDA torch's foreach step makes them for all parameters at once (Adam: the square roots of
# the second moments), on CPU its per-tensor step for one parameter tensor at a time (Adam:
# the square root and its quotient) - the CPU figures are measured (bench/train_memory.py)
OPTIMIZERS = {  # name: (states, temporaries per parameter with foreach, per tensor on CPU)
    "sgd": (0, 0, 0),
    "sgd-momentum": (1, 0, 0),
    "adam": (2, 1, 2),
    "adamw": (2, 1, 2),
    "rmsprop": (1, 1, 1),
    "adagrad": (1, 1, 1),
}
BATCH = Poly.symbol("B")


def float_bytes(precision: Precision) -> int:
    return 4 if precision == "fp32" else 2


def saved_bytes(saved: Saved, precision: Precision = "fp32") -> Dim:
    """Bytes of one saved tensor, a formula in the batch size ``B`` and symbolic dims."""
    size = FIXED_BYTES.get(saved.dtype) or float_bytes(precision)
    return saved.elements * size * (BATCH if saved.batched else 1)


class Ref(NamedTuple):
    """A tensor: the id of its storage, where it lies there, the id of the object the
    generated code holds (a view is another object over the same storage), and whether it
    requires a gradient: a model input is data and does not, nor does what is computed from
    such tensors alone; a layer's output does as soon as the layer has weights or reads a
    tensor that does."""

    storage: int
    layout: Layout
    obj: int
    grad: bool = False


class Applied(Struct, frozen=False):
    """A layer applied, in execution order: the tensors it reads, the id of the storage of
    the one it writes, and the outermost block use it runs in (the unit activation
    checkpointing recomputes)."""

    step: Step
    reads: list[Ref]
    output: int
    block: Step | None = None


class Dataflow(Struct, frozen=False):
    """The model's layers in execution order, with tensor identities: the IR's edges, with
    blocks, repetitions and residuals flattened, and a view sharing the storage of what it
    views; each layer's :class:`LayerMemory` is counted as it is applied. Layouts are taken
    at ``bindings`` and a batch of ``batch``: torch lays a batch of 1 out apart (a size-1
    dimension's stride does not matter, so it views what it copies at a larger batch: a
    slice's heads folded into the batch), any larger batch alike (:data:`STAND_IN`); the
    rows' formulas in ``B`` hold at ``B = 1`` only, or at every ``B >= 2``. A repetition's
    alike copies are followed one by one only until a copy leaves the tensors it hands on as
    the copy before it left them: each later copy then counts the same, and that copy's rows
    stand for them all (:attr:`LayerMemory.folds`)."""

    bindings: dict[str, int]
    precision: Precision = "fp32"
    weight_copies: bool = True
    batch: int = STAND_IN
    rows: list[LayerMemory] = field(default_factory=list)
    storage: dict[int, Dim] = field(default_factory=dict)  # elements per sample, by tensor id
    unbatched: set[int] = field(default_factory=set)  # tensors one for the whole batch
    unit_inputs: dict[str, int] = field(default_factory=dict)  # checkpointing unit -> input
    objects: int = 0  # tensor objects made so far
    seen: set[tuple[int, ...] | tuple[int, str]] = field(default_factory=set)  # counted
    applied: int = 0  # layers applied so far
    _laid_out: dict[tuple[Dim, ...], Layout] = field(default_factory=dict)

    def new(self, elements: Dim) -> int:
        tensor = len(self.storage) + 1
        self.storage[tensor] = elements
        return tensor

    def new_object(self) -> int:
        self.objects += 1
        return self.objects

    def laid_out(self, t: TensorType) -> Layout:
        """``t`` with the batch, contiguous, at the bindings."""
        if t.shape not in self._laid_out:
            sizes = (self.batch, *(value_at(d, self.bindings) for d in t.shape))
            self._laid_out[t.shape] = contiguous(sizes)
        return self._laid_out[t.shape]

    def count(self, applied: Applied) -> None:
        """The row of a layer just applied: the bytes of what it saves that no layer before
        it saved. Under bf16/fp16 autocast, a layer with MACs also keeps the half-precision
        copy of its weights that its products read (``weight_copies``)."""
        step = applied.step
        assert step.layer is not None
        index = self.applied
        self.applied += 1
        total: Dim = 0
        keys = []
        types = [t.type for t in step.inputs]
        for saved in _saves(step, types, applied.reads):
            key = _identity(saved, applied, index)
            if key not in self.seen:
                self.seen.add(key)
                keys.append(key)
                if len(key) == 1:  # a tensor between layers: its whole storage stays
                    batched = key[0] not in self.unbatched
                    saved = replace(saved, elements=self.storage[key[0]], batched=batched)
                total = total + saved_bytes(saved, self.precision)
        if self.precision != "fp32" and step.macs and self.weight_copies:
            total = total + 2 * step.params  # autocast's half-precision copy of the weights
        shared = frozenset(k[0] for k in keys if len(k) == 1)
        block_input = self.unit_inputs[applied.block.path] if applied.block else None
        storage = self.storage[block_input] if block_input is not None else 0
        self.rows.append(
            LayerMemory(step.path, total, applied.block, shared, block_input, storage, step)
        )

    def state(self, refs: list[Ref]) -> tuple[object, ...]:
        """What a copy of a repetition reading ``refs`` can tell of them: where each lies,
        whether it is counted already, which are one object given twice, and which require
        a gradient."""
        objects = [ref.obj for ref in refs]
        return tuple(
            (ref.layout, (ref.storage,) in self.seen, objects.index(ref.obj), ref.grad)
            for ref in refs
        )


def checkpoint_unit(step: Step) -> bool:
    """Whether activation checkpointing recomputes this step of the model as a unit (or each
    of its copies): a use of a block, or a repetition of one, with one input and one output.
    The generated code and the memory arithmetic both follow this rule."""
    if step.form == "repeat" and not isinstance(step.body, Copies):
        return False  # repeated 0 times
    target = step.body.copy(0) if isinstance(step.body, Copies) else step
    one = len(step.inputs) == 1 and len(step.outputs) == 1
    return one and target.form == "block" and len(target.outputs) == 1


def dataflow(
    model: ModelGraph,
    precision: Precision = "fp32",
    weight_copies: bool = True,
    inputs_grad: bool = False,
    batch: int = STAND_IN,
) -> Dataflow:
    """Follow the IR's edges through every sub-graph, counting each layer's saved tensors.
    The model's inputs are data, which requires no gradient, unless ``inputs_grad`` (float
    inputs then do, as where the gradient of the input itself is wanted). ``batch``: the
    batch size whose layouts to follow (1, or any larger: all larger ones lay out alike)."""
    flow = Dataflow(model.bindings, precision, weight_copies, min(batch, STAND_IN))
    refs = [
        Ref(
            flow.new(product(t.type.shape)),
            flow.laid_out(t.type),
            flow.new_object(),
            inputs_grad and t.type.dtype == "float",
        )
        for t in model.inputs
    ]
    _graph(flow, model.body, refs, None, top=True)
    return flow


def _graph(
    flow: Dataflow, graph: Graph, inputs: list[Ref], block: Step | None, top: bool = False
) -> list[Ref]:
    """Apply a graph to tensors ``inputs`` (one per graph input); returns its outputs' ids.
    ``top``: the model's own graph, whose block uses are checkpointing units."""
    where = {t.name: inputs[min(i, len(inputs) - 1)] for i, t in enumerate(graph.inputs)}
    for step in graph.steps:
        ids = [where[t.name] for t in step.inputs]
        unit = top and checkpoint_unit(step)
        for tensor, out in zip(step.outputs, _step(flow, step, ids, block, unit), strict=False):
            where[tensor.name] = out
    return [where[t.name] for t in graph.outputs]


def _step(
    flow: Dataflow, step: Step, inputs: list[Ref], block: Step | None, unit: bool = False
) -> list[Ref]:
    if step.layer is not None:
        outputs = [_apply(flow, step.layer, step, inputs, t.type) for t in step.outputs]
        flow.count(Applied(step, inputs, outputs[0].storage, block))
        return outputs
    assert step.body is not None
    if isinstance(step.body, Copies):
        return _copies(flow, step, step.body, inputs, block, unit)
    if unit:
        block = step
        flow.unit_inputs[step.path] = inputs[0].storage
    outputs = _graph(flow, step.body, inputs, block)
    if step.form != "residual":
        return outputs
    other = inputs[0] if step.shortcut is None else _graph(flow, step.shortcut, inputs, block)[0]
    layout = elementwise([outputs[0].layout, other.layout], other.layout.sizes)
    sum_ = flow.new(product(step.output.type.shape))
    grad = outputs[0].grad or other.grad
    return [Ref(sum_, layout, flow.new_object(), grad)]  # the branches' sum


def _copies(
    flow: Dataflow, step: Step, copies: Copies, inputs: list[Ref], block: Step | None, unit: bool
) -> list[Ref]:
    """A repetition's copies applied in turn (each a checkpointing unit of its own when the
    repetition is one). Within a run of alike copies, a copy that leaves its rows and the
    state of what it hands on (:meth:`Dataflow.state`) as the copy before it did, leaves
    them so for the next copy too: its rows then stand for the rest of the run."""
    refs = list(inputs)
    for run in copies.runs():
        before: tuple[object, ...] | None = None
        start = len(flow.rows)  # where the copy before this one began
        for done in range(run.times):
            copy = copies.copy(run.first + done)
            mark = len(flow.rows)
            outputs = _step(flow, copy, refs, copy if unit else block, unit)
            refs = [*outputs[: copies.threads], *refs[copies.threads :]]
            rows = flow.rows[mark:]
            after = (
                tuple(
                    (row.saved, row.block_storage, _relative(row.folds, copy.path)) for row in rows
                ),
                flow.state(refs),
            )
            if after == before:  # the copy before, and every later copy, counts as this one
                fold = (step.path, run.first + done - 1, run.times - done + 1)
                flow.rows[start:] = [
                    replace(
                        row,
                        folds=(fold, *row.folds),
                        shared=row.shared | other.shared,
                        block_next=other.block_input,
                    )
                    for row, other in zip(flow.rows[start:mark], rows, strict=True)
                ]
                break
            before, start = after, mark
    return refs[: copies.threads]


def _relative(
    folds: tuple[tuple[str, int, int], ...], path: str
) -> tuple[tuple[str, int, int], ...]:
    """Folds inside a copy, their paths relative to the copy's."""
    return tuple((repetition.removeprefix(path), first, n) for repetition, first, n in folds)


def _apply(flow: Dataflow, layer: Layer, step: Step, inputs: list[Ref], output: TensorType) -> Ref:
    """One output of ``layer``: a view of its first input, or a tensor of its own."""
    if layer.returns_input():
        return inputs[0]
    grads = tuple(r.grad for r in inputs)
    grad = output.dtype == "float" and (bool(step.weights) or layer.output_grad(grads))
    layout = layer.layout_given([ref.layout for ref in inputs], flow.laid_out(output), grads)
    if layout.copied:  # a view torch could not make: a tensor of its own
        return Ref(
            flow.new(product(output.shape)),
            replace(layout, copied=False),
            flow.new_object(),
            grad,
        )
    if layer.aliases_input():
        return Ref(inputs[0].storage, layout, flow.new_object(), grad)
    storage = flow.new(layer.output_storage_at([t.type for t in step.inputs], output, flow.batch))
    if not layer.output_batched():
        flow.unbatched.add(storage)
    return Ref(storage, layout, flow.new_object(), grad)


class LayerMemory(Struct):
    """Bytes a layer adds to the saved activations (tensors shared with an earlier layer are
    counted there), as a formula in ``B``; ``block`` is the outermost block it runs in.
    ``folds``: the row stands for that many alike copies of the layer, one per copy of the
    repetitions (path, first copy, copies) around it, outermost first, its bytes each's."""

    path: str
    saved: Dim
    block: Step | None = None
    shared: frozenset[int] = frozenset()  # ids of the tensors between layers it counted
    block_input: int | None = None  # the id of its block's input
    block_storage: Dim = 0  # elements per sample of the storage its block's input lies in
    step: Step | None = None  # the layer
    folds: tuple[tuple[str, int, int], ...] = ()
    # folded: the id of the block input of the copy after the first (each later copy's
    # input is made by the copy before it, as this one is)
    block_next: int | None = None

    @property
    def times(self) -> int:
        """How many layers the row stands for."""
        return prod(copies for _, _, copies in self.folds)

    def paths(self) -> list[str]:
        """The paths of the layers the row stands for."""
        out = [self.path]
        for repetition, first, copies in reversed(self.folds):  # innermost first
            own = f"{repetition}.{first}"
            out = [
                f"{repetition}.{first + i}{path[len(own) :]}" for i in range(copies) for path in out
            ]
        return out


def activations(
    graph: ModelGraph,
    precision: Precision = "fp32",
    weight_copies: bool = True,
    inputs_grad: bool = False,
    batch: int = STAND_IN,
) -> list[LayerMemory]:
    """Per layer, in execution order, the bytes of the tensors it saves for backward that
    no earlier layer saved; the sum of each row's bytes times the layers it stands for
    (:func:`total`) is the model's saved activations. Under bf16/fp16 autocast, a layer
    with MACs also keeps the half-precision copy of its weights that its products read
    (``weight_copies``; not under FSDP, whose gathered weights are already half-precision
    and are gathered again for the backward pass). The model's inputs are data, needing no
    gradient (a layer of no weights over them keeps nothing), unless ``inputs_grad``. The
    formulas in ``B`` are exact at every batch of 2 or more, or with ``batch=1`` at batch 1,
    where torch views some tensors it copies at larger batches (:class:`Dataflow`)."""
    return dataflow(graph, precision, weight_copies, inputs_grad, batch).rows


def saved_by_path(rows: list[LayerMemory]) -> dict[str, Dim]:
    """Each layer's saved bytes by its path, a folded row's for each layer it stands for."""
    return {path: row.saved for row in rows for path in row.paths()}


def checkpointed(rows: list[LayerMemory], bindings: dict[str, int], precision: Precision) -> Dim:
    """Saved activations with activation checkpointing per block use of the model (each
    copy of a repeated block apart; :func:`checkpoint_unit`): a block keeps only its input,
    and its backward recomputes (and briefly keeps) its own saved tensors, one block at a
    time. Other layers keep theirs as usual."""
    kept, recomputed = checkpoint_parts(rows, bindings, precision)
    return kept + recomputed


def checkpoint_parts(
    rows: list[LayerMemory], bindings: dict[str, int], precision: Precision
) -> tuple[Dim, Dim]:
    """With checkpointing: what the forward pass keeps (the other layers' saved tensors and
    each block's input, the whole storage it lies in), and the largest block's saved
    tensors, kept again while its backward runs."""
    kept: Dim = 0
    blocks: dict[str, tuple[Step, Dim]] = {}
    outside: set[int] = set()  # tensors layers outside the blocks keep anyway
    # the blocks' inputs, once each: their storages' elements, and how many blocks read
    # them (alike copies of a repetition after the first each read their own)
    inputs: dict[int, tuple[Dim, int]] = {}
    for row in rows:
        if row.block is None:
            kept = kept + row.saved * row.times
            outside |= row.shared
        else:
            # a row's copies inside its block are one block's; the others, alike blocks'
            unit = row.block.path + "."
            within = prod(n for path, _, n in row.folds if path.startswith(unit))
            step, inner = blocks.get(row.block.path, (row.block, 0))
            blocks[row.block.path] = (step, inner + row.saved * within)
            assert row.block_input is not None
            inputs[row.block_input] = (row.block_storage, 1)
            later = row.times // within - 1
            if later and row.block_next is not None and row.block_next != row.block_input:
                inputs[row.block_next] = (row.block_storage, later)
    size = float_bytes(precision)
    for tensor, (elements, times) in inputs.items():
        if tensor not in outside:
            kept = kept + elements * size * BATCH * times
    probe = {**bindings, "B": 1}
    largest = max(
        (inner for _, inner in blocks.values()), key=lambda d: value_at(d, probe), default=0
    )
    return kept, largest


def _saves(step: Step, types: list[TensorType], reads: list[Ref]) -> list[Saved]:
    """What the layer of ``step`` keeps: nothing where autograd records no node for it (no
    weights, and no input it differentiates requires a gradient), else its kind's rule."""
    assert step.layer is not None
    if not step.weights and not step.layer.output_grad(tuple(ref.grad for ref in reads)):
        return []
    return step.layer.saves_given(types, step.output.type, _given(reads))


def _given(reads: list[Ref]) -> Given:
    """Which of a layer's inputs are one tensor object given again (a view is another
    object, though of the same storage), where each lies, and which require a gradient."""
    objects = [ref.obj for ref in reads]
    return Given(
        tuple(objects.index(obj) for obj in objects),
        tuple(r.layout for r in reads),
        tuple(r.grad for r in reads),
    )


def _identity(saved: Saved, applied: Applied, index: int) -> tuple[int, ...] | tuple[int, str]:
    """Which tensor ``saved`` is: a storage between layers, or the layer's own (internal,
    or the copy it makes of an input it cannot read as it lies)."""
    tensor = saved.tensor
    if tensor == "output":
        return (applied.output,)
    if tensor.startswith("input") and tensor[5:].isdigit():
        ref = applied.reads[int(tensor[5:])]
        if saved.reads == "rows" and not as_rows(ref.layout):
            return (index, tensor + saved.reader)
        if saved.reads == "dense" and not is_dense(ref.layout):
            return (index, tensor + saved.reader)
        return (ref.storage,)
    return (index, tensor)


def total(rows: list[LayerMemory]) -> Dim:
    out: Dim = 0
    for row in rows:
        out = out + row.saved * row.times
    return out


def gradient_buffers(step: Step, precision: Precision) -> Dim:
    """The gradients alive while a layer's backward runs: its output's, its float inputs',
    and those its kind makes inside (:meth:`Layer.backward_buffers`)."""
    types = [t.type for t in step.inputs]
    elements: Dim = product(step.output.type.shape)
    if step.layer is not None:  # a view's gradient is as large as what it views
        elements = step.layer.output_storage(types, step.output.type)
        elements = elements + step.layer.backward_buffers(types, step.output.type)
    for x in types:
        if x.dtype == "float":
            elements = elements + product(x.shape)
    return elements * float_bytes(precision) * BATCH


class Moment(Struct):
    """A moment of a training step and what is alive then (formulas in ``B``)."""

    where: str  # "the optimizer step", or the layer whose backward runs
    activations: Dim  # saved tensors not yet freed
    gradients: Dim  # parameter gradients made so far
    transient: Dim  # gradient buffers of the layer, or the optimizer's temporaries
    gathered: Dim = 0  # several GPUs: FSDP's gathered parameters, DDP's gradient buckets


# the formulas of a Training, by name
FORMULAS = ("weights", "gradients", "optimizer", "activations", "step")


class Training(Struct):
    """The memory of one training step, each part a formula in ``B`` (and symbolic dims),
    and the moments one of which is its peak."""

    weights: Dim  # fp32 master weights and buffers
    gradients: Dim  # all of them
    optimizer: Dim  # the optimizer's state
    activations: Dim  # saved for backward (plus autocast's half-precision weight copies)
    step: Dim  # the optimizer step's temporaries (after the activations are freed)
    moments: tuple[Moment, ...] = ()
    # several GPUs: how (weights, gradients and optimizer state are then one GPU's), and the
    # bytes one GPU sends per step, by collective
    parallel: Parallel | None = None
    communication: dict[str, int] = field(default_factory=dict)

    def peak(self, at: dict[str, int]) -> tuple[str, dict[str, int]]:
        """Where the step peaks at ``at`` (``B`` and the symbolic dims), and what is alive
        then: weights, gradients, optimizer state, (on several GPUs) the gathered
        parameters or gradient buckets, activations, transient and their total."""
        fixed = value_at(self.weights, at), value_at(self.optimizer, at)
        best: tuple[str, dict[str, int]] | None = None
        for moment in self.moments:
            parts = {
                "weights": fixed[0],
                "gradients": value_at(moment.gradients, at),
                "optimizer": fixed[1],
                **({"gathered": value_at(moment.gathered, at)} if self.parallel else {}),
                "activations": value_at(moment.activations, at),
                "transient": value_at(moment.transient, at),
            }
            parts["total"] = sum(parts.values())
            if best is None or parts["total"] > best[1]["total"]:
                best = (moment.where, parts)
        assert best is not None
        return best

    def bytes(self, at: dict[str, int]) -> dict[str, int]:
        return self.peak(at)[1]


Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")


class Parallel(Struct):
    """Training on ``gpus`` devices (one process each): ``ddp`` replicates the model, its
    gradients and the optimizer's state on every one; ``fsdp`` (torch's ``fully_shard``,
    FSDP2) shards them, each block use of the model (:func:`shard_units`) and then the root
    being a unit whose parameters are gathered while it runs."""

    gpus: int
    strategy: Strategy

    @property
    def ranks(self) -> int:
        """Into how many shards the parameters are cut."""
        return self.gpus if self.strategy == "fsdp" else 1

    def describe(self) -> str:
        return f"{self.gpus} x {self.strategy.upper()}"


def shard_elements(shape: tuple[int, ...], ranks: int) -> int:
    """Elements of one rank's shard of a parameter of ``shape``: FSDP cuts dimension 0 into
    ``ranks`` chunks of ceil(rows / ranks) rows (torch.chunk's cut), and pads every rank's
    storage to that size (a last rank with fewer rows holds padding)."""
    if not shape:
        return 1
    return -(-shape[0] // ranks) * numel(shape[1:])


def sharded_params(step: Step, ranks: int) -> int:
    """One rank's elements of the trainable parameters of ``step`` (a layer or a sub-graph)
    sharded over ``ranks``: :attr:`Step.params` when ``ranks`` is 1."""
    return sum(
        times * shard_elements(tuple(shape), ranks)
        for leaf, times in step.counted_leaves()
        for name, shape in leaf.weights.items()
        if name not in leaf.tied
    )


def shard_units(graph: ModelGraph) -> list[Step]:
    """FSDP's units below the root: each block use in the model's graph, each copy of a
    repeated block apart (``fully_shard`` is applied to each, then to the whole model, whose
    remaining parameters form the root unit). ``dlspec build --strategy fsdp`` shards these
    modules (their :attr:`Step.path` is their module's path)."""
    units: list[Step] = []
    for step in graph.steps:
        if step.form == "block":
            units.append(step)
        elif _repeated_blocks(step):
            units.extend(step.children)
    return units


def _repeated_blocks(step: Step) -> bool:
    """A repetition of a block (each copy an FSDP unit)."""
    return isinstance(step.body, Copies) and all(
        run.step.form == "block" for run in step.body.runs()
    )


def shard_runs(graph: ModelGraph) -> list[tuple[Step, int]]:
    """:func:`shard_units` with a repetition's alike copies as one unit and their count."""
    runs: list[tuple[Step, int]] = []
    for step in graph.steps:
        if step.form == "block":
            runs.append((step, 1))
        elif _repeated_blocks(step):
            runs.extend((run.step, run.times) for run in step.runs())
    return runs


def _gathered(graph: ModelGraph, ranks: int, precision: Precision) -> tuple[Dim, int, int]:
    """FSDP's buffers while the backward pass runs, and the elements of all parameters and
    of the units' parameters, each as the ranks' padded shards together: the root's
    parameters (gathered for the whole step), the largest unit's twice (the one running
    and the next, prefetched) in the parameters' precision, and the largest unit's
    gradients in fp32 (the reduce-scatter's input)."""
    units = [(ranks * sharded_params(unit, ranks), times) for unit, times in shard_runs(graph)]
    everything = sum(ranks * sharded_params(step, ranks) for step in graph.steps)
    largest = max((elements for elements, _ in units), default=0)
    in_units = sum(elements * times for elements, times in units)
    root = everything - in_units
    buffers = float_bytes(precision) * (root + 2 * largest) + 4 * largest
    return buffers, everything, in_units


def training(
    graph: ModelGraph,
    precision: Precision = "fp32",
    optimizer: str = "adam",
    checkpointing: bool = False,
    device: Device = "cuda",
    rows: list[LayerMemory] | None = None,
    parallel: Parallel | None = None,
    batch: int = STAND_IN,
) -> Training:
    """Peak memory of a training step: see the module docstring. Without checkpointing the
    backward pass is followed layer by layer (last first): the activations of the layers
    before it are still kept, the gradients of the parameters after it are made. With
    checkpointing, everything kept is counted at once (an upper bound). ``rows``: the
    graph's :func:`activations` at ``precision`` (without weight copies under FSDP), when
    the caller has them already; else they are followed at ``batch`` (:func:`activations`:
    1, or any larger).

    ``parallel``: the memory of one of several GPUs, each with its share of the batch
    (``B`` is then the batch per GPU). Under DDP, the reducer's buckets hold a second copy
    of the gradients. Under FSDP each GPU holds its shards (:func:`shard_elements`) of the
    fp32 weights, their gradients and the optimizer's state; the parameters FSDP gathers
    (:func:`_gathered`) are alive in the backward pass, not at the optimizer step."""
    sharded = parallel is not None and parallel.strategy == "fsdp"
    ranks = parallel.ranks if parallel else 1
    trainable = sum(sharded_params(step, ranks) for step in graph.steps)
    if rows is None:
        rows = activations(graph, precision, weight_copies=not sharded, batch=batch)
    states, foreach, per_tensor = OPTIMIZERS[optimizer]
    if device == "cuda":
        step: Dim = 4 * foreach * trainable
    else:
        largest = max(
            (
                shard_elements(s, ranks)
                for leaf, _ in graph.counted_leaves()
                for s in leaf.weights.values()
            ),
            default=0,
        )
        step = 4 * per_tensor * largest
    gathered: Dim = 0
    communication: dict[str, int] = {}
    if sharded:
        gathered, everything, in_units = _gathered(graph, ranks, precision)
        # ring collectives: a GPU sends (ranks - 1) shards of what is gathered or reduced;
        # the units are gathered again for the backward pass, the root stays gathered
        shard = (everything + in_units) // ranks
        communication = {
            "all-gather": float_bytes(precision) * (ranks - 1) * shard,
            "reduce-scatter": 4 * (ranks - 1) * (everything // ranks),
        }
    elif parallel is not None:
        gathered = 4 * trainable
        communication = {"all-reduce": 2 * (parallel.gpus - 1) * 4 * trainable // parallel.gpus}
    buckets = 0 if sharded else gathered
    moments = [Moment("the optimizer step", 0, 4 * trainable, step, buckets)]
    if checkpointing:
        saved = checkpointed(rows, graph.bindings, precision)
        probe = {**graph.bindings, "B": 1}
        buffers = [gradient_buffers(leaf, precision) for leaf, _ in graph.counted_leaves()]
        largest_buffers = max(buffers, key=lambda d: value_at(d, probe), default=0)
        moments.append(Moment("the backward pass", saved, 4 * trainable, largest_buffers, gathered))
    else:
        saved = total(rows)
        backward = _Backward(precision, ranks, gathered, saved)
        backward.walk(_grouped(rows), lambda path: path)
        moments += backward.moments
    return Training(
        weights=4 * (trainable + graph.buffer_count),
        gradients=4 * trainable,
        optimizer=4 * states * trainable,
        activations=saved,
        step=step,
        moments=tuple(moments),
        parallel=parallel,
        communication=communication,
    )


class _Group(Struct, frozen=False):
    """Rows of one copy of a repetition standing for ``fold``'s copies (None: the model)."""

    fold: tuple[str, int, int] | None
    items: list[LayerMemory | _Group] = field(default_factory=list)


def _grouped(rows: list[LayerMemory]) -> list[LayerMemory | _Group]:
    """The rows as a tree of their folds (:attr:`LayerMemory.folds`)."""
    stack = [_Group(None)]
    for row in rows:
        depth = 0  # the groups open around the row
        while (
            depth < len(stack) - 1
            and depth < len(row.folds)
            and stack[depth + 1].fold == row.folds[depth]
        ):
            depth += 1
        del stack[depth + 1 :]
        for fold in row.folds[depth:]:
            group = _Group(fold)
            stack[-1].items.append(group)
            stack.append(group)
        stack[-1].items.append(row)
    return stack[0].items


class _Backward(Struct, frozen=False):
    """The moments of the backward pass, layer by layer, last first: the activations of the
    layers before the one running are kept, the gradients of the parameters after it are
    made. Over a run of alike copies both change by the same amounts from copy to copy, so
    every total lies between those of the run's last and first copies: the moments of
    those two copies are the run's (the others are skipped, their figures added)."""

    precision: Precision
    ranks: int
    gathered: Dim
    kept: Dim
    made: Dim = 0
    moments: list[Moment] = field(default_factory=list)

    def walk(self, items: list[LayerMemory | _Group], rename: Callable[[str], str]) -> None:
        for item in reversed(items):
            if isinstance(item, LayerMemory):
                assert item.step is not None
                self.made += 4 * sharded_params(item.step, self.ranks)
                buffers = gradient_buffers(item.step, self.precision)
                self.moments.append(
                    Moment(rename(item.path), self.kept, self.made, buffers, self.gathered)
                )
                self.kept = self.kept - item.saved
                continue
            assert item.fold is not None
            repetition, first, copies = item.fold
            own, last = f"{repetition}.{first}", f"{repetition}.{first + copies - 1}"

            def to_last(path: str, own: str = own, last: str = last) -> str:
                return rename(last + path[len(own) :] if path.startswith(own) else path)

            self.walk(item.items, to_last)
            if copies > 2:
                saved, params = self.figures(item.items)
                self.kept = self.kept - saved * (copies - 2)
                self.made += params * (copies - 2)
            if copies > 1:
                self.walk(item.items, rename)

    def figures(self, items: list[LayerMemory | _Group]) -> tuple[Dim, int]:
        """The saved bytes and parameter-gradient bytes of one copy."""
        saved: Dim = 0
        params = 0
        for item in items:
            if isinstance(item, LayerMemory):
                assert item.step is not None
                saved = saved + item.saved
                params += 4 * sharded_params(item.step, self.ranks)
            else:
                assert item.fold is not None
                inner_saved, inner_params = self.figures(item.items)
                saved = saved + inner_saved * item.fold[2]
                params += inner_params * item.fold[2]
        return saved, params


def train_flops(graph: ModelGraph, checkpointing: bool = False) -> Dim:
    """FLOPs of one training step per sample: 2 per MAC forward, twice that backward (the
    gradients of the inputs and of the weights), and with checkpointing a second forward."""
    return (8 if checkpointing else 6) * graph.total_macs


def parse_bytes(text: str) -> int:
    """A size as specs write one: ``24GiB`` (powers of 1024: KiB, MiB, GiB, TiB), ``80GB``
    (powers of 1000: KB, MB, GB, TB), ``1.5TiB``, or plain bytes. Raises ValueError for
    anything else, or for less than 1 byte."""
    written = text.strip().replace(" ", "")
    match = re.fullmatch(r"(\d[\d_]*(\.\d+)?)([KMGT]i?B)?", written)
    if match is None:
        raise ValueError(
            f"expected a size such as 24GiB or 80GB (KiB, MiB, GiB, TiB or KB, MB, GB, TB), "
            f"got {text!r}"
        )
    value = parse_number(written)
    if value < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


class Plan(Struct):
    """The answer of ``dlspec plan``: the largest batch that fits a memory budget (and the
    breakdown there), or by how much batch 1 misses it."""

    budget: int
    memory: Training  # formulas in B
    bindings: dict[str, int]
    max_batch: int  # 0: batch 1 does not fit
    batch: int  # where the breakdown is evaluated: the largest batch, or the one asked for
    flops: Dim  # per sample per step

    def bytes(self, batch: int | None = None, **symbols: int) -> dict[str, int]:
        """The parts and total at ``batch`` (default: the plan's) and the bindings."""
        at = {**self.bindings, **symbols, "B": self.batch if batch is None else batch}
        return self.memory.bytes(at)

    def total(self, batch: int | None = None, **symbols: int) -> int:
        return self.bytes(batch, **symbols)["total"]

    @property
    def per_sample(self) -> int:
        """The activations one sample keeps for the backward pass."""
        saved = self.memory.activations
        at = self.bindings
        return value_at(saved, {**at, "B": 1}) - value_at(saved, {**at, "B": 0})

    def peak(self, batch: int | None = None) -> str:
        """Where the step peaks at ``batch`` (default: the plan's)."""
        at = {**self.bindings, "B": self.batch if batch is None else batch}
        return self.memory.peak(at)[0]


def _largest(fits: Callable[[int], bool]) -> int:
    """The largest n >= 1 with ``fits(n)`` for a monotone ``fits`` (0 if none, capped)."""
    low, high = 0, 1
    while fits(high) and high < 2**40:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def plan(
    graph: ModelGraph,
    budget: int,
    precision: Precision = "fp32",
    optimizer: str = "adam",
    checkpointing: bool = False,
    batch: int | None = None,
    device: Device = "cuda",
    parallel: Parallel | None = None,
) -> Plan:
    """Memory grows with the batch (linearly, up to the optimizer step's fixed share): the
    largest batch is found by bisection on the formulas. ``parallel``: one of several GPUs,
    ``batch`` and the largest batch per GPU."""
    memory = training(graph, precision, optimizer, checkpointing, device, parallel=parallel)
    flops = train_flops(graph, checkpointing)
    probe = Plan(budget, memory, dict(graph.bindings), 0, 1, flops)
    largest = _largest(lambda b: probe.total(b) <= budget)
    return replace(probe, max_batch=largest, batch=batch or max(largest, 1))


def fewest_gpus(
    graph: ModelGraph,
    budget: int,
    strategy: Strategy,
    precision: Precision = "fp32",
    optimizer: str = "adam",
    checkpointing: bool = False,
    device: Device = "cuda",
) -> int:
    """The fewest GPUs on which batch 1 per GPU fits ``budget`` with ``strategy`` (FSDP's
    share shrinks with more GPUs; DDP's does not), or 0 when none up to 2**16 do."""
    rows = activations(graph, precision, weight_copies=strategy != "fsdp", batch=1)
    options = (precision, optimizer, checkpointing, device, rows)

    def fits(gpus: int) -> bool:
        memory = training(graph, *options, parallel=Parallel(gpus, strategy))
        return memory.bytes({**graph.bindings, "B": 1})["total"] <= budget

    if fits(1):
        return 1
    if strategy == "ddp" or not fits(2**16):
        return 0
    low, high = 1, 2**16  # fits(high), not fits(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def max_length(answer: Plan, symbol: str, limits: list[tuple[Dim, int, str]]) -> tuple[int, str]:
    """The largest value of a symbolic dimension that fits the budget at the plan's batch
    (the other dimensions at their bindings) and obeys every layer's limit on it (0 when
    even 1 does not fit), and what stops it there: "memory" or the limit's description."""

    def stop(value: int) -> str | None:
        at = {**answer.bindings, symbol: value}
        for dim, limit, what in limits:
            if value_at(dim, at) > limit:
                return what
        return "memory" if answer.total(**{symbol: value}) > answer.budget else None

    largest = _largest(lambda value: stop(value) is None)
    return largest, stop(largest + 1) or "memory"


class Options(Struct):
    """How a model is trained, for its memory: ``expect total train_memory(...)``'s arguments
    and ``dlspec plan``'s options."""

    batch: int = 1
    precision: Precision = "fp32"
    optimizer: str = "adam"
    checkpointing: bool = False
    device: Device = "cuda"
    gpus: int = 1  # with strategy: the memory of one of them, at batch per GPU
    strategy: Strategy | None = None

    def describe(self) -> str:
        parts = [f"batch {self.batch:,}", self.device, self.precision, self.optimizer]
        if self.parallel is not None:
            parts[0] += " per GPU"
            parts.append(self.parallel.describe())
        return ", ".join(parts + ["checkpointing"] * self.checkpointing)

    @property
    def parallel(self) -> Parallel | None:
        """Several GPUs: with a strategy (FSDP unless said, for gpus > 1), else None."""
        if self.strategy is None and self.gpus == 1:
            return None
        return Parallel(self.gpus, self.strategy or "fsdp")


CHOICES: dict[str, tuple[object, ...]] = {
    "precision": PRECISIONS,
    "optimizer": tuple(OPTIMIZERS),
    "device": DEVICES,
    "checkpointing": (True, False),
    "strategy": STRATEGIES,
}


def options(values: dict[str, object]) -> Options:
    """Options from written values; ValueError (naming the argument) for a bad one."""
    for name, value in values.items():
        if name in ("batch", "gpus"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        elif name in CHOICES:
            if value not in CHOICES[name] or isinstance(value, bool) != (name == "checkpointing"):
                listed = ", ".join(repr(c).replace("'", '"') for c in CHOICES[name])
                raise ValueError(f"{name} must be one of {listed}, got {value!r}")
        else:
            listed = ", ".join(CHOICES)
            raise ValueError(f"no argument {name!r}; arguments: batch, gpus, {listed}")
    return Options(**values)  # type: ignore[arg-type]


def train_bytes(graph: ModelGraph, chosen: Options) -> dict[str, int]:
    """The parts and total of a training step's peak for these options."""
    memory = training(
        graph,
        chosen.precision,
        chosen.optimizer,
        chosen.checkpointing,
        chosen.device,
        parallel=chosen.parallel,
        batch=chosen.batch,
    )
    return memory.bytes({**graph.bindings, "B": chosen.batch})

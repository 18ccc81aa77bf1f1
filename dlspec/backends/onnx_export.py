"""ONNX export of a spec's generated module, with its numbers verified by ONNX Runtime.

:func:`export_onnx` turns the torch module built from a spec (``Spec.to_torch()``, with
trained weights or not) into an ONNX model, in memory:

* input and output names are the spec's; axis 0 of every input and output is the dynamic
  ``batch`` axis, and every symbolic dimension (``T``) is a dynamic axis of the same name;
* the model passes ``onnx.checker``'s full check and carries metadata (``META_*`` below: the
  dlspec version, the spec's hash, the parameter count, and whatever the caller adds);
* its initializers hold the module's tensors under torch's names, each once (tied weights
  included): :func:`count_initializers` sums them against the analyzer's layout, so the
  parameter count of the file is the one ``dlspec check`` reports;
* ONNX Runtime loads it and runs it once at a batch size and sequence lengths other than the
  export's, checking the output shapes (a graph with a size baked in fails here); then,
  unless ``verify=False``, :func:`verify_session` compares it with torch on random inputs.

Exporters: torch has two, the TorchScript tracer (``dynamo=False``) and torch.export
(``dynamo=True``, torch's default). bench/export_speed.py compares them on MY_NET: the tracer
exports in a fifth of the time (0.5 s against 2.5 s in a fresh process; the whole
``dlspec export`` command takes 2.1 s against 5.4 s) and says less (2 lines against 5, all
captured here); the graphs are the same size and run equally fast in ONNX Runtime. The tracer
also turns RNN / LSTM / GRU into ONNX's own recurrent operators with a dynamic sequence
length, where torch.export fixes the length of ``nn.RNN``. Where torch's own code would have
the tracer bake a size in (``nn.MultiheadAttention``'s reshapes; InstanceNorm's running
statistics) or its symbolics refuse a layer (BatchNorm, InstanceNorm and adaptive pooling over
sizes they cannot see, PixelShuffle beyond 4-D, LSTMs with projections) or give ONNX's shape
inference a wrong size (pools in ``ceil_mode``), the functions below give the tracer code or
symbolics that keep it exact and dynamic (and dlspec's generated helpers read sizes from
tensors rather than through ``unflatten``, whose sizes the tracer fixes). So
``exporter="auto"`` uses TorchScript and falls back to dynamo when TorchScript still fails:
an export error, a model the checker or ONNX Runtime refuses, or the run at other sizes
failing. The TorchScript path
keeps weights as the module holds them: no BatchNorm folding and no constant folding (ONNX
Runtime does both when it loads the model), and initializers shared by identity only, not
merged because their values are equal (fresh LayerNorm weights all are). The dynamo path runs
without torch's ONNX optimizer, which renames and folds weights, for the same reason.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dlspec import __version__
from dlspec.analysis.graph import ModelGraph
from dlspec.backends.runtime import Device, RuntimeSetupError, Session
from dlspec.layers.symbolic import Dim, Poly, value_at

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "MAX_OPSET",
    "META_BINDINGS",
    "META_CLASSES",
    "META_HASH",
    "META_INDEX_LIMIT",
    "META_MODEL",
    "META_NORMALIZE",
    "META_PARAMETERS",
    "META_PARAMS",
    "META_PRECISION",
    "META_SPEC",
    "META_VERSION",
    "META_WEIGHTS",
    "MIN_OPSET",
    "RTOL",
    "Comparison",
    "ExportError",
    "ExportResult",
    "Exporter",
    "InitializerCount",
    "count_initializers",
    "export_onnx",
    "index_limit",
    "sample_inputs",
    "sequence_lengths",
    "verify_session",
]

Exporter = Literal["auto", "torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("auto", "torchscript", "dynamo")
_NAMES = {"torchscript": "TorchScript", "dynamo": "dynamo"}

DEFAULT_OPSET = 18  # torch.export's own opset; the TorchScript exporter goes up to 20
MIN_OPSET, MAX_OPSET = 7, 23  # what torch.onnx accepts

#: Relative tolerance of the verification, per precision. ONNX Runtime's output ``y`` passes
#: against torch's fp32 output ``r`` when ``|y - r| <= rtol * (|r| + max(max|r|, 1))``
#: elementwise: ``numpy.allclose(y, r, rtol, atol=rtol * max(max|r|, 1))``, an absolute floor
#: scaled to the output's magnitude so that entries near zero are not held to a relative
#: bound, and at least ``rtol``: inputs are N(0, 1), so the sums behind an output that
#: cancels out to nearly 0 still carry rounding errors of unit-scale numbers.
RTOL = {"fp32": 1e-5, "fp16": 1e-2}

META_VERSION = "dlspec.version"
META_HASH = "dlspec.spec_hash"
META_PARAMETERS = "dlspec.parameters"  # trainable parameters held by the initializers
META_MODEL = "dlspec.model"
META_EXPORTER = "dlspec.exporter"
META_PRECISION = "dlspec.precision"
META_BINDINGS = "dlspec.bindings"  # JSON {symbol: the spec's length}, for random inputs
META_INDEX_LIMIT = "dlspec.index_limit"  # token ids are < this (models with long inputs)
META_SPEC = "dlspec.spec"  # the spec's path, as given to `dlspec export`
META_PARAMS = "dlspec.params"  # JSON of the model parameters (after --set)
META_WEIGHTS = "dlspec.weights"  # where the weights came from
META_CLASSES = "dlspec.classes"  # JSON list of class names, when known
META_NORMALIZE = "dlspec.normalize"  # JSON {"mean": ..., "std": ...} applied before the model

EXPORT_BATCH = 2  # batch 1 would let a tracer treat the batch axis as a broadcastable 1
PROBE_BATCH = 3  # the batch size of the run that checks the dynamic axes
VERIFY_BATCHES = (1, 3)
DRAWS = 2  # random inputs per batch size and sequence length
_PROTOBUF_LIMIT = 2**31 - 2**26  # a model proto must stay under 2 GiB, with room to spare


class ExportError(Exception):
    """An export that cannot be done, or that did not verify; the message says why."""


@dataclass(frozen=True)
class InitializerCount:
    """The elements held by an ONNX model's initializers, by what they are in the module."""

    parameters: int  # trainable parameters (a tied weight counted once)
    buffers: int  # buffers the graph uses (BatchNorm running statistics, position tables)
    other: int  # tensors the exporter made (shape constants and the like)
    missing: tuple[str, ...] = ()  # parameters of the layout that no initializer holds


@dataclass(frozen=True)
class Comparison:
    """ONNX Runtime against torch on one random input."""

    batch: int
    lengths: dict[str, int]  # symbolic dimension -> length used
    max_abs: float  # largest |onnx - torch| over the outputs
    max_rel: float  # max_abs relative to the largest |torch| of that output
    passed: bool


@dataclass
class ExportResult:
    """An exported model and what was found on the way."""

    data: bytes  # the serialized ModelProto
    exporter: str  # "TorchScript" or "dynamo"
    opset: int
    precision: Literal["fp32", "fp16"]
    initializers: InitializerCount
    export_seconds: float  # exporting, checking and the run at other sizes, fallback included
    provider: str  # where ONNX Runtime ran: "CPU" or "CUDA"
    notice: str | None = None  # ONNX Runtime's one-line note (e.g. no CUDA)
    fallback: str | None = None  # why TorchScript was not used, under exporter="auto"
    comparisons: list[Comparison] = field(default_factory=list)  # empty: not verified
    verify_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what the exporter printed or warned

    @property
    def rtol(self) -> float:
        return RTOL[self.precision]


# inputs ---------------------------------------------------------------------------------------


def index_limit(graph: ModelGraph) -> int:
    """The exclusive upper bound of token ids that every layer reading a long tensor accepts
    (:meth:`Layer.index_limit`: an Embedding's vocabulary), so that random ids are valid for
    any long input; 1 (only id 0) when no such layer states a bound."""
    limits = []
    for leaf in graph.leaves():
        if leaf.layer is not None and any(t.type.dtype == "long" for t in leaf.inputs):
            limit = leaf.layer.index_limit()
            if limit is not None:
                limits.append(limit)
    return min(limits, default=1)


def sequence_lengths(graph: ModelGraph) -> list[dict[str, int]]:
    """The symbolic-dimension values to test: the spec's, and half of them (at least 1). A
    model without symbolic dimensions gets one empty set."""
    half = {name: max(1, value // 2) for name, value in graph.bindings.items()}
    return [dict(graph.bindings), half] if half != graph.bindings else [dict(graph.bindings)]


def sample_inputs(
    graph: ModelGraph,
    batch: int,
    lengths: Mapping[str, int],
    generator: torch.Generator,
    *,
    half: bool = False,
) -> dict[str, torch.Tensor]:
    """Random inputs for the model, by input name: float inputs from N(0, 1) (fp16 with
    ``half``), long inputs uniform over the valid token ids (:func:`index_limit`)."""
    import torch

    limit = index_limit(graph)
    inputs = {}
    for node in graph.inputs:
        shape = (batch, *(value_at(d, lengths) for d in node.type.shape))
        if node.type.dtype == "long":
            inputs[node.name] = torch.randint(0, limit, shape, generator=generator)
        else:
            x = torch.randn(shape, generator=generator)
            inputs[node.name] = x.half() if half else x
    return inputs


def _shape_text(batch: int, lengths: Mapping[str, int]) -> str:
    return ", ".join([f"batch {batch}", *(f"{k}={v}" for k, v in lengths.items())])


# counting -------------------------------------------------------------------------------------


def count_initializers(model: onnx.ModelProto, graph: ModelGraph) -> InitializerCount:
    """Sum an ONNX model's initializers against the analyzer's layout, by torch's names
    (``conv1.weight``): those naming a weight are parameters (a weight tied to another is
    counted once, under whichever name the exporter kept), those naming a buffer are buffers,
    the rest the exporter's own constants."""
    holds: dict[str, str] = {}  # initializer name -> the parameter it holds
    buffers: set[str] = set()
    for leaf in graph.leaves():
        for name in leaf.weights:
            holds[f"{leaf.path}.{name}"] = leaf.tied.get(name, f"{leaf.path}.{name}")
        buffers.update(f"{leaf.path}.{name}" for name in leaf.buffers)
    seen: set[str] = set()
    parameters = buffer_count = other = 0
    for initializer in model.graph.initializer:
        size = math.prod(initializer.dims)
        if initializer.name in holds:
            parameter = holds[initializer.name]
            parameters += 0 if parameter in seen else size
            seen.add(parameter)
        elif initializer.name in buffers:
            buffer_count += size
        else:
            other += size
    missing = tuple(sorted(set(holds.values()) - seen))
    return InitializerCount(parameters, buffer_count, other, missing)


# exporting ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured(messages: list[str]) -> Iterator[None]:
    """Collect what the exporters warn, log and print, Python and C++ alike (one entry per
    line), instead of letting it reach the console."""
    streams = io.StringIO()
    with (
        tempfile.TemporaryFile() as sink,
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(streams),
        contextlib.redirect_stderr(streams),
    ):
        warnings.simplefilter("always")
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            text = sink.read().decode(errors="replace") + streams.getvalue()
            messages.extend(str(w.message).strip().split("\n")[0] for w in caught)
            messages.extend(line for line in text.splitlines() if line.strip())


def _axis_name(dim: Dim) -> str | None:
    return str(dim) if isinstance(dim, Poly) else None


def _dynamic_axes(graph: ModelGraph) -> dict[str, dict[int, str]]:
    """TorchScript's ``dynamic_axes``: batch, and each symbolic dimension under its formula."""
    tensors = [(i.name, i.type.shape) for i in graph.inputs]
    tensors += [(o.name, o.type.shape) for o in graph.outputs]
    axes = {}
    for name, shape in tensors:
        named = {axis + 1: _axis_name(d) for axis, d in enumerate(shape)}
        axes[name] = {0: "batch", **{k: v for k, v in named.items() if v is not None}}
    return axes


def _dynamic_shapes(graph: ModelGraph) -> tuple[dict[int, object], ...]:
    """torch.export's ``dynamic_shapes``, one dict per input: a Dim per symbol (shared between
    inputs), ``Dim.AUTO`` for a formula such as ``2*T``."""
    from torch.export import Dim as ExportDim

    dims: dict[str, object] = {"batch": ExportDim("batch")}
    shapes = []
    for node in graph.inputs:
        spec: dict[int, object] = {0: dims["batch"]}
        for axis, d in enumerate(node.type.shape, start=1):
            if isinstance(d, Poly):
                name = str(d)
                plain = d == Poly.symbol(name)
                spec[axis] = dims.setdefault(name, ExportDim(name)) if plain else ExportDim.AUTO
        shapes.append(spec)
    return tuple(shapes)


@contextlib.contextmanager
def _shared_by_identity(model: nn.Module) -> Iterator[None]:
    """The TorchScript exporter merges initializers with equal values unless the top module
    says it is training (then it merges only tensors that are the same object), and folds
    BatchNorm into convolutions in its eval mode. With the flag set on the top module alone
    (``TrainingMode.PRESERVE``), every submodule stays in eval mode: dropout off, BatchNorm on
    its running statistics, and each weight kept under its own name."""
    model.training = True
    try:
        yield
    finally:
        model.training = False


@contextlib.contextmanager
def _traceable_attention(model: nn.Module) -> Iterator[None]:
    """Every ``nn.MultiheadAttention`` of ``model`` computes its output, while the TorchScript
    tracer records it, without the reshapes torch's own forward writes with the product of the
    batch and the sequence length (``reshape(tgt_len * bsz, E)``): a product of two traced
    sizes is a Python int, which the trace keeps as a constant, so the file would run at the
    exported length only. Here the heads are split and merged by reshapes that read the batch
    from the tensor and leave the length to -1, and the scores are
    ``scaled_dot_product_attention``'s, as in torch's forward without attention weights. The
    cases that forward handles otherwise (attention weights, bias_k/v, zero attention,
    unbatched inputs, dropout in training) keep torch's own forward. A key padding mask is
    added to the attention mask as torch's forward adds it, the causal hint then dropped for
    the mask it stands beside."""
    from torch import nn

    modules = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    for module in modules:
        module.forward = partial(_attention, module)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def _attention(
    m: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` as :func:`_traceable_attention` traces it."""
    import torch.nn.functional as F
    from torch import nn

    torch_own = (
        need_weights
        or m.bias_k is not None
        or m.add_zero_attn
        or query.dim() != 3
        or (m.training and m.dropout > 0)
    )
    if torch_own:
        return nn.MultiheadAttention.forward(
            m,
            query,
            key,
            value,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
        )
    if not m.batch_first:  # (T, B, E) -> (B, T, E)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if m._qkv_same_embed_dim:
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b_q, b_k, b_v = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.chunk(3)

    def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # (B, L, E) -> (B, heads, L, E / heads): the batch read from the tensor, the length
        # left to the reshape (``unflatten`` would write the sizes the trace saw)
        y = F.linear(x, w, b)
        return y.reshape(y.size(0), -1, m.num_heads, m.head_dim).transpose(1, 2)

    mask = None
    if key_padding_mask is not None:  # torch's forward then uses the mask, not the hint
        is_causal = False
    if not is_causal:  # torch's forward drops a causal hint's mask and lets SDPA make it
        mask = F._canonical_mask(
            mask=attn_mask,
            mask_name="attn_mask",
            other_type=None,
            other_name="",
            target_type=query.dtype,
            check_other=False,
        )
        if mask is not None and mask.dim() == 3:  # (B * heads, T, S) -> (B, heads, T, S)
            mask = mask.reshape(-1, m.num_heads, mask.size(1), mask.size(2))
    if key_padding_mask is not None:  # (B, S) -> (B, 1, 1, S), added to the mask
        padding: torch.Tensor = F._canonical_mask(  # type: ignore[assignment]  # not None
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=None,
            other_name="",
            target_type=query.dtype,
        )
        padding = padding.reshape(padding.size(0), 1, 1, -1)
        mask = padding if mask is None else mask + padding
    out = F.scaled_dot_product_attention(
        heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v), mask, 0.0, is_causal
    )
    out = out.transpose(1, 2)  # (B, T, heads, E / heads) -> (B, T, E)
    out = F.linear(out.reshape(out.size(0), -1, m.embed_dim), m.out_proj.weight, m.out_proj.bias)
    return (out if m.batch_first else out.transpose(0, 1)), None


def _reduce(g: Any, op: str, x: Any, axes: list[int], keep: bool = True) -> Any:
    """ONNX reduction ``op`` (ReduceMean, ReduceMax) of ``x`` over ``axes`` (axes became an
    input in opset 18)."""

    if g.opset >= 18:
        return g.op(op, x, _int64_constant(g, axes), keepdims_i=int(keep))
    return g.op(op, x, axes_i=axes, keepdims_i=int(keep))


def _reduce_mean(g: Any, x: Any, axes: list[int]) -> Any:
    """ONNX ReduceMean of ``x`` over ``axes``, keeping them."""
    return _reduce(g, "ReduceMean", x, axes)


def _float_type(x: Any) -> torch.dtype:
    """The torch dtype of a TorchScript value: float16 or float32."""
    import torch

    return torch.float16 if x.type().scalarType() == "Half" else torch.float32


@cache
def _register_rms_norm() -> None:
    """Teach the TorchScript exporter ``aten::rms_norm`` (nn.RMSNorm), which it lacks below
    ONNX's own RMSNormalization (opset 23): ``x / sqrt(mean(x^2) + eps) * weight`` over the
    normalised axes, with torch's default eps (the machine epsilon of the input's type)."""
    import torch
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "is", "v", "v")
    def rms_norm(g: Any, x: Any, shape: list[int], weight: Any, eps: Any) -> Any:
        dtype = _float_type(x)
        epsilon = (
            torch.finfo(dtype).eps
            if symbolic_helper._is_none(eps)
            else symbolic_helper._get_const(eps, "f", "eps")
        )
        mean = _reduce_mean(g, g.op("Mul", x, x), list(range(-len(shape), 0)))
        shifted = g.op("Add", mean, g.op("Constant", value_t=torch.tensor(epsilon, dtype=dtype)))
        out = g.op("Div", x, g.op("Sqrt", shifted))
        return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", rms_norm, MIN_OPSET)


@cache
def _register_batch_norm() -> None:
    """Teach the TorchScript exporter ``aten::batch_norm`` over inputs whose batch or channel
    size it does not know (after a reshape to a symbolic length, say). torch's own symbolic
    builds a missing weight or bias (``affine=False``) as a constant of the channel size, and
    the batch statistics of a BatchNorm without running statistics
    (``track_running_stats=False``) through a reshape to the batch and channel sizes, so it
    refuses such inputs. Here a missing weight or bias takes its shape from the running mean,
    and batch statistics are means over every axis but the channels' (torch normalises by the
    biased variance), which needs only the input's rank. Where torch's symbolic can export
    the layer, it does."""
    import torch
    from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset14

    def batch_norm(
        g: Any,
        x: Any,
        weight: Any,
        bias: Any,
        mean: Any,
        var: Any,
        training: Any,
        momentum: Any,
        eps: Any,
        cudnn: Any,
    ) -> Any:
        none = symbolic_helper._is_none
        rank = symbolic_helper._get_tensor_rank(x)
        batch, channels = (symbolic_helper._get_tensor_dim_size(x, i) for i in (0, 1))
        no_stats = none(mean) or none(var)
        no_affine = none(weight) or none(bias)
        torch_can = (channels is not None or not no_affine) and (
            not no_stats or (batch is not None and channels is not None)
        )
        in_training = not no_stats and symbolic_helper._maybe_get_const(training, "b")
        if torch_can or rank is None or in_training:
            torch_own = symbolic_opset14 if g.opset >= 14 else symbolic_opset9
            return torch_own.batch_norm(
                g, x, weight, bias, mean, var, training, momentum, eps, cudnn
            )
        epsilon = symbolic_helper._get_const(eps, "f", "eps")
        dtype = _float_type(x)
        if not no_stats:
            weight, bias = _affine(g, weight, bias, g.op("Shape", mean), dtype)
            return g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=epsilon)
        axes = [0, *range(2, rank)]
        centred = g.op("Sub", x, _reduce_mean(g, x, axes))
        variance = _reduce_mean(g, g.op("Mul", centred, centred), axes)
        shifted = g.op(
            "Add", variance, g.op("Constant", value_t=torch.tensor(epsilon, dtype=dtype))
        )
        out = g.op("Div", centred, g.op("Sqrt", shifted))
        spread = list(range(1, rank - 1))

        def per_channel(v: Any) -> Any:  # (C,) -> (C, 1, ...): broadcasts over (N, C, ...)
            return symbolic_helper._unsqueeze_helper(g, v, spread) if spread else v

        if not none(weight):
            out = g.op("Mul", out, per_channel(weight))
        if not none(bias):
            out = g.op("Add", out, per_channel(bias))
        return out

    _register_everywhere("aten::batch_norm", batch_norm)


def _affine(g: Any, weight: Any, bias: Any, shape: Any, dtype: torch.dtype) -> tuple[Any, Any]:
    """A normalisation's weight and bias, a missing one (``affine=False``) made as ones or
    zeros of ``shape`` (a Shape value: the channels', read at run time)."""
    import torch
    from torch.onnx import symbolic_helper

    def made(v: Any, fill: float) -> Any:
        if not symbolic_helper._is_none(v):
            return v
        return g.op("ConstantOfShape", shape, value_t=torch.tensor([fill], dtype=dtype))

    return made(weight, 1.0), made(bias, 0.0)


@cache
def _register_instance_norm() -> None:
    """Teach the TorchScript exporter ``aten::instance_norm`` over inputs whose batch or
    channel size it does not know. torch's symbolic builds a missing weight or bias
    (``affine=False``) as a constant of the channel size, and evaluates with running
    statistics (``track_running_stats=True`` in eval mode) through a reshape of the input to
    one sample of ``batch x channels``, written with the batch size of the trace (so the file
    would run at that batch only). Here a missing weight or bias takes the channel size from
    the input's shape at run time, and running statistics normalise each sample's channels
    as BatchNorm's do in inference (the same per-channel mean and variance for every
    sample), with no reshape; otherwise ONNX's InstanceNormalization."""
    from torch.onnx import symbolic_helper

    def instance_norm(
        g: Any,
        x: Any,
        weight: Any,
        bias: Any,
        mean: Any,
        var: Any,
        use_input_stats: Any,
        momentum: Any,
        eps: Any,
        cudnn: Any,
    ) -> Any:
        epsilon = symbolic_helper._get_const(eps, "f", "eps")
        dtype = _float_type(x)
        if symbolic_helper._get_const(use_input_stats, "b", "use_input_stats"):
            channels = symbolic_helper._slice_helper(
                g, g.op("Shape", x), axes=[0], starts=[1], ends=[2]
            )
            weight, bias = _affine(g, weight, bias, channels, dtype)
            return g.op("InstanceNormalization", x, weight, bias, epsilon_f=epsilon)
        weight, bias = _affine(g, weight, bias, g.op("Shape", mean), dtype)
        return g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=epsilon)

    _register_everywhere("aten::instance_norm", instance_norm)


def _int64_constant(g: Any, v: int | list[int]) -> Any:
    import torch

    return g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))


def _cells(g: Any, x: Any, axis: int, out: int) -> tuple[Any, Any, Any]:
    """The length ``n`` of ``x``'s ``axis`` (negative), read at run time, and the bounds of
    adaptive pooling's ``out`` cells along it, as torch takes them: cell ``i`` covers
    ``[floor(i n / out), ceil((i + 1) n / out))``; ``(n, starts, ends)``."""

    def const(v: int | list[int]) -> Any:
        return _int64_constant(g, v)

    n = g.op("Gather", g.op("Shape", x), const(axis))
    start = g.op("Div", g.op("Mul", const(list(range(out))), n), const(out))
    after = g.op("Mul", const(list(range(1, out + 1))), n)
    end = g.op("Div", g.op("Add", after, const(out - 1)), const(out))
    return n, start, end


def _adaptive_mean(g: Any, x: Any, axis: int, out: int) -> Any:
    """Adaptive average pooling of ``x`` to ``out`` cells along ``axis`` (negative), as torch
    does it (:func:`_cells`). Each sum is a difference of two cumulative sums gathered at the
    cell's bounds."""

    def const(v: int | list[int]) -> Any:
        return _int64_constant(g, v)

    _, start, end = _cells(g, x, axis, out)
    upto_end = g.op("CumSum", x, const(axis))  # sum of x[: k + 1]
    before_start = g.op("CumSum", x, const(axis), exclusive_i=1)  # sum of x[:k]
    sums = g.op(
        "Sub",
        g.op("Gather", upto_end, g.op("Sub", end, const(1)), axis_i=axis),
        g.op("Gather", before_start, start, axis_i=axis),
    )
    count = g.op("Reshape", g.op("Sub", end, start), const([out] + [1] * (-axis - 1)))
    count = g.op("CastLike", count, x) if g.opset >= 15 else g.op("Cast", count, to_i=1)
    return g.op("Div", sums, count)


def _adaptive_max(g: Any, x: Any, axis: int, out: int) -> Any:
    """Adaptive max pooling of ``x`` to ``out`` cells along ``axis`` (negative), as torch
    does it (:func:`_cells`): every cell at once, over a new axis of ``out`` cells before
    ``axis``, as the maximum of ``x`` with the positions outside the cell set to -inf (a
    cell is never empty)."""

    def const(v: int | list[int]) -> Any:
        return _int64_constant(g, v)

    n, start, end = _cells(g, x, axis, out)
    positions = g.op("Unsqueeze", g.op("Range", const(0), n, const(1)), const([0]))  # (1, n)
    column = const([out, 1])
    inside = g.op(
        "And",
        g.op("Not", g.op("Less", positions, g.op("Reshape", start, column))),
        g.op("Less", positions, g.op("Reshape", end, column)),
    )  # (out, n): position k in cell i
    rest = -axis - 1  # the axes after the pooled one
    inside = g.op("Reshape", inside, const([out, -1] + [1] * rest))
    spread = g.op("Unsqueeze", x, const([axis - 1]))  # (..., 1, n, *rest)
    low = _scalar(g, x, -math.inf)
    return _reduce(g, "ReduceMax", g.op("Where", inside, spread, low), [axis], keep=False)


@cache
def _register_adaptive_pools() -> None:
    """Teach the TorchScript exporter adaptive average and max pooling where an input size is
    not a multiple of the output size, or is not known to it: torch's symbolics export only a
    pool of a fixed kernel (or a global one). Where they can, they do; otherwise the pooling is
    :func:`_adaptive_mean` or :func:`_adaptive_max` along each pooled axis (max without the
    indices, which a module built without ``return_indices`` does not return)."""
    from torch.onnx import OnnxExporterError, symbolic_helper, symbolic_opset9

    def symbolic(name: str, along: Callable[..., Any], indices: bool) -> Callable[..., Any]:
        torch_own = getattr(symbolic_opset9, name)

        def adaptive_pool(g: Any, x: Any, output_size: Any) -> Any:
            try:
                return torch_own(g, x, output_size)
            except OnnxExporterError:
                sizes = symbolic_helper._parse_arg(output_size, "is")
                for k, size in enumerate(sizes):
                    x = along(g, x, k - len(sizes), size)
                return (x, None) if indices else x

        return adaptive_pool

    for dims in (1, 2, 3):
        for kind, along, indices in (("avg", _adaptive_mean, False), ("max", _adaptive_max, True)):
            name = f"adaptive_{kind}_pool{dims}d"
            _register_everywhere(f"aten::{name}", symbolic(name, along, indices))


@cache
def _register_pools() -> None:
    """Export torch's average and max pools as torch computes them, where its symbolics do
    not (opset 10 on; below, torch's pads the input instead).

    ``ceil_mode``: where torch drops a last window that would start in the right padding,
    ONNX Runtime drops it too, but ONNX's shape inference counts it: a layer after the pool
    with a weight over that axis (a Linear) fails the checker's and ONNX Runtime's inference
    at load time, and ONNX Runtime's memory planner, trusting the inferred size, may hand
    the pool's output buffer to a tensor of that size, which fails at run time. Where torch
    drops the window on every axis where ceil adds one, it keeps the windows floor mode
    keeps (the same windows, each inside the padded input, so the same divisors too): the
    pool is exported in floor mode. Where it keeps some, or the sizes are unknown here, the
    pool is made by hand (:func:`_ceil_pool`).

    ``divisor_override``, which torch's symbolic drops: where every window lies inside the
    padded input, the mean of its k elements times k over the divisor; elsewhere by hand."""
    from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset10

    from dlspec.layers.base import window_out

    def symbolic(kind: str, dims: int) -> Callable[..., Any]:
        name = f"{kind}_pool{dims}d"
        at = 0 if kind == "avg" else 1  # ceil_mode's place after padding
        make = (
            symbolic_opset10._avg_pool(name, dims)
            if kind == "avg"
            else symbolic_opset10._max_pool(name, dims, return_indices=False)
        )

        def pool(g: Any, x: Any, kernel: Any, stride: Any, padding: Any, *rest: Any) -> Any:
            if g.opset < 10:
                return getattr(symbolic_opset9, name)(g, x, kernel, stride, padding, *rest)
            sizes = symbolic_helper._get_tensor_sizes(x) or [None] * (dims + 2)
            ceil = symbolic_helper._parse_arg(rest[at], "i")
            divisor = (
                symbolic_helper._parse_arg(rest[2], "i")
                if kind == "avg" and len(rest) > 2 and not symbolic_helper._is_none(rest[2])
                else None
            )
            dilation = [1] if kind == "avg" else symbolic_helper._parse_arg(rest[0], "is")
            k, s, p = (symbolic_helper._parse_arg(v, "is") for v in (kernel, stride, padding))
            k, s, p, d = (v * dims if len(v) == 1 else v for v in (k, s or k, p, dilation))
            inside = kept_as_counted = True
            for axis, size in enumerate(sizes[2:]):
                if size is None:
                    inside = kept_as_counted = False
                    continue
                span = d[axis] * (k[axis] - 1) + 1
                floor = (size + 2 * p[axis] - span) // s[axis] + 1
                counted = -(-(size + 2 * p[axis] - span) // s[axis]) + 1  # ONNX's inference
                kept = window_out(size, k[axis], s[axis], p[axis], d[axis], "", ceil_mode=ceil)
                inside = inside and kept == floor
                kept_as_counted = kept_as_counted and kept == counted
            if not ceil or inside:  # floor mode's windows: the divisor scales their means
                rest = (*rest[:at], False, *rest[at + 1 :])
                if divisor:
                    mean = make(g, x, kernel, stride, padding, False, True, None)
                    return g.op("Mul", mean, _scalar(g, x, math.prod(k) / divisor))
                return make(g, x, kernel, stride, padding, *rest)
            if kept_as_counted and not divisor:
                return make(g, x, kernel, stride, padding, *rest)
            if g.opset < 12:  # Min of int64 counts
                raise RuntimeError(f"{name} in ceil_mode needs opset 12 here")
            include_pad = kind == "avg" and bool(symbolic_helper._parse_arg(rest[1], "i"))
            return _ceil_pool(g, x, kind, (k, s, p, d), include_pad, divisor)

        return pool

    for kind in ("avg", "max"):
        for dims in (1, 2, 3):
            _register_everywhere(f"aten::{kind}_pool{dims}d", symbolic(kind, dims))


def _scalar(g: Any, x: Any, value: float) -> Any:
    """A constant of ``x``'s float type."""
    import torch

    return g.op("Constant", value_t=torch.tensor(value, dtype=_float_type(x)))


def _ceil_pool(
    g: Any,
    x: Any,
    kind: str,
    window: tuple[list[int], list[int], list[int], list[int]],
    include_pad: bool,
    divisor: int | None,
) -> Any:
    """A pool in ceil mode as torch computes it, at any size, from ops whose sizes ONNX's
    inference gets right: floor mode over the input padded on the right by ``stride - 1``
    more (ceil mode's windows, the last one torch may drop included), then a Slice to
    ``min(that count, ceil((size + padding) / stride))`` windows per axis (torch's count: no
    window starts in the right padding), read at run time. An average is each window's sum
    (over zeros) over torch's divisor: ``divisor_override``, or the sum over the window of a
    mask of the elements torch counts (the input, and the padding with
    ``count_include_pad``; never the part of a last window past the padding)."""
    import torch

    k, s, p, d = window
    dims = len(k)
    extra = [pi + si - 1 for pi, si in zip(p, s, strict=True)]

    def padded(v: Any, value: Any, left: list[int], right: list[int]) -> Any:
        return g.op("Pad", v, _int64_constant(g, [0, 0, *left, 0, 0, *right]), value)

    def floor_pool(v: Any, op: str) -> Any:
        attrs = {"dilations_i": d} if op == "MaxPool" else {"count_include_pad_i": 1}
        return g.op(op, v, kernel_shape_i=k, strides_i=s, pads_i=[0] * 2 * dims, **attrs)

    if kind == "max":
        out = floor_pool(padded(x, _scalar(g, x, -math.inf), p, extra), "MaxPool")
    else:
        area = _scalar(g, x, math.prod(k))
        sums = g.op("Mul", floor_pool(padded(x, _scalar(g, x, 0.0), p, extra), "AveragePool"), area)
        if divisor:
            out = g.op("Div", sums, _scalar(g, x, divisor))
        else:
            first = g.op(
                "Slice",
                x,
                _int64_constant(g, [0]),
                _int64_constant(g, [1]),
                _int64_constant(g, [1]),
            )
            one = torch.ones(1, dtype=_float_type(x))
            ones = g.op("ConstantOfShape", g.op("Shape", first), value_t=one)
            counted = padded(ones, _scalar(g, x, float(include_pad)), p, p)
            mask = padded(
                counted,
                _scalar(g, x, 0.0),
                [0] * dims,
                [e - pi for e, pi in zip(extra, p, strict=True)],
            )
            out = g.op("Div", sums, g.op("Mul", floor_pool(mask, "AveragePool"), area))

    def spatial(v: Any) -> Any:
        """``v``'s sizes after the batch and the channels, read at run time."""
        return g.op(
            "Slice", g.op("Shape", v), _int64_constant(g, [2]), _int64_constant(g, [2 + dims])
        )

    # the windows that start before the right padding: ceil((size + padding) / stride)
    starting = g.op(
        "Div", g.op("Add", spatial(x), _int64_constant(g, extra)), _int64_constant(g, s)
    )
    ends = g.op("Min", spatial(out), starting)
    axes = _int64_constant(g, list(range(2, 2 + dims)))
    return g.op("Slice", out, _int64_constant(g, [0] * dims), ends, axes)


@cache
def _register_pixel_shuffles() -> None:
    """Teach the TorchScript exporter PixelShuffle and PixelUnshuffle over more than the 4-D
    ``(N, C, H, W)`` its symbolics take (``[*, C, H, W]`` per sample): the leading axes are
    flattened into one, torch's symbolic moves the pixels of that 4-D tensor, and the leading
    axes come back, all read from the input's shape at run time. 4-D inputs: torch's."""
    from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset11

    def symbolic(name: str) -> Callable[[Any, Any, Any], Any]:
        def shuffle(g: Any, x: Any, factor: Any) -> Any:
            module = symbolic_opset11 if g.opset >= 11 and name == "pixel_shuffle" else None
            torch_own = getattr(module or symbolic_opset9, name)
            rank = symbolic_helper._get_tensor_rank(x)
            if rank is None or rank == 4:
                return torch_own(g, x, factor)

            def part(shape: Any, start: int, end: int) -> Any:
                return symbolic_helper._slice_helper(g, shape, axes=[0], starts=[start], ends=[end])

            shape = g.op("Shape", x)
            flat = g.op("Concat", _int64_constant(g, [-1]), part(shape, -3, rank), axis_i=0)
            moved = torch_own(g, symbolic_helper._reshape_helper(g, x, flat), factor)
            back = g.op("Concat", part(shape, 0, -3), part(g.op("Shape", moved), 1, 4), axis_i=0)
            return symbolic_helper._reshape_helper(g, moved, back)

        return shuffle

    for name in ("pixel_shuffle", "pixel_unshuffle"):
        _register_everywhere(f"aten::{name}", symbolic(name))


# torch's LSTM gates are (input, forget, cell, output), ONNX's (input, output, forget, cell):
# ONNX's gate blocks as [start, end) ranges of torch's, in units of the hidden size
LSTM_GATES = ((0, 1), (3, 4), (1, 3))


@cache
def _register_projected_lstm() -> None:
    """Teach the TorchScript exporter ``aten::lstm`` with projections (``nn.LSTM(proj_size=P)``),
    which torch's symbolic refuses. Per layer and direction torch computes the gates from
    ``W_hh h`` with ``h = W_hr m`` (``m = o * tanh(c)``, of the hidden size H), so
    ``W_hh h = (W_hh W_hr) m``: ONNX's LSTM runs over ``m`` with the recurrence
    ``W_hh W_hr`` (a MatMul of the two initializers, so the file holds the module's parameters)
    and a MatMul by ``W_hr^T`` projects its outputs and final states. Exact up to rounding
    when the initial hidden state is zero, as a module called without one makes it (``m_0 =
    0``); any other state, and packed sequences, go to torch's own symbolic (which refuses
    projections, so the export falls back to dynamo). LSTMs without projections: torch's."""
    from torch.onnx import symbolic_helper, symbolic_opset9

    def lstm(g: Any, *args: Any) -> Any:
        x, hidden, weights_v = args[:3]
        if symbolic_helper._is_tensor_list(args[3]):  # packed: dlspec never packs
            return symbolic_opset9.lstm(g, *args)
        biases, layers, _, train, bidirectional, batch_first = (
            symbolic_helper._get_const(v, "i", "") for v in args[3:9]
        )
        weights = symbolic_helper._unpack_list(weights_v)
        per = 5 if biases else 3  # w_ih, w_hh, (b_ih, b_hh,) w_hr
        dirs = 2 if bidirectional else 1
        h0, c0 = symbolic_helper._unpack_list(hidden)
        if len(weights) != layers * dirs * per or train or not _zeros(h0):
            return symbolic_opset9.lstm(g, *args)
        groups = [weights[i : i + per] for i in range(0, len(weights), per)]
        hidden_size = symbolic_helper._get_tensor_dim_size(groups[0][-1], 1)
        if hidden_size is None:
            return symbolic_opset9.lstm(g, *args)
        out = g.op("Transpose", x, perm_i=[1, 0, 2]) if batch_first else x
        h_outs, c_outs = [], []
        for layer in range(layers):
            parts = groups[layer * dirs : (layer + 1) * dirs]
            w, r, b, project = _projected_weights(g, parts, hidden_size, biases)
            c_init = c0 if layers == 1 else _rows(g, c0, layer * dirs, (layer + 1) * dirs)
            y, y_h, y_c = g.op(
                "LSTM",
                out,
                w,
                r,
                b,
                _none(g),  # sequence lengths: all full
                _none(g),  # m_0 = 0
                c_init,
                outputs=3,
                hidden_size_i=hidden_size,
                **({"direction_s": "bidirectional"} if bidirectional else {}),
            )
            y = g.op("MatMul", y, project)  # (T, dirs, B, H) @ (dirs, H, P) -> (T, dirs, B, P)
            if bidirectional:  # -> (T, B, dirs * P), torch's layout
                y = g.op("Transpose", y, perm_i=[0, 2, 1, 3])
                out = symbolic_helper._reshape_helper(
                    g, y, g.op("Constant", value_t=_int64([0, 0, -1])), allowzero=0
                )
            else:
                out = symbolic_helper._squeeze_helper(g, y, [1])
            h_outs.append(g.op("MatMul", y_h, project))  # (dirs, B, H) @ (dirs, H, P)
            c_outs.append(y_c)
        if batch_first:
            out = g.op("Transpose", out, perm_i=[1, 0, 2])
        if layers == 1:
            return out, h_outs[0], c_outs[0]
        return out, g.op("Concat", *h_outs, axis_i=0), g.op("Concat", *c_outs, axis_i=0)

    _register_everywhere("aten::lstm", lstm)


def _projected_weights(
    g: Any, parts: list[list[Any]], hidden: int, biases: bool
) -> tuple[Any, Any, Any, Any]:
    """ONNX LSTM's W, R and B for one layer's directions (``parts``: torch's w_ih, w_hh,
    (b_ih, b_hh,) w_hr each), with ``R = W_hh W_hr``, and the projections ``W_hr^T`` stacked
    as (dirs, H, P)."""
    from torch.onnx import symbolic_helper

    def gates(v: Any) -> Any:
        blocks = [_rows(g, v, start * hidden, end * hidden) for start, end in LSTM_GATES]
        return g.op("Concat", *blocks, axis_i=0)

    def stacked(values: list[Any]) -> Any:
        return g.op(
            "Concat", *(symbolic_helper._unsqueeze_helper(g, v, [0]) for v in values), axis_i=0
        )

    w = stacked([gates(part[0]) for part in parts])
    r = stacked([g.op("MatMul", gates(part[1]), part[-1]) for part in parts])
    b = (
        stacked([g.op("Concat", gates(part[2]), gates(part[3]), axis_i=0) for part in parts])
        if biases
        else _none(g)
    )
    project = stacked([g.op("Transpose", part[-1], perm_i=[1, 0]) for part in parts])
    return w, r, b, project


def _rows(g: Any, v: Any, start: int, end: int) -> Any:
    from torch.onnx import symbolic_helper

    return symbolic_helper._slice_helper(g, v, axes=[0], starts=[start], ends=[end])


def _none(g: Any) -> Any:
    """An omitted optional input of an ONNX operator."""
    from torch.onnx import symbolic_opset9

    return symbolic_opset9.unused(g)


def _int64(values: list[int]) -> torch.Tensor:
    import torch

    return torch.tensor(values, dtype=torch.int64)


def _zeros(v: Any) -> bool:
    """Whether a TorchScript value is known to be all zeros (the initial state nn.LSTM makes
    when called without one)."""
    from torch.onnx import symbolic_helper

    node = v.node()
    if node.kind() == "onnx::ConstantOfShape":
        return not node.hasAttribute("value") or not bool(node.t("value").any())
    if node.kind() == "onnx::Constant":
        return not bool(symbolic_helper._node_get(node, "value").any())
    return False


def _register_everywhere(name: str, symbolic: Callable[..., Any]) -> None:
    """Register ``symbolic`` for operator ``name`` in every opset: a registration holds from
    its opset up to the next one that torch registers its own symbolic in."""
    import torch

    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)


def _export_torchscript(
    model: nn.Module, graph: ModelGraph, args: tuple[torch.Tensor, ...], opset: int
) -> onnx.ModelProto:
    import onnx
    import torch

    _register_rms_norm()
    _register_batch_norm()
    _register_instance_norm()
    _register_adaptive_pools()
    _register_pools()
    _register_pixel_shuffles()
    _register_projected_lstm()
    buffer = io.BytesIO()
    with _shared_by_identity(model), _traceable_attention(model):
        torch.onnx.export(
            model,
            args,
            buffer,  # type: ignore[arg-type]  # file objects work, the stubs say paths
            input_names=[i.name for i in graph.inputs],
            output_names=[o.name for o in graph.outputs],
            opset_version=opset,
            dynamic_axes=_dynamic_axes(graph),
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _outputs_read_inputs(proto, graph)
    return proto


def _outputs_read_inputs(proto: onnx.ModelProto, graph: ModelGraph) -> None:
    """An output that is an input itself (a model that returns its input: ``output x``, or
    no statements at all) has one name for two values in torch's export, which renames the
    input (``x.1``, with a size of its own in place of the dynamic axes' names) and copies
    it to the output by an Identity node. Here the input gets its name back, with the
    output's type, and the output reads it (an ONNX graph may output one of its inputs)."""
    outputs = {o.name: o for o in proto.graph.output}
    returned = {i.name for i in graph.inputs} & outputs.keys()
    for given in proto.graph.input:
        copies = [
            node
            for node in proto.graph.node
            if node.op_type == "Identity"
            and node.input == [given.name]
            and node.output[0] in returned - {given.name}
        ]
        if len(copies) != 1:
            continue  # its own name, or another renaming (the run at other sizes says so)
        name, output = copies[0].output[0], outputs[copies[0].output[0]]
        proto.graph.node.remove(copies[0])
        for node in proto.graph.node:
            node.input[:] = [name if value == given.name else value for value in node.input]
        given.name = name
        given.type.CopyFrom(output.type)


def _export_dynamo(
    model: nn.Module, graph: ModelGraph, args: tuple[torch.Tensor, ...], opset: int
) -> onnx.ModelProto:
    import torch

    program = torch.onnx.export(
        model,
        args,
        input_names=[i.name for i in graph.inputs],
        output_names=[o.name for o in graph.outputs],
        opset_version=opset,
        dynamic_shapes=_dynamic_shapes(graph),
        dynamo=True,
        optimize=False,  # keeps initializers under torch's names; ONNX Runtime optimises
        verbose=False,
    )
    if program is None:  # only when torch writes to a file, which is not asked for here
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of an exporter's or ONNX Runtime's exception: its first line, without ONNX
    Runtime's status prefix and source locations, at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line).split(" Status Message:")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Rejected(Exception):
    """One exporter's model did not pass; the message says why (for the fallback note)."""


def _probe(session: Session, graph: ModelGraph) -> None:
    """Run once at a batch size and sequence lengths other than the export's; the output
    shapes must be the ones the analyzer expects there."""
    import torch

    lengths = sequence_lengths(graph)[-1]
    inputs = sample_inputs(graph, PROBE_BATCH, lengths, torch.Generator().manual_seed(1))
    where = _shape_text(PROBE_BATCH, lengths)
    try:
        outputs = session.run({name: x.numpy() for name, x in inputs.items()})
    except Exception as exc:  # ONNX Runtime's own exception types
        raise _Rejected(f"ONNX Runtime cannot run it at {where}: {_first_line(exc)}") from None
    for output, out in zip(graph.outputs, outputs, strict=True):
        expected = (PROBE_BATCH, *(value_at(d, lengths) for d in output.type.shape))
        if tuple(out.shape) != expected:
            raise _Rejected(
                f"at {where} its output {output.name} has shape {tuple(out.shape)}, not {expected}"
            )


def _attempt(
    exporter: str,
    model: nn.Module,
    graph: ModelGraph,
    opset: int,
    half: bool,
    metadata: Mapping[str, str],
    device: Device,
    threads: int | None,
    messages: list[str],
) -> tuple[onnx.ModelProto, bytes, Session]:
    """Export with one exporter, check, add metadata and probe; raise :class:`_Rejected`."""
    import onnx
    import torch

    lengths = sequence_lengths(graph)[0]
    generator = torch.Generator().manual_seed(0)
    args = tuple(sample_inputs(graph, EXPORT_BATCH, lengths, generator, half=half).values())
    run = _export_torchscript if exporter == "torchscript" else _export_dynamo
    try:
        with _captured(messages):
            proto = run(model, graph, args, opset)
    except Exception as exc:  # the exporters raise anything from RuntimeError to their own
        raise _Rejected(_first_line(exc)) from None
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if produced != opset:  # torch.export works in opset 18 and converts, when it can
        raise _Rejected(f"the model needs opset {produced}; it could not be converted to {opset}")
    count = count_initializers(proto, graph)
    props = {
        META_VERSION: __version__,
        META_MODEL: graph.name,
        META_PARAMETERS: str(count.parameters),
        META_EXPORTER: _NAMES[exporter],
        META_PRECISION: "fp16" if half else "fp32",
        META_BINDINGS: json.dumps(graph.bindings, sort_keys=True),
        **metadata,
    }
    if any(i.type.dtype == "long" for i in graph.inputs):
        props[META_INDEX_LIMIT] = str(index_limit(graph))
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"{graph.name}, exported by dlspec {__version__}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise _Rejected(f"onnx.checker: {_first_line(exc)}") from None
    data = proto.SerializeToString()
    try:
        session = Session(data, device=device, threads=threads, fp16=half)
    except RuntimeSetupError as exc:
        raise _Rejected(str(exc)) from None
    _probe(session, graph)
    return proto, data, session


def _brief(failure: str, width: int = 90) -> str:
    """``"<exporter>: <what failed>"`` without the library's own words after it (the whole
    is in :attr:`ExportResult.fallback`), cut to ``width`` characters."""
    first = ": ".join(failure.split(": ")[:2]).split(". ")[0]
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."


def export_onnx(
    model: nn.Module,
    graph: ModelGraph,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    exporter: Exporter = "auto",
    verify: bool = True,
    metadata: Mapping[str, str] | None = None,
    device: Device = "auto",
    threads: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (built from ``graph``, e.g. ``Spec.to_torch()``; it is put in eval
    mode) to ONNX, check it, probe it with ONNX Runtime at other sizes, and (``verify``)
    compare it with torch; see the module docstring. ``fp16`` exports a half-precision copy
    (verified against the fp32 model with :data:`RTOL` ``["fp16"]``). ``metadata`` adds
    entries to the model's metadata. ``threads``: ONNX Runtime's CPU threads. ``notify`` is
    told, in one line, before a step that takes long (the dynamo exporter's ~20 s). Nothing
    is written: :attr:`ExportResult.data` holds the model. Raises :class:`ExportError` with a
    message for the user."""
    elements = sum(math.prod(s) for n in graph.leaves() for s in n.weights.values())
    elements += graph.buffer_count
    if elements * (2 if fp16 else 4) > _PROTOBUF_LIMIT:
        raise ExportError(
            f"{graph.name} holds {elements:,} numbers, more than fit in one ONNX file (2 GiB); "
            "export it with smaller --set values or --fp16"
        )
    model.eval()
    exported = copy.deepcopy(model).half() if fp16 else model
    attempts: list[str] = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    messages: list[str] = []
    start = time.perf_counter()
    for name in attempts:
        if name == "dynamo" and notify is not None:
            why = f" ({_brief(failures[-1])})" if failures else ""
            notify(f"exporting {graph.name} with the dynamo exporter{why}; this may take ~20 s...")
        try:
            proto, data, session = _attempt(
                name, exported, graph, opset, fp16, metadata or {}, device, threads, messages
            )
            break
        except _Rejected as exc:
            failures.append(f"{_NAMES[name]}: {exc}")
    else:
        raise ExportError(
            f"cannot export {graph.name} to ONNX opset {opset}: {'; '.join(failures)}"
        )
    result = ExportResult(
        data=data,
        exporter=_NAMES[name],
        opset=opset,
        precision="fp16" if fp16 else "fp32",
        initializers=count_initializers(proto, graph),
        export_seconds=time.perf_counter() - start,
        provider=session.provider,
        notice=session.notice,
        fallback=failures[0] if failures else None,
        warnings=messages,
    )
    if verify:
        start = time.perf_counter()
        result.comparisons = verify_session(session, model, graph, rtol=result.rtol)
        result.verify_seconds = time.perf_counter() - start
        failed = [c for c in result.comparisons if not c.passed]
        if failed:
            worst = max(failed, key=lambda c: c.max_rel)
            raise ExportError(
                f"verification failed: ONNX Runtime's output differs from torch's by up to "
                f"{worst.max_abs:.3g} ({worst.max_rel:.3g} of the output's largest magnitude) "
                f"at {_shape_text(worst.batch, worst.lengths)}, beyond the tolerance rtol "
                f"{result.rtol:g} ({result.precision}); --no-verify skips this check"
            )
    return result


# verifying ------------------------------------------------------------------------------------


def _compare(onnx_out: np.ndarray, torch_out: np.ndarray, rtol: float) -> tuple[float, float, bool]:
    """(max abs error, that relative to max|torch|, passed) under the :data:`RTOL` rule."""
    got = onnx_out.astype(np.float64)
    want = torch_out.astype(np.float64)
    if got.shape != want.shape:
        return math.inf, math.inf, False
    magnitude = float(np.max(np.abs(want), initial=0.0))
    error = np.abs(got - want)
    max_abs = float(np.max(error, initial=0.0))
    if not np.isfinite(max_abs):  # NaN or inf anywhere in ONNX Runtime's output
        return math.inf, math.inf, False
    passed = bool(np.all(error <= rtol * (np.abs(want) + max(magnitude, 1.0))))
    max_rel = max_abs / magnitude if magnitude else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel, passed


def verify_session(
    session: Session,
    model: nn.Module,
    graph: ModelGraph,
    *,
    rtol: float = RTOL["fp32"],
    batches: Sequence[int] = VERIFY_BATCHES,
    draws: int = DRAWS,
    seed: int = 0,
) -> list[Comparison]:
    """Run ONNX Runtime (``session``) and torch (``model``, fp32, eval mode) on ``draws``
    random inputs per batch size in ``batches`` and per :func:`sequence_lengths` set; one
    :class:`Comparison` each, passed under the :data:`RTOL` rule with ``rtol``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    comparisons = []
    for batch in batches:
        for lengths in sequence_lengths(graph):
            for _ in range(draws):
                inputs = sample_inputs(graph, batch, lengths, generator)
                try:
                    with torch.inference_mode():
                        expected = model(*inputs.values())
                except (RuntimeError, ValueError) as exc:  # e.g. batch statistics of one value
                    raise ExportError(
                        f"torch cannot run the model at batch {batch} to verify the export: "
                        f"{str(exc).splitlines()[0]}"
                    ) from None
                if isinstance(expected, torch.Tensor):
                    expected = (expected,)
                outputs = session.run({k: v.numpy() for k, v in inputs.items()})
                results = [
                    _compare(out, ref.detach().float().numpy(), rtol)
                    for out, ref in zip(outputs, expected, strict=True)
                ]
                comparisons.append(
                    Comparison(
                        batch,
                        dict(lengths),
                        max(r[0] for r in results),
                        max(r[1] for r in results),
                        all(r[2] for r in results),
                    )
                )
    return comparisons

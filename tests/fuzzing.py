"""Differential fuzzing: random valid specs, the analyzer against torch and ONNX Runtime.

A generator writes random specs over every layer kind of the registry and every graph shape
the language has (stacks, ``<-`` skips and merges, blocks repeated with ``* N``, indexed
repetitions whose copies differ (``for i in range(k)``, with lets and powers), residuals
with and without a projection, several inputs and outputs, layers and blocks with several
outputs, symbolic sequence lengths). It
grows a spec one statement at a time, proposing for the current tensor only layers whose
constraints its shape can meet (nnsmith-style), and keeps a proposal when ``dlspec check``
accepts it. Each finished spec is then held to three oracles:

* torch: the generated module's output shapes, parameter and buffer names and shapes equal
  the analysis (:func:`disagreements`), and every leaf's MACs equal a count made from the
  torch module's own attributes and the shapes its forward pass really produced
  (:func:`torch_macs`);
* autograd: the activation memory the analysis gives (``memory.activations``) equals the
  bytes autograd saves in a training-mode forward pass at batch 2 and 3, and at batch 1
  (which torch lays out apart) where the model trains on one sample (BatchNorm does not)
  (:func:`memory_disagreements`, the oracle of tests/saved_oracle.py);
* ONNX Runtime: the TorchScript export (dynamo where TorchScript cannot) gives torch's
  outputs within the export's tolerance on the inputs ``dlspec export`` verifies with
  (random, at batch 1 and 3, two sequence lengths). A spec that is ill-conditioned in fp32
  (torch itself misses the float64 answer by more than the tolerance, and ONNX Runtime's
  error is of the same order) is counted apart, not failed (:func:`onnx_disagreements`).

``python tests/fuzzing.py --count 10000 [--seed S]`` is ``make fuzz``; on a disagreement it
prints the spec's seed and the spec shrunk to the statements the failure needs, and exits 1,
as it does when a spec does not export (with the exporter's reason).
``tests/test_fuzz.py`` runs a few dozen specs as part of the suite.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

Shape = list[Any]  # ints, or strings for symbolic dimensions ("T", "2*T")

T_VALUE = 5  # the default of the symbolic length T
ROUNDING = 10  # ONNX Runtime's error, at most this times rounding's effect, is rounding


@dataclass
class Tensor:
    name: str
    shape: Shape
    dtype: str = "float"
    averaged: bool = False  # a mean or sum: about 0 over a normalisation's output


@dataclass
class Draft:
    """A spec being grown: its blocks, its body lines, the tensors it has named so far."""

    rng: random.Random
    symbolic: bool = False
    blocks: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)  # statement name -> element type
    averaged: set[str] = field(default_factory=set)  # statements that are Tensor.averaged
    counter: int = 0

    def name(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def text(self, lines: list[str] | None = None) -> str:
        header = "model Fuzz(T: dim = 5)" if self.symbolic else "model Fuzz"
        body = "\n".join(f"    {line}" for line in (self.lines if lines is None else lines))
        out = f"    output {', '.join(self.outputs)}\n" if self.outputs else ""
        return "".join(f"{b}\n" for b in self.blocks) + f"{header} {{\n{body}\n{out}}}\n"


def concrete(d: Any) -> int | None:
    return d if isinstance(d, int) else None


def numel(shape: Shape) -> int | None:
    values = [concrete(d) for d in shape]
    return None if any(v is None for v in values) else math.prod(v for v in values if v)


def length(d: Any) -> int:
    """A dimension's value at the spec's bindings (T = T_VALUE)."""
    if isinstance(d, int):
        return d
    return int(eval(str(d).replace("^", "**"), {"T": T_VALUE}))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# proposals: one function per family of layer kinds; each returns the call text or None ------

Proposal = Callable[[random.Random, Tensor], str | None]


def _activation(r: random.Random, x: Tensor) -> str | None:
    if x.dtype != "float" or not x.shape:
        return None
    dim = r.randrange(-len(x.shape), len(x.shape))
    return r.choice(
        [
            "ReLU",
            "Tanh",
            "Sigmoid",
            "SiLU",
            'GELU(approximate="tanh")',
            "GELU",
            f"LeakyReLU({r.choice([0.01, 0.2])})",
            f"Softmax(dim={dim})",
            f"LogSoftmax(dim={dim})",
            f"Dropout({r.choice([0.0, 0.3])})",
            "Identity",
            "ReLU6",
            "Hardswish",
            "Hardsigmoid",
            "Mish",
            f"Hardtanh({r.choice([-2.0, -1.0])}, {r.choice([0.5, 1.0])})",
            f"ELU({r.choice([0.5, 1.0])})",
            f"Softplus(beta={r.choice([1.0, 2.0])})",
            f"PReLU({r.choice([1, x.shape[0]]) if concrete(x.shape[0]) else 1})",
            f'StochasticDepth({r.choice([0.2, 0.5])}, mode="{r.choice(["row", "batch"])}")',
        ]
    )


def _linear(r: random.Random, x: Tensor) -> str | None:
    if x.dtype != "float" or not x.shape or concrete(x.shape[-1]) is None:
        return None
    bias = "" if r.random() < 0.7 else ", bias=false"
    return f"Linear({r.randint(1, 8)}{bias})"


def _norm(r: random.Random, x: Tensor) -> str | None:
    """Normalisations over at least 4 values (at batch 1): over fewer, the result is
    ill-conditioned (two nearly equal values normalise to +-1), and no tolerance separates
    rounding from a real disagreement."""
    if x.dtype != "float" or not x.shape or x.averaged:  # a mean of normalised values is ~0
        return None
    last = concrete(x.shape[-1])
    options = []
    if last is not None and last >= 4:
        options += [
            "RMSNorm",
            "RMSNorm(elementwise_affine=false)",
            "LayerNorm",
            f"LayerNorm(elementwise_affine={r.choice(['true', 'false'])})",
            "LayerNorm(bias=false)",
        ]
    channels = concrete(x.shape[0])
    positions = numel(x.shape[1:]) or 0
    if len(x.shape) in (1, 2) and channels is not None:
        options += ["BatchNorm1d", "BatchNorm1d(affine=false)"]  # running statistics in eval
    if len(x.shape) == 3 and channels is not None:
        options += ["BatchNorm2d", "Dropout2d(0.2)"]
        if channels >= 4:  # over the channels at each position; weighted, being rarely possible
            options += ["LayerNorm2d", "LayerNorm2d(eps=1e-6)", "LayerNorm2d", "LayerNorm2d"]
        if positions >= 4:
            options.append("BatchNorm2d(track_running_stats=false)")
    options += _instance_norms(r, x) if channels is not None else []
    if len(x.shape) >= 2 and channels is not None:
        groups = [g for g in divisors(channels) if channels // g * positions >= 4]
        if groups:
            affine = r.choice(["true", "false"])
            options.append(f"GroupNorm({r.choice(groups)}, affine={affine})")
    return r.choice(options) if options else None


def _conv(r: random.Random, x: Tensor) -> str | None:
    if x.dtype != "float" or len(x.shape) not in (2, 3, 4) or numel(x.shape) is None:
        return None
    if len(x.shape) == 4 or (len(x.shape) == 2 and r.random() < 0.3):
        return _conv_more(r, x)
    spatial = [length(d) for d in x.shape[1:]]
    kernel = r.randint(1, min(3, min(spatial)))
    stride, padding = r.randint(1, 2), r.randint(0, kernel // 2)
    channels = x.shape[0]
    groups = r.choice([g for g in divisors(channels) if g <= 2])
    out = groups * r.randint(1, 3)
    extra = f", groups={groups}" if groups > 1 else ""
    if len(x.shape) == 2:
        return f"Conv1d({out}, kernel={kernel}, stride={stride}, padding={padding}{extra})"
    if r.random() < 0.3:
        pad = min(padding, kernel - 1)
        return f"ConvTranspose2d({out}, kernel={kernel}, stride={stride}, padding={pad}{extra})"
    return f"Conv2d({out}, kernel={kernel}, stride={stride}, padding={padding}{extra})"


def _pool(r: random.Random, x: Tensor) -> str | None:
    if x.dtype != "float" or len(x.shape) not in (2, 3, 4) or numel(x.shape) is None:
        return None
    if len(x.shape) == 4 or (len(x.shape) == 2 and r.random() < 0.5):
        return _pool_more(r, x)
    smallest = min(length(d) for d in x.shape[1:])
    kernel = r.randint(1, min(3, smallest))
    padding = r.randint(0, kernel // 2)
    if len(x.shape) == 2:
        return r.choice(
            [f"MaxPool1d({kernel}, padding={padding})", 'Upsample(scale_factor=2, mode="linear")']
        )
    return r.choice(
        [
            f"MaxPool2d({kernel}, stride={r.randint(1, 2)}, padding={padding}, "
            f"ceil_mode={r.choice(['true', 'false'])})",
            f"AvgPool2d({kernel}, padding={padding}, ceil_mode={r.choice(['true', 'false'])}"
            f"{_divisor(r)})",
            f"AdaptiveAvgPool2d({r.randint(1, 3)})",
            "Upsample(scale_factor=2)",
            f'Upsample(size={r.randint(2, 6)}, mode="bilinear")',
        ]
    )


def _reshape(r: random.Random, x: Tensor) -> str | None:
    total = numel(x.shape)
    if total is not None and len(x.shape) >= 3 and x.dtype == "float" and r.random() < 0.3:
        return r.choice(_pixel_shuffles(x))
    if len(x.shape) >= 2 and r.random() < 0.5:
        return "Flatten"
    if total is None or total > 64:
        return None
    width = r.choice(divisors(total))
    return f"Reshape(-1, {width})" if r.random() < 0.5 else f"Reshape({total})"


def _rearrange(r: random.Random, x: Tensor) -> str | None:
    """Permutes, picks, slices and reductions over per-sample dimensions; images to tokens and
    back."""
    if x.dtype != "float" or not x.shape:
        return None
    rank = len(x.shape)
    dim = r.randrange(-rank, rank)
    options = [
        f"Mean({dim})",
        f"Sum([{', '.join(map(str, sorted(r.sample(range(rank), r.randint(1, rank)))))}])",
        f"Mean(keepdim={r.choice(['true', 'false'])})",
    ]
    if rank >= 2:
        order = list(range(rank))
        r.shuffle(order)
        options += [
            f"Permute({', '.join(map(str, order))})",
            f"Transpose({dim}, {r.randrange(-rank, rank)})",
        ]
    size = concrete(x.shape[dim])
    if size is not None:
        start = r.randrange(0, size)
        options += [
            f"Select({dim}, {r.randrange(-size, size)})",
            f"Slice({dim}, {start}, {r.randint(start + 1, size)}, {r.randint(1, 2)})",
        ]
    return r.choice(options)


def _sequence(r: random.Random, x: Tensor) -> str | None:
    """Recurrent and attention layers over [T, F]."""
    if x.dtype != "float" or len(x.shape) != 2 or concrete(x.shape[1]) is None:
        return None
    width = x.shape[1]
    heads = r.choice(divisors(width)[:3])
    hidden = r.randint(1, 6)
    returns = r.choice(["sequence", "sequence", "last", "hidden"])
    layers = r.randint(1, 2)
    bidirectional = r.choice(["true", "false"])
    recurrent = f"hidden_size={hidden}, num_layers={layers}, bidirectional={bidirectional}"
    options = [
        f'RNN({recurrent}, nonlinearity="relu", returns="{returns}")',
        f'GRU({recurrent}, returns="{returns}")',
        f'LSTM({recurrent}, returns="{returns}")',
        f'LSTM({hidden + 1}, proj_size={hidden}, returns="{returns}")',
        f"MultiheadAttention(num_heads={heads}, causal={r.choice(['true', 'false'])})",
        f"SinusoidalPositionalEncoding({length(x.shape[0]) + r.randint(0, 3)})",
        f"LearnedPositionalEncoding({length(x.shape[0]) + r.randint(0, 3)})",
    ]
    rope = [h for h in divisors(width) if width // h % 2 == 0]
    if rope:
        options.append(f"RoPE({r.choice(rope)}, base={r.choice([100.0, 10000.0])})")
    if width >= 4:  # their LayerNorms normalise over the width: see _norm
        options += [
            f"TransformerEncoderLayer(nhead={heads}, dim_feedforward=8, dropout=0.0, "
            f"norm_first={r.choice(['true', 'false'])})",
            f"TransformerEncoder(nhead={heads}, num_layers={layers}, dim_feedforward=8, "
            f'dropout=0.0, activation="gelu", final_norm={r.choice(["true", "false"])})',
        ]
    else:  # T5's bias [h, T, T], where the Transformer layers cannot go
        options.append(f"BucketedPositionBias(8, {heads}, max_distance=8)")
    return r.choice(options)


def _embedding(r: random.Random, x: Tensor) -> str | None:
    """Token and timestep embeddings; a learned tensor (its input gives only the batch)."""
    if r.random() < 0.2:
        return f"Parameter({', '.join(str(r.randint(1, 4)) for _ in range(r.randint(1, 3)))})"
    if x.dtype == "float" and x.shape == [1]:
        return f"TimestepEmbedding({r.choice([2, 4, 8])}, max_period={r.choice([100.0, 1e4])})"
    if x.dtype != "long":
        return None
    if r.random() < 0.2:  # the keep-mask of ids (long, like them), which SDPA reads
        return f"PaddingMask({r.randint(0, 3)})"
    if r.random() < 0.1:  # token types, all one value (BERT's when none are given)
        return f"Full({r.randint(0, 1)})"
    return f"Embedding({r.randint(5, 12)}, {r.randint(2, 8)})"


def _arithmetic(r: random.Random, x: Tensor) -> str | None:
    """Element-wise math on one tensor that keeps every value finite (Exp, Log, Sqrt and
    division by a tensor come with a guard: :func:`_math`)."""
    if x.dtype != "float" or not x.shape:
        return None
    number = r.choice([0.5, 2.0, -3.0])
    return r.choice(
        [
            "Neg",
            "Abs",
            "Pow(2)",
            f"Mul({number})",
            f"Add({number})",
            f"Sub({number})",
            f"Div({number})",
            f"Clamp({r.choice([-1.0, 0.0])}, {r.choice([0.5, 2.0])})",
            f"Clamp(min={r.choice([-0.5, 0.0])})",
            f"Clamp(max={r.choice([0.0, 1.0])})",
        ]
    )


def _window(r: random.Random, x: Tensor) -> tuple[int, int, int, int, str]:
    """A kernel, stride and padding that fit ``x``'s spatial axes, and a number of output
    channels with its ``groups`` argument."""
    kernel = r.randint(1, min(3, min(length(d) for d in x.shape[1:])))
    stride, padding = r.randint(1, 2), r.randint(0, kernel // 2)
    groups = r.choice([g for g in divisors(x.shape[0]) if g <= 2])
    extra = f", groups={groups}" if groups > 1 else ""
    return kernel, stride, padding, groups * r.randint(1, 3), extra


def _conv_more(r: random.Random, x: Tensor) -> str:
    """A transposed 1-D convolution of ``[C, L]``; a 3-D convolution, plain or transposed,
    of ``[C, D, H, W]``."""
    kernel, stride, padding, out, extra = _window(r, x)
    if len(x.shape) == 2:
        pad = min(padding, kernel - 1)
        return f"ConvTranspose1d({out}, kernel={kernel}, stride={stride}, padding={pad}{extra})"
    # single-threaded (as the fuzzer runs), torch computes an unstrided transposed 3-D
    # convolution whose kernel is 1 x 1 in height and width in a buffer as large as its input,
    # which its output keeps; dlspec follows the multi-threaded kernel (docs/memory.md)
    stride = max(stride, 2) if kernel == 1 else stride
    pad = min(padding, kernel - 1)
    return r.choice(
        [
            f"Conv3d({out}, kernel={kernel}, stride={stride}, padding={padding}{extra})",
            f"ConvTranspose3d({out}, kernel={kernel}, stride={stride}, padding={pad}{extra})",
        ]
    )


def _pad(r: random.Random, x: Tensor) -> str | None:
    """Pad by named sides or torch's tuple over the last 1 to 3 dimensions (constant on any
    input; reflect, replicate and circular where the rank and the sizes allow), or Roll."""
    if x.dtype != "float" or not x.shape:
        return None
    rank = len(x.shape)
    if r.random() < 0.3:
        dims = sorted(r.sample(range(rank), r.randint(1, min(2, rank))))
        # along a symbolic length the export rolls right up to the length: at half of it too
        shifts = [r.randint(-3, 3) if concrete(x.shape[d]) else r.choice([-1, 1]) for d in dims]
        if len(dims) == 1:
            return f"Roll({shifts[0]}, dims={r.choice([dims[0], dims[0] - rank])})"
        return f"Roll({shifts}, dims={dims})"
    mode = r.choice(["constant", "constant", "reflect", "replicate", "circular"])
    count = r.randint(1, min(3, rank))
    if mode != "constant":  # every dimension after the channels
        count = rank - 1
        if not 1 <= count <= 3:
            return None
    sizes = [x.shape[rank - 1 - i] for i in range(count)]
    pads = []
    for size in sizes:
        most = {"reflect": length(size) - 1, "circular": length(size)}.get(mode, 2)
        if mode in ("reflect", "circular") and concrete(size) is None:
            return None
        pads += [r.randint(0, min(2, most)), r.randint(0, min(2, most))]
    written = f', mode="{mode}"' if mode != "constant" else f", value={r.choice([0.0, -1.0])}"
    if r.random() < 0.5:
        return f"Pad({pads}{written})"
    named = [f"{side}={pad}" for side, pad in zip(SIDE_NAMES, pads, strict=False) if pad]
    return f"Pad({', '.join(named) or 'left=0'}{written})"


SIDE_NAMES = ("left", "right", "top", "bottom", "front", "back")


def _math_or_pad(r: random.Random, x: Tensor) -> str | None:
    """One proposal for both (as often as any other family)."""
    return (_arithmetic if r.random() < 0.5 else _pad)(r, x)


def _math(draft: Draft, x: Tensor) -> list[str] | None:
    """Element-wise math whose values stay finite: Exp of a clamped tensor, Log and Sqrt of
    magnitudes, Sub, a division by a magnitude plus one, Where on a mask with zeros, and a
    reparameterised sample of x with a clamped log-variance from a tensor of its shape."""
    r = draft.rng
    if x.dtype != "float" or not x.shape:
        return None
    others = [t for t in draft.tensors if t.dtype == "float" and t is not x]
    partners = [t for t in others if t.shape == x.shape or _broadcasts(t.shape, x.shape)]
    twins = [t for t in others if t.shape == x.shape]
    a, b, c = (draft.name() for _ in range(3))
    choice = r.choice(["exp", "log", "sqrt", "sub", "div", "where", "sample"])
    if choice == "exp":
        return [f"{a} = Clamp(max=3.0) <- {x.name}", f"{b} = Exp <- {a}"]
    if choice in ("log", "sqrt"):
        kind = r.choice(["Sqrt", "Pow(0.5)"]) if choice == "sqrt" else "Log"
        return [f"{a} = Abs <- {x.name}", f"{b} = Add(1.0) <- {a}", f"{c} = {kind} <- {b}"]
    if not partners:
        return None
    y = r.choice(partners)
    if choice == "sub":
        return [f"{a} = Sub <- {r.choice([f'{x.name}, {y.name}', f'{y.name}, {x.name}'])}"]
    if choice == "div":
        return [f"{a} = Abs <- {y.name}", f"{b} = Add(1.0) <- {a}", f"{c} = Div <- {x.name}, {b}"]
    if choice == "where":
        return [f"{a} = Clamp(min=0.0) <- {y.name}", f"{b} = Where <- {a}, {x.name}, {y.name}"]
    if not twins:
        return None
    z = r.choice(twins)
    return [f"{a} = Clamp(-3.0, 3.0) <- {z.name}", f"{b} = Reparameterize <- {x.name}, {a}"]


def _divisor(r: random.Random) -> str:
    """An average pool's divisor, where it is not the window's size: the elements in it
    (padding not counted), or a number of the spec's."""
    return r.choice(["", "", ", count_include_pad=false", f", divisor_override={r.randint(1, 5)}"])


def _pool_more(r: random.Random, x: Tensor) -> str:
    """The 1-D average and adaptive pools of ``[C, L]``; the 3-D pools of ``[C, D, H, W]``."""
    kernel, stride, padding, _, _ = _window(r, x)
    ceil = r.choice(["true", "false"])
    if len(x.shape) == 2:
        return r.choice(
            [
                f"AvgPool1d({kernel}, padding={padding}, ceil_mode={ceil})",
                f"AdaptiveAvgPool1d({r.randint(1, 3)})",
                f"AdaptiveMaxPool1d({r.randint(1, 3)})",
            ]
        )
    return r.choice(
        [
            f"MaxPool3d({kernel}, stride={stride}, padding={padding})",
            f"AvgPool3d({kernel}, padding={padding}, ceil_mode={ceil}{_divisor(r)})",
            f"AdaptiveAvgPool3d({r.randint(1, 2)})",
        ]
    )


def _instance_norms(r: random.Random, x: Tensor) -> list[str]:
    """InstanceNorm of ``[C, *]`` over at least 4 values per channel (see _norm)."""
    if not 2 <= len(x.shape) <= 4 or (numel(x.shape[1:]) or 0) < 4:
        return []
    norm = f"InstanceNorm{len(x.shape) - 1}d"
    affine, track = (r.choice(["true", "false"]) for _ in range(2))
    return [norm, f"{norm}(affine={affine}, track_running_stats={track})"]


def _pixel_shuffles(x: Tensor) -> list[str]:
    """PixelShuffle and PixelUnshuffle where ``x``'s last three sizes allow them (by a
    factor of 1 always: it moves nothing, but is valid)."""
    c, h, w = x.shape[-3:]
    shuffles = [f"PixelShuffle({f})" for f in (1, 2, 3) if c % (f * f) == 0]
    return shuffles + [f"PixelUnshuffle({f})" for f in (1, 2, 3) if h % f == 0 and w % f == 0]


PROPOSALS: list[Proposal] = [
    _activation,
    _linear,
    _norm,
    _conv,
    _pool,
    _reshape,
    _rearrange,
    _sequence,
    _embedding,
    _math_or_pad,
]


# growing a spec ------------------------------------------------------------------------------


def _check(text: str) -> Any:
    from dlspec.analysis.check import check_text

    return check_text(text, "<fuzz>")


def _tensors(report: Any, draft: Draft) -> list[Tensor]:
    """The model-level tensors of a checked spec: its inputs and its top-level statements."""
    out = [Tensor(t.name, list(t.shape), t.dtype) for t in report.inputs]
    for row in report.layers:
        for t in row.outputs if row.depth == 0 else []:  # several for a Chunk
            dtype = draft.dtypes.get(t.name, "float")
            out.append(Tensor(t.name, list(t.shape), dtype, t.name in draft.averaged))
    return out


def _dtype(x: Tensor, calls: list[str]) -> str:
    """Token ids stay ids through layers that only move them (Identity, Flatten, Reshape)."""
    moves = ("Identity", "Flatten", "Reshape", "PaddingMask", "Full")
    long = x.dtype == "long" and all(c.startswith(moves) for c in calls)
    return "long" if long else "float"


def _averaged(x: Tensor, calls: list[str]) -> bool:
    """Whether the result is a mean or sum (possibly cancelling out), directly or moved."""
    moves = ("Identity", "Flatten", "Reshape", "Permute", "Transpose", "Select", "Slice")
    if calls[-1].startswith(("Mean", "Sum", "AvgPool", "AdaptiveAvgPool", "Einsum")):
        return True
    return x.averaged and all(c.startswith(moves) for c in calls)


def _propose(draft: Draft, x: Tensor) -> str | None:
    r = draft.rng
    for _ in range(8):
        call = r.choice(PROPOSALS)(r, x)
        if call is not None:
            return call
    return None


def _try(draft: Draft, lines: list[str], blocks: list[str] | None = None) -> Any | None:
    """Check the draft with ``lines`` appended (and ``blocks`` added); the report or None."""
    saved = draft.blocks
    draft.blocks = saved + (blocks or [])
    checked = _check(draft.text(draft.lines + lines))
    draft.blocks = saved
    return checked.report if checked.ok else None


def _merge(draft: Draft) -> list[str] | None:
    """``Add``, ``Mul`` or ``Concat`` over earlier float tensors of matching (or broadcasting)
    shapes; a ``[C]`` vector added at every position of a ``[C, *]`` map, reshaped first."""
    r = draft.rng
    floats = [t for t in draft.tensors if t.dtype == "float" and t.shape]
    r.shuffle(floats)
    for a in floats:
        same = [b for b in floats if b is not a and b.shape == a.shape]
        cat = [b for b in floats if b is not a and b.shape[:-1] == a.shape[:-1]]
        gate = [b for b in floats if _broadcasts(b.shape, a.shape)]
        vector = [b for b in floats if b.shape == a.shape[:1] and len(a.shape) >= 2]
        if same and r.random() < 0.5:
            merge = r.choice(["Add", "Mul"])
            return [f"{draft.name()} = {merge} <- {a.name}, {r.choice(same).name}"]
        if gate and r.random() < 0.3:
            merge = r.choice(["Add", "Mul"])
            return [f"{draft.name()} = {merge} <- {a.name}, {r.choice(gate).name}"]
        if len(a.shape) >= 2 and r.random() < 0.3:  # a [C] vector, made from a if need be
            lines = []
            if vector:
                v = r.choice(vector).name
            else:
                v = draft.name()
                lines.append(f"{v} = Mean({list(range(1, len(a.shape)))}) <- {a.name}")
            column = ", ".join(["-1", *["1"] * (len(a.shape) - 1)])
            shift = draft.name()
            return [
                *lines,
                f"{shift} = Reshape({column}) <- {v}",
                f"{draft.name()} = Add <- {a.name}, {shift}",
            ]
        if cat:
            return [f"{draft.name()} = Concat <- {a.name}, {r.choice(cat).name}"]
    return None


def _chunk(draft: Draft, x: Tensor) -> list[str] | None:
    """``a, b, c = Chunk(chunks, dim) <- x`` along a whole-number dimension, with a name for
    each piece torch.chunk gives (fewer than ``chunks`` when the split is uneven), and a layer
    reading one of them (a model cannot end with several outputs it does not declare)."""
    r = draft.rng
    dims = [i for i, d in enumerate(x.shape) if isinstance(d, int) and d >= 2]
    if not dims:
        return None
    dim = r.choice(dims)
    size, chunks = x.shape[dim], r.randint(2, 4)
    each = -(-size // chunks)
    names = [draft.name() for _ in range(-(-size // each))]
    for name in names:
        draft.dtypes[name] = x.dtype
        if x.averaged:
            draft.averaged.add(name)
    written = r.choice([dim, dim - len(x.shape)])  # negative dims count from the end
    k = r.randrange(len(names))
    piece = [size - each * k if k == len(names) - 1 else each]  # the last one: what is left
    shape = [*x.shape[:dim], *piece, *x.shape[dim + 1 :]]
    read = Tensor(names[k], shape, x.dtype, x.averaged)
    return [
        f"{', '.join(names)} = Chunk({chunks}, dim={written}) <- {x.name}",
        _reader(draft, read),
    ]


def _reader(draft: Draft, read: Tensor) -> str:
    """A layer reading one output of a step with several (a model cannot end with outputs
    it does not declare)."""
    call = _propose(draft, read) or "Identity"
    after = draft.name()
    draft.dtypes[after] = _dtype(read, [call])
    if _averaged(read, [call]):
        draft.averaged.add(after)
    return f"{after} = {call} <- {read.name}"


def _fork(draft: Draft, x: Tensor) -> tuple[list[str], list[str]] | None:
    """A block of two branches over its input that returns both (``output a, b``), used as
    ``t1, t2 = Bt() <- x``, and a layer reading one of them."""
    r = draft.rng
    branches = []
    for _ in range(2):
        call = _propose(draft, x)
        if call is None:
            return None
        probe = Draft(r, draft.symbolic, list(draft.blocks))
        probe.lines = [f"input x: {x.dtype}[{', '.join(map(str, x.shape))}]", call]
        checked = _check(probe.text())
        if not checked.ok:
            return None
        shape = list(checked.report.layers[-1].output_shape)
        branches.append((call, Tensor("", shape, _dtype(x, [call]), _averaged(x, [call]))))
    block = f"B{draft.name()}"
    outs = [draft.name(), draft.name()]
    for out, (_, t) in zip(outs, branches, strict=True):
        draft.dtypes[out] = t.dtype
        if t.averaged:
            draft.averaged.add(out)
    body = " ".join(f"{n} = {call} <- input" for n, (call, _) in zip("ab", branches, strict=True))
    k = r.randrange(2)
    read = Tensor(outs[k], branches[k][1].shape, branches[k][1].dtype, branches[k][1].averaged)
    uses = [f"{', '.join(outs)} = {block}() <- {x.name}", _reader(draft, read)]
    return [f"block {block}() {{ {body} output a, b }}"], uses


def _broadcasts(small: Shape, big: Shape) -> bool:
    """Whether ``small`` broadcasts to ``big`` without growing it: one rank, sizes equal or 1."""
    if small == big or len(small) != len(big):
        return False
    return all(s in (1, b) for s, b in zip(small, big, strict=True))


def _two_input(draft: Draft) -> list[str] | None:
    """Decoder layers and the Transformer over two [*, d] float tensors of the same width."""
    r = draft.rng
    seqs = [t for t in draft.tensors if t.dtype == "float" and len(t.shape) == 2]
    pairs = [
        (a, b)
        for a in seqs
        for b in seqs
        if a.shape[1] == b.shape[1] and (concrete(a.shape[1]) or 0) >= 4
    ]
    if not pairs:
        return None
    a, b = r.choice(pairs)
    heads = r.choice(divisors(a.shape[1])[:3])
    common = f"nhead={heads}, dim_feedforward=8, dropout=0.0"
    call = r.choice(
        [
            f"TransformerDecoderLayer({common}, causal={r.choice(['true', 'false'])})",
            f"TransformerDecoder({common}, num_layers={r.randint(1, 2)})",
            f"Transformer({common}, num_encoder_layers=1, num_decoder_layers=1)",
            f"MultiheadAttention(num_heads={heads})",
            "SDPA",
        ]
    )
    if call == "SDPA":
        return _sdpa(draft, a, seqs)
    if call.startswith("MultiheadAttention") and r.random() < 0.3:  # Whisper's: k_proj bare
        call = f'MultiheadAttention(num_heads={heads}, bias=["q", "v", "out"])'
    if call.startswith("MultiheadAttention"):
        return _key_padding(draft, call, a, b)
    return [f"{draft.name()} = {call} <- {a.name}, {b.name}"]


def _key_padding(draft: Draft, call: str, query: Tensor, keys: Tensor) -> list[str]:
    """MultiheadAttention of ``query`` over ``keys``, half the time with a key-padding mask
    where there are ids as long as the keys (PaddingMask's, or any: 0 is padding), and then
    causal half the time where it attends over itself."""
    r = draft.rng
    masks = [t for t in draft.tensors if t.dtype == "long" and t.shape == keys.shape[:1]]
    if not masks or r.random() < 0.5:
        return [f"{draft.name()} = {call} <- {query.name}, {keys.name}"]
    sources = query.name if query is keys else f"{query.name}, {keys.name}"
    if query is keys and r.random() < 0.5:
        call = call[:-1] + ", causal=true)"
    return [f"{draft.name()} = {call} <- {sources}, {r.choice(masks).name}"]


def _windows(draft: Draft) -> list[str] | None:
    """Swin's window attention over a rank-3 float tensor read as a map [H, W, C]: windows
    that tile it, shifted or not, a relative position bias (and the shifted windows' mask),
    SDPA within the windows, the map put back together."""
    r = draft.rng
    maps = [
        t
        for t in draft.tensors
        if t.dtype == "float" and len(t.shape) == 3 and all(isinstance(d, int) for d in t.shape)
    ]
    if not maps:
        return None
    x = r.choice(maps)
    height, width, channels = x.shape
    sizes = [w for w in (2, 3) if height % w == 0 and width % w == 0] or [1]
    w = r.choice(sizes)
    shift = r.randint(0, w - 1)  # shifted windows where the window allows
    heads = r.choice(divisors(channels)[:2])
    names = [draft.name() for _ in range(4)]
    bias, win, attended, merged = names
    masks = [bias]
    lines = [f"{bias} = RelativePositionBias({w}, {heads}) <- {x.name}"]
    if shift:
        mask = draft.name()
        lines.append(f"{mask} = ShiftedWindowMask({w}, {shift}) <- {x.name}")
        masks.append(mask)
    return [
        *lines,
        f"{win} = WindowPartition({w}, {shift}) <- {x.name}",
        f"{attended} = SDPA({heads}) <- {win}, {win}, {win}, {', '.join(masks)}",
        f"{merged} = WindowMerge({w}, {shift}) <- {attended}, {x.name}",
    ]


def _sdpa(draft: Draft, q: Tensor, seqs: list[Tensor]) -> list[str] | None:
    """SDPA with queries ``q`` [T, h*hd] and keys and values [S, kv*hd] from ``seqs``, where
    the key/value head count kv divides h."""
    r = draft.rng
    heads = r.choice(divisors(q.shape[1]))
    head_width = q.shape[1] // heads
    keys = [  # widths are whole numbers here (a symbolic one, "T", cannot hold heads)
        t
        for t in seqs
        if isinstance(t.shape[1], int)
        and t.shape[1] % head_width == 0
        and heads % (t.shape[1] // head_width) == 0
    ]
    if not keys:
        return None
    k, v = r.choice(keys), r.choice(keys)
    if k.shape[1] != v.shape[1] or k.shape[0] != v.shape[0]:
        v = k
    kv = k.shape[1] // head_width
    # a keep-mask over the keys: ids (PaddingMask's, or any) as long as the keys
    masks = [t for t in draft.tensors if t.dtype == "long" and t.shape == k.shape[:1]]
    if masks and r.random() < 0.5:
        mask = r.choice(masks).name
        causal = _masked_causal(r)
        return [
            f"{draft.name()} = SDPA({heads}, {kv}{causal}) <- {q.name}, {k.name}, {v.name}, {mask}"
        ]
    if q.shape[0] == k.shape[0] and r.random() < 0.5:  # T5's bias over the offsets
        bias = draft.name()
        scale = f"scale={r.choice([1.0, 0.5])}{_masked_causal(r)}"  # T5: unscaled
        return [
            f"{bias} = BucketedPositionBias({r.choice([4, 8])}, {heads}, max_distance=8)"
            f" <- {q.name}",
            f"{draft.name()} = SDPA({heads}, {kv}, {scale})"
            f" <- {q.name}, {k.name}, {v.name}, {bias}",
        ]
    call = f"SDPA({heads}, num_kv_heads={kv}, causal={r.choice(['true', 'false'])})"
    return [f"{draft.name()} = {call} <- {q.name}, {k.name}, {v.name}"]


def _masked_causal(r: random.Random) -> str:
    """``, causal=true`` for a third of the masked attentions (a T5 decoder's position bias
    over causal attention), else nothing."""
    return ", causal=true" if r.random() < 1 / 3 else ""


def _grouped(draft: Draft, x: Tensor, kind: str) -> tuple[list[str], list[str]] | None:
    """A block (repeated when it keeps the shape) or a residual from 1-3 proposals."""
    r = draft.rng
    body: list[str] = []
    current = x
    for _ in range(r.randint(1, 3)):
        call = _propose(draft, current)
        if call is None:
            break
        probe = Draft(r, draft.symbolic, list(draft.blocks))
        probe.lines = [f"input x: {current.dtype}[{', '.join(map(str, current.shape))}]", call]
        checked = _check(probe.text())
        if not checked.ok:
            continue
        body.append(call)
        shape = list(checked.report.layers[-1].output_shape)
        current = Tensor("", shape, _dtype(current, [call]), _averaged(current, [call]))
    if not body:
        return None
    keeps = current.shape == x.shape and current.dtype == x.dtype
    name = draft.name()
    draft.dtypes[name] = current.dtype
    if current.averaged:
        draft.averaged.add(name)
    if kind == "residual":
        if x.dtype != "float" or current.dtype != "float":
            return None
        if keeps:
            shortcut = " shortcut { Identity }" if r.random() < 0.3 else ""
            repeat = f" * {r.randint(2, 3)}" if r.random() < 0.3 else ""
        elif len(body) == 1:  # a projection: the same layer on the shortcut
            shortcut, repeat = f" shortcut {{ {body[0]} }}", ""
        else:
            return None
        return [], [f"{name} = residual {{ {' '.join(body)} }}{shortcut}{repeat} <- {x.name}"]
    block = f"B{name}"
    definition = f"block {block}() {{ {' '.join(body)} }}"
    repeat = f" * {r.randint(2, 3)}" if keeps else ""
    return [definition], [f"{name} = {block}(){repeat} <- {x.name}"]


def _indexed(draft: Draft, x: Tensor) -> list[str] | None:
    """An indexed repetition (``for i in range(k)``) whose copies differ by their index:
    dilations that keep a feature map's size (``2 ** i``), in a residual or not, or widths
    that grow copy by copy (each copy reads what the one before made); the width sometimes
    a ``let`` reading the input's shape."""
    r = draft.rng
    if x.dtype != "float":
        return None
    name = draft.name()
    draft.dtypes[name] = "float"
    loop = f"for i in range({r.randint(1, 3)})"
    if len(x.shape) in (2, 3) and isinstance(x.shape[0], int):
        lines = []
        width: str | int = x.shape[0]
        if r.random() < 0.5:
            width = draft.name()  # never a tensor's name
            lines.append(f"let {width} = {x.name}.shape[0]")
        dilation = r.choice(["i + 1", "2 ** i"])
        conv = "Conv1d" if len(x.shape) == 2 else "Conv2d"
        op = f"{conv}({width}, kernel=3, dilation={dilation}, padding={dilation})"
        if r.random() < 0.5:
            op = f"residual {{ {op} }}"
        return [*lines, f"{name} = {op} {loop} <- {x.name}"]
    if len(x.shape) == 1:
        base = r.randint(1, 4)
        width = r.choice([f"{base} + i", f"{base} * 2 ** i", f"2 ** (i + {base % 3})"])
        return [f"{name} = Linear({width}) {loop} <- {x.name}"]
    return None


def _einsum(draft: Draft) -> list[str] | None:
    """``Einsum`` of two earlier float tensors of rank 1 to 3: the second's dimensions take
    letters of the first's of the same size (shared: contracted or kept) or fresh ones, and
    the output keeps some of the letters in some order."""
    r = draft.rng
    floats = [t for t in draft.tensors if t.dtype == "float" and 1 <= len(t.shape) <= 3]
    if not floats:
        return None
    a, b = r.choice(floats), r.choice(floats)
    fresh = iter("ijklmopqrs")
    left = [next(fresh) for _ in a.shape]
    right: list[str] = []
    for size in b.shape:
        same = [c for c, d in zip(left, a.shape, strict=True) if d == size and c not in right]
        right.append(r.choice(same) if same and r.random() < 0.7 else next(fresh))
    sizes = dict(zip(left + right, [*a.shape, *b.shape], strict=True))
    out = r.sample(sorted(sizes), r.randint(0, len(sizes)))
    if (numel([sizes[c] for c in out]) or 0) > 4096:
        return None
    name = draft.name()
    draft.averaged.add(name)  # a sum of products, like Sum
    equation = f"{''.join(left)},{''.join(right)}->{''.join(out)}"
    return [f'{name} = Einsum("{equation}") <- {a.name}, {b.name}']


def _inputs(draft: Draft) -> list[Tensor]:
    r = draft.rng
    kind = r.choice(["image", "sequence", "vector", "tokens", "volume"])
    t = "T" if draft.symbolic else r.randint(2, 6)
    shape: Shape = {
        "image": [r.randint(1, 4), r.randint(3, 8), r.randint(3, 8)],
        "sequence": [t, r.choice([2, 4, 6])],
        "vector": [r.randint(1, 8)],
        "tokens": [t],
        "volume": [r.randint(1, 3), r.randint(2, 4), r.randint(3, 6), r.randint(3, 6)],
    }[kind]
    dtype = "long" if kind == "tokens" else "float"
    inputs = [Tensor("x", shape, dtype)]
    if r.random() < 0.2:
        maps = kind in ("image", "volume")
        inputs.append(Tensor("y", list(shape) if maps else [t, r.choice([2, 4])]))
    if r.random() < 0.15:  # a diffusion model's timestep
        inputs.append(Tensor("s", [1]))
    for i in inputs:
        draft.lines.append(f"input {i.name}: {i.dtype}[{', '.join(map(str, i.shape))}]")
    return inputs


def generate(seed: int, steps: int = 6) -> str:
    """A random spec that ``dlspec check`` accepts, fixed by ``seed``."""
    r = random.Random(seed)
    draft = Draft(r, symbolic=r.random() < 0.25)
    inputs = _inputs(draft)
    draft.tensors = list(inputs)
    for _ in range(steps):
        x = draft.tensors[-1] if r.random() < 0.7 else r.choice(draft.tensors)
        choice = r.random()
        blocks: list[str] = []
        lines: list[str] | None
        if choice < 0.1:
            lines = _merge(draft)
        elif choice < 0.15:
            lines = (_two_input(draft) or _windows(draft)) if r.random() < 0.7 else _einsum(draft)
        elif choice < 0.19:
            lines = _chunk(draft, x)
        elif choice < 0.22:
            forked = _fork(draft, x)
            blocks, lines = forked if forked else ([], None)
        elif choice < 0.3:
            grouped = _grouped(draft, x, r.choice(["block", "residual"]))
            blocks, lines = grouped if grouped else ([], None)
        elif choice < 0.38:
            lines = _math(draft, x)
        elif choice < 0.41:
            lines = _indexed(draft, x)
        else:
            call = _propose(draft, x)
            lines = None
            if call is not None:
                name = draft.name()
                draft.dtypes[name] = _dtype(x, [call])
                if _averaged(x, [call]):
                    draft.averaged.add(name)
                lines = [f"{name} = {call} <- {x.name}"]
        if not lines:
            continue
        report = _try(draft, lines, blocks)
        if report is None:
            continue
        draft.blocks += blocks
        draft.lines += lines
        draft.tensors = _tensors(report, draft)
    if len(draft.tensors) > len(inputs) + 1 and r.random() < 0.3:
        chosen = r.sample(draft.tensors[len(inputs) :], k=2)
        draft.outputs = [t.name for t in chosen]
        if _try(draft, []) is None:
            draft.outputs = []
    return draft.text()


# oracles -------------------------------------------------------------------------------------


def disagreements(spec: Any, model: Any, batch: int = 2) -> list[str]:
    """Where the generated torch module differs from the analysis: output shapes, parameter
    and buffer names and shapes (an empty list: it agrees)."""
    import torch

    from dlspec.backends.onnx_export import sample_inputs

    graph, report = spec.graph, spec.report
    problems = []
    inputs = sample_inputs(graph, batch, graph.bindings, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(*inputs.values())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    got = [list(y.shape) for y in outputs]
    want = [[batch, *o.shape_value] for o in report.outputs]
    if got != want:
        problems.append(f"output shapes: torch {got}, check {want}")
    weights = {
        f"{n.path}.{w}": tuple(s)
        for n in graph.leaves()
        for w, s in n.weights.items()
        if w not in n.tied
    }
    params = {k: tuple(p.shape) for k, p in model.named_parameters()}
    if params != weights:
        problems.append(f"parameters: torch {params}, check {weights}")
    buffers = {f"{n.path}.{b}": tuple(s) for n in graph.leaves() for b, s in n.buffers.items()}
    found = {k: tuple(b.shape) for k, b in model.named_buffers()}
    if found != buffers:
        problems.append(f"buffers: torch {found}, check {buffers}")
    if sum(p.numel() for p in model.parameters()) != report.trainable_params:
        problems.append("trainable parameter total differs")
    return problems


def _recurrent_macs(module: Any, steps: int) -> int:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[type(module).__name__]
    hidden = module.hidden_size
    width = module.proj_size if getattr(module, "proj_size", 0) else hidden
    dirs = 2 if module.bidirectional else 1
    total = 0
    for layer in range(module.num_layers):
        n_in = module.input_size if layer == 0 else width * dirs
        per_step = gates * hidden * (n_in + width) + (2 * gates * hidden if module.bias else 0)
        per_step += width * hidden if width != hidden else 0
        total += per_step
    return steps * dirs * total


def torch_macs(module: Any, inputs: list[Any], output: Any) -> int | None:
    """MACs per sample of one leaf module, counted from its attributes and the shapes its
    forward pass produced (dlspec's convention: one per weight use and one per bias add);
    None for kinds this oracle does not count (attention: see test_sequence_layers; learned
    tensors)."""
    from torch import nn

    batch = output.shape[0] if hasattr(output, "shape") else inputs[0].shape[0]
    out = output.numel() // batch if hasattr(output, "numel") else 0
    bias = getattr(module, "bias", None) is not None and not isinstance(module.bias, bool)
    if isinstance(module, nn.Linear):
        leading = out // module.out_features
        return leading * module.out_features * (module.in_features + int(bias))
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        spatial = inputs[0].numel() // batch
        kernel = math.prod(module.kernel_size)
        per_input = module.out_channels // module.groups * kernel
        return spatial * per_input + (out if bias else 0)
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
        return out * (kernel + int(bias))
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
    if isinstance(module, (*norms, nn.PReLU)) or (type(module).__name__ == "LayerNorm2d"):
        return sum(p.numel() for p in module.parameters())  # per channel, as torchinfo counts
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return out * ((module.weight is not None) + bias)
    if isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)):
        return _recurrent_macs(module, inputs[0].shape[1])
    if type(module).__name__ == "SDPA":
        return None
    if isinstance(module, nn.Embedding) or not any(True for _ in module.parameters()):
        return 0  # lookups, activations, pooling, reshapes, positional tables
    return None  # attention and the Transformer family


def mac_disagreements(spec: Any, model: Any) -> list[str]:
    """Leaves whose MACs per sample differ from :func:`torch_macs`."""
    import torch

    from dlspec.backends.onnx_export import sample_inputs
    from dlspec.layers.symbolic import value_at

    modules = dict(model.named_modules())
    seen: dict[str, tuple[list[Any], Any]] = {}
    hooks = []
    for leaf in spec.graph.leaves():
        module = modules.get(leaf.path)
        if module is None:
            continue

        def hook(m: Any, args: Any, output: Any, path: str = leaf.path) -> None:
            seen[path] = (list(args), output[0] if isinstance(output, tuple) else output)

        hooks.append(module.register_forward_hook(hook))
    inputs = sample_inputs(spec.graph, 2, spec.graph.bindings, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(*inputs.values())
    for h in hooks:
        h.remove()
    problems = []
    for leaf in spec.graph.leaves():
        if leaf.path not in seen:
            continue
        args, output = seen[leaf.path]
        expected = torch_macs(modules[leaf.path], args, output)
        actual = value_at(leaf.macs, spec.graph.bindings)
        if expected is not None and expected != actual:
            problems.append(f"{leaf.path} {leaf.label}: MACs {actual:,}, torch count {expected:,}")
    return problems


def memory_disagreements(spec: Any, batches: tuple[int, ...] = (1, 2, 3)) -> list[str]:
    """Where the activation memory of the analysis differs from the bytes autograd saves in a
    training-mode forward pass of a fresh module (fp32), at each of ``batches`` (batch 1
    where torch trains the model on one sample): exactly, except that a layer whose rule
    counts a padding at its largest (oneDNN's LSTM workspace, aligned to pages) may be above
    by at most its ``saved_slack``."""
    import torch
    from saved_oracle import batch_inputs, saved_bytes

    from dlspec.analysis.memory import activations, total
    from dlspec.layers.symbolic import value_at

    slack = sum(leaf.layer.saved_slack() for leaf in spec.graph.leaves())
    torch.manual_seed(0)
    model = spec.to_torch()
    problems = []
    for batch in batches:
        inputs = batch_inputs(spec, batch)
        try:
            measured = saved_bytes(model, lambda xs=inputs: model(*xs))
        except ValueError:  # a norm's statistics over one value: not trained at batch 1
            if batch == 1:
                continue
            raise
        formula = total(activations(spec.graph, batch=batch))  # in the batch size B
        estimate = value_at(formula, {**spec.graph.bindings, "B": batch})
        if not 0 <= estimate - measured <= slack:
            allowed = f" (up to {slack:,} B above it allowed)" if slack else ""
            problems.append(
                f"activation memory at batch {batch}: check {estimate:,} B, autograd saves "
                f"{measured:,} B{allowed}"
            )
    return problems


def failures(
    text: str,
    onnx: bool = True,
    skipped: list[str] | None = None,
    dynamo: bool = False,
    conditioned: list[str] | None = None,
    errors: list[float] | None = None,
) -> list[str]:
    """Every disagreement for one spec text (empty: analyzer, torch and ONNX Runtime agree).
    The export uses TorchScript, or with ``dynamo`` what ``dlspec export`` uses (TorchScript,
    else the much slower dynamo exporter). A spec that cannot be exported is appended to
    ``skipped``, not failed: dlspec export refuses it with a message. A spec whose fp32
    results are bound by rounding (:func:`onnx_disagreements`) is appended to
    ``conditioned``; the largest error of ONNX Runtime's outputs that agree, on the
    tolerance's scale (:func:`scaled_error`), to ``errors``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on odd head counts, oneDNN and such
        return _failures(text, onnx, skipped, dynamo, conditioned, errors)


def _failures(
    text: str,
    onnx: bool,
    skipped: list[str] | None,
    dynamo: bool,
    conditioned: list[str] | None,
    errors: list[float] | None = None,
) -> list[str]:
    import torch

    import dlspec
    from dlspec.backends.onnx_export import ExportError, export_onnx

    try:
        spec = dlspec.load_text(text, "<fuzz>")
    except dlspec.SpecError as exc:
        return [f"check refused a spec it accepted while generating: {exc}"]
    try:
        torch.manual_seed(0)
        model = spec.to_torch().eval()
        problems = disagreements(spec, model) + mac_disagreements(spec, model)
        problems += memory_disagreements(spec)
        if onnx and not problems:
            exporter = "auto" if dynamo else "torchscript"
            result = export_onnx(model, spec.graph, device="cpu", exporter=exporter, verify=False)
            problems += onnx_disagreements(
                result.data, model.eval(), spec.graph, conditioned, errors
            )
    except ExportError as exc:
        if skipped is not None:
            skipped.append(str(exc))
    except Exception as exc:  # torch refusing what check accepted is a disagreement too
        return [f"torch raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"]
    return problems


class _Float64:
    """The model in float64: the exact answer fp32 computations are compared with, or, with
    ``noise``, that answer with every layer's output perturbed by a relative ``noise`` (the
    rounding an fp32 implementation may make anywhere). Runs as an ONNX Runtime session
    (``run``) and as a torch module (a call)."""

    def __init__(self, model: Any, noise: float = 0.0) -> None:
        import torch

        self.model = copy.deepcopy(model).double()
        self.noise = noise
        self.generator = torch.Generator().manual_seed(0)
        if noise:
            for module in self.model.modules():
                if not any(True for _ in module.children()):
                    module.register_forward_hook(self._perturb)

    def _perturb(self, module: Any, args: Any, output: Any) -> Any:
        import torch

        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return output
        shake = torch.randn(output.shape, generator=self.generator, dtype=output.dtype)
        return output * (1 + self.noise * shake)

    def __call__(self, *inputs: Any) -> Any:
        import torch

        wide = [x.double() if x.is_floating_point() else x for x in inputs]
        with torch.inference_mode():
            return self.model(*wide)

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        import torch

        out = self(*(torch.from_numpy(v) for v in feeds.values()))
        return [y.detach().numpy() for y in (out if isinstance(out, tuple) else (out,))]


def scaled_error(comparison: Any) -> float:
    """A :class:`Comparison`'s largest error over ``max(max|torch|, 1)``, the scale of the
    tolerance's rule (an output whose largest magnitude is below 1 is held to an absolute
    bound): comparable with ``RTOL``, where ``max_rel`` of an output near 0 is not."""
    if comparison.max_abs == 0:
        return 0.0
    magnitude = comparison.max_abs / comparison.max_rel  # max|torch|; 0 where max_rel is inf
    return float(comparison.max_abs / max(magnitude, 1.0))


def onnx_disagreements(
    data: bytes,
    model: Any,
    graph: Any,
    conditioned: list[str] | None = None,
    errors: list[float] | None = None,
) -> list[str]:
    """Where ONNX Runtime's outputs differ from torch's beyond the export's tolerance, on the
    inputs ``dlspec export`` verifies with, unless the spec is ill-conditioned in fp32: what
    rounding does to it (torch's fp32 result against the float64 one, and the float64 result
    with each layer's output perturbed by fp32's epsilon) is within :data:`ROUNDING` times
    ONNX Runtime's error, so that rounding alone moves the output by a tenth of the tolerance
    or more (a normalisation over nearly equal values magnifies it). The two then differ by
    rounding, not by a mistake, and the spec is appended to ``conditioned``. Where every
    output agrees, the largest error on the tolerance's scale (:func:`scaled_error`) goes to
    ``errors``."""
    from dlspec.backends.onnx_export import RTOL, verify_session
    from dlspec.backends.runtime import Session

    rtol = RTOL["fp32"]
    onnx = verify_session(Session(data, device="cpu"), model, graph, rtol=rtol)
    if all(c.passed for c in onnx):
        if errors is not None:
            errors.append(max(scaled_error(c) for c in onnx))
        return []
    worst = max(c.max_abs for c in onnx)
    exact = _Float64(model)
    shaken = _Float64(model, noise=2.0**-23)
    judged = verify_session(cast(Any, exact), model, graph, rtol=rtol)
    judged += verify_session(cast(Any, shaken), cast(Any, exact), graph, rtol=rtol)
    rounding = max(c.max_abs for c in judged)
    if worst <= ROUNDING * rounding:
        if conditioned is not None:
            conditioned.append(
                f"ONNX Runtime {worst:.3g} off torch, rounding moves it {rounding:.3g}"
            )
        return []
    return [
        f"ONNX Runtime differs from torch by up to {worst:.3g} (fp32 rounding moves it "
        f"{rounding:.3g}), beyond the tolerance rtol {rtol:g}"
    ]


def shrink(text: str, still_fails: Callable[[str], bool]) -> str:
    """The spec with every body line removed that the failure does not need."""
    head, _, rest = text.partition("model Fuzz")
    lines = rest.splitlines()
    changed = True
    while changed:
        changed = False
        for i in range(1, len(lines) - 1):
            if lines[i].strip().startswith("input"):
                continue
            candidate = lines[:i] + lines[i + 1 :]
            attempt = head + "model Fuzz" + "\n".join(candidate) + "\n"
            if _check(attempt).ok and still_fails(attempt):
                lines, changed = candidate, True
                break
    return head + "model Fuzz" + "\n".join(lines) + "\n"


def run(
    count: int,
    seed: int,
    onnx: bool = True,
    dynamo_every: int = 10,
    log: Callable[[str], None] = print,
) -> int:
    """Fuzz ``count`` specs from ``seed``; the number of failing specs and of specs not
    exported (which ``dlspec export`` would refuse). Every ``dynamo_every``-th spec that
    TorchScript cannot export is exported as ``dlspec export`` does, falling back to dynamo
    (0: never)."""
    import torch

    torch.set_num_threads(1)
    failed = 0
    skipped: list[str] = []
    dynamo = rejected = 0
    conditioned: list[str] = []
    errors: list[float] = []  # ONNX Runtime's largest scaled_error, per agreeing spec
    start = time.perf_counter()
    for i in range(count):
        spec_seed = seed + i
        text = generate(spec_seed)
        before, rounded = len(skipped), len(conditioned)
        problems = failures(text, onnx, skipped, conditioned=conditioned, errors=errors)
        rejected += len(skipped) - before
        if len(skipped) > before and dynamo_every and rejected % dynamo_every == 0:
            del skipped[-1]
            dynamo += 1
            problems = failures(
                text, onnx, skipped, dynamo=True, conditioned=conditioned, errors=errors
            )
        if len(skipped) > before:
            log(f"not exported, seed {spec_seed}: {skipped[-1][:200]}")
        if len(conditioned) > rounded:
            log(f"ill-conditioned in fp32, seed {spec_seed}: {conditioned[-1]}")
        if problems:
            failed += 1
            small = shrink(text, lambda t: bool(failures(t, onnx)))
            log(f"FAIL seed {spec_seed}: {problems[0]}\n--- shrunk spec ---\n{small}---")
        if (i + 1) % 100 == 0 or i + 1 == count:
            elapsed = time.perf_counter() - start
            log(
                f"{i + 1:,} specs, {failed} failing; ONNX: {dynamo} through dynamo, "
                f"{len(skipped)} not exported, {len(conditioned)} ill-conditioned in fp32, "
                f"largest error {max(errors, default=0.0):.2g} of max(|torch|, 1); "
                f"{elapsed:.0f} s ({elapsed / (i + 1):.3f} s/spec)"
            )
    return failed + len(skipped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime oracle")
    parser.add_argument(
        "--dynamo-every",
        type=int,
        default=10,
        metavar="N",
        help="export every N-th spec TorchScript cannot export with dynamo (slow; 0: never)",
    )
    parser.add_argument("--show", action="store_true", help="print the spec of --seed and stop")
    args = parser.parse_args()
    if args.show:
        print(generate(args.seed), end="")
        return 0
    print(f"fuzzing {args.count:,} specs from seed {args.seed}", flush=True)
    failed = run(
        args.count, args.seed, not args.no_onnx, args.dynamo_every, lambda s: print(s, flush=True)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

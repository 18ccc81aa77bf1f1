"""Attention and the Transformer's building blocks, over batch-first sequences ``[T, d]``.

Kinds: MultiheadAttention; TransformerEncoderLayer and TransformerDecoderLayer; the stacks
TransformerEncoder and TransformerDecoder; the encoder-decoder Transformer.
Parameters carry torch's nested names (``layers.0.self_attn.in_proj_weight``), so a stack is
one layer kind whose figures can be checked against the torch module tensor by tensor.

MACs are composed from the parts: each attention block counts its input and output
projections (as Linear layers: one per weight use and one per bias add) plus the two
products that scale with the sequence lengths, ``Q K^T`` (``T x S x d``) and
``softmax(.) V`` (``T x S x d``); a causal mask does not reduce them (torch computes the full
matrix). Feed-forward layers count as Linear, layer norms as LayerNorm (2 per element, 1
without ``bias``); softmax, activations and dropout count 0.

``causal=True`` masks attention to later steps with
``torch.nn.Transformer.generate_square_subsequent_mask`` in the forward call (the mask needs
keys as long as the queries).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    check_given,
    concrete,
    expect_float,
    expect_rank,
    register,
)
from dlspec.layers.dense import Linear
from dlspec.layers.norm import LayerNorm
from dlspec.layers.symbolic import Dim

Pos = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
Eps = Annotated[float, Field(gt=0)]

# A causal mask for the sequence ``{x}`` in generated code: (T, T), -inf above the diagonal.
CAUSAL_MASK = "torch.nn.Transformer.generate_square_subsequent_mask({x}.size(1), device={x}.device)"

# A sub-module's tensors (torch's names, shapes) and MACs.
Part = tuple[dict[str, Shape], Dim]


def _part(inferred: Inferred) -> Part:
    return inferred.weights, inferred.macs


def _nest(parts: Iterable[tuple[str, Part]]) -> Part:
    """Tensors of sub-modules under their attribute names, and their summed MACs."""
    weights: dict[str, Shape] = {}
    macs: Dim = 0
    for prefix, (part_weights, part_macs) in parts:
        weights |= {f"{prefix}.{name}": shape for name, shape in part_weights.items()}
        macs = macs + part_macs
    return weights, macs


def attention_saved(
    name: str,
    query: TensorType,
    keys: list[TensorType],
    heads: int,
    dropout: float,
) -> list[Saved]:
    """What ``nn.MultiheadAttention`` (``need_weights=False``, so through
    ``scaled_dot_product_attention``) keeps, as tensors internal to the layer named
    ``name.*``. ``keys`` are the other inputs: none for self-attention, the memory, or the
    keys and the values.

    Each projection reads a time-major copy of its input (self-attention and a memory of
    width E share one projection, so one copy); the projections kept are Q (T x E) and K, V
    (S x E each). Without dropout, CPU torch runs flash attention: it keeps its output and a
    log-sum-exp per head and query (h x T). With dropout it runs the plain math: scaled Q, a
    contiguous copy of K, V (whose storage is the whole joint projection when there is
    one), the probabilities, the dropout mask and the dropped probabilities (h x T x S
    each), and a copy of the output for the output projection."""
    t, e = query.shape
    s = keys[-1].shape[0] if keys else t
    copies: list[Dim] = [t * e]
    if len(keys) == 1:
        width = keys[0].shape[1]
        copies += [s * width] if width == e else [s * width, s * width]
    copies += [s * x.shape[1] for x in keys[:2] if len(keys) == 2]
    saved = [Saved(f"{name}.copy{i}", n) for i, n in enumerate(copies)]
    if dropout:
        joint = not keys or (len(keys) == 1 and keys[0].shape[1] == e)
        value: Dim = (3 * t * e if not keys else 2 * s * e) if joint else s * e
        saved += [
            Saved(f"{name}.v", value),
            Saved(f"{name}.k", s * e),
            Saved(f"{name}.q_scaled", t * e),
            *(Saved(f"{name}.{what}", heads * t * s) for what in ("probs", "mask", "dropped")),
            Saved(f"{name}.out", t * e),
        ]
    else:
        saved += [
            Saved(f"{name}.qkv", t * e + 2 * s * e),
            Saved(f"{name}.out", t * e),
            Saved(f"{name}.logsumexp", heads * t),
        ]
    return saved


def _sequence(x: TensorType, kind: str) -> None:
    expect_rank(x, (2,), "[T, d] (batch-first sequence)", kind)
    expect_float(x, kind)


def _check_heads(width: int, heads: int, arg: str) -> None:
    if width % heads:
        raise LayerError(
            "E204",
            f"the model width {width} does not split into {arg}={heads} equal heads",
            [f"{width} % {heads} = {width % heads}"],
            arg=arg,
        )


@register
class MultiheadAttention(Layer):
    """Multi-head attention. One input ``[T, E]`` is self-attention; two are
    ``(query [T, E], memory [S, kdim])`` with the memory as keys and values; three are
    ``(query [T, E], key [S, kdim], value [S, vdim])``. Output ``[T, E]``.

    Layout: ``in_proj_weight (3E, E)`` when ``kdim == vdim == E``, else ``q_proj_weight (E, E)``,
    ``k_proj_weight (E, kdim)``, ``v_proj_weight (E, vdim)``; ``in_proj_bias (3E,)`` with
    ``bias``; then ``out_proj.weight (E, E)`` and, with ``bias``, ``out_proj.bias (E,)``.
    MACs = T*E*(E + b) + S*E*(kdim + b) + S*E*(vdim + b) [projections of Q, K, V]
    + T*S*E [Q K^T] + T*S*E [weights x V] + T*E*(E + b) [output projection], with b = 1 when
    ``bias``; self-attention has S = T, so it grows with T^2."""

    kind = "MultiheadAttention"
    family = "attention"
    positional = ("embed_dim", "num_heads")
    arity = (1, 3)

    embed_dim: Pos | None = None
    num_heads: Pos
    dropout: Probability = 0.0
    bias: bool = True
    kdim: Pos | None = None
    vdim: Pos | None = None
    causal: bool = False

    def _sizes(self, inputs: list[TensorType]) -> tuple[int, int, int]:
        """``(E, kdim, vdim)`` after checking the query, key and value."""
        if len(inputs) == 1:
            query = key = value = inputs[0]
        elif len(inputs) == 2:
            query, key = inputs
            value = key
        else:
            query, key, value = inputs
        for x in (query, key, value):
            _sequence(x, self.kind)
        if key.shape[0] != value.shape[0]:
            raise LayerError("E401", f"keys {key} and values {value} differ in length")
        if self.causal and query.shape[0] != key.shape[0]:
            raise LayerError(
                "E204",
                f"causal attention needs keys as long as the queries; got queries {query} and "
                f"keys {key}",
                arg="causal",
            )
        width = check_given(self.embed_dim, query.shape[1], "embed_dim", self.kind, "features")
        _check_heads(width, self.num_heads, "num_heads")
        kdim = check_given(self.kdim, key.shape[1], "kdim", self.kind, "the keys' width")
        vdim = check_given(self.vdim, value.shape[1], "vdim", self.kind, "the values' width")
        return width, kdim, vdim

    def infer(self, inputs: list[TensorType]) -> Inferred:
        width, kdim, vdim = self._sizes(inputs)
        b = 1 if self.bias else 0
        weights: dict[str, Shape] = {}
        if kdim == vdim == width:
            weights["in_proj_weight"] = (3 * width, width)
        else:
            weights |= {
                "q_proj_weight": (width, width),
                "k_proj_weight": (width, kdim),
                "v_proj_weight": (width, vdim),
            }
        if self.bias:
            weights["in_proj_bias"] = (3 * width,)
        weights["out_proj.weight"] = (width, width)
        if self.bias:
            weights["out_proj.bias"] = (width,)
        t: Dim = inputs[0].shape[0]  # queries
        s: Dim = inputs[-1].shape[0]  # keys and values
        macs = (
            2 * t * width * (width + b)  # query and output projections
            + s * width * (kdim + b)  # key projection
            + s * width * (vdim + b)  # value projection
            + 2 * t * s * width  # Q K^T and the weighted sum of the values
        )
        return Inferred(TensorType((t, width)), weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        width, kdim, vdim = self._sizes(inputs)
        kwargs: dict[str, Any] = self.model_dump(
            exclude_defaults=True, exclude={"embed_dim", "num_heads", "kdim", "vdim", "causal"}
        )
        kwargs |= {name: size for name, size in (("kdim", kdim), ("vdim", vdim)) if size != width}
        kwargs["batch_first"] = True
        qkv = {1: "{x0}, {x0}, {x0}", 2: "{x0}, {x1}, {x1}", 3: "{x0}, {x1}, {x2}"}[len(inputs)]
        mask = f"attn_mask={CAUSAL_MASK.format(x='{x0}')}, is_causal=True, " if self.causal else ""
        forward = "{module}(" + qkv + ", " + mask + "need_weights=False)[0]"  # (B, T, E)
        return TorchCall("nn.MultiheadAttention", (width, self.num_heads), kwargs, forward)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return attention_saved("attn", inputs[0], inputs[1:], self.num_heads, self.dropout)

    def label(self) -> str:
        causal = ", causal" if self.causal else ""
        return f"MultiheadAttention(heads={self.num_heads}{causal})"


class _TransformerBase(Layer):
    """Options shared by the Transformer kinds, named and defaulted as in torch (always
    batch-first). ``d_model`` is taken from the input (checked when written)."""

    family = "attention"
    # with ``causal``: which input the mask is for, and the forward keywords of the mask and
    # of its hint
    masked: ClassVar[tuple[int, str, str]] = (0, "src_mask", "is_causal")

    d_model: Pos | None = None
    nhead: Pos
    dim_feedforward: Pos = 2048
    dropout: Probability = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    layer_norm_eps: Eps = 1e-5
    norm_first: bool = False
    bias: bool = True
    causal: bool = False

    def _width(self, inputs: list[TensorType]) -> int:
        """``d_model``, after checking that every input is a ``[*, d_model]`` sequence."""
        for x in inputs:
            _sequence(x, self.kind)
        width = check_given(self.d_model, inputs[0].shape[1], "d_model", self.kind, "features")
        for x in inputs[1:]:
            if x.shape[1] != width:
                raise LayerError(
                    "E401",
                    f"{self.kind} has d_model={width}, but its second input {x} has width "
                    f"{x.shape[1]}",
                )
        _check_heads(width, self.nhead, "nhead")
        return width

    def _attention(self, query: TensorType, memory: TensorType | None = None) -> Part:
        attn = MultiheadAttention(num_heads=self.nhead, bias=self.bias)
        return _part(attn.infer([query] if memory is None else [query, memory]))

    def _norm(self, x: TensorType) -> Part:
        return _part(LayerNorm(bias=self.bias).infer([x]))

    def _feedforward(self, x: TensorType) -> list[tuple[str, Part]]:
        """``linear1`` (d -> dim_feedforward) and ``linear2`` (back to d) on ``x``."""
        width = concrete(x.shape[1], "d_model")
        hidden = TensorType((x.shape[0], self.dim_feedforward))
        linear1 = Linear(out_features=self.dim_feedforward, bias=self.bias)
        linear2 = Linear(out_features=width, bias=self.bias)
        return [("linear1", _part(linear1.infer([x]))), ("linear2", _part(linear2.infer([hidden])))]

    def _encoder_layer(self, x: TensorType) -> Part:
        """One ``nn.TransformerEncoderLayer`` on ``x``."""
        norms = [(f"norm{i}", self._norm(x)) for i in (1, 2)]
        return _nest([("self_attn", self._attention(x)), *self._feedforward(x), *norms])

    def _decoder_layer(self, x: TensorType, memory: TensorType) -> Part:
        """One ``nn.TransformerDecoderLayer`` on ``x``, attending to ``memory``."""
        attention = [
            ("self_attn", self._attention(x)),
            ("multihead_attn", self._attention(x, memory)),
        ]
        norms = [(f"norm{i}", self._norm(x)) for i in (1, 2, 3)]
        return _nest([*attention, *self._feedforward(x), *norms])

    def _stack(self, layer: Part, count: int, norm: TensorType | None) -> Part:
        """``count`` copies of a layer under ``layers.{i}``, then (when ``norm`` is given) a
        final LayerNorm ``norm`` over that tensor."""
        parts = [(f"layers.{i}", layer) for i in range(count)]
        if norm is not None:
            parts.append(("norm", self._norm(norm)))
        return _nest(parts)

    # saved tensors: each helper takes a prefix naming the sub-module and the name of the
    # tensor it reads ("input0" for the layer's own input, else an internal name)

    def _norm_saved(self, prefix: str, x: str, rows: Dim, width: int) -> list[Saved]:
        stats = [Saved(f"{prefix}.{what}", rows, "float32") for what in ("mean", "rstd")]
        return [Saved(x, rows * width), *stats]

    def _feedforward_saved(self, prefix: str, x: str, rows: Dim, width: int) -> list[Saved]:
        """linear1 keeps its input; ReLU its output, GELU its input; dropout a mask and the
        dropped activations, which linear2 keeps (else linear2 keeps the activation's
        output, which for ReLU is the tensor ReLU keeps)."""
        hidden = rows * self.dim_feedforward
        kept = [Saved(x, rows * width), Saved(f"{prefix}.hidden", hidden)]
        if self.activation == "gelu":
            kept.append(Saved(f"{prefix}.linear1_out", hidden))
            if self.dropout:
                kept.pop(1)  # GELU's output is only read by the dropout
        if self.dropout:
            kept += [Saved(f"{prefix}.ff_mask", hidden), Saved(f"{prefix}.ff_dropped", hidden)]
        return kept

    def _residual_saved(
        self, prefix: str, x: str, sublayer: list[Saved], rows: Dim, width: int, index: int
    ) -> tuple[list[Saved], str]:
        """One residual sub-block ``x + dropout(sublayer(norm(x)))`` (pre-norm) or
        ``norm(x + dropout(sublayer(x)))`` (post-norm): its saved tensors and the name of
        the tensor the next sub-block reads."""
        norm = f"{prefix}.norm{index}"
        mask = [Saved(f"{prefix}.dropout{index}", rows * width)] if self.dropout else []
        total = f"{prefix}.sum{index}"
        if self.norm_first:
            return [*self._norm_saved(norm, x, rows, width), *sublayer, *mask], total
        return [*sublayer, *mask, *self._norm_saved(norm, total, rows, width)], f"{norm}.out"

    def _encoder_saved(self, prefix: str, x: str, t: TensorType) -> tuple[list[Saved], str]:
        rows, width = t.shape[0], concrete(t.shape[1], "d_model")
        attn = attention_saved(f"{prefix}.self_attn", t, [], self.nhead, self.dropout)
        first, x1 = self._residual_saved(prefix, x, attn, rows, width, 1)
        ff = self._feedforward_saved(prefix, f"{prefix}.ff_in", rows, width)
        second, out = self._residual_saved(prefix, x1, ff, rows, width, 2)
        return [*first, *second], out

    def _decoder_saved(
        self, prefix: str, x: str, t: TensorType, memory: TensorType
    ) -> tuple[list[Saved], str]:
        rows, width = t.shape[0], concrete(t.shape[1], "d_model")
        attn = attention_saved(f"{prefix}.self_attn", t, [], self.nhead, self.dropout)
        first, x1 = self._residual_saved(prefix, x, attn, rows, width, 1)
        cross = attention_saved(f"{prefix}.cross_attn", t, [memory], self.nhead, self.dropout)
        second, x2 = self._residual_saved(prefix, x1, cross, rows, width, 2)
        ff = self._feedforward_saved(prefix, f"{prefix}.ff_in", rows, width)
        third, out = self._residual_saved(prefix, x2, ff, rows, width, 3)
        return [*first, *second, *third], out

    def _stack_saved(
        self, prefix: str, count: int, x: str, t: TensorType, memory: TensorType | None, norm: bool
    ) -> list[Saved]:
        """``count`` layers one after another, then the optional final LayerNorm."""
        saved: list[Saved] = []
        for i in range(count):
            layer = f"{prefix}layers.{i}"
            if memory is None:
                kept, x = self._encoder_saved(layer, x, t)
            else:
                kept, x = self._decoder_saved(layer, x, t, memory)
            saved += kept
        if norm:
            saved += self._norm_saved(f"{prefix}norm", x, t.shape[0], concrete(t.shape[1], "d"))
        return saved

    def _layer_kwargs(self) -> dict[str, Any]:
        """The layer options that differ from torch's defaults, as constructor keywords."""
        options = {"dim_feedforward", "dropout", "activation", "layer_norm_eps", "norm_first"}
        return self.model_dump(exclude_defaults=True, include=options | {"bias"})

    def _forward(self, inputs: list[TensorType]) -> str:
        args = ", ".join(f"{{x{i}}}" for i in range(len(inputs)))
        if self.causal:
            index, mask, hint = self.masked
            args += f", {mask}={CAUSAL_MASK.format(x=f'{{x{index}}}')}, {hint}=True"
        return "{module}(" + args + ")"  # (B, T, d)

    def _label(self, *parts: str) -> str:
        extras = [f"h={self.nhead}", f"ff={self.dim_feedforward}"]
        if self.causal:
            extras.append("causal")
        return f"{self.kind}({', '.join([*parts, *extras])})"

    def label(self) -> str:
        return self._label(*([str(self.d_model)] if self.d_model else []))


@register
class TransformerEncoderLayer(_TransformerBase):
    """One encoder layer, ``nn.TransformerEncoderLayer``: self-attention and a feed-forward
    network ``linear2(activation(linear1(x)))``, each with a residual connection and a
    LayerNorm (after it, or before it with ``norm_first``). ``[T, d]`` -> ``[T, d]``; with
    ``causal`` step t attends to steps <= t only.

    Layout: ``self_attn.*`` (MultiheadAttention), ``linear1.weight (ff, d)``,
    ``linear2.weight (d, ff)``, ``norm1.weight``, ``norm2.weight`` ``(d,)``, and the biases of
    each when ``bias``. MACs: the sum of the parts (module docstring)."""

    kind = "TransformerEncoderLayer"
    positional = ("d_model", "nhead", "dim_feedforward")

    def infer(self, inputs: list[TensorType]) -> Inferred:
        self._width(inputs)
        weights, macs = self._encoder_layer(inputs[0])
        return Inferred(inputs[0], weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self._layer_kwargs() | {"batch_first": True}
        args = (self._width(inputs), self.nhead)
        return TorchCall("nn.TransformerEncoderLayer", args, kwargs, self._forward(inputs))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self._stack_saved("", 1, "input0", inputs[0], None, norm=False)


@register
class TransformerDecoderLayer(_TransformerBase):
    """One decoder layer, ``nn.TransformerDecoderLayer``, over two inputs: the target
    ``[T, d]`` and the encoder's memory ``[S, d]`` -> ``[T, d]``. Self-attention on the target
    (masked to earlier steps with ``causal``), attention from the target to the memory, and a
    feed-forward network, each with a residual connection and a LayerNorm.

    Layout: ``self_attn.*``, ``multihead_attn.*`` (both MultiheadAttention over ``d``),
    ``linear1``, ``linear2``, ``norm1``..``norm3`` as in TransformerEncoderLayer. MACs: the sum
    of the parts; the cross-attention's two products count T x S x d each."""

    kind = "TransformerDecoderLayer"
    positional = ("d_model", "nhead", "dim_feedforward")
    arity = (2, 2)
    masked = (0, "tgt_mask", "tgt_is_causal")

    def infer(self, inputs: list[TensorType]) -> Inferred:
        self._width(inputs)
        weights, macs = self._decoder_layer(inputs[0], inputs[1])
        return Inferred(inputs[0], weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self._layer_kwargs() | {"batch_first": True}
        args = (self._width(inputs), self.nhead)
        return TorchCall("nn.TransformerDecoderLayer", args, kwargs, self._forward(inputs))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self._stack_saved("", 1, "input0", inputs[0], inputs[1], norm=False)


# torch builds its stacks from a layer instance; these helpers build them from plain
# arguments ({part} is Encoder or Decoder) and keep torch's parameter names.
_STACK = '''class Transformer{part}Stack(nn.Transformer{part}):
    """num_layers batch-first nn.Transformer{part}Layer copies, then an optional LayerNorm."""

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        bias: bool = True,
        final_norm: bool = False,
    ) -> None:
        layer = nn.Transformer{part}Layer(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first=True,
            norm_first=norm_first,
            bias=bias,
        )
        norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias) if final_norm else None
        super().__init__(layer, num_layers, norm=norm{extra})
'''


class _TransformerStack(_TransformerBase):
    """Shared rule of TransformerEncoder/TransformerDecoder: ``num_layers`` layers under
    ``layers.{i}`` and, with ``final_norm``, a LayerNorm ``norm`` (torch's ``norm=``). torch
    has no constructor from plain arguments, so ``TorchCall.helper`` carries a small
    subclass that builds the stack."""

    positional = ("d_model", "nhead", "num_layers", "dim_feedforward")
    part: ClassVar[str]  # Encoder or Decoder
    helper: ClassVar[str]

    num_layers: Pos
    final_norm: bool = False

    def _layer(self, inputs: list[TensorType]) -> Part:
        raise NotImplementedError

    def infer(self, inputs: list[TensorType]) -> Inferred:
        self._width(inputs)
        norm = inputs[0] if self.final_norm else None
        weights, macs = self._stack(self._layer(inputs), self.num_layers, norm)
        return Inferred(inputs[0], weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self._layer_kwargs()
        if self.final_norm:
            kwargs["final_norm"] = True
        args = (self.num_layers, self._width(inputs), self.nhead)
        cls = f"Transformer{self.part}Stack"
        return TorchCall(cls, args, kwargs, self._forward(inputs), helper=self.helper)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        memory = inputs[1] if len(inputs) > 1 else None
        return self._stack_saved(
            "", self.num_layers, "input0", inputs[0], memory, norm=self.final_norm
        )

    def label(self) -> str:
        width = [str(self.d_model)] if self.d_model else []
        return self._label(*width, f"layers={self.num_layers}")


@register
class TransformerEncoder(_TransformerStack):
    """A stack of ``num_layers`` TransformerEncoderLayers (``nn.TransformerEncoder``),
    ``[T, d]`` -> ``[T, d]``; with ``causal`` every layer masks attention to later steps (the
    core of a decoder-only language model). Layout
    ``layers.{i}.<TransformerEncoderLayer tensors>``, plus ``norm.weight``/``norm.bias (d,)``
    with ``final_norm``. MACs: the sum of the layers (and the final norm)."""

    kind = "TransformerEncoder"
    part = "Encoder"
    helper = _STACK.format(part="Encoder", extra=", enable_nested_tensor=False")
    masked = (0, "mask", "is_causal")

    def _layer(self, inputs: list[TensorType]) -> Part:
        return self._encoder_layer(inputs[0])


@register
class TransformerDecoder(_TransformerStack):
    """A stack of ``num_layers`` TransformerDecoderLayers (``nn.TransformerDecoder``) over the
    target ``[T, d]`` and the memory ``[S, d]`` -> ``[T, d]``. Layout
    ``layers.{i}.<TransformerDecoderLayer tensors>``, plus ``norm.*`` with ``final_norm``.
    MACs: the sum of the layers (and the final norm)."""

    kind = "TransformerDecoder"
    part = "Decoder"
    helper = _STACK.format(part="Decoder", extra="")
    arity = (2, 2)
    masked = (0, "tgt_mask", "tgt_is_causal")

    def _layer(self, inputs: list[TensorType]) -> Part:
        return self._decoder_layer(inputs[0], inputs[1])


@register
class Transformer(_TransformerBase):
    """The encoder-decoder Transformer, ``nn.Transformer``: two inputs, the source ``[S, d]``
    and the target ``[T, d]`` (both already embedded) -> ``[T, d]``. The encoder
    (``num_encoder_layers`` layers) reads the source; the decoder (``num_decoder_layers``)
    reads the target and attends to the encoder's output; with ``causal`` the decoder's
    self-attention is masked to earlier target steps (as training a translation model needs).

    Layout: ``encoder.layers.{i}.*``, ``encoder.norm.*``, ``decoder.layers.{i}.*``,
    ``decoder.norm.*`` (torch always adds both final norms). At the original sizes,
    ``Transformer(512, 8, 6, 6, 2048)``, that is 44,140,544 parameters. MACs: the sum of the
    parts; the encoder's grow with S^2, the decoder's with T^2 and T x S."""

    kind = "Transformer"
    positional = (
        "d_model",
        "nhead",
        "num_encoder_layers",
        "num_decoder_layers",
        "dim_feedforward",
    )
    arity = (2, 2)
    masked = (1, "tgt_mask", "tgt_is_causal")

    nhead: Pos = 8
    num_encoder_layers: Pos = 6
    num_decoder_layers: Pos = 6

    def infer(self, inputs: list[TensorType]) -> Inferred:
        self._width(inputs)
        src, tgt = inputs
        encoder = self._stack(self._encoder_layer(src), self.num_encoder_layers, src)
        decoder = self._stack(self._decoder_layer(tgt, src), self.num_decoder_layers, tgt)
        weights, macs = _nest([("encoder", encoder), ("decoder", decoder)])
        return Inferred(tgt, weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self._layer_kwargs() | {"batch_first": True}
        args = (self._width(inputs), self.nhead, self.num_encoder_layers, self.num_decoder_layers)
        return TorchCall("nn.Transformer", args, kwargs, self._forward(inputs))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        src, tgt = inputs
        encoder = self._stack_saved("encoder.", self.num_encoder_layers, "input0", src, None, True)
        decoder = self._stack_saved("decoder.", self.num_decoder_layers, "input1", tgt, src, True)
        return [*encoder, *decoder]

    def label(self) -> str:
        width = [str(self.d_model)] if self.d_model else []
        return self._label(*width, f"layers={self.num_encoder_layers}+{self.num_decoder_layers}")

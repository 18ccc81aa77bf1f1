"""Attention and the Transformer's building blocks, over batch-first sequences ``[T, d]``.

Kinds: MultiheadAttention; TransformerEncoderLayer and TransformerDecoderLayer; the stacks
TransformerEncoder and TransformerDecoder; the encoder-decoder Transformer; and the parts to
write attention by hand: SDPA (with grouped-query heads) and RoPE.
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

import math
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

from dlspec.layers.base import (
    Given,
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    check_given,
    concrete,
    expect_float,
    expect_rank,
    register,
    saved_input,
)
from dlspec.layers.dense import Linear
from dlspec.layers.layout import (
    Layout,
    broadcast,
    contiguous,
    elementwise,
    empty_like,
    like,
    permute,
    reshape,
    slice_of,
    time_major,
    view_strides,
)
from dlspec.layers.norm import LayerNorm
from dlspec.layers.symbolic import Dim, product
from dlspec.structs import replace
from dlspec.validation import After, Field

Probability = Annotated[float, Field(ge=0, le=1)]
Eps = Annotated[float, Field(gt=0)]

# A causal mask for the sequence ``{x}`` in generated code: (T, T), -inf above the diagonal.
CAUSAL_MASK = "torch.nn.Transformer.generate_square_subsequent_mask({x}.size(1), device={x}.device)"

ATTENTION_MACS = (
    "projections once per step, plus the T x S products Q K^T and weights x V "
    "(torchinfo misses those and counts the projections once per sample)"
)

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
    reads: tuple[str, ...] = ("input0", "input1", "input2"),
    in_place: frozenset[str] = frozenset(),
    mask: Dim = 0,
) -> list[Saved]:
    """What ``nn.MultiheadAttention`` (``need_weights=False``, so through
    ``scaled_dot_product_attention``) keeps, as tensors internal to the layer named
    ``name.*``. ``keys`` are the other inputs: none for self-attention, the memory, or the
    keys and the values; ``reads`` names the tensors the query and the keys are, and
    ``in_place`` those of them stored time-major.

    Each projection reads a time-major copy of its input (self-attention and a memory of
    width E share one projection, so one copy), or the input itself when it is time-major
    already (stored so, or of one step); the projections kept are Q (T x E) and K, V (S x E
    each). Without dropout, CPU torch runs flash attention: it keeps its output and a
    log-sum-exp per head and query (h x T). With dropout it runs the plain math: scaled Q, a
    contiguous copy of K, V (whose storage is the whole joint projection when there is
    one), the probabilities, the dropout mask and the dropped probabilities (h x T x S
    each), and a copy of the output for the output projection. ``mask``: the elements per
    sample of the additive mask flash attention is given (a key-padding mask's), which it
    keeps; the plain math keeps nothing of a mask that needs no gradient."""
    t, e = query.shape
    s = keys[-1].shape[0] if keys else t
    projected = [(reads[0], query)]  # (the tensor read, its type) per projection
    if len(keys) == 1:
        projected += [(reads[1], keys[0])] * (1 if keys[0].shape[1] == e else 2)
    else:
        projected += list(zip(reads[1:], keys, strict=False))
    saved = [
        Saved(read if x.shape[0] == 1 or read in in_place else f"{name}.copy{i}", product(x.shape))
        for i, (read, x) in enumerate(projected)
    ]
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
            *([Saved(f"{name}.mask", mask)] if mask else []),
        ]
    return saved


def _heads_view_mask(batch: int, heads: int) -> bool:
    """Whether a key-padding mask expanded to every head as torch expands it,
    ``mask.view(B, 1, 1, S).expand(-1, h, -1, -1).reshape(B*h, 1, S)``, views the ``(B, S)``
    mask (the strides let it at a batch of one, or with one head) rather than copying it."""
    mask = broadcast(contiguous((batch, 1, 1, 2)), (batch, heads, 1, 2))
    return not reshape(mask, (batch * heads, 1, 2)).copied


def _heads_fold(x: Layout | None, heads: int) -> bool:
    """Whether a ``(B, ..., S, heads*hd)`` input split into heads, ``(B, ..., heads, S, hd)``,
    views as the ``(B*...*heads, S, hd)`` batch of matrices the plain math multiplies (else a
    copy): one head, or an input that lies time-major. None: a contiguous input."""
    if x is None:
        return heads == 1
    *lead, steps, width = x.sizes
    rank = len(lead)
    split = reshape(x, (*lead, steps, heads, width // heads))
    split = permute(split, (*range(rank), rank + 1, rank, rank + 2))
    return view_strides(split, (math.prod(lead) * heads, steps, width // heads)) is not None


def _width(t: TensorType) -> int:
    return concrete(t.shape[1], "d_model")


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


def _check_causal(causal: bool, query: TensorType, key: TensorType) -> None:
    if causal and query.shape[0] != key.shape[0]:
        raise LayerError(
            "E204",
            f"causal attention needs keys as long as the queries; got queries {query} and "
            f"keys {key}",
            arg="causal",
        )


def check_mask(mask: TensorType, scores: tuple[Dim, ...], kind: str) -> None:
    """Refuse a mask whose per-sample shape does not broadcast over the scores
    ``[..., h, T, S]``: aligned on the right, each of its sizes is the score's or 1."""
    wanted = "[" + ", ".join(str(d) for d in scores) + "]"
    if not 1 <= len(mask.shape) <= len(scores):
        raise LayerError(
            "E404",
            f"{kind}'s mask {mask} has rank {len(mask.shape)}: it must broadcast over the "
            f"scores {wanted} per sample ([S], [T, S] or [h, T, S], sizes 1 allowed)",
        )
    names = ("S", "T", "h", *(f"window dim {i}" for i in range(len(scores) - 3, 0, -1)))
    for size, score, name in zip(mask.shape[::-1], scores[::-1], names, strict=False):
        if size not in (1, score):
            raise LayerError(
                "E401",
                f"{kind}'s mask {mask} does not broadcast over the scores {wanted} "
                f"(..., heads, queries, keys): its size {size} along {name} should be "
                f"{score} or 1",
            )


_PROJECTED = '''class MultiheadAttention(nn.Module):
    """Multi-head attention with a bias on some projections only (Whisper's k_proj has
    none): separate q/k/v/out projections, each with a bias where `bias` names it."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: tuple[str, ...],
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads, self.dropout, self.causal = num_heads, dropout, causal
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias="q" in bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias="k" in bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias="v" in bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias="out" in bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, steps = query.shape[0], query.shape[1]
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (B, T|S, E)
        q, k, v = (x.reshape(batch, x.shape[1], self.num_heads, -1) for x in (q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, T|S, hd)
        bias = None
        if mask is not None:  # (B, S) ids, 0 where a key is padding: the most negative score
            bias = ((mask == 0).to(q.dtype) * torch.finfo(q.dtype).min)[:, None, None, :]
            if self.causal:  # and -inf at later keys: (B, 1, T, S)
                later = torch.ones(steps, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
                bias = bias.masked_fill(later, float("-inf"))
        dropout = self.dropout if self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=self.causal and bias is None
        )  # (B, h, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(batch, steps, -1))  # (B, T, E)
'''

PROJECTIONS = ("q", "k", "v", "out")
Projection = Literal["q", "k", "v", "out"]


def _once_each(bias: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
    """MultiheadAttention's ``bias``: a tuple names each projection at most once."""
    if not isinstance(bias, bool) and len(set(bias)) < len(bias):
        raise ValueError(f"names a projection twice: {list(bias)}")
    return bias


@register
class MultiheadAttention(Layer):
    """Multi-head attention. One input ``[T, E]`` is self-attention; two are
    ``(query [T, E], memory [S, kdim])`` with the memory as keys and values; three are
    ``(query [T, E], key [S, kdim], value [S, vdim])``; a long ``[S]`` after them is a
    key-padding mask (0 where a key is padding, as SDPA's long masks). Output ``[T, E]``.

    Layout: ``in_proj_weight (3E, E)`` when ``kdim == vdim == E``, else ``q_proj_weight (E, E)``,
    ``k_proj_weight (E, kdim)``, ``v_proj_weight (E, vdim)``; ``in_proj_bias (3E,)`` with
    ``bias``; then ``out_proj.weight (E, E)`` and, with ``bias``, ``out_proj.bias (E,)``.
    ``bias`` may instead name the projections that have one, ``bias=["q", "v", "out"]``
    (Whisper's attention, whose ``k_proj`` has none): the layer then has four projections
    ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (``weight``, and ``bias`` where named),
    as Hugging Face writes them, since torch's module holds one bias for all three inputs.
    MACs = T*E*(E + bq) + S*E*(kdim + bk) + S*E*(vdim + bv) [projections of Q, K, V]
    + T*S*E [Q K^T] + T*S*E [weights x V] + T*E*(E + bo) [output projection], with a b 1
    where that projection has a bias; self-attention has S = T, so it grows with T^2.

    A long ``[S]`` input after the sequences is a key-padding mask, as SDPA's masks are
    inputs: ``MultiheadAttention(8) <- x, memory, mask`` (``<- x, mask`` for
    self-attention), 0 where a key is padding, as BERT's ``attention_mask``
    (``PaddingMask`` makes one from token ids). Padding gets the most negative score
    (``finfo.min``, torch's ``key_padding_mask`` as a float), so a query whose keys are all
    padding stays finite, as under SDPA's long mask (torch's boolean mask gives NaN)."""

    kind = "MultiheadAttention"
    family = "attention"
    torchinfo_macs = ATTENTION_MACS
    positional = ("embed_dim", "num_heads")
    arity = (1, 4)

    embed_dim: Pos | None = None
    num_heads: Pos
    dropout: Probability = 0.0
    bias: Annotated[bool | tuple[Projection, ...], After(_once_each)] = True
    kdim: Pos | None = None
    vdim: Pos | None = None
    causal: bool = False

    def _biased(self, projection: str) -> bool:
        return self.bias if isinstance(self.bias, bool) else projection in self.bias

    def _split(self) -> bool:
        """Whether the projections are four Linear layers (some, not all, with a bias)."""
        return len({self._biased(p) for p in PROJECTIONS}) > 1

    @staticmethod
    def _sequences(inputs: list[TensorType]) -> list[TensorType]:
        """The query, key and value given (1 to 3): the inputs before a key-padding mask."""
        masked = len(inputs) > 1 and inputs[-1].dtype == "long"
        return inputs[:-1] if masked else inputs

    def _mask(self, inputs: list[TensorType]) -> TensorType | None:
        """The key-padding mask, a long ``[S]`` after the sequences, or None."""
        return inputs[-1] if len(self._sequences(inputs)) < len(inputs) else None

    def _sizes(self, inputs: list[TensorType]) -> tuple[int, int, int]:
        """``(E, kdim, vdim)`` after checking the query, key and value (and the mask)."""
        mask = self._mask(inputs)
        inputs = self._sequences(inputs)
        if len(inputs) > 3:
            raise LayerError(
                "E407",
                f"{self.kind} takes a query, keys and values (1 to 3 sequences) and a "
                f"key-padding mask (long [S]) last; got {len(inputs)} float inputs",
            )
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
        if mask is not None and tuple(mask.shape) != (key.shape[0],):
            raise LayerError(
                "E401",
                f"{self.kind}'s key-padding mask {mask} should be [{key.shape[0]}]: one id "
                f"per key of {key} (0 where the key is padding)",
            )
        _check_causal(self.causal, query, key)
        width = check_given(self.embed_dim, query.shape[1], "embed_dim", self.kind, "features")
        _check_heads(width, self.num_heads, "num_heads")
        kdim = check_given(self.kdim, key.shape[1], "kdim", self.kind, "the keys' width")
        vdim = check_given(self.vdim, value.shape[1], "vdim", self.kind, "the values' width")
        return width, kdim, vdim

    def infer(self, inputs: list[TensorType]) -> Inferred:
        width, kdim, vdim = self._sizes(inputs)
        b = {p: 1 if self._biased(p) else 0 for p in PROJECTIONS}
        weights: dict[str, Shape] = {}
        if self._split():
            for p, fan_in in zip(PROJECTIONS, (width, kdim, vdim, width), strict=True):
                weights[f"{p}_proj.weight"] = (width, fan_in)
                if b[p]:
                    weights[f"{p}_proj.bias"] = (width,)
        else:
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
        s: Dim = self._sequences(inputs)[-1].shape[0]  # keys and values
        macs = (
            t * width * (width + b["q"])  # query projection
            + s * width * (kdim + b["k"])  # key projection
            + s * width * (vdim + b["v"])  # value projection
            + t * width * (width + b["out"])  # output projection
            + 2 * t * s * width  # Q K^T and the weighted sum of the values
        )
        return Inferred(TensorType((t, width)), weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        width, kdim, vdim = self._sizes(inputs)
        sizes = {name: size for name, size in (("kdim", kdim), ("vdim", vdim)) if size != width}
        given = len(self._sequences(inputs))
        qkv = {1: "{x0}, {x0}, {x0}", 2: "{x0}, {x1}, {x1}", 3: "{x0}, {x1}, {x2}"}[given]
        padding = f"{{x{given}}}" if given < len(inputs) else None  # the mask's input
        if self._split():
            kwargs = sizes | self.keywords(include={"dropout", "causal"})
            args = (width, self.num_heads, self.bias)
            forward = "{module}(" + qkv + (f", {padding}" if padding else "") + ")"  # (B, T, E)
            return TorchCall("MultiheadAttention", args, kwargs, forward, helper=_PROJECTED)
        kwargs = self.keywords(exclude={"embed_dim", "num_heads", "kdim", "vdim", "causal"})
        kwargs |= sizes
        kwargs["batch_first"] = True
        mask = f"attn_mask={CAUSAL_MASK.format(x='{x0}')}, is_causal=True, " if self.causal else ""
        if padding:  # 0 is padding: the most negative score, as SDPA's long masks
            dtype = "{x0}.dtype"
            mask += f"key_padding_mask=({padding} == 0).to({dtype}) * torch.finfo({dtype}).min, "
        forward = "{module}(" + qkv + ", " + mask + "need_weights=False)[0]"  # (B, T, E)
        return TorchCall("nn.MultiheadAttention", (width, self.num_heads), kwargs, forward)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """torch's attention checks ``key is value`` (then the keys are one memory) and
        ``query is key`` as well (then it is self-attention), and keeps what those paths
        keep; an input stored time-major is projected in place. With a bias on some
        projections only: what its Linear layers and SDPA keep (:meth:`_split_saved`).

        Flash attention keeps the float mask it is given: torch expands a key-padding mask
        to every head, ``(B*h, 1, S)`` (a view of the ``(B, S)`` mask where the strides let
        it: :func:`_heads_view_mask`), or adds the causal ``(T, S)`` mask to it."""
        mask = self._mask(inputs)
        if self._split():
            return self._split_saved(inputs, given)
        inputs = self._sequences(inputs)
        t, s = inputs[0].shape[0], inputs[-1].shape[0]
        if mask is None or self.dropout:
            kept: Dim = 0
        elif self.causal:
            kept = self.num_heads * t * s
        else:
            kept = s if _heads_view_mask(given.batch(), self.num_heads) else self.num_heads * s
        reads = ["input0", "input1", "input2"][: len(inputs)]
        if len(inputs) == 3 and given.first[2] == given.first[1]:
            reads.pop()
        if len(reads) == 2 and given.first[1] == 0:
            reads.pop()
        keys = inputs[1 : len(reads)]
        return attention_saved(
            "attn",
            inputs[0],
            keys,
            self.num_heads,
            self.dropout,
            tuple(reads),
            given.in_place(),
            kept,
        )

    def _split_saved(self, inputs: list[TensorType], given: Given) -> list[Saved]:
        """Each projection keeps the input it reads, as a Linear layer (a copy where the
        input does not read as rows); SDPA over the projections keeps what it keeps over
        three inputs (:meth:`SDPA.saves_given`), and the output projection its input: the
        attention's output, a view of what flash attention keeps, or a copy of the plain
        math's. A key-padding mask is SDPA's bias ``(1, 1, S)``, or with ``causal``
        ``(1, T, S)``."""
        width = self._sizes(inputs)[0]
        mask = self._mask(inputs)
        inputs = self._sequences(inputs)
        reads = [min(i, len(inputs) - 1) for i in range(3)]  # the input each projection reads
        kept = [
            replace(saved_input(inputs, i, "rows"), reader=projection)
            for i, projection in zip(reads, PROJECTIONS, strict=False)
        ]
        t, s = inputs[0].shape[0], inputs[-1].shape[0]
        projected = [TensorType((t, width)), TensorType((s, width)), TensorType((s, width))]
        if mask is not None:  # made in the layer, from ids: it needs no gradient
            projected.append(TensorType((1, t if self.causal else 1, s), "long"))
        context = TensorType((t, width))
        sdpa = SDPA(num_heads=self.num_heads, dropout=self.dropout)
        names = {"input0": "q", "input1": "k", "input2": "v", "output": "context"}
        inner = sdpa.saves_given(projected, context, Given.plain(len(projected)))
        kept += [replace(x, tensor=names.get(x.tensor, f"sdpa.{x.tensor}")) for x in inner]
        return [*kept, Saved("context", product(context.shape))]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """torch computes batch-first attention time-major and returns a transposed view;
        split projections end with a Linear layer's contiguous output."""
        return output if self._split() else time_major(output.sizes)

    def label(self) -> str:
        causal = ", causal" if self.causal else ""
        bias = "" if isinstance(self.bias, bool) else f", bias={'+'.join(self.bias)}"
        return f"MultiheadAttention(heads={self.num_heads}{bias}{causal})"


class _TransformerBase(Layer):
    """Options shared by the Transformer kinds, named and defaulted as in torch (always
    batch-first). ``d_model`` is taken from the input (checked when written)."""

    family = "attention"
    torchinfo_macs = ATTENTION_MACS
    # with ``causal``: which input the mask is for, and the forward keywords of the mask and
    # of its hint
    masked: ClassVar[tuple[int, str, str]] = (0, "src_mask", "is_causal")
    attentions: ClassVar[int] = 1  # attention sub-layers per layer (a decoder's: 2)

    d_model: Pos | None = None
    nhead: Pos
    dim_feedforward: Pos = 2048
    dropout: Probability = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    layer_norm_eps: Eps = 1e-5
    norm_first: bool = False
    bias: bool = True
    causal: bool = False

    def _normed(self) -> bool:
        """Whether the output is a LayerNorm's (contiguous): after each sub-layer, unless
        ``norm_first``."""
        return not self.norm_first

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """A LayerNorm's output is contiguous. With ``norm_first`` each sub-layer's output
        is added to the stream instead, the sum lying in the stream's order (the first
        operand's, ``TensorIterator``): an attention's time-major view, then the
        feed-forward's contiguous Linear output, layer after layer."""
        if self._normed():
            return output
        x = inputs[0]
        for _ in range(self.copies()):
            for _ in range(self.attentions):
                x = elementwise([x, time_major(output.sizes)], output.sizes)
            x = elementwise([x, output], output.sizes)
        return x

    @staticmethod
    def layer_arguments(layer: Any) -> dict[str, Any]:
        """The options of a torch ``nn.Transformer{Encoder,Decoder}Layer``, as this kind's
        arguments (for importing a torch model)."""
        activation = layer.activation
        name = getattr(activation, "__name__", type(activation).__name__).lower()
        return {
            "d_model": layer.self_attn.embed_dim,
            "nhead": layer.self_attn.num_heads,
            "dim_feedforward": layer.linear1.out_features,
            "dropout": layer.dropout.p,
            "activation": name,
            "layer_norm_eps": layer.norm1.eps,
            "norm_first": layer.norm_first,
            "bias": layer.linear1.bias is not None,
        }

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """This kind's arguments read from the torch module it stands for."""
        return cls.layer_arguments(module)

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

    def _reads(self, prefix: str, x: str, index: int) -> str:
        """The tensor sub-block ``index`` of a layer reads: ``x`` post-norm, else its norm's
        output."""
        return f"{prefix}.norm{index}.out" if self.norm_first else x

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def _self_attention_saved(
        self, prefix: str, x: str, t: TensorType, in_place: frozenset[str]
    ) -> tuple[list[Saved], str]:
        """A layer's first sub-block, self-attention over ``x`` with its residual; returns
        the tensor it hands on."""
        reads = (self._reads(prefix, x, 1),)
        attn = attention_saved(
            f"{prefix}.self_attn", t, [], self.nhead, self.dropout, reads, in_place
        )
        return self._residual_saved(prefix, x, attn, t.shape[0], _width(t), 1)

    def _encoder_saved(
        self, prefix: str, x: str, t: TensorType, in_place: frozenset[str]
    ) -> tuple[list[Saved], str]:
        """One encoder layer reading ``x``; ``in_place``: the tensors stored time-major."""
        rows, width = t.shape[0], _width(t)
        first, x1 = self._self_attention_saved(prefix, x, t, in_place)
        ff = self._feedforward_saved(prefix, f"{prefix}.ff_in", rows, width)
        second, out = self._residual_saved(prefix, x1, ff, rows, width, 2)
        return [*first, *second], out

    def _decoder_saved(
        self,
        prefix: str,
        x: str,
        t: TensorType,
        memory: TensorType,
        source: str,
        in_place: frozenset[str],
    ) -> tuple[list[Saved], str]:
        """One decoder layer reading ``x`` and the memory, the tensor named ``source``."""
        rows, width = t.shape[0], _width(t)
        first, x1 = self._self_attention_saved(prefix, x, t, in_place)
        both = (self._reads(prefix, x1, 2), source)
        cross = attention_saved(
            f"{prefix}.cross_attn", t, [memory], self.nhead, self.dropout, both, in_place
        )
        second, x2 = self._residual_saved(prefix, x1, cross, rows, width, 2)
        ff = self._feedforward_saved(prefix, f"{prefix}.ff_in", rows, width)
        third, out = self._residual_saved(prefix, x2, ff, rows, width, 3)
        return [*first, *second, *third], out

    def _stack_saved(
        self,
        prefix: str,
        count: int,
        x: str,
        t: TensorType,
        memory: TensorType | None,
        norm: bool,
        source: str = "input1",
        in_place: frozenset[str] = frozenset(),
    ) -> list[Saved]:
        """``count`` layers one after another (decoder layers when there is a ``memory``,
        the tensor named ``source``), then the optional final LayerNorm; ``in_place``: the
        tensors stored time-major."""
        saved: list[Saved] = []
        for i in range(count):
            layer = f"{prefix}layers.{i}"
            if memory is None:
                kept, x = self._encoder_saved(layer, x, t, in_place)
            else:
                kept, x = self._decoder_saved(layer, x, t, memory, source, in_place)
            saved += kept
        if norm:
            saved += self._norm_saved(f"{prefix}norm", x, t.shape[0], concrete(t.shape[1], "d"))
        return saved

    def _layer_kwargs(self) -> dict[str, Any]:
        """The layer options that differ from torch's defaults, as constructor keywords."""
        options = {"dim_feedforward", "dropout", "activation", "layer_norm_eps", "norm_first"}
        return self.keywords(include=options | {"bias"})

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

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        return self._stack_saved(
            "", 1, "input0", inputs[0], None, norm=False, in_place=given.in_place()
        )


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
    attentions = 2

    def infer(self, inputs: list[TensorType]) -> Inferred:
        self._width(inputs)
        weights, macs = self._decoder_layer(inputs[0], inputs[1])
        return Inferred(inputs[0], weights, macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self._layer_kwargs() | {"batch_first": True}
        args = (self._width(inputs), self.nhead)
        return TorchCall("nn.TransformerDecoderLayer", args, kwargs, self._forward(inputs))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        return self._stack_saved(
            "", 1, "input0", inputs[0], inputs[1], norm=False, in_place=given.in_place()
        )


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

    def copies(self) -> int:
        return self.num_layers

    def _normed(self) -> bool:
        return super()._normed() or self.final_norm

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        return cls.layer_arguments(module.layers[0]) | {
            "num_layers": len(module.layers),
            "final_norm": module.norm is not None,
        }

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

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        memory = inputs[1] if len(inputs) > 1 else None
        return self._stack_saved(
            "",
            self.num_layers,
            "input0",
            inputs[0],
            memory,
            norm=self.final_norm,
            in_place=given.in_place(),
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
    attentions = 2
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

    def copies(self) -> int:
        return self.num_encoder_layers + self.num_decoder_layers

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        return cls.layer_arguments(module.encoder.layers[0]) | {
            "num_encoder_layers": len(module.encoder.layers),
            "num_decoder_layers": len(module.decoder.layers),
        }

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

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        src, tgt = inputs
        in_place = given.in_place()
        encoder = self._stack_saved(
            "encoder.", self.num_encoder_layers, "input0", src, None, True, in_place=in_place
        )
        decoder = self._stack_saved(
            "decoder.",
            self.num_decoder_layers,
            "input1",
            tgt,
            src,
            True,
            "encoder.norm.out",
            in_place,
        )
        return [*encoder, *decoder]

    def label(self) -> str:
        width = [str(self.d_model)] if self.d_model else []
        return self._label(*width, f"layers={self.num_encoder_layers}+{self.num_decoder_layers}")


# Attention written from its parts (nanoGPT, Llama): project with Linear layers, then SDPA.

_SDPA = '''class SDPA(nn.Module):
    """Attention over already projected (B, ..., T, h*hd) queries and (B, ..., S, kv*hd) keys
    and values, split into heads (leading dims, such as windows, are attended apart);
    kv < h key/value heads are shared by h // kv query heads each (grouped-query attention).
    Masks broadcast over the scores (..., h, T, S) per sample and add up: float, a bias
    added to the scores (ALiBi, relative positions); integer, 0 where a key is padding, not
    attended (BERT's attention_mask). The scores are scaled by `scale` (1 / sqrt(hd) when
    None; T5 does not scale them: 1.0)."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        causal: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.causal, self.dropout, self.scale = causal, dropout, scale

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *masks: torch.Tensor
    ) -> torch.Tensor:
        # (B, T, h*hd) -> (B, h, T, hd), and so for any dims before T (windows); sizes read
        # from the tensor (a traced export keeps them dynamic, unflatten's fixed)
        q = q.reshape(*q.shape[:-1], self.num_heads, -1).transpose(-2, -3)
        k = k.reshape(*k.shape[:-1], self.num_kv_heads, -1).transpose(-2, -3)  # (B, kv, S, hd)
        v = v.reshape(*v.shape[:-1], self.num_kv_heads, -1).transpose(-2, -3)  # (B, kv, S, hd)
        if self.num_kv_heads != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=-3)  # (B, h, S, hd)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=-3)
        bias = None
        for mask in masks:
            if not mask.is_floating_point():  # 0 is padding: the most negative score
                mask = (mask == 0).to(q.dtype) * torch.finfo(q.dtype).min
            while mask.dim() < q.dim():
                mask = mask.unsqueeze(1)  # (B, h, T, S), dims of size 1 broadcast
            bias = mask if bias is None else bias + mask
        if self.causal and bias is not None:  # torch takes one: -inf at later keys in the bias
            later = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
            bias = bias.masked_fill(later.triu(1), float("-inf"))
        dropout = self.dropout if self.training else 0.0
        causal = self.causal and bias is None
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=causal, scale=self.scale
        )  # (B, h, T, hd)
        return y.transpose(-2, -3).flatten(-2)  # (B, T, h*hd)
'''


@register
class SDPA(Layer):
    """Scaled dot-product attention over projected inputs, as nanoGPT and Llama write it:
    ``a = SDPA(heads) <- q, k, v`` with queries ``[T, h*hd]`` and keys and values
    ``[S, kv*hd]``, split into ``num_heads`` (h) query heads and ``num_kv_heads`` (kv, default
    h) key/value heads; with kv < h each key/value head serves h / kv query heads
    (grouped-query attention). ``softmax(scale * q k^T + masks) v`` per head (``scale``
    1 / sqrt(hd) by default; T5 writes ``scale=1.0``, no scaling), ``causal`` masking later
    steps -> ``[T, h*hd_v]``. Dimensions before the last two (the windows
    ``WindowPartition`` makes, ``[nH, nW, N, C]``) are attended apart, as torch's attention
    does with its batch dimensions; q, k and v share them.

    Inputs after the values are masks, ``SDPA(heads) <- q, k, v, mask``, whose per-sample
    shapes broadcast (aligned on the right, each size equal or 1) over the scores
    ``[..., h, T, S]``: ``[S]`` for a key-padding mask, ``[T, S]``, ``[h, T, S]``, ``[h, 1, S]``.
    A long mask says which keys are padding (0) and which are attended (any other value; 1
    in BERT's ``attention_mask``): padding gets the most negative score (``finfo.min``, as
    BERT's extended attention mask, so a row of padding only stays finite); a float mask is
    a bias added to the scores (ALiBi, a relative position bias, Swin's shifted-window mask).
    Two masks add up, and with ``causal=true`` the causal mask too (a T5 decoder's position
    bias over causal attention: ``SDPA(h, causal=true, scale=1.0) <- q, k, v, bias``). No
    parameters (the projections are Linear layers). MACs: T x S x h x hd for ``q k^T`` plus
    T x S x h x hd_v for the weighted sum of the values, per window (the masks' additions
    count 0); torchinfo counts 0 (no weights)."""

    kind = "SDPA"
    torch_names = ("ScaledDotProductAttention",)  # the class generated code had before
    family = "attention"
    torchinfo_macs = "the two T x S products per head (torchinfo: 0, no weights)"
    positional = ("num_heads", "num_kv_heads")
    arity = (3, 5)

    num_heads: Pos
    num_kv_heads: Pos | None = None
    causal: bool = False
    dropout: Probability = 0.0
    scale: Annotated[float, Field(gt=0)] | None = None

    def _heads(self, inputs: list[TensorType]) -> tuple[int, int, int]:
        """``(kv heads, head width, value head width)`` after checking q, k, v (and the
        masks)."""
        query, key, value = inputs[:3]
        for x in inputs[:3]:
            expect_rank(x, range(2, 8), "[..., T, d] (batch-first sequences)", self.kind)
            expect_float(x, self.kind)
        lead = query.shape[:-2]
        for x in (key, value):
            if x.shape[:-2] != lead:
                raise LayerError(
                    "E401",
                    f"queries {query} and keys/values {x} differ in their leading dimensions "
                    "(windows are attended apart: q, k and v must have the same)",
                )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise LayerError(
                "E204",
                f"num_heads={self.num_heads} query heads do not share num_kv_heads={kv} "
                "key/value heads evenly",
                [f"{self.num_heads} % {kv} = {self.num_heads % kv}"],
                arg="num_kv_heads",
            )
        width = concrete(query.shape[-1], "SDPA's query width")
        _check_heads(width, self.num_heads, "num_heads")
        head = width // self.num_heads
        if key.shape[-1] != kv * head:
            raise LayerError(
                "E401",
                f"keys {key} should have {kv} heads of the queries' width {head} = {kv * head} "
                f"features (queries {query}, num_heads={self.num_heads})",
            )
        if key.shape[-2] != value.shape[-2]:
            raise LayerError("E401", f"keys {key} and values {value} differ in length")
        value_width = concrete(value.shape[-1], "SDPA's value width")
        _check_heads(value_width, kv, "num_kv_heads")
        scores = (*lead, self.num_heads, query.shape[-2], key.shape[-2])
        for mask in inputs[3:]:
            check_mask(mask, scores, self.kind)
        if self.causal and query.shape[-2] != key.shape[-2]:
            raise LayerError(
                "E204",
                f"causal attention needs keys as long as the queries; got queries {query} and "
                f"keys {key}",
                arg="causal",
            )
        return kv, head, value_width // kv

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _, head, value_head = self._heads(inputs)
        query = inputs[0]
        t, s = query.shape[-2], inputs[1].shape[-2]
        macs = product(query.shape[:-2]) * t * s * self.num_heads * (head + value_head)
        width = self.num_heads * value_head
        return Inferred(TensorType((*query.shape[:-1], width)), macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kv, _, _ = self._heads(inputs)
        kwargs: dict[str, Any] = {"causal": self.causal} if self.causal else {}
        if self.dropout:
            kwargs["dropout"] = self.dropout
        if self.scale is not None:
            kwargs["scale"] = self.scale
        args = (self.num_heads, kv)
        forward = "{module}({inputs})"
        return TorchCall("SDPA", args, kwargs, forward, helper=_SDPA)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """Without dropout, with values as wide per head as the keys, with each input's
        features adjacent in memory (grouped-query attention's keys and values need not:
        their repetition is a contiguous copy), without windows and without a mask that
        requires a gradient (a learned bias), CPU torch runs flash attention: it keeps q, k and v
        (views of the inputs, or for grouped-query attention k and v repeated to h heads,
        one copy each), its output, a log-sum-exp per head and query, and the scores made
        from long masks. Otherwise it runs the plain math: q and k each scaled by the
        square root of the scale, the values (in place where their heads view as a batch of
        matrices, else copied or repeated), the probabilities (h x T x S), with dropout, its
        mask and the dropped probabilities and, ``causal`` over a learned bias, the mask of
        later keys filled into it. With ``causal`` and a mask, flash attention keeps the
        masks with the causal part added."""
        kv, head, value_head = self._heads(inputs)
        query = inputs[0]
        windows = product(query.shape[:-2])
        t, s = query.shape[-2], inputs[1].shape[-2]
        h = self.num_heads
        unit_stride = all(given.unit_stride(i) for i in self._laid_out(kv))
        bias_grad = any(
            x.dtype == "float" and given.needs_grad(i) for i, x in enumerate(inputs) if i >= 3
        )
        if self._flash(head, value_head, unit_stride, len(query.shape) > 2, bias_grad):
            if kv == h:
                keys = [saved_input(inputs, 1), saved_input(inputs, 2)]
            else:
                keys = [Saved("k", s * h * head), Saved("v", s * h * value_head)]
            lse = Saved("logsumexp", h * t, "float32")
            # the scores made from the masks (and the causal part added): flash keeps them
            causal = [TensorType((t, s))] if self.causal else []
            shape = _broadcast_masks([*inputs[3:], *causal]) if inputs[3:] else None
            masks = [Saved("mask", product(shape))] if shape else []
            return [saved_input(inputs), *keys, Saved("output", product(output.shape)), lse, *masks]
        # each product keeps one operand for the other's gradient: the scaled queries for the
        # keys', the values for the probabilities' (which the scores' need); the softmax keeps
        # its probabilities for the scores' gradient, the product with v for the values'
        q_grad, k_grad, v_grad = (given.needs_grad(i) for i in range(3))
        scores_grad = q_grad or k_grad or bias_grad
        if self.dropout:
            kept = {"probs": scores_grad, "mask": scores_grad, "dropped": v_grad}
        else:
            kept = {"probs": scores_grad or v_grad}
        layouts = given.layouts or (None,) * 3
        in_place = kv == h and _heads_fold(layouts[2], h)
        value = saved_input(inputs, 2) if in_place else Saved("v", windows * s * h * value_head)
        return [
            *([Saved("q_scaled", windows * t * h * head)] if k_grad else []),
            *([Saved("k_scaled", windows * s * h * head)] if q_grad else []),
            *([value] if scores_grad else []),
            *(Saved(what, windows * h * t * s) for what, keep in kept.items() if keep),
            # the causal part added into a learned bias: its (T, S) mask of later keys
            *([Saved("later", t * s, "bool", batched=False)] if self.causal and bias_grad else []),
        ]

    def _laid_out(self, kv: int) -> range:
        """The inputs that reach torch's attention in their own layout: q, k and v, but
        for grouped-query attention (``kv`` heads fewer than h) only q, the keys and
        values being repeated to h heads by ``repeat_interleave``, a contiguous copy."""
        return range(3) if kv == self.num_heads else range(1)

    def _flash(
        self, head: int, value_head: int, unit_stride: bool, windows: bool, bias_grad: bool
    ) -> bool:
        """Whether CPU torch runs flash attention (else the plain math): ``unit_stride``,
        every input's features adjacent in memory; flash attention takes (B, h, T, hd)
        tensors only (no ``windows``) and no mask that requires a gradient (``bias_grad``:
        a learned bias); a long mask's scores, made by the layer, require none."""
        plain = not windows and not bias_grad
        return not self.dropout and head == value_head and unit_stride and plain

    def layout_given(self, inputs: list[Layout], output: Layout, grads: tuple[bool, ...]) -> Layout:
        """Flash attention lays its output out as the queries lie (``empty_like``), and the
        layer's output views it. The plain math's product is contiguous ``(B, ..., h, T,
        hd_v)``: the heads moved back beside their features view it where that can be (a
        head one feature wide), else copy it, contiguous."""
        query, _, value = inputs[:3]
        head = query.sizes[-1] // self.num_heads
        value_head = value.sizes[-1] // (self.num_kv_heads or self.num_heads)
        unit = all(
            inputs[i].strides[-1] == 1 for i in self._laid_out(self.num_kv_heads or self.num_heads)
        )
        windows = len(query.sizes) > 3
        if self._flash(head, value_head, unit, windows, any(grads[3:])):
            return empty_like(query)
        *lead, steps, _ = output.sizes
        rank = len(lead)
        made = contiguous((*lead, self.num_heads, steps, value_head))
        merged = reshape(permute(made, (*range(rank), rank + 1, rank, rank + 2)), output.sizes)
        return output if merged.copied else merged

    def label(self) -> str:
        kv = f", kv={self.num_kv_heads}" if self.num_kv_heads else ""
        causal = ", causal" if self.causal else ""
        scale = "" if self.scale is None else f", scale={self.scale:g}"
        return f"SDPA(heads={self.num_heads}{kv}{causal}{scale})"


def _broadcast_masks(masks: list[TensorType]) -> tuple[Dim, ...]:
    """The per-sample shape masks that broadcast together add up to."""
    rank = max(len(x.shape) for x in masks)
    padded = [(1,) * (rank - len(x.shape)) + tuple(x.shape) for x in masks]
    return tuple(next((d for d in sizes if d != 1), 1) for sizes in zip(*padded, strict=True))


@register
class PaddingMask(Layer):
    """The keep-mask of a sequence of token ids ``[T]`` (long): 1 where the token is not
    ``pad_id``, 0 where it is padding -> ``[T]`` (long), the mask SDPA's fourth input reads
    (``mask = PaddingMask(0) <- tokens``), as BERT's ``attention_mask``. No parameters,
    MACs 0, nothing kept for backward (no gradient flows through ids)."""

    kind = "PaddingMask"
    family = "attention"
    positional = ("pad_id",)

    pad_id: int = 0

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if x.dtype != "long":
            raise LayerError(
                "E404", f"PaddingMask reads token ids and expects a long tensor, got float {x}"
            )
        return Inferred(x)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=f"({{x}} != {self.pad_id!r}).long()")

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def label(self) -> str:
        return f"PaddingMask({self.pad_id})"


_ROPE = '''class RoPE(nn.Module):
    """Rotates each head's features of a (B, T, h*hd) query or key by its position (RoPE, in
    Llama's "rotate half" form: feature i pairs with feature i + hd/2)."""

    def __init__(self, num_heads: int, base: float = 10000.0) -> None:
        super().__init__()
        self.num_heads, self.base = num_heads, base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = x.shape[0], x.shape[1]
        x = x.reshape(batch, steps, self.num_heads, -1)  # (B, T, h, hd)
        half = x.shape[-1] // 2
        exponent = torch.arange(half, device=x.device, dtype=torch.float32) / half
        position = torch.arange(steps, device=x.device, dtype=torch.float32)
        angle = position[:, None] * self.base**-exponent  # (T, hd/2)
        cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]  # (T, 1, hd/2)
        x1, x2 = x[..., :half], x[..., half:]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return rotated.reshape(batch, steps, -1)  # (B, T, h*hd)
'''


@register
class RoPE(Layer):
    """Rotary position embedding (Llama, GPT-NeoX): rotates each of ``num_heads`` heads of a
    query or key sequence ``[T, h*hd]`` by angles ``t / base^(2i/hd)`` of its step t; apply it
    to q and k before SDPA. Shape unchanged; the head width must be even. No parameters or
    buffers (the angles are computed from T); MACs 0 (no weights, as torchinfo)."""

    kind = "RoPE"
    torch_names = ("RotaryEmbedding",)  # the class generated code had before
    family = "embedding"
    positional = ("num_heads",)

    num_heads: Pos
    base: Annotated[float, Field(gt=1)] = 10000.0

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        _sequence(x, self.kind)
        width = concrete(x.shape[1], "RoPE's width")
        _check_heads(width, self.num_heads, "num_heads")
        if (width // self.num_heads) % 2:
            raise LayerError(
                "E204",
                f"RoPE rotates pairs of features, but the head width {width} / "
                f"{self.num_heads} = {width // self.num_heads} is odd",
                arg="num_heads",
            )
        return Inferred(x)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = {} if self.base == 10000.0 else {"base": self.base}
        return TorchCall("RoPE", (self.num_heads,), kwargs, helper=_ROPE)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """As the helper computes it: the heads split off the input (a view where one can
        be), each half rotated element-wise in its order (the angles, (T, 1, hd/2),
        broadcast; the two products' sum in the format they are contiguous in), the halves
        concatenated in the format their strides suggest (``cat``:
        channels-last where the steps vary fastest) and the heads merged back."""
        batch, steps, width = inputs[0].sizes
        head = width // self.num_heads
        split = reshape(inputs[0], (batch, steps, self.num_heads, head))
        half = slice_of(split, 3, head // 2, 1)
        angles = Layout((1, steps, 1, head // 2), (0, head // 2, head // 2, 1))
        product = elementwise([half, angles], half.sizes)  # x1 * cos, as x2 * sin
        rotated = elementwise([product, product], half.sizes)  # their difference
        return reshape(like(rotated, split.sizes), output.sizes)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The cosines and sines of the angles, (T, hd/2) each, shared by the batch."""
        x = inputs[0]
        half = concrete(x.shape[1], "RoPE's width") // self.num_heads // 2
        return [Saved(n, x.shape[0] * half, "float32", batched=False) for n in ("cos", "sin")]

    def label(self) -> str:
        return f"RoPE(heads={self.num_heads})"

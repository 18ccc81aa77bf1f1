"""Token embeddings, positional encodings and learned tensors (Parameter).

``Embedding`` turns token ids into vectors; the positional encodings add a position-dependent
vector to each step of a ``[T, D]`` sequence. None of them multiplies, so all have 0 MACs (a
lookup, and an element-wise add like a residual connection's).
"""

from typing import Any, ClassVar

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    Shape,
    StatementName,
    TensorType,
    TorchCall,
    concrete,
    expect_float,
    expect_rank,
    register,
    tie_label,
    tied_weight,
)
from dlspec.layers.layout import Layout, elementwise
from dlspec.layers.symbolic import Dim
from dlspec.validation import Field


@register
class Embedding(Layer):
    """A lookup table of ``num_embeddings`` vectors of width ``embedding_dim``: long token ids of
    any shape ``[*]`` (typically ``[T]``) -> ``[*, embedding_dim]``. Layout
    ``weight (num_embeddings, embedding_dim)``; ``padding_idx`` (negative counts from the end)
    names the row whose gradient torch keeps at zero. MACs 0 (a lookup). ``tie="enc_emb"``
    looks up the table of the earlier layer ``enc_emb`` (an Embedding, or a Linear(in ->
    num_embeddings)) in place of one of its own, as T5's decoder reads its encoder's; it is
    counted once."""

    kind = "Embedding"
    family = "embedding"
    torchinfo_macs = "0, a lookup (torchinfo: the table's elements per sample)"
    positional = ("num_embeddings", "embedding_dim")
    references = ("tie",)

    num_embeddings: Pos
    embedding_dim: Pos
    padding_idx: int | None = None
    tie: StatementName | None = None

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if x.dtype != "long":
            raise LayerError(
                "E404",
                f"Embedding looks up token ids and expects a long tensor, got float {x}",
                ["declare the input as e.g. `input tokens: long[T]`"],
            )
        if self.padding_idx is not None and not (
            -self.num_embeddings <= self.padding_idx < self.num_embeddings
        ):
            raise LayerError(
                "E204",
                f"padding_idx={self.padding_idx} is outside the table of "
                f"{self.num_embeddings:,} rows",
                arg="padding_idx",
            )
        weights: dict[str, Shape] = {"weight": (self.num_embeddings, self.embedding_dim)}
        output = TensorType((*x.shape, self.embedding_dim))
        return Inferred(output, weights, tied=tied_weight(self.tie))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = {} if self.padding_idx is None else {"padding_idx": self.padding_idx}
        return TorchCall("nn.Embedding", (self.num_embeddings, self.embedding_dim), kwargs)

    def label(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{tie_label(self.tie)})"

    def index_limit(self) -> int:
        return self.num_embeddings


class _PositionalEncoding(Layer):
    """Shared rule of the positional encodings: ``[T, D]`` -> ``[T, D]``, adding row ``t`` of a
    ``(max_len, D)`` table to step ``t``. A concrete ``T`` longer than ``max_len`` is refused
    (a symbolic ``T`` cannot be checked here). torch has no such module: ``TorchCall.helper``
    carries the source of a small one, which reads the table as ``table[: x.size(1)]``."""

    family = "embedding"
    positional = ("max_len",)
    helper: ClassVar[str]  # the nn.Module source, defining a class named like the kind

    max_len: Pos

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """``max_len`` from the torch module's one table (for importing a torch model)."""
        (table,) = module.state_dict().values()
        return {"max_len": int(table.shape[0])}

    def _table(self, x: TensorType) -> Shape:
        """The table's shape, ``(max_len, D)``, after checking the input."""
        expect_rank(x, (2,), "[T, D]", self.kind)
        expect_float(x, self.kind)
        steps = x.shape[0]
        if isinstance(steps, int) and steps > self.max_len:
            raise LayerError(
                "E401",
                f"{self.kind} holds positions for max_len={self.max_len:,} steps, but its input "
                f"{x} has {steps:,}",
                arg="max_len",
            )
        return (self.max_len, concrete(x.shape[1], f"{self.kind}'s width"))

    def _limits(self, x: TensorType) -> list[tuple[Dim, int, str]]:
        """A symbolic length can only be checked against max_len at the spec's bindings."""
        return [(x.shape[0], self.max_len, f"{self.kind} holds {self.max_len:,} positions")]

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # an addition: its gradient needs no tensor

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """The sum's, of the input and the table's first T rows (the same for every sample)."""
        _, steps, width = output.sizes
        table = Layout((1, steps, width), (0, width, 1))
        return elementwise([inputs[0], table], output.sizes)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        width = concrete(inputs[0].shape[1], f"{self.kind}'s width")
        return TorchCall(self.kind, (self.max_len, width), helper=self.helper)

    def label(self) -> str:
        return f"{self.kind}({self.max_len})"


_SINUSOIDAL = '''class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sine/cosine table of "Attention Is All You Need" to a (B, T, D) input."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)  # (max_len, 1)
        frequency = 10000.0 ** (-torch.arange(0, d_model, 2) / d_model)  # (ceil(D/2),)
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
        self.register_buffer("table", table)  # (max_len, D), saved but not trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.size(1)]  # (B, T, D)
'''


@register
class SinusoidalPositionalEncoding(_PositionalEncoding):
    """Adds the fixed sinusoidal position table of the original Transformer:
    ``table[t, 2i] = sin(t / 10000^(2i/D))``, ``table[t, 2i+1] = cos(t / 10000^(2i/D))``.
    ``[T, D]`` -> ``[T, D]`` with ``T <= max_len``. No parameters; one persistent buffer
    ``table (max_len, D)``. MACs 0."""

    kind = "SinusoidalPositionalEncoding"
    helper = _SINUSOIDAL

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        return Inferred(x, buffers={"table": self._table(x)}, limits=self._limits(x))


_LEARNED = '''class LearnedPositionalEncoding(nn.Module):
    """Adds a trained vector per position (GPT-2 style) to a (B, T, D) input."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # (max_len, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.size(1)]  # (B, T, D)
'''


@register
class LearnedPositionalEncoding(_PositionalEncoding):
    """Adds a trained vector per position (as GPT-2 does): ``[T, D]`` -> ``[T, D]`` with
    ``T <= max_len``. Layout ``weight (max_len, D)``, initialised from N(0, 0.02^2). MACs 0."""

    kind = "LearnedPositionalEncoding"
    torchinfo_macs = "0, an addition (torchinfo: the table's elements per sample)"
    helper = _LEARNED

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        return Inferred(x, weights={"weight": self._table(x)}, limits=self._limits(x))


_PARAMETER = '''class Parameter(nn.Module):
    """A trained tensor, the same for every sample (a class token, a position table)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(*shape) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(x.shape[0], *self.weight.shape)  # (B, *shape)
'''


@register
class Parameter(Layer):
    """A learned tensor of per-sample shape ``shape`` (``Parameter(1, 768)``: a class token),
    repeated for every sample of the batch; its input only gives the batch size
    (``cls = Parameter(1, 768) <- patches``). Layout ``weight shape``, initialised from
    N(0, 0.02^2). MACs 0 (nothing is multiplied; torchinfo counts its elements once)."""

    kind = "Parameter"
    torch_names = ("LearnedTensor",)  # the class generated code had before
    family = "embedding"
    torchinfo_macs = "0, nothing multiplied (torchinfo: its elements per sample)"
    variadic = "shape"

    shape: tuple[Pos, ...] = Field(min_length=1)

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """The shape of the torch module's tensor (for importing a torch model)."""
        return {"shape": tuple(module.weight.shape)}

    def infer(self, inputs: list[TensorType]) -> Inferred:
        return Inferred(TensorType(self.shape), weights={"weight": self.shape})

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("Parameter", self.shape, helper=_PARAMETER)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def output_storage(self, inputs: list[TensorType], output: TensorType) -> Dim:
        return 0  # the output is the parameter itself, repeated: no activation memory

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """The parameter's own layout, with a batch stride of 0 (``expand``): a kernel that
        needs it dense copies all of it, every sample."""
        return Layout(output.sizes, (0, *output.strides[1:]))

    def label(self) -> str:
        return f"Parameter({', '.join(map(str, self.shape))})"


@register
class Full(Layer):
    """A tensor of its input's shape and element type with every element ``value``, as
    ``torch.full_like``; the input gives only the shape (``token_type_ids = Full(0) <-
    input_ids``: BERT's token types, all 0 when none are given). A long input takes an
    integer ``value``. No parameters, MACs 0; no gradient flows through it, so nothing is
    kept for backward."""

    kind = "Full"
    family = "embedding"
    positional = ("value",)

    value: int | float = 0

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if x.dtype == "long" and not isinstance(self.value, int):
            raise LayerError(
                "E404",
                f"Full({self.value!r}) of a long input {x} needs an integer value (token ids "
                "are long)",
                arg="value",
            )
        return Inferred(x)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=f"torch.full_like({{x}}, {self.value!r})")

    def output_grad(self, grads: tuple[bool, ...]) -> bool:
        return False  # a constant: its input gives only the shape

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return elementwise(inputs, output.sizes)  # full_like keeps the input's strides

    def label(self) -> str:
        return f"Full({self.value!r})"

"""The layer-kind contract and its one registry.

A layer kind is one class: a validated record (:mod:`dlspec.validation`) whose fields are the
layer's arguments (types, defaults, ranges), plus the rules the rest of dlspec needs:

* :meth:`Layer.infer` - output type, parameter and buffer layout (torch's names and shapes),
  and MACs per sample, from the input types. Static: it never touches tensor code.
* :meth:`Layer.torch` - the torch module the layer becomes and how ``forward`` calls it.
* :meth:`Layer.label` - the short text diagrams and tables show.
* for ``dlspec import``, the way back: a torch module of a class named like the kind (or in
  its ``torch_names``) is read as the kind, its arguments taken from the module's attributes
  of the same names, or by an optional classmethod ``torch_arguments(module) -> dict`` where
  torch keeps them otherwise (a stack's layers, dims counted with the batch).
* :meth:`Layer.saves` - the tensors autograd keeps for the backward pass in training mode,
  described so that a tensor two layers share (ReLU's output, the next conv's input) is
  counted once.

Adding a layer kind is one class decorated with :func:`register`, its name listed in
:data:`dlspec.layers.registry.KINDS` (and its oracle test); the grammar, the analyzer and the
backends find it through :data:`~dlspec.layers.registry.REGISTRY` and never branch on a
layer's name.

Conventions: shapes are per sample (the batch dimension is implicit) and sequence tensors are
batch-first, so a sequence of T vectors of width D has shape ``(T, D)``. Every ``dim`` argument
counts per-sample dimensions, as shapes are printed: 0 is the first dimension after the batch
and -1 the last (:func:`axis`). MACs follow torchinfo's ``total_mult_adds``: a convolution
counts each weight once per output position, any other layer with parameters each of them once
per sample; dlspec differs where a layer applies its weights at every step of a sequence
(``[T, D]``), which it counts T times, and for attention's products (the manual's layer reference).
"""

# No `from __future__ import annotations` in this module nor in any kind's: a validated
# record's fields are read from its annotations as types (:mod:`dlspec.validation`).

import math
from collections.abc import Sequence
from dataclasses import field
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from dlspec.layers.layout import BATCH, Layout, as_rows, is_contiguous, reshape, to_time_major
from dlspec.layers.provenance import carries
from dlspec.layers.registry import REGISTRY
from dlspec.layers.symbolic import Dim, Poly, SymbolicError, fmt_dim, product
from dlspec.structs import Struct
from dlspec.validation import Field, Plain, Validated

Family = Literal[
    "convolution",
    "pooling",
    "dense",
    "normalization",
    "activation",
    "regularization",
    "reshape",
    "embedding",
    "recurrent",
    "attention",
    "merge",
]

DType = Literal["float", "long"]
# Element types of saved tensors: "float" takes the activations' precision (4 bytes in fp32,
# 2 under bf16/fp16 autocast); the others have a fixed size.
SavedDType = Literal["float", "float32", "long", "bool", "byte"]
# How a kernel reads an input it keeps (Saved.reads)
Reads = Literal["any", "rows", "dense"]
FIXED_BYTES: dict[str, int] = {"float32": 4, "long": 8, "bool": 1, "byte": 1}


class TensorType(NamedTuple):
    """A tensor's per-sample shape (batch excluded) and element type."""

    shape: tuple[Dim, ...]
    dtype: DType = "float"

    def __str__(self) -> str:
        return "[" + ", ".join(fmt_dim(d) for d in self.shape) + "]"


#: A size, count or stride: a whole number of at least 1 (an argument's type).
Pos = Annotated[int, Field(ge=1)]

#: An argument naming an earlier statement of the same body (``tie=tok_emb``): list it in
#: the kind's ``references``, so that a spec writes the name as it is, not a string.
StatementName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def tied_weight(tie: str | None) -> dict[str, str]:
    """``Inferred.tied`` of a kind whose ``weight`` may be the one of the statement ``tie``
    names (Linear's and Embedding's ``tie=``); the analyzer checks that it exists, earlier in
    the same body, with a weight of the same shape."""
    return {"weight": f"{tie}.weight"} if tie else {}


def tie_label(tie: str | None) -> str:
    """What a label adds for ``tie=``: ``", tie=tok_emb"``, or nothing."""
    return f", tie={tie}" if tie else ""


class LayerError(Exception):
    """A layer cannot accept its inputs or arguments. ``arg`` names the argument to point at."""

    def __init__(
        self, code: str, message: str, notes: Sequence[str] = (), arg: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.notes = list(notes)
        self.arg = arg


Shape = tuple[int, ...]


class Inferred(Struct, frozen=False):
    """What a layer does to its inputs, statically."""

    output: TensorType  # the first (usually only) output
    weights: dict[str, Shape] = field(default_factory=dict)  # trainable, torch's names/shapes
    buffers: dict[str, Shape] = field(default_factory=dict)  # non-trainable state
    macs: Dim = 0  # multiply-accumulates per sample
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message) lints
    # weight name -> "statement.weight" it shares, e.g. {"weight": "tok_emb.weight"}: the
    # analyzer resolves the statement in the same scope, checks the shapes, stores the full
    # path, and counts the tensor once (in check, the generated module and ONNX)
    tied: dict[str, str] = field(default_factory=dict)
    # (dimension, maximum, what it is): bounds on symbolic dimensions (e.g. T <= max_len) that
    # only the analyzer can check, at the spec's bindings; concrete ones are checked in infer
    limits: list[tuple[Dim, int, str]] = field(default_factory=list)
    # every output of a kind with several (Chunk), ``output`` first (:attr:`outputs`). Their
    # count may depend on the input, so ``count_note`` says how it came about (shown when a
    # statement names another number of outputs)
    several: list[TensorType] | None = None
    count_note: str | None = None

    @property
    def outputs(self) -> list[TensorType]:
        """Every output: ``several``, or the one ``output``."""
        return self.several or [self.output]


class TorchCall(Struct):
    """How a layer appears in generated PyTorch code.

    ``cls`` is the module class (``"nn.Conv2d"``), constructed with ``args`` and ``kwargs``
    (plain Python values, rendered with ``repr``); ``None`` means the layer needs no
    submodule. ``forward`` is the expression for the layer's output, a template over
    ``{module}`` (``self.<name>``), ``{x}`` (the first input), ``{inputs}`` (all inputs,
    comma-separated) and ``{x0}``, ``{x1}``...; for a kind with several outputs, a tuple of
    them (``{x}.chunk(3, dim=-1)``).
    """

    cls: str | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    forward: str = "{module}({x})"
    # Source of an nn.Module class that ``cls`` names, for layers with no torch.nn
    # counterpart (e.g. a sinusoidal positional encoding); emitted once in generated code.
    helper: str | None = None


class Saved(Struct):
    """One tensor a layer keeps for its backward pass (training mode).

    ``tensor`` says which: ``"input0"``, ``"input1"``... (the layer's inputs, shared with
    whoever produced them), ``"output"`` (shared with whoever consumes it) or any other name
    for a tensor internal to the layer (two entries with the same name are one tensor).
    ``elements`` is per sample unless ``batched`` is false (e.g. BatchNorm's per-channel
    statistics); ``dtype`` gives the element size (:data:`FIXED_BYTES`, or the activations'
    precision for ``"float"``)."""

    tensor: str
    elements: Dim
    dtype: SavedDType = "float"
    batched: bool = True
    # how the kernel reads an input it keeps: as it lies ("any"), as a matrix of rows of its
    # last dimension ("rows": a Linear's product) or dense in its memory format ("dense":
    # GroupNorm); where torch cannot view the input so, it keeps a copy of its own
    reads: Reads = "any"
    # which of a layer's kernels reads the input so, where several do: each makes and keeps
    # a copy of its own (attention's q, k and v projections of one sequence)
    reader: str = ""


def saved_input(inputs: Sequence[TensorType], index: int = 0, reads: Reads = "any") -> Saved:
    """The layer keeps input ``index`` itself (a convolution or Linear for its weight's
    gradient), or the copy ``reads`` makes of it."""
    x = inputs[index]
    dtype: SavedDType = "long" if x.dtype == "long" else "float"
    return Saved(f"input{index}", product(x.shape), dtype, reads=reads)


def saved_output(output: TensorType) -> Saved:
    """The layer keeps its own output (ReLU, Sigmoid, Tanh, Softmax)."""
    return Saved("output", product(output.shape))


class Given(Struct):
    """What the analysis knows of a layer's inputs beyond their types: ``first[i]``, the
    index of the first input that is the same tensor object as input ``i`` (``i`` when no
    earlier one is), ``layouts``, where each lies (empty when unknown: contiguous), and
    ``grads``, which require a gradient (empty when unknown: all do)."""

    first: tuple[int, ...]
    layouts: tuple[Layout, ...] = ()
    grads: tuple[bool, ...] = ()

    def needs_grad(self, i: int) -> bool:
        """Whether input ``i`` requires a gradient: a model input (data) does not, nor does
        what is computed from such tensors alone; autograd keeps nothing for its sake."""
        return not self.grads or self.grads[i]

    @staticmethod
    def plain(count: int) -> "Given":
        """``count`` distinct contiguous inputs."""
        return Given(tuple(range(count)))

    def time_major(self, i: int) -> bool:
        """Input ``i`` lies time-major: a batch-first view of a contiguous ``(T, B, ...)``
        tensor, as attention returns (see :meth:`Layer.layout`)."""
        x = to_time_major(self.layouts[i]) if self.layouts else None
        return x is not None and is_contiguous(x)

    def rows(self, i: int) -> bool:
        """Input ``i``, transposed to ``(T, B, ...)``, reads as rows of its last dimension in
        place (time-major, or a slice of features of such a tensor)."""
        x = to_time_major(self.layouts[i]) if self.layouts else None
        return x is not None and as_rows(x)

    def unit_stride(self, i: int) -> bool:
        """Input ``i``'s last dimension has its elements adjacent in memory (not so in a
        slice across it, as ``Select`` of a feature makes)."""
        return not self.layouts or self.layouts[i].strides[-1] == 1

    def batch(self) -> int:
        """The batch the layouts are taken at: 1, or 2 standing for every larger one
        (:func:`dlspec.analysis.memory.dataflow` follows batch 1 apart: a size-1
        dimension's stride does not matter, so torch views there what it copies at a larger
        batch); 2 where they are unknown."""
        return self.layouts[0].sizes[0] if self.layouts else BATCH

    def in_place(self) -> frozenset[str]:
        """The inputs a time-major kernel reads in place, by their names in :class:`Saved`
        (``input0``...): its transpose to time-major order reads as rows without a copy."""
        return frozenset(f"input{i}" for i in range(len(self.layouts)) if self.rows(i))


def _symbolic_size(value: Any) -> Poly:
    if not isinstance(value, Poly):
        raise ValueError(f"expected a whole number or a symbolic size, got {value!r}")
    return value


#: An argument that may be a symbolic size (``end=input.shape[0]`` where the length is ``T``)
SymbolicSize = Annotated[Poly, Plain(_symbolic_size, serialize=str)]


class Layer(Validated, extra="forbid", populate_by_name=True):
    """Base class of every layer kind. Fields are the layer's arguments, as written in a spec."""

    kind: ClassVar[str]  # the name used in specs, e.g. "Conv2d"
    family: ClassVar[Family]
    positional: ClassVar[tuple[str, ...]] = ()  # field names that positional args fill, in order
    variadic: ClassVar[str | None] = None  # a tuple field that takes all positional args
    arity: ClassVar[tuple[int, int]] = (1, 1)  # (min, max) number of input tensors
    probabilities: ClassVar[bool] = False  # output is a (log-)probability distribution
    references: ClassVar[tuple[str, ...]] = ()  # arguments naming statements (tie=tok_emb)
    # the torch module classes the kind becomes, where not named like the kind (an importer
    # reads a module of such a class as this kind)
    torch_names: ClassVar[tuple[str, ...]] = ()
    # how the MAC count compares with torchinfo's total_mult_adds (the layer reference shows
    # it; the oracle tests check "same" against torchinfo)
    torchinfo_macs: ClassVar[str] = "same"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        raise NotImplementedError

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        raise NotImplementedError

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The tensors torch's autograd keeps for this layer's backward pass in training mode
        (parameters excluded: they are counted as weights). The default, the first input, is
        what most layers with weights keep; kinds that keep something else override it. Each
        kind's rule is checked against ``torch.autograd.graph.saved_tensors_hooks``."""
        return [saved_input(inputs)]

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """:meth:`saves`, knowing which inputs are one tensor given again and which are
        stored time-major (:class:`Given`), where torch's code takes another path for them
        (attention, recurrent layers); the default keeps what :meth:`saves` says."""
        return self.saves(inputs, output)

    def output_grad(self, grads: tuple[bool, ...]) -> bool:
        """Whether the output requires a gradient when the inputs do as ``grads`` says and the
        layer has no weights (with weights, it always does): when one of them does, unless
        the kind's output does not depend differentiably on some inputs (a condition)."""
        return any(grads)

    def saved_slack(self) -> int:
        """Bytes by which :meth:`saves` may exceed what torch keeps (0: exact). A kind whose
        torch kernel pads a tensor in a way no formula in the batch size can follow (oneDNN
        aligns its workspace to pages) counts the padding at its largest and says so here."""
        return 0

    def backward_buffers(self, inputs: list[TensorType], output: TensorType) -> Dim:
        """Elements per sample of the gradient buffers the layer's backward pass makes beyond
        its output's and inputs' gradients (0 for most kinds)."""
        return 0

    def output_storage(self, inputs: list[TensorType], output: TensorType) -> Dim:
        """Elements per sample of the storage the output lives in: the output's own, unless
        it is a view of a larger tensor (a recurrent layer's last step views the whole
        sequence), which then stays alive as long as a later layer keeps the output."""
        return product(output.shape)

    def output_storage_at(self, inputs: list[TensorType], output: TensorType, batch: int) -> Dim:
        """:meth:`output_storage` at a batch of ``batch``: 1, or 2 standing for every larger
        one (the activation memory follows batch 1 apart), for a kind whose torch kernel
        allocates its output otherwise at batch 1; by default the same at every batch."""
        return self.output_storage(inputs, output)

    def output_batched(self) -> bool:
        """False when the output is one tensor for the whole batch, expanded over it (a
        relative position bias): its storage, :meth:`output_storage` elements, does not grow
        with the batch."""
        return True

    def aliases_input(self) -> bool:
        """True when the output is a view of the first input (Flatten, Reshape, Identity):
        the two are one tensor in memory, unless :meth:`layout` says torch copied."""
        return False

    def returns_input(self) -> bool:
        """True when the output is the input tensor itself, the same object (``nn.Identity``,
        a dropout that drops nothing), which torch's attention tells from a view by ``is``."""
        return False

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """How the output lies in memory (:mod:`dlspec.layers.layout`), given its inputs'
        layouts and ``output``, its sizes laid out contiguously: that, by default (a new
        tensor, such as a matrix product's); a view's strides, or the order an element-wise
        kernel keeps, where the kind says so."""
        return output

    def export_notice(self) -> str | None:
        """What an export (which runs the model in evaluation) does with a layer that
        behaves otherwise in training in a way a user could not guess (a sample), said by
        ``dlspec export``; None for every other layer."""
        return None

    def layout_given(self, inputs: list[Layout], output: Layout, grads: tuple[bool, ...]) -> Layout:
        """:meth:`layout`, knowing which inputs require a gradient (``grads``), where torch
        runs another kernel without one (MaxPool1d); by default the same."""
        return self.layout(inputs, output)

    def label(self) -> str:
        """Kind with its key arguments, e.g. ``Conv2d(32, k=3, p=1)``."""
        return self.kind

    def given(self, name: str, default: Any) -> bool:
        """Whether the torch module's constructor is given argument ``name``: its value is not
        ``default``, or a parameter gives it (so it is the default at these arguments only,
        and generated code passes the parameter)."""
        value = getattr(self, name, default)
        return carries(value) or value != default

    def keywords(
        self, include: set[str] | None = None, exclude: set[str] | frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The fields the torch module's constructor is given (:meth:`given`, against each
        field's default), in field order: ``model_dump(exclude_defaults=True)``, keeping the
        expressions of values a parameter gives."""
        return {
            name: getattr(self, name)
            for name, info in type(self).model_fields.items()
            if (include is None or name in include)
            and name not in exclude
            and self.given(name, info.default)
        }

    def copies(self) -> int:
        """How many layers this one stands for in the expanded model: 1, or the size of a
        stack it builds (``num_layers``). The analyzer charges it to the layer budget before
        calling :meth:`infer`, which may take time and memory in proportion."""
        return 1

    def index_limit(self) -> int | None:
        """For a layer that reads integer ids (token ids): the exclusive upper bound of the ids
        it accepts, e.g. an Embedding's ``num_embeddings``. None for every other layer."""
        return None


class View(Layer):
    """A layer whose output is a view of its input (Flatten, Reshape, Permute, Select...):
    one tensor in memory, and nothing kept for the backward pass (the gradient only needs
    the shapes). A reshape torch cannot view copies (:func:`layout.reshape`)."""

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def aliases_input(self) -> bool:
        return True

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """By default a reshape (Flatten, Reshape, Identity)."""
        return reshape(inputs[0], output.sizes)


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make a layer kind available to specs under ``cls.kind`` (its name
    must be listed in :data:`dlspec.layers.registry.KINDS`)."""
    REGISTRY.add(cls)
    return cls


# helpers shared by shape rules ---------------------------------------------------------------

# the spatial axes of a convolution's or a pool's input, by their number, as messages name them
AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
# the per-sample layout of such an input, as messages name it
LAYOUTS = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def pair(value: int | tuple[int, ...], n: int = 2) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def expect_rank(x: TensorType, ranks: Sequence[int], layout: str, kind: str) -> None:
    """Refuse an input whose rank is not one of ``ranks`` (per sample), naming the layout."""
    if len(x.shape) not in ranks:
        raise LayerError(
            "E404",
            f"{kind} expects input of shape {layout} per sample, got {x} (rank {len(x.shape)})",
        )


def axis(dim: int, x: TensorType, arg: str = "dim") -> int:
    """The per-sample dimension ``dim`` names in ``x`` (negative counts from the end), as an
    index from 0. Out of range is E204 with the shape and the valid range."""
    rank = len(x.shape)
    if not -rank <= dim < rank:
        valid = f"from {-rank} to {rank - 1}" if rank else "none: it is a scalar per sample"
        raise LayerError(
            "E204",
            f"{arg}={dim} is out of range for {x}: its dimensions run {valid} "
            "(dims count per sample; the batch is not one of them)",
            arg=arg,
        )
    return dim % rank


def torch_dim(dim: int) -> int:
    """A per-sample ``dim`` as torch counts it, the batch being 0: negative dims are the same
    in both conventions (and read better in generated code), the others shift by one."""
    return dim if dim < 0 else dim + 1


def sample_dim(dim: int) -> int:
    """A torch ``dim`` (the batch being 0) as dlspec counts it, per sample: the inverse of
    :func:`torch_dim`."""
    return dim if dim < 0 else dim - 1


def expect_float(x: TensorType, kind: str) -> None:
    if x.dtype != "float":
        raise LayerError(
            "E404", f"{kind} expects a float tensor, got {x.dtype} {x}; embed tokens first"
        )


def concrete(value: Dim, what: str) -> int:
    """A dimension that parameter shapes depend on must be a number, not a symbol."""
    if isinstance(value, Poly):
        raise LayerError("E405", f"{what} is the symbolic {value}; it must be a fixed number")
    return value


def check_given(given: int | None, inferred: Dim, arg: str, kind: str, source: str) -> int:
    """Validate a written-out input size against the one inferred from the previous layer."""
    actual = concrete(inferred, f"{kind}'s {arg}")
    if given is not None and given != actual:
        raise LayerError(
            "E401",
            f"{kind} was given {arg}={given:,}, but its input has {actual:,} ({source})",
            arg=arg,
        )
    return actual


def window_out(
    size: Dim,
    kernel: int,
    stride: int,
    pad: int,
    dilation: int,
    axis: str,
    *,
    ceil_mode: bool = False,
) -> Dim:
    """Output length of a convolution or pooling window along one axis, as torch computes it:
    ``floor((size + 2*pad - dilation*(kernel-1) - 1) / stride) + 1``. With ``ceil_mode``
    (pooling) the division rounds up, but a last window that would start in the right padding
    is dropped again, as in torch's ``pooling_output_shape``. A zero or negative result raises
    E402 with the arithmetic."""
    span = dilation * (kernel - 1) + 1
    try:
        reach = size + 2 * pad - span
        out = reach // stride + 1
        # A symbolic ``reach`` gets here only when divisible (``//`` raised otherwise), so
        # ``%`` is 0 and ceil equals floor; the adjustment below only ever sees ints.
        if ceil_mode and reach % stride:
            out += 1
            if (out - 1) * stride >= size + pad:
                out -= 1
    except SymbolicError as exc:
        raise LayerError(
            "E405", f"{axis}: stride {stride} over the symbolic length {size}: {exc}"
        ) from exc
    if isinstance(out, int) and out <= 0:
        rounding = "ceil" if ceil_mode else "floor"
        raise LayerError(
            "E402",
            f"{axis} would be {out}: the window ({span}) is larger than the padded input",
            notes=[
                f"{axis} = {rounding}(({fmt_dim(size)} + 2*{pad} - {dilation}*({kernel}-1) - 1)"
                f" / {stride}) + 1 = {out}"
            ],
        )
    return out


def window_drops(
    size: Dim, kernel: int, stride: int, pad: int, dilation: int, *, ceil_mode: bool = False
) -> int:
    """How many trailing input rows/columns no window reaches (0 when the windows tile the
    input). Padding is not counted, nor is the gap a stride longer than the window leaves
    after every window, including the last. Symbolic sizes report 0."""
    if not isinstance(size, int):
        return 0
    span = dilation * (kernel - 1) + 1
    reach = size + 2 * pad - span
    out = (-(-reach // stride) if ceil_mode else reach // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    if out <= 0:
        return 0
    end = (out - 1) * stride + span - pad  # one past the last real row the windows reach
    return max(0, size - end - max(0, stride - span))

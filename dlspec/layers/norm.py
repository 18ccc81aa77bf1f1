"""Normalization: BatchNorm1d, BatchNorm2d, InstanceNorm1d/2d/3d, LayerNorm, LayerNorm2d,
RMSNorm, GroupNorm.

MACs count the learned affine parameters as torchinfo does, once per sample: 2 x C for a
BatchNorm, InstanceNorm or GroupNorm over C channels, whatever the map's size. LayerNorm and
RMSNorm over the last dimension of a sequence ``[T, D]`` count their weights at each of the T
steps, as Linear does (torchinfo: once). Computing the statistics is not counted (torchinfo
neither).
"""

from typing import Annotated, ClassVar

from dlspec.layers.base import (
    LAYOUTS,
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
from dlspec.layers.layout import Layout, channels_last, is_contiguous, like, like_dense, suggested
from dlspec.layers.symbolic import Dim, product
from dlspec.validation import Field

Eps = Annotated[float, Field(gt=0)]


class _BatchNorm(Layer):
    """Shared rule of BatchNorm1d/2d: per-channel statistics over the batch and the spatial
    axes; shape unchanged. ``weight``/``bias`` ``(C,)`` when ``affine``; buffers
    ``running_mean``/``running_var`` ``(C,)`` and ``num_batches_tracked`` ``()`` when
    ``track_running_stats``. MACs 2 x C per sample when ``affine`` (torchinfo), else 0."""

    family = "normalization"
    positional = ("num_features",)
    ranks: ClassVar[tuple[int, ...]]
    accepts: ClassVar[str]  # the input layouts, as messages name them

    num_features: Pos | None = None
    eps: Eps = 1e-5
    momentum: Annotated[float, Field(ge=0, le=1)] | None = 0.1
    affine: bool = True
    track_running_stats: bool = True

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, self.ranks, self.accepts, self.kind)
        expect_float(x, self.kind)
        c = check_given(self.num_features, x.shape[0], "num_features", self.kind, "channels")
        weights: dict[str, Shape] = {"weight": (c,), "bias": (c,)} if self.affine else {}
        buffers: dict[str, Shape] = {}
        if self.track_running_stats:
            buffers = {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}
        return Inferred(x, weights, buffers, macs=len(weights) * c)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self.keywords(exclude={"num_features"})
        return TorchCall(f"nn.{self.kind}", (inputs[0].shape[0],), kwargs)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input, and the batch's mean and inverse deviation per channel (fp32)."""
        c = inputs[0].shape[0]
        stats = [Saved(name, c, "float32", batched=False) for name in ("mean", "invstd")]
        return [saved_input(inputs), *stats]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return like_dense(inputs[0], output.sizes)

    def label(self) -> str:
        return self.kind if self.num_features is None else f"{self.kind}({self.num_features})"


@register
class BatchNorm1d(_BatchNorm):
    """Batch normalization of ``[C]`` or ``[C, L]``; see the shared rule above."""

    kind = "BatchNorm1d"
    ranks = (1, 2)
    accepts = "[C] or [C, L]"


@register
class BatchNorm2d(_BatchNorm):
    """Batch normalization of ``[C, H, W]``: per-channel ``weight``/``bias`` ``(C,)`` and running
    statistics; shape unchanged; MACs 2 x C when ``affine``."""

    kind = "BatchNorm2d"
    ranks = (3,)
    accepts = "[C, H, W]"


class _InstanceNorm(_BatchNorm):
    """Shared rule of InstanceNorm1d/2d/3d: each sample's channels normalized over their own
    spatial axes, which must hold more than one value (torch refuses one in training); shape
    unchanged. torch's defaults: no ``affine`` weight and bias, no running statistics
    (``track_running_stats``; with them, evaluation normalizes by them). Parameters, buffers
    and MACs as BatchNorm's."""

    affine: bool = False
    track_running_stats: bool = False

    def infer(self, inputs: list[TensorType]) -> Inferred:
        inferred = super().infer(inputs)
        values = product(inputs[0].shape[1:])
        if values == 1:
            raise LayerError(
                "E204",
                f"{self.kind} of {inputs[0]} normalizes each channel over a single value, "
                "which torch refuses in training (it always normalizes to 0)",
            )
        return inferred

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """torch runs a BatchNorm over the input made contiguous and viewed as one sample of
        B x C channels: it keeps that input (a copy where the input is not contiguous), a
        mean and an inverse deviation per channel of every sample, and the per-sample copies
        (``repeat``) of the weight and of the running statistics it is given (fp32)."""
        x = inputs[0]
        copied = bool(given.layouts) and not is_contiguous(given.layouts[0])
        kept = Saved("contiguous", product(x.shape)) if copied else saved_input(inputs)
        names = ["mean", "invstd"]
        if self.affine:
            names.append("weight")
        if self.track_running_stats:
            names += ["running_mean", "running_var"]
        return [kept, *(Saved(name, x.shape[0], "float32") for name in names)]

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(1))

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return output  # the contiguous BatchNorm's output, viewed back


@register
class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of ``[C, L]``: each sample's channels over their length; see
    the shared rule above."""

    kind = "InstanceNorm1d"
    ranks = (2,)
    accepts = LAYOUTS[1]


@register
class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of ``[C, H, W]`` (style transfer, GAN generators): each
    sample's channels over their own map; see the shared rule above."""

    kind = "InstanceNorm2d"
    ranks = (3,)
    accepts = LAYOUTS[2]


@register
class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of ``[C, D, H, W]`` (3-D U-Nets): each sample's channels over
    their own volume; see the shared rule above."""

    kind = "InstanceNorm3d"
    ranks = (4,)
    accepts = LAYOUTS[3]


class _TrailingNorm(Layer):
    """Shared rule of LayerNorm and RMSNorm: normalize each sample over its trailing
    ``normalized_shape`` dimensions (default: the last one); shape unchanged. A written
    ``normalized_shape`` (an int or a list) must equal the input's trailing dimensions."""

    family = "normalization"
    positional = ("normalized_shape",)
    torchinfo_macs = "T x for a sequence [T, D], once per step (torchinfo: once per sample)"

    normalized_shape: Pos | tuple[Pos, ...] | None = None
    elementwise_affine: bool = True

    def _shape(self, x: TensorType) -> Shape:
        if self.normalized_shape is None:
            expect_rank(x, range(1, 9), "[..., D]", self.kind)
            return (concrete(x.shape[-1], f"{self.kind}'s normalized size"),)
        given = (
            (self.normalized_shape,)
            if isinstance(self.normalized_shape, int)
            else self.normalized_shape
        )
        if not given:
            raise LayerError(
                "E204", "normalized_shape needs at least one size", arg="normalized_shape"
            )
        if len(x.shape) < len(given):
            raise LayerError(
                "E404",
                f"{self.kind} over {list(given)} needs at least {len(given)} dimensions, got {x}",
                arg="normalized_shape",
            )
        trailing = tuple(
            concrete(d, f"{self.kind}'s normalized size")
            for d in x.shape[len(x.shape) - len(given) :]
        )
        if trailing != tuple(given):
            raise LayerError(
                "E401",
                f"{self.kind} was given normalized_shape={list(given)}, but its input {x} ends "
                f"with {list(trailing)}",
                arg="normalized_shape",
            )
        return tuple(given)

    def _weights(self, shape: Shape) -> dict[str, Shape]:
        raise NotImplementedError

    def _rows(self, x: TensorType) -> Dim:
        """How many vectors are normalized per sample (one statistic each)."""
        return product(x.shape[: len(x.shape) - len(self._shape(x))])

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_float(x, self.kind)
        shape = self._shape(x)
        weights = self._weights(shape) if self.elementwise_affine else {}
        steps = product(x.shape[: len(x.shape) - len(shape)])  # positions the weights apply at
        return Inferred(x, weights, macs=len(weights) * product(shape) * steps)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        shape = self._shape(inputs[0])
        kwargs = self.keywords(exclude={"normalized_shape"})
        return TorchCall(f"nn.{self.kind}", (shape[0] if len(shape) == 1 else list(shape),), kwargs)

    def label(self) -> str:
        if self.normalized_shape is None:
            return self.kind
        if isinstance(self.normalized_shape, int):
            return f"{self.kind}({self.normalized_shape})"
        return f"{self.kind}({list(self.normalized_shape)})"


@register
class LayerNorm(_TrailingNorm):
    """Layer normalization (``nn.LayerNorm``), by the trailing-dimensions rule above.
    ``weight`` and ``bias`` have shape ``normalized_shape`` (when ``elementwise_affine``;
    ``bias`` unless ``bias=False``). MACs per element: 2 with weight and bias, 1 with weight
    only, 0 without affine."""

    kind = "LayerNorm"

    eps: Eps = 1e-5
    bias: bool = True

    def _weights(self, shape: Shape) -> dict[str, Shape]:
        return {"weight": shape, "bias": shape} if self.bias else {"weight": shape}

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input, and a mean and an inverse deviation per normalized vector (fp32)."""
        rows = self._rows(inputs[0])
        return [saved_input(inputs), *(Saved(n, rows, "float32") for n in ("mean", "rstd"))]


@register
class RMSNorm(_TrailingNorm):
    """Root-mean-square normalization (``nn.RMSNorm``), by the trailing-dimensions rule
    above: ``x / sqrt(mean(x^2) + eps) * weight``. ``weight`` has shape ``normalized_shape``
    when ``elementwise_affine``; ``eps`` defaults to torch's (the dtype's machine epsilon).
    MACs: 1 per element with the weight, else 0 (statistics are not counted)."""

    kind = "RMSNorm"

    eps: Eps | None = None

    def _weights(self, shape: Shape) -> dict[str, Shape]:
        return {"weight": shape}

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input, an inverse RMS per normalized vector, and with a weight the normalized
        input it scales (torch composes RMSNorm from element-wise operations)."""
        saved = [saved_input(inputs), Saved("rstd", self._rows(inputs[0]))]
        if self.elementwise_affine:
            saved.append(Saved("normalized", product(inputs[0].shape)))
        return saved

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """Over data (an input that requires no gradient) only the weight's gradient is
        wanted: the normalized input alone is kept."""
        if given.needs_grad(0):
            return self.saves(inputs, output)
        return [Saved("normalized", product(inputs[0].shape))] if self.elementwise_affine else []

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """Contiguous, or channels-last after a channels-last input (its product with the
        broadcast inverse RMS takes the suggested memory format, measured)."""
        return suggested(inputs[0])


@register
class GroupNorm(Layer):
    """Normalizes ``[C, *]`` over groups of ``C / num_groups`` channels (and all other axes);
    shape unchanged. ``num_channels`` is inferred (checked when written) and must be divisible
    by ``num_groups``. ``weight``/``bias`` ``(C,)`` when ``affine``; MACs 2 x C per sample when
    ``affine`` (torchinfo), else 0."""

    kind = "GroupNorm"
    family = "normalization"
    positional = ("num_groups", "num_channels")

    num_groups: Pos
    num_channels: Pos | None = None
    eps: Eps = 1e-5
    affine: bool = True

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, range(1, 9), "[C, ...]", self.kind)
        expect_float(x, self.kind)
        c = check_given(self.num_channels, x.shape[0], "num_channels", self.kind, "channels")
        if c % self.num_groups:
            raise LayerError(
                "E204",
                f"{c} channels do not split into num_groups={self.num_groups} equal groups",
                notes=[f"{c} % {self.num_groups} = {c % self.num_groups}"],
                arg="num_groups",
            )
        values = product((c // self.num_groups, *x.shape[1:]))
        if values == 1:  # torch refuses it at batch 1; normalised, one value is always 0
            raise LayerError(
                "E204",
                f"each of the {self.num_groups} groups of {x} holds a single value, which "
                "normalises to 0 (and torch refuses it at batch 1)",
                notes=["use fewer groups, or normalise a larger tensor"],
                arg="num_groups",
            )
        weights: dict[str, Shape] = {"weight": (c,), "bias": (c,)} if self.affine else {}
        return Inferred(x, weights, macs=len(weights) * c)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self.keywords(exclude={"num_groups", "num_channels"})
        return TorchCall("nn.GroupNorm", (self.num_groups, inputs[0].shape[0]), kwargs)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input, dense (a view with gaps or repeats is copied), and a mean and an
        inverse deviation per group."""
        stats = [Saved(name, self.num_groups, "float32") for name in ("mean", "rstd")]
        return [saved_input(inputs, reads="dense"), *stats]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return like(inputs[0], output.sizes)

    def label(self) -> str:
        return f"GroupNorm({self.num_groups})"


_LAYER_NORM_2D = '''class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every position (ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        return super().forward(x).permute(0, 3, 1, 2)  # (B, C, H, W)
'''


@register
class LayerNorm2d(Layer):
    """Layer normalization over the channels of an image map ``[C, H, W]``, at each position
    (torchvision's ``LayerNorm2d``, ConvNeXt's downsampling): ``weight``/``bias`` ``(C,)``;
    shape unchanged. MACs 2 x C per sample, as torchinfo counts it."""

    kind = "LayerNorm2d"
    family = "normalization"
    positional = ("num_channels",)

    num_channels: Pos | None = None
    eps: Eps = 1e-5

    def _channels(self, x: TensorType) -> int:
        expect_rank(x, (3,), "[C, H, W]", self.kind)
        expect_float(x, self.kind)
        return check_given(self.num_channels, x.shape[0], "num_channels", self.kind, "channels")

    def infer(self, inputs: list[TensorType]) -> Inferred:
        c = self._channels(inputs[0])
        return Inferred(inputs[0], {"weight": (c,), "bias": (c,)}, macs=2 * c)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self.keywords(exclude={"num_channels"})
        return TorchCall(self.kind, (self._channels(inputs[0]),), kwargs, helper=_LAYER_NORM_2D)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input, and a mean and an inverse deviation per position (fp32)."""
        positions = product(inputs[0].shape[1:])
        return [saved_input(inputs), *(Saved(n, positions, "float32") for n in ("mean", "rstd"))]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return channels_last(output.sizes)  # LayerNorm's (B, H, W, C) output, permuted

    def label(self) -> str:
        return self.kind

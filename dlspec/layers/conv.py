"""Convolutions over 1, 2 or 3 spatial axes: Conv1d/2d/3d and ConvTranspose1d/2d/3d."""

import math
from typing import Annotated, ClassVar, Literal

from dlspec.layers.base import (
    AXES,
    LAYOUTS,
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    check_given,
    expect_float,
    expect_rank,
    pair,
    register,
    saved_input,
    window_out,
)
from dlspec.layers.layout import Layout, like
from dlspec.layers.symbolic import Dim, product
from dlspec.validation import Field

NonNeg = Annotated[int, Field(ge=0)]


#: Torch's ``use_mkldnn`` on CPU (fp32, several threads): a 3-D convolution of batch 1 and
#: groups=1 runs torch's own kernel unless its kernel's height and width both exceed this ...
SLOW_3D_KERNEL = 3
#: ... or its input has more elements than this over batch x channels x depth x height.
SLOW_3D_MAX = 20480


class _ConvNd(Layer):
    """Shared rule of Conv1d/2d/3d: torch's Conv layout ``weight (out, in/groups, *k)``,
    ``bias (out,)``; MACs = output elements x (in/groups x prod(k) + bias)."""

    family = "convolution"
    positional = ("out_channels", "kernel_size", "stride", "padding")
    spatial: ClassVar[int]

    out_channels: Pos
    kernel_size: Pos | tuple[Pos, ...] = Field(validation_alias="kernel")
    stride: Pos | tuple[Pos, ...] = 1
    padding: NonNeg | tuple[NonNeg, ...] | Literal["same", "valid"] = 0
    dilation: Pos | tuple[Pos, ...] = 1
    groups: Pos = 1
    bias: bool = True
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"
    in_channels: Pos | None = None

    def _axes(self) -> tuple[str, ...]:
        return AXES[self.spatial]

    def _padding(self, k: tuple[int, ...], d: tuple[int, ...]) -> tuple[int, ...]:
        if self.padding == "valid":
            return (0,) * self.spatial
        if self.padding == "same":
            if any(s != 1 for s in pair(self.stride, self.spatial)):
                raise LayerError(
                    "E204", "padding='same' needs stride 1 (as in torch)", arg="padding"
                )
            if any(di * (ki - 1) % 2 for ki, di in zip(k, d, strict=True)):
                raise LayerError(
                    "E204",
                    "padding='same' with an even kernel pads unevenly; torch supports it but "
                    "dlspec asks for an odd kernel (or explicit padding)",
                    arg="padding",
                )
            return tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))
        return pair(self.padding, self.spatial)

    def _geometry(self) -> tuple[tuple[int, ...], ...]:
        for name in ("kernel_size", "stride", "padding", "dilation"):
            value = getattr(self, name)
            if isinstance(value, str):
                continue
            if not isinstance(value, int) and len(value) != self.spatial:
                raise LayerError(
                    "E204", f"{name} needs {self.spatial} values, got {len(value)}", arg=name
                )
        k = pair(self.kernel_size, self.spatial)
        d = pair(self.dilation, self.spatial)
        return k, pair(self.stride, self.spatial), self._padding(k, d), d

    def _in_channels(self, x: TensorType) -> int:
        expect_rank(x, (self.spatial + 1,), LAYOUTS[self.spatial], self.kind)
        expect_float(x, self.kind)
        c_in = check_given(self.in_channels, x.shape[0], "in_channels", self.kind, "channels")
        for name, value in (("in_channels", c_in), ("out_channels", self.out_channels)):
            if value % self.groups:
                raise LayerError(
                    "E204", f"{name}={value} is not divisible by groups={self.groups}", arg="groups"
                )
        return c_in

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        c_in = self._in_channels(x)
        k, s, p, d = self._geometry()
        spatial = tuple(
            window_out(size, ki, si, pi, di, axis)
            for size, ki, si, pi, di, axis in zip(
                x.shape[1:], k, s, p, d, self._axes(), strict=True
            )
        )
        per_out = c_in // self.groups * product(k) + (1 if self.bias else 0)
        weights: dict[str, Shape] = {"weight": (self.out_channels, c_in // self.groups, *k)}
        if self.bias:
            weights["bias"] = (self.out_channels,)
        out: Dim = self.out_channels * product(spatial)
        return Inferred(TensorType((self.out_channels, *spatial)), weights, macs=out * per_out)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs: dict[str, object] = {"kernel_size": self.kernel_size}
        defaults = {
            "stride": 1,
            "padding": 0,
            "output_padding": 0,
            "dilation": 1,
            "groups": 1,
            "bias": True,
            "padding_mode": "zeros",
        }
        for name, default in defaults.items():
            if self.given(name, default):
                kwargs[name] = getattr(self, name)
        return TorchCall(f"nn.{self.kind}", (inputs[0].shape[0], self.out_channels), kwargs)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input; with a padding mode other than zeros, also the padded copy that the
        convolution itself reads."""
        saved = [saved_input(inputs)]
        if self.padding_mode != "zeros":
            _, _, p, _ = self._geometry()
            x = inputs[0]
            padded = [size + 2 * pi for size, pi in zip(x.shape[1:], p, strict=True)]
            saved.append(Saved("padded", product([x.shape[0], *padded])))
        return saved

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """In the input's suggested memory format; a 3-D convolution that torch runs with
        its own kernel (:meth:`_onednn`) returns a contiguous output."""
        x = inputs[0]
        if self.spatial == 3 and not self._onednn(x.sizes[0], math.prod(x.sizes[1:-1])):
            return output
        return like(x, output.sizes)

    def _onednn(self, batch: int, rows: Dim) -> bool:
        """Whether CPU torch runs a 3-D convolution of ``batch`` samples with oneDNN's
        kernel (``use_mkldnn``, fp32, several threads): with groups > 1, a kernel larger
        than :data:`SLOW_3D_KERNEL` in both height and width, a batch larger than 1 or more
        than :data:`SLOW_3D_MAX` input elements over the batch and ``rows``, each sample's
        channels x depth x height (a symbolic count is taken as more); its own kernel
        (``slow_conv3d``, ``slow_conv_transpose3d``) otherwise. oneDNN keeps a channels-last
        input's format and allocates the output's own storage; torch's kernels give a
        contiguous output (checked against torch 2.13, fuzz seeds 3,102,785, 4,008,166)."""
        kernel = self._geometry()[0]
        few = isinstance(rows, int) and batch * rows <= SLOW_3D_MAX
        return self.groups > 1 or min(kernel[-2:]) > SLOW_3D_KERNEL or batch > 1 or not few

    def _label_parts(self) -> list[str]:
        parts = [str(self.out_channels), f"k={_fmt(self.kernel_size)}"]
        for short, name, default in (("s", "stride", 1), ("p", "padding", 0), ("d", "dilation", 1)):
            if getattr(self, name) != default:
                parts.append(f"{short}={_fmt(getattr(self, name))}")
        if self.groups != 1:
            parts.append(f"g={self.groups}")
        return parts

    def label(self) -> str:
        return f"{self.kind}({', '.join(self._label_parts())})"


def _fmt(value: int | str | tuple[int, ...]) -> str:
    """``3``, ``same`` or ``3x5``: a scalar-or-per-axis argument as labels show it."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


@register
class Conv1d(_ConvNd):
    """1-D convolution over ``[C, L]`` -> ``[out_channels, L']`` with
    ``L' = floor((L + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``. Layout
    ``weight (out, in/groups, k)``, ``bias (out,)``; MACs = out x L' x (in/groups x k + bias)."""

    kind = "Conv1d"
    spatial = 1


@register
class Conv2d(_ConvNd):
    """2-D convolution over ``[C, H, W]`` -> ``[out_channels, H', W']``, each axis as in
    :class:`Conv1d`. Layout ``weight (out, in/groups, kH, kW)``, ``bias (out,)``;
    MACs = out x H' x W' x (in/groups x kH x kW + bias)."""

    kind = "Conv2d"
    spatial = 2


@register
class Conv3d(_ConvNd):
    """3-D convolution over ``[C, D, H, W]`` -> ``[out_channels, D', H', W']``, each axis as in
    :class:`Conv1d` (video, volumes). Layout ``weight (out, in/groups, kD, kH, kW)``,
    ``bias (out,)``; MACs = out x D' x H' x W' x (in/groups x kD x kH x kW + bias)."""

    kind = "Conv3d"
    spatial = 3


class _ConvTransposeNd(_ConvNd):
    """Shared rule of ConvTranspose1d/2d/3d: per axis,
    ``out = (size - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride or the dilation (as in torch).

    Layout ``weight (in, out/groups, *k)``, ``bias (out,)``. MACs count the scatter form:
    every input element is multiplied by the ``out/groups x prod(k)`` weights of its group,
    plus one bias add per output element. Products that land in the cropped ``padding``
    border count too: the layer computes them."""

    torchinfo_macs = (
        "each input element times its weights (torchinfo: every weight at every output "
        "position, the product of the strides times more)"
    )

    padding: NonNeg | tuple[NonNeg, ...] = 0
    output_padding: NonNeg | tuple[NonNeg, ...] = 0
    padding_mode: Literal["zeros"] = "zeros"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        c_in = self._in_channels(x)
        k, s, p, d = self._geometry()
        if not isinstance(self.output_padding, int) and len(self.output_padding) != self.spatial:
            raise LayerError(
                "E204",
                f"output_padding needs {self.spatial} values, got {len(self.output_padding)}",
                arg="output_padding",
            )
        op = pair(self.output_padding, self.spatial)
        spatial: list[Dim] = []
        for size, ki, si, pi, di, opi, axis in zip(
            x.shape[1:], k, s, p, d, op, self._axes(), strict=True
        ):
            if opi >= max(si, di):
                raise LayerError(
                    "E204",
                    f"output_padding={opi} ({axis}) must be smaller than the stride ({si}) "
                    f"or the dilation ({di})",
                    arg="output_padding",
                )
            out = (size - 1) * si - 2 * pi + di * (ki - 1) + opi + 1
            if isinstance(out, int) and out <= 0:
                raise LayerError(
                    "E402",
                    f"{axis} would be {out}: the padding ({pi}) crops more than the "
                    "transposed convolution produces",
                    notes=[
                        f"{axis} = ({size} - 1)*{si} - 2*{pi} + {di}*({ki} - 1) + {opi} + 1 = {out}"
                    ],
                )
            spatial.append(out)
        weights: dict[str, Shape] = {"weight": (c_in, self.out_channels // self.groups, *k)}
        if self.bias:
            weights["bias"] = (self.out_channels,)
        out_elems = self.out_channels * product(spatial)
        macs = c_in * product(x.shape[1:]) * (self.out_channels // self.groups) * product(k)
        if self.bias:
            macs = macs + out_elems
        return Inferred(TensorType((self.out_channels, *spatial)), weights, macs=macs)

    def _label_parts(self) -> list[str]:
        parts = super()._label_parts()
        if self.output_padding != 0:
            parts.append(f"op={_fmt(self.output_padding)}")
        return parts


@register
class ConvTranspose1d(_ConvTransposeNd):
    """Transposed 1-D convolution over ``[C, L]`` -> ``[out_channels, L']`` with
    ``L' = (L - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1`` (a
    vocoder's upsampling). Layout ``weight (in, out/groups, k)``, ``bias (out,)``;
    MACs = in x L x out/groups x k, plus one bias add per output element."""

    kind = "ConvTranspose1d"
    spatial = 1


@register
class ConvTranspose2d(_ConvTransposeNd):
    """Transposed 2-D convolution over ``[C, H, W]`` -> ``[out_channels, H', W']``, each axis
    as in :class:`ConvTranspose1d`; ``output_padding`` must be smaller than the stride or the
    dilation (as in torch). Layout ``weight (in, out/groups, kH, kW)``, ``bias (out,)``.
    MACs count the scatter form: MACs = in x H x W x out/groups x kH x kW, plus one bias add
    per output element; products that land in the cropped ``padding`` border count too."""

    kind = "ConvTranspose2d"
    spatial = 2


@register
class ConvTranspose3d(_ConvTransposeNd):
    """Transposed 3-D convolution over ``[C, D, H, W]`` -> ``[out_channels, D', H', W']``,
    each axis as in :class:`ConvTranspose1d`. Layout ``weight (in, out/groups, kD, kH,
    kW)``, ``bias (out,)``; MACs = in x D x H x W x out/groups x kD x kH x kW, plus one bias
    add per output element."""

    kind = "ConvTranspose3d"
    spatial = 3

    def output_storage_at(self, inputs: list[TensorType], output: TensorType, batch: int) -> Dim:
        """Where torch runs its own kernel (``slow_conv_transpose3d``, :meth:`_onednn`), that
        kernel leaves an output smaller than its input in a storage as large as its input
        (the output views its first elements): what a layer keeping the output keeps.
        oneDNN's kernel allocates the output's own size (checked against
        ``untyped_storage()`` in torch 2.13 over strides, paddings and dilations)."""
        out, x = product(output.shape), product(inputs[0].shape)
        if isinstance(x, int) and not self._onednn(batch, product(inputs[0].shape[:-1])):
            return max(out, x)
        return out

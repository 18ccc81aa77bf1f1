"""Oracle tests: every registered layer kind against the torch module it becomes.

For each example configuration the static rules (``Layer.infer``) must agree with a real
torch module built from ``Layer.torch``: output shape after a forward pass, parameter and
buffer names and shapes, and a MAC count written out by hand below. Adding a layer kind
without an example here fails :func:`test_every_kind_has_an_example`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dlspec.layers import REGISTRY, Layer, LayerError, TensorType, TorchCall
from dlspec.layers.symbolic import Dim, Poly, value_at

T = Poly.symbol("T")
BATCH = 2


@dataclass(frozen=True)
class Example:
    kind: str
    args: dict[str, Any]
    shape: tuple[Dim, ...]  # per-sample input shape
    macs: int  # counted by hand, per sample, at `bindings`
    dtype: str = "float"
    bindings: dict[str, int] = field(default_factory=dict)
    high: int = 10  # long inputs are drawn from [0, high), e.g. token ids below a vocabulary size
    more: tuple[tuple[Dim, ...], ...] = ()  # shapes of further inputs (same dtype), if any

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.args.items())
        shape = "x".join(map(str, self.shape))
        return f"{self.kind}({args})@{shape}".replace(" ", "")


def ex(kind: str, args: dict[str, Any], shape: tuple[Dim, ...], macs: int, **kw: Any) -> Example:
    return Example(kind, args, shape, macs, **kw)


# fmt: off
EXAMPLES = [
    # convolutions: MACs = output elements x (in/groups x kernel area + bias)
    ex("Conv2d", {"out_channels": 32, "kernel_size": 3, "padding": 1}, (3, 48, 48),
       32 * 48 * 48 * (3 * 3 * 3 + 1)),  # MY_NET's conv1: 1,990,656 + 73,728 bias adds
    ex("Conv2d", {"out_channels": 16, "kernel_size": (3, 5), "stride": (2, 1),
                  "padding": (1, 2), "dilation": (1, 2), "groups": 2, "bias": False},
       (4, 11, 13), 16 * 6 * 9 * (4 // 2 * 3 * 5)),
    ex("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": "same"}, (3, 7, 7),
       8 * 7 * 7 * (3 * 9 + 1)),
    ex("Conv2d", {"out_channels": 6, "kernel_size": 3, "padding": "valid", "stride": 2},
       (2, 8, 8), 6 * 3 * 3 * (2 * 9 + 1)),
    ex("Conv2d", {"out_channels": 6, "kernel_size": 3, "padding": 1,
                  "padding_mode": "reflect"}, (2, 5, 5), 6 * 5 * 5 * (2 * 9 + 1)),
    ex("Conv1d", {"out_channels": 8, "kernel_size": 3}, (4, 10), 8 * 8 * (4 * 3 + 1)),
    ex("Conv1d", {"out_channels": 6, "kernel_size": 4, "stride": 2, "groups": 2}, (4, 9),
       6 * 3 * (2 * 4 + 1)),
    ex("Conv1d", {"out_channels": 8, "kernel_size": 3, "padding": 1}, (4, T),
       8 * 6 * (4 * 3 + 1), bindings={"T": 6}),
    # transposed: every input element meets out/groups x kernel area weights, + bias per output
    ex("ConvTranspose2d", {"out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1,
                           "output_padding": 1}, (4, 5, 5),
       4 * 5 * 5 * 6 * 3 * 3 + 6 * 10 * 10),
    ex("ConvTranspose2d", {"out_channels": 8, "kernel_size": (2, 3), "stride": (2, 1),
                           "dilation": (1, 2), "groups": 2, "bias": False}, (4, 3, 4),
       4 * 3 * 4 * (8 // 2) * 2 * 3),
    ex("ConvTranspose2d", {"out_channels": 3, "kernel_size": 2, "stride": 2,
                           "in_channels": 2}, (2, T, 4),
       2 * 3 * 4 * 3 * 2 * 2 + 3 * 6 * 8, bindings={"T": 3}),
    ex("Conv3d", {"out_channels": 4, "kernel_size": 2, "stride": (1, 2, 2), "padding": 1},
       (3, 4, 5, 5), 4 * 5 * 3 * 3 * (3 * 8 + 1)),
    ex("Conv3d", {"out_channels": 4, "kernel_size": (1, 3, 3), "padding": (0, 1, 1),
                  "groups": 2, "bias": False}, (2, T, 4, 4), 4 * 3 * 4 * 4 * (1 * 9),
       bindings={"T": 3}),
    ex("ConvTranspose1d", {"out_channels": 4, "kernel_size": 4, "stride": 2, "padding": 1},
       (3, 5), 3 * 5 * 4 * 4 + 4 * 10),
    ex("ConvTranspose1d", {"out_channels": 2, "kernel_size": 2, "stride": 2, "groups": 2,
                           "bias": False}, (4, T), 4 * 3 * 1 * 2, bindings={"T": 3}),
    ex("ConvTranspose3d", {"out_channels": 2, "kernel_size": 2, "stride": 2}, (3, 2, 3, 2),
       3 * 12 * 2 * 8 + 2 * 4 * 6 * 4),
    # dense: leading elements x out x (in + bias)
    ex("Linear", {"out_features": 10}, (20,), 10 * (20 + 1)),
    ex("Linear", {"out_features": 7, "bias": False, "in_features": 5}, (T, 5), 3 * 7 * 5,
       bindings={"T": 3}),
    # activations: no parameters, no MACs
    ex("ReLU", {}, (3, 4), 0),
    ex("Sigmoid", {}, (5,), 0),
    ex("Tanh", {}, (2, 3, 4), 0),
    ex("SiLU", {}, (T, 4), 0, bindings={"T": 2}),
    ex("LeakyReLU", {"negative_slope": 0.2}, (3, 4), 0),
    ex("GELU", {"approximate": "tanh"}, (6,), 0),
    ex("GELU", {}, (6,), 0),
    ex("ReLU6", {}, (3, 4), 0),
    ex("Hardswish", {}, (3, 4), 0),
    ex("Hardsigmoid", {}, (5,), 0),
    ex("Mish", {}, (T, 4), 0, bindings={"T": 3}),
    ex("Hardtanh", {"min_val": -2.0, "max_val": 0.5}, (3, 4), 0),
    ex("Hardtanh", {}, (6,), 0),
    ex("ELU", {"alpha": 0.5}, (3, 4), 0),
    ex("Softplus", {"beta": 2.0, "threshold": 10.0}, (6,), 0),
    ex("Softplus", {}, (2, 3), 0),
    # PReLU: its slopes once per sample (torchinfo)
    ex("PReLU", {}, (3, 4, 4), 1),
    ex("PReLU", {"num_parameters": 3, "init": 0.1}, (3, 4, 4), 3),
    ex("Softmax", {}, (3, 4), 0),
    ex("Softmax", {"dim": 0}, (3, 4), 0),
    ex("LogSoftmax", {"dim": -2}, (3, 4), 0),
    # pooling: no MACs
    ex("MaxPool2d", {"kernel_size": 2}, (3, 25, 25), 0),
    ex("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2,
                     "ceil_mode": True}, (2, 9, 10), 0),
    ex("MaxPool2d", {"kernel_size": (2, 3), "stride": (1, 2)}, (2, 5, 7), 0),
    ex("MaxPool1d", {"kernel_size": 3, "stride": 2}, (4, 11), 0),
    ex("MaxPool1d", {"kernel_size": 2}, (4, 2 * T), 0, bindings={"T": 5}),
    ex("AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                     "count_include_pad": False}, (3, 8, 8), 0),
    ex("AvgPool2d", {"kernel_size": (2, 3), "divisor_override": 2}, (2, 6, 9), 0),
    ex("MaxPool3d", {"kernel_size": 2}, (2, 4, 5, 4), 0),
    ex("MaxPool3d", {"kernel_size": (1, 3, 3), "stride": (1, 2, 2), "padding": (0, 1, 1)},
       (2, T, 6, 6), 0, bindings={"T": 3}),
    ex("AvgPool1d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                     "count_include_pad": False}, (3, 8), 0),
    ex("AvgPool1d", {"kernel_size": 2}, (4, 2 * T), 0, bindings={"T": 3}),
    ex("AvgPool3d", {"kernel_size": 2, "divisor_override": 3}, (2, 4, 4, 6), 0),
    ex("AvgPool3d", {"kernel_size": (1, 2, 2), "ceil_mode": True}, (2, 3, 5, 5), 0),
    ex("AdaptiveAvgPool1d", {"output_size": 1}, (4, T), 0, bindings={"T": 5}),
    ex("AdaptiveAvgPool1d", {"output_size": 3}, (2, 7), 0),
    ex("AdaptiveMaxPool1d", {"output_size": 2}, (3, 7), 0),
    ex("AdaptiveMaxPool1d", {"output_size": 1}, (3, T), 0, bindings={"T": 4}),
    ex("AdaptiveAvgPool3d", {"output_size": 1}, (3, 2, 4, 4), 0),
    ex("AdaptiveAvgPool3d", {"output_size": (None, 2, 3)}, (2, 3, 4, 5), 0),
    ex("AdaptiveAvgPool2d", {"output_size": 1}, (8, 5, 5), 0),
    ex("AdaptiveAvgPool2d", {"output_size": (None, 3)}, (2, 4, 7), 0),
    ex("AdaptiveAvgPool2d", {"output_size": (7, 7)}, (2, 5, 5), 0),
    # normalization: image norms count weight and bias once per sample (torchinfo: 2 x C);
    # LayerNorm/RMSNorm count them at every position of a sequence
    ex("BatchNorm2d", {}, (8, 4, 4), 2 * 8),
    ex("BatchNorm2d", {"num_features": 8, "affine": False, "track_running_stats": False,
                       "momentum": None, "eps": 1e-3}, (8, 3, 3), 0),
    ex("BatchNorm1d", {}, (6,), 2 * 6),
    ex("BatchNorm1d", {"num_features": 6, "affine": False}, (6, 5), 0),
    ex("LayerNorm", {}, (T, 16), 2 * 4 * 16, bindings={"T": 4}),
    ex("LayerNorm", {"normalized_shape": (4, 5), "bias": False}, (3, 4, 5), 1 * 3 * 4 * 5),
    ex("LayerNorm", {"normalized_shape": 8, "elementwise_affine": False}, (8,), 0),
    ex("GroupNorm", {"num_groups": 2}, (6, 4, 4), 2 * 6),
    ex("InstanceNorm1d", {}, (4, T), 0, bindings={"T": 5}),
    ex("InstanceNorm1d", {"affine": True, "track_running_stats": True}, (3, 6), 2 * 3),
    ex("InstanceNorm2d", {"affine": True}, (3, 4, 4), 2 * 3),
    ex("InstanceNorm2d", {"num_features": 2, "eps": 1e-3, "momentum": None,
                          "track_running_stats": True}, (2, 3, 3), 0),
    ex("InstanceNorm3d", {"affine": True, "track_running_stats": True}, (2, 2, 3, 3), 2 * 2),
    ex("LayerNorm2d", {}, (6, 3, 5), 2 * 6),
    ex("LayerNorm2d", {"num_channels": 4, "eps": 1e-6}, (4, 2, 2), 2 * 4),
    ex("GroupNorm", {"num_groups": 3, "num_channels": 6, "affine": False, "eps": 1e-3},
       (6, 5), 0),
    # reshaping and regularization: no parameters, no MACs
    ex("Flatten", {}, (3, 4, 5), 0),
    ex("Flatten", {"start_dim": 1}, (3, 4, 5), 0),
    ex("Flatten", {"start_dim": 0, "end_dim": 1}, (3, 4, 5), 0),
    ex("Flatten", {"start_dim": 2}, (3, 4, 5), 0),
    ex("Flatten", {"start_dim": -2}, (3, 4, 5), 0),
    ex("Flatten", {}, (T, 4), 0, bindings={"T": 3}),
    ex("Flatten", {}, (7,), 0, dtype="long"),
    ex("Reshape", {"shape": (4, 3, 5)}, (60,), 0),
    ex("Reshape", {"shape": (-1, 5)}, (3, 4, 5), 0),
    ex("Reshape", {"shape": (2, -1)}, (T, 6), 0, bindings={"T": 3}),
    ex("Permute", {"dims": (1, 2, 0)}, (3, 4, 5), 0),
    ex("Permute", {"dims": (-1, 0)}, (T, 4), 0, bindings={"T": 3}),
    ex("Transpose", {"dim0": 0, "dim1": 1}, (T, 4), 0, bindings={"T": 3}),
    ex("Transpose", {"dim0": -1, "dim1": 0}, (2, 3, 4), 0),
    ex("Mean", {"dim": 0}, (T, 4), 0, bindings={"T": 3}),
    ex("Mean", {"dim": (1, 2), "keepdim": True}, (3, 4, 5), 0),
    ex("Mean", {}, (3, 4), 0),
    ex("Sum", {"dim": -1}, (3, 4), 0),
    ex("Sum", {"dim": (0, -1)}, (3, 4, 5), 0, dtype="long"),
    ex("Select", {"dim": 0, "index": 0}, (T, 4), 0, bindings={"T": 3}),
    ex("Select", {"dim": -1, "index": -2}, (3, 4, 5), 0),
    ex("Slice", {"dim": 0, "start": 1}, (T, 4), 0, bindings={"T": 3}),
    ex("Slice", {"dim": 1, "start": -3, "end": -1}, (3, 5), 0),
    ex("Slice", {"dim": 2, "start": 1, "end": 9, "step": 2}, (3, 2, 6), 0),
    # on a symbolic length, from its end: torch's x[:, 1:-1], x[:, :, -2:]
    ex("Slice", {"dim": 0, "start": 1, "end": -1}, (T, 4), 0, bindings={"T": 4}),
    ex("Slice", {"dim": -1, "start": -2}, (3, T), 0, bindings={"T": 5}),
    # several outputs, as torch.chunk splits (an uneven split may give fewer pieces)
    ex("Chunk", {"chunks": 3}, (T, 12), 0, bindings={"T": 3}),
    ex("Chunk", {"chunks": 2, "dim": 0}, (2 * T, 4), 0, bindings={"T": 3}),
    ex("Chunk", {"chunks": 4, "dim": 1}, (3, 5, 2), 0),  # 2 + 2 + 1: three pieces
    ex("Chunk", {"chunks": 4}, (6,), 0, dtype="long"),  # 2 + 2 + 2: three pieces
    ex("Chunk", {"chunks": 1, "dim": -2}, (3, 4), 0),
    ex("Identity", {}, (3, 4), 0),
    ex("Identity", {}, (5,), 0, dtype="long"),
    ex("Upsample", {"scale_factor": 2}, (3, 4, 5), 0),
    ex("Upsample", {"size": (7, 9), "mode": "bilinear", "align_corners": True}, (2, 4, 5), 0),
    ex("Upsample", {"scale_factor": 1.7, "mode": "linear"}, (3, 5), 0),
    ex("Upsample", {"scale_factor": (2, 0.5), "mode": "bicubic"}, (1, 3, 8), 0),
    ex("Upsample", {"size": 6, "mode": "nearest-exact"}, (2, 3), 0),
    ex("Upsample", {"scale_factor": 3}, (2, T), 0, bindings={"T": 2}),
    ex("PixelShuffle", {"upscale_factor": 2}, (8, 3, 4), 0),
    ex("PixelShuffle", {"upscale_factor": 3}, (2, 9, T, 2), 0, bindings={"T": 2}),
    ex("PixelUnshuffle", {"downscale_factor": 2}, (2, 4, 6), 0),
    ex("PixelUnshuffle", {"downscale_factor": 2}, (3, 2 * T, 4), 0, bindings={"T": 3}),
    ex("Dropout", {}, (5,), 0),
    ex("Dropout", {"p": 0.0}, (T, 4), 0, bindings={"T": 3}),
    ex("Dropout2d", {"p": 0.3}, (3, 4, 4), 0),
    ex("StochasticDepth", {"p": 0.2}, (3, 4, 4), 0),
    ex("StochasticDepth", {"p": 0.5, "mode": "batch"}, (T, 4), 0, bindings={"T": 3}),
    # element-wise product with static broadcasting: no weights, MACs 0
    ex("Mul", {}, (3, 4, 5), 0, more=((3, 1, 1),)),
    ex("Mul", {}, (T, 4), 0, more=((T, 4), (1, 4)), bindings={"T": 3}),
    # learned tensors: the input only gives the batch size
    ex("Parameter", {"shape": (1, 8)}, (5, 8), 0),
    ex("Parameter", {"shape": (4,)}, (T,), 0, dtype="long", bindings={"T": 3}),
    # SDPA: T x S x heads x (hd + hd_v)
    ex("SDPA", {"num_heads": 2}, (T, 8), 5 * 5 * 2 * (4 + 4), more=((T, 8), (T, 8)),
       bindings={"T": 5}),
    ex("SDPA", {"num_heads": 4, "num_kv_heads": 2, "causal": True}, (T, 8),
       5 * 5 * 4 * (2 + 3), more=((T, 4), (T, 6)), bindings={"T": 5}),
    ex("SDPA", {"num_heads": 2, "dropout": 0.1}, (3, 8), 3 * 7 * 2 * (4 + 4),
       more=((7, 8), (7, 8))),
    ex("SDPA", {"num_heads": 2, "scale": 1.0}, (T, 8), 5 * 5 * 2 * (4 + 4),  # T5's: unscaled
       more=((T, 8), (T, 8), (2, T, T)), bindings={"T": 5}),
    ex("PaddingMask", {"pad_id": 0}, (T,), 0, dtype="long", bindings={"T": 5}),
    ex("PaddingMask", {"pad_id": 3}, (2, 4), 0, dtype="long"),
    # a constant of the input's shape (BERT's token types): no parameters, MACs 0
    ex("Full", {"value": 0}, (T,), 0, dtype="long", bindings={"T": 5}),
    ex("Full", {"value": 1.5}, (3, 4), 0),
    # SDPA within windows [H/w, W/w, w*w, C]: per window, as above
    ex("SDPA", {"num_heads": 2}, (2, 3, 4, 8), 2 * 3 * 4 * 4 * 2 * (4 + 4),
       more=((2, 3, 4, 8), (2, 3, 4, 8))),
    # windows (Swin): no parameters, MACs 0; the bias a lookup (0), the mask made (0)
    ex("WindowPartition", {"window": 2}, (4, 6, 3), 0),
    ex("WindowPartition", {"window": 2, "shift": 1}, (4, 4, 3), 0),
    ex("WindowMerge", {"window": 2}, (2, 3, 4, 3), 0),
    ex("WindowMerge", {"window": 3, "shift": 1}, (1, 2, 9, 3), 0),
    ex("RelativePositionBias", {"window": 3, "num_heads": 2}, (6, 6, 4), 0),
    ex("ShiftedWindowMask", {"window": 2, "shift": 1}, (4, 6, 3), 0),
    ex("BucketedPositionBias", {"num_buckets": 8, "num_heads": 2, "max_distance": 10}, (T, 4), 0,
       bindings={"T": 12}),
    ex("BucketedPositionBias", {"num_heads": 1, "bidirectional": False}, (5, 4), 0),
    # Einsum: the batched matrix product torch computes, output and contracted sizes
    # multiplied (a subscript only one operand has is summed first); 0 without a contraction
    ex("Einsum", {"equation": "td,sd->ts"}, (T, 8), 5 * 6 * 8, more=((6, 8),),
       bindings={"T": 5}),
    ex("Einsum", {"equation": "hts,hsd->htd"}, (2, 3, 4), 2 * 3 * 5 * 4, more=((2, 4, 5),)),
    ex("Einsum", {"equation": "thd,shd->hts"}, (T, 2, 4), 2 * 3 * 6 * 4, more=((6, 2, 4),),
       bindings={"T": 3}),
    ex("Einsum", {"equation": "cn,dn->cd"}, (3, 4), 3 * 5 * 4, more=((5, 4),)),
    ex("Einsum", {"equation": "ij,ij->i"}, (3, 4), 3 * 4, more=((3, 4),)),
    ex("Einsum", {"equation": "ij,jk->i"}, (3, 4), 3 * 4, more=((4, 5),)),
    ex("Einsum", {"equation": "i,j->ij"}, (3,), 0, more=((5,),)),
    ex("RoPE", {"num_heads": 2}, (T, 8), 0, bindings={"T": 5}),
    ex("RoPE", {"num_heads": 1, "base": 500.0}, (3, 6), 0),
    # conditioning (diffusion U-Nets): no parameters, MACs 0
    ex("TimestepEmbedding", {"dim": 8}, (1,), 0),
    ex("TimestepEmbedding", {"dim": 6, "max_period": 100.0}, (1,), 0),
    ex("Add", {}, (4, 3, 5), 0, more=((4, 1, 1),)),
    ex("Add", {}, (4, 7), 0, more=((1, 7),)),
    # element-wise math (inline in forward): no weights, MACs 0; a number is one operand
    ex("Add", {"value": 1.5}, (4, 7), 0),
    ex("Mul", {"value": 0.5}, (3, 4), 0),
    ex("Mul", {"value": -2}, (T, 4), 0, more=((T, 1),), bindings={"T": 3}),
    ex("Sub", {}, (4, 3, 5), 0, more=((4, 1, 5),)),
    ex("Sub", {"value": 1}, (6,), 0),
    ex("Div", {}, (3, 4), 0, more=((3, 1),)),
    ex("Div", {}, (1, 4), 0, more=((3, 4),)),
    ex("Div", {"value": 4}, (2, 3), 0),
    ex("Where", {}, (3, 1), 0, more=((3, 4), (3, 4))),
    ex("Where", {}, (2, 5), 0, more=((2, 5), (1, 5))),
    ex("Exp", {}, (3, 4), 0),
    ex("Log", {}, (5,), 0),
    ex("Sqrt", {}, (T, 4), 0, bindings={"T": 2}),
    ex("Pow", {"exponent": 2}, (3, 4), 0),
    ex("Pow", {"exponent": 0.5}, (6,), 0),
    ex("Neg", {}, (3, 4), 0),
    ex("Abs", {}, (2, 3, 4), 0),
    ex("Clamp", {"min": -1.0, "max": 0.5}, (3, 4), 0),
    ex("Clamp", {"min": 0}, (6,), 0),
    ex("Clamp", {"max": 2}, (6,), 0),
    # padding and rolling: no parameters, MACs 0
    ex("Pad", {"left": 2}, (4, 7), 0),
    ex("Pad", {"padding": (1, 2, 0, 3)}, (2, 4, 5), 0),
    ex("Pad", {"left": 1, "right": 1, "top": 2, "mode": "reflect"}, (3, 4, 5), 0),
    ex("Pad", {"left": 2, "front": 1, "back": 1, "mode": "replicate"}, (2, 3, 4, 5), 0),
    ex("Pad", {"right": 3, "mode": "circular"}, (2, 5), 0),
    ex("Pad", {"left": 2, "value": -1.0}, (T, 4), 0, bindings={"T": 3}),
    ex("Pad", {"top": 1, "bottom": 1, "mode": "reflect"}, (2, 4, 5), 0),
    ex("Roll", {"shifts": 2}, (3, 5), 0),
    ex("Roll", {"shifts": (-1, 2), "dims": (0, 1)}, (4, 5, 3), 0),
    ex("Roll", {"shifts": 1, "dims": 0}, (T, 4), 0, bindings={"T": 3}),
    # sampling: mu in evaluation, a sample in training
    ex("Reparameterize", {}, (3, 4), 0, more=((3, 4),)),
    ex("Reparameterize", {}, (T, 2), 0, more=((T, 2),), bindings={"T": 3}),
]
# fmt: on


def build(call: TorchCall) -> torch.nn.Module | None:
    """The torch module a TorchCall describes (``None`` when the layer has none). ``cls`` is
    evaluated as generated code would see it: ``nn.X``, or a class the call's ``helper``
    source defines."""
    if call.cls is None:
        return None
    namespace: dict[str, Any] = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
    if call.helper is not None:
        exec("import math\n" + call.helper, namespace)
    # generated code renders arguments with repr: they must survive the round trip
    for value in (*call.args, *call.kwargs.values()):
        assert eval(repr(value)) == value
    module: torch.nn.Module = eval(call.cls, namespace)(*call.args, **call.kwargs)
    return module


def forward(call: TorchCall, module: torch.nn.Module | None, xs: list[torch.Tensor]) -> Any:
    """Evaluate the TorchCall's forward template, as generated code would."""
    names = [f"x{i}" for i in range(len(xs))]
    expr = call.forward.format(
        module="m", x=names[0], inputs=", ".join(names), **{n: n for n in names}
    )
    return eval(expr, {"m": module, "torch": torch, **dict(zip(names, xs, strict=True))})


def random_input(shape: tuple[int, ...], dtype: str, high: int = 10) -> torch.Tensor:
    if dtype == "long":
        return torch.randint(0, high, (BATCH, *shape))
    return torch.randn(BATCH, *shape)


def make(kind: str, args: dict[str, Any]) -> Layer:
    return REGISTRY[kind].model_validate(args)


def test_every_kind_has_an_example() -> None:
    from test_sequence_layers import KINDS as SEQUENCE_KINDS  # oracle-tested in that file

    missing = sorted(set(REGISTRY) - {e.kind for e in EXAMPLES} - SEQUENCE_KINDS)
    assert not missing, f"layer kinds without an oracle example: {missing}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_layer_agrees_with_torch(example: Example) -> None:
    layer = make(example.kind, example.args)
    shapes = [example.shape, *example.more]
    types = [TensorType(shape, example.dtype) for shape in shapes]  # type: ignore[arg-type]
    inferred = layer.infer(types)
    call = layer.torch(types)
    module = build(call)

    xs = [
        random_input(
            tuple(value_at(d, example.bindings) for d in shape), example.dtype, example.high
        )
        for shape in shapes
    ]
    with torch.no_grad():
        y = forward(call, module, xs)

    ys = list(y) if isinstance(y, tuple) else [y]  # a kind with several outputs: a tuple
    assert len(ys) == len(inferred.outputs)
    for y, output in zip(ys, inferred.outputs, strict=True):
        expected = tuple(value_at(d, example.bindings) for d in output.shape)
        assert tuple(y.shape) == (BATCH, *expected)
        assert y.dtype == (torch.int64 if output.dtype == "long" else torch.float32)
    params = {} if module is None else dict(module.named_parameters())
    buffers = {} if module is None else dict(module.named_buffers())
    assert {k: tuple(p.shape) for k, p in params.items()} == inferred.weights
    assert {k: tuple(b.shape) for k, b in buffers.items()} == inferred.buffers
    assert value_at(inferred.macs, example.bindings) == example.macs
    assert layer.label().startswith(example.kind)
    assert REGISTRY[example.kind].__doc__


def _counts_as_torchinfo(example: Example) -> bool:
    """Kinds whose MACs are torchinfo's; the per-step kinds are, on inputs without steps."""
    note = REGISTRY[example.kind].torchinfo_macs
    return note == "same" or (note.startswith("T x") and len(example.shape) == 1)


@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if _counts_as_torchinfo(e)], ids=lambda e: e.id
)
def test_macs_are_torchinfos(example: Example) -> None:
    """MACs per sample equal torchinfo's total_mult_adds for a batch, divided by the batch."""
    torchinfo = pytest.importorskip("torchinfo")
    layer = make(example.kind, example.args)
    shapes = [example.shape, *example.more]
    call = layer.torch([TensorType(shape, example.dtype) for shape in shapes])  # type: ignore[arg-type]
    module = build(call)
    if module is None:  # written inline in forward: nothing for torchinfo to see
        assert example.macs == 0
        return
    xs = [
        random_input(tuple(value_at(d, example.bindings) for d in shape), example.dtype)
        for shape in shapes
    ]
    summary = torchinfo.summary(module, input_data=xs, verbose=0, mode="eval")
    assert summary.total_mult_adds == BATCH * example.macs


def test_my_net_conv1() -> None:
    """MY_NET's first layer: Conv2d(3 -> 32, k=3, p=1) on [3, 48, 48]."""
    conv = make("Conv2d", {"out_channels": 32, "kernel_size": 3, "padding": 1})
    inferred = conv.infer([TensorType((3, 48, 48))])
    assert inferred.output.shape == (32, 48, 48)
    assert inferred.weights == {"weight": (32, 3, 3, 3), "bias": (32,)}
    assert sum(_numel(s) for s in inferred.weights.values()) == 864 + 32 == 896
    assert inferred.macs == 1_990_656 + 73_728 == 2_064_384
    assert conv.label() == "Conv2d(32, k=3, p=1)"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# symbolic dimensions ------------------------------------------------------------------------


def test_symbolic_shapes_and_macs_are_formulas() -> None:
    linear = make("Linear", {"out_features": 8})
    inferred = linear.infer([TensorType((T, 4))])
    assert inferred.output.shape == (T, 8)
    assert inferred.macs == T * 8 * 5
    pool = make("MaxPool1d", {"kernel_size": 2})
    assert pool.infer([TensorType((3, 2 * T))]).output.shape == (3, T)
    with pytest.raises(LayerError) as err:
        pool.infer([TensorType((3, T))])  # T // 2 has no exact formula
    assert err.value.code == "E405"
    with pytest.raises(LayerError) as err:
        make("Reshape", {"shape": (4, 5)}).infer([TensorType((T, 5))])
    assert err.value.code == "E405"
    with pytest.raises(LayerError) as err:
        make("LayerNorm", {}).infer([TensorType((4, T))])
    assert err.value.code == "E405"


# warnings -----------------------------------------------------------------------------------


# fmt: off
DROPS = [
    ("MaxPool2d", {"kernel_size": 2}, (3, 25, 25),
     "MaxPool2d(2) drops 1 row and 1 column: (25 - 2) // 2 + 1 = 12 windows cover 24 of 25"),
    ("MaxPool2d", {"kernel_size": 2}, (3, 26, 27),
     "MaxPool2d(2) drops 1 column: (27 - 2) // 2 + 1 = 13 windows cover 26 of 27"),
    ("MaxPool2d", {"kernel_size": 2}, (3, 25, 27),
     "MaxPool2d(2) drops 1 row and 1 column: height (25 - 2) // 2 + 1 = 12 windows cover 24 "
     "of 25; width (27 - 2) // 2 + 1 = 13 windows cover 26 of 27"),
    ("AvgPool2d", {"kernel_size": 3, "stride": 2}, (3, 24, 23),
     "AvgPool2d(3, s=2) drops 1 row: (24 - 3) // 2 + 1 = 11 windows cover 23 of 24"),
    ("AvgPool2d", {"kernel_size": 3, "stride": 3, "padding": 1}, (3, 6, 7),
     "AvgPool2d(3, s=3, p=1) drops 1 row: (6 + 2*1 - 3) // 3 + 1 = 2 windows cover 5 of 6"),
    ("MaxPool1d", {"kernel_size": 4}, (3, 10),
     "MaxPool1d(4) drops 2 positions: (10 - 4) // 4 + 1 = 2 windows cover 8 of 10"),
]
# fmt: on


@pytest.mark.parametrize(("kind", "args", "shape", "message"), DROPS)
def test_pooling_that_drops_rows_warns_with_the_arithmetic(
    kind: str, args: dict[str, Any], shape: tuple[Dim, ...], message: str
) -> None:
    assert make(kind, args).infer([TensorType(shape)]).warnings == [("W503", message)]


@pytest.mark.parametrize(
    ("kind", "args", "shape"),
    [
        ("MaxPool2d", {"kernel_size": 2}, (3, 24, 24)),
        ("MaxPool2d", {"kernel_size": 2, "ceil_mode": True}, (3, 25, 25)),
        ("MaxPool2d", {"kernel_size": 2, "padding": 1}, (3, 5, 5)),  # only padding is dropped
        ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (3, 8, 8)),
        ("AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (3, 10, 9)),
        ("MaxPool1d", {"kernel_size": 1, "stride": 2}, (3, 6)),  # the stride's gap, not a drop
        ("AvgPool2d", {"kernel_size": 2}, (3, 2 * T, 8)),
    ],
)
def test_pooling_that_tiles_does_not_warn(
    kind: str, args: dict[str, Any], shape: tuple[Dim, ...]
) -> None:
    assert make(kind, args).infer([TensorType(shape)]).warnings == []


# bad arguments ------------------------------------------------------------------------------


BAD_ARGS = [
    ("Conv2d", {"out_channels": 0, "kernel_size": 3}),
    ("Conv2d", {"out_channels": 8, "kernel_size": 0}),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": -1}),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": "full"}),
    ("Conv2d", {"out_channels": 8}),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "colour": 1}),
    ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 3, "padding": "same"}),
    ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 3, "padding_mode": "reflect"}),
    ("Linear", {"out_features": -3}),
    ("MaxPool2d", {}),
    ("MaxPool2d", {"kernel_size": 2, "stride": 0}),
    ("AvgPool2d", {"kernel_size": 2, "dilation": 2}),
    ("AdaptiveAvgPool2d", {"output_size": 0}),
    ("BatchNorm2d", {"eps": 0}),
    ("BatchNorm2d", {"momentum": 1.5}),
    ("GroupNorm", {}),
    ("Dropout", {"p": 1.5}),
    ("Dropout", {"p": -0.1}),
    ("Reshape", {"shape": ()}),
    ("Reshape", {"shape": (-2, 4)}),
    ("Upsample", {"mode": "area", "scale_factor": 2}),
    ("Upsample", {"scale_factor": 0}),
    ("GELU", {"approximate": "fast"}),
    ("TimestepEmbedding", {"dim": 7}),
    ("TimestepEmbedding", {"dim": 8, "max_period": 1}),
    ("Pad", {"left": -1}),
    ("Pad", {"mode": "zeros"}),
    ("Pow", {}),
    ("Roll", {}),
    ("Einsum", {"equation": "td,sd"}),
    ("Einsum", {"equation": "t.d,sd->ts"}),
    ("Einsum", {"equation": "td,sd,s->t"}),
    ("InstanceNorm2d", {"momentum": 2}),
    ("PixelShuffle", {"upscale_factor": 0}),
    ("AdaptiveMaxPool1d", {"output_size": (2,)}),
]


@pytest.mark.parametrize(("kind", "args"), BAD_ARGS)
def test_bad_argument_is_a_validation_error(kind: str, args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(kind, args)


# fmt: off
LAYER_ERRORS = [
    # (kind, args, per-sample input, code, text the message or notes must contain)
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "groups": 2}, (3, 8, 8), "E204",
     "in_channels=3 is not divisible by groups=2"),
    ("Conv2d", {"out_channels": 9, "kernel_size": 3, "groups": 2}, (4, 8, 8), "E204",
     "out_channels=9"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "in_channels": 4}, (3, 8, 8), "E401",
     "in_channels=4, but its input has 3"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 5}, (3, 4, 4), "E402",
     "(4 + 2*0 - 1*(5-1) - 1) / 1) + 1 = 0"),
    ("Conv2d", {"out_channels": 8, "kernel_size": (3, 3, 3)}, (3, 8, 8), "E204", "2 values"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": (1, 1, 1)}, (3, 8, 8),
     "E204", "padding needs 2 values"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": "same"},
     (3, 8, 8), "E204", "stride 1"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3}, (3, 8), "E404", "[C, H, W]"),
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "stride": 2}, (3, T, 8), "E405",
     "symbolic"),
    ("Conv1d", {"out_channels": 8, "kernel_size": 3}, (3, 8, 8), "E404", "[C, L]"),
    ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 3, "stride": 2,
                         "output_padding": 2}, (4, 5, 5), "E204", "output_padding=2"),
    ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 3, "padding": 2}, (4, 1, 1),
     "E402", "(1 - 1)*1 - 2*2 + 1*(3 - 1) + 0 + 1 = -1"),
    ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 3, "in_channels": 5}, (4, 5, 5),
     "E401", "in_channels=5"),
    ("Conv3d", {"out_channels": 4, "kernel_size": 3}, (3, 8, 8), "E404", "[C, D, H, W]"),
    ("ConvTranspose1d", {"out_channels": 4, "kernel_size": 3, "stride": 2,
                         "output_padding": (1, 1)}, (3, 5), "E204", "output_padding needs 1"),
    ("ConvTranspose3d", {"out_channels": 4, "kernel_size": 3, "stride": 2,
                         "output_padding": 2}, (3, 2, 2, 2), "E204", "output_padding=2"),
    ("Linear", {"out_features": 8, "in_features": 30}, (20,), "E401", "in_features=30"),
    ("Linear", {"out_features": 8}, (), "E404", "scalar"),
    ("Linear", {"out_features": 8}, (5,), "E404", "long"),
    ("Softmax", {"dim": 2}, (3, 4), "E204", "dim=2"),
    ("MaxPool2d", {"kernel_size": 6}, (3, 5, 5), "E402", "larger than the padded input"),
    ("MaxPool2d", {"kernel_size": 2, "padding": 2}, (3, 5, 5), "E204", "at most 2 // 2 = 1"),
    ("MaxPool2d", {"kernel_size": 2}, (3, 5), "E404", "[C, H, W]"),
    ("MaxPool1d", {"kernel_size": 2, "dilation": (1, 1)}, (3, 5), "E204", "dilation"),
    ("AvgPool2d", {"kernel_size": (2, 2, 2)}, (3, 5, 5), "E204", "kernel_size needs 2"),
    ("AdaptiveAvgPool2d", {"output_size": 2}, (3, 5), "E404", "[C, H, W]"),
    ("AdaptiveAvgPool3d", {"output_size": (2, 2)}, (3, 4, 4, 4), "E204", "output_size needs 3"),
    ("MaxPool3d", {"kernel_size": 2}, (3, 4, 4), "E404", "[C, D, H, W]"),
    ("AvgPool1d", {"kernel_size": 4}, (3, 3), "E402", "larger than the padded input"),
    ("InstanceNorm2d", {}, (3, 1, 1), "E204", "single value"),
    ("InstanceNorm1d", {}, (3,), "E404", "[C, L]"),
    ("InstanceNorm3d", {"num_features": 4}, (3, 2, 2, 2), "E401", "num_features=4"),
    ("PixelShuffle", {"upscale_factor": 2}, (6, 3, 3), "E401", "6 % 4 = 2"),
    ("PixelShuffle", {"upscale_factor": 2}, (4, 4), "E404", "[*, C, H, W]"),
    ("PixelUnshuffle", {"downscale_factor": 2}, (2, 5, 4), "E401", "5 % 2 = 1"),
    ("PixelUnshuffle", {"downscale_factor": 2}, (2, T, 4), "E405", "height T / 2"),
    ("BatchNorm2d", {"num_features": 16}, (8, 4, 4), "E401", "num_features=16"),
    ("BatchNorm2d", {}, (8, 4), "E404", "[C, H, W]"),
    ("BatchNorm1d", {}, (8, 4, 4), "E404", "[C] or [C, L]"),
    ("LayerNorm", {"normalized_shape": 10}, (4, 8), "E401", "ends with [8]"),
    ("LayerNorm", {"normalized_shape": (2, 4, 8)}, (4, 8), "E404", "at least 3"),
    ("GroupNorm", {"num_groups": 4}, (6, 3, 3), "E204", "6 % 4 = 2"),
    ("GroupNorm", {"num_groups": 2, "num_channels": 8}, (6, 3, 3), "E401", "num_channels=8"),
    ("Flatten", {"start_dim": 1, "end_dim": 0}, (3, 4), "E204", "comes after"),
    ("Flatten", {"start_dim": 4}, (3, 4), "E204", "out of range"),
    ("Flatten", {}, (), "E404", "at least one dimension"),
    ("Reshape", {"shape": (64, 7, 7)}, (8, 20, 20), "E401",
     "needs 3,136 elements, but its input [8, 20, 20] has 3,200 = 8 x 20 x 20"),
    ("Reshape", {"shape": (-1, 7)}, (10,), "E401", "10 % 7 = 3"),
    ("Reshape", {"shape": (-1, -1)}, (10,), "E204", "at most one"),
    ("Reshape", {"shape": (0, 10)}, (10,), "E204", "positive"),
    ("Upsample", {}, (3, 4, 4), "E204", "exactly one of size and scale_factor"),
    ("Upsample", {"size": 4, "scale_factor": 2}, (3, 4, 4), "E204", "exactly one"),
    ("Upsample", {"scale_factor": 2, "align_corners": True}, (3, 4, 4), "E204",
     "align_corners"),
    ("Upsample", {"scale_factor": 2, "mode": "bilinear"}, (3, 4), "E404", "[C, H, W]"),
    ("Upsample", {"size": (4, 4, 4)}, (3, 4, 4), "E204", "3 values"),
    ("Upsample", {"scale_factor": 0.1}, (3, 4, 4), "E402", "floor(4 * 0.1) = 0"),
    ("Upsample", {"scale_factor": 1.5}, (3, T), "E405", "symbolic"),
    ("Dropout2d", {}, (3, 4), "E404", "[C, H, W]"),
    ("Softmax", {"dim": -3}, (3, 4), "E204", "dims count per sample"),
    ("Concat", {"dim": 3}, (3, 4, 5), "E204", "run from -3 to 2"),
    ("Flatten", {"start_dim": 3}, (3, 4, 5), "E204", "start_dim=3 is out of range for [3, 4, 5]"),
    ("Mean", {"dim": (0, -2)}, (3, 4), "E204", "twice"),
    ("Mean", {"dim": 0}, (3, 4), "E404", "long"),
    ("Permute", {"dims": (0, 0, 1)}, (3, 4, 5), "E204", "exactly once"),
    ("Permute", {"dims": (0, 1)}, (3, 4, 5), "E204", "each of the 3 dimensions"),
    ("Transpose", {"dim0": 0, "dim1": 2}, (3, 4), "E204", "dim1=2 is out of range"),
    ("Select", {"dim": 0, "index": 3}, (3, 4), "E204", "outside dimension 0 of [3, 4]"),
    ("Select", {"dim": 0, "index": -1}, (T, 4), "E405", "symbolic"),
    ("Slice", {"dim": 1, "start": 4}, (3, 4), "E402", "keeps nothing"),
    ("Slice", {"dim": 0, "start": 1, "step": 2}, (T, 4), "E405", "symbolic"),
    ("Chunk", {"chunks": 2, "dim": 2}, (3, 4), "E204", "dim=2 is out of range for [3, 4]"),
    ("Chunk", {"chunks": 2, "dim": 0}, (T, 4), "E405", "symbolic"),
    ("Hardtanh", {"min_val": 1.0, "max_val": 1.0}, (3,), "E204", "below max_val"),
    ("PReLU", {"num_parameters": 4}, (3, 5), "E401", "has 3 channels"),
    ("LayerNorm2d", {}, (3, 4), "E404", "[C, H, W]"),
    ("LayerNorm2d", {"num_channels": 5}, (3, 4, 4), "E401", "num_channels=5"),
    ("RoPE", {"num_heads": 2}, (3, 6), "E204", "6 / 2 = 3 is odd"),
    ("RoPE", {"num_heads": 4}, (3, 6), "E204", "6 % 4 = 2"),
    ("RoPE", {"num_heads": 1}, (6,), "E404", "[T, d]"),
    ("TimestepEmbedding", {"dim": 8}, (2,), "E404", "one number per sample, shape [1]"),
    ("TimestepEmbedding", {"dim": 8}, (1,), "E404", "long"),
    ("Mul", {}, (3, 4), "E407", "Mul(0.5) <- x"),
    ("Mul", {"value": 2}, (3,), "E404", "long"),
    ("Clamp", {}, (3,), "E204", "min, max or both"),
    ("Clamp", {"min": 2, "max": 1}, (3,), "E204", "must not be above"),
    ("Exp", {}, (3,), "E404", "long"),
    ("Pad", {"padding": (1, 2, 3)}, (3, 4), "E204", "pairs"),
    ("Pad", {"padding": (1, 1), "left": 1}, (3, 4), "E204", "not both"),
    ("Pad", {"left": 4, "mode": "reflect"}, (3, 4), "E402", "it needs at least 5"),
    ("Pad", {"left": 5, "mode": "circular"}, (3, 4), "E402", "it needs at least 5"),
    ("Pad", {"left": 1, "mode": "reflect"}, (2, 2, 3, 4, 5), "E404", "rank 2"),
    ("Pad", {"top": 1}, (4,), "E404", "pads 2 dimensions"),
    ("Pad", {"top": 1, "mode": "reflect"}, (4, 5), "E404", "rank 3 per sample"),
    ("Roll", {"shifts": (1, 2), "dims": 0}, (3, 4), "E204", "one shift per dimension"),
    ("Roll", {"shifts": (1, 2), "dims": (0, -2)}, (3, 4), "E204", "twice"),
    ("Roll", {"shifts": 1, "dims": 2}, (3, 4), "E204", "out of range"),
    ("Full", {"value": 0.5}, (4,), "E404", "long"),
]
# fmt: on


# (kind, args, per-sample inputs, code, text): layers of several inputs
MULTI_ERRORS = [
    ("Mul", {}, [(3, 4, 5), (4, 5)], "E401", "one rank (write the 1s"),
    ("Mul", {}, [(3, 4, 5), (3, 2, 1)], "E401", "dim 1 has sizes 4, 2"),
    (
        "Einsum",
        {"equation": "td,sd->ts"},
        [(5, 8), (6, 7)],
        "E401",
        "subscript d is 8 in operand 0 but 7 in operand 1",
    ),
    ("Einsum", {"equation": "td,sd->ts"}, [(5, 8, 2), (6, 8)], "E404", "3 dimensions per sample"),
    ("Einsum", {"equation": "tt,sd->ts"}, [(5, 5), (6, 8)], "E204", "repeat a letter"),
    (
        "Einsum",
        {"equation": "td,sd->tx"},
        [(5, 8), (6, 8)],
        "E204",
        "distinct letters of the operands",
    ),
    ("Einsum", {"equation": "td,sd->tt"}, [(5, 8), (6, 8)], "E204", "distinct letters"),
    ("SDPA", {"num_heads": 4, "num_kv_heads": 3}, [(5, 8)] * 3, "E204", "4 % 3 = 1"),
    ("SDPA", {"num_heads": 3}, [(5, 8)] * 3, "E204", "8 % 3 = 2"),
    ("SDPA", {"num_heads": 2, "num_kv_heads": 1}, [(5, 8)] * 3, "E401", "1 heads of"),
    ("SDPA", {"num_heads": 2}, [(5, 8), (5, 8), (6, 8)], "E401", "differ in length"),
    ("SDPA", {"num_heads": 2, "causal": True}, [(5, 8), (6, 8), (6, 8)], "E204", "as long"),
    ("Sub", {}, [(3, 4), (3, 4), (3, 4)], "E407", "takes 2 input tensors"),
    ("Div", {}, [(3, 4), (2, 4)], "E401", "dim 0 has sizes 3, 2"),
    ("Where", {}, [(3, 4), (3, 4), (3, 5)], "E401", "[3, 4], [3, 4], [3, 5]"),
    ("Reparameterize", {}, [(3, 4), (3, 1)], "E401", "of one shape"),
]


@pytest.mark.parametrize(("kind", "args", "shapes", "code", "text"), MULTI_ERRORS)
def test_bad_inputs_are_a_layer_error(
    kind: str, args: dict[str, Any], shapes: list[tuple[int, ...]], code: str, text: str
) -> None:
    with pytest.raises(LayerError) as err:
        make(kind, args).infer([TensorType(shape) for shape in shapes])
    assert err.value.code == code
    assert text in " ".join([err.value.message, *err.value.notes])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def test_rope_and_grouped_query_sdpa_agree_with_the_reference_formulas() -> None:
    """Hugging Face Llama's RoPE (cos/sin tables, rotate_half) and attention with key/value
    heads repeated, written out here independently of the generated helpers."""
    torch.manual_seed(0)
    heads, kv, hd, steps = 4, 2, 6, 5
    q, k, v = (torch.randn(BATCH, steps, n * hd) for n in (heads, kv, kv))
    rope = build(make("RoPE", {"num_heads": heads}).torch([TensorType((steps, heads * hd))]))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(steps).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, hd)
    qh = q.view(BATCH, steps, heads, hd).transpose(1, 2)  # (B, h, T, hd)
    expected = qh * emb.cos() + _rotate_half(qh) * emb.sin()
    with torch.no_grad():
        got = rope(q).view(BATCH, steps, heads, hd).transpose(1, 2)  # type: ignore[misc]
    torch.testing.assert_close(got, expected)

    types = [TensorType((steps, n * hd)) for n in (heads, kv, kv)]
    sdpa = make("SDPA", {"num_heads": heads, "num_kv_heads": kv, "causal": True})
    call = sdpa.torch(types)
    with torch.no_grad():
        out = forward(call, build(call), [q, k, v])
    kh, vh = (t.view(BATCH, steps, kv, hd).transpose(1, 2).repeat_interleave(2, 1) for t in (k, v))
    scores = qh @ kh.transpose(-1, -2) / hd**0.5
    scores = scores.masked_fill(torch.ones(steps, steps).triu(1).bool(), float("-inf"))
    reference = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(BATCH, steps, heads * hd)
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize(("kind", "args", "shape", "code", "text"), LAYER_ERRORS)
def test_bad_input_is_a_layer_error(
    kind: str, args: dict[str, Any], shape: tuple[Dim, ...], code: str, text: str
) -> None:
    dtype = "long" if text == "long" else "float"
    with pytest.raises(LayerError) as err:
        make(kind, args).infer([TensorType(shape, dtype)])  # type: ignore[arg-type]
    assert err.value.code == code
    assert text in " ".join([err.value.message, *err.value.notes])


def test_labels() -> None:
    # fmt: off
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("Conv2d", {"out_channels": 16, "kernel_size": (3, 5), "stride": 2, "groups": 2},
         "Conv2d(16, k=3x5, s=2, g=2)"),
        ("ConvTranspose2d", {"out_channels": 8, "kernel_size": 2, "stride": 2,
                             "output_padding": 1}, "ConvTranspose2d(8, k=2, s=2, op=1)"),
        ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, "MaxPool2d(3, s=2, p=1)"),
        ("MaxPool1d", {"kernel_size": 3, "dilation": 2}, "MaxPool1d(3, d=2)"),
        ("AvgPool2d", {"kernel_size": 2, "ceil_mode": True}, "AvgPool2d(2, ceil)"),
        ("AdaptiveAvgPool2d", {"output_size": (None, 7)}, "AdaptiveAvgPool2d(*x7)"),
        ("BatchNorm2d", {}, "BatchNorm2d"),
        ("LayerNorm", {"normalized_shape": 512}, "LayerNorm(512)"),
        ("GroupNorm", {"num_groups": 8}, "GroupNorm(8)"),
        ("Flatten", {}, "Flatten"),
        ("Reshape", {"shape": (64, 7, 7)}, "Reshape(64, 7, 7)"),
        ("Upsample", {"scale_factor": 2}, "Upsample(x2, nearest)"),
        ("Upsample", {"size": (7, 9), "mode": "bilinear"}, "Upsample(size=7x9, bilinear)"),
        ("Dropout", {"p": 0.25}, "Dropout(0.25)"),
        ("TimestepEmbedding", {"dim": 32}, "TimestepEmbedding(32)"),
        ("Conv3d", {"out_channels": 8, "kernel_size": (1, 3, 3)}, "Conv3d(8, k=1x3x3)"),
        ("ConvTranspose1d", {"out_channels": 8, "kernel_size": 4, "stride": 2},
         "ConvTranspose1d(8, k=4, s=2)"),
        ("AdaptiveAvgPool3d", {"output_size": (None, 2, 3)}, "AdaptiveAvgPool3d(*x2x3)"),
        ("AdaptiveMaxPool1d", {"output_size": 1}, "AdaptiveMaxPool1d(1)"),
        ("InstanceNorm2d", {}, "InstanceNorm2d"),
        ("PixelShuffle", {"upscale_factor": 2}, "PixelShuffle(2)"),
        ("Einsum", {"equation": "td,sd->ts"}, "Einsum(td,sd->ts)"),
    ]
    # fmt: on
    for kind, args, label in cases:
        assert make(kind, args).label() == label


def test_reshape_forward_template() -> None:
    call = make("Reshape", {"shape": (64, -1)}).torch([TensorType((64, 7, 7))])
    assert call.cls is None
    assert call.forward.format(x="h") == "h.reshape(h.shape[0], 64, -1)"


# property tests -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["Conv2d", "MaxPool2d", "AvgPool2d"]),
    size=st.tuples(st.integers(1, 10), st.integers(1, 10)),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    ceil_mode=st.booleans(),
)
def test_windowed_layers_agree_with_torch(
    kind: str,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: int,
    padding: int,
    dilation: int,
    ceil_mode: bool,
) -> None:
    args: dict[str, Any] = {"kernel_size": kernel, "stride": stride, "padding": padding}
    if kind == "Conv2d":
        args |= {"out_channels": 2, "dilation": dilation}
    else:
        args["ceil_mode"] = ceil_mode
        if kind == "MaxPool2d":
            args["dilation"] = dilation
    layer = make(kind, args)
    types = [TensorType((2, *size))]
    try:
        inferred = layer.infer(types)
    except LayerError as err:
        assert err.code in ("E402", "E204"), err.message
        module = build(layer.torch(types))
        with pytest.raises((RuntimeError, ValueError)):
            module(torch.randn(1, 2, *size))  # type: ignore[misc]
        return
    module = build(layer.torch(types))
    assert module is not None
    with torch.no_grad():
        y = module(torch.randn(1, 2, *size))
    assert tuple(y.shape[1:]) == inferred.output.shape


dims = st.one_of(st.integers(1, 6), st.just(T), st.just(2 * T + 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(dims, min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from(["float", "long"]),
)
@pytest.mark.parametrize("kind", sorted({e.kind for e in EXAMPLES}))
def test_any_input_gives_a_result_or_a_layer_error(
    kind: str, shape: tuple[Dim, ...], dtype: str
) -> None:
    """Random (often broken) inputs yield a diagnostic, never a crash."""
    example = next(e for e in EXAMPLES if e.kind == kind)
    layer = make(kind, example.args)
    try:
        # the analyzer checks the number of inputs before calling infer; a kind whose number
        # depends on its arguments (Mul takes one with a number) checks it there (E407)
        layer.infer([TensorType(shape, dtype)] * layer.arity[0])  # type: ignore[arg-type]
    except LayerError as err:
        assert err.code in ("E204", "E401", "E402", "E404", "E405", "E407"), err.message


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(1, 16),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 5),
    padding=st.integers(0, 2),
    ceil_mode=st.booleans(),
)
def test_dropped_rows_are_the_ones_torch_never_reads(
    size: int, kernel: int, stride: int, padding: int, ceil_mode: bool
) -> None:
    """W503's count equals the trailing columns that get no gradient through AvgPool2d (for
    strides up to the kernel size, where windows leave no gaps)."""
    stride = min(stride, kernel)
    padding = min(padding, kernel // 2)
    args: dict[str, Any] = {
        "kernel_size": (1, kernel),
        "stride": (1, stride),
        "padding": (0, padding),
    }
    layer = make("AvgPool2d", {**args, "ceil_mode": ceil_mode})
    try:
        inferred = layer.infer([TensorType((1, 1, size))])
    except LayerError:
        return
    x = torch.ones(1, 1, 1, size, requires_grad=True)
    torch.nn.AvgPool2d(**args, ceil_mode=ceil_mode)(x).sum().backward()
    assert x.grad is not None
    read = x.grad[0, 0, 0] != 0
    unread = size - int(read.nonzero().max()) - 1 if read.any() else size
    reported = [m for code, m in inferred.warnings if code == "W503"]
    if unread:
        assert len(reported) == 1
        assert f"drops {unread} column" in reported[0]
    else:
        assert reported == []


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), chunks=st.integers(1, 12))
def test_chunk_splits_as_torch_chunk(size: int, chunks: int) -> None:
    """The pieces, and how many there are, are torch.chunk's, uneven splits included (it
    may give fewer pieces than asked: 5 in 4 chunks is 2 + 2 + 1)."""
    inferred = make("Chunk", {"chunks": chunks}).infer([TensorType((3, size))])
    pieces = torch.zeros(3, size).chunk(chunks, dim=-1)
    assert [o.shape for o in inferred.outputs] == [tuple(p.shape) for p in pieces]
    assert inferred.output == inferred.outputs[0]
    assert inferred.count_note is not None and f"of size {size}" in inferred.count_note


def test_full_is_its_value_in_its_inputs_shape_and_type() -> None:
    ids = torch.randint(0, 5, (BATCH, 7))
    for value in (0, 3):
        layer = make("Full", {"value": value})
        call = layer.torch([TensorType((7,), "long")])
        out = forward(call, build(call), [ids])
        assert torch.equal(out, torch.full_like(ids, value))


@pytest.mark.parametrize("kind", ["PixelShuffle", "PixelUnshuffle"])
def test_pixel_shuffling_takes_5d_inputs_in_any_order(kind: str) -> None:
    """Torch's kernel refuses a 5-D input strided as channels-last 3-D (a Permute makes
    one; fuzz seed 8,000,530): the generated call hands it over contiguous."""
    layer = make(kind, {"upscale_factor" if kind == "PixelShuffle" else "downscale_factor": 1})
    call = layer.torch([TensorType((4, 3, 3, 6))])
    x = torch.randn(BATCH, 3, 3, 6, 4).permute(0, 4, 1, 2, 3)  # channels-last 3-D
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(forward(call, build(call), [x]), x)
    # contiguous and channels-last 3-D at once (fuzz seed 10,001,538)
    both = torch.randn(BATCH, 11).as_strided((BATCH, 1, 1, 11, 1), (11, 1, 11, 1, 1))
    assert both.is_contiguous() and both.is_contiguous(memory_format=torch.channels_last_3d)
    call = layer.torch([TensorType((1, 1, 11, 1))])
    assert torch.equal(forward(call, build(call), [both]), both)

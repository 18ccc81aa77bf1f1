"""Window attention's parts (Swin) against formulas written out here: windows cut from a
rolled map and put back, the relative position bias looked up by offset, the mask of
shifted windows, and SDPA attending within windows as it attends one sequence."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_layers_oracle import build, forward, make

from dlspec.layers import LayerError, TensorType

H, W, C = 6, 4, 3


def _module(kind: str, args: dict[str, Any], shape: tuple[int, ...]) -> Any:
    """The kind's generated module, called as generated code calls it."""
    call = make(kind, args).torch([TensorType(shape)])
    module = build(call)
    return lambda x: forward(call, module, [x]), module


@pytest.mark.parametrize("shift", [0, 1])
def test_windows_are_cut_from_the_rolled_map_and_put_back(shift: int) -> None:
    w = 2
    x = torch.randn(2, H, W, C)
    windows = _module("WindowPartition", {"window": w, "shift": shift}, (H, W, C))[0](x)
    for i in range(H // w):
        for j in range(W // w):
            for a in range(w):
                for b in range(w):  # position (a, b) of window (i, j): the map rolled by -shift
                    y, z = (i * w + a + shift) % H, (j * w + b + shift) % W
                    assert torch.equal(windows[:, i, j, a * w + b], x[:, y, z])
    merge, _ = _module("WindowMerge", {"window": w, "shift": shift}, (H // w, W // w, w * w, C))
    assert torch.equal(merge(windows), x)


def test_relative_position_bias_is_looked_up_by_offset() -> None:
    w, heads = 3, 2
    bias, module = _module("RelativePositionBias", {"window": w, "num_heads": heads}, (4, 4, 1))
    weights = module.relative_position_bias_table
    with torch.no_grad():
        out = bias(torch.zeros(2, 4, 4, 1))
    assert out.shape == (2, heads, w * w, w * w)
    for p in range(w * w):
        for q in range(w * w):
            dy, dx = p // w - q // w, p % w - q % w
            row = (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
            assert torch.equal(out[1, :, p, q], weights[row])


def test_shifted_window_mask_keeps_parts_of_the_map_apart() -> None:
    """-100 between two positions of a window that come from different parts of the rolled
    map: the last ``w`` rows and columns are cut at ``shift`` (Swin's regions)."""
    w, s = 2, 1
    mask, _ = _module("ShiftedWindowMask", {"window": w, "shift": s}, (H, W, C))
    out = mask(torch.zeros(3, H, W, C))
    assert out.shape == (3, H // w, W // w, 1, w * w, w * w)

    def part(y: int, size: int) -> int:
        return 0 if y < size - w else 1 if y < size - s else 2

    for i in range(H // w):
        for j in range(W // w):
            cells = [(i * w + a, j * w + b) for a in range(w) for b in range(w)]
            for p, (y1, x1) in enumerate(cells):
                for q, (y2, x2) in enumerate(cells):
                    apart = (part(y1, H), part(x1, W)) != (part(y2, H), part(x2, W))
                    assert out[0, i, j, 0, p, q] == (-100.0 if apart else 0.0)


def test_sdpa_attends_within_each_window_as_over_one_sequence() -> None:
    torch.manual_seed(0)
    heads, windows, n, width = 2, (2, 3), 4, 8
    shape = (*windows, n, width)
    bias_shape, mask_shape = (heads, n, n), (*windows, 1, n, n)
    types = [TensorType(shape)] * 3 + [TensorType(bias_shape), TensorType(mask_shape)]
    sdpa = make("SDPA", {"num_heads": heads})
    call = sdpa.torch(types)
    module = build(call)
    q, k, v = (torch.randn(2, *shape) for _ in range(3))
    bias, mask = torch.randn(2, *bias_shape), torch.randn(2, *mask_shape)
    with torch.no_grad():
        got = forward(call, module, [q, k, v, bias, mask])
        one = sdpa.torch([TensorType((n, width))] * 3 + [TensorType(bias_shape)])
        alone = build(one)
        for i in range(windows[0]):
            for j in range(windows[1]):
                window = [x[:, i, j] for x in (q, k, v)] + [bias + mask[:, i, j]]
                expected = forward(one, alone, window)
                torch.testing.assert_close(got[:, i, j], expected)


@pytest.mark.parametrize(
    ("kind", "args", "shapes", "code", "text"),
    [
        ("WindowPartition", {"window": 4}, [(6, 8, 3)], "E401", "6 % 4 = 2"),
        ("WindowPartition", {"window": 2, "shift": 2}, [(4, 4, 3)], "E204", "smaller than"),
        ("WindowMerge", {"window": 2}, [(2, 2, 9, 3)], "E401", "2 x 2 = 4 positions"),
        ("WindowMerge", {"window": 2}, [(2, 2, 4, 3), (6, 4, 3)], "E401", "not one like"),
        ("ShiftedWindowMask", {"window": 3, "shift": 1}, [(6, 4, 3)], "E401", "4 % 3 = 1"),
        ("SDPA", {"num_heads": 2}, [(2, 3, 4, 8)] * 3 + [(3, 3, 1, 4, 4)], "E401", "window"),
        ("SDPA", {"num_heads": 2}, [(2, 3, 4, 8), (3, 2, 4, 8), (3, 2, 4, 8)], "E401", "leading"),
    ],
)
def test_windows_that_do_not_fit_are_refused(
    kind: str, args: dict[str, int], shapes: list[tuple[int, ...]], code: str, text: str
) -> None:
    with pytest.raises(LayerError) as err:
        make(kind, args).infer([TensorType(shape) for shape in shapes])
    assert err.value.code == code
    assert text in " ".join([err.value.message, *err.value.notes])

"""Where tensors lie in memory (dlspec.layers.layout) against torch itself: random views of
random tensors, their reshapes, and what element-wise kernels and dense copies make of them
have torch's strides."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlspec.layers import layout
from dlspec.layers.layout import Layout


def of(t: torch.Tensor) -> Layout:
    return Layout(tuple(t.shape), tuple(t.stride()))


@st.composite
def views(draw: st.DrawFn) -> tuple[torch.Tensor, Layout]:
    """A tensor of 2 to 4 small dimensions seen through a few permutes, slices, selects and
    expands, with the layout dlspec computes for it step by step."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    t = torch.empty(sizes)
    x = layout.contiguous(sizes)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["permute", "slice", "select", "expand"]))
        dim = draw(st.integers(0, t.dim() - 1))
        if op == "permute":
            order = draw(st.permutations(range(t.dim())))
            t, x = t.permute(*order), layout.permute(x, order)
        elif op == "slice" and t.shape[dim] > 1:
            start = draw(st.integers(0, t.shape[dim] - 1))
            step = draw(st.integers(1, 2))
            t = t.narrow(dim, start, t.shape[dim] - start)[
                (slice(None),) * dim + (slice(None, None, step),)
            ]
            x = layout.slice_of(x, dim, t.shape[dim], step)
        elif op == "select" and t.dim() > 2:
            t, x = t.select(dim, 0), layout.select(x, dim)
        elif op == "expand" and t.shape[dim] == 1:
            sizes = list(t.shape)
            sizes[dim] = 3
            t = t.expand(*sizes)
            x = Layout(tuple(sizes), tuple(0 if i == dim else s for i, s in enumerate(x.strides)))
    assert of(t) == x
    return t, x


@settings(max_examples=150, deadline=None)
@given(views(), st.data())
def test_reshapes_view_where_torch_views(
    view: tuple[torch.Tensor, Layout], data: st.DataObject
) -> None:
    t, x = view
    start = data.draw(st.integers(0, t.dim() - 1))
    end = data.draw(st.integers(start, t.dim() - 1))
    sizes = (*t.shape[:start], -1, *t.shape[end + 1 :])
    flat = tuple(t.flatten(start, end).shape)
    try:
        expected: tuple[int, ...] | None = t.view(*sizes).stride()
    except RuntimeError:
        expected = None
    assert layout.view_strides(x, flat) == expected
    rows = t.dim() >= 2 and layout.as_rows(x)
    try:
        t.view(-1, t.shape[-1])
        assert rows
    except RuntimeError:
        assert not rows


def _group_norm_keeps(t: torch.Tensor) -> int:
    """The storage of the input GroupNorm keeps for backward (a dense copy, or ``t``'s)."""
    kept = []
    t = t.detach().requires_grad_()

    def pack(saved: torch.Tensor) -> torch.Tensor:
        if saved.shape == t.shape:
            kept.append(saved.untyped_storage()._cdata)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        torch.nn.functional.group_norm(t, 1)
    return kept[0]


@settings(max_examples=150, deadline=None)
@given(views(), views())
def test_elementwise_outputs_lie_as_torch_lays_them(
    a: tuple[torch.Tensor, Layout], b: tuple[torch.Tensor, Layout]
) -> None:
    (t, x), (u, y) = a, b
    assert of(torch.relu(t)) == layout.elementwise([x], x.sizes)
    if t.numel() > 1:  # GroupNorm needs two values
        assert layout.is_dense(x) == (_group_norm_keeps(t) == t.untyped_storage()._cdata)
    assert of(torch.empty_like(t)) == layout.empty_like(x)
    if t.shape == u.shape:
        assert of(t + u) == layout.elementwise([x, y], x.sizes)


@settings(max_examples=100, deadline=None)
@given(views(), st.data())
def test_sums_keeping_dimensions_lie_as_torch_lays_them(
    view: tuple[torch.Tensor, Layout], data: st.DataObject
) -> None:
    """Einsum sums out a subscript one operand alone has so: contiguous, whatever order the
    summed tensor lies in (fuzz seed 4,001,967 had it in that order)."""
    t, _ = view
    dims = data.draw(st.lists(st.integers(0, t.dim() - 1), min_size=1, unique=True))
    out = t.sum(dims, keepdim=True)
    assert of(out) == layout.reduced(out.shape)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (0, 2, 3, 1), (0, 3, 1, 2), (0, 2, 1, 3)])
def test_kernels_keep_a_channels_last_format(order: tuple[int, ...]) -> None:
    t = torch.empty(2, 4, 5, 3).permute(*order)
    out = torch.nn.functional.max_pool2d(t, 2)
    assert of(out) == layout.like(of(t), tuple(out.shape))


@pytest.mark.parametrize(
    "sizes", [(2, 2, 3, 1), (2, 3, 1, 2), (3, 2, 2, 2), (2, 2, 3, 1, 2), (2, 3, 2, 2, 2)]
)
def test_batch_norm_outputs_lie_as_torch_lays_them(sizes: tuple[int, ...]) -> None:
    """In the format its input is contiguous in, else the one its strides suggest, over
    every order of the dimensions: a size-1 W strided largest is channels-last contiguous,
    not strided so (fuzz seed 5,002,232); 5-D inputs in channels-last 3-D likewise, which
    3-D max pooling keeps as its strides suggest."""
    rank = len(sizes)
    for order in itertools.permutations(range(rank)):
        t = torch.empty([sizes[d] for d in order]).permute(*(order.index(d) for d in range(rank)))
        out = torch.nn.functional.batch_norm(t, None, None, training=True)
        assert of(out) == layout.like_dense(of(t), sizes), order
        if rank == 5:
            assert of(torch.nn.functional.max_pool3d(t, 1)) == layout.like(of(t), sizes), order

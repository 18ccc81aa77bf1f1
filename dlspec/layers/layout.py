"""Where a tensor's elements lie in its storage, by torch's rules: sizes and strides, batch
first, at the spec's bindings (and a stand-in batch of 2: torch's rules set a batch of 1
apart, any larger one alike).

The activation memory follows the layouts: a view shares its input's storage, and torch
copies what a reshape cannot view (``computeStride``), what a kernel reads as a matrix of
rows (a Linear over a sliced or transposed sequence) or dense (GroupNorm), while
element-wise kernels lay their output out in their inputs' order (``TensorIterator``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

from dlspec.structs import Struct, replace

BATCH = 2  # the stand-in batch size


class Layout(Struct):
    """A tensor's sizes and strides (in elements), batch first. ``copied``: a view kind's
    output that torch had to copy into a storage of its own."""

    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    copied: bool = False


def contiguous(sizes: Sequence[int]) -> Layout:
    """Row-major: the last dimension varies fastest."""
    return _contiguous(tuple(sizes))


@cache
def _contiguous(sizes: tuple[int, ...]) -> Layout:
    strides = []
    step = 1
    for size in reversed(sizes):
        strides.append(step)
        step *= max(size, 1)
    return Layout(tuple(sizes), tuple(reversed(strides)))


# torch's channels-last formats, by rank: the order its ``is_channels_last_strides_{2,3}d``
# walk the dimensions in, fastest first
CHANNELS_LAST = {4: (1, 3, 2, 0), 5: (1, 4, 3, 2, 0)}


def channels_last(sizes: Sequence[int]) -> Layout:
    """A 4-D tensor ``(N, C, H, W)`` laid out as ``(N, H, W, C)``, or a 5-D one ``(N, C, D,
    H, W)`` as ``(N, D, H, W, C)`` (channels-last 3-D)."""
    n, c, *spatial = sizes
    rank = len(sizes)
    return permute(contiguous((n, *spatial, c)), (0, rank - 1, *range(1, rank - 1)))


def is_contiguous(x: Layout) -> bool:
    """torch's ``is_contiguous()``: size-1 dimensions' strides do not matter."""
    return _laid_as(x, contiguous(x.sizes))


def _strides_like_channels_last(x: Layout) -> bool:
    """torch's ``is_channels_last_strides_2d`` for a 4-D tensor, ``_3d`` for a 5-D one
    (ambiguous cases count as contiguous)."""
    if len(x.sizes) not in CHANNELS_LAST or x.strides[1] == 0:
        return False
    low = 0
    for d in CHANNELS_LAST[len(x.sizes)]:
        if x.sizes[d] == 0 or x.strides[d] < low:
            return False
        if d == 0 and low == x.strides[1]:
            return False
        low = x.strides[d] * (x.sizes[d] if x.sizes[d] > 1 else 1)
    return True


def like(x: Layout, sizes: Sequence[int]) -> Layout:
    """A new tensor of ``sizes`` in ``x``'s ``suggest_memory_format()``: channels-last (3-D)
    after a 4-D (5-D) input whose strides are ordered so, else contiguous (what
    convolutions, pools, pads and norms return)."""
    return channels_last(sizes) if _strides_like_channels_last(x) else contiguous(sizes)


def like_dense(x: Layout, sizes: Sequence[int]) -> Layout:
    """A new tensor of ``sizes`` in the memory format ``x`` is contiguous in, if any (the
    size-1 dimensions' strides do not matter), else as :func:`like` (batch norm's output,
    torch's ``suggest_memory_format_contig``). A 4-D input can be channels-last contiguous
    yet not strided like channels-last (``(N, C, H, 1)`` with ``W``'s stride largest)."""
    if is_contiguous(x):
        return contiguous(sizes)
    if _channels_last_contiguous(x):
        return channels_last(sizes)
    return like(x, sizes)


def suggested(x: Layout) -> Layout:
    """``x`` laid out densely in its suggested memory format."""
    return like(x, x.sizes)


def _laid_as(x: Layout, dense: Layout) -> bool:
    """``x`` has the strides of ``dense`` (size-1 dimensions' strides do not matter)."""
    return x.strides == dense.strides or all(
        size == 1 or a == b for size, a, b in zip(x.sizes, x.strides, dense.strides, strict=True)
    )


def is_dense(x: Layout) -> bool:
    """Contiguous in its suggested memory format (what ``x.contiguous(format)`` keeps)."""
    return _laid_as(x, suggested(x))


def _channels_last_contiguous(x: Layout) -> bool:
    """``x.is_contiguous(memory_format=torch.channels_last)``, or ``channels_last_3d`` for a
    5-D tensor."""
    return len(x.sizes) in CHANNELS_LAST and _laid_as(x, channels_last(x.sizes))


def _non_overlapping_and_dense(x: Layout) -> bool:
    """torch's ``is_non_overlapping_and_dense``: some order of the dimensions is contiguous."""
    order = sorted((d for d in range(len(x.sizes)) if x.sizes[d] >= 2), key=lambda d: x.strides[d])
    expected = 1
    for d in order:
        if x.strides[d] != expected:
            return False
        expected *= x.sizes[d]
    return True


def empty_like(x: Layout) -> Layout:
    """``torch.empty_like(x)``: the same strides where ``x`` is dense, else dense strides in
    the order of ``x``'s (torch's ``infer_dense_strides``)."""
    if _non_overlapping_and_dense(x):
        return replace(x, copied=False)
    return _ordered([x], x.sizes)


def _dense(sizes: Sequence[int], order: Sequence[int]) -> Layout:
    """``sizes`` laid out densely, the dimensions in ``order`` from the fastest."""
    strides = [0] * len(sizes)
    step = 1
    for d in order:
        strides[d] = step
        step *= max(sizes[d], 1)
    return Layout(tuple(sizes), tuple(strides))


def reduced(sizes: Sequence[int]) -> Layout:
    """The output of a reduction that keeps the reduced dimensions (``sum(dims,
    keepdim=True)``) with ``sizes``: contiguous, whatever the order of its input's
    dimensions (torch's ``resize_reduction`` gives the output no strides; it does not follow
    the input as an element-wise kernel's output does)."""
    return contiguous(sizes)


def unsqueezed(x: Layout) -> Layout:
    """``x.unsqueeze(x.dim())``: a size-1 dimension at the end (stride 1, as torch sets it)."""
    return Layout((*x.sizes, 1), (*x.strides, 1), x.copied)


def permute(x: Layout, order: Sequence[int]) -> Layout:
    return Layout(tuple(x.sizes[i] for i in order), tuple(x.strides[i] for i in order), x.copied)


def select(x: Layout, dim: int) -> Layout:
    """``x.select(dim, i)``: the dimension disappears, the others keep their strides."""
    sizes, strides = x.sizes[:dim] + x.sizes[dim + 1 :], x.strides[:dim] + x.strides[dim + 1 :]
    return Layout(sizes, strides, x.copied)


def slice_of(x: Layout, dim: int, size: int, step: int) -> Layout:
    """``size`` positions of every ``step``-th along ``dim``."""
    sizes = (*x.sizes[:dim], size, *x.sizes[dim + 1 :])
    strides = (*x.strides[:dim], x.strides[dim] * step, *x.strides[dim + 1 :])
    return Layout(sizes, strides, x.copied)


def view_strides(x: Layout, sizes: Sequence[int]) -> tuple[int, ...] | None:
    """torch's ``computeStride``: the strides of ``x`` viewed with ``sizes``, or None where
    no view can (the elements of a merged group of dimensions are not evenly spaced)."""
    if math.prod(x.sizes) == 0:
        return contiguous(sizes).strides
    strides = [0] * len(sizes)
    view_d = len(sizes) - 1
    base = x.strides[-1]
    tensor_numel = view_numel = 1
    for d in range(len(x.sizes) - 1, -1, -1):
        tensor_numel *= x.sizes[d]
        if d == 0 or (x.sizes[d - 1] != 1 and x.strides[d - 1] != tensor_numel * base):
            while view_d >= 0 and (view_numel < tensor_numel or sizes[view_d] == 1):
                strides[view_d] = view_numel * base
                view_numel *= sizes[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                base, tensor_numel, view_numel = x.strides[d - 1], 1, 1
    return tuple(strides) if view_d == -1 else None


def reshape(x: Layout, sizes: Sequence[int]) -> Layout:
    """``x.reshape(sizes)``: a view where torch can make one, else a contiguous copy."""
    strides = view_strides(x, sizes)
    if strides is None:
        return replace(contiguous(sizes), copied=True)
    return Layout(tuple(sizes), strides, x.copied)


def time_major(sizes: Sequence[int]) -> Layout:
    """A batch-first sequence ``(B, T, ...)`` that torch computed time-major and returns as
    a transposed view (batch-first attention and recurrent layers)."""
    return permute(contiguous((sizes[1], sizes[0], *sizes[2:])), (1, 0, *range(2, len(sizes))))


def to_time_major(x: Layout) -> Layout | None:
    """A sequence ``(B, T, ...)`` transposed to ``(T, B, ...)``; None for other tensors."""
    rank = len(x.sizes)
    return permute(x, (1, 0, *range(2, rank))) if rank >= 3 else None


def as_rows(x: Layout) -> bool:
    """Whether ``x.reshape(-1, x.shape[-1])`` is a view (a matrix product reads a Linear's
    input so; a copy otherwise)."""
    return view_strides(x, (math.prod(x.sizes[:-1]), x.sizes[-1])) is not None


def broadcast(x: Layout, sizes: Sequence[int]) -> Layout:
    """``x`` (of the same rank) stretched along its size-1 dimensions to ``sizes``: stride 0
    there, as ``TensorIterator`` reads it."""
    strides = tuple(
        0 if have == 1 and want != 1 else stride
        for have, want, stride in zip(x.sizes, sizes, x.strides, strict=True)
    )
    return Layout(tuple(sizes), strides)


def elementwise(inputs: Sequence[Layout], sizes: Sequence[int]) -> Layout:
    """The output of an element-wise kernel (``TensorIterator``) of ``inputs`` (each of the
    output's rank): their strides when all agree (contiguous, channels-last or the same
    dense order), else the dimensions ordered by the first input whose strides decide,
    and laid out densely in that order."""
    if all(x.sizes == tuple(sizes) for x in inputs):
        if all(is_contiguous(x) for x in inputs):
            return contiguous(sizes)
        if len(sizes) == 4 and all(_channels_last_contiguous(x) for x in inputs):
            return channels_last(sizes)  # TensorIterator's fast path knows 2-D images only
        same = len({x.strides for x in inputs}) == 1
        if same and all(_non_overlapping_and_dense(x) for x in inputs):
            return Layout(tuple(sizes), inputs[0].strides)
    return _ordered([broadcast(x, sizes) for x in inputs], sizes)


def _ordered(operands: Sequence[Layout], sizes: Sequence[int]) -> Layout:
    """``sizes`` laid out densely with the dimensions ordered by their strides in the first
    operand that tells two apart (a stride of 0 tells nothing): ``TensorIterator``'s
    insertion sort, which ``infer_dense_strides`` shares."""

    def after(d0: int, d1: int) -> int:
        """1: ``d0`` varies slower than ``d1``; -1 faster; 0 undecided."""
        for x in operands:
            s0, s1 = x.strides[d0], x.strides[d1]
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return -1 if s0 < s1 else 1
            if sizes[d0] > sizes[d1]:
                return 1
        return 0

    perm = list(range(len(sizes)))[::-1]  # fastest first
    for i in range(1, len(perm)):
        d1 = i
        for d0 in range(i - 1, -1, -1):
            comparison = after(perm[d0], perm[d1])
            if comparison > 0:
                perm[d0], perm[d1] = perm[d1], perm[d0]
                d1 = d0
            elif comparison < 0:
                break
    return _dense(sizes, perm)

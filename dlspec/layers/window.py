"""Window attention's parts (Swin): maps cut into windows and back, the relative position
bias of a window, the mask of shifted windows; and T5's bucketed relative position bias.

Windows are not folded into the batch: a map ``[H, W, C]`` becomes ``[H/w, W/w, w*w, C]``
per sample, ``H/w x W/w`` windows of ``w*w`` positions, and ``SDPA`` attends within each
window (the dimensions before its last two are attended apart, as torch's attention treats
batch dimensions). So every figure stays per sample, as for any other layer: the windows of a
sample are part of it, and a batch of B images is still B samples, whatever torch's kernels
fold together.

``shift`` is Swin's cyclic shift: the map is rolled up and left by ``shift`` before it is cut
(``WindowPartition``) and rolled back after (``WindowMerge``), and ``ShiftedWindowMask``
keeps positions that the roll brought together from attending to each other. (torchvision
does not shift a map no larger than the window: a spec says so with an ``if``.)
"""

from typing import Annotated, Any

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    View,
    concrete,
    expect_float,
    expect_rank,
    register,
)
from dlspec.layers.layout import Layout, contiguous, permute, reshape
from dlspec.layers.symbolic import Dim
from dlspec.validation import Field

NonNegative = Annotated[int, Field(ge=0)]


def _tiles(size: Dim, window: int, axis: str, kind: str) -> int:
    """How many windows of ``window`` fit along ``axis`` of ``size`` positions: they must
    tile it (torchvision pads a map that they do not; pad it first)."""
    fixed = concrete(size, f"{kind}'s {axis}")
    if fixed % window:
        raise LayerError(
            "E401",
            f"windows of {window} do not tile the {axis} {fixed}",
            [f"{fixed} % {window} = {fixed % window}"],
            arg="window",
        )
    return fixed // window


def _check_shift(window: int, shift: int) -> None:
    if shift >= window:
        raise LayerError(
            "E204", f"shift={shift} must be smaller than the window ({window})", arg="shift"
        )


class _Windows(View):
    """Shared arguments of WindowPartition and WindowMerge: no module, no parameters, MACs 0,
    nothing kept for backward (a roll and a copy need no tensor for their gradient)."""

    family = "reshape"
    positional = ("window", "shift")

    window: Pos
    shift: NonNegative = 0

    def label(self) -> str:
        shift = f", shift={self.shift}" if self.shift else ""
        return f"{self.kind}({self.window}{shift})"


_PARTITION = '''class WindowPartition(nn.Module):
    """Cuts a (B, H, W, C) map, rolled up and left by `shift`, into windows of w x w:
    (B, H/w, W/w, w*w, C)."""

    def __init__(self, window: int, shift: int = 0) -> None:
        super().__init__()
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift:
            x = x.roll((-self.shift, -self.shift), dims=(1, 2))
        w = self.window
        # sizes read from the tensor (a traced export keeps them dynamic, unflatten's fixed)
        x = x.reshape(x.shape[0], -1, w, *x.shape[2:])  # (B, H/w, w, W, C)
        x = x.reshape(*x.shape[:3], -1, w, x.shape[-1])  # (B, H/w, w, W/w, w, C)
        return x.transpose(2, 3).flatten(3, 4)  # (B, H/w, W/w, w*w, C)
'''


@register
class WindowPartition(_Windows):
    """Cuts a channels-last map ``[H, W, C]`` into windows of ``window x window``:
    ``[H/w, W/w, w*w, C]`` (torchvision's ``x.view(B, H/w, w, W/w, w, C).permute(0, 1, 3, 2,
    4, 5)``, windows kept per sample), after rolling the map by ``-shift`` along H and W
    (Swin's shifted windows). The windows must tile the map. MACs 0."""

    kind = "WindowPartition"

    def _windows(self, x: TensorType) -> tuple[int, int]:
        """How many windows along H and along W."""
        expect_rank(x, (3,), "[H, W, C] (channels last)", self.kind)
        _check_shift(self.window, self.shift)
        rows = _tiles(x.shape[0], self.window, "height", self.kind)
        return rows, _tiles(x.shape[1], self.window, "width", self.kind)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        rows, columns = self._windows(x)
        window = TensorType((rows, columns, self.window * self.window, x.shape[2]), x.dtype)
        return Inferred(window)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        self._windows(inputs[0])
        return TorchCall("WindowPartition", _arguments(self), helper=_PARTITION)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """A roll makes a contiguous tensor; cutting it into windows copies it, unless a
        window is a whole row of the map."""
        batch, height, width, channels = inputs[0].sizes
        w = self.window
        x = contiguous(inputs[0].sizes) if self.shift else inputs[0]
        cut = permute(
            reshape(x, (batch, height // w, w, width // w, w, channels)), (0, 1, 3, 2, 4, 5)
        )
        out = reshape(cut, output.sizes)
        return Layout(out.sizes, out.strides, out.copied or bool(self.shift))


_MERGE = '''class WindowMerge(nn.Module):
    """Puts (B, H/w, W/w, w*w, C) windows back together into the (B, H, W, C) map, rolled
    down and right by `shift`."""

    def __init__(self, window: int, shift: int = 0) -> None:
        super().__init__()
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.window  # sizes read from x, as in WindowPartition
        x = x.reshape(*x.shape[:3], w, w, -1).transpose(2, 3)  # (B, H/w, w, W/w, w, C)
        x = x.flatten(1, 2).flatten(2, 3)  # (B, H, W, C)
        return x.roll((self.shift, self.shift), dims=(1, 2)) if self.shift else x
'''


@register
class WindowMerge(_Windows):
    """Puts windows ``[H/w, W/w, w*w, C]`` back together into the map ``[H, W, C]`` and rolls
    it by ``+shift`` along H and W (undoing ``WindowPartition(w, shift)``; give both the same
    arguments). A second input, the map the windows were cut from
    (``WindowMerge(7) <- windows, x``), only gives the map's size ``H, W`` (in generated code,
    the block's own sizes rather than a product of window counts). MACs 0."""

    kind = "WindowMerge"
    arity = (1, 2)

    def _sizes(self, inputs: list[TensorType]) -> tuple[Dim, Dim]:
        """The map's height and width."""
        x = inputs[0]
        expect_rank(x, (4,), "[H/w, W/w, w*w, C] (windows)", self.kind)
        _check_shift(self.window, self.shift)
        if x.shape[2] != self.window * self.window:
            raise LayerError(
                "E401",
                f"{self.kind}({self.window}) expects windows of {self.window} x {self.window} = "
                f"{self.window * self.window} positions, got {x}",
                arg="window",
            )
        rows = concrete(x.shape[0], f"{self.kind}'s windows")
        columns = concrete(x.shape[1], f"{self.kind}'s windows")
        if len(inputs) == 1:
            return rows * self.window, columns * self.window
        like = inputs[1]
        if tuple(like.shape[:2]) != (rows * self.window, columns * self.window):
            raise LayerError(
                "E401",
                f"{self.kind}: windows {x} of {self.window} x {self.window} make a map of "
                f"[{rows * self.window}, {columns * self.window}, ...], not one like {like}",
            )
        return like.shape[0], like.shape[1]

    def infer(self, inputs: list[TensorType]) -> Inferred:
        height, width = self._sizes(inputs)
        x = inputs[0]
        return Inferred(TensorType((height, width, x.shape[3]), x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        self._sizes(inputs)
        return TorchCall("WindowMerge", _arguments(self), forward="{module}({x})", helper=_MERGE)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """Putting windows back together copies them (unless a window is a whole row of the
        map); a roll makes a contiguous tensor."""
        batch, rows, columns, _, channels = inputs[0].sizes
        w = self.window
        apart = reshape(inputs[0], (batch, rows, columns, w, w, channels))
        merged = reshape(permute(apart, (0, 1, 3, 2, 4, 5)), output.sizes)
        if self.shift:
            return Layout(output.sizes, contiguous(output.sizes).strides, copied=True)
        return merged


def _arguments(windows: _Windows) -> tuple[int, ...]:
    """The helper module's arguments: the window, and the shift where there is one."""
    return (windows.window, windows.shift) if windows.given("shift", 0) else (windows.window,)


class _Constant(Layer):
    """A tensor the same for every sample, made from the layer's own state (its input gives
    only the batch size): one tensor for the whole batch, expanded over it."""

    family = "attention"

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # a lookup's gradient needs only its index, a buffer

    def output_batched(self) -> bool:
        return False

    def made(self, sizes: tuple[int, ...]) -> Layout:
        """How the one tensor of per-sample ``sizes`` lies before it is expanded over the
        batch: contiguous, unless the kind makes it as a view (a permute)."""
        return contiguous(sizes)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """The tensor :meth:`made`, expanded over the batch (stride 0): an element-wise
        kernel that reads it lays its own output out in the same order."""
        return Layout(output.sizes, (0, *self.made(output.sizes[1:]).strides))


_RELATIVE = '''class RelativePositionBias(nn.Module):
    """Swin's learned bias of each head for each pair of positions of a window, looked up by
    their offset: a ((2w-1)^2, heads) table, indexed by a buffer of the pairs' offsets."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2, num_heads) * 0.02
        )
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)  # (2, w*w)
        offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        index = offsets[..., 0] * (2 * window - 1) + offsets[..., 1]  # (w*w, w*w)
        self.register_buffer("relative_position_index", index.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().expand(x.shape[0], -1, -1, -1)  # (B, h, N, N)
'''


@register
class RelativePositionBias(_Constant):
    """Swin's relative position bias: for ``num_heads`` heads, a learned bias for every pair of
    positions of a ``window x window`` window, looked up by their offset (dy, dx) in a table
    of ``(2*window - 1)^2`` rows -> ``[heads, w*w, w*w]``, which ``SDPA`` adds to its scores
    (``a = SDPA(heads) <- q, k, v, bias``). The input only gives the batch size. Layout
    ``relative_position_bias_table ((2w-1)^2, heads)`` and the persistent buffer
    ``relative_position_index (w^4,)`` (long), as torchvision's ``ShiftedWindowAttention`` (the
    table initialised from N(0, 0.02^2)).
    MACs 0 (a lookup)."""

    kind = "RelativePositionBias"
    torchinfo_macs = "0, a lookup (torchinfo: the table's elements per sample)"
    positional = ("window", "num_heads")

    window: Pos
    num_heads: Pos

    def infer(self, inputs: list[TensorType]) -> Inferred:
        n = self.window * self.window
        table = ((2 * self.window - 1) ** 2, self.num_heads)
        return Inferred(
            TensorType((self.num_heads, n, n)),
            weights={"relative_position_bias_table": table},
            buffers={"relative_position_index": (n * n,)},
        )

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("RelativePositionBias", (self.window, self.num_heads), helper=_RELATIVE)

    def label(self) -> str:
        return f"RelativePositionBias({self.window}, heads={self.num_heads})"


_BUCKETED = '''class BucketedPositionBias(nn.Module):
    """T5's learned bias of each head for a query and a key, looked up by the bucket of
    their offset: exact for small offsets, logarithmic up to `max_distance`."""

    def __init__(
        self, num_buckets: int, num_heads: int, max_distance: int, bidirectional: bool = True
    ) -> None:
        super().__init__()
        self.num_buckets, self.num_heads = num_buckets, num_heads
        self.max_distance, self.bidirectional = max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
        # log(max_distance / exact), in double precision as Python's math.log computes it
        # (on the CPU, whatever device the module is built on)
        span = torch.tensor(max_distance / exact, dtype=torch.float64, device="cpu")
        self.log_span = float(span.log())

    def buckets(self, steps: int, device: torch.device) -> torch.Tensor:
        position = torch.arange(steps, device=device)
        offset = position[None, :] - position[:, None]  # key - query: (T, T)
        count, bucket = self.num_buckets, torch.zeros_like(offset)
        if self.bidirectional:  # later keys in the upper half of the buckets
            count //= 2
            bucket = bucket + (offset > 0).long() * count
            offset = offset.abs()
        else:
            offset = (-offset).clamp(min=0)
        exact = count // 2
        scaled = torch.log(offset.float() / exact + 1e-12) / self.log_span
        far = (exact + (scaled * (count - exact)).long()).clamp(max=count - 1)
        return bucket + torch.where(offset < exact, offset, far)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.relative_attention_bias(self.buckets(x.shape[1], x.device))  # (T, T, h)
        return bias.permute(2, 0, 1).expand(x.shape[0], -1, -1, -1)  # (B, h, T, T)
'''


@register
class BucketedPositionBias(_Constant):
    """T5's relative position bias: for ``num_heads`` heads, a learned bias for a query at
    step i and a key at step j, looked up by the bucket of ``j - i`` (``num_buckets``
    buckets, half for later keys when ``bidirectional``; offsets below half of a half are
    exact, larger ones share logarithmic buckets up to ``max_distance``) -> ``[heads, T, T]``
    for a sequence ``[T, d]``, which ``SDPA`` adds to its scores. Layout
    ``relative_attention_bias.weight (num_buckets, heads)`` (an ``nn.Embedding``, as Hugging
    Face's T5Attention holds it). MACs 0 (a lookup)."""

    kind = "BucketedPositionBias"
    torchinfo_macs = "0, a lookup (torchinfo: the table's elements per sample)"
    positional = ("num_buckets", "num_heads")

    num_buckets: Annotated[int, Field(ge=4)] = 32
    num_heads: Pos
    max_distance: Annotated[int, Field(ge=4)] = 128
    bidirectional: bool = True

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """The arguments of the module holding the table: this kind's generated module, or
        Hugging Face's ``T5Attention`` (whose decoder's buckets are one-directional)."""
        if hasattr(module, "relative_attention_max_distance"):
            return {
                "num_buckets": module.relative_attention_num_buckets,
                "num_heads": module.n_heads,
                "max_distance": module.relative_attention_max_distance,
                "bidirectional": not module.is_decoder,
            }
        return {name: getattr(module, name) for name in cls.model_fields}

    def _steps(self, x: TensorType) -> Dim:
        expect_rank(x, (2,), "[T, d] (a batch-first sequence)", self.kind)
        exact = (self.num_buckets // 2 if self.bidirectional else self.num_buckets) // 2
        if self.max_distance <= exact:
            raise LayerError(
                "E204",
                f"max_distance={self.max_distance} must exceed the {exact} offsets the buckets "
                "hold exactly",
                arg="max_distance",
            )
        return x.shape[0]

    def infer(self, inputs: list[TensorType]) -> Inferred:
        steps = self._steps(inputs[0])
        weights: dict[str, Shape] = {
            "relative_attention_bias.weight": (self.num_buckets, self.num_heads)
        }
        return Inferred(TensorType((self.num_heads, steps, steps)), weights=weights)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        self._steps(inputs[0])
        args = (self.num_buckets, self.num_heads, self.max_distance)
        kwargs = self.keywords(include={"bidirectional"})
        return TorchCall("BucketedPositionBias", args, kwargs, helper=_BUCKETED)

    def made(self, sizes: tuple[int, ...]) -> Layout:
        """The lookup gives ``(T, T, heads)``, permuted to ``(heads, T, T)``: the heads vary
        fastest."""
        heads, queries, keys = sizes
        return permute(contiguous((queries, keys, heads)), (2, 0, 1))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The embedding's backward keeps the buckets (T x T ids), one for the batch."""
        steps = inputs[0].shape[0]
        return [Saved("buckets", steps * steps, "long", batched=False)]

    def label(self) -> str:
        return f"BucketedPositionBias({self.num_buckets}, heads={self.num_heads})"


_SHIFTED = '''class ShiftedWindowMask(nn.Module):
    """Swin's mask of shifted windows: -100 between positions that the cyclic shift brought
    into one window from different parts of the map, 0 elsewhere."""

    def __init__(self, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        w, s, (height, width) = self.window, self.shift, x.shape[1:3]
        region = x.new_zeros(height, width)  # which part of the map each position is from
        parts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for i, (rows, columns) in enumerate((r, c) for r in parts for c in parts):
            region[rows, columns] = i
        region = region.view(height // w, w, width // w, w).transpose(1, 2).flatten(2)
        apart = region[..., None, :] - region[..., :, None]  # (H/w, W/w, N, N)
        mask = torch.zeros_like(apart).masked_fill(apart != 0, -100.0)[:, :, None]
        return mask.expand(x.shape[0], -1, -1, -1, -1, -1)  # (B, H/w, W/w, 1, N, N)
'''


@register
class ShiftedWindowMask(_Constant):
    """The mask of Swin's shifted windows for a channels-last map ``[H, W, C]`` cut into
    ``window x window`` windows after a roll by ``shift``: -100 between two positions of a
    window that came from different parts of the map, 0 elsewhere, as torchvision computes
    it -> ``[H/w, W/w, 1, w*w, w*w]`` (one mask for all heads), which ``SDPA`` adds to its
    scores. Made in the forward pass from the map's size; no parameters or buffers, MACs 0."""

    kind = "ShiftedWindowMask"
    positional = ("window", "shift")

    window: Pos
    shift: Pos

    def output_grad(self, grads: tuple[bool, ...]) -> bool:
        return False  # made from the map's size alone: no gradient reaches its input

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, (3,), "[H, W, C] (channels last)", self.kind)
        expect_float(x, self.kind)
        _check_shift(self.window, self.shift)
        rows = _tiles(x.shape[0], self.window, "height", self.kind)
        columns = _tiles(x.shape[1], self.window, "width", self.kind)
        n = self.window * self.window
        return Inferred(TensorType((rows, columns, 1, n, n)))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("ShiftedWindowMask", (self.window, self.shift), helper=_SHIFTED)

    def label(self) -> str:
        return f"ShiftedWindowMask({self.window}, shift={self.shift})"

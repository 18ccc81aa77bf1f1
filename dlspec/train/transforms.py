"""Batch transforms: the seed's Resize / Grayscale / RandomRotation / ColorJitter / Normalize,
applied to whole ``(N, C, H, W)`` float batches at once, on whatever device the batch is on.

Random transforms draw per-sample parameters from a ``torch.Generator``, so a seeded
generator reproduces the same batch. No torchvision needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlspec.train.data import DataError

__all__ = [
    "Augment",
    "color_jitter",
    "fit_to_input",
    "normalize",
    "random_rotation",
    "rotate",
    "to_grayscale",
]

# ITU-R 601-2 luma, as PIL and torchvision convert RGB to grayscale
_LUMA = (0.299, 0.587, 0.114)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB ``(N, 3, H, W)`` -> luminance ``(N, 1, H, W)`` (0.299 R + 0.587 G + 0.114 B)."""
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1:
        return x.repeat(1, channels, 1, 1)
    if have == 3 and channels == 1:
        return to_grayscale(x)
    raise DataError(
        f"cannot turn {have}-channel images into the model's {channels} channels "
        "(only grayscale -> any and RGB -> grayscale are converted)"
    )


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    downscaling = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(
        x, size=(height, width), mode="bilinear", align_corners=False, antialias=downscaling
    )


def fit_to_input(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Fit a batch to a model's per-sample input ``shape``.

    Images ``(N, C, H, W)`` into an image model ``(C', H', W')`` are resized (bilinear,
    antialiased when shrinking) and channel-adapted (grayscale repeated to C' channels, RGB
    to grayscale by luminance). Into a vector model ``(F,)`` they are flattened when
    ``C*H*W == F``. Tabular ``(N, F)`` data is reshaped to ``shape`` when the element counts
    agree. Anything else raises :class:`DataError` saying why.
    """
    target = tuple(int(s) for s in shape)
    if not target or any(s <= 0 for s in target):
        raise DataError(f"model input shape {_shape_text(target)} is not a valid sample shape")
    sample = tuple(x.shape[1:])
    if not x.is_floating_point():
        x = x.float()
    if sample == target:
        return x
    elements = math.prod(target)
    if x.ndim == 4 and len(target) == 3:
        channels, height, width = target
        if channels < x.shape[1]:  # reduce channels first: less to resize
            return _resize(_adapt_channels(x, channels), height, width)
        return _adapt_channels(_resize(x, height, width), channels)
    if x.ndim == 4 and len(target) == 1:
        if math.prod(sample) == elements:
            return x.reshape(x.shape[0], elements)
        raise DataError(
            f"images of shape {_shape_text(sample)} have {math.prod(sample):,} values, but the "
            f"model takes vectors of {elements:,}; use an image input "
            f"(C, H, W) in the spec or data with {elements:,} values per sample"
        )
    if x.ndim == 2:
        if len(target) == 1:
            raise DataError(
                f"the data has {sample[0]:,} features per sample, but the model takes {elements:,}"
            )
        if sample[0] == elements:
            return x.reshape(x.shape[0], *target)
        raise DataError(
            f"tabular data with {sample[0]:,} features per sample cannot feed a model with "
            f"input {_shape_text(target)} ({elements:,} values); store the data as images "
            "(N, C, H, W) or change the model's input"
        )
    raise DataError(
        f"cannot fit samples of shape {_shape_text(sample)} to the model input "
        f"{_shape_text(target)}"
    )


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``n`` uniform draws in ``[low, high)`` from ``generator`` (on its own device), moved to
    ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    u = torch.rand(n, generator=generator, device=device)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _require_images(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4:
        raise DataError(
            f"{what} needs image batches (N, C, H, W); got shape {_shape_text(x.shape)}"
        )


def rotate(x: torch.Tensor, degrees: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Rotate image ``i`` of the batch by ``degrees[i]`` counter-clockwise about its centre,
    zeros filling the corners, in one ``affine_grid`` / ``grid_sample`` call. ``mode`` is
    ``"bilinear"`` or ``"nearest"``."""
    _require_images(x, "rotation")
    n, _, height, width = x.shape
    angle = degrees.to(device=x.device, dtype=x.dtype).reshape(n) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    # theta maps each output pixel to the input position it samples, in [-1, 1] coordinates
    # with y pointing down; the aspect factors keep the rotation rigid for non-square images.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (height / width), zero], dim=1),
            torch.stack([sin * (width / height), cos, zero], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_rotation(
    x: torch.Tensor,
    degrees: float,
    generator: torch.Generator | None = None,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """torchvision's RandomRotation(degrees) on a batch: each image turns by its own angle
    drawn uniformly from ``[-degrees, degrees]`` (see :func:`rotate`). torchvision samples
    with ``"nearest"`` by default; bilinear is the default here, as it is smoother."""
    _require_images(x, "random rotation")
    if degrees == 0:
        return x
    return rotate(x, _uniform(x.shape[0], -abs(degrees), abs(degrees), generator, x), mode=mode)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    gray = to_grayscale(x) if x.shape[1] == 3 else x
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def _factor_range(value: float | tuple[float, float], name: str) -> tuple[float, float]:
    if isinstance(value, tuple):
        low, high = float(value[0]), float(value[1])
    else:
        if value < 0:
            raise DataError(f"{name} jitter must be >= 0, got {value}")
        low, high = max(0.0, 1.0 - value), 1.0 + value
    if not 0 <= low <= high:
        raise DataError(f"{name} factor range must satisfy 0 <= min <= max, got ({low}, {high})")
    return low, high


def color_jitter(
    x: torch.Tensor,
    brightness: float | tuple[float, float] = 0.0,
    contrast: float | tuple[float, float] = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's ColorJitter(brightness, contrast) on a batch in ``[0, 1]``, per sample.

    Each image draws a brightness factor from ``[max(0, 1 - brightness), 1 + brightness]``
    (or from ``brightness`` itself when it is a ``(min, max)`` pair), which multiplies the
    pixels, and a contrast factor likewise, which blends the image with the mean of its
    grayscale version; the two are applied in a random order, each clamping to ``[0, 1]``.
    """
    _require_images(x, "color jitter")
    b_low, b_high = _factor_range(brightness, "brightness")
    c_low, c_high = _factor_range(contrast, "contrast")
    use_b, use_c = (b_low, b_high) != (1.0, 1.0), (c_low, c_high) != (1.0, 1.0)
    if not (use_b or use_c):
        return x
    n = x.shape[0]
    b = _uniform(n, b_low, b_high, generator, x)
    c = _uniform(n, c_low, c_high, generator, x)
    if not use_c:
        return _adjust_brightness(x, b)
    if not use_b:
        return _adjust_contrast(x, c)
    brightness_first = (_uniform(n, 0, 1, generator, x) < 0.5).view(-1, 1, 1, 1)
    one = _adjust_contrast(_adjust_brightness(x, b), c)
    other = _adjust_brightness(_adjust_contrast(x, c), b)
    return torch.where(brightness_first, one, other)


def normalize(
    x: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]
) -> torch.Tensor:
    """``(x - mean) / std``, with one value for all channels or one per channel (dimension 1)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if bool((s == 0).any()):
        raise DataError(f"normalize: std must not be zero, got {std}")
    view = [1] * x.ndim
    if m.ndim == 1 or s.ndim == 1:
        count = max(m.numel(), s.numel())
        if x.ndim < 2 or x.shape[1] != count:
            raise DataError(
                f"normalize: {count} per-channel values for data of shape {_shape_text(x.shape)}"
            )
        view[1] = -1
    return (x - m.reshape(view if m.ndim else [])) / s.reshape(view if s.ndim else [])


@dataclass(frozen=True)
class Augment:
    """The data path from a loaded batch to model input, for training and for evaluation.

    ``batch = augment(x, generator)`` (training) fits ``x`` to ``input_shape`` (see
    :func:`fit_to_input`), rotates by up to ``rotation`` degrees, jitters brightness and
    contrast, then normalises with ``mean`` / ``std``; ``augment.eval(x)`` only fits and
    normalises. When the model takes vectors, images are augmented at their own size before
    being flattened. Fields left at zero / None are skipped.
    """

    input_shape: tuple[int, ...] | None = None
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None

    @classmethod
    def seed_mnist(cls, input_shape: Sequence[int] = (3, 48, 48)) -> Augment:
        """The worked training script's pipeline: resize and repeat to ``input_shape``,
        RandomRotation(10), ColorJitter(brightness 0.2, contrast 0.2), Normalize(0.1307,
        0.3081)."""
        return cls(tuple(input_shape), 10.0, 0.2, 0.2, 0.1307, 0.3081)

    @property
    def augments(self) -> bool:
        """Whether the training path differs from the evaluation path."""
        return bool(self.rotation or self.brightness or self.contrast)

    def _fit_images(self, x: torch.Tensor) -> torch.Tensor:
        """Resize images to the model's (H, W) but keep grayscale at one channel, so that
        augmentation runs on a third of the data (the result is the same: every transform here
        treats the three equal channels of a repeated gray image alike)."""
        shape = self.input_shape
        if shape is None or len(shape) != 3 or x.ndim != 4:
            return x if x.is_floating_point() else x.float()
        if x.shape[1] == 1:
            return fit_to_input(x, (1, shape[1], shape[2]))
        return fit_to_input(x, shape)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat channels, normalise, flatten: whatever of that applies, in that order."""
        shape = self.input_shape
        if shape is not None and len(shape) == 3:
            x = fit_to_input(x, shape)
        if self.mean is not None or self.std is not None:
            mean = 0.0 if self.mean is None else self.mean
            x = normalize(x, mean, 1.0 if self.std is None else self.std)
        if shape is not None:
            x = fit_to_input(x, shape)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training path: fit, augment (per-sample random draws from ``generator``),
        normalise."""
        x = self._fit_images(x)
        if self.augments:
            _require_images(x, "augmentation (rotation / brightness / contrast)")
        if self.rotation:
            x = random_rotation(x, self.rotation, generator)
        if self.brightness or self.contrast:
            x = color_jitter(x, self.brightness, self.contrast, generator)
        return self._finish(x)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation path: fit and normalise, no randomness."""
        return self._finish(self._fit_images(x))

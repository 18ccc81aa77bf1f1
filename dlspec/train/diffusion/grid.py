"""Images as a PNG grid, and as arrays in a .npz file."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from dlspec.files import write_atomic

__all__ = ["grid_png", "save_images"]

_CELL = 64  # the smallest side, in pixels, an image is enlarged to (8x8 digits: 8 times)
_GAP = 4


def grid_png(images: torch.Tensor, columns: int | None = None) -> bytes:
    """PNG bytes of ``images`` ``(N, C, H, W)`` in ``[0, 1]`` (C = 1 or 3) in a grid of
    ``columns`` (default: about square), each enlarged without smoothing, on grey."""
    from PIL import Image

    n, c, h, w = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    scale = max(1, _CELL // min(h, w))
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    cell_h, cell_w = h * scale + _GAP, w * scale + _GAP
    sheet = np.full((rows * cell_h + _GAP, columns * cell_w + _GAP, c), 128, dtype=np.uint8)
    for i, image in enumerate(pixels):
        top, left = _GAP + (i // columns) * cell_h, _GAP + (i % columns) * cell_w
        sheet[top : top + h * scale, left : left + w * scale] = image.transpose(1, 2, 0)
    picture = Image.fromarray(sheet[..., 0] if c == 1 else sheet)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_images(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    prompts: Sequence[str] = (),
    columns: int | None = None,
) -> None:
    """Write ``images`` to ``path`` atomically: a grid for ``.png``; for ``.npz`` the arrays
    ``images`` ``(N, C, H, W)`` float32 in ``[0, 1]`` and ``prompts`` (one string each)."""
    if str(path).endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(
            buffer,
            images=images.float().cpu().numpy().astype(np.float32),
            prompts=np.asarray(list(prompts), dtype=str),
        )
        write_atomic(path, buffer.getvalue())
    else:
        write_atomic(path, grid_png(images, columns))

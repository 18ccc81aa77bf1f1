"""Measuring generated images with a classifier trained on the same data (the "judge").

A diffusion run ends by training :class:`Judge`, a small CNN, on the run's real training
images (a few seconds), then asks it two things about the generated samples:

* conditional accuracy: the fraction of samples drawn for prompt ``k`` that the judge reads
  as class ``k`` (the judge's own accuracy on held-out real images bounds what this can mean);
* the Fréchet distance between the judge's penultimate features (128 per image) of the
  samples and of held-out real images, ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``
  as in FID, with this judge in place of Inception. The distance between the real training
  and held-out images is reported beside it, as the floor that finite samples give.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Judge", "conditional_accuracy", "frechet_distance", "train_judge"]

FEATURES = 128


class Judge(nn.Module):
    """conv 16 - conv 32 - pool - conv 32 - adaptive pool 2x2 - 128 features - classes."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, classes)

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Predicted classes ``(N,)`` and features ``(N, 128)`` of images in ``[0, 1]``."""
        self.eval()
        features = torch.cat(
            [self.body(images[i : i + batch]) for i in range(0, len(images), batch)]
        )
        classes = self.head(features).argmax(dim=1)
        return classes.cpu().numpy(), features.double().cpu().numpy()


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero fill)."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


def train_judge(
    images: torch.Tensor, labels: torch.Tensor, classes: int, *, epochs: int = 15, seed: int = 0
) -> Judge:
    """A :class:`Judge` trained on ``images`` ``(N, C, H, W)`` in ``[0, 1]`` with class ids
    ``labels``: Adam, batch 64, random one-pixel shifts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = Judge(int(images.shape[1]), classes).to(images.device)
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for index in order.split(64):
            loss = F.cross_entropy(judge(_shift(images[index], generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return judge.eval()


def conditional_accuracy(
    wanted: np.ndarray, read: np.ndarray, classes: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """The fraction of samples read as the class they were drawn for, overall and per class."""
    per_class = {
        name: float((read[wanted == k] == k).mean())
        for k, name in enumerate(classes)
        if (wanted == k).any()
    }
    return float((read == wanted).mean()), per_class


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` and of ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # nearly singular: handled below
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # nudge the diagonals, as FID code does
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root))
    return float(max(distance, 0.0))

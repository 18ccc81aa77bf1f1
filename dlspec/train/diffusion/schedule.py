"""The diffusion process: a noise schedule, noising in closed form, and the samplers.

Notation (DDPM, Ho et al. 2020): ``timesteps`` steps ``t = 0 .. T-1``; step ``t`` adds noise
of variance ``beta_t``, and ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, so that noising a
clean image ``x_0`` to step ``t`` in one go is

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

(:meth:`NoiseSchedule.q_sample`; :meth:`NoiseSchedule.q_step` is one step of the chain, and
the tests check that the two agree). The network predicts ``eps`` (``prediction="epsilon"``)
or ``v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x_0`` (``"v"``, Salimans and Ho
2022); either gives back ``x_0`` and ``eps`` (:meth:`NoiseSchedule.split`).

Schedules: ``linear`` (DDPM's betas from 1e-4 to 0.02, scaled by 1000 / T) and ``cosine``
(Nichol and Dhariwal 2021: ``alpha_bar`` follows ``cos^2``), betas capped at 0.999 in both
(scaled, the linear ones pass 1 below T = 20 steps).

:func:`sample` runs the reverse process from Gaussian noise over a descending subsequence of
the steps: DDIM (Song et al. 2021, deterministic given the starting noise) or DDPM (the same
update with the posterior's noise, ``eta = 1``), with classifier-free guidance
``out = out_uncond + w * (out_cond - out_uncond)``. All noise is drawn on the CPU from one
seeded generator, for the whole batch at once, so the images depend on the seed and not on
the device, the batch size the denoiser is called with, or the runtime (torch or ONNX).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

__all__ = ["SETTINGS", "Denoiser", "NoiseSchedule", "Sampler", "sample", "sampling_steps"]

#: The train settings that sampling needs, saved with a run and in its exported models.
SETTINGS = ("schedule", "timesteps", "prediction", "sampler", "sample_steps", "guidance")

Sampler = Literal["ddim", "ddpm"]

#: ``denoise(x_t, t, prompt_ids)`` -> the network's output for the batch: ``x_t`` is
#: ``(B, C, H, W)`` float, ``t`` is ``(B, 1)`` float, ``prompt_ids`` is ``(B, L)`` int64.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_COSINE_OFFSET = 0.008  # s in Nichol and Dhariwal's cos^2((t/T + s) / (1 + s) * pi/2)
_MAX_BETA = 0.999  # Nichol and Dhariwal's cap: alpha_bar stays above 0, so x_0 can be recovered


class NoiseSchedule:
    """The betas and ``alpha_bar`` of ``kind`` over ``timesteps`` steps (float64), and what
    the network's output means (``prediction``)."""

    def __init__(self, kind: str, timesteps: int, prediction: str = "epsilon") -> None:
        if timesteps < 2:
            raise ValueError(f"a schedule needs at least 2 steps, got {timesteps}")
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction is 'epsilon' or 'v', got {prediction!r}")
        self.kind = kind
        self.timesteps = timesteps
        self.prediction = prediction
        if kind == "linear":
            scale = 1000 / timesteps  # below 20 steps the last betas reach 1: capped
            betas = torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64)
            betas = betas.clamp(max=_MAX_BETA)
        elif kind == "cosine":
            steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
            f = torch.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=_MAX_BETA)
        else:
            raise ValueError(f"schedule is 'linear' or 'cosine', got {kind!r}")
        self.betas = betas
        self.alpha_bar = torch.cumprod(1 - betas, dim=0)

    def _at(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` per sample, shaped to
        broadcast over ``like`` ``(B, ...)``."""
        ab = self.alpha_bar[t.cpu()].to(device=like.device, dtype=like.dtype)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean images ``x0`` at steps ``t`` ``(B,)`` with Gaussian ``noise``."""
        a, s = self._at(t, x0)
        return a * x0 + s * noise

    def q_step(self, x: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """One step of the forward chain: ``x_t`` from ``x_{t-1}`` (from ``x_0`` at t = 0),
        ``sqrt(1 - beta_t) * x + sqrt(beta_t) * noise``."""
        beta = float(self.betas[t])
        return math.sqrt(1 - beta) * x + math.sqrt(beta) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for ``x_t = q_sample(x0, t, noise)``."""
        if self.prediction == "epsilon":
            return noise
        a, s = self._at(t, x0)
        return a * noise - s * x0

    def split(
        self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_0, eps)`` implied by the network's output ``out`` for ``x = x_t``."""
        a, s = self._at(t, x)
        if self.prediction == "epsilon":
            return (x - s * out) / a, out
        return a * x - s * out, s * x + a * out


def sampling_steps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``timesteps - 1`` down to 0, evenly spaced (all of them when
    ``steps == timesteps``). Raises ValueError when ``steps`` is not in ``1..timesteps``."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"the model was trained with {timesteps} steps; use 1 to {timesteps}")
    if steps == 1:
        return [timesteps - 1]
    return sorted({round(i * (timesteps - 1) / (steps - 1)) for i in range(steps)}, reverse=True)


def _guided(
    denoise: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    prompts: torch.Tensor,
    guidance: float,
    batch_size: int,
) -> torch.Tensor:
    """The network's output with classifier-free guidance of scale ``guidance`` (1: the
    conditional output alone; 0: the unconditional one, prompt all padding)."""
    null = torch.zeros_like(prompts)
    if guidance == 1:
        xs, ts, ps = x, t, prompts
    elif guidance == 0:
        xs, ts, ps = x, t, null
    else:
        xs, ts, ps = torch.cat([x, x]), torch.cat([t, t]), torch.cat([prompts, null])
    out = torch.cat(
        [
            denoise(xs[i : i + batch_size], ts[i : i + batch_size], ps[i : i + batch_size]).float()
            for i in range(0, len(xs), batch_size)
        ]
    )
    if guidance in (0, 1):
        return out
    cond, uncond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    prompts: torch.Tensor,
    shape: Sequence[int],
    *,
    steps: int,
    guidance: float = 1.0,
    sampler: str = "ddim",
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images for ``prompts`` (``(N, L)`` token ids, one image each) of per-sample ``shape``
    ``(C, H, W)``, drawn by ``sampler`` in ``steps`` steps (:func:`sampling_steps`) with
    guidance scale ``guidance``. Returns ``(N, C, H, W)`` float32 in ``[0, 1]`` on the CPU.
    ``denoise`` is called on batches of at most ``batch_size`` (doubled by guidance) on
    ``device``; ``progress(i)`` after step ``i``. Predicted clean images are clipped to
    ``[-1, 1]`` at every step."""
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler is 'ddim' or 'ddpm', got {sampler!r}")
    order = sampling_steps(schedule.timesteps, steps)
    eta = 1.0 if sampler == "ddpm" else 0.0
    generator = torch.Generator().manual_seed(seed)
    n = len(prompts)
    x = torch.randn((n, *shape), generator=generator).to(device)
    prompts = prompts.to(device)
    for i, step in enumerate(order):
        previous = order[i + 1] if i + 1 < len(order) else -1
        t = torch.full((n,), step, dtype=torch.int64)
        times = t.to(device=device, dtype=torch.float32).unsqueeze(1)
        out = _guided(denoise, x, times, prompts, guidance, batch_size)
        x0, _ = schedule.split(x, t, out)
        x0 = x0.clamp(-1, 1)
        ab = float(schedule.alpha_bar[step])
        ab_prev = float(schedule.alpha_bar[previous]) if previous >= 0 else 1.0
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # consistent with the clipped x0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn((n, *shape), generator=generator).to(device)
        if progress is not None:
            progress(i + 1)
    return ((x.float().cpu() + 1) / 2).clamp(0, 1)

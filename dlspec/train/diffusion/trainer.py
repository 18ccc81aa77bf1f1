"""Task ``diffusion`` of ``dlspec build``: train a text-conditioned denoiser, then judge it.

Every training image is noised to a random step of the schedule
(:class:`~dlspec.train.diffusion.schedule.NoiseSchedule`), and the network, given the noisy
image, the step and the image's prompt (its class name; dropped to all-padding for a fraction
``cond_drop`` of the images, which is what classifier-free guidance needs), learns the noise
(or ``v``) with a mean squared error. An exponential moving average of the weights (``ema``)
is what the run samples with and saves as the checkpoint's model; the raw weights are kept in
the checkpoint's ``state`` for ``--resume``.

Everything else is the training loop of the other tasks (:class:`~dlspec.train.loop.Trainer`:
progress bar, a checkpoint per epoch, Ctrl-C, resume, metrics.json, the loss curve). Beside
them a run writes ``samples/epoch_NNN.png`` after every epoch (the same noise every time, a
column per prompt) and, at the end, ``samples.png`` and the quality figures of
:mod:`~dlspec.train.diffusion.judge` under ``test`` in metrics.json.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlspec.analysis.graph import ModelGraph
from dlspec.analysis.train_config import TrainConfig
from dlspec.layers.symbolic import value_at
from dlspec.train.data import DataError
from dlspec.train.diffusion.grid import save_images
from dlspec.train.diffusion.judge import conditional_accuracy, frechet_distance, train_judge
from dlspec.train.diffusion.prompts import DiffusionInputs, PromptCodec, PromptError
from dlspec.train.diffusion.schedule import SETTINGS, Denoiser, NoiseSchedule, sample
from dlspec.train.loop import (
    OBJECTIVES,
    Objective,
    RunOptions,
    Splits,
    Trainer,
    TrainError,
    TrainResult,
    train_model,
)

__all__ = [
    "EMA",
    "SAMPLES_DIR",
    "SAMPLES_PNG",
    "Denoising",
    "DiffusionTrainer",
    "diffusion_inputs",
    "train_diffusion",
]

SAMPLES_DIR = "samples"  # per-epoch grids
SAMPLES_PNG = "samples.png"  # the final grid, from the quality measurement
GRID_PER_PROMPT = 1  # samples per prompt in the per-epoch grids
QUALITY_PER_PROMPT = 20  # samples per prompt that the judge reads at the end
JUDGE_EPOCHS = 15
SAMPLE_BATCH = 512


class Denoising(Objective):
    """The data side of task ``diffusion``: labelled images, whose class names are prompts."""

    label_noun = "prompts"

    def __init__(self, task: str = "diffusion") -> None:
        self.task = task
        self.loss_fn = nn.MSELoss()

    @property
    def classifies(self) -> bool:
        return False

    def check(
        self,
        splits: Splits,
        output_shape: Sequence[int],
        source: str,
        token_limit: int | None = None,
    ) -> None:
        data = splits.train
        if data.x.dim() != 4 or not data.is_classification or not splits.classes:
            raise DataError(
                "task diffusion needs labelled images, whose class names become the prompts "
                '(the embedded "digits", "mnist", or a folder of images per class)',
                source,
            )

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.long()


OBJECTIVES["diffusion"] = Denoising


class EMA:
    """An exponential moving average of a model's weights (a copy of the model, in eval
    mode): after update ``n``, each weight moves toward the model's by ``1 - d`` with
    ``d = min(decay, (1 + n) / (10 + n))``, so that early averages are not dominated by the
    random initial weights. Buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged: list[torch.Tensor] = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


def diffusion_inputs(graph: ModelGraph) -> DiffusionInputs:
    """The roles of a spec's inputs (symbolic dimensions at their values); raises
    :class:`TrainError` when the model is not a diffusion model."""
    try:
        return DiffusionInputs.of(
            [
                (i.name, i.type.dtype, [value_at(d, graph.bindings) for d in i.type.shape])
                for i in graph.inputs
            ],
            [[value_at(d, graph.bindings) for d in o.type.shape] for o in graph.outputs],
        )
    except ValueError as exc:
        raise TrainError(str(exc)) from None


class DiffusionTrainer(Trainer):
    """The training loop of task ``diffusion`` (module docstring). ``info["diffusion"]``
    holds the model's input roles and token limit (:func:`train_diffusion` puts them there)."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        splits: Splits,
        input_shape: Sequence[int],
        **kwargs: Any,
    ) -> None:
        if config.mean is not None or config.std is not None:
            raise TrainError(
                "task diffusion scales images to [-1, 1] itself; remove normalize from the "
                "train section"
            )
        super().__init__(model, config, splits, input_shape, **kwargs)
        setup = self.info["diffusion"]
        self.inputs = DiffusionInputs(
            tuple(setup["order"]), tuple(setup["image"]), setup["prompt_length"]
        )
        try:
            self.codec = PromptCodec.for_classes(
                self.class_names, self.inputs.prompt_length, setup["token_limit"]
            )
        except PromptError as exc:
            raise DataError(str(exc), config.data) from None
        self.prompt_ids = self.codec.encode(self.class_names).to(self.device)  # (K, L)
        self.schedule = NoiseSchedule(config.schedule, config.timesteps, config.prediction)
        self.ema = EMA(self.model, config.ema) if config.ema > 0 else None

    # training ------------------------------------------------------------------------------

    def _noised(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, drop: float
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The model's inputs for images ``x`` in ``[0, 1]`` with labels ``y``, noised to
        random steps (prompts dropped with probability ``drop``), and the training target."""
        x0 = x * 2 - 1
        b = len(x0)
        t = torch.randint(0, self.schedule.timesteps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        prompts = self.prompt_ids[y]
        if drop > 0:
            keep = torch.rand(b, generator=generator) >= drop
            prompts = prompts * keep.to(self.device).unsqueeze(1)
        noisy = self.schedule.q_sample(x0, t, noise).contiguous(memory_format=self.memory_format)
        times = t.to(device=self.device, dtype=torch.float32).unsqueeze(1)
        return self.inputs.arrange(noisy, times, prompts), self.schedule.target(x0, noise, t)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = self._noised(x, y, self.augment_generator, self.config.cond_drop)
        out = self._forward(*inputs)
        return out, F.mse_loss(out.float(), target)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = super()._step(x, y)
        if self.ema is not None:
            self.ema.update(self.model)
        return result

    def train_epoch(self) -> tuple[float, float | None]:
        result = super().train_epoch()
        if self.main:
            directory = self.checkpoint_path.parent / SAMPLES_DIR
            directory.mkdir(exist_ok=True)
            images, prompts = self.samples(GRID_PER_PROMPT)
            save_images(
                images,
                directory / f"epoch_{self.epoch + 1:03d}.png",
                prompts,
                len(self.class_names),
            )
        return result

    @torch.no_grad()
    def evaluate(self, part: str) -> tuple[float, float | None, torch.Tensor]:
        """The mean loss on ``part`` (every image with its prompt, at steps and noise fixed
        by the seed, so epochs compare); no accuracy, no predictions."""
        x_all, y_all = self.data[part]
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        model = self.sampling_model
        loss_sum, size = 0.0, self.config.eval_batch_size
        for start in range(0, len(x_all), size):
            x = self._inputs(x_all[start : start + size], training=False)
            inputs, target = self._noised(x, y_all[start : start + size], generator, 0.0)
            out = self._forward(*inputs, module=model)
            loss_sum += float(F.mse_loss(out.float(), target, reduction="sum")) / target[0].numel()
        return loss_sum / len(x_all), None, torch.empty(0)

    # sampling ------------------------------------------------------------------------------

    @property
    def sampling_model(self) -> nn.Module:
        """The weights to sample and evaluate with: the moving average, if any."""
        model = self.ema.model if self.ema is not None else self.model
        return model.eval()

    def denoiser(self) -> Denoiser:
        model = self.sampling_model

        def denoise(x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
            image = x.contiguous(memory_format=self.memory_format)
            return self._forward(*self.inputs.arrange(image, t, prompt), module=model)

        return denoise

    def samples(self, per_prompt: int) -> tuple[torch.Tensor, list[str]]:
        """``per_prompt`` images for every class name, prompt after prompt in each row."""
        prompts = self.class_names * per_prompt
        images = sample(
            self.denoiser(),
            self.schedule,
            self.codec.encode(prompts),
            self.inputs.image,
            steps=self.config.sample_steps,
            guidance=self.config.guidance,
            sampler=self.config.sampler,
            seed=self.config.seed,
            batch_size=SAMPLE_BATCH,
            device=self.device,
        )
        return images, prompts

    def test(self) -> dict[str, Any]:
        """The test loss, and how the judge reads ``QUALITY_PER_PROMPT`` samples per prompt
        (module :mod:`~dlspec.train.diffusion.judge`); writes ``samples.png``."""
        loss, _, _ = self.evaluate("test")
        started = time.perf_counter()
        real = {
            part: (self._inputs(x, training=False).float(), y)
            for part, (x, y) in self.data.items()
            if part in ("train", "test")
        }
        judge = train_judge(
            *real["train"], len(self.class_names), epochs=JUDGE_EPOCHS, seed=self.config.seed
        )
        judge_seconds = time.perf_counter() - started
        read_test, features_test = judge.read(real["test"][0])
        _, features_train = judge.read(real["train"][0])
        started = time.perf_counter()
        images, prompts = self.samples(QUALITY_PER_PROMPT)
        sample_seconds = time.perf_counter() - started
        wanted = np.tile(np.arange(len(self.class_names)), QUALITY_PER_PROMPT)
        read, features = judge.read(images.to(self.device))
        accuracy, per_prompt = conditional_accuracy(wanted, read, self.class_names)
        rows = min(QUALITY_PER_PROMPT, 10)
        save_images(
            images[: rows * len(self.class_names)],
            self.checkpoint_path.parent / SAMPLES_PNG,
            columns=len(self.class_names),
        )
        return {
            "loss": loss,
            "accuracy": None,
            "conditional_accuracy": accuracy,
            "conditional_accuracy_per_prompt": per_prompt,
            "frechet_distance": frechet_distance(features, features_test),
            "frechet_distance_real": frechet_distance(features_train, features_test),
            "judge_accuracy": float((read_test == real["test"][1].cpu().numpy()).mean()),
            "samples": len(prompts),
            "sampler": self.config.sampler,
            "sample_steps": self.config.sample_steps,
            "guidance": self.config.guidance,
            "sample_seconds": round(sample_seconds, 3),
            "judge_seconds": round(judge_seconds, 3),
        }

    # checkpoints ---------------------------------------------------------------------------

    def _snapshot(self, partial: bool) -> Any:
        checkpoint = super()._snapshot(partial)
        if self.ema is not None:
            checkpoint.state = {"weights": checkpoint.model, "ema_updates": self.ema.updates}
            checkpoint.model = self.ema.model.state_dict()
        return checkpoint

    def restore(self, checkpoint: Any) -> None:
        super().restore(checkpoint)
        if self.ema is not None and "weights" in checkpoint.state:
            self.ema.model.load_state_dict(checkpoint.model)
            self.model.load_state_dict(checkpoint.state["weights"])
            self.ema.updates = int(checkpoint.state["ema_updates"])


def train_diffusion(
    make_model: Callable[[], nn.Module],
    graph: ModelGraph,
    config: TrainConfig,
    *,
    spec_hash: str,
    options: RunOptions,
    info: Mapping[str, Any],
    log: Callable[[str], None] = print,
) -> TrainResult:
    """:func:`~dlspec.train.loop.train_model` for task ``diffusion`` and the spec's ``graph``
    (which must have a diffusion model's inputs: :class:`DiffusionInputs`)."""
    from dlspec.backends.onnx_export import index_limit

    inputs = diffusion_inputs(graph)
    setup = {
        "order": list(inputs.order),
        "image": list(inputs.image),
        "prompt_length": inputs.prompt_length,
        "token_limit": index_limit(graph),
    } | {key: getattr(config, key) for key in SETTINGS}
    return train_model(
        make_model,
        config,
        input_shape=inputs.image,
        output_shape=inputs.image,
        spec_hash=spec_hash,
        options=options,
        info={**info, "task": "diffusion", "diffusion": setup},
        log=log,
        trainer_class=DiffusionTrainer,
    )

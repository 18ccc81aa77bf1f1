"""A trained diffusion model, ready to sample: from a run directory of ``dlspec build`` (run by
torch, or by ONNX Runtime on an export made on the fly), or from an ONNX file that
``dlspec export`` wrote (whose metadata holds the schedule and the class names).

Both runtimes go through the same :func:`~dlspec.train.diffusion.schedule.sample`, whose
noise comes from one seeded CPU generator, so at a seed they draw the same images up to the
runtimes' rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlspec.records import RecordError, export_metadata, run_info
from dlspec.train.diffusion.prompts import DiffusionInputs, PromptCodec, PromptError
from dlspec.train.diffusion.schedule import SETTINGS, Denoiser, NoiseSchedule, sample
from dlspec.train.generate import RunError, load_run, trained_model

__all__ = [
    "META_DIFFUSION",
    "DiffusionModel",
    "is_diffusion_run",
    "load_diffusion",
    "torch_denoiser",
]

#: ONNX metadata key: JSON of the run's diffusion settings (:data:`SETTINGS`) and input roles.
META_DIFFUSION = "dlspec.diffusion"


@dataclass
class DiffusionModel:
    """A denoiser and what sampling from it needs: the schedule, the prompt codec, the
    class names, the image shape and the run's default sampling settings."""

    denoise: Denoiser
    schedule: NoiseSchedule
    codec: PromptCodec
    classes: list[str]
    image: tuple[int, ...]
    settings: dict[str, Any]  # SETTINGS as trained
    runtime: str  # "torch" or "ONNX Runtime (CPU)"
    device: torch.device

    def sample(
        self,
        prompts: list[str],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in ``[0, 1]`` for ``prompts``; unset options take the run's
        settings. Raises UnknownCharacters, PromptError or ValueError (bad steps)."""
        return sample(
            self.denoise,
            self.schedule,
            self.codec.encode(prompts),
            self.image,
            steps=self.settings["sample_steps"] if steps is None else steps,
            guidance=self.settings["guidance"] if guidance is None else guidance,
            sampler=sampler or self.settings["sampler"],
            seed=seed,
            device=self.device,
        )


def is_diffusion_run(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is an .onnx file or a run directory of task diffusion (what
    ``dlspec sample`` dispatches on); False for anything unreadable."""
    if str(source).endswith(".onnx"):
        return True
    try:
        _, checkpoint = load_run(source)
    except RunError:
        return False
    return checkpoint.info.get("task") == "diffusion"


def torch_denoiser(model: torch.nn.Module, inputs: DiffusionInputs) -> Denoiser:
    """``model`` (a module with a diffusion model's inputs) as a :data:`Denoiser`."""

    def denoise(x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(*inputs.arrange(x, t, prompt))
        return out

    return denoise


def _session(model: str | bytes) -> Any:
    """An ONNX Runtime session on the CPU for ``model`` (a path or the bytes)."""
    from dlspec.backends.runtime import RuntimeSetupError, Session

    try:
        return Session(model, device="cpu")
    except RuntimeSetupError as exc:
        raise RunError(str(exc)) from None


def _onnx_denoiser(session: Any, inputs: DiffusionInputs, where: str) -> Denoiser:
    """``session`` as a :data:`Denoiser`; a model that fails, or answers with other than one
    finite float output of the image's shape, is a :class:`RunError` naming ``where``."""
    names = [info.name for info in session.inputs]

    def denoise(x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        arrays = [a.cpu().numpy() for a in inputs.arrange(x, t, prompt)]
        try:
            outputs = session.run(dict(zip(names, arrays, strict=True)))
        except Exception as exc:  # ONNX Runtime's own types: a graph that fails on the data
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{where}: ONNX Runtime failed: {message}") from None
        answered = ", ".join(f"{a.dtype}{list(a.shape)}" for a in outputs) or "nothing"
        if len(outputs) != 1 or outputs[0].shape != tuple(x.shape) or outputs[0].dtype.kind != "f":
            raise RunError(
                f"{where}: the denoiser answered {answered}; it must answer one float array "
                f"of the images' shape {list(x.shape)}"
            )
        out = outputs[0]
        if not np.isfinite(out).all():
            raise RunError(f"{where}: the denoiser's output holds NaN or infinite values")
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

    return denoise


def load_diffusion(
    source: str | os.PathLike[str], *, runtime: str = "torch", device: str = "cpu"
) -> DiffusionModel:
    """The diffusion model in ``source``: a run directory (``runtime`` "torch" or "onnx") or
    an exported .onnx file (always ONNX Runtime). Raises :class:`RunError` with a message."""
    if str(source).endswith(".onnx"):
        return _from_onnx_file(Path(source))
    from dlspec.train.diffusion.trainer import diffusion_inputs
    from dlspec.train.loop import TrainError
    from dlspec.train.run_dir import CHECKPOINT

    spec, checkpoint = load_run(source)
    path = Path(source) / CHECKPOINT
    info = run_info(checkpoint.info, str(path))  # valid: load_run read it
    if info.task != "diffusion" or info.diffusion is None or info.classes is None:
        raise RunError(f"{path}: {spec.graph.name} was not trained with task diffusion")
    try:
        inputs = diffusion_inputs(spec.graph)
    except TrainError as exc:
        raise RunError(f"{path}: {exc}") from None
    settings = info.diffusion.model_dump()
    model = trained_model(spec, checkpoint, "cpu" if runtime == "onnx" else device)
    if runtime == "onnx":
        from dlspec.backends.onnx_export import ExportError, export_onnx

        try:
            exported = export_onnx(model, spec.graph, verify=False, device="cpu")
        except ExportError as exc:
            raise RunError(f"{path}: {exc}") from None
        denoise = _onnx_denoiser(_session(exported.data), inputs, str(path))
        where, label = torch.device("cpu"), "ONNX Runtime (CPU)"
    else:
        denoise, where, label = torch_denoiser(model, inputs), torch.device(device), "torch"
    return _model(denoise, settings, info.classes, inputs, label, where, str(path))


def _model(
    denoise: Denoiser,
    settings: dict[str, Any],
    classes: list[str],
    inputs: DiffusionInputs,
    runtime: str,
    device: torch.device,
    where: str,
) -> DiffusionModel:
    try:
        codec = PromptCodec.for_classes(classes, inputs.prompt_length, settings["token_limit"])
    except PromptError as exc:
        raise RunError(f"{where}: {exc}") from None
    schedule = NoiseSchedule(settings["schedule"], settings["timesteps"], settings["prediction"])
    return DiffusionModel(
        denoise=denoise,
        schedule=schedule,
        codec=codec,
        classes=classes,
        image=inputs.image,
        settings={key: settings[key] for key in SETTINGS},
        runtime=runtime,
        device=device,
    )


def _from_onnx_file(path: Path) -> DiffusionModel:
    if not path.is_file():
        raise RunError(f"{path}: no such file")
    session = _session(str(path))
    try:
        metadata = export_metadata(session.metadata, str(path))
    except RecordError as exc:
        raise RunError(str(exc)) from None
    if metadata.diffusion is None or metadata.classes is None:
        raise RunError(
            f"{path}: the model's metadata has no diffusion settings; export it with "
            "`dlspec export SPEC --weights RUN/checkpoint.pt` from a diffusion run"
        )
    settings = metadata.diffusion.model_dump()
    classes = metadata.classes
    inputs = DiffusionInputs(
        tuple(settings["order"]), tuple(settings["image"]), settings["prompt_length"]
    )
    denoise = _onnx_denoiser(session, inputs, str(path))
    cpu = torch.device("cpu")
    return _model(denoise, settings, classes, inputs, "ONNX Runtime (CPU)", cpu, str(path))

"""The training loop behind ``dlspec build``: data in, trained model, metrics and plots out.

The data never goes through a ``DataLoader``: each split is one tensor on the device, batches
are slices of it taken through a shuffled index, and the transforms (fit to the model's
input, rotation, colour jitter, normalisation: :class:`~dlspec.train.transforms.Augment`)
run on whole batches there. Image models run channels-last and, on CUDA or on a CPU with
native bf16, under bf16 autocast (fp16 on older GPUs); on a CPU, malloc keeps freed memory for
reuse (:func:`keep_freed_memory`). One seed fixes the model's initial weights, the shuffling,
the augmentation and dropout, so a CPU run is repeatable, and a resumed run continues as the
uninterrupted one would have.

:func:`train_model` is the entry point; :class:`Trainer` holds one run's state.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlspec.analysis.train_config import OptimizerConfig, TrainConfig
from dlspec.terminal import printable
from dlspec.train.checkpoint import Checkpoint, load_checkpoint, load_shards, save_checkpoint
from dlspec.train.data import DataError, Dataset, load_source, split
from dlspec.train.metrics import (
    classification_metrics,
    epoch_line,
    plot_confusion_matrix,
    plot_learning_curves,
    regression_metrics,
    write_json,
)
from dlspec.train.run_dir import (
    CHECKPOINT,
    CLASSES,
    CONFIG,
    CONFUSION_PNG,
    CURVES_PNG,
    DATA,
    METRICS_JSON,
    MODEL,
    SHARDS,
    SPEC_HASH,
)
from dlspec.train.text import TokenIds, check_vocabulary, perplexity, random_windows, text_splits
from dlspec.train.transforms import Augment

__all__ = [
    "OBJECTIVES",
    "LanguageModel",
    "Objective",
    "RunOptions",
    "Splits",
    "TrainError",
    "TrainResult",
    "Trainer",
    "autocast_dtype",
    "batch_statistics",
    "cpu_has_native_bf16",
    "keep_freed_memory",
    "load_splits",
    "make_objective",
    "make_optimizer",
    "running_norms",
    "running_statistics_notice",
    "select_device",
    "train_model",
]

PROGRESS_SECONDS = 10.0  # without a progress bar (not a terminal): a line this often
# Test accuracy under this share of the last epoch's training accuracy is a collapse worth a
# look: overfitting rarely costs half of it, BatchNorm's unsettled running statistics can cost
# nine tenths (a ConvMixer after one epoch: 76 % on train, 10 % on test)
COLLAPSE = 0.5


class TrainError(Exception):
    """A run that cannot start as asked (device, task and model don't fit); the message says
    why and what to change."""


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to train (:class:`TrainConfig`)."""

    out: Path
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    quiet: bool = False  # no progress bar, no per-epoch lines
    plots: bool = True
    resume: bool = False  # continue from out/checkpoint.pt
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # told each epoch's figures


@dataclass
class TrainResult:
    """The outcome: ``metrics`` (what metrics.json holds) once the run finished; with
    ``interrupted`` the checkpoint holds ``epoch`` finished epochs and no test was run."""

    epoch: int
    interrupted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data, task, device


@dataclass
class Splits:
    """Training, validation (None when ``val_split`` is 0) and test data."""

    train: Dataset
    val: Dataset | None
    test: Dataset

    @property
    def classes(self) -> list[str]:
        """The class names of the split with the most classes (a separate test set may miss
        some)."""
        parts = [self.train, self.test] + ([self.val] if self.val is not None else [])
        return max((p.classes for p in parts), key=len)


def load_splits(config: TrainConfig) -> Splits:
    """Load ``config.data`` (see :func:`~dlspec.train.data.load_source`) and split it: a test
    part (``test_split``) when the source has no test set, then a validation part
    (``val_split``) from the training data; both stratified and fixed by ``seed``."""
    train, test = load_source(config.data, seed=config.seed, download=config.download)
    if test is None:
        train, test = split(train, config.test_split, config.seed)
        test.name = f"{train.name}/test"
    val = None
    if config.val_split > 0:
        train, val = split(train, config.val_split, config.seed)
        val.name = f"{train.name}/val"
    return Splits(train, val, test)


class Objective:
    """A task's loss, targets and predictions.

    * ``classify``: class scores ``(B, C)``, :class:`~torch.nn.CrossEntropyLoss`;
    * ``binary``: one logit per sample, :class:`~torch.nn.BCEWithLogitsLoss`;
    * ``regression``: ``(B, K)`` values, :class:`~torch.nn.MSELoss`.

    A task with other data or figures subclasses it (:class:`LanguageModel`, :data:`OBJECTIVES`).
    """

    label_noun = "classes"  # what the data's labels are, for the log

    def __init__(self, task: str) -> None:
        self.task = task
        self.loss_fn: nn.Module = {
            "classify": nn.CrossEntropyLoss(),
            "binary": nn.BCEWithLogitsLoss(),
            "regression": nn.MSELoss(),
        }[task]

    @property
    def classifies(self) -> bool:
        """Whether predictions are classes (accuracy, report, confusion matrix apply)."""
        return self.task != "regression"

    def load(self, config: TrainConfig, input_shape: Sequence[int]) -> Splits:
        """The task's data for a model with per-sample input ``input_shape``: here
        :func:`load_splits`."""
        return load_splits(config)

    def check(
        self,
        splits: Splits,
        output_shape: Sequence[int],
        source: str,
        token_limit: int | None = None,
    ) -> None:
        """Raise :class:`DataError` / :class:`TrainError` when the data or the model's output
        ``output_shape`` (per sample) cannot serve this task; ``token_limit`` bounds the token
        ids the model reads (None: it reads floats)."""
        shape = tuple(output_shape)
        if len(shape) != 1:
            raise TrainError(
                f"the model's output is {list(shape)} per sample; training needs one vector "
                "per sample (class scores, a logit or regression values)"
            )
        outputs = shape[0]
        data = splits.train
        if self.task == "regression":
            width = 1 if data.y.ndim == 1 else int(data.y.shape[1])
            if width != outputs:
                raise DataError(
                    f"the data has {width} regression target(s) per sample, but the model "
                    f"outputs {outputs} value(s)",
                    source,
                )
            return
        zero_one = bool(((data.y == 0) | (data.y == 1)).all())
        if not data.is_classification and not (self.task == "binary" and zero_one):
            raise DataError(
                f"the labels are decimal numbers (regression targets), but the task is "
                f'{self.task}; set task = "regression", or store class ids as integers',
                source,
            )
        count = len(splits.classes)
        if self.task == "binary":
            if count > 2 or not zero_one:
                raise DataError(
                    f"the data has {count} classes; task binary needs labels 0 and 1", source
                )
            if outputs != 1:
                raise TrainError(
                    f"task binary needs a model with one output (a logit), this one has "
                    f'{outputs}; end it with Linear(1), or use task = "classify"'
                )
            return
        if count > outputs:
            raise DataError(
                f"the data has {count} classes but the model outputs {outputs} class scores "
                f"per sample; give the model {count} outputs (e.g. --set num_classes={count})",
                source,
            )
        if outputs == 1:
            raise TrainError(
                'task classify needs one output per class; for one logit use task = "binary"'
            )

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Labels as the loss wants them: class ids (int64) or float targets."""
        return y.long() if self.task == "classify" else y.float()

    def output(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's output shaped like the targets: ``(B, 1)`` -> ``(B,)`` for one target."""
        if self.task == "classify" or out.shape == y.shape:
            return out
        return out.reshape(y.shape)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss over the batch."""
        return self.loss_fn(self.output(out, y).float(), y)

    def predict(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Class ids (classify, binary) or values (regression), shaped like ``y``."""
        if self.task == "classify":
            return out.argmax(dim=1)
        shaped = self.output(out, y)
        return (shaped > 0).to(y.dtype) if self.task == "binary" else shaped.float()

    def epoch_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An epoch's training data, from the training split's ``x`` and ``y``: themselves."""
        return x, y

    def epoch_figures(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Figures to add to an epoch's history ``entry`` (its losses and accuracies): none."""
        return {}

    def report(
        self, loss: float, truth: np.ndarray, guess: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        """Test metrics beside the loss and accuracy: the classification report and confusion
        matrix, or the regression errors."""
        if self.classifies:
            return classification_metrics(truth.astype("int64"), guess.astype("int64"), classes)
        return regression_metrics(truth, guess)


class LanguageModel(Objective):
    """``language_model``: predict the next character of a text at every step.

    The data is a text file or ``"python-docs"`` (:func:`~dlspec.train.text.text_splits`):
    windows of ``T`` character ids, the model's input length, and the same shifted by one
    step as targets; the vocabulary, built from the text, is the data's classes (character
    ``i`` is class ``i``), so it is saved with the checkpoint and in metrics.json. The model
    scores ``(B, T, V)``; the loss is the cross-entropy over all steps, accuracy counts the
    steps whose best score is the right character, perplexity is exp of the mean loss. Every
    epoch trains on fresh windows at random offsets (:func:`~dlspec.train.text.random_windows`).
    """

    label_noun = "characters"

    def __init__(self, task: str = "language_model") -> None:
        self.task = task
        self.loss_fn = nn.CrossEntropyLoss()

    def load(self, config: TrainConfig, input_shape: Sequence[int]) -> Splits:
        length = int(input_shape[0]) if input_shape else 1
        return Splits(*text_splits(config.data, length, config.val_split, config.test_split))

    def check(
        self,
        splits: Splits,
        output_shape: Sequence[int],
        source: str,
        token_limit: int | None = None,
    ) -> None:
        shape = list(output_shape)
        if token_limit is None or len(shape) != 2:
            reads = "floats" if token_limit is None else "token ids"
            raise TrainError(
                "task language_model needs a model that reads character ids and scores the "
                "next character at every step (input long[T], output [T, vocab]); this one "
                f"reads {reads} and outputs {shape} per sample"
            )
        check_vocabulary(len(splits.classes), shape[1], token_limit, source)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.long()

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(out.flatten(0, -2).float(), y.flatten())

    def predict(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.argmax(dim=-1)

    def epoch_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(x, y, generator)

    def epoch_figures(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {
            f"{part}_perplexity": perplexity(entry[f"{part}_loss"])
            for part in ("train", "val")
            if entry.get(f"{part}_loss") is not None
        }

    def report(
        self, loss: float, truth: np.ndarray, guess: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        return {"perplexity": perplexity(loss)}


#: Task name -> the objective that trains it.
OBJECTIVES: dict[str, type[Objective]] = {
    "classify": Objective,
    "binary": Objective,
    "regression": Objective,
    "language_model": LanguageModel,
}


def make_objective(task: str) -> Objective:
    """The objective of ``task``, one of :data:`OBJECTIVES`."""
    return OBJECTIVES[task](task)


def select_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name}: not a device (expected auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), per /proc/cpuinfo
    (False where there is none, so elsewhere than Linux). ``DLSPEC_NATIVE_BF16=0`` (or ``1``)
    overrides the detection: a run, or the test suite, as on a CPU without (with) it."""
    forced = os.environ.get("DLSPEC_NATIVE_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device, images: bool) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto`` picks bf16 on CUDA where supported (else fp16), and on a CPU with native bf16 for
    image models (``images``), whose convolutions then run 2.5-3.5x faster at the same
    accuracy (bench/train_speed.py); other CPUs and models train in fp32."""
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if images and cpu_has_native_bf16() else None
    if precision == "fp16" and not cuda:
        raise TrainError('precision = "fp16" needs CUDA; on a CPU use "bf16" or "fp32"')
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TrainError('this GPU does not support bf16; use precision = "fp16"')
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse rather than return it to the
    operating system. Returns whether it could (glibc: yes; elsewhere: no, nothing changes).

    glibc gives every block over 32 MB its own fresh mapping and unmaps it when freed, so a
    CPU training step page-faults its large activations and gradients in anew each time: with
    this, MY_NET's fp32 step on 2 cores runs 1.35x faster and its system time drops 6-fold.
    The setting is process-wide and stays; the process then keeps its peak memory."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def make_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """``torch.optim.<name>`` over the model's trainable parameters, fused where torch has a
    fused kernel for the optimiser and the device."""
    cls = getattr(torch.optim, config.name)
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = config.torch_kwargs()
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fusable and params and "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = True
    optimizer: torch.optim.Optimizer = cls(params, **kwargs)
    return optimizer


# ---------------------------------------------------------------------------------------------
# the trainer


def running_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that evaluate with running statistics."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    ]


@contextlib.contextmanager
def batch_statistics(norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """In evaluation mode, ``norms`` normalise with each batch's own statistics (torch does
    so for a BatchNorm without running statistics) and their running statistics stay as
    they are."""
    kept = [(norm.running_mean, norm.running_var) for norm in norms]
    for norm in norms:
        norm.running_mean = norm.running_var = None
    try:
        yield
    finally:
        for norm, (mean, var) in zip(norms, kept, strict=True):
            norm.running_mean, norm.running_var = mean, var


def running_statistics_notice(
    accuracy: float,
    trained: float,
    batch_accuracy: float,
    steps: int,
    norms: Sequence[nn.modules.batchnorm._BatchNorm],
) -> str:
    """What happened to an evaluation that BatchNorm's running statistics spoiled, in figures,
    and what to do."""
    momenta = sorted({norm.momentum for norm in norms}, key=lambda m: -1.0 if m is None else m)
    described = ", ".join(
        "a cumulative average (momentum None)"
        if m is None
        else f"momentum {m:g}: each step moves them {m:.0%} of the way"
        for m in momenta
    )
    kind = type(norms[0]).__name__
    return (
        f"test accuracy is {accuracy:.1%} against {trained:.1%} on the training data, but "
        f"{batch_accuracy:.1%} when each BatchNorm normalises a test batch with its own "
        f"statistics: after {steps:,} steps, BatchNorm's running statistics ({described}) "
        "do not yet describe the activations of the trained weights, and evaluation uses them. "
        f"Train more steps (epochs), raise the momentum so that they follow the weights "
        f"(e.g. {kind}(momentum=0.3)), or normalise with batch statistics in evaluation too "
        f"({kind}(track_running_stats=false))"
    )


def _quiet(_: str) -> None:
    """A log function that prints nothing."""


class Trainer:
    """One training run: the model, its optimiser, the data on the device and the history.

    ``fit()`` trains the remaining epochs, writing a checkpoint after each one (and on Ctrl-C);
    ``evaluate()`` measures a split; ``test()`` computes the final test metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        splits: Splits,
        input_shape: Sequence[int],
        *,
        device: torch.device,
        checkpoint_path: Path,
        spec_hash: str,
        progress: bool = True,
        log: Callable[[str], None] = print,
        token_limit: int | None = None,
        info: Mapping[str, Any] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        progress_lines: bool = False,
    ) -> None:
        self.config = config
        self.on_epoch = on_epoch
        self.progress_lines = progress_lines  # no bar: a line on stderr every PROGRESS_SECONDS
        self.splits = splits
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.spec_hash = spec_hash
        self.progress = progress
        self.log = log
        self.objective = make_objective(config.task)
        self.augment: Augment | TokenIds = Augment(
            tuple(int(s) for s in input_shape),
            config.rotation,
            config.brightness,
            config.contrast,
            config.mean,
            config.std,
        )
        if token_limit is not None:  # token ids reach the model as they are: checked, fitted
            parts = (splits.train, splits.val, splits.test)
            self.augment = TokenIds(int(input_shape[0]), token_limit).check(parts, config.data)
        self.info = dict(info or {})
        # 4-D batches run channels-last: MY_NET's training step is 5% faster so in fp32 and
        # 1.3x in bf16 on a 2-core AVX-512 CPU (and convolutions on GPUs prefer it too)
        self.channels_last = len(input_shape) == 3
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        self.model = model.to(device)
        if self.channels_last:  # torch's stubs lack Module.to's memory_format
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.autocast = autocast_dtype(config.precision, device, self.channels_last)
        self._shard()
        self.optimizer = make_optimizer(self.model, config.optimizer)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast == torch.float16)
        self.generator = torch.Generator().manual_seed(config.seed)
        # what a training step calls and draws augmentations from: a distributed run
        # (dlspec.train.distributed) wraps the model in DDP and gives each process its own
        self.network: nn.Module = self.model
        self.augment_generator = self.generator
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # finished epochs
        self.steps = 0  # optimizer steps of the finished epochs
        if config.task == "binary" and len(splits.classes) != 2:
            self.class_names = ["0", "1"]
        else:
            self.class_names = splits.classes
        self.data = {
            name: (part.x.to(device), self.objective.targets(part.y).to(device))
            for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            if part is not None
        }
        probe = splits.train.x[:2].to(device)
        try:  # fail now, not an epoch later, when the data cannot fit the model's input
            self.augment(probe, torch.Generator().manual_seed(0))
            self.augment.eval(probe)
        except DataError as err:
            raise DataError(err.message, err.path or config.data) from None

    def _shard(self) -> None:
        """Shard the model before the optimiser takes its parameters: nothing in one
        process (a distributed run with strategy fsdp shards it, see
        :mod:`dlspec.train.distributed`)."""

    # one batch ----------------------------------------------------------------------------

    def _inputs(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        batch = self.augment(x, self.augment_generator) if training else self.augment.eval(x)
        return batch.contiguous(memory_format=self.memory_format)

    def _forward(self, *inputs: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """``module`` (default: the model, as trained or evaluated) on ``inputs``, under the
        run's autocast."""
        if module is None:
            module = self.network if self.model.training else self.model
        if self.autocast is None:
            out: torch.Tensor = module(*inputs)
            return out
        with torch.autocast(self.device.type, dtype=self.autocast):
            out = module(*inputs)
        return out

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a batch: returns the (detached) output and mean loss. With
        ``accumulate`` > 1 the batch runs in as many parts, each part's loss weighted by its
        share of the batch, and their gradients summed before the one step."""
        count = self.config.accumulate
        parts = [
            (x_part, y_part)
            for x_part, y_part in zip(x.tensor_split(count), y.tensor_split(count), strict=True)
            if len(y_part)  # a last batch smaller than the parts
        ]
        self.optimizer.zero_grad(set_to_none=True)
        outs, total = [], torch.zeros((), device=x.device)
        for i, (x_part, y_part) in enumerate(parts):
            with self._accumulating(i < len(parts) - 1):
                out, loss = self._loss(x_part, y_part)
                loss = loss * (len(y_part) / len(y))
                self._backward(loss)
            outs.append(out.detach())
            total = total + loss.detach()
        self._apply()
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), total

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and mean loss of (a part of) a batch, in the autograd graph."""
        out = self._forward(x)
        return out, self.objective.loss(out, y)

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _apply(self) -> None:
        """The optimiser's step with the gradients summed since the last."""
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _accumulating(self, more: bool) -> contextlib.AbstractContextManager[None]:
        """Around a part's backward pass: ``more`` parts follow before the step (a
        distributed run then keeps its gradients local)."""
        return contextlib.nullcontext()

    # epochs --------------------------------------------------------------------------------

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), device=self.device, dtype=torch.float64)

    # where a distributed run (dlspec.train.distributed) differs

    @property
    def main(self) -> bool:
        """Whether this process reports and writes the outputs (in a distributed run, rank 0)."""
        return True

    def _batches(self, n: int) -> list[torch.Tensor]:
        """This epoch's batches of the ``n`` training samples: index tensors, in a fresh random
        order (in a distributed run, this process's share of each)."""
        order = torch.randperm(n, generator=self.generator).to(self.device)
        return list(order.split(self.config.batch_size))

    def _total(self, *sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``sums`` over every process of the run (here, the one)."""
        return sums

    def train_epoch(self) -> tuple[float, float | None]:
        """One pass over the training data in a fresh random order: (mean loss, accuracy)."""
        from tqdm import tqdm

        x_all, y_all = self.objective.epoch_data(*self.data["train"], self.generator)
        n = len(x_all)
        batches = self._batches(n)
        loss_sum, correct, seen = self._zero(), self._zero(), 0
        refresh = 1 if self.device.type == "cpu" else 25  # .item() waits for the GPU
        next_line = time.monotonic() + PROGRESS_SECONDS
        self.model.train()
        with tqdm(
            total=len(batches),
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            unit="batch",
            file=sys.stderr,
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        ) as bar:
            for step, index in enumerate(batches, 1):
                y = y_all[index]
                out, loss = self._step(self._inputs(x_all[index], training=True), y)
                loss_sum += loss * len(index)
                seen += len(index)
                if self.objective.classifies:
                    correct += (self.objective.predict(out, y) == y).sum()
                bar.update()
                if self.progress and step % refresh == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
                elif self.progress_lines and time.monotonic() >= next_line:  # logs, CI
                    next_line += PROGRESS_SECONDS
                    print(
                        f"epoch {self.epoch + 1}/{self.config.epochs}: {step}/{len(batches)} "
                        f"batches, loss {loss_sum.item() / seen:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
        loss_sum, correct = self._total(loss_sum, correct)
        accuracy = correct.item() / y_all.numel() if self.objective.classifies else None
        self.steps += len(batches)
        return loss_sum.item() / n, accuracy

    @torch.no_grad()
    def evaluate(self, part: str) -> tuple[float, float | None, torch.Tensor]:
        """Mean loss, accuracy (None for regression) and predictions on ``part``."""
        x_all, y_all = self.data[part]
        n, size = len(x_all), self.config.eval_batch_size
        self.model.eval()
        loss_sum, correct = self._zero(), self._zero()
        predictions = []
        for start in range(0, n, size):
            y = y_all[start : start + size]
            out = self._forward(self._inputs(x_all[start : start + size], training=False))
            loss_sum += self.objective.loss(out, y) * len(y)
            predicted = self.objective.predict(out, y)
            predictions.append(predicted)
            if self.objective.classifies:
                correct += (predicted == y).sum()
        accuracy = correct.item() / y_all.numel() if self.objective.classifies else None
        return loss_sum.item() / n, accuracy, torch.cat(predictions)

    def fit(self) -> bool:
        """Train until ``config.epochs`` epochs are done, checkpointing after each one.
        Returns False when interrupted (Ctrl-C): the checkpoint then holds the weights of the
        moment, and ``--resume`` redoes the unfinished epoch from them."""
        try:
            while self.epoch < self.config.epochs:
                started = time.perf_counter()
                train_loss, train_accuracy = self.train_epoch()
                entry: dict[str, Any] = {
                    "epoch": self.epoch + 1,
                    "train_loss": train_loss,
                    "train_accuracy": train_accuracy,
                    "val_loss": None,
                    "val_accuracy": None,
                }
                if "val" in self.data:
                    entry["val_loss"], entry["val_accuracy"], _ = self.evaluate("val")
                entry |= self.objective.epoch_figures(entry)
                entry["steps"] = self.steps
                entry["seconds"] = round(time.perf_counter() - started, 3)
                self._check_finite(entry)
                self.history.append(entry)
                self.epoch += 1
                self.save()
                self.log(epoch_line(entry, self.config.epochs))
                if self.on_epoch is not None:
                    self.on_epoch(entry)
        except KeyboardInterrupt:
            self._interrupted()
            return False
        return True

    def _interrupted(self) -> None:
        """On Ctrl-C: checkpoint the weights of the moment, if they are finite."""
        if self._finite_weights():
            self.save(partial=True)

    def _finite_weights(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _check_finite(self, entry: Mapping[str, Any]) -> None:
        """Stop a run whose loss or weights became NaN or infinite (it diverged): raise
        :class:`TrainError` before the epoch's checkpoint is written, so the checkpoint on
        disk stays the last finite one."""
        losses = [entry["train_loss"], entry["val_loss"]]
        if all(v is None or math.isfinite(v) for v in losses) and self._finite_weights():
            return
        kept = (
            f"{self.checkpoint_path} keeps epoch {self.epoch}, the last finite one"
            if self.epoch
            else "no checkpoint was written"
        )
        raise TrainError(
            f"training diverged: the loss became {entry['train_loss']} in epoch "
            f"{self.epoch + 1} (NaN or infinite); {kept}. Lower the learning rate "
            "(--lr), normalise the data, or use another optimiser"
        )

    def test(self) -> dict[str, Any]:
        """Test loss and accuracy, and the classification report and confusion matrix (or
        regression errors), on the test split."""
        loss, accuracy, predicted = self.evaluate("test")
        truth = self.data["test"][1].cpu().numpy()
        guess = predicted.cpu().numpy()
        result: dict[str, Any] = {"loss": loss, "accuracy": accuracy}
        result |= self._running_statistics(accuracy)
        return result | self.objective.report(loss, truth, guess, self.class_names)

    def _running_statistics(self, accuracy: float | None) -> dict[str, Any]:
        """Where the test accuracy collapsed against the last epoch's training accuracy
        (under :data:`COLLAPSE` of it) and the model has BatchNorm layers with running
        statistics: the test accuracy with each batch's own statistics instead, and, when
        that recovers at least half of what was lost (the running statistics are the cause),
        a notice that says so and what to do. Nothing otherwise."""
        trained = self.history[-1].get("train_accuracy") if self.history else None
        if accuracy is None or trained is None or accuracy >= COLLAPSE * trained:
            return {}
        norms = running_norms(self.model)
        if not norms:
            return {}
        try:
            with batch_statistics(norms):
                _, batch_accuracy, _ = self.evaluate("test")
        except ValueError:  # a BatchNorm1d over a last batch of one sample has no statistics
            return {}
        assert batch_accuracy is not None
        figures: dict[str, Any] = {"batch_statistics_accuracy": batch_accuracy}
        if batch_accuracy - accuracy >= (trained - accuracy) / 2:
            figures["notice"] = running_statistics_notice(
                accuracy, trained, batch_accuracy, self.steps, norms
            )
        return figures

    @property
    def precision(self) -> str:
        """The arithmetic of the forward pass: fp32, bfloat16 or float16 (autocast)."""
        return "fp32" if self.autocast is None else str(self.autocast).removeprefix("torch.")

    # checkpoints ---------------------------------------------------------------------------

    def _rng(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return state

    def _snapshot(self, partial: bool) -> Checkpoint:
        """The run's state as a checkpoint."""
        return Checkpoint(
            spec_hash=self.spec_hash,
            epoch=self.epoch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            history=self.history,
            rng=self._rng(),
            partial=partial,
            info={**self.info, CLASSES: self.class_names},
        )

    def save(self, partial: bool = False) -> None:
        """Write the checkpoint (atomically)."""
        save_checkpoint(self.checkpoint_path, self._snapshot(partial))

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (made from the same spec)."""
        self._load_weights(checkpoint)
        self.epoch = checkpoint.epoch
        self.history = list(checkpoint.history)
        self.steps = int(self.history[-1].get("steps", 0)) if self.history else 0
        if "torch" in checkpoint.rng:  # imported weights carry no random state
            torch.set_rng_state(checkpoint.rng["torch"])
            self.generator.set_state(checkpoint.rng["generator"])
        if "cuda" in checkpoint.rng and self.device.type == "cuda":
            states = list(checkpoint.rng["cuda"])
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)

    def _load_weights(self, checkpoint: Checkpoint) -> None:
        """The model's and the optimiser's state from ``checkpoint``; the optimiser's settings
        given now (--lr, the spec's optimizer) win over the checkpoint's."""
        groups = checkpoint.optimizer.get("param_groups", [])
        saved = {key for group in groups if isinstance(group, dict) for key in group}
        current = {key for group in self.optimizer.state_dict()["param_groups"] for key in group}
        if checkpoint.optimizer and saved != current:  # imported weights carry no optimiser
            raise TrainError(
                f"{self.checkpoint_path}: the checkpoint was trained with another optimiser "
                f"than {self.config.optimizer.name}; resume with the same optimizer setting, "
                "or run without --resume to start afresh"
            )
        # the state (moments, step counts) is kept
        settings = [
            {key: value for key, value in group.items() if key != "params"}
            for group in self.optimizer.param_groups
        ]
        try:
            self._load_state(checkpoint)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainError(
                f"{self.checkpoint_path}: the checkpoint does not fit this model or optimiser "
                f"({str(exc).splitlines()[0]}); run without --resume to start afresh"
            ) from None
        for group, given in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(given)

    def _load_state(self, checkpoint: Checkpoint) -> None:
        """Load the model's and the optimiser's state: from the checkpoint, or from the
        shards it names (a sharded run's: its optimiser state is there)."""
        shards = checkpoint.state.get(SHARDS)
        if isinstance(shards, str):
            folder = self.checkpoint_path.parent / SHARDS / shards
            load_shards(self.model, self.optimizer, folder, alone=True)
            return
        self.model.load_state_dict(checkpoint.model)
        if checkpoint.optimizer:  # empty for imported weights: the optimiser starts afresh
            self.optimizer.load_state_dict(checkpoint.optimizer)


# ---------------------------------------------------------------------------------------------
# a whole run


def _data_summary(splits: Splits, input_shape: Sequence[int]) -> dict[str, Any]:
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {
        "sizes": {k: len(v) for k, v in parts.items() if v is not None},
        "names": {k: v.name for k, v in parts.items() if v is not None},
        CLASSES: splits.classes,
        "sample_shape": list(splits.train.sample_shape),
        "model_input": list(input_shape),
    }


def train_model(
    make_model: Callable[[], nn.Module],
    config: TrainConfig,
    *,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    spec_hash: str,
    options: RunOptions,
    info: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    token_limit: int | None = None,
    trainer_class: Callable[..., Trainer] = Trainer,
) -> TrainResult:
    """Train a fresh model from ``make_model()`` (called after seeding torch with
    ``config.seed``) on ``config.data``, then test it. ``input_shape`` / ``output_shape`` are
    the model's per-sample input and output shapes; ``token_limit`` bounds the token ids
    the model reads (an Embedding's size; None for a model that reads floats).

    Writes to ``options.out``: ``checkpoint.pt`` after every epoch, then ``metrics.json``
    (``info``, the config, the data, per-epoch history and test metrics) and, with
    ``options.plots``, ``learning_curves.png`` and (classification) ``confusion_matrix.png``.
    On a CPU this calls :func:`keep_freed_memory` (process-wide). ``trainer_class`` runs the
    training (a distributed run's process: its subclass, whose ``main`` alone writes).
    Raises :class:`DataError`, :class:`TrainError` or
    :class:`~dlspec.train.checkpoint.CheckpointError` with a message for the user.
    """
    device = select_device(options.device)
    if device.type == "cpu":
        keep_freed_memory()
    objective = make_objective(config.task)
    splits = objective.load(config, input_shape)
    objective.check(splits, output_shape, config.data, token_limit)
    checkpoint_path = options.out / CHECKPOINT
    checkpoint = load_checkpoint(checkpoint_path, spec_hash) if options.resume else None
    torch.manual_seed(config.seed)
    trainer = trainer_class(
        make_model(),
        config,
        splits,
        input_shape,
        device=device,
        checkpoint_path=checkpoint_path,
        spec_hash=spec_hash,
        progress=not options.quiet and sys.stderr.isatty(),
        progress_lines=not options.quiet and not sys.stderr.isatty(),
        log=_quiet if options.quiet else log,
        token_limit=token_limit,
        info=info,
        on_epoch=options.on_epoch,
    )
    data = _data_summary(splits, input_shape)
    if not options.quiet:
        sizes = ", ".join(f"{k} {v:,}" for k, v in data["sizes"].items())
        noun = trainer.objective.label_noun
        kind = f"{len(splits.classes)} {noun}" if splits.classes else "regression targets"
        source = printable(str(config.data))
        log(f"data: {source} ({sizes}; {kind}); device {device}, {trainer.precision}")
    if checkpoint is not None:
        trainer.restore(checkpoint)
        state = "part of epoch " + str(checkpoint.epoch + 1) if checkpoint.partial else "epoch"
        log(f"resuming from {checkpoint_path}: {checkpoint.epoch} epoch(s) done ({state})")
    if not trainer.fit():
        return TrainResult(epoch=trainer.epoch, interrupted=True)
    test = trainer.test()  # in a sharded run, every process takes part in the forward pass
    if not trainer.main:
        return TrainResult(epoch=trainer.epoch)
    if not math.isfinite(test["loss"]):  # weights huge but finite: outputs overflow
        raise TrainError(
            f"training diverged: the test loss is {test['loss']} (NaN or infinite) after "
            f"{trainer.epoch} epoch(s); lower the learning rate (--lr), normalise the data, "
            "or use another optimiser"
        )
    metrics: dict[str, Any] = {
        **(info or {}),
        SPEC_HASH: spec_hash,
        CONFIG: config.model_dump(mode="json")
        | {"optimizer": {"name": config.optimizer.name, **config.optimizer.torch_kwargs()}},
        "device": str(device),
        "precision": trainer.precision,
        "channels_last": trainer.channels_last,
        DATA: data,
        "epochs": trainer.history,
        "test": test,
    }
    write_json(options.out / METRICS_JSON, metrics)
    if options.plots:
        title = str((info or {}).get(MODEL, ""))
        plot_learning_curves(trainer.history, options.out / CURVES_PNG, title)
        if "confusion_matrix" in metrics["test"]:
            matrix = metrics["test"]["confusion_matrix"]
            plot_confusion_matrix(matrix, trainer.class_names, options.out / CONFUSION_PNG)
    return TrainResult(epoch=trainer.epoch, metrics=metrics)

"""Classify inputs with an exported ONNX model: the top classes and their probabilities.

dlspec predict model.onnx INPUT... runs ONNX Runtime on image files (PNG, JPEG, ...: one
sample each) and .npz files (an array per model input, named like it, or the only array / `x`
for a one-input model; a batch of samples or one sample). Images and float arrays are fitted to
the model's input shape (resized, channels adapted, flattened) and normalised as the model was
trained, when its metadata says so (`dlspec export` records it). Each sample prints the top-k
classes, by the softmax of the model's first output (a sequence output: its last step).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlspec.commands.bounded import MAX_MEMORY, add_limits, run_bounded
from dlspec.commands.common import add_run_arguments, positive_int
from dlspec.commands.output import Output, add_output_arguments
from dlspec.records import Normalize, RecordError, export_metadata

if TYPE_CHECKING:
    import torch

    from dlspec.backends.runtime import Session, SessionTensor

EPILOG = """\
ONNX Runtime runs the model in a child process bounded by --timeout and --max-memory: an .onnx
file is a program (a Loop can run 2**62 times, a ConstantOfShape allocate terabytes), and a
model file from elsewhere must not hang or exhaust the machine. The memory bound applies on
the CPU only (CUDA maps more address space than any such bound allows).

exit codes: 0 done, 1 an unreadable model or input, an input that does not fit the model, or a
model that ran past a limit, 2 usage."""

CHUNK = 256  # samples per ONNX Runtime call
TIMEOUT = 600  # seconds ONNX Runtime may run a user's model, all inputs together


class InputError(Exception):
    """An input that cannot be read or does not fit the model; the message says which."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("model", type=Path, help="an .onnx file written by `dlspec export`")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image or .npz")
    parser.add_argument(
        "--top", "-k", type=positive_int, default=3, help="classes to show (default 3)"
    )
    add_output_arguments(parser, "one object per sample (JSON lines)")
    add_run_arguments(parser)
    add_limits(parser, "ONNX Runtime", TIMEOUT, MAX_MEMORY)


def _sample_shape(info: SessionTensor) -> tuple[int | str | None, ...]:
    return info.shape[1:]


def _text(shape: Sequence[object]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _read_image(path: Path, channels: int) -> torch.Tensor:
    """An image file as a (1, C, H, W) float batch in [0, 1]; grayscale stays one channel
    unless the model wants three (fit_to_input adapts channels either way)."""
    import torch

    from dlspec.train.data import DataError, open_image

    try:
        with open_image(path) as image:
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "F") or channels == 1
            pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.float32)
    except DataError as exc:
        raise InputError(str(exc)) from None
    array = pixels[None, None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)[None]
    return torch.from_numpy(array / np.float32(255))


def _read_npz(path: Path, inputs: Sequence[SessionTensor]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file for each model input (by name; a one-input model also takes
    the only array, or ``x``)."""
    from dlspec.train.data import DataError, read_npz

    try:
        arrays = read_npz(path)
    except DataError as exc:
        raise InputError(str(exc)) from None
    names = [info.name for info in inputs]
    if all(name in arrays for name in names):
        return {name: arrays[name] for name in names}
    if len(names) == 1 and (len(arrays) == 1 or "x" in arrays):
        return {names[0]: arrays["x"] if "x" in arrays else next(iter(arrays.values()))}
    raise InputError(
        f"{path}: holds {', '.join(arrays) or 'no arrays'}; the model needs "
        f"{', '.join(names)} (name the arrays after the model's inputs)"
    )


Stats = float | tuple[float, ...]  # a Normalize mean or std: one value, or one per channel


def _check_shape(name: str, shape: Sequence[int], sample: Sequence[object]) -> None:
    """Samples of ``shape`` must match the model's per-sample input wherever it is fixed."""
    if len(shape) != len(sample) or any(
        isinstance(d, int) and d != n for d, n in zip(sample, shape, strict=True)
    ):
        raise InputError(
            f"{name}: samples of shape {_text(shape)} do not fit the model's input {_text(sample)}"
        )


def _fit(
    name: str, x: np.ndarray, info: SessionTensor, normalize: tuple[Stats, Stats] | None
) -> np.ndarray:
    """One model input's batch: token ids checked against the input's shape; floats fitted to
    it (resized, channels adapted, flattened: ``fit_to_input``) and normalised as in
    training (``Augment.eval``)."""
    import torch

    from dlspec.train.data import DataError
    from dlspec.train.transforms import Augment

    sample = _sample_shape(info)
    if x.ndim == len(sample):  # one sample without its batch axis
        x = x[None]
    if x.ndim and len(x) == 0:
        raise InputError(f"{name}: holds no samples")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise InputError(f"{name}: holds {bad:,} NaN or infinite value(s)")
    if np.issubdtype(info.dtype, np.integer):
        if not np.issubdtype(x.dtype, np.integer):
            raise InputError(f"{name}: the model takes token ids (integers), got {x.dtype}")
        _check_shape(name, x.shape[1:], sample)
        return x.astype(info.dtype)
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{name}: expected numbers, got {x.dtype}")
    scale = np.float32(1 / 255) if x.dtype == np.uint8 else np.float32(1)
    with np.errstate(over="ignore"):  # float64 beyond float32: inf, refused after the run
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) * scale)
    fixed = [d for d in sample if isinstance(d, int)]
    mean, std = normalize if normalize else (None, None)
    augment = Augment(tuple(fixed) if len(fixed) == len(sample) else None, mean=mean, std=std)
    try:
        fitted = augment.eval(batch)
    except DataError as exc:
        raise InputError(f"{name}: {exc.message}") from None
    _check_shape(name, fitted.shape[1:], sample)
    return fitted.numpy()


def _normalization(normalize: Normalize | None) -> tuple[Stats, Stats] | None:
    """The metadata's mean and std (numbers or lists), or None."""
    if normalize is None:
        return None

    def stats(value: float | list[float]) -> Stats:
        return tuple(value) if isinstance(value, list) else value

    return stats(normalize.mean), stats(normalize.std)


def _batches(
    paths: Sequence[Path], session: Session, normalize: tuple[Stats, Stats] | None
) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
    """(sample labels, model feeds) per input file."""
    from dlspec.train.data import IMAGE_SUFFIXES

    inputs = session.inputs
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays = _read_npz(path, inputs)
        elif suffix in IMAGE_SUFFIXES:
            image_input = len(inputs) == 1 and len(_sample_shape(inputs[0])) in (1, 3)
            if not image_input or np.issubdtype(inputs[0].dtype, np.integer):
                raise InputError(f"{path}: this model does not take images; give an .npz file")
            sample = _sample_shape(inputs[0])
            channels = sample[0] if len(sample) == 3 and isinstance(sample[0], int) else 3
            arrays = {inputs[0].name: _read_image(path, channels).numpy()}
        else:
            raise InputError(f"{path}: unsupported file type; give images or .npz files")
        feeds = {
            info.name: _fit(f"{path}: {info.name}", arrays[info.name], info, normalize)
            for info in inputs
        }
        count = {len(v) for v in feeds.values()}
        if len(count) != 1:
            raise InputError(f"{path}: the arrays hold different numbers of samples")
        n = count.pop()
        yield ([str(path)] if n == 1 else [f"{path}[{i}]" for i in range(n)]), feeds


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _predictions(
    labels: Sequence[str], output: np.ndarray, classes: Sequence[str], top: int
) -> list[dict[str, Any]]:
    """One record per sample: the ``top`` classes by softmax probability (the last step's,
    for a sequence output), or the value itself when the output has one score per sample."""
    if output.ndim == 1:  # a scalar per sample
        output = output[:, None]
    scores = output.reshape(len(labels), -1, output.shape[-1])[:, -1].astype(np.float64)
    if scores.shape[-1] == 1:  # one score per sample: no classes to rank
        return [
            {"input": label, "value": float(value)}
            for label, value in zip(labels, scores[:, 0], strict=True)
        ]
    records = []
    for label, p in zip(labels, _softmax(scores), strict=True):
        best = np.argsort(-p, kind="stable")[:top]
        names = [classes[i] if i < len(classes) else str(i) for i in best]
        ranked = [
            {"class": n, "probability": float(p[i])} for n, i in zip(names, best, strict=True)
        ]
        records.append({"input": label, "top": ranked})
    return records


def _line(record: dict[str, Any]) -> str:
    if "value" in record:
        return f"{record['input']}: {record['value']:.4g}"
    ranked = ", ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in record["top"])
    return f"{record['input']}: {ranked}"


def run(args: argparse.Namespace) -> int:
    if not args.model.is_file():
        print(f"dlspec predict: {args.model}: no such file", file=sys.stderr)
        return 1
    import dlspec.train.transforms  # noqa: F401 (torch, for the inputs: mapped outside the bound)

    return run_onnx(args, lambda: _predict(args), args.model, "predict")


def run_onnx(args: argparse.Namespace, job: Callable[[], int], model: Path, name: str) -> int:
    """``job`` (which runs ONNX Runtime on a user's ``model``) in a child process bounded by
    ``--timeout`` and, where the session runs on the CPU, ``--max-memory`` (default
    :data:`MAX_MEMORY`)."""
    import onnxruntime  # noqa: F401 (its libraries mapped here, outside the memory bound)

    from dlspec.backends.runtime import gpu_present

    on_cpu = args.device == "cpu" or (args.device == "auto" and not gpu_present())
    return run_bounded(
        job,
        seconds=args.timeout,
        memory=(args.max_memory or MAX_MEMORY) if on_cpu else None,
        what=f"ONNX Runtime on {model}",
        name=name,
        hint="a graph that loops or computes without end?",
        writes=False,
    )


def _predict(args: argparse.Namespace) -> int:
    """Predict ``args.inputs`` with ``args.model``: the job of the bounded child process."""
    from dlspec.backends.runtime import RuntimeSetupError, Session

    try:
        session = Session(args.model, device=args.device, threads=args.threads)
    except RuntimeSetupError as exc:
        print(f"dlspec predict: {args.model}: {exc}", file=sys.stderr)
        return 1
    out = Output(args)
    if session.notice:
        out.note(session.notice)
    try:
        metadata = export_metadata(session.metadata, str(args.model))
    except RecordError as exc:
        print(f"dlspec predict: {exc}", file=sys.stderr)
        return 1
    classes = metadata.classes or []
    normalize = _normalization(metadata.normalize)
    try:
        for labels, feeds in _batches(args.inputs, session, normalize):
            for start in range(0, len(labels), CHUNK):
                chunk = {k: v[start : start + CHUNK] for k, v in feeds.items()}
                try:
                    output = session.run(chunk)[0]
                except Exception as exc:  # ONNX Runtime's own types: e.g. ids out of range
                    message = str(exc).strip().splitlines()[0]
                    raise InputError(f"{labels[start]}: ONNX Runtime failed: {message}") from None
                if not np.isfinite(output).all():  # softmax of NaN would print NaN percentages
                    raise InputError(
                        f"{labels[start]}: the model's output holds NaN or infinite values "
                        "(inputs far outside what the model was trained on?)"
                    )
                for record in _predictions(
                    labels[start : start + CHUNK], output, classes, args.top
                ):
                    out.result(_line(record))
                    out.emit(record)
    except InputError as exc:
        print(f"dlspec predict: {exc}", file=sys.stderr)
        return 1
    return 0

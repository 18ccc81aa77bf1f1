"""What a training run reports: test metrics (scikit-learn), ``metrics.json``, PNG plots of the
learning curves and the confusion matrix (matplotlib, Agg, no display needed), and the lines
printed per epoch. Every file is written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlspec.train.checkpoint import atomic_file

__all__ = [
    "classification_metrics",
    "epoch_line",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "regression_metrics",
    "write_json",
]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Precision / recall / F1 per class (scikit-learn's ``classification_report``, as a dict
    and as text) and the confusion matrix (rows: true class, columns: predicted), over all
    ``classes`` even when some do not occur in the test set."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = list(range(len(classes)))
    names = [str(c) for c in classes]
    options: dict[str, Any] = {"labels": labels, "target_names": names, "zero_division": 0}
    return {
        "report": classification_report(y_true, y_pred, output_dict=True, **options),
        "report_text": classification_report(y_true, y_pred, digits=3, **options),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Mean squared and absolute error and the coefficient of determination R²."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "mse": float(mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
    }


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON, written atomically (NaN becomes null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(clean(data), indent=2) + "\n", encoding="utf-8")


def _percent(value: float | None) -> str:
    return "" if value is None else f"  acc {100 * value:6.2f}%"


def _perplexity(value: float | None) -> str:
    return "" if value is None else f"  ppl {value:.2f}"


def epoch_line(entry: Mapping[str, Any], epochs: int) -> str:
    """One epoch's figures as a line: ``epoch 2/5  train loss 0.2100  acc 93.10%  val ...``
    (with ``ppl 3.21``, the perplexity, after each loss where the entry has it)."""
    width = len(str(epochs))
    text = f"epoch {entry['epoch']:>{width}}/{epochs}  train loss {entry['train_loss']:.4f}"
    text += _perplexity(entry.get("train_perplexity")) + _percent(entry.get("train_accuracy"))
    if entry.get("val_loss") is not None:
        text += f"  |  val loss {entry['val_loss']:.4f}{_perplexity(entry.get('val_perplexity'))}"
        text += _percent(entry.get("val_accuracy"))
    return text + f"  ({entry['seconds']:.1f} s)"


def _save(figure: Any, path: str | os.PathLike[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)


def plot_learning_curves(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> None:
    """Loss (and accuracy, for classification) per epoch, training and validation, as a PNG."""
    from matplotlib.figure import Figure

    epochs = [entry["epoch"] for entry in history]
    accuracy = any(entry.get("train_accuracy") is not None for entry in history)
    figure = Figure(figsize=(10 if accuracy else 5.5, 4), layout="constrained")
    axes = figure.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if accuracy else [])
    for ax, (key, label) in zip(axes, panels, strict=True):
        for part, style in (("train", "o-"), ("val", "s--")):
            values = [entry.get(f"{part}_{key}") for entry in history]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label="training" if part == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: len(epochs) // 10])
    if title:
        figure.suptitle(title)
    _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "confusion matrix (test set)",
) -> None:
    """The confusion matrix as a heat map with the counts written in (up to 30 classes)."""
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    k = len(classes)
    size = min(14.0, 3 + 0.45 * k)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(k)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        threshold = counts.max() / 2 if counts.size else 0
        for i in range(k):
            for j in range(k):
                colour = "white" if counts[i, j] > threshold else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    _save(figure, path)

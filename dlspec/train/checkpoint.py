"""Training checkpoints, and the atomic file writes every output of ``dlspec build`` uses.

A checkpoint holds only tensors and plain containers (loaded with ``weights_only=True``):
the model's and the optimiser's state, the number of finished epochs, the metrics history,
the random-number states (so that a resumed run continues as an uninterrupted one would) and
the hash of the spec it was made from; loading it for another spec is refused. Its ``info``
says what the run was (the spec's text and parameter values, the data's class names or
vocabulary), so that ``dlspec sample`` can rebuild the model from the checkpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlspec.analysis.limits import physical_memory
from dlspec.analysis.render import human_bytes
from dlspec.files import atomic_file

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_file",
    "load_checkpoint",
    "load_shards",
    "save_checkpoint",
    "save_shards",
    "spec_hash",
]


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or made from another spec; the message says
    which file and what to do."""


def spec_hash(text: str, params: Mapping[str, Any]) -> str:
    """sha256 of the spec's text and its parameter values (after ``--set``): what decides the
    model's architecture, and so whether a checkpoint fits it."""
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(json.dumps(dict(params), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """What a checkpoint file holds. ``epoch`` counts finished epochs; ``partial`` is True when
    the run was interrupted during the next one (the weights are from the middle of it)."""

    spec_hash: str
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    history: list[dict[str, Any]]
    rng: dict[str, torch.Tensor]
    partial: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # plain values: str, numbers, lists
    # a task's further training state, e.g. a diffusion run's raw weights when ``model``
    # holds their moving average (the weights it samples with)
    state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically; OSError when it cannot be written (the
    file at ``path`` is then left as it was)."""
    payload = {
        "format": 1,
        "spec_hash": checkpoint.spec_hash,
        "epoch": checkpoint.epoch,
        "partial": checkpoint.partial,
        "model": checkpoint.model,
        "optimizer": checkpoint.optimizer,
        "history": checkpoint.history,
        "rng": checkpoint.rng,
        "info": checkpoint.info,
        "state": checkpoint.state,
    }
    with atomic_file(path) as temporary:
        try:
            torch.save(payload, temporary)
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "write failed"
            raise OSError(f"{reason} (is the disk full?)") from None


def _invalid(payload: dict[str, Any]) -> str | None:
    """What is wrong with a loaded checkpoint's fields (types, finiteness), or None."""
    epoch = payload["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch is {epoch!r}, not a whole number >= 0"
    expected = {
        "spec_hash": str,
        "model": dict,
        "optimizer": dict,
        "history": list,
        "rng": dict,
        "partial": bool,
        "info": dict,
    }
    for key, kind in expected.items():
        if key in payload and not isinstance(payload[key], kind):
            return f"{key} is a {type(payload[key]).__name__}, not a {kind.__name__}"
    if not all(isinstance(e, dict) for e in payload["history"]):
        return "history holds entries that are not records of epochs"
    for name, value in [*payload["model"].items(), *payload["rng"].items()]:
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            return f"{name!r} is not a tensor"
    for name, tensor in payload["model"].items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"the weights {name} hold NaN or infinite values"
    return None


def load_checkpoint(path: str | os.PathLike[str], expected_hash: str | None) -> Checkpoint:
    """Read a checkpoint made from the spec whose :func:`spec_hash` is ``expected_hash``.

    Raises :class:`CheckpointError` when the file is missing, is not a dlspec checkpoint or
    was made from another spec (or other ``--set`` values); ``expected_hash`` None accepts
    any spec (the caller checks the checkpoint's ``info``)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"{file}: no checkpoint to resume from (a build writes one after every epoch); "
            "run without --resume to start afresh"
        )
    size, memory = file.stat().st_size, physical_memory()
    if size > memory:  # reading it would exhaust the machine before anything is checked
        raise CheckpointError(
            f"{file}: {human_bytes(size)}, more than this machine's memory "
            f"({human_bytes(memory)}); it cannot be loaded here"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's notes on foreign pickles
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises anything from KeyError to RuntimeError
        reason = str(exc).strip().split("\n")[0][:120] or type(exc).__name__
        raise CheckpointError(
            f"{file}: cannot read the checkpoint, it is corrupt, truncated or not a checkpoint "
            f"({reason}); delete it, or run without --resume to start afresh"
        ) from None
    keys = ("spec_hash", "epoch", "model", "optimizer", "history", "rng")
    if not isinstance(payload, dict) or any(key not in payload for key in keys):
        raise CheckpointError(f"{file}: not a dlspec checkpoint (missing {', '.join(keys)})")
    problem = _invalid(payload)
    if problem:
        raise CheckpointError(
            f"{file}: the checkpoint is damaged ({problem}); delete it, or run without "
            "--resume to start afresh"
        )
    if expected_hash is not None and payload["spec_hash"] != expected_hash:
        raise CheckpointError(
            f"{file}: this checkpoint was made from a different spec (or other --set values), "
            "so its weights do not fit this model; run without --resume to start afresh, or "
            "choose another --out directory"
        )
    return Checkpoint(
        spec_hash=payload["spec_hash"],
        epoch=int(payload["epoch"]),
        model=payload["model"],
        optimizer=payload["optimizer"],
        history=list(payload["history"]),
        rng=dict(payload["rng"]),
        partial=bool(payload.get("partial", False)),
        info=dict(payload.get("info", {})),
        state=dict(payload.get("state", {})),
    )


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write the model's and the optimiser's state to ``folder`` with
    ``torch.distributed.checkpoint``: in a sharded run, every process its own shards (a
    collective: all of them call it)."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dsd

    weights, moments = dsd.get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": moments}, checkpoint_id=folder)


def load_shards(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, alone: bool
) -> None:
    """Load what :func:`save_shards` wrote into ``model`` and ``optimizer``, resharded to
    them: sharded over any number of processes (all of them call it), or whole in one
    process (``alone``: no collective, though a process group may exist)."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dsd

    if not (folder / ".metadata").is_file():
        raise CheckpointError(
            f"{folder}: the shards this checkpoint names are missing (a sharded run's "
            "optimizer state is there); run without --resume to start afresh"
        )
    weights, moments = dsd.get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # alone, without a process group: as meant
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load({"model": weights, "optimizer": moments}, checkpoint_id=folder, no_dist=alone)
    dsd.set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments)

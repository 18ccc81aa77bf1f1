"""Data-parallel training over torch.distributed: one process per GPU (NCCL) or per CPU core
(gloo), each holding a replica of the model wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (DDP).

:func:`train_distributed` is :func:`~dlspec.train.loop.train_model` for one process of a
torchrun job (started by ``dlspec build --nproc-per-node`` or by ``torchrun -m dlspec build``,
see :mod:`dlspec.train.launch`), training with :class:`DistributedTrainer`:

* Data: every process holds the whole data set (the loop keeps it in memory). Each epoch all
  processes draw the same random order (their shuffle generators are seeded alike and serve
  nothing else) and cut it into global batches of ``batch_size``; each process trains on its
  contiguous share of every batch (:func:`shares`): DistributedSampler's semantics, batch by
  batch. A last batch smaller than the number of processes joins the batch before it, so
  that every process has a share of every batch.
* Gradients: DDP all-reduces them during the backward pass, through a hook
  (:func:`weighted_average`) that weights each process's mean-loss gradient by its share of
  the batch: the update is the single-process update on the whole batch, even when the batch
  does not divide evenly among the processes.
  BatchNorm layers normalise over each process's share (torch has no SyncBatchNorm on CPUs).
* Figures: training loss and accuracy are sums all-reduced over the processes, so they cover
  the whole training set; every process validates on the whole validation split (the same
  weights, the same figures), rank 0 alone tests.
* Randomness: dropout and augmentation draw from generators seeded by (seed, epoch, rank), so
  they differ between processes, and a resumed run continues as the uninterrupted one would
  with the same number of processes.
* Outputs: rank 0 alone shows progress and writes checkpoints (the unwrapped model's
  ``state_dict``: the same file as a single-process run), ``metrics.json`` and the plots.
  On ``--resume`` rank 0 reads the checkpoint and hands it to the others, so the other
  machines need no copy, and a checkpoint resumes with any number of processes.
* Failures: a process that dies makes torchrun's agent stop the others within a second; one
  that hangs makes the others' collectives time out after :func:`collective_timeout`.

With ``strategy = "fsdp"`` the model is not replicated but sharded (:func:`shard_model`,
torch's FSDP2 ``fully_shard``): each block use of the spec is a unit, then the root; every
process holds 1/N of every parameter, gradient and optimiser state (as ``dlspec plan --gpus N
--strategy fsdp`` counts them). The batch is shared out as above, each process's loss
weighted by its share, and FSDP's reduce-scatter averages the gradients. Under bf16/fp16
the gathered parameters are in that precision and gradients are reduced in fp32. Every
process validates and tests (the forward pass needs them all). Checkpoints: after every
epoch each process writes its own shards with ``torch.distributed.checkpoint`` (into
``checkpoint.shards/epoch-N``), then rank 0 writes ``checkpoint.pt`` with the whole
``state_dict`` (what ``export`` and ``predict`` read), naming those shards; ``--resume``
loads them, resharded to any number of processes (on several machines, every process must
read and write the same ``--out`` folder: a shared file system). A run interrupted mid-epoch
resumes from its last finished epoch.
"""

# Annotations stay evaluated (no `from __future__ import annotations`): DDP checks that its
# communication hook's annotations are the real GradBucket and Future types.
import contextlib
import dataclasses
import functools
import gc
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

from dlspec.analysis.train_config import TrainConfig
from dlspec.train.checkpoint import Checkpoint, load_shards, save_checkpoint, save_shards
from dlspec.train.launch import Worker
from dlspec.train.loop import (
    RunOptions,
    Splits,
    Trainer,
    TrainError,
    TrainResult,
    select_device,
    train_model,
)
from dlspec.train.run_dir import SHARDS

__all__ = [
    "FAULT_VARIABLE",
    "TIMEOUT_VARIABLE",
    "DistributedTrainer",
    "collective_timeout",
    "process_group",
    "shard_model",
    "shares",
    "train_distributed",
    "weighted_average",
    "worker_device",
]

#: Seconds a collective waits for the other processes before it fails (default 60).
TIMEOUT_VARIABLE = "DLSPEC_DIST_TIMEOUT"
#: A test hook: ``RANK:raise`` or ``RANK:hang`` makes that rank fail, or stop answering, at
#: its second training step (tests/test_distributed.py checks that the job still ends).
FAULT_VARIABLE = "DLSPEC_TEST_FAULT"


def collective_timeout() -> timedelta:
    """How long a collective (and joining the group) may wait: ``DLSPEC_DIST_TIMEOUT`` seconds,
    default 60. Rank 0 writes the checkpoint while the others wait at the next step: raise it
    for a model whose checkpoint takes longer to write."""
    text = os.environ.get(TIMEOUT_VARIABLE, "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise TrainError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def worker_device(worker: Worker, name: str) -> torch.device:
    """The device of ``worker`` for ``--device name``: the GPU of its local rank for ``auto``
    (when there is CUDA) and ``cuda``; the CPU for ``cpu``."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count()
        if worker.local_rank >= gpus:
            raise TrainError(
                f"the process with local rank {worker.local_rank} has no GPU (this machine has "
                f"{gpus}); start at most {gpus} process(es) per machine, or use --device cpu"
            )
        return torch.device("cuda", worker.local_rank)
    device = select_device(name)
    if device.type == "cuda" and worker.local_world_size > 1:
        raise TrainError(
            f"--device {name}: each process takes the GPU of its local rank; use --device cuda"
        )
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[str]:
    """Join the torchrun job's process group (gloo on a CPU, NCCL on CUDA, with
    :func:`collective_timeout`) for the duration of the block; yields the backend's name."""
    if not dist.is_available():
        raise TrainError("this build of torch has no torch.distributed; train in one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = collective_timeout()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout, device_id=device)
    else:
        dist.init_process_group(backend, timeout=timeout)
    try:
        yield backend
    except BaseException:
        if backend == "gloo":  # local and quick; NCCL's teardown could wait on failed peers
            _leave_group()
        raise
    _leave_group()


def _leave_group() -> None:
    """Destroy the process group while Python is fully alive: first collect the garbage, for
    a DDP wrapper (in reference cycles) holds the group, whose threads would otherwise be torn
    down with the interpreter (an abort: 'terminate called without an active exception')."""
    gc.collect()
    dist.destroy_process_group()


def shares(
    batches: Sequence[torch.Tensor], rank: int, processes: int
) -> list[tuple[torch.Tensor, float]]:
    """Process ``rank``'s part of each of the global ``batches`` (index tensors), with its
    weight.

    A batch is cut into ``processes`` contiguous parts whose sizes differ by at most one; a
    last batch with fewer samples than processes first joins the batch before it, so that
    every process has a part of every batch. The weight, ``len(part) * processes /
    len(batch)`` (1 when the batch divides evenly), makes the average over the processes of
    their parts' mean-loss gradients equal the whole batch's mean-loss gradient."""
    batches = list(batches)
    if len(batches) > 1 and len(batches[-1]) < processes:
        batches[-2:] = [torch.cat(batches[-2:])]
    result = []
    for batch in batches:
        part = batch.tensor_split(processes)[rank]
        result.append((part, len(part) * processes / len(batch)))
    return result


@dataclasses.dataclass
class _ShareWeight:
    """The state of :func:`weighted_average`: the weight of this process's current share."""

    processes: int
    weight: float = 1.0


def weighted_average(
    state: _ShareWeight, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: sum over the processes of gradient x weight / processes, which
    is DDP's plain average when the shares are equal (see :func:`shares`)."""
    buffer = bucket.buffer()
    buffer.mul_(state.weight / state.processes)
    work = dist.all_reduce(buffer, async_op=True)
    assert work is not None  # async_op=True always returns the pending work
    return work.get_future().then(lambda done: done.value()[0])


def shard_model(
    model: nn.Module, units: Sequence[str], dtype: torch.dtype | None, device: torch.device
) -> None:
    """FSDP2: ``fully_shard`` the modules at ``units`` (module paths, in order), then the
    whole model, over all the processes of the group, on ``device``'s type (CPU: gloo, CUDA:
    NCCL); ``dtype``: the precision the gathered parameters compute in (None: as they are),
    gradients being reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    # FSDP shards contiguous parameters only: a channels-last model's convolution weights go
    # back to the standard layout (its batches stay channels-last)
    for param in model.parameters():
        param.data = param.data.contiguous()
    for path in units:
        fully_shard(model.get_submodule(path), mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _seed(*numbers: int) -> int:
    """A seed for a generator, derived from ``numbers`` (the same in every process)."""
    digest = hashlib.sha256("/".join(map(str, numbers)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class DistributedTrainer(Trainer):
    """A :class:`~dlspec.train.loop.Trainer` for one process of a data-parallel run (see the
    module's description); the process group must be joined (:func:`process_group`)."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        splits: Splits,
        input_shape: Sequence[int],
        units: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self.rank, self.processes = dist.get_rank(), dist.get_world_size()
        self.sharded = config.strategy == "fsdp"
        self.units = list(units)  # FSDP's units below the root (module paths)
        if min(config.batch_size, len(splits.train)) < self.processes:
            raise TrainError(
                f"{self.processes} processes need a batch_size and a training set of at least "
                f"{self.processes} samples each (batch_size {config.batch_size}, "
                f"{len(splits.train)} training samples)"
            )
        super().__init__(model, config, splits, input_shape, **kwargs)
        self.augment_generator = torch.Generator()  # one per process; self.generator shuffles
        self._share_weight = _ShareWeight(self.processes)
        if not self.sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
            self.network.register_comm_hook(self._share_weight, weighted_average)
        self._weights: Iterator[float] = iter(())
        self._checkpoint: Checkpoint | None = None  # rank 0's, to hand to the others
        self._fault = self._read_fault()
        self._steps = 0

    @property
    def main(self) -> bool:
        """Rank 0 reports and writes; the other processes only train."""
        return self.rank == 0

    def _read_fault(self) -> str | None:
        rank, _, mode = os.environ.get(FAULT_VARIABLE, "").partition(":")
        return mode if rank == str(self.rank) and mode in ("raise", "hang") else None

    def _inject_fault(self) -> None:
        """The :data:`FAULT_VARIABLE` test hook, at this process's second step."""
        self._steps += 1
        if self._steps == 2 and self._fault == "raise":
            raise RuntimeError(f"{FAULT_VARIABLE}: rank {self.rank} fails on purpose")
        if self._steps == 2 and self._fault == "hang":
            time.sleep(3600)

    def _batches(self, n: int) -> list[torch.Tensor]:
        parts = shares(super()._batches(n), self.rank, self.processes)
        self._weights = iter([weight for _, weight in parts])
        return [part for part, _ in parts]

    def _shard(self) -> None:
        if self.sharded:
            shard_model(self.model, self.units, self.autocast, self.device)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._share_weight.weight = next(self._weights)
        if self._fault is not None:
            self._inject_fault()
        return super()._step(x, y)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.sharded:  # what weighted_average does to DDP's gradients
            loss = loss * self._share_weight.weight
        super()._backward(loss)

    @contextlib.contextmanager
    def _accumulating(self, more: bool) -> Iterator[None]:
        if self.sharded:  # FSDP reduce-scatters the summed gradients after the last part
            self.model.set_requires_gradient_sync(not more)  # type: ignore[operator]
            yield
        elif more and isinstance(self.network, nn.parallel.DistributedDataParallel):
            with self.network.no_sync():
                yield
        else:
            yield

    def _finite_weights(self) -> bool:
        if not self.sharded:
            return super()._finite_weights()
        from torch.distributed.tensor import DTensor

        local = [p.to_local() if isinstance(p, DTensor) else p for p in self.model.parameters()]
        finite = torch.tensor(float(all(bool(torch.isfinite(p).all()) for p in local)))
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def test(self) -> dict[str, Any]:
        # a sharded model's forward pass needs every process; a replica's, rank 0 alone
        return super().test() if self.sharded or self.main else {}

    def _total(self, *sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stacked = torch.stack(sums)
        dist.all_reduce(stacked)
        return tuple(stacked.unbind())

    def train_epoch(self) -> tuple[float, float | None]:
        seed = _seed(self.config.seed, self.epoch, self.rank)
        torch.manual_seed(seed)  # dropout (on every device)
        self.augment_generator.manual_seed(seed)
        return super().train_epoch()

    def _interrupted(self) -> None:
        if not self.sharded:  # the others may be gone: a sharded run resumes from its last epoch
            super()._interrupted()

    def save(self, partial: bool = False) -> None:
        if not self.sharded:
            if self.main:
                super().save(partial)
            return
        from torch.distributed.checkpoint import state_dict as dsd

        folder = self.checkpoint_path.parent / SHARDS / f"epoch-{self.epoch}"
        if self.main and folder.exists():  # a killed run's, half-written
            shutil.rmtree(folder)
        dist.barrier()
        save_shards(self.model, self.optimizer, folder)
        whole = dsd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = dsd.get_model_state_dict(self.model, options=whole)  # rank 0's
        if self.main:
            snapshot = self._snapshot(partial)
            snapshot.model, snapshot.optimizer = weights, {}
            snapshot.state[SHARDS] = folder.name
            save_checkpoint(self.checkpoint_path, snapshot)
            for old in folder.parent.iterdir():  # the shards no checkpoint names any more
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)

    def _load_state(self, checkpoint: Checkpoint) -> None:
        shards = checkpoint.state.get(SHARDS)
        if not self.sharded:  # rank 0 alone (others: from what it hands them, see restore)
            super()._load_state(checkpoint)
        elif isinstance(shards, str):  # each process its shards, resharded to this many
            folder = self.checkpoint_path.parent / SHARDS / shards
            load_shards(self.model, self.optimizer, folder, alone=False)
        else:  # a replicated run's checkpoint, whole in every process
            from torch.distributed.checkpoint import state_dict as dsd

            whole = dsd.StateDictOptions(full_state_dict=True)
            dsd.set_model_state_dict(self.model, checkpoint.model, options=whole)
            if checkpoint.optimizer:
                optimizer = _by_name(self.model, checkpoint.optimizer)
                dsd.set_optimizer_state_dict(self.model, self.optimizer, optimizer, options=whole)

    def restore(self, checkpoint: Checkpoint) -> None:
        if self.sharded:  # every process loads its shards (fit)
            self._checkpoint = checkpoint
            return
        super().restore(checkpoint)
        # the others get the state rank 0 loaded, the optimiser's from shards included
        state = {k: v for k, v in checkpoint.state.items() if k != SHARDS}
        optimizer = self.optimizer.state_dict()
        self._checkpoint = dataclasses.replace(checkpoint, optimizer=optimizer, state=state)

    def fit(self) -> bool:
        """Take rank 0's state (the checkpoint it resumed from, if any), then train."""
        checkpoint = self._checkpoint
        if self.sharded and checkpoint is not None and checkpoint.state.get(SHARDS):
            checkpoint = dataclasses.replace(checkpoint, model={})  # in the shards
        handed = [checkpoint]
        dist.broadcast_object_list(handed, src=0)
        if (self.sharded or not self.main) and handed[0] is not None:
            super().restore(handed[0])
        self._checkpoint = None
        try:
            return super().fit()
        finally:
            self.network = self.model  # training is over: let DDP go (see _leave_group)


def _by_name(model: nn.Module, state: Mapping[str, Any]) -> dict[str, Any]:
    """A plain optimiser ``state_dict`` (parameters numbered in the order
    :func:`~dlspec.train.loop.make_optimizer` takes them) with the parameters named instead,
    as ``torch.distributed.checkpoint.state_dict`` reads it."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def train_distributed(
    worker: Worker,
    make_model: Callable[[], nn.Module],
    config: TrainConfig,
    *,
    options: RunOptions,
    info: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    units: Sequence[str] = (),
    **settings: Any,
) -> TrainResult:
    """:func:`~dlspec.train.loop.train_model` (the same arguments; ``settings`` go to it as
    they are) as ``worker``, one process of a torchrun job: on the device of its local rank
    (:func:`worker_device`), in the job's process group, with :class:`DistributedTrainer`.
    Rank 0 reports, reads the checkpoint to resume from and writes the outputs
    (``metrics.json`` records the processes); the others return a result without metrics.
    An exception is written to torchrun's error file, for the launcher's report, except a
    collective that failed because another process did, which becomes a :class:`TrainError`."""
    try:
        trainer = functools.partial(DistributedTrainer, units=units)
        return _train_in_group(worker, make_model, config, options, info, log, trainer, settings)
    except Exception as exc:
        if _lost_contact(exc):  # a consequence: the process at fault reports the cause
            raise TrainError(
                f"lost contact with the other processes ({_first_sentence(exc)}): one failed, "
                f"or did not answer within {collective_timeout().total_seconds():g} s "
                f"({TIMEOUT_VARIABLE})"
            ) from None
        ErrorHandler().record_exception(exc)  # torchrun's error file, for the launcher's report
        raise


def _first_sentence(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without gloo's ``[file:line]``."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())
    return text.split(". ")[0].splitlines()[0].rstrip(".") if text else type(exc).__name__


def _lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed (its peers gone or silent): torch raises
    DistError subclasses for NCCL and the store, and plain RuntimeErrors from gloo."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and "/gloo/" in str(exc)
    )


def _train_in_group(
    worker: Worker,
    make_model: Callable[[], nn.Module],
    config: TrainConfig,
    options: RunOptions,
    info: Mapping[str, Any] | None,
    log: Callable[[str], None],
    trainer: Callable[..., Trainer],
    settings: Mapping[str, Any],
) -> TrainResult:
    device = worker_device(worker, options.device)
    with process_group(device) as backend:
        if worker.main and not options.quiet:
            per_process = config.batch_size / worker.world_size
            sharded = ", the model sharded (fsdp)" if config.strategy == "fsdp" else ""
            log(
                f"distributed: {worker.world_size} processes ({backend}){sharded}; each batch "
                f"of {config.batch_size} is shared out, {per_process:g} samples per process"
            )
        return train_model(
            make_model,
            config,
            options=dataclasses.replace(
                options,
                device=str(device),
                quiet=options.quiet or not worker.main,
                resume=options.resume and worker.main,
            ),
            info={**(info or {}), "processes": worker.world_size, "backend": backend},
            log=log,
            trainer_class=trainer,
            **settings,
        )

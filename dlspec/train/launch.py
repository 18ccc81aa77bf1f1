"""Start ``dlspec build`` as several processes: ``--nproc-per-node`` (and, for several
machines, ``--nnodes``, ``--node-rank``, ``--master-addr``, ``--master-port``).

``dlspec build SPEC --nproc-per-node N ...`` runs torch's elastic agent (the engine behind
``torchrun``) in this process. The agent starts N workers, each ``python -m dlspec build SPEC
...`` with the same command line and ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` set, and stops
them all as soon as one fails; :func:`launch` then says which failed and why. It is
``torchrun --standalone --nproc-per-node N -m dlspec build SPEC ...``, and that command works
too: a build that finds itself inside a torchrun job (:func:`current_worker`) ignores the
launcher options and trains with :mod:`dlspec.train.distributed`.

This module imports no torch until :func:`launch` runs, so that ``dlspec build --help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Worker",
    "add_arguments",
    "current_worker",
    "is_main_process",
    "launch",
    "requested",
    "usable_cores",
]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_PORT = 29500  # torchrun's


@dataclass(frozen=True)
class Worker:
    """This process's place in a torchrun job, as torchrun's environment variables say."""

    rank: int  # 0 .. world_size - 1, over all machines
    local_rank: int  # 0 .. local_world_size - 1, on this machine (the GPU it takes)
    world_size: int
    local_world_size: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that reports, and writes the outputs."""
        return self.rank == 0


def current_worker() -> Worker | None:
    """This process's :class:`Worker` inside a torchrun job; None outside one."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    values = [os.environ.get(name, "") for name in names]
    if not all(value.isdigit() for value in values):
        return None
    return Worker(*(int(value) for value in values))


def is_main_process() -> bool:
    """True outside a torchrun job, and in its rank-0 process."""
    worker = current_worker()
    return worker is None or worker.main


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low .. high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low} .. {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options, as a group of ``parser``."""
    group = parser.add_argument_group(
        "several processes (torch.distributed data parallel; see also torchrun)"
    )
    group.add_argument(
        "--nproc-per-node",
        type=_whole(1),
        metavar="N",
        help="train with N processes on this machine: one per GPU, or up to one per CPU core",
    )
    group.add_argument(
        "--nnodes", type=_whole(1), default=1, metavar="N", help="machines in the run (default 1)"
    )
    group.add_argument(
        "--node-rank",
        type=_whole(0),
        default=0,
        metavar="R",
        help="this machine's number, 0 .. nnodes-1; machine 0 writes the outputs",
    )
    group.add_argument(
        "--master-addr",
        metavar="HOST",
        help="with --nnodes > 1: the address of machine 0, reachable from the others",
    )
    group.add_argument(
        "--master-port",
        type=_whole(1, 65535),
        metavar="PORT",
        help=f"with --master-addr: a free TCP port on machine 0 (default {DEFAULT_PORT})",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line has launcher options (and this is not a worker already)."""
    given = (args.nproc_per_node, args.master_addr, args.master_port)
    multi = args.nnodes > 1 or args.node_rank > 0
    return (multi or any(v is not None for v in given)) and current_worker() is None


def _usage(message: str) -> int:
    print(f"dlspec build: {message}", file=sys.stderr)
    return EXIT_USAGE


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the launcher options on this machine, or None."""
    import torch

    nproc: int | None = args.nproc_per_node
    if nproc is None:
        return "--nnodes, --node-rank and --master-addr/--master-port need --nproc-per-node"
    if args.node_rank >= args.nnodes:
        return f"--node-rank {args.node_rank}: expected 0 .. {args.nnodes - 1} (--nnodes)"
    if args.nnodes > 1 and not args.master_addr:
        return "--nnodes > 1 needs --master-addr, the address of the machine with --node-rank 0"
    device = str(args.device)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if ":" in device and nproc > 1:
            return (
                f"--device {device}: each process takes the GPU of its local rank; "
                "use --device cuda"
            )
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            return f"--nproc-per-node {nproc}: this machine has {gpus} GPU(s), one per process"
        return None
    cores = usable_cores()
    if nproc > cores:
        return (
            f"--nproc-per-node {nproc}: this machine has {cores} CPU core(s); on a CPU each "
            f"process needs one of its own (use at most {cores})"
        )
    return None


def _torchrun_arguments(args: argparse.Namespace, command: list[str]) -> list[str]:
    """torchrun's command line that runs ``python -m dlspec COMMAND...`` in every worker."""
    options = ["--nproc-per-node", str(args.nproc_per_node), "--max-restarts", "0"]
    if args.nnodes > 1 or args.master_addr:
        options += [
            "--nnodes",
            str(args.nnodes),
            "--node-rank",
            str(args.node_rank),
            "--master-addr",
            args.master_addr or "127.0.0.1",
            "--master-port",
            str(args.master_port or DEFAULT_PORT),
        ]
    else:  # torchrun --standalone: a rendezvous on a free local port
        options += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
        options += ["--rdzv-id", str(uuid.uuid4())]
    return [*options, "-m", "dlspec", *command]


def _recorded_error(message: Any) -> str | None:
    """The error a failed worker wrote to torchrun's error file (a ProcessFailure's message),
    or None when it wrote none."""
    error = message.get("message") if isinstance(message, dict) else None
    return error.strip() if isinstance(error, str) and error.strip() else None


def _failure_text(rank: int, world: int, exitcode: int, message: Any) -> str:
    """One failed process, for the user: which, how, and its error when it recorded one."""
    if exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"failed with exit code {exitcode}"
    text = f"process {rank} of {world} {how}"
    error = _recorded_error(message)
    return f"{text}: {error.splitlines()[-1]}" if error else f"{text} (its message is above)"


def _cause_first(item: tuple[int, Any]) -> tuple[bool, bool, int, int]:
    """Sort key of torchrun's failures ``(rank, ProcessFailure)``, the cause first: a process
    that recorded its error, then one the agent did not stop (it stops them with SIGTERM; a
    SIGKILL came from elsewhere: kill -9, the kernel's out-of-memory killer), the earliest;
    the others failed because it did."""
    rank, failure = item
    stopped = failure.exitcode == -signal.SIGTERM
    return (_recorded_error(failure.message) is None, stopped, failure.timestamp, rank)


def launch(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``python -m dlspec COMMAND...`` (``command``: a command line with the launcher
    options, which the workers ignore) in ``args.nproc_per_node`` worker processes on this
    machine, as machine ``args.node_rank`` of ``args.nnodes``. Returns the exit code: 0 when
    every worker succeeded; else 1 (130 for Ctrl-C) after saying which process failed and
    why; 2 for launcher options that cannot work here."""
    problem = _problem(args)
    if problem:
        return _usage(problem)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    # intra-op threads: the cores shared out, rather than every process wanting them all
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // args.nproc_per_node)))
    torchrun = get_args_parser().parse_args(_torchrun_arguments(args, command))
    config, program, program_args = config_from_args(torchrun)
    world = args.nnodes * args.nproc_per_node
    logging.disable(logging.ERROR)  # the agent's own logs; what went wrong is said below
    try:
        elastic_launch(config, program)(*program_args)
    except ChildFailedError as failed:
        codes = {failure.exitcode for failure in failed.failures.values()}
        if codes == {EXIT_INTERRUPTED}:
            return EXIT_INTERRUPTED
        first, failure = min(failed.failures.items(), key=_cause_first)
        print(
            "dlspec build: "
            + _failure_text(first, world, failure.exitcode, failure.message)
            + "; the other processes were stopped",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except SignalException as stop:
        if stop.sigval == signal.SIGINT:
            return EXIT_INTERRUPTED
        print(f"dlspec build: stopped by {stop.sigval.name}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        logging.disable(logging.NOTSET)
    return 0

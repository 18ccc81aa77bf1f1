"""Plan a training run: the largest batch (and sequence length) that fits a memory budget."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dlspec.analysis import memory
from dlspec.analysis.check import check_file
from dlspec.analysis.graph import ModelGraph
from dlspec.analysis.render import human_bytes, short
from dlspec.commands.common import (
    add_spec_arguments,
    exit_code,
    limits_of,
    positive_int,
    print_diagnostics,
    size_option,
)
from dlspec.diagnostics import n
from dlspec.layers.symbolic import value_at


def memory_size(text: str) -> int:
    return size_option(memory.parse_bytes, text)


def configure(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument(
        "--memory",
        type=memory_size,
        required=True,
        metavar="SIZE",
        help="the device memory to fit, e.g. 24GiB, 80GB, 512MiB",
    )
    parser.add_argument("--precision", choices=memory.PRECISIONS, default="fp32")
    parser.add_argument("--optimizer", choices=tuple(memory.OPTIMIZERS), default="adam")
    parser.add_argument(
        "--device",
        choices=memory.DEVICES,
        default="cuda",
        help="where it trains: the optimizer's step differs (default: cuda)",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing per block call (recompute blocks in backward)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        help="plan at this batch (per GPU with --gpus): the breakdown there, and the longest "
        "symbolic lengths",
    )
    parser.add_argument(
        "--gpus",
        type=positive_int,
        metavar="N",
        help="train on N GPUs (--strategy, default fsdp): one GPU's memory, batch per GPU",
    )
    parser.add_argument(
        "--strategy",
        choices=memory.STRATEGIES,
        help="fsdp shards weights, gradients and optimizer state over the GPUs, ddp "
        "replicates them; without --gpus: the fewest GPUs on which it fits",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    checked = check_file(args.spec, dict(args.overrides), model=args.model, limits=limits_of(args))
    graph = checked.graph
    if graph is None:
        print_diagnostics(checked, warnings=False)
        return exit_code(checked)
    options = (args.precision, args.optimizer, args.checkpointing)
    parallel = None
    if args.gpus or args.strategy:
        strategy: memory.Strategy = args.strategy or "fsdp"
        gpus = args.gpus or memory.fewest_gpus(
            graph, args.memory, strategy, *options, device=args.device
        )
        if not gpus:
            return _fits_nowhere(args, graph, strategy)
        parallel = memory.Parallel(gpus, strategy)
    answer = memory.plan(
        graph, args.memory, *options, batch=args.batch, device=args.device, parallel=parallel
    )
    lengths = {name: memory.max_length(answer, name, graph.limits) for name in graph.symbols}
    if args.format == "json":
        print(json.dumps(_json(answer, args, graph.name, lengths), indent=2))
    else:
        print(_table(answer, args, graph.name, lengths))
    if answer.max_batch == 0:
        need = answer.total(1)
        print(
            f"{args.spec}: error: batch 1 does not fit in {human_bytes(args.memory)}: it needs "
            f"{human_bytes(need)}, {human_bytes(need - args.memory)} more",
            file=sys.stderr,
        )
        return 1
    if args.batch is not None and answer.total(args.batch) > args.memory:
        # an error like batch 1's: the spec as given (its lengths) does not fit; with
        # symbolic lengths the plan also says how long they may be at this batch
        at = ", ".join(f"{k}={v:,}" for k, v in answer.bindings.items())
        shorter = [f"{k} up to {n(value)}" for k, (value, _) in lengths.items() if value]
        print(
            f"{args.spec}: error: batch {n(args.batch)} does not fit in "
            f"{human_bytes(args.memory)}{' at ' + at if at else ''}: it needs "
            f"{human_bytes(answer.total(args.batch))}; the largest batch that fits is "
            f"{n(answer.max_batch)}"
            + (f", or at batch {n(args.batch)}: {', '.join(shorter)}" if shorter else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _fits_nowhere(args: argparse.Namespace, graph: ModelGraph, strategy: memory.Strategy) -> int:
    """No number of GPUs fits batch 1: say what one GPU would need."""
    options = (args.precision, args.optimizer, args.checkpointing, args.device)
    gpus = 1 if strategy == "ddp" else 2**16
    one = memory.training(graph, *options, parallel=memory.Parallel(gpus, strategy))
    need = one.bytes({**graph.bindings, "B": 1})["total"]
    if strategy == "ddp":
        why = "DDP replicates the model on every GPU; --strategy fsdp shards it"
    else:
        why = f"even on {n(gpus)} GPUs"
    print(
        f"{args.spec}: error: batch 1 per GPU does not fit in {human_bytes(args.memory)} on "
        f"any number of GPUs with {strategy}: one GPU needs {human_bytes(need)} ({why})",
        file=sys.stderr,
    )
    return 1


Lengths = dict[str, tuple[int, str]]  # symbol -> (largest value, what bounds it)
LABELS = {
    "weights": "weights (fp32, with buffers)",
    "gradients": "gradients",
    "optimizer": "optimizer state ({optimizer})",
    "activations": "activations ({precision})",
    "transient": "transient",
}
GATHERED = {
    "fsdp": "gathered parameters (FSDP units)",
    "ddp": "DDP gradient buckets",
}
SHARDED = {"weights": "weights (fp32 shards, with buffers)", "gradients": "gradient shards"}


def _labels(parallel: memory.Parallel | None) -> dict[str, str]:
    """The table's names of the parts: on several GPUs, one GPU's."""
    if parallel is None:
        return LABELS
    labels = {**LABELS, "gathered": GATHERED[parallel.strategy]}
    return labels | SHARDED if parallel.strategy == "fsdp" else labels


def _json(
    answer: memory.Plan, args: argparse.Namespace, model: str, lengths: Lengths
) -> dict[str, Any]:
    parts = {name: getattr(answer.memory, name) for name in memory.FORMULAS}
    at_batch = answer.bytes()
    return {
        "file": args.spec,
        "model": model,
        "symbols": answer.bindings,
        "budget_bytes": answer.budget,
        "precision": args.precision,
        "optimizer": args.optimizer,
        "device": args.device,
        "checkpointing": args.checkpointing,
        "max_batch": answer.max_batch,
        "batch": answer.batch,
        "fits": at_batch["total"] <= answer.budget,
        "peak": answer.peak(),
        "bytes": at_batch,
        "formulas": {name: str(value) for name, value in parts.items()},
        "train_flops_per_step": value_at(answer.flops, answer.bindings) * answer.batch,
        "max_lengths": {name: value for name, (value, _) in lengths.items()},
        **_parallel_json(answer.memory),
    }


def _parallel_json(step: memory.Training) -> dict[str, Any]:
    if step.parallel is None:
        return {}
    return {
        "gpus": step.parallel.gpus,
        "strategy": step.parallel.strategy,
        "communication_bytes_per_step": step.communication,
    }


def _table(answer: memory.Plan, args: argparse.Namespace, model: str, lengths: Lengths) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in answer.bindings.items())
    options = f"{args.device}, {args.precision}, {args.optimizer}" + (
        ", checkpointing" if args.checkpointing else ""
    )
    parallel = answer.memory.parallel
    per_gpu = " per GPU" if parallel else ""
    if parallel:
        options += f", {parallel.describe()}"
    lines = [
        f"{model}  ({args.spec}{', ' + settings if settings else ''})",
        f"budget {human_bytes(answer.budget)}{per_gpu}, {options}",
        "",
    ]
    if parallel and not args.gpus and answer.max_batch:
        lines.append(
            f"fits on {n(parallel.gpus)} x {human_bytes(answer.budget)} at batch "
            f"{n(answer.max_batch)} per GPU (the fewest GPUs; {parallel.strategy})"
        )
    if answer.max_batch:
        lines.append(f"largest batch{per_gpu} that fits: {n(answer.max_batch)}")
    lines += [f"activations per sample: {human_bytes(answer.per_sample)}", ""]
    parts = answer.bytes()
    labels = _labels(parallel)
    rows = [(labels[name].format(**vars(args)), parts[name]) for name in parts if name != "total"]
    rows.append(("total", parts["total"]))
    width = max(len(label) for label, _ in rows)
    where = answer.peak()
    moment = where if where.startswith("the ") else f"the backward pass of {where}"
    lines.append(f"at batch {n(answer.batch)}, at its peak: {moment}")
    lines += [f"  {label.ljust(width)}  {human_bytes(value):>12}" for label, value in rows]
    share = 100 * parts["total"] / answer.budget
    lines.append(f"  {'of the budget'.ljust(width)}  {share:>11.1f}%")
    flops = value_at(answer.flops, answer.bindings) * answer.batch
    passes = "forward, backward and recomputation" if args.checkpointing else "forward + backward"
    lines.append("")
    lines.append(f"training FLOPs per step: {short(flops)} ({passes}, batch {n(answer.batch)})")
    if parallel and parallel.gpus > 1:
        sent = ", ".join(f"{k} {human_bytes(v)}" for k, v in answer.memory.communication.items())
        lines.append(f"sent per GPU per step: {sent}")
    for name, (value, reason) in lengths.items():
        bound = "the memory budget" if reason == "memory" else reason
        longest = f"{n(value)}, bound by {bound}" if value else "none fits"
        lines.append(f"longest {name} at batch {n(answer.batch)}: {longest}")
    return "\n".join(lines)

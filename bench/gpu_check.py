"""Every CUDA path dlspec has, in one run and one table: what to run the first time a GPU is
lent (bench/gpu_check.sh brings ONNX Runtime's CUDA build along, then runs this).

Rows:

* MY_NET (specs/cnn.dl) training on the digits, fp32 and bf16: the second epoch's time
  (`dlspec build`);
* MY_NET inference at batch 1, 256 and 4096: ONNX Runtime's CUDA provider (IO binding) against
  torch eager and torch.compile;
* DDP at world size 1 on NCCL, and FSDP where `dlspec build` has ``--strategy fsdp`` (else the
  row says it is skipped);
* the diffusion trainer (specs/diffusion.dl), one epoch;
* `dlspec plan`'s training peak against ``torch.cuda.max_memory_allocated`` for three specs
  (bench/train_memory.py's measurement).

Each check runs in a fresh process under a time limit, so one that fails or hangs costs only
its own rows; its error is printed under the table, and the exit status is 1.

``--dry-run``: everything but CUDA, on the CPU at tiny sizes (a 96-sample data set, gloo in
place of NCCL, ONNX Runtime's CPU provider, torch.compile with its "eager" backend, batch 1
and 2), to show that the script works before a GPU is there.

Run: bash bench/gpu_check.sh [--dry-run]   (under 8 minutes on one H100)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, str, str]  # check, figure, detail
TINY_SAMPLES = 96


@dataclass(frozen=True)
class Setup:
    """Where and how big: ``dry`` runs on the CPU at tiny sizes, from ``scratch``."""

    dry: bool
    scratch: Path

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def data(self) -> list[str]:
        """`dlspec build`'s data option: a tiny 8x8 digit-like set in a dry run, else the
        spec's own (the digits)."""
        if not self.dry:
            return []
        import numpy as np

        path = self.scratch / "tiny.npz"
        rng = np.random.default_rng(0)
        x = rng.random((TINY_SAMPLES, 1, 8, 8), dtype=np.float32)
        np.savez(path, x=x, y=np.arange(TINY_SAMPLES) % 10)
        return ["--data", str(path)]


def build(setup: Setup, spec: str, epochs: int, *options: str) -> dict[str, Any]:
    """Train ``spec`` with `dlspec build` in a fresh process; its metrics.json."""
    out = setup.scratch / f"run{len(list(setup.scratch.glob('run*')))}"
    command = [sys.executable, "-m", "dlspec", "build", spec, "--out", str(out), "--quiet",
               "--no-plots", "--epochs", str(epochs), "--device", setup.device,
               *setup.data(), *options]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr}")
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return metrics


def epoch_row(label: str, metrics: dict[str, Any]) -> Row:
    """The last epoch's time and throughput, and what the run used."""
    seconds = metrics["epochs"][-1]["seconds"]
    samples = metrics["data"]["sizes"]["train"]
    return (
        label,
        f"{seconds:.2f} s/epoch",
        f"{samples / seconds:,.0f} samples/s, {metrics['precision']}, "
        f"{metrics.get('processes', 1)} process(es), {metrics.get('backend') or 'no process group'}"
        f", {metrics['device']}",
    )


# ---------------------------------------------------------------------------------------------
# the checks


def train(setup: Setup) -> list[Row]:
    """MY_NET's epoch in fp32 and in bf16 autocast (the second epoch: the first warms up)."""
    epochs = 1 if setup.dry else 2
    return [
        epoch_row(f"MY_NET training, {precision}", build(setup, "specs/cnn.dl", epochs, *options))
        for precision in ("fp32", "bf16")
        for options in [("--train", f"precision={precision}", "--train", "val_split=0")]
    ]


def inference(setup: Setup) -> list[Row]:
    """MY_NET at three batch sizes: ONNX Runtime (CUDA provider, IO binding) against torch
    eager and torch.compile, median latency."""
    import torch

    import dlspec
    from dlspec.backends.onnx_export import export_onnx
    from dlspec.backends.runtime import Session
    from dlspec.commands.bench import measure, median_seconds

    spec = dlspec.load(ROOT / "specs" / "cnn.dl")
    torch.manual_seed(0)
    model = spec.to_torch().eval()
    data = export_onnx(model, spec.graph, verify=False, device="cpu").data
    model.to(setup.device)
    session = Session(data, device=setup.device)  # cuda: fails unless ORT can use CUDA
    batches, warmup, iterations = ((1, 2), 1, 2) if setup.dry else ((1, 256, 4096), 10, 50)
    timed = measure(model, session, setup.device, batches, warmup=warmup, iterations=iterations)
    sync = torch.cuda.synchronize if not setup.dry else (lambda: None)
    shape = spec.report.inputs[0].shape_value
    rows = []
    for row in timed:
        compiled = torch.compile(model, dynamic=False, backend="eager" if setup.dry else "inductor")
        x = torch.randn(row.batch, *shape, device=setup.device)
        with torch.inference_mode():
            compiled_s = median_seconds(
                partial(compiled, x), warmup=warmup + 2, iterations=iterations, sync=sync
            )
        eager_s = row.torch_seconds or float("nan")
        rows.append(
            (
                f"MY_NET inference, batch {row.batch}",
                f"ORT {session.provider} {row.onnx_seconds * 1e3:.3f} ms",
                f"eager {eager_s * 1e3:.3f} ms, compile {compiled_s * 1e3:.3f} ms: ORT "
                f"{eager_s / row.onnx_seconds:.2f}x eager, {compiled_s / row.onnx_seconds:.2f}x "
                "compile",
            )
        )
    return rows


def ddp(setup: Setup) -> list[Row]:
    """One process of DistributedDataParallel (NCCL on CUDA, gloo in a dry run)."""
    metrics = build(setup, "specs/cnn.dl", 1, "--nproc-per-node", "1")
    return [epoch_row("DDP, world size 1", metrics)]


def fsdp(setup: Setup) -> list[Row]:
    """The same with FSDP, where this dlspec has ``--strategy fsdp``."""
    command = [sys.executable, "-m", "dlspec", "build", "--help"]
    usage = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if "--strategy" not in usage:
        return [("FSDP, world size 1", "skipped", "this dlspec build has no --strategy option")]
    metrics = build(setup, "specs/cnn.dl", 1, "--nproc-per-node", "1", "--strategy", "fsdp")
    return [epoch_row("FSDP, world size 1", metrics)]


def diffusion(setup: Setup) -> list[Row]:
    """The diffusion trainer on the digits U-Net, one epoch (and its samples)."""
    options = ("--train", "sample_steps=2") if setup.dry else ()
    return [epoch_row("diffusion trainer", build(setup, "specs/diffusion.dl", 1, *options))]


def memory(setup: Setup) -> list[Row]:
    """`dlspec plan`'s training peak (Adam, fp32) against the measured one, for three specs."""
    sys.path.insert(0, str(ROOT / "bench"))
    from train_memory import measure

    how = "profiler timeline" if setup.dry else "torch.cuda.max_memory_allocated"
    batch = 2 if setup.dry else 8
    options = argparse.Namespace(
        batch=batch, device=setup.device, precision="fp32", optimizer="adam", checkpointing=False
    )
    rows = []
    for name in ("mlp.dl", "cnn.dl", "tiny_gpt.dl"):
        estimate, measured = measure(ROOT / "specs" / name, options)
        rows.append(
            (
                f"plan peak, {name}",
                f"{estimate / measured:.3f} est/meas",
                f"estimate {estimate / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB "
                f"({how}, batch {batch}, Adam)",
            )
        )
    return rows


# name -> (check, time limit in seconds): the limits add up to under 8 minutes (a dry run, on
# a small and maybe busy CPU, gets DRY_SLOWER times as long)
CHECKS: dict[str, tuple[Callable[[Setup], list[Row]], int]] = {
    "train": (train, 120),
    "inference": (inference, 120),
    "ddp": (ddp, 60),
    "fsdp": (fsdp, 60),
    "diffusion": (diffusion, 60),
    "memory": (memory, 45),
}
DRY_SLOWER = 4


# ---------------------------------------------------------------------------------------------
# running the checks, each in a fresh process


def run_check(name: str, dry: bool) -> tuple[list[Row], str | None]:
    """The rows of check ``name`` run in a fresh process, and its error (None when it ran)."""
    command = [sys.executable, __file__, "--only", name] + (["--dry-run"] if dry else [])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    limit = CHECKS[name][1] * (DRY_SLOWER if dry else 1)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return [(name, "FAILED", f"over its {limit} s limit")], f"{name}: over its {limit} s limit"
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        error = f"{name} (exit {done.returncode}):\n{done.stderr.strip()[-3000:]}"
        return [(name, "FAILED", (done.stderr.strip().splitlines() or ["?"])[-1][:90])], error
    return [tuple(row) for row in json.loads(lines[-1])], None


def machine(dry: bool) -> str:
    """One line: torch, the GPU, ONNX Runtime and its providers."""
    import onnxruntime as ort
    import torch

    gpu = "dry run on the CPU" if dry else torch.cuda.get_device_name()
    providers = ", ".join(
        p.removesuffix("ExecutionProvider") for p in ort.get_available_providers()
    )
    return f"torch {torch.__version__}, {gpu}; onnxruntime {ort.__version__} ({providers})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="everything but CUDA, on the CPU")
    parser.add_argument("--only", choices=CHECKS, help=argparse.SUPPRESS)  # internal: one check
    args = parser.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory() as scratch:
            rows = CHECKS[args.only][0](Setup(args.dry_run, Path(scratch)))
        print(json.dumps(rows))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.exit(2, "gpu_check: torch sees no CUDA device here; --dry-run checks on the CPU\n")
    print(machine(args.dry_run))
    started = time.perf_counter()
    rows: list[Row] = []
    errors = []
    for name in CHECKS:
        check_started = time.perf_counter()
        found, error = run_check(name, args.dry_run)
        rows += found
        errors += [error] if error else []
        print(f"  {name}: {time.perf_counter() - check_started:.0f} s", file=sys.stderr)
    width = max(len(row[0]) for row in rows)
    figure = max(len(row[1]) for row in rows)
    print(f"\n{'check':<{width}}  {'figure':<{figure}}  detail")
    for check, value, detail in rows:
        print(f"{check:<{width}}  {value:<{figure}}  {detail}")
    print(f"\n{len(CHECKS)} checks in {time.perf_counter() - started:.0f} s, {len(errors)} failed")
    for error in errors:
        print(f"\n--- {error}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()

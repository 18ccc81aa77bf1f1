"""Distributed training speed: samples per second with 1 and 2 processes on this machine's CPU.

For each spec (the MLP on the 8x8 digits; MY_NET, specs/cnn.dl, on the digits resized to
48x48, in its default precision: bf16 autocast on a CPU with native bf16), `dlspec build`
trains in fresh processes as:

* 1 process with every core's threads (a plain `dlspec build`);
* 1 process with 1 thread (what each of the 2 processes below gets);
* 2 processes with 1 thread each (`--nproc-per-node 2`: gloo, DistributedDataParallel).

Throughput is training samples / epoch seconds from metrics.json (rank 0's clock, so waits in
the all-reduce count; no validation: val_split=0), over the epochs after the first, best of
--repeat runs (others' jobs on the machine only ever slow a run down). Prints the figures and
the ratios 2 processes : 1 process.

Run: .venv/bin/python bench/distributed_speed.py [--epochs N] [--repeat N]  (about 3 minutes)
     --smoke: the MLP only, 2 epochs, once: only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"MLP (digits 8x8)": "specs/mlp.dl", "MY_NET (digits 48x48)": "specs/cnn.dl"}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def throughput(spec: str, epochs: int, processes: int, threads: int) -> tuple[float, str]:
    """Training samples per second of one fresh `dlspec build` run, and its precision."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "dlspec", "build", spec, "--out", out, "--quiet",
                   "--no-plots", "--epochs", str(epochs), "--train", "val_split=0"]  # fmt: skip
        if processes > 1:
            command += ["--nproc-per-node", str(processes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    seconds = min(entry["seconds"] for entry in metrics["epochs"][1:])
    return metrics["data"]["sizes"]["train"] / seconds, metrics["precision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting; the best counts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    specs = dict(list(SPECS.items())[:1]) if args.smoke else SPECS
    if args.smoke:
        args.epochs, args.repeat = 2, 1
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    n = cores()
    settings = [(1, n), (1, 1), (2, max(1, n // 2))]
    print(f"{n} CPU cores; samples/s, best of {args.repeat} runs of {args.epochs} epochs\n")
    print(f"{'model':<24}{'1 proc x ' + str(n) + ' thr':>16}{'1 proc x 1 thr':>16}", end="")
    print(f"{'2 proc x ' + str(max(1, n // 2)) + ' thr':>16}{'2p : 1p':>10}{'2p : 1p1t':>11}")
    for name, spec in specs.items():
        best = dict.fromkeys(settings, 0.0)
        precision = ""
        for _ in range(args.repeat):  # interleaved, so that a busy spell hits every setting
            for processes, threads in settings:
                rate, precision = throughput(spec, args.epochs, processes, threads)
                best[(processes, threads)] = max(best[(processes, threads)], rate)
        one, single_thread, two = (best[s] for s in settings)
        print(
            f"{name + ' ' + precision:<24}{one:>16,.0f}{single_thread:>16,.0f}{two:>16,.0f}", end=""
        )
        print(f"{two / one:>9.2f}x{two / single_thread:>10.2f}x")


if __name__ == "__main__":
    main()

"""Inference speed on CPU: ONNX Runtime against torch eager on MY_NET (specs/cnn.dl).

Exports MY_NET as `dlspec export` does (random weights), then times both at batch 1 and 64
with the same number of threads (median of --iterations runs after warm-up runs) and prints
latency, throughput and ONNX Runtime's speed-up. Goal: at least 1.5x at batch 1.

Run: .venv/bin/python bench/inference_speed.py [--threads 2] [--iterations 50]
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
Timings need an otherwise idle machine: on a shared one, torch's thread pool suffers most.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dlspec
from dlspec.backends.onnx_export import export_onnx
from dlspec.backends.runtime import Session
from dlspec.commands.bench import format_rows, measure

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5  # ONNX Runtime's speed-up over torch eager at batch 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    batches = (1, 2) if args.smoke else (1, 64)
    if args.smoke:
        args.iterations, args.warmup, args.threads = 2, 1, 1

    torch.set_num_threads(args.threads)
    spec = dlspec.load(ROOT / "specs" / "cnn.dl")
    torch.manual_seed(0)
    model = spec.to_torch().eval()
    result = export_onnx(model, spec.graph, verify=False, device="cpu")
    session = Session(result.data, device="cpu", threads=args.threads)
    rows = measure(model, session, "cpu", batches, warmup=args.warmup, iterations=args.iterations)
    print(
        f"MY_NET, exported with {result.exporter}; CPU, {args.threads} threads for both; "
        f"median of {args.iterations} runs"
    )
    for line in format_rows(rows):
        print(line)
    first = rows[0].speedup or 0.0
    verdict = "meets" if first >= GOAL else "MISSES"
    print(f"batch 1: ONNX Runtime {first:.2f}x torch eager ({verdict} the goal of {GOAL}x)")


if __name__ == "__main__":
    main()

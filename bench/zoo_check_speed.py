"""`dlspec check` on the model zoo: whole-process and in-process time per spec, against the
time to build the same model in torch on the meta device (no memory), in one run.

Goal: `dlspec check specs/zoo/llama2_7b.dl` well under a second as a whole process, that is
little more than the start-up that `dlspec check specs/cnn.dl` (the first row) also pays.

Run: .venv/bin/python bench/zoo_check_speed.py [--repeat N]
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MY_NET first: its whole-process time is mostly start-up, the baseline for the others
SPECS = [ROOT / "specs" / "cnn.dl", *sorted((ROOT / "specs" / "zoo").glob("*.dl"))]


def median_time(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path: Path, repeat: int) -> tuple[float, float, float]:
    """Whole process, in-process check, and building the torch module on the meta device."""
    import torch

    import dlspec
    from dlspec.analysis.check import check_file

    command = [sys.executable, "-m", "dlspec", "check", str(path)]
    process = median_time(lambda: subprocess.run(command, capture_output=True), repeat)
    analyze = median_time(lambda: check_file(path), repeat)
    spec = dlspec.load(path)

    def build() -> None:
        with torch.device("meta"):
            spec.to_torch()

    return process, analyze, median_time(build, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    repeat = 1 if args.smoke else args.repeat
    print(f"{'spec':24} {'process':>9} {'in-process':>11} {'torch (meta)':>13} {'ratio':>6}")
    for path in SPECS[:2] if args.smoke else SPECS:
        process, analyze, meta = measure(path, repeat)
        print(
            f"{path.stem:24} {process * 1000:7.0f}ms {analyze * 1000:9.0f}ms "
            f"{meta * 1000:11.0f}ms {meta / analyze:5.1f}x"
        )


if __name__ == "__main__":
    main()

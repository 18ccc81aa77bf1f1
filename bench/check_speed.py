"""`dlspec check` speed: whole-process time against torchinfo on the same model, and scaling.

Prints, side by side:
1. `dlspec check specs/cnn.dl` as a whole process vs a whole process that builds the same
   hand-written MY_NET in torch and prints torchinfo's summary (goal: at least 15x faster);
2. check time for generated specs of 100, 1,000 and 10,000 layers (goal: linear; 10,000 under
   1 s), in-process (parse + analyze + lint + report) and as a whole process.

Run: .venv/bin/python bench/check_speed.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a whole process: import torch and torchinfo, build the primer's MY_NET, print the summary
TORCHINFO = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from torchinfo import summary
from seed_net import MyNet

summary(MyNet(), input_size=(1, 3, 48, 48))
"""


def wall(cmd: list[str], repeat: int) -> float:
    """Median wall time of a whole process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layered_spec(layers: int) -> str:
    """A deep MLP-like stack: Linear/ReLU pairs with a block every 10 layers."""
    lines = ["block Pair(w: int) {", "    Linear(w)", "    ReLU", "}", "model Deep(w: int = 64) {"]
    lines.append("    input x: float[64]")
    for i in range(layers // 2):
        lines.append(f"    fc{i} = Linear(w)" if i % 5 else f"    pair{i} = Pair(w)")
        lines.append("    ReLU" if i % 5 else "    Identity")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    dl = wall([py, "-m", "dlspec", "check", "specs/cnn.dl"], args.repeat)
    ti = wall([py, "-c", TORCHINFO], max(1, args.repeat // 2))
    print("whole process, MY_NET summary")
    print(f"  dlspec check specs/cnn.dl   {dl * 1000:8.0f} ms")
    print(f"  torch + torchinfo.summary   {ti * 1000:8.0f} ms")
    print(f"  ratio                       {ti / dl:8.1f}x faster (goal >= 15x)")

    from dlspec.analysis.check import check_text

    print("\nscaling with spec size  in-process   whole process  per layer")
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (100, 1_000, 10_000):
            text = layered_spec(layers)
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                checked = check_text(text, "deep.dl")
                runs.append(time.perf_counter() - start)
            assert checked.report.ok, checked.report.diagnostics[:3]
            path = Path(tmp) / f"deep{layers}.dl"
            path.write_text(text)
            proc = wall([py, "-m", "dlspec", "check", str(path)], max(1, args.repeat // 2))
            inproc = statistics.median(runs)
            ms_in, ms_proc, us_layer = inproc * 1000, proc * 1000, inproc / layers * 1e6
            print(f"  {layers:>6,} layers {ms_in:8.0f} ms {ms_proc:8.0f} ms {us_layer:6.1f} us")


if __name__ == "__main__":
    main()

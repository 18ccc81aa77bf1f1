"""torch's two ONNX exporters on MY_NET (specs/cnn.dl): TorchScript (dynamo=False) and
torch.export (dynamo=True), as `dlspec export` runs them.

For each exporter: the whole `dlspec export specs/cnn.dl --exporter X` command (a fresh
process: imports, export, onnx.checker, the run at other sizes, verification, writing the
file), then, in another fresh process, the export cold and warm, the verification, the file
size and nodes, and what the exporter printed or warned. Last, ONNX Runtime's latency on both
files at batch 1 and 64, measured in this one process, alternating, best of three (so that a
busy machine does not favour either). Goal: the whole command under 5 s.

Run: .venv/bin/python bench/export_speed.py [--threads 2]
     --smoke: TorchScript only, one latency round of few runs: only to show that the script
     runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXPORTERS = ("torchscript", "dynamo")
GOAL = 5.0  # seconds for the whole `dlspec export` command (export + verification)

PROBE = """
import json, sys
import onnx, torch
import dlspec
from dlspec.backends.onnx_export import export_onnx

exporter = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]))
spec = dlspec.load("specs/cnn.dl")
torch.manual_seed(0)
model = spec.to_torch()
cold = export_onnx(model, spec.graph, exporter=exporter, device="cpu")
warm = export_onnx(model, spec.graph, exporter=exporter, device="cpu", verify=False)
proto = onnx.load_from_string(cold.data)
print(json.dumps({
    "cold": cold.export_seconds,
    "warm": warm.export_seconds,
    "verify": cold.verify_seconds,
    "bytes": len(cold.data),
    "nodes": len(proto.graph.node),
    "ops": sorted({node.op_type for node in proto.graph.node}),
    "warnings": cold.warnings,
    "max_rel": max(c.max_rel for c in cold.comparisons),
}))
"""


def command_seconds(exporter: str, out: Path) -> float:
    """Wall time of the whole `dlspec export` process."""
    dlspec = Path(sys.executable).with_name("dlspec")
    start = time.perf_counter()
    done = subprocess.run(
        [str(dlspec), "export", "specs/cnn.dl", "--exporter", exporter, "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dlspec export --exporter {exporter} failed:\n{done.stderr}")
    return seconds


def onnx_latencies(
    files: dict[str, Path], threads: int, rounds: int = 3, iterations: int = 30
) -> dict[str, list[float]]:
    """ms per call at batch 1 and 64 for each file: best of ``rounds`` alternating rounds."""
    from dlspec.backends.runtime import Session
    from dlspec.commands.bench import measure

    best: dict[str, list[float]] = {name: [float("inf")] * 2 for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            # one live session at a time: an idle one's spinning threads would slow the other
            session = Session(path, device="cpu", threads=threads)
            rows = measure(None, session, "cpu", (1, 64), warmup=5, iterations=iterations)
            del session
            best[name] = [
                min(b, r.onnx_seconds * 1e3) for b, r in zip(best[name], rows, strict=True)
            ]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    rounds, iterations = (1, 2) if args.smoke else (3, 30)
    exporters = EXPORTERS[:1] if args.smoke else EXPORTERS
    if args.smoke:
        args.threads = 1
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {exporter: Path(tmp) / f"{exporter}.onnx" for exporter in exporters}
        for exporter in exporters:
            whole = command_seconds(exporter, files[exporter])
            done = subprocess.run(
                [sys.executable, "-c", PROBE, exporter, str(args.threads)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            figures[exporter] = {"command": whole, **json.loads(done.stdout.splitlines()[-1])}
        for exporter, latency in onnx_latencies(files, args.threads, rounds, iterations).items():
            figures[exporter]["ort_ms"] = latency
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("`dlspec export` command (s)", lambda f: f"{f['command']:.2f}"),
        ("export, cold process (s)", lambda f: f"{f['cold']:.2f}"),
        ("export, warm (s)", lambda f: f"{f['warm']:.2f}"),
        ("verification (s)", lambda f: f"{f['verify']:.2f}"),
        ("file size (MB)", lambda f: f"{f['bytes'] / 1e6:.2f}"),
        ("graph nodes", lambda f: str(f["nodes"])),
        ("lines printed / warnings", lambda f: str(len(f["warnings"]))),
        ("max rel error vs torch", lambda f: f"{f['max_rel']:.1e}"),
        ("ORT latency batch 1 (ms)", lambda f: f"{f['ort_ms'][0]:.3f}"),
        ("ORT latency batch 64 (ms)", lambda f: f"{f['ort_ms'][1]:.2f}"),
    ]
    print(f"MY_NET, CPU, {args.threads} threads")
    names = {"torchscript": "TorchScript", "dynamo": "dynamo"}
    both = len(exporters) == 2
    print(
        f"{'':<30}"
        + "".join(f"{names[e]:>14}" for e in exporters)
        + (f"{'ratio':>9}" if both else "")
    )
    for label, cell in rows:
        cells = [cell(figures[exporter]) for exporter in exporters]
        ratio = ""
        if both:
            ratio = f"{float(cells[1]) / float(cells[0]):.2f}x" if float(cells[0]) else "-"
        print(f"{label:<30}" + "".join(f"{c:>14}" for c in cells) + f"{ratio:>9}")
    for exporter in exporters:
        print(f"{exporter} ops: {', '.join(figures[exporter]['ops'])}")
        for line in figures[exporter]["warnings"]:
            print(f"  {exporter} said: {line[:110]}")
    verdict = "meets" if figures["torchscript"]["command"] < GOAL else "MISSES"
    print(
        f"export + verification of MY_NET (TorchScript, the default): {verdict} the {GOAL} s goal"
    )


if __name__ == "__main__":
    main()

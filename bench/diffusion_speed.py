"""Diffusion sampling throughput: torch eager against ONNX Runtime, in images per second.

Draws --batches images (default 64 and 512) with the digits U-Net (specs/diffusion.dl, the
trained weights of --run, else random ones) in --steps DDIM steps (50) with guidance (so every
step runs the denoiser on twice the batch), and prints images/s for:

* torch eager on the device;
* ONNX Runtime, on CUDA through IO binding into preallocated buffers (no host copies), and
  again with CUDA graphs (``enable_cuda_graph``: the shapes are static, so ONNX Runtime
  records the graph once and replays it); on a machine without CUDA, the CPU provider.

The images must agree (max abs difference printed). Run:
.venv/bin/python bench/diffusion_speed.py [--run RUN_DIR] [--device cuda] [--batches 64 512]
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import dlspec
from dlspec.backends.onnx_export import export_onnx, index_limit
from dlspec.backends.runtime import CPU, CUDA
from dlspec.train.diffusion.prompts import DiffusionInputs, PromptCodec
from dlspec.train.diffusion.run import torch_denoiser
from dlspec.train.diffusion.schedule import Denoiser, NoiseSchedule, sample
from dlspec.train.diffusion.trainer import diffusion_inputs
from dlspec.train.generate import load_run, trained_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(d) for d in range(10)]


def _ort(data: bytes, inputs: DiffusionInputs, device: str, graphs: bool, batch: int) -> Denoiser:
    """ONNX Runtime bound to preallocated buffers of ``batch`` rows on ``device``."""
    import onnxruntime as ort

    options = {"enable_cuda_graph": "1"} if graphs else {}
    providers = [(CUDA, options), CPU] if device == "cuda" else [CPU]
    session = ort.InferenceSession(data, providers=providers)
    names = [i.name for i in session.get_inputs()]
    shape = inputs.image
    buffers = inputs.arrange(
        torch.zeros((batch, *shape), device=device),
        torch.zeros((batch, 1), device=device),
        torch.zeros((batch, inputs.prompt_length), dtype=torch.int64, device=device),
    )
    out = torch.zeros((batch, *shape), device=device)
    binding = session.io_binding()
    kind = "cuda" if device == "cuda" else "cpu"
    for name, buffer in zip(names, buffers, strict=True):
        dtype = np.int64 if buffer.dtype == torch.int64 else np.float32
        binding.bind_input(name, kind, 0, dtype, tuple(buffer.shape), buffer.data_ptr())
    output = session.get_outputs()[0].name
    binding.bind_output(output, kind, 0, np.float32, tuple(out.shape), out.data_ptr())

    def denoise(x: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        assert len(x) == batch, "the bound buffers have a fixed batch"
        for buffer, value in zip(buffers, inputs.arrange(x, t, p), strict=True):
            buffer.copy_(value)
        if device == "cuda":
            torch.cuda.synchronize()
        session.run_with_iobinding(binding)
        return out.clone()

    return denoise


def _rate(
    denoise: Denoiser, schedule: NoiseSchedule, prompts: torch.Tensor, args: argparse.Namespace
) -> tuple[float, torch.Tensor]:
    """Images per second (best of --repeat), and the images."""
    draw: Callable[[], torch.Tensor] = lambda: sample(  # noqa: E731
        denoise, schedule, prompts, (1, 8, 8), steps=args.steps, guidance=3.0, seed=0,
        batch_size=2 * len(prompts), device=args.device,
    )  # fmt: skip
    images = draw()  # warm-up (and CUDA graph capture)
    best = float("inf")
    for _ in range(args.repeat):
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        draw()
        if args.device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return len(prompts) / best, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a diffusion run directory (default: random)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.steps, args.repeat = [2], 2, 1

    schedule = NoiseSchedule("cosine", 1000)  # the spec's
    if args.run is not None:
        spec, checkpoint = load_run(args.run)
        model = trained_model(spec, checkpoint, args.device)
        settings = checkpoint.info["diffusion"]
        schedule = NoiseSchedule(settings["schedule"], settings["timesteps"])
    else:
        spec = dlspec.load(ROOT / "specs" / "diffusion.dl")
        torch.manual_seed(0)
        model = spec.to_torch().to(args.device).eval()
    inputs = diffusion_inputs(spec.graph)
    data = export_onnx(model.cpu(), spec.graph, verify=False, device="cpu").data
    model.to(args.device)
    codec = PromptCodec.for_classes(CLASSES, inputs.prompt_length, index_limit(spec.graph))
    variants = ["ONNX Runtime + IO binding"]
    if args.device == "cuda":
        variants.append("ONNX Runtime + CUDA graphs")
    print(f"{args.device}, {args.steps} DDIM steps with guidance; images per second")
    for batch in args.batches:
        prompts = codec.encode([CLASSES[i % 10] for i in range(batch)])
        with torch.no_grad():
            eager, reference = _rate(torch_denoiser(model, inputs), schedule, prompts, args)
        print(f"batch {batch:>4}  torch eager                 {eager:9.1f}")
        for name in variants:
            graphs = "graphs" in name
            denoise = _ort(data, inputs, args.device, graphs, 2 * batch)
            rate, images = _rate(denoise, schedule, prompts, args)
            difference = float((images - reference).abs().max())
            print(
                f"batch {batch:>4}  {name:<27} {rate:9.1f}  ({rate / eager:.2f}x, "
                f"max abs difference {difference:.1e})"
            )


if __name__ == "__main__":
    main()

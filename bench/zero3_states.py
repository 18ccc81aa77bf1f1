"""Model states per GPU, sharded: `dlspec plan --gpus N --strategy fsdp`'s figures against
DeepSpeed's ZeRO-3 estimator, in one run.

DeepSpeed's ``estimate_zero3_model_states_mem_needs`` (deepspeed/runtime/zero/stage3.py),
without offload, gives one GPU

    4 x largest_layer_params + 18 x total_params / total_gpus   bytes

where the largest layer is the module with the most parameters of its own (gathered in fp16
with its gradients), and 18 bytes a parameter cover the fp16 parameters and gradients, the
fp32 master weights and Adam's two moments, with some slack. It is written out here; the
package is not needed. Its largest layer is taken as dlspec's largest layer.

dlspec's model states are plan's weights (fp32 shards, with the unsharded buffers), gradient
shards (fp32: FSDP2 reduces into the sharded fp32 gradients), Adam's two states (fp32) -
16 bytes a parameter, padded as ``torch.chunk`` cuts the rows - and the parameters FSDP
gathers while the backward pass runs (the root unit's and the largest block use's twice, in
bf16, and that unit's fp32 reduce-scatter input). Activations are not model states: neither
side counts them here (plan does, elsewhere).

Run: .venv/bin/python bench/zero3_states.py [--tiny] [--gpus 8 ...] [SPEC ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dlspec
from dlspec.analysis import memory
from dlspec.analysis.render import human_bytes
from dlspec.layers.symbolic import value_at

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["specs/zoo/llama2_7b.dl", "specs/zoo/vit_b_16.dl", "specs/tiny_gpt.dl"]
TINY = ["specs/mlp.dl", "specs/tiny_gpt.dl"]


def zero3_gpu_bytes(total_params: int, largest_layer_params: int, gpus: int) -> int:
    """DeepSpeed's ZeRO-3 estimate for one GPU, without CPU offload."""
    return 4 * largest_layer_params + int(18 * total_params / gpus)


def dlspec_states(graph: memory.ModelGraph, gpus: int) -> tuple[int, int]:
    """plan's model states for one GPU under FSDP (bf16, Adam): sharded, and gathered."""
    step = memory.training(graph, "bf16", "adam", parallel=memory.Parallel(gpus, "fsdp"))
    at = {**graph.bindings, "B": 0}  # no activations: the model states
    sharded = sum(value_at(part, at) for part in (step.weights, step.gradients, step.optimizer))
    return sharded, max(value_at(moment.gathered, at) for moment in step.moments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", help=f"default: {' '.join(SPECS)}")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--tiny", action="store_true", help="two small specs on 2 GPUs (tests)")
    args = parser.parse_args()
    specs = TINY if args.tiny else args.specs or SPECS
    gpus = [2] if args.tiny else args.gpus
    header = f"{'spec':<16} {'GPUs':>5} {'params':>14} {'dlspec sharded':>15} {'gathered':>11}"
    print(f"{header} {'dlspec':>11} {'ZeRO-3':>11} {'ratio':>6}")
    for name in specs:
        graph = dlspec.load(ROOT / name).graph
        params = graph.trainable_params
        largest = max(leaf.params for leaf in graph.leaves())
        for count in gpus:
            sharded, gathered = dlspec_states(graph, count)
            ours, theirs = sharded + gathered, zero3_gpu_bytes(params, largest, count)
            print(
                f"{Path(name).stem:<16} {count:>5} {params:>14,} {human_bytes(sharded):>15} "
                f"{human_bytes(gathered):>11} {human_bytes(ours):>11} {human_bytes(theirs):>11} "
                f"{ours / theirs:>6.2f}"
            )


if __name__ == "__main__":
    main()

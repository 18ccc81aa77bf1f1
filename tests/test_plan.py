"""``dlspec plan``: the largest batch that fits a budget, the breakdown, and its errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

import dlspec
from dlspec.analysis import memory
from dlspec.analysis.render import human_bytes
from dlspec.cli import main
from dlspec.layers.symbolic import value_at

GIB = 2**30


def plan_json(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict[str, Any]:
    assert main(["plan", *args, "--format", "json"]) == code
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--precision", "bf16", "--optimizer", "adamw"],
        ["--optimizer", "sgd", "--checkpointing"],
    ],
)
@pytest.mark.parametrize("spec", ["tiny_gpt.dl", "vgg_block.dl", "lstm_lm.dl"])
def test_largest_batch_fits_and_one_more_does_not(
    spec: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ROOT / "specs" / spec)
    result = plan_json(capsys, path, "--memory", "2GiB", *options)
    largest = result["max_batch"]
    assert largest > 1
    assert result["batch"] == largest and result["fits"]
    assert sum(v for k, v in result["bytes"].items() if k != "total") == result["bytes"]["total"]
    assert result["bytes"]["total"] <= 2 * GIB
    over = plan_json(
        capsys, path, "--memory", "2GiB", *options, "--batch", str(largest + 1), code=1
    )
    assert not over["fits"] and over["bytes"]["total"] > 2 * GIB


def test_parts_follow_the_optimizer_and_precision(capsys: pytest.CaptureFixture[str]) -> None:
    spec = dlspec.load(ROOT / "specs" / "mlp.dl")
    params = spec.report.trainable_params
    for optimizer, states in [("sgd", 0), ("sgd-momentum", 1), ("adamw", 2), ("rmsprop", 1)]:
        result = plan_json(
            capsys, "specs/mlp.dl", "--memory", "1GiB", "--optimizer", optimizer, "--batch", "8"
        )
        formulas = result["formulas"]
        assert formulas["weights"] == formulas["gradients"] == str(4 * params)
        assert formulas["optimizer"] == str(4 * states * params)
    full = memory.training(spec.graph).activations
    half = memory.training(spec.graph, "bf16").activations
    # half-precision activations, plus the bf16 copies of the weights the products keep
    assert value_at(half, {"B": 8}) == value_at(full, {"B": 8}) // 2 + 2 * params
    result = plan_json(capsys, "specs/mlp.dl", "--memory", "1GiB", "--batch", "8")
    assert result["train_flops_per_step"] == 6 * 8 * spec.report.total_macs


def test_the_peak_is_the_largest_moment() -> None:
    """The backward pass frees each layer's activations as it makes its gradients; the
    optimizer step comes after, with all gradients and its temporaries."""
    spec = dlspec.load(ROOT / "specs" / "vgg_block.dl")
    step = memory.training(spec.graph)
    where, parts = step.peak({"B": 64})
    assert where.startswith("stage")  # activations dominate: the backward pass
    saved = value_at(step.activations, {"B": 64})
    assert parts["activations"] <= saved
    assert parts["total"] <= 4 * spec.report.trainable_params * 4 + saved + parts["transient"]
    assert step.peak({"B": 1})[0] == "the optimizer step"  # Adam's temporaries dominate


def test_checkpointing_keeps_block_inputs_and_one_block() -> None:
    spec = dlspec.load(ROOT / "specs" / "vgg_block.dl")
    rows = memory.activations(spec.graph)
    plain = value_at(memory.total(rows), {"B": 1})
    kept = value_at(memory.checkpointed(rows, {}, "fp32"), {"B": 1})
    inside = [r for r in rows if r.block is not None]
    assert inside and kept < plain
    outside = sum(value_at(r.saved, {"B": 1}) for r in rows if r.block is None)
    assert kept > outside


def test_longest_sequence_is_bound_by_memory_or_a_layer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # batch 4 at the spec's T=64 does not fit 20 MiB: exit 1, as for batch 1 (a script reads
    # the exit code as "the spec as given fits"), and the plan says how long T may be there
    args = ["plan", "specs/tiny_gpt.dl", "--memory", "20MiB", "--batch", "4", "--format", "json"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    small = json.loads(out)
    assert 1 < small["max_lengths"]["T"] < 64 and not small["fits"]
    assert err == (
        "specs/tiny_gpt.dl: error: batch 4 does not fit in 20.00 MiB at T=64: it needs "
        f"{human_bytes(small['bytes']['total'])}; the largest batch that fits is "
        f"{small['max_batch']}, or at batch 4: T up to {small['max_lengths']['T']}\n"
    )
    spec = dlspec.load(ROOT / "specs" / "tiny_gpt.dl", T=small["max_lengths"]["T"])
    assert spec.report.ok
    assert main(["plan", "specs/tiny_gpt.dl", "--memory", "24GiB", "--batch", "4"]) == 0
    assert "longest T at batch 4: 64, bound by LearnedPositionalEncoding holds 64" in (
        capsys.readouterr().out
    )


def test_budget_too_small_for_batch_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "specs/cnn.dl", "--memory", "100MiB"]) == 1
    err = capsys.readouterr().err
    assert "batch 1 does not fit in 100.00 MiB: it needs 181.89 MiB, 81.89 MiB more" in err
    # on a CPU, Adam steps one tensor at a time: twice fc1's weight, not all the weights
    assert main(["plan", "specs/cnn.dl", "--memory", "100MiB", "--device", "cpu"]) == 1
    assert "it needs 217.51 MiB, 117.51 MiB more" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["24XB", "-3GiB", "GiB", "0", "lots"])
def test_bad_sizes_are_usage_errors(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "specs/cnn.dl", "--memory", size])
    assert exit_.value.code == 2
    assert "--memory" in capsys.readouterr().err


def test_sizes() -> None:
    assert memory.parse_bytes("24GiB") == 24 * GIB
    assert memory.parse_bytes("80GB") == 80 * 10**9
    assert memory.parse_bytes("1.5 TiB") == 3 * 2**39
    assert memory.parse_bytes("4096") == 4096


def test_spec_errors_are_diagnostics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.dl"
    bad.write_text("model M { input x: float[4]\n Linear(0) }\n")
    assert main(["plan", str(bad), "--memory", "1GiB"]) == 1
    assert "error[" in capsys.readouterr().err


def _spec(tmp_path: Path, expectation: str) -> Path:
    spec = tmp_path / "m.dl"
    spec.write_text(
        "model M {\n    input x: float[3, 16, 16]\n    Conv2d(8, kernel=3, padding=1)\n"
        f"    ReLU\n    Flatten\n    Linear(10)\n    expect total {expectation}\n}}\n"
    )
    return spec


def _check(tmp_path: Path, expectation: str) -> list[str]:
    from dlspec.analysis.check import check_file

    spec = _spec(tmp_path, expectation)
    return [f"{d.code} {d.message}" for d in check_file(spec).report.diagnostics]


def test_expect_train_memory_is_the_plan_figure(tmp_path: Path) -> None:
    spec = tmp_path / "m.dl"
    _check(tmp_path, "params < 1M")
    graph = dlspec.load(spec).graph
    at_32 = memory.train_bytes(graph, memory.Options(batch=32))["total"]
    half = memory.Options(batch=4, precision="bf16", optimizer="sgd", checkpointing=True)
    at_4 = memory.train_bytes(graph, half)["total"]
    assert _check(tmp_path, f"train_memory(batch=32) <= {at_32}") == []
    [error] = _check(tmp_path, f"train_memory(batch=32) < {at_32}")
    assert error.startswith("E304 training needs ") and f"({at_32:,} bytes)" in error
    written = 'train_memory(batch=4, precision="bf16", optimizer="sgd", checkpointing=true)'
    assert _check(tmp_path, f"{written} == {at_4}") == []
    assert _check(tmp_path, "train_memory(batch=32) < 1GiB, train_memory < 8MiB") == []


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ("train_memory(batch=0) < 1GiB", "batch must be a whole number >= 1"),
        ("train_memory(32) < 1GiB", "by name"),
        ('train_memory(precision="bf17") < 1GiB', 'precision must be one of "fp32"'),
        ("train_memory(size=3) < 1GiB", "no argument 'size'"),
        ("params(batch=2) < 5", "params takes no arguments"),
    ],
)
def test_bad_train_memory_arguments(tmp_path: Path, expectation: str, message: str) -> None:
    [error] = _check(tmp_path, expectation)
    assert error.startswith("E305") and message in error


def test_the_readme_questions(capsys: pytest.CaptureFixture[str]) -> None:
    """tiny_gpt on 24 GiB, and Llama-2-7B on 80 GiB with bf16 autocast and checkpointing:
    with AdamW not at any batch (by how much), with SGD at a batch one more of does not fit
    (bench/plan_speed.py times both: well under a second)."""
    tiny = plan_json(capsys, "specs/tiny_gpt.dl", "--memory", "24GiB")
    assert tiny["fits"] and tiny["bytes"]["total"] <= 24 * GIB
    llama = ["specs/zoo/llama2_7b.dl", "--memory", "80GiB", "--precision", "bf16"]
    llama.append("--checkpointing")
    assert main(["plan", *llama, "--optimizer", "adamw"]) == 1
    assert "batch 1 does not fit in 80.00 GiB: it needs 125.51 GiB" in capsys.readouterr().err
    fits = plan_json(capsys, *llama, "--optimizer", "sgd")
    assert fits["fits"] and fits["bytes"]["total"] <= 80 * GIB
    more = str(fits["max_batch"] + 1)
    over = plan_json(capsys, *llama, "--optimizer", "sgd", "--batch", more, code=1)
    assert not over["fits"] and over["bytes"]["total"] > 80 * GIB


# ---------------------------------------------------------------------------------------------
# several GPUs: --gpus N --strategy fsdp|ddp (the bytes FSDP really holds: tests/test_fsdp.py)


def test_fsdp_shards_the_model_states_and_ddp_replicates_them() -> None:
    graph = dlspec.load(ROOT / "specs" / "mlp.dl").graph  # Linear(10): 10 rows in 4 shards of 3
    alone = memory.training(graph, "fp32", "adam")
    params = graph.trainable_params
    at = {**graph.bindings, "B": 8}
    sharded_one = memory.training(graph, "fp32", "adam", parallel=memory.Parallel(1, "fsdp"))
    assert (sharded_one.weights, sharded_one.optimizer) == (alone.weights, alone.optimizer)
    four = memory.training(graph, "fp32", "adam", parallel=memory.Parallel(4, "fsdp"))
    shards = sum(
        -(-shape[0] // 4) * math.prod(shape[1:])
        for leaf in graph.leaves()
        for shape in leaf.weights.values()
    )
    assert shards > params / 4  # padded: every rank's shard is the first rank's size
    assert (four.weights, four.gradients, four.optimizer) == (4 * shards, 4 * shards, 8 * shards)
    parts = four.bytes(at)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    # the backward pass gathers the whole (padded) model in the root unit, fp32; the optimizer
    # step, nothing
    assert parts["gathered"] == 4 * 4 * shards
    assert [(m.where, m.gathered) for m in four.moments[:1]] == [("the optimizer step", 0)]
    assert four.communication == {"all-gather": 4 * 3 * shards, "reduce-scatter": 4 * 3 * shards}
    ddp = memory.training(graph, "fp32", "adam", parallel=memory.Parallel(8, "ddp"))
    assert (ddp.weights, ddp.optimizer) == (alone.weights, alone.optimizer)
    assert ddp.bytes(at)["gathered"] == 4 * params  # the reducer's buckets
    assert ddp.communication == {"all-reduce": 2 * 7 * 4 * params // 8}


def test_llama_on_80gib_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    """Llama-2-7B with AdamW does not fit one 80 GiB GPU; sharded, it fits on the fewest
    GPUs plan names, and not on one fewer; replicated, on none."""
    llama = ["specs/zoo/llama2_7b.dl", "--memory", "80GiB", "--precision", "bf16"]
    llama += ["--checkpointing", "--optimizer", "adamw"]
    fewest = plan_json(capsys, *llama, "--strategy", "fsdp")
    gpus, batch = fewest["gpus"], fewest["max_batch"]
    assert gpus > 1 and batch >= 1 and fewest["fits"] and fewest["strategy"] == "fsdp"
    assert fewest["bytes"]["total"] <= 80 * GIB
    assert main(["plan", *llama, "--gpus", str(gpus - 1), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["max_batch"] == 0
    eight = plan_json(capsys, *llama, "--gpus", "8")
    assert eight["max_batch"] > batch
    assert eight["communication_bytes_per_step"]["all-gather"] > 0
    assert main(["plan", *llama, "--strategy", "ddp"]) == 1
    assert "DDP replicates the model on every GPU" in capsys.readouterr().err
    assert main(["plan", *llama, "--gpus", "8"]) == 0
    table = capsys.readouterr().out
    assert "8 x FSDP" in table and "gathered parameters (FSDP units)" in table
    assert "sent per GPU per step: all-gather" in table


def test_expect_train_memory_on_several_gpus(tmp_path: Path) -> None:
    graph = dlspec.load(_spec(tmp_path, "params < 1M")).graph
    chosen = memory.Options(batch=32, gpus=8, strategy="fsdp")
    at_32 = memory.train_bytes(graph, chosen)["total"]
    assert at_32 < memory.train_bytes(graph, memory.Options(batch=32))["total"]
    assert _check(tmp_path, f'train_memory(batch=32, gpus=8, strategy="fsdp") == {at_32}') == []
    [error] = _check(tmp_path, 'train_memory(batch=32, gpus=8, strategy="fsdp") < 1KiB')
    assert error.startswith(f"E304 training needs {human_bytes(at_32)}")
    assert chosen.describe() == "batch 32 per GPU, cuda, fp32, adam, 8 x FSDP"
    [error] = _check(tmp_path, "train_memory(gpus=0) < 1GiB")
    assert "gpus must be a whole number >= 1" in error
    [error] = _check(tmp_path, 'train_memory(strategy="zero3") < 1GiB')
    assert 'strategy must be one of "ddp", "fsdp"' in error


def test_the_zero3_bench_runs_at_its_smoke_size() -> None:
    """bench/zero3_states.py: plan's model states per GPU beside DeepSpeed's ZeRO-3 formula
    (18 bytes a parameter over the GPUs, plus the largest layer's 4 bytes a parameter)."""
    bench = ROOT / "bench" / "zero3_states.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(bench), "--smoke"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["mlp", "2"], ["tiny_gpt", "2"]]
    assert all(0.5 < float(row[-1]) < 1.5 for row in rows)  # dlspec / ZeRO-3

"""Diffusion: the schedule's math, prompts, sampling, a tiny training run through
``dlspec build``, ``dlspec sample`` (PNG, npz, errors), and ONNX export parity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dlspec.cli import main
from dlspec.train.diffusion import trainer as trainer_module
from dlspec.train.diffusion.judge import frechet_distance
from dlspec.train.diffusion.prompts import DiffusionInputs, PromptCodec, PromptError
from dlspec.train.diffusion.schedule import NoiseSchedule, sample, sampling_steps
from dlspec.train.generate import UnknownCharacters

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "specs" / "diffusion.dl")
TINY = ["--set", "ch=8", "--set", "groups=4", "--set", "d_text=8", "--set", "heads=2"]
FAST = [
    "--quiet",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--train",
    "timesteps=20",
    "--train",
    "sample_steps=3",
]


# the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_form_noising_matches_the_chain_step_by_step(kind: str) -> None:
    schedule = NoiseSchedule(kind, 50)
    x0 = torch.linspace(-1, 1, 8).reshape(1, 1, 2, 4)
    # without noise the chain scales x0 by prod sqrt(1 - beta) = sqrt(alpha_bar)
    x = x0.double()
    for t in range(50):
        x = schedule.q_step(x, t, torch.zeros_like(x))
        expected = schedule.q_sample(x0.double(), torch.tensor([t]), torch.zeros_like(x))
        torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    # with noise: the same mean and variance, 1 - alpha_bar, over many draws
    generator = torch.Generator().manual_seed(0)
    chain = x0.double().expand(20_000, 1, 2, 4)
    for t in range(30):
        chain = schedule.q_step(chain, t, torch.randn(chain.shape, generator=generator).double())
    ab = float(schedule.alpha_bar[29])
    torch.testing.assert_close(chain.mean(0), math.sqrt(ab) * x0[0].double(), atol=0.02, rtol=0)
    assert abs(float(chain.var(0).mean()) - (1 - ab)) < 0.02


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_falls_from_near_one_to_near_zero(kind: str) -> None:
    ab = NoiseSchedule(kind, 1000).alpha_bar
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.99 and ab[-1] < 1e-3


@pytest.mark.parametrize("timesteps", [2, 10, 20])
def test_a_short_linear_schedule_keeps_its_betas_below_one(timesteps: int) -> None:
    """Scaled by 1000 / T, DDPM's last beta (0.02) passes 1 below 20 steps: capped at 0.999,
    alpha_bar stays in (0, 1) and sampling's square roots stay real."""
    schedule = NoiseSchedule("linear", timesteps)
    assert float(schedule.betas.max()) == 0.999
    assert ((schedule.alpha_bar > 0) & (schedule.alpha_bar < 1)).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_target_gives_back_the_clean_image_and_the_noise(prediction: str) -> None:
    schedule = NoiseSchedule("cosine", 100, prediction)
    x0, noise = torch.randn(4, 1, 3, 3).double(), torch.randn(4, 1, 3, 3).double()
    t = torch.tensor([0, 10, 50, 99])
    x_t = schedule.q_sample(x0, t, noise)
    x0_back, eps_back = schedule.split(x_t, t, schedule.target(x0, noise, t))
    torch.testing.assert_close(x0_back, x0)
    torch.testing.assert_close(eps_back, noise)


def test_sampling_steps_descend_and_refuse_bad_counts() -> None:
    assert sampling_steps(10, 10) == list(range(9, -1, -1))
    assert sampling_steps(1000, 3) == [999, 500, 0]
    assert sampling_steps(1000, 1) == [999]
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="use 1 to 1000"):
            sampling_steps(1000, steps)


def test_bad_schedule_settings_are_refused() -> None:
    for args in (("quadratic", 10), ("linear", 1), ("linear", 10, "x0")):
        with pytest.raises(ValueError):
            NoiseSchedule(*args)  # type: ignore[arg-type]


# sampling with a stand-in denoiser -------------------------------------------------------------


def _denoiser(calls: list[int]) -> Any:
    """A fixed smooth function of (x, t, prompt), recording batch sizes."""

    def denoise(x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        shift = prompt.float().sum(1).view(-1, 1, 1, 1) / 10
        return torch.tanh(x * 0.5 + shift) * (t.view(-1, 1, 1, 1) / 100)

    return denoise


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_repeatable_at_a_seed_and_independent_of_the_batch_size(sampler: str) -> None:
    schedule = NoiseSchedule("linear", 100)
    prompts = torch.tensor([[1, 0], [2, 0], [0, 0], [3, 1], [1, 2]])
    draw = {"steps": 10, "guidance": 3.0, "sampler": sampler}
    calls: list[int] = []
    a = sample(_denoiser(calls), schedule, prompts, (1, 4, 4), seed=7, **draw)  # type: ignore[arg-type]
    b = sample(_denoiser([]), schedule, prompts, (1, 4, 4), seed=7, batch_size=3, **draw)  # type: ignore[arg-type]
    c = sample(_denoiser([]), schedule, prompts, (1, 4, 4), seed=8, **draw)  # type: ignore[arg-type]
    assert calls == [10] * 10  # guidance: prompted and unprompted in one batch per step
    assert a.shape == (5, 1, 4, 4) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_guidance_one_runs_the_prompted_model_alone() -> None:
    calls: list[int] = []
    sample(
        _denoiser(calls), NoiseSchedule("linear", 20), torch.ones(3, 2, dtype=torch.int64),
        (1, 2, 2), steps=4, guidance=1.0,
    )  # fmt: skip
    assert calls == [3] * 4


# prompts and inputs --------------------------------------------------------------------------


def test_prompts_encode_class_names_and_refuse_what_they_cannot() -> None:
    codec = PromptCodec.for_classes(["cat", "dog"], 4, 16)
    assert codec.chars == "acdgot"
    assert codec.encode(["dog", "a"]).tolist() == [[3, 5, 4, 0], [1, 0, 0, 0]]
    with pytest.raises(UnknownCharacters, match="'z'"):
        codec.encode(["zoo"])
    with pytest.raises(PromptError, match="at most 4"):
        codec.encode(["dogcat"])
    with pytest.raises(PromptError, match="--set vocab=7"):
        PromptCodec.for_classes(["cat", "dog"], 4, 6)
    with pytest.raises(PromptError, match="--set L=5"):
        PromptCodec.for_classes(["horse"], 4, 16)


def test_inputs_are_found_by_type_in_any_order() -> None:
    inputs = DiffusionInputs.of(
        [("p", "long", [4]), ("img", "float", [1, 8, 8]), ("t", "float", [1])], [[1, 8, 8]]
    )
    assert inputs.order == ("prompt", "image", "timestep")
    assert inputs.image == (1, 8, 8) and inputs.prompt_length == 4
    with pytest.raises(ValueError, match="three inputs"):
        DiffusionInputs.of([("img", "float", [1, 8, 8])], [[1, 8, 8]])
    with pytest.raises(ValueError, match="outputs \\[10\\]"):
        DiffusionInputs.of(
            [("p", "long", [4]), ("img", "float", [1, 8, 8]), ("t", "float", [1])], [[10]]
        )


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift() -> None:
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert frechet_distance(a, a) < 1e-6
    assert abs(frechet_distance(a, a + 2.0) - 16.0) < 1e-6  # |mu shift|^2 = 4 * 2^2


# a tiny run, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny denoiser trained for one epoch on the digits, judged with few samples."""
    out = tmp_path_factory.mktemp("diffusion")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "QUALITY_PER_PROMPT", 2)
        patch.setattr(trainer_module, "JUDGE_EPOCHS", 1)
        assert main(["build", SPEC, *TINY, "--out", str(out), *FAST]) == 0
    return out


def test_a_run_writes_its_checkpoint_metrics_and_sample_grids(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["task"] == "diffusion"
    assert metrics["data"]["classes"] == [str(d) for d in range(10)]
    test = metrics["test"]
    assert test["samples"] == 20 and test["sample_steps"] == 3
    assert 0 <= test["conditional_accuracy"] <= 1 and test["frechet_distance"] >= 0
    assert set(test["conditional_accuracy_per_prompt"]) == {str(d) for d in range(10)}
    assert metrics["epochs"][0]["train_loss"] > 0
    assert (run / "samples.png").is_file() and (run / "samples" / "epoch_001.png").is_file()
    assert (run / "learning_curves.png").is_file()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(checkpoint["state"]) == {"weights", "ema_updates"}  # the raw weights, for resume
    assert checkpoint["state"]["ema_updates"] == math.ceil(1438 / 128)


def test_resume_continues_as_the_uninterrupted_run_and_ctrl_c_saves(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "QUALITY_PER_PROMPT", 1)
    monkeypatch.setattr(trainer_module, "JUDGE_EPOCHS", 1)
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    resumed.mkdir()
    for name in ("checkpoint.pt", "model.py"):
        (resumed / name).write_bytes((run / name).read_bytes())
    args = ["build", SPEC, *TINY, *FAST, "--no-plots", "--epochs", "2"]
    assert main([*args, "--out", str(resumed), "--resume"]) == 0
    assert main([*args, "--out", str(straight)]) == 0
    losses = [
        [e["train_loss"] for e in json.loads((out / "metrics.json").read_text())["epochs"]]
        for out in (resumed, straight)
    ]
    assert len(losses[0]) == 2 and losses[0] == losses[1]

    original = trainer_module.DiffusionTrainer._step
    calls = 0

    def interrupted(self: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        if calls == 14:  # in the second epoch (12 batches per epoch)
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(trainer_module.DiffusionTrainer, "_step", interrupted)
    assert main([*args, "--out", str(tmp_path / "stopped")]) == 130
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["partial"]) == (1, True)


def test_sample_writes_a_grid_and_arrays_repeatably(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png, npz, again = tmp_path / "g.png", tmp_path / "a.npz", tmp_path / "b.npz"
    common = [str(run), "--prompt", "7", "--num", "6", "--steps", "4", "--seed", "3"]
    assert main(["sample", *common, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    assert main(["sample", *common, "--out", str(npz)]) == 0
    assert main(["sample", *common, "--out", str(again), "--sampler", "ddpm"]) == 0
    with np.load(npz) as first, np.load(again) as ddpm:
        images = first["images"]
        assert images.shape == (6, 1, 8, 8) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
        assert list(first["prompts"]) == ["7"] * 6
        assert not np.allclose(images, ddpm["images"])
    assert main(["sample", *common, "--out", str(again)]) == 0
    with np.load(npz) as first, np.load(again) as second:
        np.testing.assert_array_equal(first["images"], second["images"])


def test_several_prompts_draw_a_grid_row_each(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    png, npz = tmp_path / "rows.png", tmp_path / "rows.npz"
    common = [str(run), "--prompt", "0", "--prompt", "3", "--prompt", "5", "--num", "2"]
    common += ["--steps", "2", "--seed", "1"]
    assert main(["sample", *common, "--out", str(npz)]) == 0
    assert "6 images [1, 8, 8], prompts '0', '3', '5' (a row each)" in capsys.readouterr().out
    with np.load(npz) as arrays:
        assert list(arrays["prompts"]) == ["0", "0", "3", "3", "5", "5"]
        assert arrays["images"].shape == (6, 1, 8, 8)
    assert main(["sample", *common, "--out", str(png)]) == 0
    cell = 8 * 8 + 4  # an 8x8 digit enlarged 8 times, and the gap after it
    assert Image.open(png).size == (2 * cell + 4, 3 * cell + 4)  # 2 columns, 3 rows


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--prompt", "x", "--out", "{tmp}/a.png"], 1, "does not know: 'x'"),
        (["--prompt", "12345", "--out", "{tmp}/a.png"], 1, "at most 4"),
        (["--steps", "21", "--out", "{tmp}/a.png"], 2, "use 1 to 20"),
        ([], 2, "--out FILE.png or FILE.npz"),
        (["--out", "{tmp}/a.jpg"], 2, "(got"),
        (["--out", "{tmp}/missing/a.png"], 2, "no directory"),
    ],
)
def test_sample_errors(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    code: int,
    message: str,
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(["sample", str(run), "--num", "2", *args]) == code
    assert message in capsys.readouterr().err


def test_sample_refuses_a_run_that_is_not_a_diffusion_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 1
    assert "no checkpoint.pt in it" in capsys.readouterr().err
    mlp = ["build", str(ROOT / "specs" / "mlp.dl"), "--out", str(tmp_path), "--quiet"]
    assert main([*mlp, "--epochs", "1", "--no-plots"]) == 0
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 1
    assert "was not trained with task diffusion" in capsys.readouterr().err


def test_onnx_export_samples_the_same_images_as_torch(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = tmp_path / "denoiser.onnx"
    weights = str(run / "checkpoint.pt")
    assert main(["export", SPEC, *TINY, "--weights", weights, "--out", str(onnx_file)]) == 0
    assert "verified" in capsys.readouterr().out
    draw = ["--prompt", "3", "--num", "4", "--steps", "5", "--seed", "1"]
    outs = {name: tmp_path / f"{name}.npz" for name in ("torch", "file", "runtime")}
    assert main(["sample", str(run), *draw, "--out", str(outs["torch"])]) == 0
    assert main(["sample", str(onnx_file), *draw, "--out", str(outs["file"])]) == 0
    assert "ONNX Runtime" in capsys.readouterr().out
    args = ["sample", str(run), *draw, "--runtime", "onnx", "--out", str(outs["runtime"])]
    assert main(args) == 0
    images = {name: np.load(path)["images"] for name, path in outs.items()}
    np.testing.assert_allclose(images["file"], images["torch"], atol=1e-4)
    np.testing.assert_allclose(images["runtime"], images["torch"], atol=1e-4)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["specs/cnn.dl", "--train", "task=diffusion"], 1, "needs a model with three inputs"),
        (["specs/diffusion.dl", "--set", "vocab=5"], 1, "e.g. --set vocab=11"),
        (["specs/diffusion.dl", "--train", "normalize=Normalize(mean=0.5, std=0.5)"], 1,
         "remove normalize"),
        (["specs/diffusion.dl", "--train", "schedule=quadratic"], 2, "expected one of linear"),
        (["specs/diffusion.dl", "--train", "ema=1.5"], 2, "ema"),
    ],
)  # fmt: skip
def test_build_refuses_what_cannot_train_as_a_diffusion_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    spec, *rest = args
    assert main(["build", str(ROOT / spec), *rest, "--out", str(tmp_path), "--quiet"]) == code
    assert message in capsys.readouterr().err

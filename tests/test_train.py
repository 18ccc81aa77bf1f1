"""Training: the train section (E214, overrides), checkpoints, the task rules and the loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch
from torch import nn

from dlspec.analysis.check import check_text
from dlspec.analysis.train_config import (
    OptimizerConfig,
    TrainConfig,
    TrainConfigError,
    read_train,
    with_overrides,
)
from dlspec.syntax import ast
from dlspec.syntax.parser import parse
from dlspec.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_file,
    load_checkpoint,
    save_checkpoint,
    spec_hash,
)
from dlspec.train.data import DataError, Dataset
from dlspec.train.loop import COLLAPSE, Objective, Splits, Trainer, TrainError, load_splits
from dlspec.validation import Validated, ValidationError

ROOT = Path(__file__).resolve().parents[1]


def config_of(section: ast.TrainSection, env: dict[str, int] | None = None) -> TrainConfig:
    """The config of a valid train section."""
    config, problems = read_train(section, env or {})
    assert not problems, problems
    return config


def section(body: str) -> ast.TrainSection:
    """The train section of a one-layer model whose train section is ``body``."""
    spec, diagnostics = parse(
        f"model M {{\n input x: float[4]\n Linear(2)\n train {{ {body} }}\n}}"
    )
    assert spec is not None, diagnostics
    found = [s for s in spec.definitions[0].body if isinstance(s, ast.TrainSection)]
    return found[0]


# --------------------------------------------------------------------------------------------
# the train section


def test_defaults_without_a_train_section() -> None:
    config = TrainConfig()
    assert config == TrainConfig()
    assert (config.data, config.task, config.epochs, config.batch_size) == (
        "digits",
        "classify",
        5,
        64,
    )
    assert (config.val_split, config.seed, str(config.optimizer)) == (
        0.1,
        0,
        "Adam(lr=0.001, weight_decay=0.0)",
    )


def test_the_seed_scripts_settings() -> None:
    config = config_of(
        section(
            'data = "digits" epochs = 5 batch_size = 2 * 32 '
            "optimizer = Adam(lr=1e-3, weight_decay=1e-4) "
            "augment = [RandomRotation(10), ColorJitter(brightness=0.2, contrast=0.2)] "
            "normalize = Normalize(mean=0.1307, std=0.3081) loss = CrossEntropyLoss"
        )
    )
    assert config.batch_size == 64 and config.task == "classify"
    assert config.optimizer == OptimizerConfig(name="Adam", lr=1e-3, weight_decay=1e-4)
    assert (config.rotation, config.brightness, config.contrast) == (10, 0.2, 0.2)
    assert (config.mean, config.std) == (0.1307, 0.3081)


def test_optimizer_defaults_and_arguments() -> None:
    sgd = config_of(section("optimizer = SGD")).optimizer
    assert sgd.torch_kwargs() == {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": False,
    }
    rms = config_of(section("optimizer = RMSprop(0.002, momentum=0.5)")).optimizer
    assert (rms.lr, rms.momentum) == (0.002, 0.5)
    assert config_of(section('optimizer = "AdamW"')).optimizer.weight_decay == 0.01


def test_model_parameters_in_settings() -> None:
    assert config_of(section("epochs = n // 2"), {"n": 8}).epochs == 4


def test_command_line_overrides() -> None:
    spec = section("epochs = 5 optimizer = SGD(0.1) task = classify")
    config = with_overrides(
        config_of(spec),
        [
            ("epochs", "2"),
            ("optimizer.lr", "0.5"),
            ("data", "/tmp/my data.npz"),
            ("loss", "mse"),
            ("augment", "[RandomRotation(5)]"),
        ],
        {},
    )
    assert config.epochs == 2 and config.data == "/tmp/my data.npz"
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.momentum) == (
        "SGD",
        0.5,
        0.9,
    )
    assert config.task == "regression" and config.rotation == 5
    assert with_overrides(TrainConfig(), [("optimizer.lr", "3e-4")], {}).optimizer.lr == 3e-4
    assert with_overrides(TrainConfig(), [("task", "binary")], {}).task == "binary"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("epochs", "0"), "--train epochs=0: epochs = 0: input should be greater than or equal"),
        (("epoch", "3"), "unknown train setting 'epoch'; did you mean epochs?"),
        (("optimizer", "Adamm"), "unknown optimizer 'Adamm'; did you mean Adam"),
        (("optimizer.momentum", "0.9"), "Adam has no argument 'momentum'"),
        (("augment.degrees", "3"), "only the optimizer's arguments"),
        (("val_split", "abc"), "unknown name 'abc'"),
    ],
)
def test_bad_overrides_name_the_option(override: tuple[str, str], message: str) -> None:
    with pytest.raises(TrainConfigError, match=r"^--train ") as info:
        with_overrides(TrainConfig(), [override], {})
    assert message in str(info.value)


BAD_SECTIONS = [
    ("epoch = 3", 4, 10, "unknown train setting 'epoch'", "did you mean epochs?"),
    ("optimizer = Adamw(lr=1e-3)", 4, 22, "unknown optimizer 'Adamw'", "did you mean AdamW?"),
    ("optimizer = SGD(lr=0.1, momentun=0.9)", 4, 34, "SGD has no argument 'momentun'", "momentum"),
    ("optimizer = Adam(lr=-1)", 4, 27, "Adam: lr = -1: input should be greater than 0", None),
    ("batch_size = 0", 4, 23, "batch_size = 0: input should be greater than or equal to 1", None),
    ("val_split = 1.5", 4, 22, "val_split = 1.5: input should be less than 1", None),
    ('task = "clasify"', 4, 17, "unknown task 'clasify'", "did you mean classify?"),
    ("augment = [RandomRotaton(10)]", 4, 21, "unknown augmentation", "RandomRotation"),
    ("augment = [RandomRotation(400)]", 4, 36, "degrees = 400", None),
    ("normalize = Normalize(mean=0.5)", 4, 22, "Normalize needs std", None),
    ("epochs = 2 epochs = 3", 4, 21, "epochs is set twice", None),
    ('task = "binary" loss = "mse"', 4, 26, "set either task or loss", None),
    ("epochs = 2.5", 4, 19, "epochs = 2.5: input should be a valid integer", None),
]


@pytest.mark.parametrize(("body", "line", "column", "message", "note"), BAD_SECTIONS)
def test_bad_train_sections_are_e214_at_the_setting(
    body: str, line: int, column: int, message: str, note: str | None
) -> None:
    text = f"model M {{\n input x: float[4]\n Linear(2)\n train {{ {body} }}\n}}"
    diagnostics = [d for d in check_text(text).report.diagnostics if d.severity == "error"]
    assert [d.code for d in diagnostics] == ["E214"]
    found = diagnostics[0]
    assert (found.line, found.column) == (line, column)
    assert message in found.message
    if note is not None:
        assert any(note in n for n in found.notes)


def test_every_problem_of_a_section_is_reported() -> None:
    _, diagnostics = read_train(section("epoch = 3 optimizer = Adamw seed = -1"), {})
    assert [d.message.split(" ")[0] for d in diagnostics] == ["unknown", "unknown", "seed"]


def pydantic_twin(
    cls: type[Validated], twins: dict[Any, type[pydantic.BaseModel]]
) -> type[pydantic.BaseModel]:
    """The pydantic model a train record was (its fields and options), with the records it
    holds replaced by their ``twins``."""
    fields: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        twin = twins.get(info.annotation, info.annotation)
        default = info.default
        if isinstance(default, Validated):
            default = twin.model_validate(default.model_dump())
        fields[name] = (twin, pydantic.Field(default, **info.constraints))
    config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)
    return pydantic.create_model(cls.__name__, __config__=config, **fields)


_OPTIMIZER_TWIN = pydantic_twin(OptimizerConfig, {})
TWINS = {
    OptimizerConfig: _OPTIMIZER_TWIN,
    TrainConfig: pydantic_twin(TrainConfig, {OptimizerConfig: _OPTIMIZER_TWIN}),
}
# what a setting may be given: numbers of every sign and type, text, tuples, records
SETTING_PROBES: list[Any] = [
    None, True, False, 0, 1, -1, 2, 5, 180, 181, 100_001, 0.5, 1.0, -0.5, 1e-3, float("inf"),
    "3", "x", "digits", "cosine", "v", "fsdp", "bf16", "SGD", (), (0.1,), (0.1, 0.2), (1, "a"),
    [0.1], {"name": "SGD", "lr": 0}, {"lr": "1"}, OptimizerConfig(name="SGD"),
]  # fmt: skip
SETTING_FIELDS = [(cls, name) for cls in TWINS for name in [*cls.model_fields, "unknown"]]


@pytest.mark.parametrize(
    ("cls", "name"), SETTING_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in SETTING_FIELDS]
)
def test_every_setting_validates_as_the_pydantic_model_did(cls: type[Validated], name: str) -> None:
    """E214's messages are pydantic's: a train record accepts, coerces and refuses what a
    pydantic model with its fields and options does, with the same errors."""

    def outcome(validate: Any, value: Any) -> Any:
        try:
            return validate({name: value}).model_dump(mode="json")
        except ValidationError as exc:
            return [(e["type"], e["loc"], e["msg"], repr(e.get("input"))) for e in exc.errors()]

    for value in SETTING_PROBES:
        given = value
        if isinstance(value, Validated):  # a record: its twin
            given = TWINS[type(value)].model_validate(value.model_dump())
        expected = outcome(TWINS[cls].model_validate, given)
        assert outcome(cls.model_validate, value) == expected, value


def test_check_reports_e214_without_importing_torch(tmp_path: Path) -> None:
    spec = tmp_path / "bad.dl"
    spec.write_text("model M {\n input x: float[4]\n Linear(2)\n train { epoch = 3 }\n}\n")
    code = (
        f"import sys; from dlspec.cli import main; rc = main(['check', {str(spec)!r}]); "
        "sys.exit(3 if 'torch' in sys.modules else rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "bad.dl:4:10: error[E214]: unknown train setting 'epoch'" in result.stderr
    assert "did you mean epochs?" in result.stderr


# --------------------------------------------------------------------------------------------
# checkpoints


def small_checkpoint(digest: str = "abc") -> Checkpoint:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    return Checkpoint(
        spec_hash=digest,
        epoch=2,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        history=[{"epoch": 1, "train_loss": 0.5, "val_loss": None}],
        rng={"torch": torch.get_rng_state()},
    )


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    saved = small_checkpoint()
    save_checkpoint(path, saved)
    loaded = load_checkpoint(path, "abc")
    assert (loaded.epoch, loaded.history, loaded.partial) == (2, saved.history, False)
    assert torch.equal(loaded.model["weight"], saved.model["weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no checkpoint to resume from"),
        (b"", "corrupt, truncated or not a checkpoint"),
        (b"not a zip file at all" * 10, "corrupt, truncated or not a checkpoint"),
    ],
)
def test_unusable_checkpoints(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, "abc")


def test_truncated_and_foreign_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, small_checkpoint())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, "abc")
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a dlspec checkpoint"):
        load_checkpoint(path, "abc")


def test_checkpoint_from_another_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, small_checkpoint(spec_hash("model A {}", {"n": 1})))
    with pytest.raises(CheckpointError, match="made from a different spec"):
        load_checkpoint(path, spec_hash("model A {}", {"n": 2}))


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --------------------------------------------------------------------------------------------
# tasks and the loop, on hand-made modules


def digits_splits(**settings: str) -> tuple[TrainConfig, Splits]:
    config = with_overrides(TrainConfig(), list(settings.items()), {})
    return config, load_splits(config)


def test_splits_of_the_digits() -> None:
    _, splits = digits_splits()
    assert splits.val is not None
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sum(sizes) == 1797 and sizes[2] == 359
    assert splits.classes == [str(i) for i in range(10)]


def test_task_rules() -> None:
    _, splits = digits_splits()
    Objective("classify").check(splits, [10], "digits")
    Objective("classify").check(splits, [12], "digits")  # spare outputs are fine
    with pytest.raises(DataError, match="10 classes but the model outputs 5 class scores"):
        Objective("classify").check(splits, [5], "digits")
    with pytest.raises(DataError, match="task binary needs labels 0 and 1"):
        Objective("binary").check(splits, [1], "digits")
    with pytest.raises(DataError, match="1 regression target"):
        Objective("regression").check(splits, [3], "digits")
    with pytest.raises(TrainError, match="one vector per sample"):
        Objective("classify").check(splits, [10, 2], "digits")
    floats = Dataset(torch.rand(8, 2), torch.rand(8), [], "floats")
    with pytest.raises(DataError, match="regression targets"):
        Objective("classify").check(Splits(floats, None, floats), [2], "floats.npz")
    binary = Dataset(torch.rand(8, 2), torch.tensor([0, 1] * 4), ["no", "yes"], "b")
    with pytest.raises(TrainError, match="one output"):
        Objective("binary").check(Splits(binary, None, binary), [2], "b.npz")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(self.drop(x.flatten(1)))


def trainer(tmp_path: Path, config: TrainConfig, splits: Splits) -> Trainer:
    torch.manual_seed(config.seed)
    return Trainer(
        TinyNet(),
        config,
        splits,
        (1, 8, 8),
        device=torch.device("cpu"),
        checkpoint_path=tmp_path / "checkpoint.pt",
        spec_hash="tiny",
        progress=False,
        log=lambda _: None,
    )


def history(t: Trainer) -> list[dict[str, object]]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in t.history]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    settings = {
        "epochs": "2",
        "augment": "[RandomRotation(10), ColorJitter(0.2, 0.2)]",
        "optimizer": "Adam(lr=0.01)",
    }
    config, splits = digits_splits(**settings)
    straight = trainer(tmp_path / "a", config, splits)
    (tmp_path / "a").mkdir()
    assert straight.fit()

    (tmp_path / "b").mkdir()
    one_config, _ = digits_splits(**{**settings, "epochs": "1"})
    first = trainer(tmp_path / "b", one_config, splits)
    assert first.fit()
    resumed = trainer(tmp_path / "b", config, splits)
    resumed.restore(load_checkpoint(tmp_path / "b" / "checkpoint.pt", "tiny"))
    assert resumed.epoch == 1
    assert resumed.fit()
    assert history(resumed) == history(straight)
    assert resumed.test()["confusion_matrix"] == straight.test()["confusion_matrix"]
    assert straight.test()["accuracy"] > 0.5


def test_ctrl_c_saves_a_checkpoint_mid_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, splits = digits_splits(epochs="2")
    run = trainer(tmp_path, config, splits)
    original = Trainer._step
    calls = 0

    def interrupted_step(self: Trainer, x: torch.Tensor, y: torch.Tensor) -> object:
        nonlocal calls
        calls += 1
        if calls == 25:  # during the second epoch (21 batches per epoch)
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "_step", interrupted_step)
    assert run.fit() is False
    saved = load_checkpoint(tmp_path / "checkpoint.pt", "tiny")
    assert (saved.epoch, saved.partial, len(saved.history)) == (1, True, 1)
    assert torch.equal(saved.model["fc.weight"], run.model.state_dict()["fc.weight"])


class PlainNet(nn.Module):
    """TinyNet without dropout: what a batch computes does not depend on how it is split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


@pytest.mark.parametrize("parts", [2, 3])
def test_accumulated_parts_take_the_batchs_step(tmp_path: Path, parts: int) -> None:
    """``accumulate = N``: each batch runs as N parts and one optimizer step, the step the
    whole batch takes (a last batch smaller than N parts too)."""
    runs = []
    for accumulate in (1, parts):
        config, splits = digits_splits(
            epochs="1",
            batch_size="50",
            optimizer="SGD(lr=0.1)",
            precision="fp32",
            accumulate=str(accumulate),
        )
        assert config.accumulate == accumulate
        torch.manual_seed(0)
        model = PlainNet()
        run = Trainer(
            model,
            config,
            splits,
            (1, 8, 8),
            device=torch.device("cpu"),
            checkpoint_path=tmp_path / f"{accumulate}.pt",
            spec_hash="plain",
            progress=False,
            log=lambda _: None,
        )
        assert run.fit()
        runs.append((model, history(run)))
    (one, first), (split, second) = runs
    for a, b in zip(one.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert first[0]["train_loss"] == pytest.approx(second[0]["train_loss"], rel=1e-4)


class ShiftedNet(nn.Module):
    """A convolution whose output BatchNorm sees shifted by 3: running statistics that do not
    follow it (momentum 0 keeps them at mean 0, variance 1) spoil every evaluation."""

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, momentum=momentum)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x) + 3))
        return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))


@pytest.mark.parametrize("momentum", [0.0, 0.1])
def test_batchnorm_notice_when_its_running_statistics_spoil_the_test(
    tmp_path: Path, momentum: float
) -> None:
    """Momentum 0: the test collapses against training and batch statistics recover it, so
    test() says so in figures; momentum 0.1: the statistics follow, no figures, no notice."""
    config, splits = digits_splits(epochs="1", optimizer="Adam(lr=0.01)")
    torch.manual_seed(0)
    run = Trainer(
        ShiftedNet(momentum),
        config,
        splits,
        (1, 8, 8),
        device=torch.device("cpu"),
        checkpoint_path=tmp_path / "checkpoint.pt",
        spec_hash="shifted",
        progress=False,
        log=lambda _: None,
    )
    assert run.fit()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = run.test()
    trained = run.history[-1]["train_accuracy"]
    steps = -(-len(splits.train) // config.batch_size)
    assert run.history[-1]["steps"] == run.steps == steps
    if momentum:
        assert result["accuracy"] >= COLLAPSE * trained
        assert "notice" not in result and "batch_statistics_accuracy" not in result
        return
    assert result["accuracy"] < COLLAPSE * trained
    batch = result["batch_statistics_accuracy"]
    assert batch - result["accuracy"] >= (trained - result["accuracy"]) / 2
    assert result["notice"].startswith(
        f"test accuracy is {result['accuracy']:.1%} against {trained:.1%} on the training data, "
        f"but {batch:.1%} when each BatchNorm normalises a test batch with its own statistics: "
        f"after {steps} steps, BatchNorm's running statistics (momentum 0: "
    )
    assert "BatchNorm2d(momentum=0.3)" in result["notice"]
    # the batch-statistics pass changed nothing: running statistics, weights, the mode
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not run.model.training and run.model.bn.running_mean is not None
    assert run.test()["accuracy"] == result["accuracy"]

"""The ``train { ... }`` section of a spec: settings -> a validated :class:`TrainConfig`.

Static and torch-free, so that ``dlspec check`` reports a bad train section (E214, at the
setting, with a did-you-mean) without importing a tensor library::

    train {
        data = "digits"   task = "classify"   epochs = 5   batch_size = 64
        val_split = 0.1   seed = 0
        optimizer = Adam(lr=1e-3, weight_decay=1e-4)
        augment = [RandomRotation(10), ColorJitter(brightness=0.2, contrast=0.2)]
        normalize = Normalize(mean=0.1307, std=0.3081)
    }

Every setting has a default (see :class:`TrainConfig`), so the section may be partial or
absent. The analyzer reads the section once (:func:`read_train`) into the ``TrainConfig`` the
model graph carries; ``dlspec build`` applies its command line to that config with
:func:`with_overrides` (``--train epochs=3``, ``--train optimizer.lr=0.01``).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from dlspec.analysis.binding import match_arguments
from dlspec.analysis.evaluate import did_you_mean, evaluate
from dlspec.diagnostics import Diagnostic, DiagnosticError, Span, fail
from dlspec.syntax import ast
from dlspec.syntax.parser import parse
from dlspec.validation import Field, Validated, ValidationError

__all__ = [
    "AUGMENTATIONS",
    "LOSSES",
    "OPTIMIZERS",
    "SETTINGS",
    "OptimizerConfig",
    "TrainConfig",
    "TrainConfigError",
    "read_train",
    "with_overrides",
]

Task = Literal["classify", "binary", "regression", "language_model", "diffusion"]
Schedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "v"]
Sampler = Literal["ddim", "ddpm"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: Optimiser name -> the arguments it takes (the first, ``lr``, may be given positionally).
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "Adam": ("lr", "weight_decay"),
    "AdamW": ("lr", "weight_decay"),
    "SGD": ("lr", "momentum", "weight_decay", "nesterov"),
    "RMSprop": ("lr", "momentum", "weight_decay", "alpha"),
}

# Where an optimiser's defaults differ from OptimizerConfig's: torch's, and SGD with momentum.
_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "AdamW": {"weight_decay": 0.01},
    "SGD": {"lr": 0.01, "momentum": 0.9},
    "RMSprop": {"lr": 0.01},
}

#: ``loss = ...`` names -> the task they mean (``task`` and ``loss`` are two ways to say it).
LOSSES: dict[str, Task] = {
    "cross_entropy": "classify",
    "CrossEntropyLoss": "classify",
    "bce_with_logits": "binary",
    "BCEWithLogitsLoss": "binary",
    "mse": "regression",
    "MSELoss": "regression",
}

#: Augmentation name -> its arguments, positional in this order.
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "RandomRotation": ("degrees",),
    "ColorJitter": ("brightness", "contrast"),
}
_AUGMENT_FIELDS = {"degrees": "rotation"}  # argument -> TrainConfig field, where they differ


class _Strict(Validated, extra="forbid", strict=True):
    """A record of train settings: frozen, as every validated record, and also strict: no
    unknown fields, no coercion (``"3"`` is not an epoch count)."""


class OptimizerConfig(_Strict):
    """An optimiser and its settings; only the arguments :data:`OPTIMIZERS` lists for
    ``name`` reach torch."""

    name: Literal["Adam", "AdamW", "SGD", "RMSprop"] = "Adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False
    alpha: float = Field(default=0.99, gt=0, lt=1)

    def torch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.optim.<name>(params, **kwargs)``."""
        return {arg: getattr(self, arg) for arg in OPTIMIZERS[self.name]}

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.torch_kwargs().items())})"


class TrainConfig(_Strict):
    """Everything ``dlspec build`` needs to train, defaulting to the seed script's choices."""

    data: str = "digits"
    task: Task = "classify"
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    val_split: float = Field(default=0.1, ge=0, lt=1)  # 0: no validation set
    test_split: float = Field(default=0.2, gt=0, lt=1)  # held out when the data has no test set
    seed: int = Field(default=0, ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    rotation: float = Field(default=0.0, ge=0, le=180)  # RandomRotation(degrees)
    brightness: float = Field(default=0.0, ge=0)  # ColorJitter(brightness, contrast)
    contrast: float = Field(default=0.0, ge=0)
    mean: float | tuple[float, ...] | None = None  # Normalize(mean, std); None: none
    std: float | tuple[float, ...] | None = None
    # autocast: auto = bf16 on CUDA (fp16 where unsupported) and for image models on CPUs with
    # native bf16; fp32 elsewhere
    precision: Precision = "auto"
    download: bool = False  # fetch "mnist" / "fashion-mnist" when they are missing
    # task diffusion (dlspec.train.diffusion): the noise schedule and its number of steps,
    # what the network predicts, the EMA decay of the weights (0: none), the fraction of
    # images trained without their prompt (classifier-free guidance), and how the per-epoch
    # grids and the quality measurement sample (sampler, steps, guidance scale)
    schedule: Schedule = "linear"
    timesteps: int = Field(default=1000, ge=2, le=100_000)
    prediction: Prediction = "epsilon"
    ema: float = Field(default=0.999, ge=0, lt=1)
    cond_drop: float = Field(default=0.1, ge=0, lt=1)
    sampler: Sampler = "ddim"
    sample_steps: int = Field(default=50, ge=1)
    guidance: float = Field(default=3.0, ge=0)
    # activation checkpointing: recompute each of the model's block uses in backward
    checkpointing: bool = False
    # several processes (dlspec build --nproc-per-node): ddp replicates the model in each,
    # fsdp shards it (torch's fully_shard per block use, then the root)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # gradient accumulation: each batch runs as this many parts, their gradients summed before
    # one optimizer step (the same step, with a part's activation memory)
    accumulate: int = Field(default=1, ge=1)


class TrainConfigError(ValueError):
    """A bad train setting from the command line; the message names it and says why."""


# ---------------------------------------------------------------------------------------------
# one setting -> TrainConfig fields

Fields = dict[str, Any]
_NOWHERE = Span(0, 0, 0, 0)  # a command-line override has no place in the spec
Reader = Callable[[ast.Setting, Mapping[str, Any]], Fields]  # a setting -> its fields


def _value(expr: ast.Expr, env: Mapping[str, Any]) -> Any:
    """An expression's value; any problem with it is a train-section error (E214)."""
    try:
        value = evaluate(expr, env)
    except DiagnosticError as err:
        raise fail("E214", err.diagnostic.message, expr.span, err.diagnostic.notes) from None
    return tuple(value) if isinstance(value, list) else value


def _call(
    expr: ast.Expr, what: str, known: Mapping[str, Sequence[str]]
) -> tuple[str, list[ast.Arg]]:
    """The name and arguments of a call-like value: ``Name(args)``, ``Name`` or ``"Name"``;
    the name must be one of ``known``."""
    if isinstance(expr, ast.CallExpr):
        name, span, args = expr.name.name, expr.name.span, expr.args
    elif isinstance(expr, ast.Ref):
        name, span, args = expr.name, expr.span, []
    elif isinstance(expr, ast.Str):
        name, span, args = expr.value, expr.span, []
    else:
        raise fail("E214", f"expected {what}, e.g. {next(iter(known))}", expr.span)
    if name not in known:
        notes = did_you_mean(name, known) or [f"expected one of {', '.join(known)}"]
        raise fail("E214", f"unknown {what} {name!r}", span, notes)
    return name, args


def _arguments(
    name: str, args: Sequence[ast.Arg], names: Sequence[str], env: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Span]]:
    """Argument values by name (positional ones fill ``names`` in order), and their spans;
    a problem binding them is a train-section error (E214)."""
    try:
        matched = match_arguments(name, args, names, names)
    except DiagnosticError as err:  # E202, E205, E213 are train-section errors here
        raise DiagnosticError(err.diagnostic.model_copy(update={"code": "E214"})) from None
    values = {key: _value(arg.value, env) for key, arg in matched.items()}
    return values, {key: arg.span for key, arg in matched.items()}


def _message(error: Any) -> str:
    message = str(error["msg"])
    return f"{error.get('input')!r}: {message[0].lower()}{message[1:]}"


def _checked(field: str, value: Any, label: str, span: Span) -> Any:
    """``value`` if it is valid for the TrainConfig ``field``, else an E214 at ``span``."""
    try:
        TrainConfig.model_validate({field: value})
    except ValidationError as exc:
        raise fail("E214", f"{label} = {_message(exc.errors()[0])}", span) from None
    return value


def _optimizer(setting: ast.Setting, env: Mapping[str, Any]) -> Fields:
    name, args = _call(setting.value, "optimizer", OPTIMIZERS)
    return {"optimizer": _optimizer_with(name, _OPTIMIZER_DEFAULTS.get(name, {}), args, env)}


def _optimizer_with(
    name: str, base: Mapping[str, Any], args: Sequence[ast.Arg], env: Mapping[str, Any]
) -> OptimizerConfig:
    """Optimizer ``name`` with the settings ``base``, then ``args``."""
    given, spans = _arguments(name, args, OPTIMIZERS[name], env)
    try:
        return OptimizerConfig.model_validate({**base, "name": name, **given})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        where = spans.get(key, _NOWHERE)
        raise fail("E214", f"{name}: {key} = {_message(error)}", where) from None


def _augment(setting: ast.Setting, env: Mapping[str, Any]) -> Fields:
    value = setting.value
    items = value.items if isinstance(value, ast.ListExpr) else [value]
    fields: Fields = {"rotation": 0.0, "brightness": 0.0, "contrast": 0.0}
    for item in items:
        if isinstance(item, ast.Ref) and item.name in ("none", "None"):
            continue
        name, args = _call(item, "augmentation", AUGMENTATIONS)
        given, spans = _arguments(name, args, AUGMENTATIONS[name], env)
        for key, number in given.items():
            field = _AUGMENT_FIELDS.get(key, key)
            fields[field] = _checked(field, number, f"{name}: {key}", spans[key])
    return fields


def _normalize(setting: ast.Setting, env: Mapping[str, Any]) -> Fields:
    value = setting.value
    if isinstance(value, ast.Ref) and value.name in ("none", "None", "false", "False"):
        return {"mean": None, "std": None}
    name, args = _call(value, "normalization", {"Normalize": ("mean", "std")})
    given, spans = _arguments(name, args, ("mean", "std"), env)
    for key in ("mean", "std"):
        if key not in given:
            raise fail(
                "E214",
                f"Normalize needs {key}=...",
                value.span,
                ["e.g. Normalize(mean=0.1307, std=0.3081), or one value per channel: [..., ...]"],
            )
        item = given[key]
        numbers = item if isinstance(item, tuple) else (item,)
        if (
            not numbers
            or not all(isinstance(v, int | float) for v in numbers)
            or any(isinstance(v, bool) for v in numbers)
        ):
            raise fail(
                "E214", f"Normalize: {key} must be a number or a list of numbers", spans[key]
            )
        if key == "std" and any(v <= 0 for v in numbers):
            raise fail("E214", "Normalize: std must be > 0", spans[key])
        given[key] = tuple(float(v) for v in item) if isinstance(item, tuple) else float(item)
    return given


def _named(field: str, what: str, choices: Mapping[str, Any]) -> Reader:
    """A setting whose value is one of ``choices`` (a string or a bare name)."""

    def read(setting: ast.Setting, env: Mapping[str, Any]) -> Fields:
        name, _ = _call(setting.value, what, choices)
        return {field: choices[name]}

    return read


def _plain(setting: ast.Setting, env: Mapping[str, Any]) -> Fields:
    key = setting.name.name
    return {key: _checked(key, _value(setting.value, env), key, setting.value.span)}


_TASKS: dict[str, Task] = {
    "classify": "classify",
    "binary": "binary",
    "regression": "regression",
    "language_model": "language_model",
    "diffusion": "diffusion",
}
_PRECISIONS = {p: p for p in ("auto", "fp32", "bf16", "fp16")}

#: Setting name -> how its value becomes TrainConfig fields.
SETTINGS: dict[str, Reader] = {
    "data": _plain,
    "task": _named("task", "task", _TASKS),
    "loss": _named("task", "loss", LOSSES),
    "epochs": _plain,
    "batch_size": _plain,
    "eval_batch_size": _plain,
    "val_split": _plain,
    "test_split": _plain,
    "seed": _plain,
    "optimizer": _optimizer,
    "augment": _augment,
    "normalize": _normalize,
    "precision": _named("precision", "precision", _PRECISIONS),
    "download": _plain,
    "schedule": _named("schedule", "noise schedule", {"linear": "linear", "cosine": "cosine"}),
    "timesteps": _plain,
    "prediction": _named("prediction", "prediction", {"epsilon": "epsilon", "v": "v"}),
    "ema": _plain,
    "cond_drop": _plain,
    "sampler": _named("sampler", "sampler", {"ddim": "ddim", "ddpm": "ddpm"}),
    "sample_steps": _plain,
    "guidance": _plain,
    "checkpointing": _plain,
    "strategy": _named("strategy", "strategy", {"ddp": "ddp", "fsdp": "fsdp"}),
    "accumulate": _plain,
}


# ---------------------------------------------------------------------------------------------
# a list of settings -> TrainConfig


def _reader(setting: ast.Setting) -> Reader:
    key = setting.name.name
    if key not in SETTINGS:
        notes = did_you_mean(key, SETTINGS) or [f"train settings: {', '.join(SETTINGS)}"]
        raise fail("E214", f"unknown train setting {key!r}", setting.name.span, notes)
    return SETTINGS[key]


def read_train(
    section: ast.TrainSection | None, env: Mapping[str, Any]
) -> tuple[TrainConfig, list[Diagnostic]]:
    """The config a spec's train section describes (defaults where it is silent or absent)
    and an E214 for each invalid setting; ``env`` holds the model's parameters, which
    settings may use in expressions."""
    failures: list[Diagnostic] = []
    fields: Fields = {}
    seen: set[str] = set()
    for setting in section.settings if section is not None else []:
        key = setting.name.name
        try:
            read = _reader(setting)
            if key in seen:
                raise fail("E214", f"{key} is set twice in the train section", setting.name.span)
            same = {"task": "loss", "loss": "task"}.get(key)
            if same in seen:
                raise fail(
                    "E214",
                    "set either task or loss, not both",
                    setting.name.span,
                    ['loss = "cross_entropy" is task = "classify", and so on'],
                )
            seen.add(key)
            fields.update(read(setting, env))
        except DiagnosticError as err:
            failures.append(err.diagnostic)
    # every field was validated on its own above, and no constraint spans two fields
    return TrainConfig.model_validate(fields), failures


# ---------------------------------------------------------------------------------------------
# command-line overrides

_VERBATIM = ("data",)  # settings whose command-line text is taken as it is (paths)


def _override_value(key: str, text: str) -> ast.Expr:
    """``text`` as a spec value (``3``, ``1e-3``, ``SGD(lr=0.1)``, ``[RandomRotation(10)]``),
    or as a string when it is not one (``/data/mnist``, ``regression``)."""
    as_string = ast.Str(span=_NOWHERE, value=text)
    if key in _VERBATIM:
        return as_string
    spec, _ = parse(f"model M {{ train {{ value = {text} }} }}")
    if spec is None or len(spec.definitions) != 1 or len(spec.definitions[0].body) != 1:
        return as_string
    section = spec.definitions[0].body[0]
    if not isinstance(section, ast.TrainSection) or len(section.settings) != 1:
        return as_string
    return section.settings[0].value


def _override(config: TrainConfig, key: str, text: str, env: Mapping[str, Any]) -> TrainConfig:
    head, dot, argument = key.partition(".")
    value = _override_value(argument if dot else key, text)
    name = ast.Ident(span=_NOWHERE, name=argument if dot else key)
    if not dot:
        setting = ast.Setting(span=_NOWHERE, name=name, value=value)
        return config.model_copy(update=_reader(setting)(setting, env))
    if head != "optimizer":
        raise fail(
            "E214",
            "only the optimizer's arguments can be set one by one (optimizer.lr=...)",
            _NOWHERE,
        )
    current = config.optimizer
    arg = ast.Arg(span=_NOWHERE, name=name, value=value)
    optimizer = _optimizer_with(current.name, current.model_dump(), [arg], env)
    return config.model_copy(update={"optimizer": optimizer})


def with_overrides(
    config: TrainConfig, overrides: Sequence[tuple[str, str]], env: Mapping[str, Any]
) -> TrainConfig:
    """``config`` with command-line ``overrides`` applied in order: pairs ``(setting,
    text)`` such as ``("epochs", "3")`` or ``("optimizer.lr", "0.01")`` (``env``: the model's
    parameters). Raises :class:`TrainConfigError` naming the first bad override."""
    for key, text in overrides:
        try:
            config = _override(config, key, text, env)
        except DiagnosticError as err:
            notes = "".join(f"; {note}" for note in err.diagnostic.notes)
            raise TrainConfigError(
                f"--train {key}={text}: {err.diagnostic.message}{notes}"
            ) from None
    return config

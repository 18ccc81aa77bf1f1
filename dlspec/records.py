"""Typed, bounded schemas for what an earlier run left in a file for a later command: the
``info`` of a training checkpoint and the ``dlspec.*`` metadata of an exported ONNX model.

They are validated where they are read, as the spec's layer arguments are: a field of the
wrong type or out of range (``params`` a list, no class names, an unknown schedule, an
``index_limit`` that is not a number, two billion timesteps) is a :class:`RecordError` that
names the file and the field, never a traceback or an allocation nobody asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    ValidationError,
    model_validator,
)

from dlspec.syntax.bounds import MAX_COUNT

#: Steps of a noise schedule, as the train section allows.
MAX_TIMESTEPS = 100_000
#: Values in one generated image (a 4096 x 4096 RGB image is 50 million).
MAX_IMAGE_VALUES = 2**26

Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Scalar = bool | int | float | str  # a model parameter's value
Name = Annotated[str, Field(max_length=10_000)]
# class names as the data gave them: numbers (digit labels) are kept as their text
ClassName = Annotated[Name, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v)]
ClassNames = Annotated[list[ClassName], Field(min_length=1, max_length=10_000_000)]


class RecordError(ValueError):
    """A checkpoint's info or a model's metadata that is not what dlspec wrote."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class DiffusionSettings(_Record):
    """How a diffusion model was trained and samples by default (``info["diffusion"]``)."""

    order: tuple[Literal["image", "timestep", "prompt"], ...] = Field(min_length=3, max_length=3)
    image: tuple[Count, ...] = Field(min_length=1, max_length=4)
    prompt_length: Annotated[int, Field(ge=0, le=1_000_000)]
    token_limit: Count
    schedule: Literal["linear", "cosine"]
    timesteps: Annotated[int, Field(ge=2, le=MAX_TIMESTEPS)]
    prediction: Literal["epsilon", "v"]
    sampler: Literal["ddim", "ddpm"]
    sample_steps: Annotated[int, Field(ge=1, le=MAX_TIMESTEPS)]
    guidance: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _bounded(self) -> DiffusionSettings:
        if sorted(self.order) != ["image", "prompt", "timestep"]:
            raise ValueError("order must name image, timestep and prompt once each")
        if math.prod(self.image) > MAX_IMAGE_VALUES:
            raise ValueError(f"an image of {list(self.image)} is larger than dlspec draws")
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps {self.sample_steps} > timesteps {self.timesteps}")
        return self


class RunInfo(_Record):
    """A checkpoint's ``info``: the spec and values its weights belong to, and the data's
    class names (a language model's vocabulary); a checkpoint of `dlspec import` has
    neither spec nor classes."""

    spec: Name = "<spec>"
    model: Name | None = None
    params: dict[Name, Scalar] = {}
    bindings: dict[Name, Count] = {}
    spec_text: Annotated[str, Field(max_length=1024 * 1024)] | None = None
    classes: ClassNames | None = None
    task: Name | None = None
    diffusion: DiffusionSettings | None = None


class Normalize(_Record):
    """What is subtracted from and divided into an image before the model: one number, or
    one per channel."""

    mean: float | list[float]
    std: float | list[float]

    @model_validator(mode="after")
    def _finite(self) -> Normalize:
        for name, value in (("mean", self.mean), ("std", self.std)):
            values = value if isinstance(value, list) else [value]
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite numbers")
        std = self.std if isinstance(self.std, list) else [self.std]
        if not all(v > 0 for v in std):
            raise ValueError("std must be > 0")
        return self


class ExportMetadata(_Record):
    """The ``dlspec.*`` metadata of a model that ``dlspec export`` wrote (every field may be
    missing in a model from elsewhere)."""

    spec: Name | None = Field(None, alias="dlspec.spec")
    model: Name | None = Field(None, alias="dlspec.model")
    spec_hash: Name | None = Field(None, alias="dlspec.spec_hash")
    precision: Literal["fp32", "fp16"] | None = Field(None, alias="dlspec.precision")
    params: Json[dict[Name, Scalar]] = Field({}, alias="dlspec.params")
    bindings: Json[dict[Name, Count]] = Field({}, alias="dlspec.bindings")
    index_limit: Count = Field(1, alias="dlspec.index_limit")
    classes: Json[ClassNames] | None = Field(None, alias="dlspec.classes")
    normalize: Json[Normalize] | None = Field(None, alias="dlspec.normalize")
    diffusion: Json[DiffusionSettings] | None = Field(None, alias="dlspec.diffusion")


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def run_info(info: Mapping[str, Any], where: str) -> RunInfo:
    """``info`` of the checkpoint at ``where``, validated; RecordError says what is wrong."""
    try:
        return RunInfo.model_validate(dict(info))
    except ValidationError as exc:
        raise RecordError(f"{where}: the checkpoint's info {_problem(exc)}") from None


def export_metadata(metadata: Mapping[str, str], where: str) -> ExportMetadata:
    """The dlspec metadata of the ONNX model at ``where``, validated; RecordError says what
    is wrong."""
    try:
        return ExportMetadata.model_validate(dict(metadata))
    except ValidationError as exc:
        raise RecordError(f"{where}: the model's metadata {_problem(exc)}") from None

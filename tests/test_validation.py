"""Validated records (dlspec.validation) against pydantic's BaseModel: every layer kind's
every argument accepts, coerces and refuses what a pydantic model with the same annotations
does, with the same error types, locations and messages; and the records behave as frozen
pydantic models where dlspec relies on it (copy, pickle, equality, hash, dump)."""

import copy
import pickle
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import pytest
from pydantic_core import SchemaValidator

from dlspec.layers import REGISTRY
from dlspec.layers.symbolic import Poly
from dlspec.validation import (
    After,
    Field,
    FieldInfo,
    Plain,
    Validated,
    ValidationError,
    core_schema,
)

T = Poly.symbol("T")

# values a spec (or an importer) may give an argument: numbers of every sign and type, text,
# tuples and lists of them, None, and a symbolic size
PROBES: list[Any] = [
    0, 1, -1, 2, 7, 1.0, 1.5, -0.5, 1e-5, 10**12, True, False, None, "x", "zeros", "same",
    "q", "", (), (1,), (2, 3), (0, 1), (1, -1), [2, 2], (1.5,), ("q", "k"), ("q", "q"),
    ((1, 2), (3, 4)), {"a": 1}, T, 2 * T,
]  # fmt: skip


def pydantic_type(annotation: Any) -> Any:
    """The annotation with dlspec's markers as pydantic's: what a BaseModel field would say."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return Annotated[(pydantic_type(args[0]), *map(_marker, annotation.__metadata__))]
    if origin is Literal or not args:
        return annotation
    if origin in (Union, types.UnionType):
        return Union[tuple(map(pydantic_type, args))]  # noqa: UP007 - built from args
    return origin[tuple(map(pydantic_type, args))]


def _marker(meta: Any) -> Any:
    if isinstance(meta, FieldInfo):
        return pydantic.Field(**meta.constraints)
    if isinstance(meta, Plain):
        return pydantic.PlainValidator(meta.validate)
    if isinstance(meta, After):
        return pydantic.AfterValidator(meta.check)
    raise AssertionError(meta)


def outcome(validate: Any, value: Any) -> Any:
    """What validating ``value`` gives: the value with its type, or the errors."""
    try:
        result = validate(value)
    except ValidationError as exc:
        return [(e["type"], e["loc"], e["msg"]) for e in exc.errors()]
    return ("ok", result, type(result))


FIELDS = [
    (kind, name, info)
    for kind in sorted(REGISTRY)
    for name, info in REGISTRY[kind].model_fields.items()
]


@pytest.mark.parametrize(("kind", "name", "info"), FIELDS, ids=[f"{k}.{n}" for k, n, _ in FIELDS])
def test_every_argument_validates_as_pydantic_does(kind: str, name: str, info: FieldInfo) -> None:
    ours = SchemaValidator(core_schema(Annotated[info.annotation, Field(**info.constraints)]))
    theirs = pydantic.TypeAdapter(
        Annotated[pydantic_type(info.annotation), pydantic.Field(**info.constraints)]
    )
    for value in PROBES:
        assert outcome(ours.validate_python, value) == outcome(theirs.validate_python, value), (
            f"{kind}.{name} = {value!r}"
        )


Pos = Annotated[int, Field(ge=1)]


class Record(Validated, extra="forbid", populate_by_name=True):
    out: Pos
    kernel_size: Pos | tuple[Pos, ...] = Field(validation_alias="kernel")
    mode: Literal["a", "b"] = "a"
    scale: float | None = None
    dims: tuple[int, ...] = Field((1,), min_length=1)


class Twin(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    out: Annotated[int, pydantic.Field(ge=1)]
    kernel_size: (
        Annotated[int, pydantic.Field(ge=1)] | tuple[Annotated[int, pydantic.Field(ge=1)], ...]
    ) = pydantic.Field(validation_alias="kernel")
    mode: Literal["a", "b"] = "a"
    scale: float | None = None
    dims: tuple[int, ...] = pydantic.Field((1,), min_length=1)


@pytest.mark.parametrize(
    "data",
    [
        {"out": 3, "kernel": 2},
        {"out": 3, "kernel_size": (2, 2)},
        {"out": 0, "kernel": (1, 0)},
        {"out": True, "kernel": "x", "mode": "c", "scale": "z", "dims": ()},
        {"out": 2.0, "kernel": [3, 3], "extra": 1},
        {},
    ],
)
def test_a_record_validates_as_its_pydantic_twin(data: dict[str, Any]) -> None:
    """Missing and extra fields, aliases by either name, coercion, defaults and the set of
    fields given."""
    ours, theirs = outcome(Record.model_validate, data), outcome(Twin.model_validate, data)
    if ours[0] == "ok":
        assert theirs[0] == "ok"
        assert ours[1].model_dump() == theirs[1].model_dump()
        assert ours[1].model_fields_set == theirs[1].model_fields_set
    else:
        assert ours == theirs


def test_records_are_frozen_values() -> None:
    record = Record(out=3, kernel_size=2)
    assert record == Record(out=3, kernel=2) and hash(record) == hash(Record(out=3, kernel=2))
    assert record != Record(out=4, kernel=2)
    assert repr(record) == "Record(out=3, kernel_size=2, mode='a', scale=None, dims=(1,))"
    with pytest.raises(AttributeError, match="frozen"):
        record.out = 4  # type: ignore[misc]
    for again in (copy.copy(record), copy.deepcopy(record), pickle.loads(pickle.dumps(record))):
        assert again == record and again.model_fields_set == {"out", "kernel_size"}
    changed = record.model_copy(update={"out": 5})
    assert (changed.out, record.out, changed.model_fields_set) == (5, 3, {"out", "kernel_size"})
    assert record.model_dump(exclude_defaults=True) == {"out": 3, "kernel_size": 2}
    assert Record.model_fields["kernel_size"].is_required()
    assert not Record.model_fields["mode"].is_required()


class Mutable(Validated, frozen=False):
    items: list[int] = Field(default_factory=list)
    symbol: Annotated[Any, Plain(lambda v: v, serialize=str)] = None


def test_mutable_records_and_serializers() -> None:
    first, second = Mutable(), Mutable()
    first.items.append(1)
    assert second.items == []  # each its own default
    first.items = [2]
    assert first.model_fields_set == {"items"}
    with pytest.raises(TypeError, match="unhashable"):
        hash(first)
    with pytest.raises(AttributeError, match="no field"):
        first.other = 1  # type: ignore[attr-defined]
    assert Mutable(symbol=2 * T).model_dump(mode="json")["symbol"] == "2*T"
    assert Mutable(items=[1]).model_dump_json() == '{"items":[1],"symbol":"None"}'


def test_bad_declarations_are_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="unknown class options"):

        class _Bad(Validated, sorted=True):  # type: ignore[call-arg]
            pass

    with pytest.raises(TypeError, match="takes no constraint"):
        core_schema(Annotated[bool, Field(ge=1)])

"""Validated records: classes whose fields pydantic's validation engine checks, without
pydantic's ``BaseModel``.

What a user writes (a layer's arguments, a train setting) is validated by pydantic-core, the
engine under every pydantic model, from a schema made here out of the class's annotations:
the same checks, the same coercions and the same error types and messages as a ``BaseModel``
with those annotations (a test holds the two to each other). What is left out is the part of
pydantic that a check cannot afford at start-up: importing ``BaseModel``'s machinery and
building a model class per layer kind cost a ``dlspec check`` more than its own work (about
60 ms of 164, with the report's and the train section's models; the import floor, lark and
pydantic, is 66 ms). A class here is made in microseconds and builds its validator the first
time it validates.

A subclass declares fields as a pydantic model does (``name: type = default``, with
:func:`Field` for constraints, a default factory or a second name), takes the same class
options (``frozen``, ``extra``, ``strict``, ``populate_by_name``) and offers the part of
``BaseModel``'s interface dlspec uses: ``model_validate``, ``model_copy``, ``model_dump``,
``model_dump_json``, ``model_fields`` and ``model_fields_set``; a problem raises pydantic's
``ValidationError``.
"""

import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from pydantic_core import (
    PydanticUndefined,
    SchemaSerializer,
    SchemaValidator,
    ValidationError,
)
from pydantic_core import core_schema as cs
from typing_extensions import Self, dataclass_transform

T = TypeVar("T")

__all__ = ["After", "Field", "FieldInfo", "Plain", "Validated", "ValidationError"]

# the constraints a Field may put on a type, by the core schema types that take them
_CONSTRAINTS: dict[str, frozenset[str]] = {
    "int": frozenset({"ge", "gt", "le", "lt", "multiple_of"}),
    "float": frozenset({"ge", "gt", "le", "lt", "multiple_of", "allow_inf_nan"}),
    "str": frozenset({"pattern", "min_length", "max_length"}),
    "tuple": frozenset({"min_length", "max_length"}),
    "list": frozenset({"min_length", "max_length"}),
}
_SIMPLE: dict[Any, Callable[[], cs.CoreSchema]] = {
    int: cs.int_schema,
    float: cs.float_schema,
    bool: cs.bool_schema,
    str: cs.str_schema,
    Any: cs.any_schema,
}


class FieldInfo:
    """A field's declaration: its type, its default (``PydanticUndefined`` when it has none),
    a default factory, a second name it is given by and constraints (``ge=1``,
    ``pattern=...``); the attributes of pydantic's ``FieldInfo`` that dlspec reads."""

    __slots__ = (
        "annotation",
        "constraints",
        "default",
        "default_factory",
        "validation_alias",
    )

    def __init__(
        self,
        default: Any = PydanticUndefined,
        *,
        default_factory: Callable[[], Any] | None = None,
        validation_alias: str | None = None,
        **constraints: Any,
    ) -> None:
        self.annotation: Any = None
        self.default = default
        self.default_factory = default_factory
        self.validation_alias = validation_alias
        self.constraints = constraints

    def is_required(self) -> bool:
        return self.default is PydanticUndefined and self.default_factory is None

    def __repr__(self) -> str:
        return f"FieldInfo(annotation={self.annotation!r}, default={self.default!r})"


def Field(
    default: Any = PydanticUndefined,
    *,
    default_factory: Callable[[], Any] | None = None,
    validation_alias: str | None = None,
    **constraints: Any,
) -> Any:
    """A field's default and constraints, in a class body (``x: int = Field(1, ge=1)``) or
    in ``Annotated`` (``Pos = Annotated[int, Field(ge=1)]``)."""
    return FieldInfo(
        default,
        default_factory=default_factory,
        validation_alias=validation_alias,
        **constraints,
    )


class Plain:
    """``Annotated`` metadata: a function that validates the value in place of its type's
    schema (pydantic's ``PlainValidator``), and one that serializes it (``PlainSerializer``)."""

    def __init__(
        self, validate: Callable[[Any], Any], serialize: Callable[[Any], Any] | None = None
    ) -> None:
        self.validate = validate
        self.serialize = serialize


class After:
    """``Annotated`` metadata: a function run on the value once its type has validated it
    (pydantic's ``AfterValidator``); it returns the value or raises ``ValueError``."""

    def __init__(self, check: Callable[[Any], Any]) -> None:
        self.check = check


def core_schema(annotation: Any) -> cs.CoreSchema:
    """The pydantic-core schema of a type, as pydantic makes it: ``X | None`` is nullable,
    ``tuple[X, ...]`` variadic, a :class:`Validated` class its model schema, and any other
    class an instance check."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        schema = core_schema(args[0])
        for meta in annotation.__metadata__:
            schema = _annotate(schema, meta)
        return schema
    if origin is Literal:
        return cs.literal_schema(list(args))
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        schema = (
            core_schema(members[0])
            if len(members) == 1
            else cs.union_schema([core_schema(m) for m in members])
        )
        return cs.nullable_schema(schema) if len(members) < len(args) else schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return cs.tuple_schema([core_schema(args[0])], variadic_item_index=0)
        return cs.tuple_schema([core_schema(a) for a in args])
    if origin is list:
        return cs.list_schema(core_schema(args[0]))
    if origin is dict:
        return cs.dict_schema(core_schema(args[0]), core_schema(args[1]))
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]()
    if isinstance(annotation, type) and issubclass(annotation, Validated):
        return annotation.__model_schema__()
    if isinstance(annotation, type):
        return cs.is_instance_schema(annotation)
    raise TypeError(f"no schema for the type {annotation!r}")


def _annotate(schema: cs.CoreSchema, meta: Any) -> cs.CoreSchema:
    """``schema`` with one item of ``Annotated`` metadata applied."""
    if isinstance(meta, Plain):
        serialization = (
            cs.plain_serializer_function_ser_schema(meta.serialize) if meta.serialize else None
        )
        return cs.no_info_plain_validator_function(meta.validate, serialization=serialization)
    if isinstance(meta, After):
        return cs.no_info_after_validator_function(meta.check, schema)
    if isinstance(meta, FieldInfo):
        return _constrained(schema, meta.constraints)
    raise TypeError(f"unknown Annotated metadata {meta!r}")


def _constrained(schema: cs.CoreSchema, constraints: dict[str, Any]) -> cs.CoreSchema:
    """``schema`` with a Field's constraints; those of an optional type apply to the value
    that is not None, as pydantic applies them."""
    if not constraints:
        return schema
    if schema["type"] == "nullable":
        return cs.nullable_schema(_constrained(schema["schema"], constraints))
    allowed = _CONSTRAINTS.get(schema["type"], frozenset())
    if unknown := set(constraints) - allowed:
        raise TypeError(f"a {schema['type']} schema takes no constraint {sorted(unknown)}")
    return {**schema, **constraints}


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class Validated:
    """Base of a class of validated records (see the module's text). Class options, given
    as class arguments (``class Layer(Validated, frozen=True, extra="forbid")``), are
    inherited: ``frozen`` (the default: no assignment, hashable), ``extra`` (``"ignore"`` or
    ``"forbid"``), ``strict`` (no coercion: ``"1"`` is not an int) and ``populate_by_name``
    (a field with a ``validation_alias`` may be given by either name)."""

    # what pydantic-core sets on the instances a model schema makes, as on a BaseModel's
    __slots__ = (
        "__dict__",
        "__pydantic_extra__",
        "__pydantic_fields_set__",
        "__pydantic_private__",
    )
    __pydantic_fields_set__: set[str]

    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _options: ClassVar[dict[str, Any]] = {
        "frozen": True,
        "extra": "ignore",
        "strict": False,
        "populate_by_name": False,
    }

    def __init_subclass__(cls, **options: Any) -> None:
        if unknown := set(options) - set(Validated._options):
            raise TypeError(f"{cls.__name__}: unknown class options {sorted(unknown)}")
        super().__init_subclass__()
        cls._options = {**cls._options, **options}
        fields = dict(cls.model_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if name.startswith("_") or get_origin(annotation) is ClassVar:
                continue
            if isinstance(annotation, str):
                raise TypeError(f"{cls.__name__}.{name}: a field's type must not be a string")
            value = cls.__dict__.get(name, PydanticUndefined)
            info = value if isinstance(value, FieldInfo) else FieldInfo(value)
            info.annotation = annotation
            fields[name] = info
            if name in cls.__dict__:
                delattr(cls, name)  # the instance's value, not the class's default, is read
        cls.model_fields = fields

    @classmethod
    def __model_schema__(cls) -> cs.CoreSchema:
        """The class's pydantic-core model schema, made once."""
        if (schema := cls.__dict__.get("_schema")) is None:
            options = cls._options
            fields = {
                name: cs.model_field(
                    _with_default(core_schema(info.annotation), info),
                    validation_alias=info.validation_alias,
                    frozen=options["frozen"] or None,
                )
                for name, info in cls.model_fields.items()
            }
            config = cs.CoreConfig(
                title=cls.__name__,
                strict=options["strict"],
                extra_fields_behavior=options["extra"],
                validate_by_name=options["populate_by_name"],
                validate_by_alias=True,
            )
            inner = cs.model_fields_schema(fields, model_name=cls.__name__)
            schema = cs.model_schema(cls, inner, config=config, frozen=options["frozen"])
            type.__setattr__(cls, "_schema", schema)
        return schema

    @classmethod
    def _validator(cls) -> SchemaValidator:
        return cls._made("_validator_", SchemaValidator)

    @classmethod
    def _serializer(cls) -> SchemaSerializer:
        return cls._made("_serializer_", SchemaSerializer)

    @classmethod
    def _made(cls, name: str, make: Callable[[cs.CoreSchema], T]) -> T:
        """The class's own ``name`` (not a base's), made from its schema the first time."""
        if (made := cls.__dict__.get(name)) is None:
            made = make(cls.__model_schema__())
            type.__setattr__(cls, name, made)
        return made

    def __init__(self, **data: Any) -> None:
        type(self)._validator().validate_python(data, self_instance=self)

    @classmethod
    def model_validate(cls, obj: Any) -> Self:
        """An instance from a mapping of field values (or the instance itself)."""
        return cls._validator().validate_python(obj)

    @property
    def model_fields_set(self) -> set[str]:
        """The fields that were given, not defaulted."""
        return self.__pydantic_fields_set__

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A copy with the fields in ``update`` replaced (not validated, as pydantic's)."""
        copy = type(self).__new__(type(self))
        update = update or {}
        _fill(copy, {**self.__dict__, **update}, self.__pydantic_fields_set__ | set(update))
        return copy

    def model_dump(self, *, mode: Literal["python", "json"] = "python", **options: Any) -> Any:
        """The fields as plain values (``mode="json"``: as JSON has them); ``include``,
        ``exclude`` and ``exclude_defaults`` as pydantic's."""
        return type(self)._serializer().to_python(self, mode=mode, **options)

    def model_dump_json(self, *, indent: int | None = None) -> str:
        return type(self)._serializer().to_json(self, indent=indent).decode()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        if not self._options["frozen"]:
            raise TypeError(f"unhashable type: {type(self).__name__!r} (not frozen)")
        return hash((self.__class__, *self.__dict__.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({shown})"

    def __setattr__(self, name: str, value: Any) -> None:
        if self._options["frozen"]:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
        if name not in self.model_fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self.__dict__[name] = value
        self.__pydantic_fields_set__.add(name)

    def __getstate__(self) -> dict[str, Any]:
        return {"__dict__": self.__dict__, "fields_set": self.__pydantic_fields_set__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _fill(self, state["__dict__"], state["fields_set"])


def _fill(record: Validated, values: dict[str, Any], fields_set: set[str]) -> None:
    """Set what pydantic-core sets on the records it makes: the fields' values, the fields
    given, and neither extra fields nor private attributes."""
    _set = object.__setattr__
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", fields_set)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)


def _with_default(schema: cs.CoreSchema, info: FieldInfo) -> cs.CoreSchema:
    """A field's schema with its constraints and, where it has one, its default."""
    schema = _constrained(schema, info.constraints)
    if info.default_factory is not None:
        return cs.with_default_schema(schema, default_factory=info.default_factory)
    if info.default is not PydanticUndefined:
        return cs.with_default_schema(schema, default=info.default)
    return schema

"""Binding a call's arguments to what it calls: a layer kind's fields (validated against its
pydantic schema), with the span of each argument for diagnostics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dlspec.analysis.evaluate import did_you_mean, evaluate
from dlspec.diagnostics import Diagnostic, DiagnosticError, Span, fail
from dlspec.layers import REGISTRY, Layer
from dlspec.syntax import ast


class ArgumentErrors(DiagnosticError):
    """Several problems with one call's arguments; ``diagnostic`` is the last of them."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics[-1])
        self.diagnostics = diagnostics


def bind_layer(call: ast.Call, env: Mapping[str, Any]) -> tuple[Layer, dict[str, Span]]:
    """The layer a call of a layer kind describes, validated against the kind's schema,
    and where each of its arguments was written. Raises :class:`DiagnosticError` (or
    :class:`ArgumentErrors` when pydantic finds several problems)."""
    cls = REGISTRY[call.name.name]
    data: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    positional = [a for a in call.args if a.name is None]
    if cls.variadic is not None:
        if positional:
            data[cls.variadic] = [evaluate(a.value, env) for a in positional]
            spans[cls.variadic] = positional[0].span
    else:
        if len(positional) > len(cls.positional):
            extra = positional[len(cls.positional)]
            raise fail(
                "E205",
                f"{cls.kind} takes at most {len(cls.positional)} positional arguments "
                f"({', '.join(cls.positional) or 'none'}), got {len(positional)}",
                extra.span,
            )
        for field_name, arg in zip(cls.positional, positional, strict=False):
            data[field_name] = evaluate(arg.value, env)
            spans[field_name] = arg.span
    fields = cls.model_fields
    aliases = {str(f.validation_alias): name for name, f in fields.items() if f.validation_alias}
    for arg in call.args:
        if arg.name is None:
            continue
        key = arg.name.name
        canonical = aliases.get(key, key)
        if canonical in data:
            raise fail("E213", f"argument {key!r} given twice", arg.span)
        if canonical not in fields:
            raise fail(
                "E202",
                f"{cls.kind} has no argument {key!r}",
                arg.name.span,
                did_you_mean(key, [*fields, *aliases])
                or [f"arguments: {', '.join(fields) or 'none'}"],
            )
        if canonical in cls.references and isinstance(arg.value, ast.Ref):
            data[canonical] = arg.value.name  # a statement's name, not an expression
        else:
            data[canonical] = evaluate(arg.value, env)
        spans[canonical] = arg.span
    try:
        return cls.model_validate(data), spans
    except ValidationError as exc:
        raise _validation_errors(cls, exc, spans, call) from None


def _validation_errors(
    cls: type[Layer], exc: ValidationError, spans: dict[str, Span], call: ast.Call
) -> ArgumentErrors:
    aliases = {
        str(f.validation_alias): name for name, f in cls.model_fields.items() if f.validation_alias
    }
    diags = []
    for err in exc.errors():
        field_name = aliases.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else ""
        if err["type"] == "missing":
            positional = field_name in cls.positional
            hint = (
                f" (positional argument {cls.positional.index(field_name) + 1})"
                if positional
                else ""
            )
            diags.append(
                Diagnostic.at("E203", f"{cls.kind} needs argument {field_name!r}{hint}", call.span)
            )
        else:
            value = err.get("input")
            diags.append(
                Diagnostic.at(
                    "E204",
                    f"{cls.kind} argument {field_name}={value!r}: {err['msg'].lower()}",
                    spans.get(field_name, call.span),
                )
            )
    return ArgumentErrors(diags)

"""Binding a call's arguments to what it calls (a layer kind's fields, validated against its
pydantic schema; a block's parameters; a train setting's), with each argument's span."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dlspec.analysis.evaluate import did_you_mean, evaluate, trees
from dlspec.diagnostics import Diagnostic, DiagnosticError, Span, fail
from dlspec.layers import REGISTRY, Layer, provenance
from dlspec.layers.provenance import Tree
from dlspec.layers.symbolic import Poly
from dlspec.syntax import ast
from dlspec.validation import ValidationError


class ArgumentErrors(DiagnosticError):
    """Several problems with one call's arguments; ``diagnostic`` is the last of them."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics[-1])
        self.diagnostics = diagnostics


def match_arguments(
    callee: str,
    args: Sequence[ast.Arg],
    names: Sequence[str],
    positional: Sequence[str],
    aliases: Mapping[str, str] | None = None,
) -> dict[str, ast.Arg]:
    """Each argument of a call under the parameter it gives: positional ones fill
    ``positional`` in order, keyword ones name one of ``names`` (or an alias of one).
    Raises E205 (too many positional arguments), E202 (no such parameter) or E213 (a
    parameter given twice). The one place a call's arguments meet its parameters: layer
    kinds, blocks and the train section's optimizers and augmentations all bind here."""
    aliases = aliases or {}
    given = [a for a in args if a.name is None]
    if len(given) > len(positional):
        raise fail(
            "E205",
            f"{callee} takes at most {len(positional)} positional arguments "
            f"({', '.join(positional) or 'none'}), got {len(given)}",
            given[len(positional)].span,
        )
    matched = dict(zip(positional, given, strict=False))
    for arg in args:
        if arg.name is None:
            continue
        key = arg.name.name
        canonical = aliases.get(key, key)
        if canonical in matched:
            raise fail("E213", f"argument {key!r} given twice", arg.span)
        if canonical not in names:
            raise fail(
                "E202",
                f"{callee} has no argument {key!r}",
                arg.name.span,
                did_you_mean(key, [*names, *aliases])
                or [f"arguments: {', '.join(names) or 'none'}"],
            )
        matched[canonical] = arg
    return matched


def bind_layer(
    call: ast.Call, env: Mapping[str, Any], named: Mapping[str, tuple[Tree, Tree]] | None = None
) -> tuple[Layer, dict[str, Span], list[str]]:
    """The layer a call of a layer kind describes, validated against the kind's schema,
    where each of its arguments was written, and the arguments whose expressions
    (:mod:`provenance`) the validated values lost (a validator that rewrote a value). The
    layer's fields keep the expressions of the values they were given. Raises
    :class:`DiagnosticError` (or :class:`ArgumentErrors` when pydantic finds several
    problems). ``named`` gives the expressions of parameters whose values cannot carry them
    (bools, strings): an argument that reads one is lost too."""
    cls = REGISTRY[call.name.name]
    fields = cls.model_fields
    aliases = {str(f.validation_alias): name for name, f in fields.items() if f.validation_alias}
    data: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    args = list(call.args)
    if cls.variadic is not None:  # every positional argument is one item of a tuple
        items = [a for a in args if a.name is None]
        args = [a for a in args if a.name is not None]
        if items:
            data[cls.variadic] = [evaluate(a.value, env) for a in items]
            spans[cls.variadic] = items[0].span
    positional = () if cls.variadic is not None else cls.positional
    matched = match_arguments(cls.kind, args, list(fields), positional, aliases)
    for name, arg in matched.items():
        if name in cls.references and isinstance(arg.value, ast.Ref):
            data[name] = arg.value.name  # a statement's name, not an expression
        else:
            data[name] = evaluate(arg.value, env)
        spans[name] = arg.span
    try:
        layer = cls.model_validate(data)
    except ValidationError as exc:
        raise _validation_errors(cls, exc, spans, call) from None
    kept: dict[str, Any] = {}
    lost = [
        key
        for key, arg in matched.items()
        if isinstance(data[key], bool | str)
        and key not in cls.references
        and named
        and provenance.names(trees(arg.value, env, named)[0])
    ]
    for key, raw in data.items():
        if provenance.carries(raw):
            value = _carry(raw, getattr(layer, key))
            if value is None:
                lost.append(key)
            else:
                kept[key] = value
    return (layer.model_copy(update=kept) if kept else layer), spans, lost


def _carry(raw: Any, valid: Any) -> Any:
    """``valid`` (a validated field) with the expressions of ``raw`` (what the spec gave):
    equal values take them, a number spread into a tuple (``kernel=k`` -> ``(k, k)``) gives
    them to each item; None where the validator made something else of them."""
    if isinstance(valid, tuple | list) and not isinstance(raw, tuple | list):
        raw = [raw] * len(valid)
    if isinstance(valid, tuple | list) and isinstance(raw, tuple | list):
        if len(raw) != len(valid):
            return None
        items = [_carry(r, v) for r, v in zip(raw, valid, strict=True)]
        return None if any(i is None for i in items) else type(valid)(items)
    if type(valid) is type(provenance.plain(raw)) and valid == raw:
        return raw
    if isinstance(valid, float) and isinstance(raw, int) and valid == raw:
        return provenance.as_float(raw)
    return valid if not provenance.carries(raw) else None


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
        elif isinstance(value := err.get("input"), Poly):
            diags.append(
                Diagnostic.at(
                    "E405",
                    f"{cls.kind} argument {field_name}={value} is a symbolic size, but "
                    f"{field_name} takes a fixed number",
                    spans.get(field_name, call.span),
                    ["a symbolic dimension's value is known only when the model runs"],
                )
            )
        else:
            diags.append(
                Diagnostic.at(
                    "E204",
                    f"{cls.kind} argument {field_name}={value!r}: {err['msg'].lower()}",
                    spans.get(field_name, call.span),
                )
            )
    return ArgumentErrors(diags)

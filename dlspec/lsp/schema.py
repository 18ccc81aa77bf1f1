"""Completion items from the layer registry: layer kinds, and a kind's arguments."""

from __future__ import annotations

import re

from lsprotocol import types

from dlspec.layers import REGISTRY


def _summary(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def kind_items(blocks: list[str]) -> list[types.CompletionItem]:
    """Every layer kind, then the spec's own blocks."""
    items = [
        types.CompletionItem(
            label=kind,
            kind=types.CompletionItemKind.Class,
            detail=cls.family,
            documentation=_summary(cls.__doc__),
        )
        for kind, cls in sorted(REGISTRY.items())
    ]
    items += [
        types.CompletionItem(label=name, kind=types.CompletionItemKind.Module, detail="block")
        for name in blocks
    ]
    return items


def argument_items(kind: str, block_params: dict[str, list[str]]) -> list[types.CompletionItem]:
    """The keyword arguments of ``kind`` (a layer kind or one of the spec's blocks)."""
    if kind in block_params:
        return [
            types.CompletionItem(
                label=name, kind=types.CompletionItemKind.Field, insert_text=f"{name}="
            )
            for name in block_params[kind]
        ]
    cls = REGISTRY.get(kind)
    if cls is None:
        return []
    items = []
    for name, field in cls.model_fields.items():
        if name == cls.variadic:
            continue
        required = field.is_required()
        detail = "required" if required else f"default {field.default!r}"
        alias = field.validation_alias
        for label in [alias, name] if isinstance(alias, str) else [name]:
            items.append(
                types.CompletionItem(
                    label=label,
                    kind=types.CompletionItemKind.Field,
                    detail=detail,
                    insert_text=f"{label}=",
                )
            )
    return items


def block_parameters(text: str) -> dict[str, list[str]]:
    """Each ``block Name(a: int, ...)`` of the text with its parameter names (read with a
    pattern, so that it works while the text does not parse)."""
    blocks = {}
    for match in re.finditer(r"\bblock\s+([A-Za-z_]\w*)\s*(?:\(([^)]*)\))?", text):
        params = match.group(2) or ""
        blocks[match.group(1)] = re.findall(r"([A-Za-z_]\w*)\s*:", params)
    return blocks


def name_items(text: str) -> list[types.CompletionItem]:
    """The names the text binds with `let` and the indexes of its loops (``for i in
    range(n)``), which an argument's value may read (read with a pattern, as the blocks)."""
    lets = dict.fromkeys(re.findall(r"\blet\s+([A-Za-z_]\w*)\s*=", text))
    indexes = dict.fromkeys(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\s+range\b", text))
    return [
        types.CompletionItem(label=name, kind=types.CompletionItemKind.Variable, detail=detail)
        for names, detail in ((lets, "let"), (indexes, "loop index"))
        for name in names
    ]

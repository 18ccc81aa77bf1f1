"""The manual's layer reference (docs/layers.md), from the registry (``make docs`` rewrites it)."""

from __future__ import annotations

from dlspec.layers import REGISTRY


def reference_markdown() -> str:
    """One table row per layer kind: its arguments (positional ones first) and defaults, what
    it does, and how its MAC count compares with torchinfo's."""
    lines = [
        "| kind | family | arguments (default) | what it does | MACs vs torchinfo |",
        "|---|---|---|---|---|",
    ]
    for kind in sorted(REGISTRY, key=lambda k: (REGISTRY[k].family, k)):
        cls = REGISTRY[kind]
        order = {name: i for i, name in enumerate(cls.positional)}
        args = []
        for name, field in sorted(cls.model_fields.items(), key=lambda f: order.get(f[0], 99)):
            alias = f" (or `{field.validation_alias}`)" if field.validation_alias else ""
            if name == cls.variadic:
                args.append(f"*{name}")
            elif field.is_required():
                args.append(f"**{name}**{alias}")
            else:
                args.append(f"{name}{alias}={field.default!r}")
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        doc = " ".join(doc.split()).replace("|", "\\|")
        row = [f"`{kind}`", cls.family, ", ".join(args) or "-", doc, cls.torchinfo_macs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")

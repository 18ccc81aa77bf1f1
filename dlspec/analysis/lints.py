"""Warnings about specs that are valid but probably not what the user wants (W501-W505)."""

from __future__ import annotations

from dlspec.analysis.graph import ModelGraph, Node
from dlspec.diagnostics import Diagnostic, n
from dlspec.layers.base import numel
from dlspec.syntax import ast

# Families through which a linear map stays linear (W502 looks through them).
TRANSPARENT = ("regularization", "reshape")
HUGE_PARAMS = 1_000_000_000


def _task(graph: ModelGraph) -> str:
    for setting in graph.train.settings if graph.train else []:
        if setting.name.name in ("task", "loss"):
            value = setting.value
            if isinstance(value, ast.Str):
                return value.value
            if isinstance(value, (ast.Ref, ast.CallExpr)):  # task = binary, loss = MSELoss()
                return value.name if isinstance(value, ast.Ref) else value.name.name
    return "classify"


def _sequences(nodes: list[Node]) -> list[list[Node]]:
    """Every straight-line body of the model: the top level, block bodies, residual branches."""
    out = [nodes]
    for node in nodes:
        if node.container in ("block", "residual"):
            out.extend(_sequences(node.children))
        if node.shortcut:
            out.extend(_sequences(node.shortcut))
        if node.container == "repeat":
            out.extend(_sequences(node.children[:1]))
    return out


def lint(graph: ModelGraph) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    last = graph.nodes[-1] if graph.nodes else None
    if (
        last is not None
        and last.layer is not None
        and last.layer.probabilities
        and _task(graph) in ("classify", "cross_entropy", "CrossEntropyLoss", "language_model")
    ):
        diags.append(
            Diagnostic.at(
                "W501",
                f"{last.name}: {last.layer.kind} right before the output; the cross-entropy loss "
                "applies log-softmax itself, so training would normalise twice",
                last.span,
                ["end the model with the logits (remove this layer); apply softmax at inference"],
            )
        )
    for body in _sequences(graph.nodes):
        dense: Node | None = None
        for node in body:
            family = node.layer.family if node.layer is not None else None
            if family == "dense" and dense is not None:
                diags.append(
                    Diagnostic.at(
                        "W502",
                        f"{dense.name} and {node.name} are linear layers with no nonlinearity "
                        "between them: together they are one linear map with more parameters",
                        node.span,
                        ["add an activation (e.g. ReLU) between them, or merge them"],
                    )
                )
            if family == "dense":
                dense = node
            elif family not in TRANSPARENT:
                dense = None
    leaves = graph.leaves()
    total = sum(leaf.params for leaf in leaves)
    with_params = [leaf for leaf in leaves if leaf.params]
    if len(with_params) >= 3 and total:
        big = max(with_params, key=lambda leaf: leaf.params)
        # the primer's tip is about a dense layer after a big feature map; an LM's embedding
        # or recurrent core holding most parameters is normal
        if big.params > total / 2 and big.layer is not None and big.layer.family == "dense":
            diags.append(
                Diagnostic.at(
                    "W504",
                    f"{big.path} holds {big.params / total:.1%} of the parameters "
                    f"({n(big.params)} of {n(total)})",
                    big.span,
                    [
                        "a large dense layer after a big feature map is the usual cause; pool "
                        "further (or use AdaptiveAvgPool2d) before flattening"
                    ],
                )
            )
    for leaf in leaves:
        count = sum(numel(s) for s in leaf.weights.values())
        if count >= HUGE_PARAMS:
            diags.append(
                Diagnostic.at(
                    "W505",
                    f"{leaf.path} has {n(count)} parameters = {count * 4 / 2**30:,.1f} GiB in fp32 "
                    f"({count * 16 / 2**30:,.1f} GiB to train with Adam)",
                    leaf.span,
                )
            )
    return diags

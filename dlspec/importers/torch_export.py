"""Capture a PyTorch model with torch.export: the models torch.fx cannot trace.

Hugging Face models branch on configuration values and build masks with Python control flow;
torch.export runs the forward on example inputs, records the ATen operations it performs
(sizes that follow a symbolic input dimension stay symbolic) and, for every operation, the
module path it came from. ``torch.export.unflatten`` rebuilds the module hierarchy from those
paths: one graph per module, calling its children's graphs. Each graph is tidied (no-op
conversions and views removed, ATen operations renamed to the torch functions and methods
the importer's tables know, ``aten.slice`` as indexing) and mapped by the same scopes as
torch.fx's graphs (:mod:`dlspec.importers.torch_fx`), modules mapping to layer kinds through
the original modules. What a module receives that is made from sizes alone (a causal mask,
position ids, rotary cosines) is a constant of its graph, not an input.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlspec.importers.ir import Imported, ImportFailed, Unmapped
from dlspec.importers.torch_fx import (
    InputSpec,
    _Capture,
    _class_name,
    _where,
    call,
    example,
)

# ATen operations -> the method each is (same arguments after the tensor)
METHODS = {
    "view": "view",
    "_unsafe_view": "view",
    "reshape": "reshape",
    "transpose": "transpose",
    "permute": "permute",
    "unsqueeze": "unsqueeze",
    "squeeze": "squeeze",
    "expand": "expand",
    "split": "split",
    "mean": "mean",
    "sum": "sum",
    "flatten": "flatten",
    "select": "select",
    "pow": "pow",
    "rsqrt": "rsqrt",
    "neg": "neg",
    "contiguous": "contiguous",
    "t": "t",
}
# ... and the function each is
FUNCTIONS: dict[str, Any] = {
    "add": operator.add,
    "mul": operator.mul,
    "sub": operator.sub,
    "div": operator.truediv,
    "cat": torch.cat,
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": torch.softmax,
    "log_softmax": torch.log_softmax,
    "dropout": F.dropout,
    "scaled_dot_product_attention": F.scaled_dot_product_attention,
    "matmul": torch.matmul,
}
# conversions that change nothing where the dtype stays (an fp32 model's `.to(float32)`)
CONVERSIONS = ("to", "_to_copy", "alias", "clone", "contiguous", "lift_fresh_copy", "detach")
ASSERTIONS = ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
INT64_MAX = 2**63 - 1  # aten.slice's "to the end"


class _Picked(nn.Module):
    """The model with one of its results picked (``logits``, ``last_hidden_state``, ``0``):
    what torch.export records, taking every input by position (``names``: the keyword each
    is passed to the model by, None for one passed by position). A forward that takes
    ``use_cache`` runs without a cache of past keys, which only generation reads."""

    def __init__(self, model: nn.Module, path: list[str], names: Sequence[str | None] = ()) -> None:
        super().__init__()
        self.model = model
        self.path = path
        self.names = list(names)
        accepts = inspect.signature(model.forward).parameters
        self.options = {"use_cache": False} if "use_cache" in accepts else {}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        value = call(self.model, inputs, self.names, **self.options)
        for part in self.path:
            value = value[int(part)] if isinstance(value, (tuple, list)) else value[part]
        return value


def result_path(value: Any, output: str | None) -> list[str]:
    """The path to the result ``output`` names (``logits``, ``encoder_last_hidden_state``,
    ``0``, ``hidden_states.1``) in what the model returned; without ``output``, the first
    tensor, as ``model(x)[0]`` reads it. Raises ValueError naming what there is."""
    path: list[str] = []
    parts = output.split(".") if output else []
    while not isinstance(value, torch.Tensor) or parts:
        fields = _fields(value)
        if not fields:
            got = "a tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"--output {output}: {'.'.join(path) or 'the result'} is {got}")
        part = parts.pop(0) if parts else next(iter(fields))
        if part not in fields:
            where = f" in {'.'.join(path)}" if path else ""
            raise ValueError(
                f"--output {output}: no {part!r}{where}; the model returns "
                + ", ".join(f"{k} ({_what(v)})" for k, v in fields.items())
            )
        value = fields[part]
        path.append(part)
    return path


def pick(value: Any, output: str | None) -> Any:
    """The result ``output`` names in what a model returned (see :func:`result_path`)."""
    for part in result_path(value, output):
        value = _fields(value)[part]
    return value


def _fields(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return {str(i): v for i, v in enumerate(value) if v is not None}
    return {}


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"[{', '.join(map(str, value.shape))}]"
    return type(value).__name__


class _Exported(_Capture):
    """A capture that reads each module's graph from one unflattened exported program."""

    tracer = "torch.export"
    exported = True

    def __init__(self, model: nn.Module, modules: nn.Module, symbols: dict[str, str]) -> None:
        super().__init__(model)
        self.modules = modules  # the unflattened program: path -> its graph's module
        self.symbols = symbols  # torch.export's symbol of each --input dimension -> its name

    def graph(self, module: nn.Module, path: str) -> tuple[nn.Module, fx.Graph]:
        unflattened = self.modules.get_submodule(f"model.{path}" if path else "model")
        return unflattened, _graph(unflattened)

    def constants(self, path: str) -> list[float]:
        _, graph = self.graph(self.model.get_submodule(path), path)
        return [a for n in graph.nodes for a in (*n.args, *n.kwargs.values()) if type(a) is float]

    def sizes(self, node: fx.Node, value: torch.Tensor) -> tuple[int | str, ...] | None:
        """The sizes torch.export recorded for the node, a symbolic one by its name (None
        when one is a formula of the symbols, or the node is one the importer made)."""
        recorded = node.meta.get("val")
        if not self.symbols:
            return tuple(value.shape[1:])
        if not isinstance(recorded, torch.Tensor):
            return None
        dims: list[int | str] = []
        for size in recorded.shape[1:]:
            text = str(size)
            if text.isdigit():
                dims.append(int(text))
            elif text in self.symbols:
                dims.append(self.symbols[text])
            else:
                return None
        return tuple(dims)


def capture(
    model: nn.Module,
    inputs: list[InputSpec],
    symbols: dict[str, int],
    source: str,
    output: str | None = None,
) -> Imported:
    """Export ``model`` on example inputs of the given types (symbolic dimensions dynamic),
    pick its result ``output`` and map it; raises ImportFailed listing every piece that has
    no dlspec equivalent, or saying why torch.export could not read it, and ValueError for
    an ``output`` the model does not return."""
    model.eval()
    examples = [example(spec, symbols) for spec in inputs]
    names = [spec.name for spec in inputs]
    with torch.no_grad():
        try:
            returned = call(model, examples, names)
        except Exception as exc:  # the user's forward: any error says the inputs do not fit
            raise ImportFailed(f"the forward pass raised {_where(exc)}") from None
    picked = _Picked(model, result_path(returned, output), names).eval()
    dims = {name: torch.export.Dim.DYNAMIC for name in symbols}
    shapes = tuple(
        {i + 1: dims[d] for i, d in enumerate(spec.dims) if isinstance(d, str)} or None
        for spec in inputs
    )
    # torch.export logs, and prints to stderr, the graphs it gives up on: the reason is enough
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.export(
                picked, tuple(examples), dynamic_shapes=(shapes,), strict=False
            )
            _tidy(program.graph_module.graph)
            program.graph_module.recompile()
            modules = torch.export.unflatten(program)
    except Exception as exc:  # torch.export raises many kinds: each means "cannot export"
        name = _class_name(type(model).__name__)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        piece = Unmapped("", f"{name}.forward", f"cannot be exported: {reason}", "torch.export")
        raise ImportFailed(f"torch.export cannot read {name}", [piece]) from None
    finally:
        logging.disable(logging.NOTSET)
    for sub in modules.modules():
        graph = getattr(sub, "graph", None)
        if isinstance(graph, fx.Graph):
            _rename(graph)
    _by_signature(model, modules, [example(spec, symbols) for spec in inputs], names)
    first = _run(model, modules, inputs, symbols, _symbol_names(modules, inputs))
    # a buffer the state_dict leaves out (rotary inv_freq) caches what a layer computes
    state = model.state_dict()
    first.buffers = sum(b.numel() for name, b in model.named_buffers() if name in state)
    first.source, first.tracer = source, "torch.export"
    return first


def _run(
    model: nn.Module,
    modules: nn.Module,
    inputs: list[InputSpec],
    symbols: dict[str, int],
    names: dict[str, str],
) -> Imported:
    """The capture of the unflattened program, run on examples of the given sizes, its
    shapes read off the program's symbolic sizes (``names``: see :func:`_symbol_names`)."""
    examples = [example(spec, symbols) for spec in inputs]
    arguments = _arguments(modules, examples)
    live = [any(a is x for x in examples) for a in arguments]
    captured = _Exported(model, modules, names)
    imported = captured.root(inputs, symbols, arguments, live)
    # the parameters the result picked reads (BertModel's last_hidden_state: not the pooler's)
    imported.params = sum(p.numel() for p in model.parameters() if id(p) in captured.seen)
    return imported


def _symbol_names(modules: nn.Module, inputs: list[InputSpec]) -> dict[str, str]:
    """torch.export's symbol for each dimension ``--input`` names (``s41``) -> that name
    (``T``), read off the model graph's inputs (in the order of the forward's)."""
    placeholders = [
        n for n in _graph(modules.get_submodule("model")).nodes if n.op == "placeholder"
    ]
    tensors = [n.meta["val"] for n in placeholders if isinstance(n.meta.get("val"), torch.Tensor)]
    names: dict[str, str] = {}
    for spec, value in zip(inputs, tensors, strict=False):
        for dim, size in zip(spec.dims, value.shape[1:], strict=False):
            if isinstance(dim, str) and not str(size).isdigit():
                names[str(size)] = dim
    return names


def _by_signature(
    model: nn.Module,
    modules: nn.Module,
    examples: list[torch.Tensor],
    names: Sequence[str | None] = (),
) -> None:
    """Each graph's inputs named and ordered as its module's forward names and orders them
    (an unflattened graph names its inputs after the operations that made them, numbered
    across the model, ``layer_norm_1`` in one copy of a block and ``layer_norm_3`` in the
    next, in the order they were made), and the calls to it alike. The tensors each graph
    receives are matched to those its module's forward received, by value."""
    received = _received(model, examples, names)
    given: dict[str, tuple[Any, ...]] = {}

    def record(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            given.setdefault(path, args)

        return hook

    graphs = {
        p: m for p, m in modules.named_modules() if isinstance(getattr(m, "graph", None), fx.Graph)
    }
    handles = [m.register_forward_pre_hook(record(p)) for p, m in graphs.items() if p]
    try:
        with torch.no_grad():
            modules(*examples)
    finally:
        for handle in handles:
            handle.remove()
    calls: dict[str, list[fx.Node]] = {}
    for owner, module in graphs.items():
        for node in _graph(module).nodes:
            if node.op == "call_module":
                calls.setdefault(
                    f"{owner}.{node.target}" if owner else str(node.target), []
                ).append(node)
    for path, args in given.items():
        placeholders = [n for n in _graph(graphs[path]).nodes if n.op == "placeholder"]
        wanted = received.get(re.sub(r"@\d+$", "", path.partition(".")[2]), {})
        names = [_received_as(value, wanted) for value in args]
        tensors = [i for i, name in enumerate(names) if name is not None]
        if len(placeholders) != len(args) or len({names[i] for i in tensors}) != len(tensors):
            continue  # a tensor not told apart: the graph keeps its own names and order
        order = list(wanted)
        ranked = iter(sorted(tensors, key=lambda i: order.index(str(names[i]))))
        permutation = [next(ranked) if names[i] is not None else i for i in range(len(args))]
        anchor = next(n for n in _graph(graphs[path]).nodes if n.op != "placeholder")
        for i in permutation:
            anchor.prepend(placeholders[i])
            if names[i] is not None:
                placeholders[i].target = str(names[i])
        for caller in calls.get(path, []):
            caller.args = tuple(caller.args[i] for i in permutation)


def _received_as(value: Any, received: dict[str, Any]) -> str | None:
    """The name of the tensor ``value`` is among those a forward received: the same object,
    else the one equal tensor (None: none or several)."""
    if not isinstance(value, torch.Tensor):
        return None
    same = [name for name, tensor in received.items() if tensor is value]
    alike = [
        name
        for name, tensor in received.items()
        if tensor.shape == value.shape
        and tensor.dtype == value.dtype
        and torch.equal(tensor, value)
    ]
    found = same or alike
    return found[0] if len(found) == 1 else None


def _received(
    model: nn.Module, examples: list[torch.Tensor], names: Sequence[str | None] = ()
) -> dict[str, dict[str, Any]]:
    """What each submodule's forward receives (its first call) on the examples, passed by
    position or by the keyword ``names`` gives: module path -> parameter name -> tensor."""
    calls: dict[str, dict[str, Any]] = {}

    def record(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            try:
                bound = inspect.signature(module.forward).bind(*args, **kwargs)
            except TypeError:  # a forward that takes *args: its tensors have no names
                return
            tensors = {k: v for k, v in bound.arguments.items() if isinstance(v, torch.Tensor)}
            # the model's own inputs are the examples themselves (told apart when alike)
            calls.setdefault(path, {k: v if not path else v.clone() for k, v in tensors.items()})

        return hook

    handles = [
        module.register_forward_pre_hook(record(path), with_kwargs=True)
        for path, module in model.named_modules()
    ]
    try:
        with torch.no_grad():
            _Picked(model, [], names).eval()(*examples)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _arguments(modules: nn.Module, examples: list[torch.Tensor]) -> list[Any]:
    """What the program's top graph passes to the model's graph (sizes read off the inputs
    first, then the inputs)."""
    passed: list[Any] = []

    class _Until(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            passed.extend(args)
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        _Until(modules, graph=_graph(modules)).run(*examples)
    return passed


def _graph(module: nn.Module) -> fx.Graph:
    """The graph of a module of the unflattened program."""
    graph = getattr(module, "graph", None)
    assert isinstance(graph, fx.Graph)
    return graph


def _tidy(graph: fx.Graph) -> None:
    """Remove what computes nothing: assertions, conversions to the dtype a tensor has, and
    views and slices to the shape it has (``x.view(-1, T)`` of a ``(B, T)`` input)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        name = node.target.overloadpacket.__name__
        if name in ASSERTIONS and not node.users:
            graph.erase_node(node)
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or any(u.op == "output" for u in node.users):
            continue
        before, after = source.meta.get("val"), node.meta.get("val")
        if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)):
            continue
        same = before.dtype == after.dtype and str(before.shape) == str(after.shape)
        if same and (name in CONVERSIONS or name in ("view", "reshape", "_unsafe_view", "slice")):
            node.replace_all_uses_with(source)
            graph.erase_node(node)


def _rename(graph: fx.Graph) -> None:
    """ATen operations as the torch functions and methods the importer's tables know (the
    ATen name kept for messages); ``aten.slice`` as indexing."""
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target.overloadpacket.__name__
        if name == "slice":
            _as_index(node)
        elif name in METHODS:
            node.op, node.target = "call_method", METHODS[name]
        elif name in FUNCTIONS and not node.kwargs.get("alpha"):
            node.target = FUNCTIONS[name]
        else:
            continue
        node.meta["aten"] = str(target)


def _as_index(node: fx.Node) -> None:
    """``aten.slice(x, dim, start, end, step)`` -> ``x[:, ..., start:end:step]``."""
    defaults: list[Any] = [None, 0, None, None, 1]
    given: list[Any] = [*node.args, *defaults[len(node.args) :]]
    source, dim, start, end, step = given
    rank = node.meta["val"].dim()
    dim = dim % rank
    end = None if end is None or (isinstance(end, int) and end >= INT64_MAX) else end
    part = slice(start or None, end, None if step == 1 else step)
    node.target = operator.getitem
    node.args = (source, (*([slice(None)] * dim), part))

"""Capture a PyTorch model with torch.fx and map what it does to dlspec layers.

Each module is traced on its own (:class:`_Tracer` keeps every submodule call as one node), so
the module hierarchy survives: a submodule whose class is a layer kind becomes a statement, any
other submodule a :class:`~dlspec.importers.ir.Body` of its own (a future block), and an
``nn.Sequential`` is unrolled into its parent. Every node is run on example inputs, and a
statement is only accepted when the module dlspec would generate for it, holding the
original's weights, computes what the original computed (:func:`kinds.verify`). What cannot
be mapped is collected, never the first problem only.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import math
import operator
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlspec.analysis.names import RESERVED
from dlspec.importers import kinds
from dlspec.importers.ir import Body, Imported, ImportFailed, LayerCall, Statement, Unmapped
from dlspec.layers import REGISTRY, Layer
from dlspec.layers.base import sample_dim

DEFAULT_DIM = 16  # the example length of a symbolic dimension without a value
PROBE = 3.0  # the spread of the values a stand-in is also checked on
EXAMPLE_BATCH = 2
HEAD_RESHAPES = ("transpose", "view", "reshape", "contiguous")  # methods around attention heads
HEAD_SPLITS = (*HEAD_RESHAPES, "unsqueeze", "expand")  # ... and grouped-query repeats
NOT_NAMES = frozenset(
    {"self", "torch", "nn", "F", "input", "output"}
)  # names a statement may not take

_INPUT = re.compile(r"^\s*(float|long|int)\s*\[\s*(.*?)\s*\]\s*$")
_NAMED = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*((?:float|long|int)\s*\[.*)$", re.DOTALL)
_DIM = re.compile(r"^(?:(\d+)|([A-Za-z_]\w*)(?:\s*=\s*(\d+))?)$")


@dataclass(frozen=True)
class InputSpec:
    """A per-sample input type from the command line: ``float[3, 224, 224]``, ``long[T]``;
    ``name`` passes it to the forward by that keyword (``decoder_input_ids=long[U]``)."""

    dtype: str
    dims: tuple[int | str, ...]
    name: str | None = None


def parse_input(text: str, symbols: dict[str, int]) -> InputSpec:
    """Parse ``[NAME=]DTYPE[d, ...]``, where a dimension is a number, a symbol (``T``) or a
    symbol with its example value (``T=128``); symbols are added to ``symbols``. Raises
    ValueError."""
    named = _NAMED.match(text)
    if named is not None:
        spec = parse_input(named.group(2), symbols)
        return InputSpec(spec.dtype, spec.dims, named.group(1))
    match = _INPUT.match(text)
    if match is None:
        raise ValueError(f"--input {text!r}: expected a type such as float[3, 224, 224] or long[T]")
    dtype = "long" if match.group(1) in ("long", "int") else "float"
    dims: list[int | str] = []
    for part in filter(None, (p.strip() for p in match.group(2).split(","))):
        dim = _DIM.match(part)
        if dim is None or (dim.group(1) is not None and int(dim.group(1)) < 1):
            raise ValueError(
                f"--input {text!r}: {part!r} is not a dimension (a number >= 1, a name such "
                "as T, or T=128)"
            )
        if dim.group(1) is not None:
            dims.append(int(dim.group(1)))
            continue
        name, value = dim.group(2), dim.group(3)
        if name in RESERVED or keyword.iskeyword(name):
            raise ValueError(f"--input {text!r}: {name!r} cannot name a dimension")
        if value is not None:
            symbols[name] = int(value)
        symbols.setdefault(name, DEFAULT_DIM)
        dims.append(name)
    if not dims and match.group(2).strip():
        raise ValueError(f"--input {text!r}: no dimensions")
    return InputSpec(dtype, tuple(dims))


def bind_inputs(model: nn.Module, inputs: list[InputSpec]) -> list[InputSpec]:
    """The inputs in the order the model's forward takes them: those without a name first,
    by position, then the named ones in the forward's order of its parameters. Raises
    ValueError for a name the forward has no parameter of (its ``**kwargs`` do not count:
    they name nothing), or one a positional input already fills, or a name given twice."""
    named = [spec for spec in inputs if spec.name is not None]
    if not named:
        return inputs
    positional = [spec for spec in inputs if spec.name is None]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    order = [
        name for name, p in inspect.signature(model.forward).parameters.items() if p.kind in kinds
    ]
    forward = f"{type(model).__name__}.forward"
    seen: set[str] = set()
    for spec in named:
        text = f"--input {spec.name}={spec.dtype}[{', '.join(map(str, spec.dims))}]"
        if spec.name not in order:
            shown = ", ".join(order[:12]) + (", ..." if len(order) > 12 else "")
            raise ValueError(f"{text}: {forward} takes no input {spec.name!r}; it takes {shown}")
        if order.index(str(spec.name)) < len(positional) or spec.name in seen:
            raise ValueError(f"{text}: {spec.name!r} is given twice (by position or by name)")
        seen.add(str(spec.name))
    return positional + sorted(named, key=lambda spec: order.index(str(spec.name)))


def call(
    model: nn.Module, values: Sequence[Any], names: Sequence[str | None] = (), **options: Any
) -> Any:
    """``model`` called with ``values``: each by the keyword ``names`` gives it (a
    :class:`InputSpec`'s name), else by position (all of them, without ``names``)."""
    keys = [*names, *[None] * (len(values) - len(names))]
    args = [v for k, v in zip(keys, values, strict=True) if k is None]
    kwargs = {k: v for k, v in zip(keys, values, strict=True) if k is not None}
    return model(*args, **kwargs, **options)


def load_model(target: str, settings: dict[str, Any]) -> nn.Module:
    """Build the model ``MODULE:CALLABLE`` names (a class or a factory), called with
    ``settings`` as keyword arguments. A target that names nothing raises ValueError; a
    constructor that raises, or returns something else than a module, raises ImportFailed."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{target!r}: expected MODULE:CALLABLE, e.g. torchvision.models:resnet18")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules beside the user
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{target!r}: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:
        raise ImportFailed(f"importing {module_name!r} raised {_where(exc)}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{target!r}: {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{target!r}: {attribute!r} is not a class or function")
    try:
        model = found(**settings)
    except Exception as exc:
        raise ImportFailed(f"{target}({_settings(settings)}) raised {_where(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ImportFailed(f"{target} returned a {type(model).__name__}, not an nn.Module")
    return model


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


def _where(exc: BaseException) -> str:
    """``ValueError: bad size (at models.py:12)``: an exception and the line that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {str(exc).strip() or '(no message)'}{at}"


def capture(
    model: nn.Module,
    inputs: list[InputSpec],
    symbols: dict[str, int],
    source: str,
) -> Imported:
    """Trace ``model`` on example inputs of the given types and map it; raises ImportFailed
    listing every piece that has no dlspec equivalent. Dimensions of an output shape that
    follow a symbolic input dimension are written as its name (found by a second run with
    other lengths)."""
    model.eval()
    first = _Capture(model).root(inputs, symbols)
    if symbols:
        other = other_values(symbols)
        second = _Capture(model).root(inputs, other)
        _symbolic_shapes(first.body, second.body, symbols, other)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    first.params, first.buffers, first.source = params, buffers, source
    return first


def other_values(symbols: dict[str, int]) -> dict[str, int]:
    """Other lengths for the symbols, to tell the dimensions that follow them: shorter, not
    longer (a length may be at its maximum, a positional table's)."""
    return {s: v - i - 1 if v > i + 1 else v + i + 1 for i, (s, v) in enumerate(symbols.items())}


def _symbolic_shapes(a: Body, b: Body, values: dict[str, int], others: dict[str, int]) -> None:
    """Where the two runs' shapes differ, name the symbol (or drop the shape)."""
    names: dict[tuple[int | str, int | str], str] = {(values[s], others[s]): s for s in values}
    for x, y in zip(a.statements, b.statements, strict=True):
        if x.shape is not None and y.shape is not None:
            dims: list[int | str] = []
            for d1, d2 in zip(x.shape, y.shape, strict=True):
                if d1 == d2:
                    dims.append(d1)
                elif (d1, d2) in names:
                    dims.append(names[(d1, d2)])
                else:
                    x.shape = None
                    break
            else:
                x.shape = tuple(dims)
        if isinstance(x.op, Body) and isinstance(y.op, Body):
            _symbolic_shapes(x.op, y.op, values, others)


class _Recorder(fx.Interpreter):
    """Runs a traced forward and keeps a copy of every node's value (a later in-place
    operation, such as ``nn.ReLU(inplace=True)``, must not change what a node computed)."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, graph=graph)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n] = _copy(result)
        return result


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


class _Tracer(fx.Tracer):
    """Keeps every submodule call as one ``call_module`` node: one level at a time."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def example(spec: InputSpec, symbols: dict[str, int]) -> torch.Tensor:
    """A batch of example inputs of the type (the same one every time: seeded)."""
    shape = [EXAMPLE_BATCH, *(symbols[d] if isinstance(d, str) else d for d in spec.dims)]
    generator = torch.Generator().manual_seed(0)
    if spec.dtype == "long":
        return torch.randint(0, 2, shape, generator=generator)  # valid for any vocabulary
    return torch.randn(shape, generator=generator)


def _tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(_tensor(v) for v in value)


def _describe(node: fx.Node) -> str:
    if "aten" in node.meta:  # an ATen operation, renamed for the tables (torch.export)
        return str(node.meta["aten"])
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)  # aten.gather.default
    if node.op == "call_module":
        return f"module {node.target}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "get_attr":
        return f"attribute {node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    module = {"torch._C._nn": "torch.nn.functional", "_operator": "operator"}.get(module, module)
    return f"{module}.{name}" if module else name


def _source(node: fx.Node) -> str:
    """``[1]``, ``[:, -1]``, ``.flatten(1)``: an indexing or method node as Python writes it."""
    if node.op == "call_method":
        return f".{node.target}({', '.join(map(_index, node.args[1:]))})"
    index = node.args[1]
    return f"[{', '.join(map(_index, index)) if isinstance(index, tuple) else _index(index)}]"


def _index(value: Any) -> str:
    if isinstance(value, slice):
        start = "" if value.start is None else str(value.start)
        stop = "" if value.stop is None else str(value.stop)
        return f"{start}:{stop}"
    return repr(value)


def _nodes(value: Any) -> list[fx.Node]:
    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes(v)]
    return []


class _Capture:
    """One capture of a model: the pieces that did not map, and which parameters have been
    counted (each once, as ``model.parameters()`` counts them). Each module's forward is
    traced on its own with torch.fx (:meth:`graph`); the torch.export capture
    (:mod:`dlspec.importers.torch_export`) reads them from one exported program instead."""

    tracer = "torch.fx"
    exported = False  # graphs of ATen operations (torch.export), not of torch functions

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.unmapped: list[Unmapped] = []
        self.seen: set[int] = set()  # parameter ids counted already
        self.owners: dict[int, tuple[int, str]] = {}  # parameter id -> (body id, statement)
        self.called: set[int] = set()  # modules mapped already

    def root(
        self,
        inputs: list[InputSpec],
        symbols: dict[str, int],
        arguments: list[Any] | None = None,
        live: list[bool] | None = None,
    ) -> Imported:
        """Map the model run on examples of ``inputs`` (or on ``arguments``, of which
        ``live`` are the inputs)."""
        examples = [example(spec, symbols) for spec in inputs]
        name = _class_name(type(self.model).__name__)
        body = self.body(self.model, "", arguments or examples, root=True, live=live)
        if body is None or self.unmapped:
            count = len(self.unmapped)
            raise ImportFailed(
                f"{count} piece{'s' * (count != 1)} of {name} cannot be mapped to dlspec",
                [Unmapped(u.path, u.op, u.reason, self.tracer) for u in self.unmapped],
            )
        specs = [(n, spec.dtype, spec.dims) for n, spec in zip(body.inputs, inputs, strict=False)]
        return Imported(name, specs, dict(symbols), body, 0, 0, "")

    def graph(self, module: nn.Module, path: str) -> tuple[nn.Module, fx.Graph]:
        """The module that runs ``module``'s forward graph, and that graph."""
        graph = _Tracer().trace(module)
        traced = fx.GraphModule(module, graph)
        graph.eliminate_dead_code()  # e.g. the unused half of `_, (h, c) = self.lstm(x)`
        return traced, graph

    def constants(self, path: str) -> list[float]:
        """The float constants the forward of the module at ``path`` computes with."""
        return []

    def sizes(self, node: fx.Node, value: torch.Tensor) -> tuple[int | str, ...] | None:
        """The per-sample shape of ``node``'s result ``value``: its sizes on the example (a
        second capture at other lengths names the symbolic ones, :func:`_symbolic_shapes`)."""
        return tuple(value.shape[1:])

    def body(
        self,
        module: nn.Module,
        path: str,
        inputs: list[Any],
        root: bool = False,
        live: list[bool] | None = None,
    ) -> Body | None:
        """Trace ``module`` (at ``path``) and map its forward, run on ``inputs`` (``live``:
        which of them are computed from the model's inputs; default all)."""
        cls = type(module).__name__
        try:
            runner, graph = self.graph(module, path)
            interpreter = _Recorder(runner, graph)
            with torch.no_grad():
                interpreter.run(*_copy(inputs))
        except Exception as exc:  # torch.fx raises many kinds, all of which mean "not traceable"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.unmapped.append(
                Unmapped(path, f"{cls}.forward", f"cannot be traced with {self.tracer}: {reason}")
            )
            return None
        return _Scope(self, module, path, graph, interpreter.values, root, live).run()


def _class_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name[:1].isalpha() else f"Model{name}"


class _Scope:
    """Maps one traced forward to a Body."""

    def __init__(
        self,
        capture: _Capture,
        module: nn.Module,
        path: str,
        graph: fx.Graph,
        env: dict[fx.Node, Any],
        root: bool,
        live: list[bool] | None = None,
    ) -> None:
        self.capture = capture
        given = [n for n in graph.nodes if n.op == "placeholder"]
        # the placeholders that the model's inputs reach (not a mask made from sizes alone)
        self.given = {n for i, n in enumerate(given) if live is None or live[i]}
        self.module = module
        self.path = path
        self.graph = graph
        self.env = env
        self.root = root
        self.body = Body(type(module).__name__, path)
        self.names: dict[fx.Node, str] = {}
        self.taken: set[str] = set()
        self.previous: fx.Node | None = None
        self.covered: set[fx.Node] = set()
        self.data: set[fx.Node] = set()  # nodes statements read as their inputs
        self.reads: dict[str, list[fx.Node]] = {}  # statement -> the nodes it reads
        self.live: set[fx.Node] = set()  # nodes computed from the inputs (not from constants)
        self.failed: dict[fx.Node, str] = {}
        self.fills: dict[fx.Node, tuple[fx.Node, int | float, str]] = {}  # see _fill

    def _origin(self, target: str) -> str:
        return f"{self.path}.{target}" if self.path else target

    def _name(self, base: str) -> str:
        name = re.sub(r"\W", "_", base).strip("_") or "layer"
        if name[0].isdigit():
            name = f"layer{name}"
        if name in RESERVED or name in NOT_NAMES or keyword.iskeyword(name):
            name += "_"
        unique, i = name, 2
        while unique in self.taken:
            unique, i = f"{name}_{i}", i + 1
        self.taken.add(unique)
        return unique

    def run(self) -> Body | None:
        placeholders = [
            n
            for n in self.graph.nodes
            if n.op == "placeholder" and _tensor(self.env.get(n)) and n in self.given
        ]
        for node in placeholders:
            # a block of one input reads it as `input`; one of several names them
            single = not self.root and len(placeholders) == 1
            name = "input" if single else self._name(str(node.target))
            self.names[node] = name
            self.taken.add(name)
            self.body.inputs.append(name)
        # a statement without `<-` reads the model's last input, or a block's first
        self.previous = placeholders[-1 if self.root else 0] if placeholders else None
        output: fx.Node | None = None
        for node in self.graph.nodes:
            # sizes do not count: `torch.arange(x.size(1))` is computed from constants
            if (
                node in placeholders
                or self._learned(node)
                or any(n in self.live and _tensor(self.env.get(n)) for n in node.all_input_nodes)
            ):
                self.live.add(node)
            elif self.capture.exported:
                self._fill(node, placeholders)
        if self.capture.exported:
            self._padding_masks(placeholders)
        for node in self.graph.nodes:
            if node.op == "output":
                output = node
            elif node.op == "placeholder" or node in self.covered:
                continue
            elif node.op == "get_attr" and self._learned(node) and placeholders:
                continue  # written where it is first read
            elif node.op == "get_attr":
                if _tensor(self.env.get(node)):
                    self.failed[node] = "reads a parameter or buffer directly, outside a layer"
            elif _tensor(self.env.get(node)):
                for read in node.all_input_nodes:
                    if self._learned(read) and read not in self.names and placeholders:
                        self._parameter(read, placeholders[0])
                if node not in self.fills and self._batch_expand(node):
                    self.names[node] = self.names[node.args[0]]
                else:
                    self._statement(node)
        assert output is not None
        self._outputs(output.args[0])
        self._prune()
        kept = {st.name for st in self.body.statements}
        self.data = {n for name, nodes in self.reads.items() if name in kept for n in nodes}
        self._report()
        return self.body

    def _learned(self, node: fx.Node) -> bool:
        """Whether ``node`` reads a parameter of this module shaped ``(1, ...)``, one for the
        whole batch (a ViT's class token or position table), in an exported graph."""
        if not self.capture.exported or node.op != "get_attr":
            return False
        value = self.env.get(node)
        named = dict(self.module.named_parameters())
        return (
            isinstance(value, torch.Tensor)
            and value.dim() > 1
            and value.shape[0] == 1
            and (str(node.target) in named)
        )

    def _parameter(self, node: fx.Node, batch: fx.Node) -> None:
        """A parameter read in forward (``self.cls_token``) -> ``Parameter``, repeated for
        every sample of ``batch``'s (a ViT's class token and position table)."""
        value = self.env[node]
        target = str(node.target)
        st = Statement(
            self._name(target),
            LayerCall("Parameter", {"shape": tuple(value.shape[1:])}),
            [self.names[batch]],
            origin=self._origin(target),
            state=["weight"],
            params=value.numel(),
            shape=tuple(value.shape[1:]),
        )
        st.state_from = {"weight": self._origin(target)}
        self.capture.seen.add(id(self.module.get_parameter(target)))
        self.body.statements.append(st)
        self.reads[st.name] = [batch]
        self.names[node] = st.name
        self.previous = node

    def _fill(self, node: fx.Node, placeholders: list[fx.Node]) -> None:
        """A tensor made from constants alone, one value throughout, shaped and typed as one
        of the inputs, that a layer with weights reads (BERT's token types: zeros from a
        buffer when none are given) -> ``Full(value) <- that input``, after the buffer it
        came from; it is then computed from the inputs, as what reads it."""
        value = self.env.get(node)
        if (
            not isinstance(value, torch.Tensor)
            or node.op == "placeholder"  # a constant the caller made (and fills, if it is one)
            or not any(
                u.op == "call_module" and _has_weights(self.module.get_submodule(str(u.target)))
                for u in node.users
            )
            or value.numel() < 2
            or not bool((value == value.flatten()[0]).all())
        ):
            return
        shaped = [
            p
            for p in placeholders
            if isinstance(self.env[p], torch.Tensor)
            and self.env[p].shape == value.shape
            and self.env[p].dtype == value.dtype
        ]
        if not shaped:
            return
        fill = value.flatten()[0].item()
        buffers = [n for n in _ancestors(node) if n.op == "get_attr"]
        alike = [str(n.target) for n in buffers if bool((self.env[n] == fill).all())]
        self.fills[node] = (shaped[0], fill, alike[0] if len(alike) == 1 else node.name)
        self.live.add(node)

    def _padding_masks(self, placeholders: list[fx.Node]) -> None:
        """An attention mask made from one input of token-shaped ids alone that lets every
        query attend exactly the keys whose id is not 0 (BERT's ``attention_mask``, made
        into a ``(B, 1, T, S)`` mask) is that input, as ``SDPA`` reads a long mask."""
        ids = [
            p
            for p in placeholders
            if isinstance(self.env[p], torch.Tensor)
            and self.env[p].dim() == 2
            and not self.env[p].is_floating_point()
        ]
        for node in self.graph.nodes if ids else []:
            value = self.env.get(node)
            if node not in self.live or node in placeholders or not isinstance(value, torch.Tensor):
                continue
            if value.dim() < 3:
                continue  # not shaped for the scores (..., T, S)
            sources = [p for p in _ancestors(node) if p in placeholders]
            if len(sources) == 1 and sources[0] in ids and _pads(value, self.env[sources[0]]):
                self.names[node] = self.names[sources[0]]
                self.covered.add(node)

    def _filled(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        """The statement of a constant :meth:`_fill` found."""
        source, fill, name = self.fills[node]
        layer = REGISTRY["Full"].model_validate({"value": fill})
        made = self._layer_statement(node, [layer], None, [source], name)
        if isinstance(made, str):
            return made
        return [made[0]], made[1], [source]

    def _batch_expand(self, node: fx.Node) -> bool:
        """``cls_token.expand(B, -1, -1)``: the same per-sample shape, repeated over the batch,
        as a ``Parameter`` is already."""
        source = node.args[0] if node.args else None
        return (
            self.capture.exported
            and node.op == "call_method"
            and node.target == "expand"
            and isinstance(source, fx.Node)
            and source in self.names
            and tuple(self.env[node].shape[1:]) == tuple(self.env[source].shape[1:])
        )

    def _prune(self) -> None:
        """Drop statements nothing reads (the head reshapes around an attention that SDPA
        stands for): a statement is read by name, by the next one (no sources), or as an
        output; the last statement is the block's output."""
        statements = self.body.statements
        keep = set(self.body.outputs) | ({statements[-1].name} if statements else set())
        for i in reversed(range(len(statements))):
            st = statements[i]
            if st.name not in keep and not keep & set(st.outputs):
                continue
            keep.add(st.name)
            keep.update(st.sources)
            if not st.sources and i > 0:
                keep.add(statements[i - 1].name)
        self.body.statements = [st for st in statements if st.name in keep]

    def _report(self) -> None:
        """Every failed node that something other than a layer's options reads."""
        auxiliary: set[fx.Node] = set()
        for node in reversed(self.graph.nodes):
            if node in self.covered or node.op in ("placeholder", "output") or node in self.data:
                continue
            users = list(node.users)
            if users and all(u in auxiliary or (u in self.covered) for u in users):
                auxiliary.add(node)
        for node, reason in self.failed.items():
            if node not in auxiliary and node not in self.covered and reason:
                self.capture.unmapped.append(Unmapped(self.path, _describe(node), reason))

    def _outputs(self, value: Any) -> None:
        nodes = _nodes(value)
        if self.root:
            if len(nodes) == 1 and nodes[0] is self.previous and self.body.statements:
                self.body.outputs = []
            else:
                self.body.outputs = [self.names.get(n, n.name) for n in nodes]
            return
        if len(nodes) > 1 and self.capture.exported:
            nodes = self._without_zeros(nodes)
            value = nodes[0] if len(nodes) == 1 else value
        if len(nodes) > 1 and self.capture.exported:
            self._several_outputs(nodes)
        elif len(nodes) != 1 or not isinstance(value, fx.Node):
            self.capture.unmapped.append(
                Unmapped(
                    self.path,
                    f"{self.body.cls}.forward",
                    "returns several values; import maps submodules returning one tensor",
                )
            )
        elif nodes[0] is not self.previous or not self.body.statements:
            st = Statement(
                self._name("out"), LayerCall("Identity"), [self.names.get(nodes[0], "input")]
            )
            self.body.statements.append(st)

    def _without_zeros(self, nodes: list[fx.Node]) -> list[fx.Node]:
        """The results of a module returning several, less those that are zeros made from
        sizes alone (a cross-attention's position bias, which adds nothing): the caller
        reads them as the constants they are (:meth:`_output_part`)."""
        self.body.zeros = [
            i
            for i, n in enumerate(nodes)
            if n not in self.live
            and isinstance(self.env.get(n), torch.Tensor)
            and not bool(self.env[n].any())
        ]
        self.covered.update(nodes[i] for i in self.body.zeros)
        return [n for i, n in enumerate(nodes) if i not in self.body.zeros]

    def _several_outputs(self, nodes: list[fx.Node]) -> None:
        """A module returning several tensors (T5's attention returns its output and the
        position bias the next layers read) -> a block with ``output a, b``."""
        missing = [
            n for n in nodes if n not in self.names or (n in self.failed and n not in self.covered)
        ]
        if missing:
            self.capture.unmapped.append(
                Unmapped(self.path, f"{self.body.cls}.forward", "returns a tensor no layer gives")
            )
            return
        self.body.outputs = [self.names[n] for n in nodes]

    def _output_part(self, node: fx.Node) -> bool:
        """``block(...)[i]`` of a block with several outputs: its output ``i``, by name."""
        source = node.args[0] if node.target is operator.getitem else None
        index = node.args[1] if len(node.args) > 1 else None
        if not isinstance(source, fx.Node) or not isinstance(index, int):
            return False
        st = next(
            (s for s in self.body.statements if s.name == self.names.get(source)),
            None,
        )
        zeros = st.op.zeros if st is not None and isinstance(st.op, Body) else []
        if st is None or not (st.outputs or zeros):
            return False
        if index in zeros:  # zeros made from sizes: a constant, as if made here
            self.live.discard(node)
            self.covered.add(node)
            return True
        index -= sum(z < index for z in zeros)
        outputs = st.outputs or [st.name]  # one result besides the zeros
        if not 0 <= index < len(outputs):
            return False
        self.names[node] = outputs[index]
        self.covered.add(node)
        self.data.add(source)
        return True

    def _statement(self, node: fx.Node) -> None:
        """Map one node (and the getitem/method chain it may head) to statements."""
        if self._output_part(node):
            return
        if node not in self.live:
            self.failed[node] = "computes from constants only, not from the model's inputs"
            self.names[node] = node.name
            return
        result = self._module(node) if node.op == "call_module" else self._function(node)
        if isinstance(result, str):
            self.failed[node] = result
            self.names[node] = node.name
            return
        statements, end, data = result
        first = statements[0]
        if not first.sources:
            first.sources = [] if data == [self.previous] else [self.names[d] for d in data]
        self.body.statements += statements
        self.data.update(data)
        self.reads[first.name] = data
        if self.capture.exported:
            self.covered.add(node)  # what it reads from sizes alone is its own business
        self.names[end] = statements[-1].name
        self.previous = end

    def _chain(self, node: fx.Node) -> list[fx.Node]:
        """``node`` and the indexing or method calls that only it feeds, in order."""
        chain = [node]
        while len(chain[-1].users) == 1:
            user = next(iter(chain[-1].users))
            if user.op == "call_method" or (
                user.op == "call_function" and user.target is operator.getitem
            ):
                tensors = [n for n in _nodes((user.args, user.kwargs)) if _tensor(self.env.get(n))]
                if tensors == [chain[-1]]:
                    chain.append(user)
                    continue
            break
        return chain

    def _match(
        self,
        node: fx.Node,
        layers: list[Layer],
        original: nn.Module | None,
        data: list[fx.Node],
        same_config: bool = True,
    ) -> tuple[Layer, fx.Node] | str:
        """The candidate (and the end of the chain it covers) that reproduces the original."""
        chain = self._chain(node)
        inputs = [self.env[d] for d in data]
        reason = "no layer kind matches"
        best: tuple[Layer, int] | None = None
        for layer in layers:
            lo, hi = layer.arity
            if not lo <= len(inputs) <= hi:
                reason = f"{layer.kind} takes {lo} to {hi} inputs, not {len(inputs)}"
                continue
            out, why = kinds.verify(layer, original, inputs, same_config)
            if out is None:
                reason = f"as {layer.label()}: {why}"
                continue
            for i in reversed(range(len(chain))):
                if kinds.same(out, self.env[chain[i]]):
                    # equal outputs (an LSTM's h[-1] is its output's last step): keep the one
                    # written as the original is, so the spec says what the model says
                    written = chain[1 : i + 1]
                    if (
                        best is None
                        or i > best[1]
                        or (
                            i == best[1]
                            and not self._as_written(best[0], written, inputs)
                            and self._as_written(layer, written, inputs)
                        )
                    ):
                        best = (layer, i)
                    break
            else:
                reason = f"as {layer.label()} it would compute something else"
                continue
            if best[1] == len(chain) - 1 and self._as_written(best[0], chain[1:], inputs):
                break  # the whole chain, as written: no later candidate does better
        if best is None:
            return reason
        self.covered.update(chain[: best[1] + 1])
        return best[0], chain[best[1]]

    def _as_written(self, layer: Layer, chain: list[fx.Node], inputs: list[Any]) -> bool:
        """Whether the layer's generated forward indexes its result as ``chain`` does."""
        return kinds.forward_expression(layer, inputs).endswith("".join(map(_source, chain)))

    def _data(self, node: fx.Node) -> list[fx.Node]:
        """The tensors a call reads as inputs (positional arguments, in order, once each)."""
        found: list[fx.Node] = []
        for n in _nodes(node.args):
            if self.capture.exported and n not in self.live:
                continue  # a mask or a table made from sizes: the layer's own business
            if _tensor(self.env.get(n)) and n not in found:
                found.append(n)
        return found

    def _module(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        target = str(node.target)
        sub = self.module.get_submodule(target)
        origin = self._origin(target)
        data = self._data(node)
        kind = kinds.kind_of(sub)
        if kind is None and self.capture.exported and not any(True for _ in sub.children()):
            stood = self._stand_in(node, sub, origin, data)
            if stood is not None:
                return stood
        if kind is None:
            return self._block(node, sub, origin, data)
        if id(sub) in self.capture.called and _has_weights(sub):
            return (
                "called twice: a dlspec layer owns its weights (one of kind "
                f"{_tie_kinds()} may share one: tie=)"
            )
        known = kinds.module_arguments(kind, sub)
        shared = [name for name, p in sub.named_parameters() if id(p) in self.capture.seen]
        owner = self.capture.owners.get(id(sub.get_parameter(shared[0]))) if shared else None
        if shared:
            if shared != ["weight"] or "tie" not in kind.references or owner is None:
                return (
                    f"shares {', '.join(shared)} with an earlier layer; dlspec shares only the "
                    f"weight of a layer of kind {_tie_kinds()} (tie=)"
                )
            known["tie"] = owner[1]
        layers, problem = kinds.candidates(kind, known)
        if not layers:
            return f"{kind.kind} refuses its arguments: {problem}"
        made = self._layer_statement(node, layers, sub, data)
        if isinstance(made, str):
            return made
        st, end = made
        if owner is not None and owner[0] != id(self.body):
            self.body.outside[st.name] = owner
        self.capture.called.add(id(sub))
        st.origin, st.state = origin, list(sub.state_dict())
        for p in sub.parameters():
            self.capture.owners.setdefault(id(p), (id(self.body), st.name))
        return [st], end, data

    def _stand_in(
        self, node: fx.Node, sub: nn.Module, origin: str, data: list[fx.Node]
    ) -> tuple[list[Statement], fx.Node, list[fx.Node]] | None:
        """A module of no registered kind and no children (a Hugging Face ``Conv1D``,
        ``NewGELUActivation`` or ``LlamaRMSNorm``) as the torch module that computes what it
        computes, holding its tensors (:func:`kinds.stand_ins`), when one does."""
        if any(id(p) in self.capture.seen for p in sub.parameters()):
            return None
        constants = self.capture.constants(origin)
        # a wider input than the example's tells apart what its values may not (GELU's exact
        # and tanh forms agree to 1e-7 near 0)
        probe = [
            torch.randn(self.env[d].shape, generator=torch.Generator().manual_seed(0)) * PROBE
            for d in data
        ]
        with torch.no_grad():
            expected = sub(*probe)
        for module, transposed in kinds.stand_ins(sub, constants):
            kind = kinds.kind_of(module)
            with torch.no_grad():
                if kind is None or not kinds.same(module(*probe), expected):
                    continue
            layers, _ = kinds.candidates(kind, kinds.module_arguments(kind, module))
            made = self._layer_statement(node, layers, module, data)
            if isinstance(made, str):
                continue
            st, end = made
            self.capture.called.add(id(sub))
            st.origin, st.state, st.transposed = origin, list(sub.state_dict()), transposed
            # counted from the module itself: a stand-in's tensors are copies
            st.params = sum(p.numel() for p in sub.parameters())
            st.buffers = sum(b.numel() for b in sub.buffers())
            self.capture.seen.update(id(p) for p in sub.parameters())
            for p in sub.parameters():
                self.capture.owners.setdefault(id(p), (id(self.body), st.name))
            return [st], end, data
        return None

    def _layer_statement(
        self,
        node: fx.Node,
        layers: list[Layer],
        original: nn.Module | None,
        data: list[fx.Node],
        name: str | None = None,
        same_config: bool = True,
    ) -> tuple[Statement, fx.Node] | str:
        """The statement of the candidate that reproduces ``node`` (and the node it ends at),
        named ``name`` (default: the node's name)."""
        matched = self._match(node, layers, original, data, same_config)
        if isinstance(matched, str):
            return matched
        layer, end = matched
        st = Statement(
            self._name(name or self._node_name(node)), LayerCall(layer.kind, kinds.arguments(layer))
        )
        self._count(st, original, end)
        return st, end

    def _node_name(self, node: fx.Node) -> str:
        """The name a statement made from ``node`` takes: an exported graph numbers its
        operations across the model (``mul_19`` in one copy of a block is ``mul_28`` in the
        next), so there a function's statement is named by its operation."""
        if not self.capture.exported:
            return node.name
        if node.op == "call_module":  # a module called twice is `dropout`, then `dropout@1`
            return re.sub(r"@\d+$", "", str(node.target))
        return re.sub(r"_\d+$", "", node.name)

    def _count(self, st: Statement, module: nn.Module | None, end: fx.Node) -> None:
        if module is not None:
            fresh = {
                id(p): p.numel() for p in module.parameters() if id(p) not in self.capture.seen
            }
            st.params = sum(fresh.values())
            self.capture.seen.update(fresh)
            st.buffers = sum(b.numel() for b in module.buffers())
        value = self.env[end]
        if isinstance(value, torch.Tensor):
            st.shape = self.capture.sizes(end, value)

    def _block(
        self, node: fx.Node, sub: nn.Module, origin: str, data: list[fx.Node]
    ) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        tensors = [
            a
            for a in node.args
            if isinstance(a, fx.Node)
            and _tensor(self.env.get(a))
            and (a in self.live or not self.capture.exported)
        ]
        if node.kwargs or len(tensors) != len(data) or not data:
            return (
                f"a {type(sub).__name__} called with keyword arguments, the same tensor twice or "
                "no tensor; a block takes its tensors once each, by position"
            )
        fresh = sum(p.numel() for p in sub.parameters() if id(p) not in self.capture.seen)
        inputs = [_copy(self.env[a]) if isinstance(a, fx.Node) else a for a in node.args]
        live = [isinstance(a, fx.Node) and a in self.live for a in node.args]
        body = self.capture.body(sub, origin, inputs, live=live)
        if body is None:
            return ""  # its own pieces are reported
        if isinstance(sub, nn.Sequential):
            return self._unroll(node, body, data)
        inlined = self.root and self.capture.exported and "." not in str(node.target)
        outside = [
            (name, layer)
            for name, (owner, layer) in body.outside.items()
            if not inlined or owner != id(self.body)
        ]
        if outside:
            name, layer = outside[0]
            return (
                f"its {name} shares its weight with {layer}, a layer outside it; dlspec shares "
                "a weight (tie=) with an earlier layer of the same body"
            )
        if inlined:
            return self._inline(node, body, data)
        st = Statement(self._name(self._node_name(node)), body, origin=origin)
        # several outputs: the block's result takes the statement's name, the others theirs
        last = body.statements[-1].name if body.statements else ""
        st.outputs = [st.name if out == last else self._name(out) for out in body.outputs]
        self._count(st, None, node)
        st.params = fresh
        st.buffers = sum(b.numel() for b in sub.buffers())
        return [st], node, data

    def _split_part(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | None:
        """``x.split(n, dim)[i]`` (as ``q, k, v = qkv.split(C, dim=2)``) -> ``Slice``."""
        base = node.args[0] if node.target is operator.getitem else None
        if not isinstance(base, fx.Node) or base.target not in ("split", torch.split):
            return None
        args = [self.env.get(a, a) if isinstance(a, fx.Node) else a for a in base.args[1:]]
        source = base.args[0]
        size = args[0] if args else base.kwargs.get("split_size_or_sections")
        dim = args[1] if len(args) > 1 else base.kwargs.get("dim", 0)
        index = node.args[1]
        if not (isinstance(source, fx.Node) and isinstance(size, int) and isinstance(index, int)):
            return None
        if not isinstance(dim, int) or dim == 0:
            return None
        axis = sample_dim(dim)
        layer = REGISTRY["Slice"].model_validate(
            {"dim": axis, "start": index * size, "end": (index + 1) * size}
        )
        made = self._layer_statement(
            node, [layer], None, [source], f"{self._node_name(base)}_{index}"
        )
        return None if isinstance(made, str) else ([made[0]], made[1], [source])

    def _attention(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | None:
        """``F.scaled_dot_product_attention`` over heads split off ``(B, T, h*hd)`` tensors
        (``q.view(B, T, h, hd).transpose(1, 2)``) -> ``SDPA`` over those tensors; the head
        reshapes on both sides are the ones SDPA's module makes."""
        if node.target is not F.scaled_dot_product_attention or node.kwargs.get("attn_mask"):
            return None
        heads = []
        flat = []
        for head in node.args[:3]:
            if not isinstance(head, fx.Node):
                return None
            heads.append(self.env[head].shape[1])
            arg: Any = head
            while isinstance(arg, fx.Node) and arg.target in HEAD_RESHAPES:
                arg = arg.args[0]
            if not isinstance(arg, fx.Node) or self.env[arg].dim() != 3:
                return None
            flat.append(arg)
        options: dict[str, Any] = {
            "num_heads": heads[0],
            "causal": bool(node.kwargs.get("is_causal")),
        }
        if heads[1] != heads[0]:
            options["num_kv_heads"] = heads[1]
        if node.kwargs.get("dropout_p"):
            options["dropout"] = node.kwargs["dropout_p"]
        sdpa = REGISTRY["SDPA"].model_validate(options)
        made = self._layer_statement(node, [sdpa], None, flat, "sdpa")
        return None if isinstance(made, str) else ([made[0]], made[1], flat)

    def _heads_attention(
        self, node: fx.Node
    ) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        """Attention as torch.export records it: ``scaled_dot_product_attention`` over heads
        split off ``(B, T, h*hd)`` tensors, the queries and keys possibly rotated by their
        positions (RoPE, with cos and sin made from sizes alone), the keys and values
        possibly repeated for grouped-query heads, and a mask made from sizes alone, which
        must allow everything or be causal -> ``RoPE`` on the flat tensors and ``SDPA``."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        call: dict[str, Any] = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
        mask = call.get("attn_mask")
        causal = bool(call.get("is_causal"))
        query = self.env[call["query"]]
        bias: fx.Node | None = None  # a mask that is an additive bias (T5's position bias)
        if isinstance(mask, fx.Node):
            allowed = None
            if mask not in self.live:
                t, s = query.shape[-2], self.env[call["key"]].shape[-2]
                allowed = _allowed(self.env[mask], t, s)
            if allowed is None:
                bias = mask
            causal = causal or allowed == "causal"
        flats: list[fx.Node] = []
        statements: list[Statement] = []
        width = query.shape[-1]
        for role in ("query", "key", "value"):
            found = self._heads_source(call[role])
            if isinstance(found, str):
                return f"its {role}: {found}"
            flat, rotation, visited = found
            if rotation is None:
                flats.append(flat)
                continue
            rope = self._rope(flat, rotation, visited, width)
            if isinstance(rope, str):
                return f"its {role}: {rope}"
            statements.append(rope[0])
            flats.append(rope[1])
            self.covered.update(visited)
        heads = query.shape[1]
        kv = self.env[flats[1]].shape[-1] // width
        options: dict[str, Any] = {"num_heads": heads} | ({"causal": True} if causal else {})
        if kv != heads:
            options["num_kv_heads"] = kv
        if call.get("dropout_p"):
            options["dropout"] = call["dropout_p"]
        scale = call.get("scale")
        if scale is not None and not math.isclose(scale, width**-0.5):  # not the default
            options["scale"] = scale
        inputs = list(flats)
        if bias is not None:
            read = self._attention_bias(bias, flats[0])
            if isinstance(read, str):
                return read
            statements += read[0]
            inputs.append(read[1])
            options |= {"causal": True} if read[2] else {}
        sdpa = REGISTRY["SDPA"].model_validate(options)
        made = self._layer_statement(node, [sdpa], None, inputs, "sdpa")
        if isinstance(made, str):
            return made
        st, end = made
        st.sources = [self.names[f] for f in inputs]
        for role in ("query", "key", "value"):
            self.covered.update(self._heads_source_nodes(call[role]))
        return [*statements, st], end, inputs

    def _attention_bias(
        self, mask: fx.Node, x: fx.Node
    ) -> tuple[list[Statement], fx.Node, bool] | str:
        """The additive bias an attention mask ``mask`` stands for, over queries ``x``, and
        whether the attention is causal: a mask ``where(allowed, bias, min)`` whose allowed
        part, made from sizes alone, allows everything (or is causal: T5's decoder) is its
        bias; a bias computed from the inputs (a block's input) is read as it is, and one
        made from sizes and the table of one module (T5's relative position bias, a lookup
        by offset buckets) is the kind (of those whose output is one tensor for the batch)
        that, holding that table, computes it, named after the module."""
        node, causal = mask, False
        if _aten(node) == "where" and isinstance(node.args[0], fx.Node):
            cond, kept = node.args[0], node.args[1]
            t, s = self.env[mask].shape[-2:]
            allowed = None if cond in self.live else _allowed(self.env[cond], t, s)
            if allowed in ("all", "causal") and isinstance(kept, fx.Node):
                node, causal = kept, allowed == "causal"
        if node in self.live:
            if node not in self.names:
                return "an attention mask computed from the inputs that no statement gives"
            self.covered.add(mask)
            return [], node, causal
        # the nodes the bias is made of, and the modules among them that hold tensors
        made, stack = [], [node]
        while stack:
            n = stack.pop()
            if n not in made and n not in self.live:
                made.append(n)
                stack += n.all_input_nodes
        tables = [
            n
            for n in made
            if n.op == "call_module" and _has_weights(self.module.get_submodule(str(n.target)))
        ]
        if len(tables) != 1:
            return "an attention mask that is neither causal nor empty"
        target = str(tables[0].target)
        holder = nn.Module()  # the table, under its name in the module that holds it
        holder.add_module(target, self.module.get_submodule(target))
        layers = []
        for kind in REGISTRY.values():
            hook = getattr(kind, "torch_arguments", None)
            if hook is None or kind.family != "attention" or kind.arity != (1, 1):
                continue
            try:
                args = hook(self.module)
                fields = kind.model_fields
                given = {
                    k: v
                    for k, v in args.items()
                    if fields[k].is_required() or fields[k].default != v
                }
                layer = kind.model_validate(given)
            except Exception:  # the hook does not fit this module: not a candidate
                continue
            if not layer.output_batched():
                layers.append(layer)
        # the bias reads the attention's input for its length, as a person writes it
        steps = self.env[x].shape[1]
        x = next((p for p in self.given if _steps(self.env.get(p)) == steps), x)
        # what the layer must compute: the bias, over the batch as the mask is (the mask's
        # values where the causal part hides the bias's)
        kept = fx.Node(self.graph, f"{node.name}_kept", "call_function", torch.broadcast_to, (), {})
        self.env[kept] = self.env[node].expand(self.env[mask].shape)
        found = self._layer_statement(kept, layers, holder, [x], target, same_config=False)
        if isinstance(found, str):
            return f"an attention bias made from {target}: {found}"
        st, _ = found
        st.origin, st.state = self.path, list(holder.state_dict())
        st.sources = [self.names[x]]
        self.capture.called.add(id(self.module.get_submodule(target)))
        self.covered.update([*made, mask])
        self.names[node] = self.names[mask] = st.name  # the module may return the bias too
        return [st], mask, causal

    def _heads_source_nodes(self, node: fx.Node) -> list[fx.Node]:
        """The head reshapes from ``node`` back to the tensor they split."""
        found = []
        while node.op == "call_method" and node.target in HEAD_SPLITS:
            found.append(node)
            node = _first(node)
        return found

    def _heads_source(self, node: fx.Node) -> tuple[fx.Node, fx.Node | None, list[fx.Node]] | str:
        """The ``(B, T, features)`` tensor whose heads ``node`` is: that tensor, the node that
        rotates the heads (None when none does) and the nodes of the rotation."""
        rotation = None
        visited: list[fx.Node] = []
        while True:
            while node.op == "call_method" and node.target in HEAD_SPLITS:
                node = _first(node)
            value = self.env.get(node)
            if not isinstance(value, torch.Tensor) or node not in self.live:
                return "not computed from the inputs"
            if value.dim() == 3:
                return node, rotation, visited
            if rotation is not None or value.dim() != 4:
                return f"heads of shape {list(value.shape)}"
            # a rotation: the one head-split tensor its live ancestors reach
            rotation = node
            sources: set[fx.Node] = set()
            stack = [node]
            while stack:
                n = stack.pop()
                if n in visited:
                    continue
                visited.append(n)
                if n.op == "call_method" and n.target in HEAD_SPLITS:
                    sources.add(n)
                    continue
                stack += [a for a in n.all_input_nodes if a in self.live]
            if len(sources) != 1:
                return "heads computed from several tensors"
            node = sources.pop()

    def _rope(
        self, flat: fx.Node, rotation: fx.Node, visited: list[fx.Node], width: int
    ) -> tuple[Statement, fx.Node] | str:
        """``RoPE`` on ``flat`` standing for the rotation of its heads; its base is read off
        the cosines the rotation multiplies by (made from sizes alone)."""
        rotated = self.env[rotation]
        heads = rotated.shape[1]
        # the rotation's result, as RoPE writes it: (B, T, h*hd)
        merged = fx.Node(self.graph, f"{rotation.name}_heads", "call_function", _merge, (), {})
        self.env[merged] = rotated.transpose(1, 2).reshape(rotated.shape[0], rotated.shape[2], -1)
        tables = [
            self.env[a]
            for n in visited
            for a in n.all_input_nodes
            if a not in self.live and isinstance(self.env.get(a), torch.Tensor)
        ]
        rope = REGISTRY["RoPE"]
        default = rope.model_fields["base"].default
        layers = [
            rope.model_validate({"num_heads": heads} | ({"base": b} if b != default else {}))
            for b in _rope_bases(tables, width)
        ]
        name = f"{self.names.get(flat, flat.name)}_rope"
        made = self._layer_statement(merged, layers, None, [flat], name)
        if isinstance(made, str):
            return made
        st, _ = made
        st.sources = [self.names.get(flat, flat.name)]
        self.names[merged] = st.name
        return st, merged

    def _positional(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | None:
        """``x + self.wpe(torch.arange(T))``: a module computed from positions alone, added to
        the input -> a positional kind (one whose module the torch module's table fits), named
        after that module."""
        if node.target not in (operator.add, torch.add) or len(node.args) != 2:
            return None
        live = [a for a in node.args if isinstance(a, fx.Node) and a in self.live]
        table = [a for a in node.args if isinstance(a, fx.Node) and a not in self.live]
        if len(live) != 1 or len(table) != 1 or table[0].op != "call_module":
            return None
        module = self.module.get_submodule(str(table[0].target))
        layers = []
        for kind in REGISTRY.values():
            hook = getattr(kind, "torch_arguments", None)
            if hook is None or kind.arity != (1, 1) or kind.family != "embedding":
                continue
            try:
                layers.append(kind.model_validate(hook(module)))
            except Exception:  # the hook does not fit this module: not a candidate
                continue
        # the kind's module is not the torch module (an Embedding): compare what they hold
        made = self._layer_statement(node, layers, module, live, table[0].name, same_config=False)
        if isinstance(made, str):
            return None
        st, end = made
        st.origin, st.state = self._origin(str(table[0].target)), list(module.state_dict())
        return [st], end, live

    def _unroll(
        self, node: fx.Node, body: Body, data: list[fx.Node]
    ) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        """An nn.Sequential's statements, in this scope, named ``<sequential>_<child>``."""
        renamed = {"input": self.names[data[0]]}
        out = []
        for st in body.statements:
            child = st.origin.rpartition(".")[2] if st.origin else st.name
            renamed[st.name] = self._name(f"{node.name}_{child}")
            st.name = renamed[st.name]
            st.sources = [renamed[s] for s in st.sources]
            out.append(st)
        if not out:
            return "an empty nn.Sequential"
        return out, node, data

    def _inline(
        self, node: fx.Node, body: Body, data: list[fx.Node]
    ) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        """The statements of a module the model's own forward calls once (a Hugging Face
        head's base model), written in the model's body under their own names: a layer of
        the head may then share a weight with one of them (``tie=``), and one of them with an
        earlier module's (T5's decoder's embedding, its encoder's). Where its names meet the
        body's (a second stack), each takes the module's name as a prefix
        (``decoder_embed_tokens``)."""
        renamed = dict(zip(body.inputs or ["input"], [self.names[d] for d in data], strict=True))
        if body.statements and not body.statements[0].sources and data[0] is not self.previous:
            body.statements[0].sources = [self.names[data[0]]]  # it read the block's input
        own = [name for st in body.statements for name in (st.name, *st.outputs)]
        prefix = f"{self._node_name(node)}_" if self.taken.intersection(own) else ""
        for st in body.statements:
            op = st.op
            tie = op.args.get("tie") if isinstance(op, LayerCall) else None
            if isinstance(op, LayerCall) and isinstance(tie, str) and st.name not in body.outside:
                op.args["tie"] = renamed[tie]  # a layer of the body, renamed as it is
            for name in (st.name, *st.outputs):
                renamed.setdefault(name, self._name(prefix + name))
            st.name = renamed[st.name]
            st.outputs = [renamed[name] for name in st.outputs]
            st.sources = [renamed.get(s, s) for s in st.sources]  # failed pieces keep theirs
        for key, (owner, name) in list(self.capture.owners.items()):
            if owner == id(body) and name in renamed:
                self.capture.owners[key] = (id(self.body), renamed[name])
        if not body.statements:
            return f"{body.cls} computes nothing from its input"
        return body.statements, node, data

    def _function(self, node: fx.Node) -> tuple[list[Statement], fx.Node, list[fx.Node]] | str:
        if node in self.fills:
            return self._filled(node)
        if self.capture.exported and node.target is F.scaled_dot_product_attention:
            return self._heads_attention(node)
        special = self._split_part(node) or self._attention(node) or self._positional(node)
        if special is not None:
            return special
        data = self._data(node)
        fn: Any = node.target
        if node.op == "call_method":
            fn = getattr(torch, str(node.target), node.target)
        args = [self.env.get(a, a) if isinstance(a, fx.Node) else a for a in node.args]
        kwargs = {
            k: self.env.get(v, v) if isinstance(v, fx.Node) else v for k, v in node.kwargs.items()
        }
        layers: list[Layer] = []
        key = node.target if node.target in kinds.DIRECT else fn
        direct = kinds.DIRECT.get(key)
        if fn in kinds.EQUIVALENT_MODULES:
            try:
                module = kinds.EQUIVALENT_MODULES[fn](*args, **kwargs)
            except Exception as exc:  # the call's arguments do not fit the module: say why
                return f"no layer equivalent ({str(exc).splitlines()[0]})"
            kind = kinds.kind_of(module)
            assert kind is not None
            layers, problem = kinds.candidates(kind, kinds.module_arguments(kind, module))
            if not layers:
                return f"{kind.kind} refuses its arguments: {problem}"
        elif direct is None:
            return "no dlspec layer kind computes it"
        else:
            problem = "it works on the batch dimension, which dlspec keeps implicit"
        for kind_name, kind_args in direct(args, kwargs, self.env[node]) if direct else []:
            try:
                layers.append(REGISTRY[kind_name].model_validate(kind_args))
            except Exception as exc:  # pydantic's ValidationError: an argument it refuses
                problem = str(exc).splitlines()[0]
        if not layers:
            return f"no layer equivalent ({problem})"
        made = self._layer_statement(node, layers, None, data)
        views = self._views(node, data)
        if isinstance(made, str) and views != data:
            made = self._layer_statement(node, layers, None, views)
            if not isinstance(made, str):
                for view in set(data) - set(views):
                    self.failed.pop(view, None)  # the layer's own forward indexes its input
                data = views
        if isinstance(made, str):
            return made
        return [made[0]], made[1], data

    def _views(self, node: fx.Node, data: list[fx.Node]) -> list[fx.Node]:
        """``data`` with each input that did not map and is an indexing or method call on one
        tensor, read by ``node`` alone (``t[:, :, None, None]``), replaced by that tensor: what
        a layer whose generated forward indexes its input reads (verified like any other)."""
        views = []
        for d in data:
            tensors = [n for n in _nodes((d.args, d.kwargs)) if _tensor(self.env.get(n))]
            view = d in self.failed and list(d.users) == [node] and len(tensors) == 1
            if view and (d.op == "call_method" or d.target is operator.getitem):
                views.append(tensors[0])
            else:
                views.append(d)
        return views


def _has_weights(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


@cache
def _tie_kinds() -> str:
    """The kinds that share a weight with ``tie=``: ``Embedding or Linear``."""
    return " or ".join(sorted(k for k, cls in REGISTRY.items() if "tie" in cls.references))


def _steps(value: Any) -> int | None:
    """The length of a ``(B, T, d)`` sequence, else None."""
    return value.shape[1] if isinstance(value, torch.Tensor) and value.dim() == 3 else None


def _aten(node: fx.Node) -> str:
    """The ATen operation a node of an exported graph calls (``where``), else ``""``."""
    target = node.target
    return target.overloadpacket.__name__ if isinstance(target, torch._ops.OpOverload) else ""


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, h, T, hd) -> (B, T, h*hd): rotated heads as ``RoPE`` writes them."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _allowed(mask: torch.Tensor, t: int, s: int) -> str | None:
    """What an attention mask made from sizes alone allows: ``"all"``, ``"causal"`` (each
    query step the keys up to it) or None (anything else)."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    allowed = allowed.expand(*allowed.shape[:-2], t, s).reshape(-1, t, s)
    if bool(allowed.all()):
        return "all"
    causal = torch.ones(t, s, dtype=torch.bool).tril(s - t)
    return "causal" if bool((allowed == causal).all()) else None


def _pads(mask: torch.Tensor, ids: torch.Tensor) -> bool:
    """Whether an attention mask of at least 3 dimensions (bool: True attends; float: a
    bias of 0 where it attends and the most negative numbers where not; else: not 0
    attends) lets each query attend exactly the keys whose id is not 0."""
    if mask.dim() < 3 or mask.shape[0] != ids.shape[0] or mask.shape[-1] != ids.shape[-1]:
        return False
    allowed = mask if mask.dtype == torch.bool else mask != 0
    if mask.is_floating_point():
        allowed = mask == 0
        if not bool((allowed | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
            return False  # not a mask: a bias of other values
    keep = (ids != 0).reshape(ids.shape[0], *[1] * (mask.dim() - 2), ids.shape[-1])
    return bool((allowed == keep).all())


def _rope_bases(tables: list[torch.Tensor], width: int) -> list[float]:
    """Candidate bases of a rotation, from the tables it multiplies by: in a cosine table
    ``cos(t / base^(i / half))`` at step 1 and pair 1 the angle is ``base^(-1 / half)``."""
    half = width // 2
    bases = []
    for table in tables:
        if table.shape[-1] != width or table.dim() < 2 or table.shape[-2] < 2 or half < 2:
            continue
        angle = float(torch.acos(table.reshape(-1, *table.shape[-2:])[0, 1, 1].clamp(-1, 1)))
        if 0 < angle < 1:
            bases.append(float(f"{angle**-half:.4g}"))
    return list(dict.fromkeys([*bases, 10000.0]))


def _first(node: fx.Node) -> fx.Node:
    """The tensor a method is called on."""
    source = node.args[0]
    assert isinstance(source, fx.Node)
    return source


def _ancestors(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` is computed from."""
    found: list[fx.Node] = []
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in found:
            found.append(n)
            stack += n.all_input_nodes
    return found

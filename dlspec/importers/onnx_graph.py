"""Read an ONNX file as a torch module that computes what it computes, for the torch importer.

Each ONNX node becomes the torch module or function it stands for (``Conv`` -> ``nn.Conv2d``
holding the file's weights, ``Add`` -> ``+``), in a ``torch.fx`` graph whose modules are
named after the node names' module paths (``/layer1/layer1.0/conv1/Conv`` ->
``layer1.0.conv1``). The module is checked against ONNX Runtime on an example input, then
imported like any PyTorch model. Operations without a counterpart are all listed.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from dlspec.backends.runtime import MAX_MODEL_FILE
from dlspec.importers.ir import ImportFailed, Unmapped
from dlspec.importers.torch_fx import DEFAULT_DIM, InputSpec, example

DTYPES = {1: "float", 6: "long", 7: "long"}  # ONNX TensorProto element types
TOLERANCE = 1e-4


class _Unsupported(Exception):
    """An ONNX node (or attribute) with no torch counterpart here; the message says why."""


@dataclass
class _Reader:
    """The fx graph being built, the modules it calls and what each ONNX value is."""

    graph: fx.Graph = field(default_factory=fx.Graph)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    values: dict[str, fx.Node] = field(default_factory=dict)
    consts: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensor(self, name: str) -> fx.Node:
        if name in self.consts:
            raise _Unsupported("reads a constant tensor where dlspec layers take computed ones")
        return self.values[name]

    def const(self, name: str) -> torch.Tensor:
        if name not in self.consts:
            raise _Unsupported(f"{name} is computed, not a constant weight")
        return self.consts[name]

    def call(self, node: Any, module: nn.Module, *inputs: fx.Node) -> fx.Node:
        path = _unique(_module_path(node), self.modules)
        self.modules[path] = module
        return self.graph.call_module(path, inputs)

    def function(self, target: Callable[..., Any], *args: Any) -> fx.Node:
        return self.graph.call_function(target, args)


def _module_path(node: Any) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``: the module path the torch
    exporter writes into node names (a scope named ``a.0`` inside a scope ``a`` is its
    child ``0``)."""
    path = ""
    for part in [p for p in node.name.split("/") if p][:-1]:
        parent, _, last = path.rpartition(".")
        if part.partition(".")[0] == last and "." in part:
            path = f"{parent}.{part}" if parent else part
        else:
            path = f"{path}.{part}" if path else part
    parts = [re.sub(r"\W", "_", p) or "node" for p in path.split(".") if p]
    if not parts:
        parts = [f"{node.op_type.lower()}"]
    return ".".join(parts)


def _unique(path: str, taken: dict[str, nn.Module]) -> str:
    clash = any(t == path or t.startswith(path + ".") or path.startswith(t + ".") for t in taken)
    if not clash:
        return path
    i = 2
    while any(t == f"{path}_{i}" or t.startswith(f"{path}_{i}.") for t in taken):
        i += 1
    return f"{path}_{i}"


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # ONNX stores floats in single precision: 1e-05 comes back as 9.999999747378752e-06
    return {k: float(f"{v:.7g}") if isinstance(v, float) else v for k, v in values.items()}


def _symmetric(pads: list[int], n: int) -> tuple[int, ...]:
    if list(pads[:n]) != list(pads[n:]):
        raise _Unsupported(f"pads {pads} are not the same on both sides")
    return tuple(pads[:n])


def _conv(r: _Reader, node: Any) -> fx.Node:
    a = _attrs(node)
    weight = r.const(node.input[1])
    bias = r.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    n = weight.dim() - 2
    cls: Any = {1: nn.Conv1d, 2: nn.Conv2d}.get(n)
    if cls is None or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _Unsupported(f"a {n}-D convolution or auto_pad is not supported")
    groups = int(a.get("group", 1))
    module = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(a.get("strides", [1] * n)),
        padding=_symmetric(a.get("pads", [0] * 2 * n), n),
        dilation=tuple(a.get("dilations", [1] * n)),
        groups=groups,
        bias=bias is not None,
    )
    module.weight.data.copy_(weight)
    if bias is not None:
        module.bias.data.copy_(bias)
    return r.call(node, module, r.tensor(node.input[0]))


def _linear(r: _Reader, node: Any) -> fx.Node:
    a = _attrs(node)
    if node.op_type == "Gemm" and (
        a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0)
    ):
        raise _Unsupported("Gemm with alpha, beta or transA is not a Linear layer")
    weight = r.const(node.input[1])
    if node.op_type == "MatMul" or not a.get("transB", 0):
        weight = weight.T
    bias = r.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    module.weight.data.copy_(weight)
    if bias is not None and module.bias is not None:
        module.bias.data.copy_(bias.expand(weight.shape[0]))
    return r.call(node, module, r.tensor(node.input[0]))


def _pool(r: _Reader, node: Any) -> fx.Node:
    a = _attrs(node)
    kernel = tuple(a["kernel_shape"])
    n = len(kernel)
    options: dict[str, Any] = {
        "stride": tuple(a.get("strides", [1] * n)),
        "padding": _symmetric(a.get("pads", [0] * 2 * n), n),
        "ceil_mode": bool(a.get("ceil_mode", 0)),
    }
    if node.op_type == "MaxPool":
        if n != 2:
            raise _Unsupported(f"{n}-D max pooling is not supported")
        module: nn.Module = nn.MaxPool2d(
            kernel, dilation=tuple(a.get("dilations", [1, 1])), **options
        )
    else:
        options["count_include_pad"] = bool(a.get("count_include_pad", 0))
        module = nn.AvgPool2d(kernel, **options)
    return r.call(node, module, r.tensor(node.input[0]))


def _batchnorm(r: _Reader, node: Any) -> fx.Node:
    a = _attrs(node)
    scale, bias, mean, var = (r.const(name) for name in node.input[1:5])
    module = nn.BatchNorm2d(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
    for name, value in (
        ("weight", scale),
        ("bias", bias),
        ("running_mean", mean),
        ("running_var", var),
    ):
        getattr(module, name).data.copy_(value)
    return r.call(node, module, r.tensor(node.input[0]))


def _gather(r: _Reader, node: Any) -> fx.Node:
    table = r.const(node.input[0])
    if _attrs(node).get("axis", 0) != 0 or table.dim() != 2:
        raise _Unsupported("only a lookup in a 2-D table (an embedding) is supported")
    module = nn.Embedding(*table.shape)
    module.weight.data.copy_(table)
    return r.call(node, module, r.tensor(node.input[1]))


def _flatten(r: _Reader, node: Any) -> fx.Node:
    if _attrs(node).get("axis", 1) != 1:
        raise _Unsupported("only Flatten(axis=1) keeps the batch dimension")
    return r.function(torch.flatten, r.tensor(node.input[0]), 1)


def _module(factory: Callable[[dict[str, Any]], nn.Module]) -> Callable[[_Reader, Any], fx.Node]:
    def read(r: _Reader, node: Any) -> fx.Node:
        return r.call(node, factory(_attrs(node)), r.tensor(node.input[0]))

    return read


OPS: dict[str, Callable[[_Reader, Any], fx.Node]] = {
    "Conv": _conv,
    "Gemm": _linear,
    "MatMul": _linear,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "BatchNormalization": _batchnorm,
    "Gather": _gather,
    "Flatten": _flatten,
    "Relu": _module(lambda a: nn.ReLU()),
    "Sigmoid": _module(lambda a: nn.Sigmoid()),
    "Tanh": _module(lambda a: nn.Tanh()),
    "LeakyRelu": _module(lambda a: nn.LeakyReLU(a.get("alpha", 0.01))),
    "GlobalAveragePool": _module(lambda a: nn.AdaptiveAvgPool2d(1)),
    "Softmax": lambda r, node: r.function(
        torch.softmax, r.tensor(node.input[0]), _attrs(node).get("axis", -1)
    ),
    "Add": lambda r, node: r.function(
        operator.add, r.tensor(node.input[0]), r.tensor(node.input[1])
    ),
    "Concat": lambda r, node: r.function(
        torch.cat, [r.tensor(i) for i in node.input], _attrs(node)["axis"]
    ),
}
ALIASES = ("Identity", "Dropout")  # pass their input on (a Dropout is the identity at inference)


#: ONNX element types a tensor of the graph may hold (no strings)
_NUMERIC = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _malformed(model: Any) -> str | None:
    """What makes ``model`` no ONNX model a runtime could run (naming the node, input or
    initializer), or None: onnx's checker, and what it lets through."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError: the checker's own types
        return _first_line(exc)
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= newest:
            return f"opset {opset.version}; this onnx knows opsets 1 to {newest}"
    graph = model.graph
    if not graph.output:
        return "the graph declares no outputs"
    for value in (*graph.input, *graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 1:
                return f"{value.name or '(unnamed)'} has a dimension of {dim.dim_value}"
    for tensor in graph.initializer:
        if tensor.data_type not in _NUMERIC:
            kind = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
            return f"the initializer {tensor.name} holds {kind}s, not numbers"
    return None


def load_onnx(path: Path, symbols: dict[str, int]) -> tuple[nn.Module, list[InputSpec], str]:
    """The torch module an ONNX file computes, its inputs' per-sample types and a description.
    Raises ValueError for a file that cannot be read, ImportFailed listing every node without
    a torch counterpart."""
    import onnx
    from onnx import numpy_helper

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size > MAX_MODEL_FILE:
        raise ValueError(
            f"{path}: {path.stat().st_size:,} bytes, over the 2 GiB an ONNX file holds"
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError, among others
        raise ValueError(f"{path}: not an ONNX file ({str(exc).splitlines()[0][:80]})") from None
    if problem := _malformed(model):
        raise ValueError(f"{path}: not a valid ONNX model: {problem}")
    graph = model.graph
    reader = _Reader()
    reader.consts = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer
    }
    specs = []
    unmapped: list[Unmapped] = []
    for value in graph.input:
        if value.name in reader.consts:
            continue
        tensor_type = value.type.tensor_type
        dims: list[int | str] = []
        for dim in list(tensor_type.shape.dim)[1:]:
            if dim.dim_value:
                dims.append(int(dim.dim_value))
            else:
                name = re.sub(r"\W", "_", dim.dim_param or "T")
                symbols.setdefault(name, DEFAULT_DIM)
                dims.append(name)
        dtype = DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            unmapped.append(Unmapped(value.name, "input", f"element type {tensor_type.elem_type}"))
            continue
        specs.append(InputSpec(dtype, tuple(dims)))
        reader.values[value.name] = reader.graph.placeholder(re.sub(r"\W", "_", value.name))
    for node in graph.node:
        where = _module_path(node)
        try:
            if node.op_type == "Constant":
                reader.consts[node.output[0]] = torch.from_numpy(
                    numpy_helper.to_array(_attrs(node)["value"]).copy()
                )
            elif node.op_type in ALIASES:
                source = node.input[0]
                if source in reader.consts:
                    reader.consts[node.output[0]] = reader.consts[source]
                else:
                    reader.values[node.output[0]] = reader.tensor(source)
            elif node.op_type in OPS:
                reader.values[node.output[0]] = OPS[node.op_type](reader, node)
            else:
                raise _Unsupported("no dlspec layer kind computes it")
        except (_Unsupported, KeyError) as exc:
            unmapped.append(Unmapped(where, f"ONNX {node.op_type} ({node.name})", str(exc)))
        except Exception as exc:  # torch refuses what the node holds (a bias of another size)
            reason = f"{type(exc).__name__}: {_first_line(exc)}"
            unmapped.append(Unmapped(where, f"ONNX {node.op_type} ({node.name})", reason))
    if unmapped:
        count = len(unmapped)
        raise ImportFailed(
            f"{count} piece{'s' * (count != 1)} of {path} cannot be mapped to dlspec", unmapped
        )
    outputs = [reader.values[o.name] for o in graph.output]
    reader.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    name = "".join(p.title() for p in re.split(r"\W|_", path.stem) if p) or "Imported"
    module = fx.GraphModule(reader.modules, reader.graph, class_name=name)
    _compare(module, path, specs, symbols)
    return module, specs, str(path)


def _compare(
    module: nn.Module, path: Path, specs: list[InputSpec], symbols: dict[str, int]
) -> None:
    """The module must compute what ONNX Runtime computes from the file."""
    import onnxruntime as ort

    inputs = [example(spec, symbols) for spec in specs]
    try:  # ONNX Runtime raises its own Fail, InvalidArgument, ... types
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {  # int32 ids are read as long by torch
            i.name: x.numpy().astype(np.int32) if i.type == "tensor(int32)" else x.numpy()
            for i, x in zip(session.get_inputs(), inputs, strict=True)
        }
        expected = session.run(None, feeds)
    except Exception as exc:
        raise ImportFailed(f"{path}: ONNX Runtime cannot run it: {_first_line(exc)}") from None
    module.eval()
    try:
        with torch.no_grad():
            got = module(*inputs)
    except Exception as exc:
        raise ImportFailed(f"{path}: read as torch, it cannot run: {_first_line(exc)}") from None
    got_list = [got] if isinstance(got, torch.Tensor) else list(got)
    for y, r in zip(got_list, expected, strict=True):
        error = float(np.abs(y.numpy() - r).max() / (np.abs(r).max() + 1e-12))
        if error > TOLERANCE:
            raise ImportFailed(
                f"{path}: read as torch, it computes other outputs than ONNX Runtime ({error:.1e})"
            )

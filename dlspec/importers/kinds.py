"""From torch modules and functions to dlspec layers, through the layer registry.

A module maps to the registered kind named like a class in its MRO (``nn.Conv2d`` ->
``Conv2d``; a subclass of ``nn.TransformerEncoder`` -> ``TransformerEncoder``), with the
kind's arguments read from the module's attributes of the same names (a kind with a
``torch_arguments`` classmethod reads them itself). Arguments that are not attributes, such
as a recurrent layer's ``returns`` or an attention's ``causal``, say how ``forward`` uses the
module: every value is a candidate, and :func:`verify` keeps the one that computes what the
original computed. A functional call (``F.relu(x)``, ``torch.flatten(x, 1)``) maps through the
module it is the functional form of. Nothing here knows a kind by name except the few
operations that have no module (``+``, ``torch.cat``, ``view``, ``transpose``, indexing),
listed in :data:`DIRECT`.
"""

from __future__ import annotations

import itertools
import operator
import re
import typing
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlspec.importers.ir import Value
from dlspec.layers import REGISTRY, Layer, LayerError, TensorType
from dlspec.layers.base import sample_dim
from dlspec.validation import ValidationError

# The module each functional form computes, built from the call's arguments (the input first).
EQUIVALENT_MODULES: dict[Callable[..., Any], Callable[..., nn.Module]] = {
    F.relu: lambda x, inplace=False: nn.ReLU(),
    torch.relu: lambda x: nn.ReLU(),
    F.gelu: lambda x, approximate="none": nn.GELU(approximate),
    F.silu: lambda x, inplace=False: nn.SiLU(),
    torch.sigmoid: lambda x: nn.Sigmoid(),
    torch.tanh: lambda x: nn.Tanh(),
    F.leaky_relu: lambda x, negative_slope=0.01, inplace=False: nn.LeakyReLU(negative_slope),
    torch.flatten: lambda x, start_dim=0, end_dim=-1: nn.Flatten(start_dim, end_dim),
    F.softmax: lambda x, dim=None, _stacklevel=3, dtype=None: nn.Softmax(dim),
    torch.softmax: lambda x, dim, dtype=None: nn.Softmax(dim),
    F.log_softmax: lambda x, dim=None, _stacklevel=3, dtype=None: nn.LogSoftmax(dim),
    torch.log_softmax: lambda x, dim, dtype=None: nn.LogSoftmax(dim),
    F.dropout: lambda x, p=0.5, training=True, inplace=False: nn.Dropout(p),
    F.max_pool2d: lambda x, *args, **kwargs: nn.MaxPool2d(*args, **kwargs),
    F.avg_pool2d: lambda x, *args, **kwargs: nn.AvgPool2d(*args, **kwargs),
    F.adaptive_avg_pool2d: lambda x, output_size: nn.AdaptiveAvgPool2d(output_size),
}

# Operations with no module: candidate kinds and arguments, from the call and its output.
Candidates = list[tuple[str, dict[str, Any]]]


def _reshape(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    return [("Flatten", {}), ("Reshape", {"shape": tuple(out.shape[1:])})]


def _add(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    return [("Add", {})]  # broadcasting as torch does: `h + t[:, :, None, None]`


def _cat(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    return [("Concat", {"dim": sample_dim(_arg(args, kwargs, 1, "dim", 0))})]


def _mul(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    """``x * y`` -> Mul; ``x * 0.125`` (a tensor and a number) -> ``Mul(0.125)``."""
    numbers = [a for a in args[:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return [("Mul", {"value": float(numbers[0])})] if numbers else [("Mul", {})]


def _einsum(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    """``torch.einsum("btd,bsd->bts", q, k)``: two operands whose subscripts (and the
    output's) all begin with one letter for the batch, or with ``...``, which Einsum's
    per-sample equation leaves out."""
    equation, *operands = args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(equation, str) or len(operands) != 2 or "->" not in equation:
        return []
    lhs, rhs = equation.replace(" ", "").split("->")
    parts = [*lhs.split(","), rhs]
    if all(part.startswith("...") for part in parts):
        letters = [part[3:] for part in parts]
    elif len({part[:1] for part in parts}) == 1 and all(part[:1] not in part[1:] for part in parts):
        letters = [part[1:] for part in parts]
    else:
        return []
    return [("Einsum", {"equation": f"{letters[0]},{letters[1]}->{letters[2]}"})]


def _per_sample(*dims: int) -> list[int] | None:
    """Torch dims as dlspec counts them; None when one is the batch."""
    return None if 0 in dims else [sample_dim(d) for d in dims]


def _transpose(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    dims = _per_sample(_arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", 0))
    return [] if dims is None else [("Transpose", {"dim0": dims[0], "dim1": dims[1]})]


def _flatten(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    """``x.flatten(2)``: Flatten over per-sample dims (``torch.flatten`` comes through
    :data:`EQUIVALENT_MODULES` too)."""
    dims = _per_sample(_arg(args, kwargs, 1, "start_dim", 0))
    end = _arg(args, kwargs, 2, "end_dim", -1)
    if dims is None or end == 0:
        return []
    return [("Flatten", {"start_dim": dims[0], "end_dim": end if end < 0 else sample_dim(end)})]


def _permute(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    order = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    if not order or order[0] != 0:
        return []
    return [("Permute", {"dims": tuple(sample_dim(d) for d in order[1:])})]


def _select(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    dims = _per_sample(_arg(args, kwargs, 1, "dim", 0))
    return [] if dims is None else [("Select", {"dim": dims[0], "index": args[2]})]


def _index(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
    """``x[:, 0]`` -> Select(0, 0); ``x[:, :, 2:5]`` -> Slice(1, 2, 5): one index or slice after
    full slices (the batch's among them)."""
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    full = slice(None)
    if None in index and all(part in (None, full) for part in index):  # t[:, :, None, None]
        return [("Reshape", {"shape": tuple(out.shape[1:])})]
    rest = [i for i, part in enumerate(index) if part != full]
    if len(rest) != 1 or rest[0] == 0:
        return []
    part, dim = index[rest[0]], rest[0] - 1
    if isinstance(part, int):
        return [("Select", {"dim": dim, "index": part})]
    if isinstance(part, slice) and all(
        isinstance(v, (int, type(None))) for v in (part.start, part.stop, part.step)
    ):
        bounds = {"start": part.start or 0, "end": part.stop, "step": part.step or 1}
        return [("Slice", {"dim": dim} | {k: v for k, v in bounds.items() if v is not None})]
    return []


def _reduce(kind: str) -> Callable[[list[Any], dict[str, Any], torch.Tensor], Candidates]:
    def candidates(args: list[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Candidates:
        dim = _arg(args, kwargs, 1, "dim", None)
        dims = [dim] if isinstance(dim, int) else list(dim or [])
        per_sample = _per_sample(*dims) if dims else None
        if per_sample is None:
            return []
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        value = per_sample[0] if isinstance(dim, int) else tuple(per_sample)
        return [(kind, {"dim": value, "keepdim": keepdim})]

    return candidates


DIRECT: dict[Any, Callable[[list[Any], dict[str, Any], torch.Tensor], Candidates]] = {
    operator.add: _add,
    torch.add: _add,
    torch.cat: _cat,
    torch.concat: _cat,
    torch.einsum: _einsum,
    operator.mul: _mul,
    torch.mul: _mul,
    "mul": _mul,
    "transpose": _transpose,
    torch.transpose: _transpose,
    "permute": _permute,
    torch.permute: _permute,
    "select": _select,
    torch.select: _select,
    operator.getitem: _index,
    "mean": _reduce("Mean"),
    torch.mean: _reduce("Mean"),
    "sum": _reduce("Sum"),
    torch.sum: _reduce("Sum"),
    "flatten": _flatten,
    torch.flatten: _flatten,
    "view": _reshape,
    "reshape": _reshape,
    torch.reshape: _reshape,
}


def _arg(args: list[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def kind_of(module: nn.Module) -> type[Layer] | None:
    """The registered kind of the first class of the module's MRO that is one: named like the
    kind, or among the kind's ``torch_names``."""
    names = {name: kind for kind in REGISTRY.values() for name in (kind.kind, *kind.torch_names)}
    for cls in type(module).__mro__:
        if cls is nn.Module:
            return None
        if cls.__name__ in names:
            return names[cls.__name__]
    return None


def tensor_type(value: torch.Tensor) -> TensorType:
    return TensorType(tuple(value.shape[1:]), "float" if value.is_floating_point() else "long")


def _plain(value: Any) -> Any:
    """An attribute value as a spec can hold it: a tensor (a bias) -> True, None -> False for
    a bool field, ``(3, 3)`` -> 3."""
    ints = isinstance(value, tuple) and all(type(v) is int for v in value)
    if ints and value and all(v == value[0] for v in value):
        return value[0]
    return value


def module_arguments(kind: type[Layer], module: nn.Module) -> dict[str, Any]:
    """The kind's arguments that the module's attributes determine."""
    hook = getattr(kind, "torch_arguments", None)
    if hook is not None:
        return dict(hook(module))
    args: dict[str, Any] = {}
    for name, field in kind.model_fields.items():
        if name not in dir(module) and not hasattr(module, name):
            continue
        value = getattr(module, name)
        if field.annotation is bool and (value is None or isinstance(value, torch.Tensor)):
            value = value is not None
        if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
            continue
        args[name] = _plain(value)
    return args


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` or ``bool`` field, else None."""
    if annotation is bool:
        return (False, True)
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def candidates(kind: type[Layer], known: dict[str, Any]) -> tuple[list[Layer], str]:
    """Layers of ``kind`` with the ``known`` arguments, one per combination of the values of
    the fields the module does not determine; and why none could be made (when empty).
    Arguments equal to the default are left out; sizes that come from the input
    (``in_channels``...) are left out where the kind infers them (tried first)."""
    free = {
        name: choices
        for name, field in kind.model_fields.items()
        if name not in known and (choices := _choices(field.annotation)) is not None
    }
    defaults = {n: f.default for n, f in kind.model_fields.items() if not f.is_required()}
    given = {k: v for k, v in known.items() if k not in defaults or defaults[k] != v}
    inferred = {k for k, v in given.items() if defaults.get(k, 0) is None and isinstance(v, int)}
    layers: list[Layer] = []
    problem = ""
    for keep in (False, True):
        base = given if keep else {k: v for k, v in given.items() if k not in inferred}
        for combo in itertools.product(*free.values()):
            chosen = dict(zip(free, combo, strict=True))
            args = base | {k: v for k, v in chosen.items() if defaults.get(k) != v}
            try:
                layers.append(kind.model_validate(args))
            except ValidationError as exc:
                problem = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}"
                    for e in exc.errors()
                )
        if not inferred:
            break
    return layers, problem


def arguments(layer: Layer) -> dict[str, Value]:
    """The layer's arguments as written: positional fields first, then the rest, in field
    order; defaults left out."""
    fields = layer.model_fields_set
    order = list(layer.positional) + [
        f for f in type(layer).model_fields if f not in layer.positional
    ]
    return {name: getattr(layer, name) for name in order if name in fields}


def forward_expression(layer: Layer, inputs: list[torch.Tensor]) -> str:
    """The expression of the layer's generated forward, over ``m`` (its module) and
    ``x0, x1, ...`` (the inputs)."""
    call = layer.torch([tensor_type(x) for x in inputs])
    names = {f"x{i}": f"x{i}" for i in range(len(inputs))}
    return call.forward.format(module="m", x="x0", inputs=", ".join(names), **names)


def realize(layer: Layer, inputs: list[torch.Tensor]) -> tuple[nn.Module | None, str]:
    """The module dlspec generates for ``layer``, its tensors uninitialised (they are loaded
    next: a large layer is built in no time), and the expression of its forward."""
    call = layer.torch([tensor_type(x) for x in inputs])
    namespace: dict[str, Any] = {"torch": torch, "nn": nn}
    module = None
    if call.cls is not None:
        if call.helper is not None:
            exec(call.helper, namespace)
        with torch.device("meta"):
            module = eval(call.cls, namespace)(*call.args, **call.kwargs)
        module = module.to_empty(device="cpu")
    return module, forward_expression(layer, inputs)


def verify(
    layer: Layer, original: nn.Module | None, inputs: list[torch.Tensor], same_config: bool = True
) -> tuple[Any, str]:
    """Run the module dlspec would generate for ``layer``, holding ``original``'s weights, on
    ``inputs``; returns its output, or None and why it cannot stand for ``original``."""
    try:
        layer.infer([tensor_type(x) for x in inputs])
        built, forward = realize(layer, inputs)
    except LayerError as exc:
        return None, exc.message
    except (TypeError, ValueError, RuntimeError) as exc:
        return None, str(exc).splitlines()[0]
    theirs = original.state_dict() if original is not None else {}
    mine = built.state_dict() if built is not None else {}
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
        return None, f"its tensors {_describe(theirs)} are not {layer.label()}'s {_describe(mine)}"
    if built is not None and original is not None and same_config:
        configs = [(n, _config(m)) for n, m in original.named_modules()]
        if [(n, _config(m)) for n, m in built.named_modules()] != configs:
            return None, f"{layer.label()} builds {built.extra_repr()}, not {original.extra_repr()}"
    if built is not None:
        built.load_state_dict(theirs)
        built.eval()
    namespace = {"torch": torch, "nn": nn, "m": built} | {f"x{i}": x for i, x in enumerate(inputs)}
    try:
        with torch.no_grad():
            return eval(forward, namespace), ""
    except Exception as exc:  # the candidate does not fit the inputs: any error says so
        return None, str(exc).splitlines()[0]


def _config(module: nn.Module) -> str:
    """A module's options as its ``extra_repr`` shows them, with the ones that do not change
    what it computes or holds left out (``inplace``) and ``(1, 1)`` written as ``1``."""
    text = re.sub(r",?\s*inplace=(True|False)", "", module.extra_repr())
    return re.sub(r"\((\d+)(?:, \1)*,?\)", r"\1", text).strip(", ")


def _describe(state: dict[str, torch.Tensor]) -> str:
    return "{" + ", ".join(f"{k} {list(v.shape)}" for k, v in state.items()) + "}"


def same(a: Any, b: Any) -> bool:
    """Whether two outputs agree (tensors of one shape, within float rounding)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


EPS_LIMIT = 1e-2  # a float constant below this in a normalization's graph may be its eps


def stand_ins(module: nn.Module, constants: list[float]) -> list[tuple[nn.Module, list[str]]]:
    """Torch modules that may compute what ``module`` (of no registered kind, and without
    children) computes, judged by the tensors it holds, each holding them (and the names of
    those it holds transposed): without tensors an activation; with a vector ``weight`` (and
    ``bias``) a normalization, its eps among the ``constants`` of its forward; with a matrix
    ``weight`` a Linear, as ``nn.Linear`` lays it out or transposed (GPT-2's ``Conv1D``).
    :func:`verify` then keeps the one that computes what the module computed."""
    state = module.state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    made: list[tuple[nn.Module, list[str]]] = []
    if not shapes:
        return [
            (m, [])
            for m in (nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.ReLU(), nn.Tanh(), nn.Sigmoid())
        ]
    weight = shapes.get("weight", ())
    bias = "bias" in shapes
    if set(shapes) - {"weight", "bias"}:
        return []
    if len(weight) == 1:
        epsilons = [c for c in constants if 0 < c < EPS_LIMIT] or [1e-5]
        for eps in dict.fromkeys(epsilons):
            made.append((nn.LayerNorm(weight[0], eps=eps, bias=bias), []))
            if not bias:
                made.append((nn.RMSNorm(weight[0], eps=eps), []))
    elif len(weight) == 2:
        out, into = weight
        if not bias or shapes["bias"] == (out,):
            made.append((nn.Linear(into, out, bias=bias), []))
        if not bias or shapes["bias"] == (into,):
            made.append((nn.Linear(out, into, bias=bias), ["weight"]))
    for stand_in, transposed in made:
        stand_in.load_state_dict(
            {k: v.t() if k in transposed else v for k, v in state.items()}, strict=True
        )
    return made

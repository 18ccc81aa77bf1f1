"""PyTorch code generation: a :class:`ModelGraph` -> the source of a standalone ``model.py``.

The generated file imports only torch and reads like hand-written code:

* one ``nn.Module`` class per distinct block body, residual branch and projection shortcut
  (``ConvBNReLU``, then ``ConvBNReLU2`` when another use of the block resolves to other
  numbers), and the model's class last;
* attributes named after the spec's statements and repetitions as ``nn.Sequential``, so
  ``named_parameters()`` yields exactly the analyzer's paths (``layer1.0.residual1.conv2d1``);
* a ``forward`` in spec order: unnamed tensors flow through one variable (``x = self.fc1(x)``),
  tensors the spec refers to by name keep their names, and a comment gives the shape wherever
  it changes (``# (B, 64, 24, 24)``; symbolic dimensions print as their names);
* when the model uses blocks, ``self.checkpointing`` (False; ``dlspec build --checkpointing``
  sets it) makes ``run_block`` run each of the model's own block uses (and each copy of a
  repeated block) under ``torch.utils.checkpoint`` while training: only the block's input is
  kept, and the block runs again in the backward pass.

Everything layer-specific comes from :meth:`Layer.torch`; the generator never looks at a
layer's kind. Names in the output are the analyzer's validated identifiers and every value
passes through :func:`literal`, so no spec text becomes code. The output is already formatted
as ``ruff format`` formats it, at dlspec's line length of 100.
"""

from __future__ import annotations

import ast
import itertools
import keyword
import math
import textwrap
from dataclasses import dataclass
from typing import Any

from dlspec import __version__
from dlspec.analysis.graph import Graph, ModelGraph, Step
from dlspec.analysis.memory import checkpoint_unit
from dlspec.layers.base import TensorType
from dlspec.layers.symbolic import fmt_dim

WIDTH = 100  # the line length of ruff format, as dlspec's own code is formatted
INDENT = "    "
FLOW_NAMES = ("x", "out", "h", "y")  # the variable unnamed tensors flow through
ARGUMENT_NAMES = ("x", "x_in", "inputs")  # a block's or residual's input tensor
BUILTINS = frozenset({"torch", "nn", "super", "tuple"})  # names generated code relies on
PLAIN_CALL = "{module}({x})"


def generate(graph: ModelGraph, source: str | None = None) -> str:
    """The source of a standalone ``model.py`` whose ``class <graph.name>(nn.Module)`` is the
    model, built with the numbers the analyzer resolved. ``source`` (the spec's path) is named
    in the module docstring with the model's parameter values. Deterministic, byte for byte.
    Raises ``ValueError`` for a name Python cannot use (the analyzer refuses those first)."""
    return _Generator(graph).module(source)


# literals -----------------------------------------------------------------------------------


def literal(value: Any) -> str:
    """``value`` as Python source, written as ``ruff format`` writes it. Only plain data is
    accepted (None, bool, int, float, str and tuples or lists of them): anything else raises
    ``TypeError`` rather than reach the generated code."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else f'float("{value}")'
    if isinstance(value, str):
        quote = "'" if value.count('"') > value.count("'") else '"'  # ruff's preference
        return quote + _escape(value, quote) + quote
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(value, list):
        return f"[{', '.join(literal(v) for v in value)}]"
    raise TypeError(f"cannot write the {type(value).__name__} {value!r} into generated code")


def _escape(text: str, quote: str) -> str:
    """``text`` for the inside of a string literal (or docstring) delimited by ``quote``."""
    out = []
    for char in text:
        if char in ("\\", quote):
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])  # \n, \t, \x00, \u2028...
    return "".join(out)


def _identifier(name: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
        raise ValueError(f"{what} {name!r} is not a usable Python identifier")
    return name


# layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call to lay out as ruff does: ``func(args)``."""

    func: str
    args: tuple[Argument, ...] = ()

    def flat(self) -> str:
        return f"{self.func}({', '.join(_flat(a) for a in self.args)})"


Argument = tuple[str | None, str | Call]  # (keyword or None, source text or a nested call)


def _flat(arg: Argument) -> str:
    key, value = arg
    text = value.flat() if isinstance(value, Call) else value
    return text if key is None else f"{key}={text}"


def lay_out(call: Call, depth: int, prefix: str = "", suffix: str = "") -> list[str]:
    """``prefix + call + suffix`` at ``depth`` indents: on one line if it fits, else with the
    arguments on a line of their own, else one argument per line with a trailing comma."""
    pad, inner = INDENT * depth, INDENT * (depth + 1)
    line = pad + prefix + call.flat() + suffix
    if len(line) <= WIDTH or not call.args:
        return [line]
    head, tail = f"{pad}{prefix}{call.func}(", f"{pad}){suffix}"
    together = inner + ", ".join(_flat(a) for a in call.args)
    if len(together) <= WIDTH:
        return [head, together, tail]
    lines = [head]
    for key, value in call.args:
        name = "" if key is None else f"{key}="
        if isinstance(value, Call):
            lines += lay_out(value, depth + 1, name, ",")
        else:
            lines.append(f"{inner}{name}{value},")
    return [*lines, tail]


def _statement(prefix: str, expr: str, depth: int, comment: str | None = None) -> list[str]:
    """The statement ``prefix + expr``. The comment trails it when the line has room, else it
    goes on a line of its own above (ruff would split the code to make room for it)."""
    pad = INDENT * depth
    line = pad + prefix + expr
    trailing = f"  # {comment}" if comment else ""
    if len(line + trailing) <= WIDTH:
        return [line + trailing]
    above = [f"{pad}# {comment}"] if comment else []
    if len(line) <= WIDTH:
        return [*above, line]
    split = _split_call(expr)
    if split is not None:
        return [*above, *lay_out(split[0], depth, prefix, split[1])]
    return [*above, f"{pad}{prefix}(", f"{pad}{INDENT}{expr}", f"{pad})"]


def _split_call(expr: str) -> tuple[Call, str] | None:
    """``f(a, b)`` or ``f(a, b)[0]`` as a Call and the text after it; None for other forms."""
    tree = ast.parse(expr, mode="eval").body
    suffix = ""
    if isinstance(tree, ast.Subscript) and isinstance(tree.value, ast.Call):
        tree = tree.value
        suffix = expr[len(ast.get_source_segment(expr, tree) or "") :]
    call = _call(expr, tree)
    return (call, suffix) if isinstance(call, Call) else None


def _call(expr: str, node: ast.expr) -> str | Call:
    """The source of ``node`` in ``expr``, as a Call (with nested calls) where it is one."""
    text = ast.get_source_segment(expr, node) or ""
    if not isinstance(node, ast.Call) or any(k.arg is None for k in node.keywords):
        return text
    parts: list[tuple[int, Argument]] = [(a.col_offset, (None, _call(expr, a))) for a in node.args]
    parts += [(k.col_offset, (k.arg, _call(expr, k.value))) for k in node.keywords]
    args = tuple(arg for _, arg in sorted(parts, key=lambda p: p[0]))
    return Call(ast.get_source_segment(expr, node.func) or "", args)


def _returns(values: list[str], depth: int) -> list[str]:
    pad = INDENT * depth
    line = f"{pad}return {', '.join(values)}"
    if len(line) <= WIDTH or len(values) == 1:
        return _statement("return ", ", ".join(values), depth)
    return [f"{pad}return (", *(f"{pad}{INDENT}{v}," for v in values), f"{pad})"]


def _docstring(text: str) -> str:
    """A module docstring holding ``text``, escaped (it may quote spec values) and wrapped."""
    lines = textwrap.wrap(
        _escape(text, '"'),
        WIDTH - 3,
        initial_indent='"""',
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(lines) + '"""'


def _shape(t: TensorType) -> str:
    """``(B, 64, 24, 24)``: a tensor's shape with its batch dimension."""
    dims = ["B", *(fmt_dim(d) for d in t.shape)]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _attribute(path: str) -> str:
    """``layer1.0.conv`` -> ``self.layer1[0].conv``."""
    return "self" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


# the generator ------------------------------------------------------------------------------


@dataclass
class _Body:
    """One nn.Module class: ``__init__`` statements, ``forward``'s tensor arguments and
    statements, how many tensors it returns, and the variable of each tensor of the scope."""

    init: list[str]
    params: list[str]
    forward: list[str]
    results: int
    variables: dict[str, str]
    methods: str = ""  # further methods, after forward


class _Generator:
    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self.calls = {
            id(n): n.layer.torch([t.type for t in n.inputs]) for n in graph.leaves() if n.layer
        }
        helpers = {c.cls for c in self.calls.values() if c.helper is not None and c.cls}
        blocks = {s.block.name for s in graph.all_steps() if s.block is not None}
        self.reserved = {graph.name, *blocks, *helpers}  # class names the spec chose
        for name in self.reserved:
            if name in BUILTINS:
                raise ValueError(f"a class named {name!r} would hide what generated code uses")
            _identifier(name, "class name")
        self.names: dict[tuple[str, str], str] = {}  # (base name, class source) -> class name
        self.classes: list[str] = []  # sources, each after the classes it uses
        self.helpers: list[str] = []

    def module(self, source: str | None) -> str:
        model = _class_source(self.graph.name, self._model_body())
        values = ", ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={literal(v)}"
            for k, v in self.graph.arguments.items()
        )
        where = f" from {source}" if source is not None else ""
        settings = f" ({values})" if values else ""
        doc = f"Generated by dlspec {__version__}{where}{settings}."
        header = _docstring(doc) + "\n\nimport torch\nfrom torch import nn"
        return "\n\n\n".join([header, *self.helpers, *self.classes, model]) + "\n"

    def _class(self, base: str, body: _Body, own: bool = False) -> str:
        """The name of the class with this body, defined on first use: ``base``, or ``base2``,
        ``base3``... when that is taken (``own``: ``base`` is this block's own name)."""
        key = (base, _class_source("_", body))
        if key not in self.names:
            used = set(self.names.values())
            self.names[key] = next(
                name
                for name in (base if i == 1 else f"{base}{i}" for i in itertools.count(1))
                if name not in used and (name not in self.reserved or (own and name == base))
            )
            self.classes.append(_class_source(self.names[key], body))
        return self.names[key]

    def _model_body(self) -> _Body:
        graph = self.graph
        self.checkpointed = {id(s) for s in graph.steps if checkpoint_unit(s)}
        body = self._scope(graph.graph, {i.name: i.name for i in graph.inputs}, graph.name)
        if self.checkpointed:
            body.init.append(
                f"{INDENT * 2}self.checkpointing = False  # True: recompute blocks in backward"
            )
            body.methods = RUN_BLOCK
        for leaf in graph.leaves():
            for weight, target in leaf.tied.items():  # shared tensors: assign the first one
                body.init += _statement(
                    f"{_attribute(leaf.path)}.{weight} = ", _attribute(target), 2
                )
        return body

    def _inner_body(self, graph: Graph, owner: str) -> _Body:
        """A block's or a shortcut's body: its inputs (one, ``input``, or the block's named
        ones), its output."""
        if [t.name for t in graph.inputs] == ["input"]:
            return self._scope(graph, {"input": _argument_name(graph)}, owner)
        return self._scope(graph, {t.name: t.name for t in graph.inputs}, owner)

    def _residual_class(self, step: Step, owner: str) -> str:
        assert step.body is not None
        argument = _argument_name(step.body)
        body = self._scope(step.body, {"input": argument}, owner, returns=False)
        other = argument
        if step.shortcut is not None:
            shortcut = self._class(f"{owner}Shortcut", self._inner_body(step.shortcut, owner))
            body.init.append(f"{INDENT * 2}self.shortcut = {shortcut}()")
            other = f"self.shortcut({argument})"
        main = body.variables[step.body.outputs[0].name]
        body.forward += _statement("return ", f"{main} + {other}", 2)
        return self._class(f"{owner}Residual", body)

    def _scope(
        self, graph: Graph, params: dict[str, str], owner: str, returns: bool = True
    ) -> _Body:
        """The class body for one graph: ``params`` maps its input tensors to their variables;
        ``forward`` returns the graph's outputs unless ``returns`` is false (a residual's
        body, whose caller adds its input: it stays readable after the last step)."""
        results = [t.name for t in graph.outputs] if returns else []
        variables = _variables(graph, params, results, set() if returns else set(params))
        init: list[str] = []
        forward: list[str] = []
        for step in graph.steps:
            inputs = [variables[t.name] for t in step.inputs]
            built = self._constructor(step, owner)
            if built is not None:
                init += lay_out(built, 2, f"self.{step.name} = ")
            forward += self._forward(step, inputs, variables[step.output.name], built)
        if results:
            forward += _returns([variables[r] for r in results], 2)
        return _Body(init, list(params.values()), forward, len(results), variables)

    def _constructor(self, node: Step, owner: str) -> Call | None:
        """How ``__init__`` builds the node's module; None for a layer that has none."""
        if node.block is not None:
            assert node.body is not None
            name = node.block.name
            return Call(self._class(name, self._inner_body(node.body, name), True))
        if node.kind == "residual":
            return Call(self._residual_class(node, owner))
        if node.kind == "repeat":
            parts = [self._constructor(child, owner) for child in node.children]
            if any(p is None for p in parts):
                return None
            return Call("nn.Sequential", tuple((None, p) for p in parts if p is not None))
        call = self.calls[id(node)]
        if call.cls is None:
            return None
        for part in call.cls.split("."):
            _identifier(part, "module class")
        if call.helper is not None and call.helper.rstrip() not in self.helpers:
            self.helpers.append(call.helper.rstrip())
        args: list[Argument] = [(None, literal(a)) for a in call.args]
        args += [(_identifier(k, "argument"), literal(v)) for k, v in call.kwargs.items()]
        return Call(call.cls, tuple(args))

    def _forward(self, node: Step, inputs: list[str], target: str, built: Call | None) -> list[str]:
        """``forward`` statements computing ``node`` into the variable ``target``."""
        module = f"self.{node.name}"
        if id(node) in getattr(self, "checkpointed", ()):
            if node.kind == "block":
                expr = f"self.run_block({module}, {inputs[0]})"
                return _statement(f"{target} = ", expr, 2, _change(node))
            loop = "block" if target != "block" else "block_"
            return [
                f"{INDENT * 2}{target} = {inputs[0]}" if target != inputs[0] else "",
                f"{INDENT * 2}for {loop} in {module}:",
                f"{INDENT * 3}{target} = self.run_block({loop}, {target})",
            ][0 if target != inputs[0] else 1 :]
        if node.kind != "repeat" or (
            built is not None and len(inputs) == 1 and all(map(self._plain, node.children))
        ):
            return _statement(
                f"{target} = ", self._expression(node, module, inputs), 2, _change(node)
            )
        if not node.children:  # repeated 0 times: the first input
            return _statement(f"{target} = ", inputs[0], 2)
        lines = []  # unrolled: self.stack[0](a, b), then self.stack[1](x)...
        for i, child in enumerate(node.children):
            expr = self._expression(child, f"{module}[{i}]", inputs)
            lines += _statement(f"{target} = ", expr, 2, _change(child))
            inputs = [target, *inputs[1:]]  # the first input threads; the others stay
        return lines

    def _plain(self, node: Step) -> bool:
        """Whether the node's module is called as ``module(x)`` (as nn.Sequential calls it)."""
        return node.layer is None or self.calls[id(node)].forward == PLAIN_CALL

    def _expression(self, node: Step, module: str, inputs: list[str]) -> str:
        if node.layer is None:  # a block, residual or repetition: a module of its inputs
            return f"{module}({', '.join(inputs)})"
        numbered = {f"x{i}": v for i, v in enumerate(inputs)}
        template = self.calls[id(node)].forward
        return template.format(module=module, x=inputs[0], inputs=", ".join(inputs), **numbered)


def _class_source(name: str, body: _Body) -> str:
    returns = "torch.Tensor"
    if body.results > 1:
        returns = f"tuple[{', '.join(['torch.Tensor'] * body.results)}]"
    params = tuple((None, p) for p in ["self", *(f"{p}: torch.Tensor" for p in body.params)])
    lines = [
        f"class {name}(nn.Module):",
        f"{INDENT}def __init__(self) -> None:",
        f"{INDENT * 2}super().__init__()",
        *body.init,
        "",
        *lay_out(Call("forward", params), 1, "def ", f" -> {returns}:"),
        *body.forward,
    ]
    return "\n".join(lines) + body.methods


RUN_BLOCK = '''

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block; with checkpointing (while training) only its input is kept, and the
        block runs again in the backward pass."""
        if self.checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return block(x)'''


def _change(node: Step) -> str | None:
    """A statement's shape comment: its output's shape, when that differs from its input's."""
    output = node.output.type
    return _shape(output) if node.inputs and output != node.inputs[0].type else None


def _argument_name(graph: Graph) -> str:
    """The variable of a block's or residual's input: ``x`` unless a statement is named so."""
    named = {s.name for s in graph.steps}
    spare = (f"x_in{i}" for i in itertools.count(2))
    return next(n for n in itertools.chain(ARGUMENT_NAMES, spare) if n not in named)


def _variables(
    graph: Graph, params: dict[str, str], results: list[str], read_later: set[str]
) -> dict[str, str]:
    """The variable of each tensor of a graph. A tensor read only by the next step, as its
    one input, flows through one variable (``x = self.fc1(x)``); every other tensor keeps its
    name. The flow variable may reuse the name of an input that only the first step reads."""
    readers = graph.readers()
    steps = graph.steps
    last = [steps[-1].output.name] if steps else []

    def flows(name: str, after: int) -> bool:
        """Whether the tensor written by step ``after`` (-1: a graph input) flows."""
        if name in read_later or (name in results and results != last):
            return False
        following = steps[after + 1] if after + 1 < len(steps) else None
        return all(r is following and len(r.inputs) == 1 for r in readers[name])

    outputs = [(t.name, i) for i, s in enumerate(steps) for t in s.outputs]
    flowing = {name for name, i in outputs if flows(name, i)}
    taken = {name for name, _ in outputs if name not in flowing}
    taken |= {v for t, v in params.items() if not flows(t, -1)}
    flow = next(
        name
        for name in itertools.chain(FLOW_NAMES, (f"x{'_' * i}" for i in itertools.count(1)))
        if name not in taken
    )
    return {name: flow if name in flowing else name for name, _ in outputs} | params

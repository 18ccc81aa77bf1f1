"""PyTorch code generation: a :class:`ModelGraph` -> the source of a standalone ``model.py``.

The generated file imports only torch and reads like hand-written code:

* one ``nn.Module`` class per block definition, residual branch and projection shortcut, its
  constructor taking the block's parameters and the input sizes it infers (``in_channels``);
  the model's parameters are its constructor's arguments, defaulting to the checked values.
  Each constructor argument is written as the spec's expression over those names where one
  gives it in every use (found by value, and for a layer's own arguments checked by binding
  the call again with each name doubled), else as the number; uses whose bodies differ in
  more than numbers (a ``Reshape`` to other sizes) get a class each (``Shape2``);
* repetitions as a loop over one class (``nn.Sequential(Block(c_in, c), *[Block(c, c) for _
  in range(n - 1)])``);
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
from dataclasses import dataclass, field
from typing import Any

from dlspec import __version__
from dlspec.analysis.binding import bind_layer
from dlspec.analysis.evaluate import CONSTANTS, evaluate
from dlspec.analysis.graph import Graph, ModelGraph, Step, Tensor
from dlspec.analysis.memory import checkpoint_unit
from dlspec.analysis.names import CODE_NAMES
from dlspec.diagnostics import DiagnosticError
from dlspec.layers.base import LayerError, TensorType, TorchCall
from dlspec.layers.symbolic import Poly, fmt_dim
from dlspec.syntax import ast as spec

WIDTH = 100  # the line length of ruff format, as dlspec's own code is formatted
INDENT = "    "
FLOW_NAMES = ("x", "out", "h", "y")  # the variable unnamed tensors flow through
ARGUMENT_NAMES = ("x", "x_in", "inputs")  # a block's or residual's input tensor
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
class CallText:
    """A call to lay out as ruff does: ``func(args)``."""

    func: str
    args: tuple[Argument, ...] = ()

    def flat(self) -> str:
        return f"{self.func}({', '.join(_flat(a) for a in self.args)})"


@dataclass(frozen=True)
class Loop:
    """``*[call for _ in range(count)]``: ``count`` modules built alike, in a Sequential."""

    call: CallText
    count: str

    def flat(self) -> str:
        return f"*[{self.call.flat()} for _ in range({self.count})]"


Argument = tuple[str | None, str | CallText | Loop]  # (keyword or None, source, a call or a loop)


def _flat(arg: Argument) -> str:
    key, value = arg
    text = value if isinstance(value, str) else value.flat()
    return text if key is None else f"{key}={text}"


def lay_out(call: CallText, depth: int, prefix: str = "", suffix: str = "") -> list[str]:
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
        if isinstance(value, CallText):
            lines += lay_out(value, depth + 1, name, ",")
        elif isinstance(value, Loop):
            lines += _lay_out_loop(value, depth + 1, "," if len(call.args) > 1 else "")
        else:
            lines.append(f"{inner}{name}{value},")
    return [*lines, tail]


def _lay_out_loop(loop: Loop, depth: int, suffix: str) -> list[str]:
    """A loop argument on one line if it fits, else its call and its ``for`` on lines of
    their own."""
    pad = INDENT * depth
    if len(pad + loop.flat() + suffix) <= WIDTH:
        return [pad + loop.flat() + suffix]
    each = f"{pad}{INDENT}for _ in range({loop.count})"
    return [f"{pad}*[", *lay_out(loop.call, depth + 1), each, f"{pad}]{suffix}"]


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


def _split_call(expr: str) -> tuple[CallText, str] | None:
    """``f(a, b)`` or ``f(a, b)[0]`` as a CallText and the text after it; None for other forms."""
    tree = ast.parse(expr, mode="eval").body
    suffix = ""
    if isinstance(tree, ast.Subscript) and isinstance(tree.value, ast.Call):
        tree = tree.value
        suffix = expr[len(ast.get_source_segment(expr, tree) or "") :]
    call = _call(expr, tree)
    return (call, suffix) if isinstance(call, CallText) else None


def _call(expr: str, node: ast.expr) -> str | CallText:
    """The source of ``node`` in ``expr``, as a CallText (with nested calls) where it is one."""
    text = ast.get_source_segment(expr, node) or ""
    if not isinstance(node, ast.Call) or any(k.arg is None for k in node.keywords):
        return text
    parts: list[tuple[int, Argument]] = [(a.col_offset, (None, _call(expr, a))) for a in node.args]
    parts += [(k.col_offset, (k.arg, _call(expr, k.value))) for k in node.keywords]
    args = tuple(arg for _, arg in sorted(parts, key=lambda p: p[0]))
    return CallText(ast.get_source_segment(expr, node.func) or "", args)


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

SENTINEL = 7919  # an input size no spec uses: the constructor arguments it changes are inferred
Slot = int | str  # a constructor argument: its position or its keyword
Candidate = str | spec.Expr  # a name in scope or one of the spec's expressions


class _Split(Exception):
    """The uses of one definition cannot share a class body: each gets its own."""


@dataclass
class _Param:
    """A constructor parameter of a generated class."""

    name: str
    annotation: str
    default: Any = None
    has_default: bool = False

    def source(self) -> str:
        text = f"{self.name}: {self.annotation}"
        return f"{text} = {literal(self.default)}" if self.has_default else text


@dataclass
class _Use:
    """One use of a class: the step that uses it (None for the model), the graph it builds
    and the value of each name its constructor may refer to."""

    step: Step | None
    graph: Graph
    env: dict[str, Any]


@dataclass
class _Site:
    """What one generated class stands for: the model, a block definition, a residual (or its
    shortcut) as written in the spec; its uses, and what its constructor may refer to:
    ``declared`` parameters (in order, with their annotations and defaults) and ``sizes``,
    the input sizes (``in_channels``) by dimension."""

    key: tuple[str, str]
    base: str
    own: bool
    declared: list[_Param]
    sizes: dict[int, str]
    uses: list[_Use] = field(default_factory=list)


@dataclass
class _Context:
    """The uses a class body is generated for: each one's names (``envs``), the spec's
    expressions in the body (``pool``), the names the body refers to (``used``) and the
    arguments no expression gives (``extra``: their value for each use)."""

    site: _Site
    envs: list[dict[str, Any]]
    pool: list[spec.Expr]
    graph_inputs: list[Tensor]
    used: set[str] = field(default_factory=set)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def upstream(self, step: Step) -> list[Candidate]:
        """What may give a size that flows into ``step`` from before it: the names in scope
        and the spec's expressions in the body. (A model's input sizes are the spec's own
        numbers: only a name of the same value stands for them.)"""
        names: list[Candidate] = [p.name for p in self.site.declared]
        names += list(self.site.sizes.values())
        inputs = {t.name for t in self.graph_inputs}
        if self.site.key[0] == "model" and any(t.name in inputs for t in step.inputs):
            return names
        return [*names, *self.pool]


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
        self.checkpointed: set[int] = set()  # ids of the model's steps run_block runs
        self.calls = {
            id(n): n.layer.torch([t.type for t in n.inputs]) for n in graph.leaves() if n.layer
        }
        helpers = {c.cls for c in self.calls.values() if c.helper is not None and c.cls}
        blocks = {s.block.name for s in graph.all_steps() if s.block is not None}
        self.reserved = {graph.name, *blocks, *helpers}  # class names the spec chose
        for name in self.reserved:
            if name in CODE_NAMES:
                raise ValueError(f"a class named {name!r} would hide what generated code uses")
            _identifier(name, "class name")
        self.names: dict[tuple[str, str], str] = {}  # (base name, class source) -> class name
        self.signatures: dict[str, list[_Param]] = {}  # class name -> constructor parameters
        self.classes: list[str] = []  # sources, each after the classes it uses
        self.helpers: list[str] = []
        self.sites: dict[tuple[str, str], _Site] = {}
        self.built: set[tuple[str, str]] = set()
        # (site key, id(step)) -> the class a step builds, and its constructor's values
        self.instances: dict[tuple[tuple[str, str], int], tuple[str, dict[str, Any]]] = {}
        declared = [
            _Param(k, type(v).__name__, v, True)
            for k, v in graph.arguments.items()
            if isinstance(v, (bool, int, float, str))
        ]
        self.model = _Site(("model", graph.name), graph.name, True, declared, {})
        env = graph.arguments | {name: Poly.symbol(name) for name in graph.symbols}
        self.model.uses.append(_Use(None, graph.graph, env))
        self._collect(graph.graph, env, graph.name, declared)

    def module(self, source: str | None) -> str:
        model = self._build_model()
        values = ", ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={literal(v)}"
            for k, v in self.graph.arguments.items()
        )
        where = f" from {source}" if source is not None else ""
        settings = f" ({values})" if values else ""
        doc = f"Generated by dlspec {__version__}{where}{settings}."
        header = _docstring(doc) + "\n\nimport torch\nfrom torch import nn"
        return "\n\n\n".join([header, *self.helpers, *self.classes, model]) + "\n"

    # the uses of each class ---------------------------------------------------------------

    def _collect(
        self, graph: Graph, env: dict[str, Any], owner: str, declared: list[_Param]
    ) -> None:
        """Record every block use, residual and shortcut below ``graph``, whose definition
        has the parameters ``declared`` with the values ``env``."""
        for step in graph.steps:
            for each in step.children if step.kind == "repeat" else [step]:
                if each.block is not None and each.body is not None:
                    self._collect_block(each, each.body)
                elif each.kind == "residual" and each.body is not None:
                    for key, sub in zip(_keys(each), (each.body, each.shortcut), strict=False):
                        assert sub is not None
                        site = self._site(key, owner + key[0], False, declared, sub)
                        site.uses.append(_Use(each, sub, env | _sizes(sub, site.sizes)))
                        self._collect(sub, env, owner, declared)

    def _collect_block(self, step: Step, body: Graph) -> None:
        assert step.block is not None
        definition = step.block.definition
        declared = []
        for param in definition.params:
            annotation = "int" if param.type.name == "dim" else param.type.name
            default = _constant(param.default)
            declared.append(_Param(param.name.name, annotation, default, default is not None))
        site = self._site(("block", step.block.name), step.block.name, True, declared, body)
        arguments = dict(step.block.arguments)
        site.uses.append(_Use(step, body, arguments | _sizes(body, site.sizes)))
        self._collect(body, arguments, step.block.name, declared)

    def _site(
        self, key: tuple[str, str], base: str, own: bool, declared: list[_Param], body: Graph
    ) -> _Site:
        if key not in self.sites:
            taken = {p.name for p in declared}
            sizes = {}
            if len(body.inputs) == 1:
                shape = body.inputs[0].type.shape
                for dim in range(len(shape)):
                    name = _size_name(dim, len(shape))
                    while name in taken:
                        name += "_"
                    sizes[dim] = name
            self.sites[key] = _Site(key, base, own, declared, sizes)
        return self.sites[key]

    # classes ---------------------------------------------------------------------------------

    def _build_model(self) -> str:
        graph = self.graph.graph
        ctx = _Context(self.model, [u.env for u in self.model.uses], _pool(graph), graph.inputs)
        inputs = {i.name: i.name for i in self.graph.inputs}
        self.checkpointed = {id(s) for s in graph.steps if checkpoint_unit(s)}
        body = self._scope(ctx, [self.graph.graph], inputs)
        if self.checkpointed:
            body.init.append(
                f"{INDENT * 2}self.checkpointing = False  # True: recompute blocks in backward"
            )
            body.methods = RUN_BLOCK
        for leaf in self.graph.leaves():
            for weight, target in leaf.tied.items():  # shared tensors: assign the first one
                body.init += _statement(
                    f"{_attribute(leaf.path)}.{weight} = ", _attribute(target), 2
                )
        return _class_source(self.graph.name, self.model.declared, body)

    def _instance(self, key: tuple[str, str], step: Step) -> tuple[str, dict[str, Any]]:
        """The class ``step`` builds for the site ``key`` and its constructor's values."""
        if key not in self.built:
            self.built.add(key)
            site = self.sites[key]
            groups: dict[Any, list[_Use]] = {}
            for use in site.uses:
                groups.setdefault(self._signature(use), []).append(use)
            for group in groups.values():
                try:
                    self._emit(site, group)
                except _Split:
                    for use in group:
                        self._emit(site, [use])
        return self.instances[(key, id(step))]

    def _emit(self, site: _Site, uses: list[_Use]) -> None:
        """Generate the class serving ``uses`` of ``site``."""
        ctx = _Context(site, [u.env for u in uses], _pool(uses[0].graph), uses[0].graph.inputs)
        graphs = [u.graph for u in uses]
        argument = _argument_name(graphs[0])
        if site.key[0] == "Residual":
            body = self._scope(ctx, graphs, {"input": argument}, returns=False)
            other = argument
            steps = [u.step for u in uses if u.step is not None]
            if steps[0].shortcut is not None:
                call = self._nested_call(("Shortcut", site.key[1]), list(enumerate(steps)), ctx)
                body.init += lay_out(call, 2, "self.shortcut = ")
                other = f"self.shortcut({argument})"
            main = body.variables[graphs[0].outputs[0].name]
            body.forward += _statement("return ", f"{main} + {other}", 2)
        elif [t.name for t in graphs[0].inputs] == ["input"]:
            body = self._scope(ctx, graphs, {"input": argument})
        else:  # a block of named inputs: forward's arguments are their names
            body = self._scope(ctx, graphs, {t.name: t.name for t in graphs[0].inputs})
        params = _signature_of(site, ctx)
        name = self._class(site.base, _class_source("_", params, body), site.own)
        self.signatures[name] = params
        for i, use in enumerate(uses):
            assert use.step is not None
            values = {p.name: ctx.envs[i].get(p.name) for p in params}
            values |= {k: v[i] for k, v in ctx.extra.items()}
            self.instances[(site.key, id(use.step))] = (name, values)

    def _class(self, base: str, source: str, own: bool) -> str:
        """The name of the class with this source, defined on first use: ``base``, or
        ``base2``, ``base3``... when that is taken (``own``: ``base`` is the spec's name)."""
        key = (base, source)
        if key not in self.names:
            used = set(self.names.values())
            self.names[key] = next(
                name
                for name in (base if i == 1 else f"{base}{i}" for i in itertools.count(1))
                if name not in used and (name not in self.reserved or (own and name == base))
            )
            self.classes.append(source.replace("class _(", f"class {self.names[key]}(", 1))
        return self.names[key]

    def _signature(self, use: _Use) -> tuple[Any, ...]:
        """What uses sharing a class body must agree on: the classes and module kinds of its
        steps, and the call templates of their forward."""
        shortcut = use.step.shortcut if use.step is not None else None
        graphs = [use.graph] + ([shortcut] if shortcut is not None else [])
        return tuple(self._step_signature(step) for graph in graphs for step in graph.steps)

    def _step_signature(self, step: Step) -> tuple[Any, ...]:
        if step.kind == "repeat":
            children = frozenset(map(self._step_signature, step.children))
            plain = all(map(self._plain, step.children))
            return ("repeat", children, plain or len(step.children))
        if step.kind in ("block", "residual"):
            return (step.kind, *(self._instance(key, step)[0] for key in _keys(step)))
        call = self.calls[id(step)]
        return ("layer", call.cls, call.forward, call.helper, len(call.args), tuple(call.kwargs))

    # class bodies ------------------------------------------------------------------------------

    def _scope(
        self, ctx: _Context, graphs: list[Graph], params: dict[str, str], returns: bool = True
    ) -> _Body:
        """The class body for one graph in each use (the graphs have the same steps):
        ``params`` maps its input tensors to their variables; ``forward`` returns the graph's
        outputs unless ``returns`` is false (a residual's body, whose caller adds its input:
        it stays readable after the last step)."""
        graph = graphs[0]
        results = [t.name for t in graph.outputs] if returns else []
        variables = _variables(graph, params, results, set() if returns else set(params))
        init: list[str] = []
        forward: list[str] = []
        for i, step in enumerate(graph.steps):
            steps = [g.steps[i] for g in graphs]
            inputs = [variables[t.name] for t in step.inputs]
            built = self._constructor(list(enumerate(steps)), ctx, step.name)
            if built is not None:
                init += lay_out(built, 2, f"self.{step.name} = ")
            target = ", ".join(variables[t.name] for t in step.outputs)
            forward += self._forward(steps, inputs, target, built)
        if results:
            forward += _returns([variables[r] for r in results], 2)
        return _Body(init, list(params.values()), forward, len(results), variables)

    def _constructor(
        self, pairs: list[tuple[int, Step]], ctx: _Context, name: str
    ) -> CallText | None:
        """How ``__init__`` builds a step, given as (use, step) pairs; None for a layer that
        has no module."""
        step = pairs[0][1]
        if step.kind == "repeat":
            return self._repeat_call(pairs, ctx, name)
        if step.kind in ("block", "residual"):
            return self._nested_call(_keys(step)[0], pairs, ctx)
        return self._layer_call(pairs, ctx, name)

    def _layer_call(
        self, pairs: list[tuple[int, Step]], ctx: _Context, name: str
    ) -> CallText | None:
        calls = [(u, self.calls[id(s)]) for u, s in pairs]
        first = calls[0][1]
        if first.cls is None:
            return None
        for part in first.cls.split("."):
            _identifier(part, "module class")
        if first.helper is not None and first.helper.rstrip() not in self.helpers:
            self.helpers.append(first.helper.rstrip())
        step = pairs[0][1]
        derived = self._derived(step)
        depends, unknown = self._dependencies(step, ctx.envs[pairs[0][0]])
        args: list[Argument] = []
        for slot in _slots(first):
            values = [(u, _slots(c)[slot]) for u, c in calls]
            candidates: list[Candidate] = []
            if slot in derived:  # an input size: from the input, or from upstream
                if step.inputs[0].name == "input" and derived[slot] in ctx.site.sizes:
                    candidates.append(ctx.site.sizes[derived[slot]])
                candidates += ctx.upstream(step)
            else:  # from the statement's own arguments
                allowed = depends.get(slot, set()) | unknown
                candidates += [e for e in _spec_arguments(step, slot) if _names(e) <= allowed]
            text = self._resolve(ctx, values, candidates, f"{name}_{slot}")
            key = None if isinstance(slot, int) else _identifier(slot, "argument")
            args.append((key, text))
        return CallText(first.cls, tuple(args))

    def _dependencies(
        self, step: Step, env: dict[str, Any]
    ) -> tuple[dict[Slot, set[str]], set[str]]:
        """Which names of its statement's expressions each constructor argument of a layer
        changes with (found by binding the call again with each one doubled), and the names
        that could not be told apart that way."""
        stmt = step.statement
        if step.layer is None or stmt is None or not isinstance(stmt.op, spec.Call):
            return {}, set()
        base = _slots(self.calls[id(step)])
        types = [t.type for t in step.inputs]
        depends: dict[Slot, set[str]] = {slot: set() for slot in base}
        unknown: set[str] = set()
        names = set().union(*(_names(a.value) for a in stmt.op.args)) & set(env)
        for name in sorted(names):
            value = env[name]
            try:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(name)
                layer, _ = bind_layer(stmt.op, env | {name: value * 2})
                probe = _slots(layer.torch(types))
            except (DiagnosticError, LayerError, ValueError, TypeError):
                unknown.add(name)
                continue
            for slot, v in base.items():
                if probe.get(slot) != v:
                    depends[slot].add(name)
        return depends, unknown

    def _derived(self, step: Step) -> dict[Slot, int]:
        """The constructor arguments of a layer that come from its first input's size:
        slot -> dimension."""
        if step.layer is None or not step.inputs:
            return {}
        types = [t.type for t in step.inputs]
        base = _slots(self.calls[id(step)])
        derived: dict[Slot, int] = {}
        for dim, size in enumerate(types[0].shape):
            if not isinstance(size, int):
                continue
            shape = list(types[0].shape)
            shape[dim] = SENTINEL
            try:
                probe = _slots(step.layer.torch([TensorType(tuple(shape), types[0].dtype)]))
            except (LayerError, ValueError, TypeError):
                continue
            derived.update((slot, dim) for slot, v in base.items() if probe.get(slot) != v)
        return derived

    def _nested_call(
        self, key: tuple[str, str], pairs: list[tuple[int, Step]], ctx: _Context
    ) -> CallText:
        """The constructor call of a block's, residual's or shortcut's class."""
        instances = [(u, self._instance(key, s)) for u, s in pairs]
        names = {name for _, (name, _) in instances}
        if len(names) > 1:
            raise _Split
        name = names.pop()
        step = pairs[0][1]
        args: list[Argument] = []
        for param in self.signatures[name]:
            values = [(u, vals[param.name]) for u, (_, vals) in instances]
            preferred: list[Candidate] = [param.name] if key[0] != "block" else []
            preferred += _block_argument(step, param.name)
            preferred += ctx.upstream(step)
            text = self._resolve(ctx, values, preferred, f"{step.name}_{param.name}")
            if param.has_default and all(_same(v, param.default) for _, v in values):
                continue
            args.append((param.name if param.has_default else None, text))
        return CallText(name, tuple(args))

    def _repeat_call(
        self, pairs: list[tuple[int, Step]], ctx: _Context, name: str
    ) -> CallText | None:
        """``nn.Sequential`` of the copies: a loop where they are built alike."""
        if any(not s.children for _, s in pairs):  # repeated 0 times: an empty Sequential
            if any(s.children for _, s in pairs):
                raise _Split
            return CallText("nn.Sequential", ())
        first = self._constructor([(u, s.children[0]) for u, s in pairs], ctx, name)
        if first is None:
            return None
        step = pairs[0][1]
        counts = [(u, len(s.children)) for u, s in pairs]
        repeat = step.statement.repeat if step.statement is not None else None
        own: list[Candidate] = [repeat] if repeat else []
        count = self._resolve(ctx, counts, [*own, *ctx.upstream(step)], f"{name}_count")
        rest = [(u, c) for u, s in pairs for c in s.children[1:]]
        try:
            others = self._constructor(rest, ctx, name) if rest else first
        except _Split:
            others = None
        if others is not None and others.flat() == first.flat():
            return CallText("nn.Sequential", ((None, Loop(first, count)),))
        if others is not None:
            return CallText(
                "nn.Sequential", ((None, first), (None, Loop(others, _minus_one(count))))
            )
        if len({n for _, n in counts}) > 1:
            raise _Split
        parts = [
            self._constructor([(u, s.children[i]) for u, s in pairs], ctx, name)
            for i in range(counts[0][1])
        ]
        return CallText("nn.Sequential", tuple((None, p) for p in parts if p is not None))

    def _resolve(
        self, ctx: _Context, values: list[tuple[int, Any]], candidates: list[Candidate], new: str
    ) -> str:
        """Source for a constructor argument whose value in use ``u`` is ``v`` for each
        ``(u, v)``: the first of the ``candidates`` giving every value; else the value itself
        when it is one; else a new constructor parameter (named ``new``)."""
        for candidate in candidates:
            names = _names(candidate)
            if not names or not names <= set(ctx.envs[0]):
                continue
            if all(_same(_value(candidate, ctx.envs[u]), v) for u, v in values):
                text = _python(candidate)
                if text is not None:
                    ctx.used |= names
                    return text
        first = values[0][1]
        if all(_same(v, first) for _, v in values):
            return literal(first)
        per_use: dict[int, Any] = {}
        for u, v in values:
            if per_use.setdefault(u, v) != v:
                raise _Split
        if len(per_use) != len(ctx.envs):
            raise _Split
        if new[0].isdigit():  # from a repetition's copy, named 0, 1...
            new = f"copy{new}"
        while new in ctx.envs[0] or new in ctx.extra:
            new += "_"
        ctx.extra[new] = [per_use[u] for u in range(len(ctx.envs))]
        return _identifier(new, "argument")

    # forward ----------------------------------------------------------------------------------

    def _forward(
        self, steps: list[Step], inputs: list[str], target: str, built: CallText | None
    ) -> list[str]:
        """``forward`` statements computing the step into the variable ``target``."""
        node = steps[0]
        module = f"self.{node.name}"
        if id(node) in self.checkpointed:
            if node.kind == "block":
                expr = f"self.run_block({module}, {inputs[0]})"
                return _statement(f"{target} = ", expr, 2, _comment(steps))
            loop = "block" if target != "block" else "block_"
            return [
                f"{INDENT * 2}{target} = {inputs[0]}" if target != inputs[0] else "",
                f"{INDENT * 2}for {loop} in {module}:",
                f"{INDENT * 3}{target} = self.run_block({loop}, {target})",
            ][0 if target != inputs[0] else 1 :]
        if node.kind != "repeat" or (
            built is not None and len(inputs) == 1 and all(map(self._plain, node.children))
        ):
            expr = self._expression(node, module, inputs)
            return _statement(f"{target} = ", expr, 2, _comment(steps))
        threads = len(node.outputs)  # the inputs the outputs replace, from the first
        if not node.children:  # repeated 0 times: those inputs
            return _statement(f"{target} = ", ", ".join(inputs[:threads]), 2)
        lines = []  # unrolled: self.stack[0](a, b), then self.stack[1](x)...
        for i, child in enumerate(node.children):
            expr = self._expression(child, f"{module}[{i}]", inputs)
            lines += _statement(f"{target} = ", expr, 2, _comment([s.children[i] for s in steps]))
            inputs = [*target.split(", "), *inputs[threads:]]  # the others stay
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


# constructor arguments as expressions -----------------------------------------------------

_MISSING = object()
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "//": 2, "/": 2, "%": 2}


def _keys(step: Step) -> list[tuple[str, str]]:
    """The sites of the classes a block or residual step builds (a residual's shortcut too)."""
    if step.block is not None:
        return [("block", step.block.name)]
    span = ".".join(map(str, tuple(step.span)))
    return [("Residual", span)] + ([("Shortcut", span)] if step.shortcut is not None else [])


def _size_name(dim: int, rank: int) -> str:
    """The constructor parameter for an input's size along ``dim``: ``in_channels`` for the
    channels of an image-like tensor, ``in_features`` for the last dimension of the others."""
    if rank >= 3 and dim == 0:
        return "in_channels"
    if rank <= 2 and dim == rank - 1:
        return "in_features"
    return f"in_dim{dim}"


def _sizes(graph: Graph, names: dict[int, str]) -> dict[str, Any]:
    """The value of each input size parameter in a use of a graph."""
    if len(graph.inputs) != 1:
        return {}
    shape = graph.inputs[0].type.shape
    return {names[d]: size for d, size in enumerate(shape) if d in names}


def _constant(expr: spec.Expr | None) -> Any:
    """A default value written as a constant (``3``, ``true``); None otherwise."""
    if expr is None or _names(expr):
        return None
    try:
        value = evaluate(expr, {})
    except DiagnosticError:
        return None
    return value if isinstance(value, (bool, int, float, str)) else None


def _slots(call: TorchCall) -> dict[Slot, Any]:
    slots: dict[Slot, Any] = dict(enumerate(call.args))
    slots.update(call.kwargs)
    return slots


def _spec_arguments(step: Step, slot: Slot) -> list[Candidate]:
    """The expressions of the spec's call most likely to give a constructor argument: for a
    keyword, the argument of that name (``kernel`` for ``kernel_size``) first."""
    stmt = step.statement
    if stmt is None or not isinstance(stmt.op, spec.Call):
        return []
    named = [a for a in stmt.op.args if a.name is not None]
    positional = [a for a in stmt.op.args if a.name is None]
    close = []
    if isinstance(slot, str):
        close = [a for a in named if a.name is not None and a.name.name in slot]
    return [a.value for a in [*close, *positional, *named]]


def _block_argument(step: Step, param: str) -> list[Candidate]:
    """The expression a block call gives for its parameter ``param``."""
    stmt = step.statement
    if step.block is None or stmt is None or not isinstance(stmt.op, spec.Call):
        return []
    order = [p.name.name for p in step.block.definition.params]
    positional = [a for a in stmt.op.args if a.name is None]
    for i, arg in enumerate(positional):
        if i < len(order) and order[i] == param:
            return [arg.value]
    return [a.value for a in stmt.op.args if a.name is not None and a.name.name == param]


def _names(candidate: Candidate) -> set[str]:
    """The names an expression refers to (constants such as ``true`` aside)."""
    if isinstance(candidate, str):
        return {candidate}
    if isinstance(candidate, spec.Ref):
        return set() if candidate.name in CONSTANTS else {candidate.name}
    if isinstance(candidate, spec.BinOp):
        return _names(candidate.left) | _names(candidate.right)
    if isinstance(candidate, spec.Neg):
        return _names(candidate.operand)
    return set()


def _value(candidate: Candidate, env: dict[str, Any]) -> Any:
    if isinstance(candidate, str):
        return env.get(candidate, _MISSING)
    try:
        return evaluate(candidate, env)
    except DiagnosticError:
        return _MISSING


def _same(a: Any, b: Any) -> bool:
    """Equal values of one type (``True`` is not ``1``)."""
    return type(a) is type(b) and a == b


def _python(candidate: Candidate, context: int = 0) -> str | None:
    """A spec expression as Python source (the expression language is a subset of Python's
    arithmetic); None for what is not one."""
    if isinstance(candidate, str):
        return candidate
    if isinstance(candidate, spec.Num | spec.Str):
        return literal(candidate.value)
    if isinstance(candidate, spec.Ref):
        return repr(CONSTANTS[candidate.name]) if candidate.name in CONSTANTS else candidate.name
    if isinstance(candidate, spec.Neg):
        operand = _python(candidate.operand, 3)
        return None if operand is None else f"-{operand}"
    if isinstance(candidate, spec.BinOp):
        precedence = _PRECEDENCE[candidate.op]
        left = _python(candidate.left, precedence)
        right = _python(candidate.right, precedence + 1)
        if left is None or right is None:
            return None
        text = f"{left} {candidate.op} {right}"
        return f"({text})" if precedence < context else text
    return None


def _pool(graph: Graph) -> list[spec.Expr]:
    """The spec's expressions in a body: its calls' arguments and repetition counts."""
    pool: list[spec.Expr] = []
    for step in graph.steps:
        stmt = step.statement
        if stmt is None:
            continue
        if isinstance(stmt.op, spec.Call):
            pool += [a.value for a in stmt.op.args]
        if stmt.repeat is not None:
            pool.append(stmt.repeat)
    return pool


def _minus_one(count: str) -> str:
    return str(int(count) - 1) if count.isdigit() else f"{count} - 1"


def _signature_of(site: _Site, ctx: _Context) -> list[_Param]:
    """A class's constructor parameters: the input sizes it uses, the arguments no
    expression gives, then the declared parameters (all of a block's or the model's; those
    used by a residual or shortcut). A parameter before one without a default has none."""
    sizes = [_Param(name, "int") for name in site.sizes.values() if name in ctx.used]
    extra = [_Param(k, type(v[0]).__name__) for k, v in ctx.extra.items()]
    declared = [p for p in site.declared if site.key[0] in ("block", "model") or p.name in ctx.used]
    params = [*sizes, *extra, *declared]
    required = max((i for i, p in enumerate(params) if not p.has_default), default=-1)
    return [_Param(p.name, p.annotation) if i < required else p for i, p in enumerate(params)]


def _comment(steps: list[Step]) -> str | None:
    """The shape comment of a step, when every use of the class has the same."""
    comments = {_change(step) for step in steps}
    return comments.pop() if len(comments) == 1 else None


def _class_source(name: str, params: list[_Param], body: _Body) -> str:
    returns = "torch.Tensor"
    if body.results > 1:
        returns = f"tuple[{', '.join(['torch.Tensor'] * body.results)}]"
    init = tuple((None, p) for p in ["self", *(p.source() for p in params)])
    tensors = tuple((None, p) for p in ["self", *(f"{p}: torch.Tensor" for p in body.params)])
    lines = [
        f"class {name}(nn.Module):",
        *lay_out(CallText("__init__", init), 1, "def ", " -> None:"),
        f"{INDENT * 2}super().__init__()",
        *body.init,
        "",
        *lay_out(CallText("forward", tensors), 1, "def ", f" -> {returns}:"),
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
    """A statement's shape comment: its output's shape, when that differs from its input's;
    each output's, for a statement with several."""
    output = node.output.type
    if len(node.outputs) > 1:
        shapes = {_shape(t.type) for t in node.outputs}
        if len(shapes) == 1:
            return f"{len(node.outputs)} x {shapes.pop()}"
        return ", ".join(_shape(t.type) for t in node.outputs)
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
        if after >= 0 and len(steps[after].outputs) > 1:  # one of several: keeps its name
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

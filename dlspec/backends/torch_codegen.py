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
import functools
import itertools
import keyword
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from dlspec import __version__
from dlspec.analysis.evaluate import CONSTANTS, evaluate
from dlspec.analysis.graph import Choice, Graph, ModelGraph, Step
from dlspec.analysis.memory import checkpoint_unit
from dlspec.analysis.names import CODE_NAMES
from dlspec.diagnostics import DiagnosticError
from dlspec.layers import provenance
from dlspec.layers.base import TensorType, TorchCall
from dlspec.layers.provenance import Sym, SymFloat
from dlspec.layers.symbolic import fmt_dim
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
    Raises ``ValueError`` for a name Python cannot use (the analyzer refuses those first), and
    :class:`GenerationError` for what the code cannot express for every argument value.
    ``graph`` must be analyzed as a program (:func:`dlspec.analysis.check.program_graph`)."""
    if not graph.program:
        raise ValueError("generate() needs a graph analyzed as a program (program_graph)")
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
    """``*[call for _ in range(count)]``: ``count`` modules built alike, in a Sequential
    (``index`` names the copy where the call reads it)."""

    call: CallText
    count: str
    index: str = "_"

    def flat(self) -> str:
        return f"*[{self.call.flat()} for {self.index} in range({self.count})]"


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
    each = f"{pad}{INDENT}for {loop.index} in range({loop.count})"
    return [f"{pad}*[", *lay_out(loop.call, depth + 1), each, f"{pad}]{suffix}"]


def _statement(prefix: str, expr: str, depth: int, comment: str | None = None) -> list[str]:
    """The statement ``prefix + expr``. The comment trails it when the line has room, else it
    goes on a line of its own above (ruff would split the code to make room for it)."""
    pad = INDENT * depth
    line = pad + prefix + expr
    trailing = f"  # {comment}" if comment else ""
    if len(line + trailing) <= WIDTH:
        return [line + trailing]
    above = [f"{pad}# {comment}"] if comment and len(f"{pad}# {comment}") <= WIDTH else []
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


def _call(expr: str, step: ast.expr) -> str | CallText:
    """The source of ``step`` in ``expr``, as a CallText (with nested calls) where it is one."""
    text = ast.get_source_segment(expr, step) or ""
    if not isinstance(step, ast.Call) or any(k.arg is None for k in step.keywords):
        return text
    parts: list[tuple[int, Argument]] = [(a.col_offset, (None, _call(expr, a))) for a in step.args]
    parts += [(k.col_offset, (k.arg, _call(expr, k.value))) for k in step.keywords]
    args = tuple(arg for _, arg in sorted(parts, key=lambda p: p[0]))
    return CallText(ast.get_source_segment(expr, step.func) or "", args)


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


def _shape(t: TensorType, ctx: _Context) -> str:
    """``(B, C, H // 2, W // 2)``: a tensor's shape with its batch dimension, each size as the
    class computes it."""
    dims = ["B", *(_dim(d, ctx) for d in t.shape)]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _dim(size: Any, ctx: _Context) -> str:
    """A size in a shape comment: its expression in the class's names, else the number or
    symbolic dimension."""
    if isinstance(size, Sym):
        return provenance.python(provenance.simplify(size.local), literal=literal)
    return fmt_dim(size)


def _attribute_source(tree: provenance.Tree, names: set[str]) -> str:
    """An expression as forward's code computes it, from the arguments the constructor kept
    as attributes (``self.heads``); ``names`` collects them."""
    tree = provenance.simplify(tree)
    read = provenance.names(tree)
    names |= read
    kept = provenance.substitute(tree, {n: provenance.name(f"self.{n}") for n in read})
    return provenance.python(kept, literal=literal)


def _attribute(path: str) -> str:
    """``layer1.0.conv`` -> ``self.layer1[0].conv``."""
    return "self" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


# the generator ------------------------------------------------------------------------------

Slot = int | str  # a constructor argument: its position or its keyword


class GenerationError(ValueError):
    """What generated code cannot express for every value of the class's arguments: it is
    refused, never written wrong."""


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
    """One use of a class: the step that uses it (None for the model) and the graph it
    builds."""

    step: Step | None
    graph: Graph


@dataclass
class _Site:
    """What one generated class stands for: the model, a block definition, a residual (or its
    shortcut) as written in the spec; its uses, its ``declared`` parameters (in order, with
    their annotations and defaults) and the names of its inputs' sizes (``in_channels``)."""

    key: tuple[str, str]
    base: str
    own: bool
    declared: list[_Param]
    sizes: list[str] = field(default_factory=list)
    uses: list[_Use] = field(default_factory=list)


@dataclass
class _Context:
    """The class being generated: its site and the names its code reads (``used``)."""

    site: _Site
    used: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)  # arguments forward reads: kept as attributes
    # in a class with `if`s: the uses whose steps are being written, and the flags written so
    # far with their value in each use (id of its walk -> value)
    members: list[_Walk] = field(default_factory=list)
    flags: list[tuple[str, dict[int, bool]]] = field(default_factory=list)

    def source(self, value: Any) -> str:
        """A value as the code computes it: the expression it came from, in the class's
        names (recorded in ``used``), or the literal."""
        if isinstance(value, Sym | SymFloat | _Expression):
            tree = value.tree if isinstance(value, _Expression) else value.local
            self.used |= provenance.names(tree)
            return provenance.python(provenance.simplify(tree), literal=literal)
        if isinstance(value, tuple):
            items = [self.source(v) for v in value]
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        if isinstance(value, list):
            return f"[{', '.join(self.source(v) for v in value)}]"
        return literal(value)

    def same(self, values: list[Any]) -> str:
        """The source of a value that every use of the class computes alike, or that an `if`
        of the class decides (``expanded if self.use_expand else in_channels``); a use that
        computes it otherwise gets a class of its own."""
        texts = [self.source(v) for v in values]
        if len(set(texts)) == 1:
            return texts[0]
        if len(texts) == len(self.members):
            for flag, value_in in reversed(self.flags):
                sides: dict[bool, set[str]] = {True: set(), False: set()}
                for walk, text in zip(self.members, texts, strict=True):
                    if id(walk) in value_in:
                        sides[value_in[id(walk)]].add(text)
                decided = all(id(w) in value_in for w in self.members)
                if decided and all(len(side) == 1 for side in sides.values()):
                    return f"{sides[True].pop()} if {flag} else {sides[False].pop()}"
        raise _Split


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
        self.calls: dict[int, TorchCall] = {}
        self.kept: dict[int, set[str]] = {}  # the class's arguments each layer's forward reads
        for leaf in _leaves(graph):
            if leaf.layer is not None:
                names: set[str] = set()
                with provenance.printing(functools.partial(_attribute_source, names=names)):
                    self.calls[id(leaf)] = leaf.layer.torch([t.type for t in leaf.inputs])
                self.kept[id(leaf)] = names
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
        self.branching: set[tuple[str, str]] = set()  # sites whose code has `if` statements
        self.instances: dict[tuple[tuple[str, str], int], str] = {}  # (site, id(step)) -> class
        declared = [
            _Param(k, type(v).__name__, v, True)
            for k, v in graph.arguments.items()
            if isinstance(v, (bool, int, float, str))
        ]
        self.model = _Site(("model", graph.name), graph.name, True, declared)
        self.model.uses.append(_Use(None, graph.body))
        self._collect(graph.body, graph.name, declared)

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

    def _collect(self, graph: Graph, owner: str, declared: list[_Param]) -> None:
        """Record every block use, residual and shortcut below ``graph``, whose definition
        has the parameters ``declared``."""
        for step in graph.steps:
            index = _loop_index(step)
            # a residual in an indexed loop reads the index as one of its class's arguments
            inner = declared if index is None else [*declared, _Param(index, "int")]
            for each in _copies(step) if step.form == "repeat" else [step]:
                if each.block is not None and each.body is not None:
                    self._collect_block(each, each.body)
                elif each.form == "residual" and each.body is not None:
                    for key, sub in zip(_keys(each), (each.body, each.shortcut), strict=False):
                        assert sub is not None
                        self._site(key, owner + key[0], False, inner, each)
                        self.sites[key].uses.append(_Use(each, sub))
                        self._collect(sub, owner, inner)

    def _collect_block(self, step: Step, body: Graph) -> None:
        assert step.block is not None
        definition = step.block.definition
        declared = []
        for param in definition.params:
            annotation = "int" if param.type.name == "dim" else param.type.name
            default = _constant(param.default)
            declared.append(_Param(param.name.name, annotation, default, default is not None))
        key = ("block", step.block.name)
        self._site(key, step.block.name, True, declared, step)
        self.sites[key].uses.append(_Use(step, body))
        self._collect(body, step.block.name, declared)

    def _site(
        self, key: tuple[str, str], base: str, own: bool, declared: list[_Param], step: Step
    ) -> None:
        site = self.sites.setdefault(key, _Site(key, base, own, declared))
        site.sizes += [name for name in step.sizes if name not in site.sizes]

    # classes ---------------------------------------------------------------------------------

    def _build_model(self) -> str:
        graph = self.graph.body
        _refuse_choices(graph)
        ctx = _Context(self.model)
        inputs = {i.name: i.name for i in self.graph.inputs}
        self.checkpointed = {id(s) for s in graph.steps if checkpoint_unit(s)}
        body = self._scope(ctx, [self.graph.body], inputs)
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

    def _instance(self, key: tuple[str, str], step: Step) -> str:
        """The class ``step`` builds for the site ``key``."""
        if key not in self.built:
            self.built.add(key)
            site = self.sites[key]
            if _needs_branches(site.uses):
                self.branching.add(key)
            groups: dict[Any, list[_Use]] = {}
            for use in site.uses:
                groups.setdefault(self._signature(use, key in self.branching), []).append(use)
            for group in groups.values():
                try:
                    self._emit(site, group)
                except _Split:
                    for use in group:
                        self._emit(site, [use])
        return self.instances[(key, id(step))]

    def _emit(self, site: _Site, uses: list[_Use]) -> None:
        """Generate the class serving ``uses`` of ``site``."""
        ctx = _Context(site)
        graphs = [u.graph for u in uses]
        argument = _argument_name(graphs[0])
        residual = site.key[0] == "Residual"
        params = {t.name: t.name for t in graphs[0].inputs}  # named inputs keep their names
        if [t.name for t in graphs[0].inputs] == ["input"]:
            params = {"input": argument}
        if site.key in self.branching:  # `if`s that the class's arguments decide
            body = self._branching(ctx, uses, params, returns=not residual)
        else:
            body = self._scope(ctx, graphs, params, returns=not residual)
        if residual:
            other = argument
            steps = [u.step for u in uses if u.step is not None]
            if steps[0].shortcut is not None:
                call = self._nested_call(("Shortcut", site.key[1]), steps, ctx)
                body.init += lay_out(call, 2, "self.shortcut = ")
                other = f"self.shortcut({argument})"
            main = body.variables[graphs[0].outputs[0].name]
            body.forward += _statement("return ", f"{main} + {other}", 2)
        signature = _signature_of(site, ctx)
        name = self._class(site.base, _class_source("_", signature, body), site.own)
        self.signatures[name] = signature
        for use in uses:
            assert use.step is not None
            self.instances[(site.key, id(use.step))] = name

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

    def _signature(self, use: _Use, branching: bool) -> tuple[Any, ...]:
        """What uses sharing a class body must agree on: the classes and module kinds of its
        steps, and the call templates of their forward (``branching``: but for the steps of
        `if` branches the code will have)."""
        shortcut = use.step.shortcut if use.step is not None else None
        graphs = [use.graph] + ([shortcut] if shortcut is not None else [])
        dynamic = _dynamic(use.graph) if branching else []
        inside = {id(s) for c in dynamic for s in _statements_in([c.statement])}
        return tuple(
            self._step_signature(step)
            for graph in graphs
            for step in graph.steps
            if id(step.statement) not in inside
        )

    def _step_signature(self, step: Step) -> tuple[Any, ...]:
        if step.form == "repeat":
            if _counted(step):  # however many copies a use has, one loop builds them
                return ("repeat", step.span)
            children = frozenset(map(self._step_signature, step.children))
            plain = all(map(self._plain, step.children))
            return ("repeat", children, plain or len(step.children))
        if step.form in ("block", "residual"):
            return (step.form, *(self._instance(key, step) for key in _keys(step)))
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
            built = self._constructor(steps, ctx, step.name)
            if built is not None:
                init += lay_out(built, 2, f"self.{step.name} = ")
            target = ", ".join(variables[t.name] for t in step.outputs)
            forward += self._forward(steps, inputs, target, built, ctx)
        if results:
            forward += _returns([variables[r] for r in results], 2)
        return _body(ctx, init, params, forward, len(results), variables)

    def _branching(
        self, ctx: _Context, uses: list[_Use], params: dict[str, str], returns: bool
    ) -> _Body:
        """The class body for uses whose `if` statements the class's arguments decide: the
        code has the `if` (its condition kept as an attribute by ``__init__``), each branch
        built from the uses that took it. Every tensor's variable is its name."""
        step = uses[0].step
        assert step is not None
        walks = [_Walk.of(u.graph, params) for u in uses]
        init, forward = self._lines(ctx, _body_statements(ctx.site, step), walks, 2)
        graph = uses[0].graph
        declared = any(isinstance(s, spec.OutputDecl) for s in _body_statements(ctx.site, step))
        results = _agree(
            [
                [w.variables[t.name] for t in u.graph.outputs] if declared else [w.current]
                for w, u in zip(walks, uses, strict=True)
            ]
        )
        if returns:
            forward += _returns(results, 2)
        variables = walks[0].variables | {graph.outputs[0].name: results[0]}
        return _body(ctx, init, params, forward, len(results) if returns else 0, variables)

    def _lines(
        self, ctx: _Context, statements: list[spec.Statement], walks: list[_Walk], depth: int
    ) -> tuple[list[str], list[str]]:
        """``__init__``'s and ``forward``'s lines for ``statements``, as the uses ``walks``
        analyzed them (each use its own walk), at ``depth`` indents."""
        init: list[str] = []
        forward: list[str] = []
        for stmt in statements:
            ctx.members = walks
            if isinstance(stmt, spec.LayerStmt):
                steps = [w.steps.get(id(stmt)) for w in walks]
                found = [s for s in steps if s is not None]
                if len(found) < len(steps) or len({s.name for s in found}) > 1:
                    raise _Split
                step = found[0]
                inputs = _agree(  # a statement without `<-` reads the current tensor
                    [
                        [w.variables[t.name] for t in s.inputs] if stmt.sources else [w.current]
                        for w, s in zip(walks, found, strict=True)
                    ]
                )
                built = self._constructor(found, ctx, step.name)
                if built is not None:
                    init += lay_out(built, depth, f"self.{step.name} = ")
                target = ", ".join(t.name for t in step.outputs)
                forward += self._forward(found, inputs, target, built, ctx, depth)
                for w, s in zip(walks, found, strict=True):
                    w.variables.update((t.name, t.name) for t in s.outputs)
                    w.current = s.outputs[0].name
            elif isinstance(stmt, spec.IfStmt):
                more = self._if(ctx, stmt, walks, depth)
                init += more[0]
                forward += more[1]
        return init, forward

    def _if(
        self, ctx: _Context, stmt: spec.IfStmt, walks: list[_Walk], depth: int
    ) -> tuple[list[str], list[str]]:
        """An `if` of the spec: inline where it is decided alike in every use of the class,
        else an `if` in the code, on a flag ``__init__`` keeps (``self.use_skip``)."""
        choices = [w.choices.get(id(stmt)) for w in walks]
        decided = [c for c in choices if c is not None]
        if len(decided) < len(choices):
            raise _Split
        outcomes = {c.taken for c in decided}
        fixed = not any(provenance.names(c.root) for c in decided)
        if not provenance.names(decided[0].local) or (len(outcomes) == 1 and fixed):
            # decided alike in every use, whatever the model's arguments: the branch inline
            chosen = stmt.body if decided[0].taken else stmt.orelse
            return self._lines(ctx, chosen, walks, depth)
        condition = ctx.same([_Expression(c.local) for c in decided])
        branches = []
        for taken, statements in ((True, stmt.body), (False, stmt.orelse)):
            members = [w for w, c in zip(walks, decided, strict=True) if c.taken == taken]
            if not members and _statements_in(statements):
                which = "first" if taken else "second"
                raise GenerationError(
                    f"{ctx.site.base}: no use takes the {which} branch of the `if` at line "
                    f"{stmt.span.line}, so its code cannot be derived"
                )
            lines = self._lines(ctx, statements, members, depth + 1) if members else ([], [])
            branches.append((members, *lines))
        # the tensor each branch leaves current is one variable after the `if`: the
        # variable of the first branch that computes something
        merged = next(
            (_agree([w.current for w in members]) for members, _, lines in branches if lines),
            None,
        )
        # the flag is named after the branch's first statement the spec names (`use_skip`),
        # the first branch's first statement else; the `if` tests it
        named = _first_name(stmt.body, walks, True)
        reverse = False
        if named is None and (other := _first_name(stmt.orelse, walks, True)) is not None:
            named, reverse = other, True
            branches.reverse()
            condition = ctx.same([_Expression(_negation(c.local)) for c in decided])
        flag = f"use_{named or _first_name(stmt.body, walks) or _first_name(stmt.orelse, walks)}"
        ctx.flags.append(
            (
                f"self.{flag}",
                {id(w): c.taken != reverse for w, c in zip(walks, decided, strict=True)},
            )
        )
        parts: list[tuple[list[str], list[str]]] = []
        for members, branch_init, branch_forward in branches:
            if merged is not None and members:
                leaves = _agree([w.current for w in members])
                if leaves != merged:
                    assign = f"{INDENT * (depth + 1)}{merged} = {leaves}"
                    branch_forward = [*branch_forward, assign]
                for w in members:
                    w.current = merged
            parts.append((branch_init, branch_forward))
        init = [f"{INDENT * depth}self.{flag} = {condition}"]
        init += _if_block(f"self.{flag}", parts[0][0], parts[1][0], depth)
        if parts[0][1] == parts[1][1]:  # both branches compute alike (`act = self.act(x)`)
            return init, [line.removeprefix(INDENT) for line in parts[0][1]]
        return init, _if_block(f"self.{flag}", parts[0][1], parts[1][1], depth)

    def _constructor(self, steps: list[Step], ctx: _Context, name: str) -> CallText | None:
        """How ``__init__`` builds a step, given in each use; None for a layer that has no
        module."""
        step = steps[0]
        if step.form == "repeat":
            return self._repeat_call(steps, ctx, name)
        if step.form in ("block", "residual"):
            return self._nested_call(_keys(step)[0], steps, ctx)
        return self._layer_call(steps, ctx, name)

    def _layer_call(self, steps: list[Step], ctx: _Context, name: str) -> CallText | None:
        calls = [self.calls[id(s)] for s in steps]
        first = calls[0]
        if first.cls is None:
            return None
        for part in first.cls.split("."):
            _identifier(part, "module class")
        if steps[0].unexpressed:
            raise GenerationError(
                f"{name}: generated code cannot compute {', '.join(steps[0].unexpressed)} "
                "from the arguments of its class (a true/false or text parameter, or a value "
                "the layer kind rewrites): write the value in the spec"
            )
        if first.helper is not None and first.helper.rstrip() not in self.helpers:
            self.helpers.append(first.helper.rstrip())
        args: list[Argument] = []
        for slot in _slots(first):
            text = ctx.same([_slots(c)[slot] for c in calls])
            key = None if isinstance(slot, int) else _identifier(slot, "argument")
            args.append((key, text))
        return CallText(first.cls, tuple(args))

    def _nested_call(self, key: tuple[str, str], steps: list[Step], ctx: _Context) -> CallText:
        """The constructor call of a block's, residual's or shortcut's class."""
        names = {self._instance(key, s) for s in steps}
        if len(names) > 1:
            raise _Split
        name = names.pop()
        args: list[Argument] = []
        for param in self.signatures[name]:
            text = ctx.same([_argument(s, param.name) for s in steps])
            if param.has_default and text == literal(param.default):
                continue
            args.append((param.name if param.has_default else None, text))
        return CallText(name, tuple(args))

    def _repeat_call(self, steps: list[Step], ctx: _Context, name: str) -> CallText | None:
        """``nn.Sequential`` of the copies: a loop where they are built alike (``i == 0``
        telling the first apart where only it differs), as many times as the spec's count
        says; the copies one by one where the count is fixed and they differ. An indexed
        repetition (``for i in range(n)``) is a loop over its index, whose copies are built
        alike as functions of it."""
        count = ctx.same([s.count for s in steps])
        index = _loop_index(steps[0])
        counted = _counted(steps[0]) or index is not None
        built = [s for s in steps if s.children]
        if not built and not counted:  # repeated 0 times, whatever the arguments
            return CallText("nn.Sequential", ())
        if len(built) < len(steps) and not counted:
            raise _Split
        copies = [s.children[0] for s in built] or [s.template for s in steps if s.template]
        if not copies:
            raise GenerationError(f"{name}: the copies of this repetition could not be analyzed")
        first = self._constructor(copies, ctx, name)
        if first is None:
            return None
        later = [c for s in built for c in s.children[1:]]
        try:
            others = self._constructor(later, ctx, name) if later else None
        except _Split:
            if counted:
                over = "its index" if index is not None else "its count"
                raise GenerationError(
                    f"{name}: the copies of this repetition differ in more than their first, "
                    f"so no loop over {over} builds them"
                ) from None
            parts = [
                self._constructor([s.children[i] for s in built], ctx, name)
                for i in range(len(built[0].children))
            ]
            return CallText("nn.Sequential", tuple((None, p) for p in parts if p is not None))
        if others is None:
            if not counted:  # one copy
                return CallText("nn.Sequential", ((None, first),))
            if not _keeps_types(built[0] if built else steps[0], copies[0]):
                raise GenerationError(
                    f"{name}: its copies after the first would read other sizes than the "
                    "first, and no use repeats it twice to show how they are built"
                )
            others = first
        if others.flat() == first.flat():
            return CallText("nn.Sequential", ((None, Loop(first, count, index or "_")),))
        if not counted:
            return CallText(
                "nn.Sequential", ((None, first), (None, Loop(others, _minus_one(count))))
            )
        index = index or "i"
        merged = _first_or_others(first, others, index)
        if merged is None:
            raise GenerationError(
                f"{name}: its first copy is another class than the others, so no loop over "
                "its count builds them"
            )
        return CallText("nn.Sequential", ((None, Loop(merged, count, index)),))

    # forward ----------------------------------------------------------------------------------

    def _forward(
        self,
        steps: list[Step],
        inputs: list[str],
        target: str,
        built: CallText | None,
        ctx: _Context,
        depth: int = 2,
    ) -> list[str]:
        """``forward`` statements computing the step into the variable ``target``, indented
        ``depth`` levels."""
        step = steps[0]
        module = f"self.{step.name}"
        comment = _comment(steps, ctx)
        if id(step) in self.checkpointed:
            if step.form == "block":
                expr = f"self.run_block({module}, {inputs[0]})"
                return _statement(f"{target} = ", expr, depth, comment)
            loop = "block" if target != "block" else "block_"
            return [
                f"{INDENT * depth}{target} = {inputs[0]}" if target != inputs[0] else "",
                f"{INDENT * depth}for {loop} in {module}:",
                f"{INDENT * (depth + 1)}{target} = self.run_block({loop}, {target})",
            ][0 if target != inputs[0] else 1 :]
        if step.form != "repeat" or (
            built is not None and len(inputs) == 1 and all(map(self._plain, step.children))
        ):
            expr = self._expression(step, module, inputs, ctx)
            return _statement(f"{target} = ", expr, depth, comment)
        threads = len(step.outputs)  # the inputs the outputs replace, from the first
        if not step.children and not _counted(step):  # repeated 0 times: those inputs
            return _statement(f"{target} = ", ", ".join(inputs[:threads]), depth)
        if _counted(step):  # a loop over the copies, however many the arguments make
            loop = next(n for n in ("layer", "block", "copy", "each") if n not in inputs)
            lines = (
                []
                if target == ", ".join(inputs[:threads])
                else [f"{INDENT * depth}{target} = {', '.join(inputs[:threads])}"]
            )
            reads = [*target.split(", "), *inputs[threads:]]
            expr = self._expression(_copies(step)[0], loop, reads, ctx)
            return [
                *lines,
                f"{INDENT * depth}for {loop} in {module}:",
                *_statement(f"{target} = ", expr, depth + 1),
            ]
        lines = []  # unrolled: self.stack[0](a, b), then self.stack[1](x)...
        for i, child in enumerate(step.children):
            expr = self._expression(child, f"{module}[{i}]", inputs, ctx)
            copy_comment = _comment([s.children[i] for s in steps], ctx)
            lines += _statement(f"{target} = ", expr, depth, copy_comment)
            inputs = [*target.split(", "), *inputs[threads:]]  # the others stay
        return lines

    def _plain(self, step: Step) -> bool:
        """Whether the step's module is called as ``module(x)`` (as nn.Sequential calls it)."""
        return step.layer is None or self.calls[id(step)].forward == PLAIN_CALL

    def _expression(self, step: Step, module: str, inputs: list[str], ctx: _Context) -> str:
        if step.layer is None:  # a block, residual or repetition: a module of its inputs
            return f"{module}({', '.join(inputs)})"
        numbered = {f"x{i}": v for i, v in enumerate(inputs)}
        ctx.kept |= self.kept[id(step)]
        template = self.calls[id(step)].forward
        return template.format(module=module, x=inputs[0], inputs=", ".join(inputs), **numbered)


# what a class's code reads ------------------------------------------------------------------


def _keys(step: Step) -> list[tuple[str, str]]:
    """The sites of the classes a block or residual step builds (a residual's shortcut too)."""
    if step.block is not None:
        return [("block", step.block.name)]
    span = ".".join(map(str, tuple(step.span)))
    return [("Residual", span)] + ([("Shortcut", span)] if step.shortcut is not None else [])


def _argument(step: Step, param: str) -> Any:
    """The value a block's, residual's or shortcut's class is given for ``param`` by
    ``step``, in the caller's names: an input's size, a block's argument, or (a residual's
    class) the caller's own parameter of that name."""
    if param in step.sizes:
        return step.sizes[param]
    if step.block is not None:
        value = step.block.arguments[param]
        if param in step.block.local:  # a true/false or text argument: its expression
            return _Expression(step.block.local[param])
        return value
    return _Expression(provenance.name(param))


@dataclass(frozen=True)
class _Expression:
    """A value known only by its expression (a bool's or a string's)."""

    tree: provenance.Tree


def _copies(step: Step) -> list[Step]:
    """A repetition's copies, or the copy it would make where it makes none."""
    return step.children or ([step.template] if step.template is not None else [])


def _leaves(graph: ModelGraph) -> list[Step]:
    """The model's layers, with those of the copies repetitions of no copy would make."""
    out: list[Step] = []
    work = list(graph.steps)
    while work:
        step = work.pop()
        if step.form == "layer":
            out.append(step)
        work += [s for g in (step.body, step.shortcut) if g is not None for s in g.steps]
        if step.form == "repeat" and not step.children and step.template is not None:
            work.append(step.template)
    return out


def _keeps_types(step: Step, copy: Step) -> bool:
    """A repetition whose copy gives the types it reads: the copies after it are alike."""
    assert step.body is not None
    outputs = [t.type for t in copy.outputs]
    return outputs == [t.type for t in step.body.inputs][: len(outputs)]


def _first_or_others(first: CallText, others: CallText, index: str) -> CallText | None:
    """One call building copy ``index`` of a repetition whose first copy takes other arguments
    (``Block(c_in if i == 0 else c, c)``); None when they call different classes."""
    if first.func != others.func or [k for k, _ in first.args] != [k for k, _ in others.args]:
        return None
    args: list[Argument] = []
    for (key, a), (_, b) in zip(first.args, others.args, strict=True):
        if not isinstance(a, str) or not isinstance(b, str):
            return None
        args.append((key, a if a == b else f"{a} if {index} == 0 else {b}"))
    return CallText(first.func, tuple(args))


def _loop_index(step: Step) -> str | None:
    """The index of a repetition written ``for i in range(n)``; None for ``* n`` and other
    steps."""
    if step.form == "repeat" and step.statement is not None:
        loop = step.statement.repeat
        if isinstance(loop, spec.Loop):
            return loop.index.name
    return None


def _counted(step: Step) -> bool:
    """A repetition whose count the class's arguments give."""
    return isinstance(step.count, Sym) and bool(provenance.names(step.count.local))


@dataclass
class _Walk:
    """One use's analysis, read statement by statement: its steps and `if` choices by the
    statement they come from, the variable of each tensor, and the current tensor."""

    steps: dict[int, Step]
    choices: dict[int, Choice]
    variables: dict[str, str]
    current: str  # the variable holding what a statement without `<-` reads

    @classmethod
    def of(cls, graph: Graph, params: dict[str, str]) -> _Walk:
        steps = {id(s.statement): s for s in graph.steps if s.statement is not None}
        choices = {id(c.statement): c for c in graph.choices}
        return cls(steps, choices, dict(params), params[graph.inputs[0].name])


def _needs_branches(uses: list[_Use]) -> bool:
    """Whether the code of a class needs an `if`: one that the model's arguments decide, or
    that its uses decide both ways."""
    outcomes: dict[int, set[bool]] = {}
    for use in uses:
        for choice in _dynamic(use.graph):
            if provenance.names(choice.root):
                return True
            outcomes.setdefault(id(choice.statement), set()).add(choice.taken)
    return any(len(taken) > 1 for taken in outcomes.values())


def _dynamic(graph: Graph) -> list[Choice]:
    """The `if` statements of a body whose condition reads the class's arguments."""
    return [c for c in graph.choices if provenance.names(c.local)]


def _statements_in(statements: list[spec.Statement]) -> list[spec.LayerStmt]:
    """The layer statements among ``statements``, in `if` branches too."""
    out: list[spec.LayerStmt] = []
    for stmt in statements:
        if isinstance(stmt, spec.LayerStmt):
            out.append(stmt)
        elif isinstance(stmt, spec.IfStmt):
            out += _statements_in(stmt.body) + _statements_in(stmt.orelse)
    return out


def _first_name(
    statements: list[spec.Statement], walks: list[_Walk], named: bool = False
) -> str | None:
    """The name of the first step a use made of ``statements`` (``named``: of a statement
    that names its output)."""
    for stmt in _statements_in(statements):
        if named and not stmt.names:
            continue
        for w in walks:
            if id(stmt) in w.steps:
                return w.steps[id(stmt)].name
    return None


def _body_statements(site: _Site, step: Step) -> list[spec.Statement]:
    """The statements a class is generated from: its block's body, or a residual's branch."""
    if step.block is not None:
        return step.block.definition.body
    assert step.statement is not None and isinstance(step.statement.op, spec.Residual)
    if site.key[0] == "Shortcut":
        return step.statement.op.shortcut or []
    return step.statement.op.body


_OPPOSITE = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}


def _negation(tree: provenance.Tree) -> provenance.Tree:
    """``not tree``, a comparison turned around (``a == b`` -> ``a != b``)."""
    if tree[0] in _OPPOSITE:
        return (_OPPOSITE[tree[0]], tree[1], tree[2])
    if tree[0] == "not":
        return tree[1]
    return ("not", tree)


def _agree(values: list[Any]) -> Any:
    """The value every use gives; a use that gives another gets a class of its own."""
    if any(v != values[0] for v in values):
        raise _Split
    return values[0]


def _if_block(condition: str, then: list[str], otherwise: list[str], depth: int) -> list[str]:
    pad = INDENT * depth
    if then:
        rest = [f"{pad}else:", *otherwise] if otherwise else []
        return [f"{pad}if {condition}:", *then, *rest]
    return [f"{pad}if not {condition}:", *otherwise] if otherwise else []


def _body(
    ctx: _Context,
    init: list[str],
    params: dict[str, str],
    forward: list[str],
    results: int,
    variables: dict[str, str],
) -> _Body:
    """A class body, ``__init__`` first keeping the arguments forward reads (``self.heads``)."""
    ctx.used |= ctx.kept
    assigned = {line.strip().split(" = ")[0] for line in init}
    for name in sorted(ctx.kept):
        if f"self.{name}" in assigned:
            raise GenerationError(
                f"{name} names both an argument that forward reads and a statement"
            )
    kept = [f"{INDENT * 2}self.{name} = {name}" for name in sorted(ctx.kept)]
    return _Body(kept + init, list(params.values()), forward, results, variables)


def _refuse_choices(graph: Graph) -> None:
    """An `if` whose choice changes with the model's arguments cannot be a class per branch."""
    for choice in graph.choices:
        depends = provenance.names(choice.root)
        if depends:
            line = choice.statement.span.line
            raise GenerationError(
                f"the `if` at line {line} chooses by the model's parameter"
                f"{'s' if len(depends) > 1 else ''} {', '.join(sorted(depends))}: generated "
                "code cannot branch on it yet; build with --set to fix its value"
            )


def _constant(expr: spec.Expr | None) -> Any:
    """A default value written as a constant (``3``, ``true``); None otherwise."""
    if expr is None:
        return None
    try:
        value = evaluate(expr, CONSTANTS)
    except DiagnosticError:
        return None
    return value if isinstance(value, (bool, int, float, str)) else None


def _slots(call: TorchCall) -> dict[Slot, Any]:
    slots: dict[Slot, Any] = dict(enumerate(call.args))
    slots.update(call.kwargs)
    return slots


def _minus_one(count: str) -> str:
    return str(int(count) - 1) if count.isdigit() else f"{count} - 1"


def _signature_of(site: _Site, ctx: _Context) -> list[_Param]:
    """A class's constructor parameters: the input sizes it uses, then the declared
    parameters (all of a block's or the model's; those used by a residual or shortcut). A
    parameter before one without a default has none."""
    sizes = [_Param(name, "int") for name in site.sizes if name in ctx.used]
    declared = [p for p in site.declared if site.key[0] in ("block", "model") or p.name in ctx.used]
    params = [*sizes, *declared]
    required = max((i for i, p in enumerate(params) if not p.has_default), default=-1)
    return [_Param(p.name, p.annotation) if i < required else p for i, p in enumerate(params)]


def _comment(steps: list[Step], ctx: _Context) -> str | None:
    """The shape comment of a step, in the class's names, when every use has the same."""
    comments = {_change(step, ctx) for step in steps}
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


def _change(step: Step, ctx: _Context) -> str | None:
    """A statement's shape comment: its output's shape, when that differs from its input's;
    each output's, for a statement with several."""
    output = step.output.type
    if len(step.outputs) > 1:
        shapes = {_shape(t.type, ctx) for t in step.outputs}
        if len(shapes) == 1:
            return f"{len(step.outputs)} x {shapes.pop()}"
        return ", ".join(_shape(t.type, ctx) for t in step.outputs)
    changed = step.inputs and _shape(output, ctx) != _shape(step.inputs[0].type, ctx)
    return _shape(output, ctx) if changed else None


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

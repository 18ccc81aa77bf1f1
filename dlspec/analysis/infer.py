"""The analyzer: syntax tree -> :class:`ModelGraph`, with every diagnostic collected.

Each statement is analyzed on its own: a mistake becomes a diagnostic and the analyzer moves
on (later statements whose input is unknown are still checked for names and arguments).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import field
from typing import Any

from dlspec.analysis import memory
from dlspec.analysis.binding import ArgumentErrors, bind_layer, match_arguments
from dlspec.analysis.evaluate import CONSTANTS, did_you_mean, evaluate, expect_int, trees, truth
from dlspec.analysis.graph import BlockUse, Choice, Copies, Graph, ModelGraph, Step, Tensor
from dlspec.analysis.limits import LayerBudget
from dlspec.analysis.names import CODE_NAMES, GENERATED, RESERVED
from dlspec.analysis.render import human_bytes
from dlspec.analysis.train_config import read_train
from dlspec.diagnostics import Diagnostic, DiagnosticError, Span, fail, n
from dlspec.layers import REGISTRY, LayerError, TensorType, provenance
from dlspec.layers.base import Shape, numel
from dlspec.layers.provenance import Tree
from dlspec.layers.registry import RETIRED
from dlspec.layers.symbolic import Dim, Poly, fmt_dim, value_at
from dlspec.structs import Struct
from dlspec.syntax import ast

PARAM_TYPES = ("int", "float", "bool", "str", "dim")
DTYPES = {"float": "float", "long": "long", "int": "long"}
LAYER_QUANTITIES = ("params", "buffers", "macs", "shape")
TOTAL_NOUNS = {
    "params": "parameters",
    "trainable_params": "trainable parameters",
    "buffers": "buffer elements",
    "macs": "MACs per sample",
    "train_memory": "bytes to train",
}
TOTAL_QUANTITIES = tuple(TOTAL_NOUNS)


def check_name(ident: ast.Ident, what: str) -> None:
    """Names become Python identifiers in generated code: refuse keywords, dunders, and the
    attributes every ``nn.Module`` already has."""
    name = ident.name
    if keyword.iskeyword(name) or name in CODE_NAMES:
        raise fail("E207", f"{what} name {name!r} is a Python keyword or reserved", ident.span)
    if name.startswith("__") or name in RESERVED or name in GENERATED:
        raise fail(
            "E207",
            f"{what} name {name!r} would shadow an nn.Module attribute or special name",
            ident.span,
            ["choose another name, e.g. " + name.strip("_") + "_layer"],
        )


def convert_param(value: Any, type_name: str) -> Any:
    """A model/block parameter value checked against its declared type (raises ValueError)."""
    if type_name in ("int", "dim"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        if type_name == "dim" and value < 1:
            raise ValueError(f"a dimension must be >= 1, got {value}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return provenance.as_float(value)
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_override(text: str) -> Any:
    """A ``--set`` value: int (``43``, ``10K``), float, true/false, or a plain string."""
    from dlspec.syntax.parser import parse_number

    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return parse_number(text.strip())
    except ValueError:
        return text


class Values(Mapping[str, Any]):
    """What expressions in a scope can name: its parameters, then its tensors (as their types,
    for ``x.shape[i]``). A view, not a copy: a scope may hold thousands of tensors."""

    def __init__(
        self,
        env: dict[str, Any],
        tensors: dict[str, TensorType | None],
        indexes: Mapping[str, Span] | None = None,
        looping: Sequence[str] = (),
    ) -> None:
        self.env, self.tensors = env, tensors
        # the loop indexes of the body's repetitions (where each is declared): read outside
        # its statement, one is named as what it is; and those of the copies being analyzed
        self.indexes, self.looping = indexes or {}, looping

    def __getitem__(self, key: str) -> Any:
        if key in self.env:
            return self.env[key]
        value = self.tensors[key]
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.env or self.tensors.get(key) is not None  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[str]:
        yield from self.env
        yield from (k for k, v in self.tensors.items() if v is not None and k not in self.env)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Scope(Struct, frozen=False):
    """Tensors visible to the statements of one body (a model, a block, a residual branch)."""

    path: str
    env: dict[str, Any]
    inputs: list[Tensor] = field(default_factory=list)
    tensors: dict[str, TensorType | None] = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    current: str | None = None  # the tensor a statement without `<-` consumes
    # the last statement when it wrote several tensors: a statement without `<-` would not
    # know which to read
    several: Step | None = None
    outputs: list[ast.Ident] | None = None  # what its `output` declares (a model or a block)
    declares: bool = False  # a model's or block's body, which may declare its outputs
    # the expressions (local, root) of parameters whose values cannot carry them (bools,
    # strings: :mod:`provenance`), and the conditions the body's `if` statements chose by
    named: dict[str, tuple[Tree, Tree]] = field(default_factory=dict)
    choices: list[Choice] = field(default_factory=list)
    # the loop indexes its repetitions declare (``for i in range(n)``), and the names its
    # `let` statements bound (each a value of ``env``)
    indexes: dict[str, Span] = field(default_factory=dict)
    looping: list[str] = field(default_factory=list)
    lets: set[str] = field(default_factory=set)

    def values(self) -> Values:
        """The names expressions here can read."""
        return Values(self.env, self.tensors, self.indexes, self.looping)

    def generated_name(self, base: str) -> str:
        base = base.lower()
        while True:
            self.counters[base] = self.counters.get(base, 0) + 1
            candidate = f"{base}{self.counters[base]}"
            if candidate not in self.names:
                self.names.add(candidate)
                return candidate

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    @classmethod
    def of(
        cls, path: str, env: dict[str, Any], x: TensorType, named: dict[str, tuple[Tree, Tree]]
    ) -> Scope:
        """The scope of a body reading one tensor, ``input`` (its `let` names its own: the
        parameters are copied)."""
        scope = cls.reading(path, dict(env), [Tensor("input", x)])
        scope.named = dict(named)
        return scope

    @classmethod
    def reading(cls, path: str, env: dict[str, Any], inputs: list[Tensor]) -> Scope:
        """The scope of a body reading ``inputs``; a statement without ``<-`` reads the
        first."""
        tensors: dict[str, TensorType | None] = {t.name: t.type for t in inputs}
        return cls(path, env, list(inputs), tensors, names=set(tensors), current=inputs[0].name)

    def unknown_outputs(self, what: str) -> list[Diagnostic]:
        """E406 for each name the body's `output` declares that is not one of its tensors."""
        return [
            Diagnostic.at(
                "E406",
                f"output {ident.name!r} is not a tensor of this {what}",
                ident.span,
                did_you_mean(ident.name, self.tensors),
            )
            for ident in self.outputs or []
            if ident.name not in self.tensors
        ]

    def graph(self, steps: list[Step]) -> Graph:
        """The body as a graph returning the tensors its `output` declares, else its last."""
        if self.outputs is not None:
            problems = self.unknown_outputs("block")
            if problems:
                raise DiagnosticError(problems[0])
            tensors = [(i.name, self.tensors[i.name]) for i in self.outputs]
            outputs = [Tensor(n, t) for n, t in tensors if t]
            return Graph(list(self.inputs), steps, outputs, self.choices)
        if self.current is None and self.several is not None:
            raise _unnamed_read(self.several, self.several.span, "the body")
        assert self.current is not None
        output = self.tensors[self.current]
        assert output is not None
        return Graph(list(self.inputs), steps, [Tensor(self.current, output)], self.choices)


class Analyzer:
    """Turns a parsed spec into a model graph; ``diagnostics`` collects every problem."""

    def __init__(
        self,
        spec: ast.Document,
        overrides: dict[str, str] | None = None,
        budget: LayerBudget | None = None,
        program: bool = False,
    ) -> None:
        self.spec = spec
        self.program = program  # keep where numbers came from (:mod:`provenance`), for codegen
        self.budget = budget or LayerBudget()
        self.overrides = dict(overrides or {})
        self.diagnostics: list[Diagnostic] = []
        self.blocks: dict[str, ast.Definition] = {}
        self.models: dict[str, ast.Definition] = {}
        self.expanding: list[str] = []  # blocks being expanded, for recursion errors
        self.bindings: dict[str, int] = {}
        self.total_checks: list[tuple[ast.Check, Mapping[str, Any]]] = []
        self.train: ast.TrainSection | None = None
        self.incomplete = False  # a statement failed: the graph would have holes
        # with errors: the model as far as its statements did analyze (no holes: a statement
        # reading what failed fails too), for an editor's hover and the viewer
        self.partial: ModelGraph | None = None
        self.limits: list[tuple[Dim, int, str]] = []  # bounds on symbolic dims, all layers
        # the values each `let` took, by its line (a block's once per use), for hover
        self.bound: dict[int, list[str]] = {}

    # driver ---------------------------------------------------------------------------------

    def error(self, diag: Diagnostic) -> None:
        self.diagnostics.append(diag)

    def run(self, model: str | None = None) -> ModelGraph | None:
        for definition in self.spec.definitions:
            table = self.models if definition.keyword == "model" else self.blocks
            name = definition.name
            if name.name in self.models or name.name in self.blocks:
                self.error(Diagnostic.at("E206", f"{name.name} is defined twice", name.span))
            elif name.name in REGISTRY:  # a kind's class in generated code has its name
                self.error(
                    Diagnostic.at(
                        "E206",
                        f"{definition.keyword} {name.name} has the name of a layer kind",
                        name.span,
                    )
                )
            elif (
                keyword.iskeyword(name.name)
                or name.name.startswith("__")
                or name.name in CODE_NAMES
            ):
                self.error(
                    Diagnostic.at(
                        "E207",
                        f"{definition.keyword} name {name.name!r} cannot name a Python class "
                        "in generated code",
                        name.span,
                    )
                )
            else:
                table[name.name] = definition
            self._check_inputs(definition)
        chosen = self._choose(model)
        if chosen is None:
            return None
        return self._model(chosen)

    def _check_inputs(self, definition: ast.Definition) -> None:
        """A block's named inputs are identifiers, each named once."""
        seen: set[str] = set()
        for ident in definition.inputs:
            try:
                check_name(ident, "input")
                if ident.name in seen:
                    raise fail("E206", f"input {ident.name} is named twice", ident.span)
            except DiagnosticError as err:
                self.error(err.diagnostic)
            seen.add(ident.name)

    def _choose(self, model: str | None) -> ast.Definition | None:
        if model is not None:
            if model in self.models:
                return self.models[model]
            notes = did_you_mean(model, self.models) or [f"models: {', '.join(self.models)}"]
            self.error(
                Diagnostic.at("E211", f"--model {model}: no model of that name", None, notes)
            )
            return None
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        if not self.models:
            self.error(Diagnostic.at("E210", "the spec defines no model (only blocks)", None))
        else:
            self.error(
                Diagnostic.at(
                    "E210",
                    f"the spec defines {len(self.models)} models; choose one with --model",
                    None,
                    [f"models: {', '.join(self.models)}"],
                )
            )
        return None

    # parameters -----------------------------------------------------------------------------

    def _model_params(self, definition: ast.Definition) -> dict[str, Any]:
        env: dict[str, Any] = {}
        declared = {p.name.name for p in definition.params}
        for key in self.overrides:
            if key not in declared:
                notes = did_you_mean(key, declared) or [
                    f"parameters of {definition.name.name}: {', '.join(declared) or 'none'}"
                ]
                self.error(
                    Diagnostic.at("E211", f"--set {key}: no such model parameter", None, notes)
                )
        for param in definition.params:
            name = param.name.name
            try:  # a bad name is reported, but its value still serves the body's checks
                check_name(param.name, "parameter")
            except DiagnosticError as err:
                self.error(err.diagnostic)
            try:
                if param.type.name not in PARAM_TYPES:
                    raise fail(
                        "E204",
                        f"unknown parameter type {param.type.name!r}",
                        param.type.span,
                        [f"types: {', '.join(PARAM_TYPES)}"],
                    )
                if name in self.overrides:
                    try:
                        value = convert_param(parse_override(self.overrides[name]), param.type.name)
                    except ValueError as exc:
                        self.error(
                            Diagnostic.at(
                                "E211", f"--set {name}={self.overrides[name]}: {exc}", None
                            )
                        )
                        continue
                elif param.default is not None:
                    try:
                        value = convert_param(evaluate(param.default, env), param.type.name)
                    except ValueError as exc:
                        raise fail("E204", f"default of {name}: {exc}", param.default.span) from exc
                else:
                    self.error(
                        Diagnostic.at(
                            "E211",
                            f"model parameter {name} has no default; pass --set {name}=VALUE",
                            param.span,
                        )
                    )
                    continue
            except DiagnosticError as err:
                self.error(err.diagnostic)
                continue
            if param.type.name == "dim":
                self.bindings[name] = value
                env[name] = Poly.symbol(name)
            else:
                env[name] = provenance.parameter(value, name) if self.program else value
        return env

    def _bind_args(
        self, params: list[ast.Param], args: list[ast.Arg], scope: Scope, where: ast.Call
    ) -> tuple[dict[str, Any], dict[str, tuple[Tree, Tree]], dict[str, Tree]]:
        """Arguments of a block call matched to its declared parameters; for those whose
        values cannot carry their expressions (bools, strings), the callee's (local, root)
        expressions and the caller's local one."""
        names = [p.name.name for p in params]
        matched = match_arguments(where.name.name, args, names, names)
        env = scope.values()
        values: dict[str, Any] = {}
        named: dict[str, tuple[Tree, Tree]] = {}
        local: dict[str, Tree] = {}
        for param in params:
            key = param.name.name
            if key in matched:
                value, span = evaluate(matched[key].value, env), matched[key].span
                if isinstance(value, bool | str) and self.program:
                    local[key], root = trees(matched[key].value, env, scope.named)
                    named[key] = (provenance.name(key), root)
            elif param.default is not None:
                value, span = evaluate(param.default, values), param.default.span
            else:
                raise fail("E203", f"{where.name.name} needs argument {key!r}", where.span)
            try:
                values[key] = (
                    value if isinstance(value, Poly) else convert_param(value, param.type.name)
                )
            except ValueError as exc:
                raise fail("E204", f"{key}: {exc}", span) from exc
            if isinstance(values[key], bool | str) and self.program:
                named.setdefault(key, (provenance.name(key), provenance.const(values[key])))
        return values, named, local

    def _choice(self, stmt: ast.IfStmt, taken: bool, scope: Scope) -> Choice:
        """What an `if` chose, with its condition's expressions (:mod:`provenance`)."""
        try:
            local, root = trees(stmt.condition, scope.values(), scope.named)
        except DiagnosticError:  # a part `and`/`or` never evaluated: judged by what it chose
            local = root = provenance.const(taken)
        return Choice(stmt, taken, local, root)

    # statements -----------------------------------------------------------------------------

    def _model(self, definition: ast.Definition) -> ModelGraph | None:
        env = self._model_params(definition)
        if any(p.name.name not in env for p in definition.params):
            return None  # a parameter without a value: its uses would each repeat that as E208
        named = {
            k: (provenance.name(k), provenance.name(k))
            for k, v in env.items()
            if self.program and not provenance.carries(v) and not isinstance(v, Poly)
        }
        scope = Scope(path="", env=dict(env), declares=True, named=named)  # lets: its own
        if definition.inputs:
            self.error(
                Diagnostic.at(
                    "E408",
                    f"model {definition.name.name} declares its inputs with `input`, not `<-`",
                    definition.inputs[0].span,
                    ["`<- a, b` names the inputs of a block"],
                )
            )
        steps = self._body(definition.body, scope, top=True)
        if not scope.inputs:
            self.error(
                Diagnostic.at(
                    "E408",
                    f"model {definition.name.name} declares no input",
                    definition.name.span,
                    ["add e.g. `input image: float[3, 48, 48]`"],
                )
            )
        outputs = self._outputs(scope)
        arguments = {k: provenance.plain(v) for k, v in env.items() if not isinstance(v, Poly)}
        train, problems = read_train(self.train, arguments)
        failed = self.incomplete or any(
            d.code[:2] in ("E0", "E1", "E2", "E4") for d in self.diagnostics
        )
        self.diagnostics.extend(problems)
        graph = ModelGraph(
            name=definition.name.name,
            arguments=arguments,
            bindings=dict(self.bindings),
            symbols=[k for k, v in env.items() if isinstance(v, Poly)],
            body=Graph(
                scope.inputs,
                steps,
                [Tensor(o, t) for o in outputs if (t := scope.tensors.get(o)) is not None],
                scope.choices,
            ),
            train=train,
            span=definition.span,
            limits=self.limits,
            program=self.program,
        )
        if failed:
            self.partial = graph
            return None
        self._check_totals(graph)
        return graph

    def _outputs(self, scope: Scope) -> list[str]:
        if scope.outputs is None:
            if scope.current is None and scope.several is not None:
                self.error(_unnamed_read(scope.several, scope.several.span, "the model").diagnostic)
            return [scope.current] if scope.current else []
        self.diagnostics += scope.unknown_outputs("model")
        return [ident.name for ident in scope.outputs]

    def _body(
        self,
        statements: Sequence[ast.Statement],
        scope: Scope,
        top: bool = False,
    ) -> list[Step]:
        scope.names |= _statement_names(statements)
        scope.indexes |= _loop_indexes(statements)
        steps: list[Step] = []
        last: Step | None = None
        last_ok = True
        # a stack: a chosen `if` branch goes on top, then the names the other one reserves
        work: list[ast.Statement | _Reserve] = list(reversed(statements))
        while work:
            stmt = work.pop()
            if isinstance(stmt, _Reserve):
                stmt.apply(scope)
                continue
            try:
                if isinstance(stmt, ast.IfStmt):
                    taken = truth(stmt.condition, scope.values())
                    if self.program:
                        scope.choices.append(self._choice(stmt, taken, scope))
                    # a statement's generated name does not depend on the branch taken: the
                    # first branch's names come first, then the second's, whichever runs
                    if taken:
                        work += [_Reserve(stmt.orelse), *reversed(stmt.body)]
                    else:
                        _Reserve(stmt.body).apply(scope)
                        work.extend(reversed(stmt.orelse))
                elif isinstance(stmt, ast.LayerStmt):
                    last_ok = False
                    last = self._statement(stmt, scope)
                    last_ok = last is not None
                    if last is not None:
                        steps.append(last)
                elif isinstance(stmt, ast.ExpectStmt):
                    self._expect(stmt, last if last_ok else None, top, scope.values())
                elif isinstance(stmt, ast.LetStmt):
                    self._let(stmt, scope)
                elif isinstance(stmt, ast.InputDecl) and top:
                    self._input(stmt, scope)
                elif isinstance(stmt, ast.OutputDecl) and scope.declares:
                    scope.outputs = stmt.names
                elif isinstance(stmt, ast.TrainSection) and top:
                    self.train = stmt
                else:
                    what = type(stmt).__name__.replace("Decl", "").replace("Section", "").lower()
                    where = "a model or a block" if what == "output" else "a model"
                    raise fail(
                        "E408", f"{what} declarations belong in {where}, not here", stmt.span
                    )
            except DiagnosticError as err:
                self.error(err.diagnostic)
                self.incomplete |= not isinstance(stmt, ast.ExpectStmt)
            if isinstance(stmt, ast.LayerStmt) and last is None:
                self.incomplete = True
        return steps

    def _let(self, stmt: ast.LetStmt, scope: Scope) -> None:
        """``let name = value``: the value, computed here, under its name for the statements
        after it (and the bodies inside them). Values that cannot carry their expressions
        (bools, strings) keep them in ``scope.named`` for generated code."""
        ident = stmt.name  # never a name in generated code, which writes its expression
        if ident.name in scope.env or ident.name in CONSTANTS:
            what = "a let" if ident.name in scope.lets else "a parameter or constant"
            raise fail("E206", f"{ident.name} is already {what} in this scope", ident.span)
        if ident.name in scope.names:
            raise fail("E206", f"{ident.name} names a tensor of this scope", ident.span)
        env = scope.values()
        value = evaluate(stmt.value, env)
        if self.program and isinstance(value, bool | str):
            scope.named[ident.name] = trees(stmt.value, env, scope.named)
        scope.env[ident.name] = value
        scope.lets.add(ident.name)
        shown = self.bound.setdefault(stmt.span.line, [])
        text = f"{ident.name} = {_fmt_value(value)}"
        if text not in shown:
            shown.append(text)

    def _input(self, decl: ast.InputDecl, scope: Scope) -> None:
        check_name(decl.name, "input")
        if decl.name.name in scope.tensors:
            raise fail("E206", f"{decl.name.name} is already defined", decl.name.span)
        if decl.dtype.name not in DTYPES:
            raise fail(
                "E408",
                f"unknown element type {decl.dtype.name!r}",
                decl.dtype.span,
                ["element types: float (features, images) or long (token ids)"],
            )
        dims: list[Dim] = []
        for expr in decl.dims:
            value = evaluate(expr, scope.values())
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, (int, Poly)) or isinstance(value, bool):
                raise fail("E408", f"a dimension must be a whole number, got {value!r}", expr.span)
            if isinstance(value, int) and value < 1:
                raise fail("E402", f"a dimension must be >= 1, got {value}", expr.span)
            dims.append(value)
        type_ = TensorType(tuple(dims), DTYPES[decl.dtype.name])  # type: ignore[arg-type]
        scope.tensors[decl.name.name] = type_
        scope.names.add(decl.name.name)
        scope.current = decl.name.name
        scope.inputs.append(Tensor(decl.name.name, type_))

    def _sources(self, stmt: ast.LayerStmt, scope: Scope) -> list[Tensor] | None:
        """The tensors a statement reads; None when one of them is unknown."""
        if stmt.sources:
            names, own = [], _names(stmt.names)
            for ident in stmt.sources:
                if ident.name in own:
                    raise fail("E406", f"{ident.name} reads its own output", ident.span)
                if ident.name not in scope.tensors:
                    raise fail(
                        "E406",
                        f"no tensor named {ident.name!r} before this statement",
                        ident.span,
                        did_you_mean(ident.name, scope.tensors),
                    )
                names.append(ident.name)
        elif scope.current is not None:
            names = [scope.current]
        elif scope.several is not None:
            raise _unnamed_read(scope.several, stmt.span)
        else:
            raise fail(
                "E408",
                "this layer has no input: declare one with `input name: float[...]`",
                stmt.span,
            )
        tensors = [Tensor(name, t) for name in names if (t := scope.tensors[name]) is not None]
        return tensors if len(tensors) == len(names) else None

    def _statement(self, stmt: ast.LayerStmt, scope: Scope) -> Step | None:
        for i, ident in enumerate(stmt.names):
            check_name(ident, "layer")
            if ident.name in scope.tensors or (i and ident.name in _names(stmt.names[:i])):
                raise fail("E206", f"{ident.name} is already defined in this scope", ident.span)
            if ident.name in scope.lets:
                raise fail("E206", f"{ident.name} is already a let in this scope", ident.span)
        loop, count_expr = (
            (stmt.repeat, stmt.repeat.count)
            if isinstance(stmt.repeat, ast.Loop)
            else (None, stmt.repeat)
        )
        if loop is not None:
            self._check_index(loop, scope)
        if len(stmt.names) == 1:  # the step is named as its tensor
            name = stmt.names[0].name
        else:  # unnamed, or writing several tensors: named as its kind
            base = stmt.op.name.name if isinstance(stmt.op, ast.Call) else "residual"
            name = scope.generated_name(base)
        targets = _names(stmt.names) if stmt.names else [name]
        for target in targets:  # until analyzed; later statements see them as unknown
            scope.tensors[target] = None
        inputs = self._sources(stmt, scope)
        scope.current, scope.several = targets[0], None
        if count_expr is not None:
            what = "range's count" if loop is not None else "a repeat count"
            count = expect_int(count_expr, scope.values(), what, minimum=0)
            step = self._repeat(stmt, count, name, scope, inputs)
        else:
            step = self._operation(stmt, stmt.op, name, scope.child_path(name), scope, inputs)
        if step is None:
            return None
        step.statement = stmt
        if len(step.outputs) > 1 or len(targets) > 1:
            if len(step.outputs) != len(targets) or not stmt.names:
                raise _output_count(stmt, step)
            step.outputs = [Tensor(t, o.type) for t, o in zip(targets, step.outputs, strict=True)]
            scope.current, scope.several = None, step
        for tensor in step.outputs:
            scope.tensors[tensor.name] = tensor.type
        scope.steps[name] = step
        return step

    def _repeat(
        self,
        stmt: ast.LayerStmt,
        count: int,
        name: str,
        scope: Scope,
        inputs: list[Tensor] | None,
    ) -> Step | None:
        """``count`` copies of the operation, each reading the one before (the first: the
        repetition's inputs, which its body calls ``input`` when there is one).

        A copy is a function of what it reads: the statement, its arguments and the scope
        are the same for every copy. So once a copy would read tensors of the types the copy
        before it read (in a program's analysis, with the same expressions too), it is that
        copy again, and so is every copy after it: the analysis stops there, and the last
        copy built stands for the rest (:class:`Copies`). ``Block * 100000`` costs one or
        two copies' analysis. Where the second copy still reads another type than the first,
        the rest are charged to the layer budget before they are analyzed, as if each
        differed (E601 at once for ``Grow * 1000000000``). An indexed repetition
        (``for i in range(n)``) is analyzed copy by copy: its copies differ by their index."""
        path = scope.child_path(name)
        one = provenance.const(1)
        if inputs is None:  # still check the operation's names and arguments
            with self._index(stmt, 0, scope):
                return self._operation(stmt, stmt.op, "0", f"{path}.0", scope, None)
        body_inputs = [Tensor("input", inputs[0].type)] if len(inputs) == 1 else list(inputs)
        reads = body_inputs
        threads = 1  # how many of the inputs the outputs replace, from the first
        probe = None
        if count == 0:  # no copy, but its arguments and inputs are still checked
            with self._index(stmt, 0, scope):
                probe = self._operation(stmt, stmt.op, "0", f"{path}.0", scope, reads)
            if probe is None:
                return None
            threads = _threads(stmt, probe, len(inputs))
        copies: list[Step] = []
        for i in range(count):
            used = self.budget.used
            with self._index(stmt, i, scope):
                child = self._operation(stmt, stmt.op, str(i), f"{path}.{i}", scope, reads)
            if child is None:
                return None
            child.statement = stmt
            threads = _threads(stmt, child, len(inputs))
            copies.append(child)
            # the others stay; the next copy's index is one more than this one's
            handed = _shift(child.outputs, stmt, lambda i: provenance.combine("-", i, one))
            following = [*handed, *reads[threads:]]
            # an indexed repetition's copies differ by their index, whatever they read
            if not isinstance(stmt.repeat, ast.Loop) and _alike(reads, following, self.program):
                break
            if i == 1:  # two copies that differ: the others may too, each analyzed in turn
                self.budget.require((count - 2) * (self.budget.used - used), stmt.span, name)
            reads = following
        body = (
            Copies(body_inputs, copies, count, path, threads)
            if copies
            else Graph(body_inputs, [], body_inputs[:threads])
        )
        last = provenance.combine("-", provenance.local_of(count), one)  # the last copy's index
        return Step(
            name=name,
            path=path,
            span=stmt.span,
            form="repeat",
            inputs=inputs,
            outputs=[Tensor(name, t.type) for t in _shift(body.outputs, stmt, lambda _: last)],
            body=body,
            count=count,
            template=probe,
        )

    def _check_index(self, loop: ast.Loop, scope: Scope) -> None:
        """A loop index is a new name: not a parameter, a let, a tensor or a constant."""
        ident = loop.index
        check_name(ident, "loop index")
        if ident.name in scope.env or ident.name in scope.names or ident.name in CONSTANTS:
            raise fail(
                "E206",
                f"loop index {ident.name} would hide the name {ident.name} of this scope",
                ident.span,
                ["choose another name for the index"],
            )

    @contextmanager
    def _index(self, stmt: ast.LayerStmt, copy: int, scope: Scope) -> Iterator[None]:
        """While one copy of ``stmt`` is analyzed: its loop index (``for i in range(n)``) has
        the copy's number, named as written in generated code (:mod:`provenance`)."""
        if not isinstance(stmt.repeat, ast.Loop):
            yield
            return
        name = stmt.repeat.index.name
        scope.env[name] = provenance.parameter(copy, name) if self.program else copy
        scope.looping.append(name)
        try:
            yield
        finally:
            del scope.env[name]
            scope.looping.pop()

    def _operation(
        self,
        stmt: ast.LayerStmt,
        op: ast.Call | ast.Residual,
        name: str,
        path: str,
        scope: Scope,
        inputs: list[Tensor] | None,
    ) -> Step | None:
        """The step applying ``op`` to ``inputs``; its output tensor is called ``name``."""
        if isinstance(op, ast.Residual):
            return self._residual(op, name, path, scope, inputs)
        kind = op.name.name
        if kind in self.blocks:
            return self._block(op, name, path, scope, inputs)
        if kind not in REGISTRY:
            raise fail(
                "E201",
                f"unknown layer kind {kind!r}",
                op.name.span,
                [RETIRED[kind]]
                if kind in RETIRED
                else did_you_mean(kind, [*REGISTRY, *self.blocks]),
            )
        try:
            layer, spans, lost = bind_layer(op, scope.values(), scope.named)
        except ArgumentErrors as err:
            self.diagnostics.extend(err.diagnostics[:-1])
            raise
        if inputs is None:
            return None
        types = [t.type for t in inputs]
        lo, hi = layer.arity
        if not lo <= len(types) <= hi:
            expected = str(lo) if lo == hi else f"{lo} to {hi}"
            raise fail("E407", f"{kind} takes {expected} inputs, got {len(types)}", stmt.span)
        self.budget.charge(layer.copies(), op.span, name)
        try:
            inferred = layer.infer(types)
        except LayerError as err:
            span = spans.get(err.arg or "", op.span)
            who = ", ".join(i.name for i in stmt.names) if len(stmt.names) > 1 else name
            raise fail(err.code, f"{who}: {err.message}", span, err.notes) from None
        self.limits += inferred.limits
        for dim, limit, what in inferred.limits:
            value = value_at(dim, self.bindings)
            if value > limit:
                raise fail(
                    "E409",
                    f"{name}: {fmt_dim(dim)} = {value:,} at {_at(self.bindings)}, but {what}",
                    op.span,
                )
        outputs = inferred.outputs
        for output in outputs:
            for dim in output.shape:
                if isinstance(dim, Poly) and (value := value_at(dim, self.bindings)) < 1:
                    raise fail(
                        "E402",
                        f"{name}: output dimension {dim} is {value} at {_at(self.bindings)}",
                        op.span,
                    )
        step = Step(
            name=name,
            path=path,
            span=stmt.span if stmt.op is op else op.span,
            form="layer",
            inputs=inputs,
            outputs=_named(name, outputs),
            layer=layer,
            weights=inferred.weights,
            buffers=inferred.buffers,
            macs=inferred.macs,
            tied=self._ties(name, inferred.weights, inferred.tied, scope, op.span),
            count_note=inferred.count_note,
            unexpressed=lost,
        )
        for code, message in inferred.warnings:
            self.error(Diagnostic.at(code, f"{name}: {message}", stmt.span))
        return step

    def _ties(
        self, name: str, weights: dict[str, Shape], tied: dict[str, str], scope: Scope, span: Span
    ) -> dict[str, str]:
        """Resolve ``{"weight": "tok_emb.weight"}`` to the shared tensor's full path."""
        resolved = {}
        for wname, ref in tied.items():
            target_name, _, target_weight = ref.rpartition(".")
            target = scope.steps.get(target_name)
            if target is None or target.layer is None:
                raise fail(
                    "E406",
                    f"{name}: cannot share {target_name!r}: no layer of that name before it",
                    span,
                    did_you_mean(target_name, scope.steps),
                )
            if target_weight not in target.weights:
                raise fail("E204", f"{name}: {target_name} has no {target_weight!r} to share", span)
            mine, theirs = weights[wname], target.weights[target_weight]
            if mine != theirs:
                raise fail(
                    "E401",
                    f"{name}.{wname} {list(mine)} cannot share {ref} {list(theirs)}: "
                    "the shapes differ",
                    span,
                )
            # a tensor that is itself shared names the one it shares: each is held once
            resolved[wname] = target.tied.get(target_weight, f"{target.path}.{target_weight}")
        return resolved

    def _block(
        self, call: ast.Call, name: str, path: str, scope: Scope, inputs: list[Tensor] | None
    ) -> Step | None:
        definition = self.blocks[call.name.name]
        if call.name.name in self.expanding:
            chain = " -> ".join([*self.expanding, call.name.name])
            raise fail("E209", f"block {call.name.name} uses itself: {chain}", call.name.span)
        env, named, local = self._bind_args(definition.params, call.args, scope, call)
        if inputs is None:
            return None
        names = [i.name for i in definition.inputs] or ["input"]
        if len(inputs) != len(names):
            given = ", ".join(t.name for t in inputs)
            raise fail(
                "E407",
                f"block {call.name.name} takes {_count(len(names), 'input')}, got "
                f"{len(inputs)} ({given})",
                call.span,
                [f"its signature: {_signature(definition)}"],
            )
        # the body sees its parameters and its inputs' sizes under names of its own
        taken = {p.name.name for p in definition.params}
        ranks = [(n, len(t.type.shape)) for n, t in zip(names, inputs, strict=True)]
        sizes: dict[str, Any] = {}
        reads = []
        for label, tensor, size_names in zip(
            names, inputs, provenance.size_names(ranks, taken), strict=True
        ):
            reads.append(Tensor(label, _fresh_type(tensor.type, size_names, sizes, self.program)))
        if self.program:
            inner = Scope.reading(path, {k: provenance.fresh(v, k) for k, v in env.items()}, reads)
        else:
            inner = Scope.reading(path, dict(env), reads)
        inner.declares = True
        inner.named = named
        self.expanding.append(call.name.name)
        errors = len(self.diagnostics)
        try:
            children = self._body(definition.body, inner)
        finally:
            self.expanding.pop()
        where = f"in {call.name.name}, used at line {call.span.line}:{call.span.column}"
        if not self._failed_since(errors):
            try:
                body = inner.graph(children)
            except DiagnosticError as err:
                self.error(err.diagnostic)
        for diagnostic in self.diagnostics[errors:]:  # point at the call as well as the body
            diagnostic.notes.append(where)
        if self._failed_since(errors):
            return None
        outside = _mapping(env | sizes)
        return Step(
            name=name,
            path=path,
            span=call.span,
            form="block",
            inputs=inputs,
            outputs=_named(
                name,
                [_rebase_type(t.type, outside) for t in body.outputs],
                [t.name for t in body.outputs],
            ),
            body=body,
            block=BlockUse(definition, dict(env), local),
            sizes=sizes,
        )

    def _residual(
        self, op: ast.Residual, name: str, path: str, scope: Scope, inputs: list[Tensor] | None
    ) -> Step | None:
        if inputs is None:
            return None
        if len(inputs) != 1:
            raise fail("E407", f"residual takes 1 input, got {len(inputs)}", op.span)
        sizes: dict[str, Any] = {}
        size_names = provenance.size_names([("input", len(inputs[0].type.shape))], set(scope.env))
        x = _fresh_type(inputs[0].type, size_names[0], sizes, self.program)
        errors = len(self.diagnostics)
        main = Scope.of(path, scope.env, x, scope.named)
        side = Scope.of(f"{path}.shortcut", scope.env, x, scope.named)
        main.looping = side.looping = scope.looping  # the copy of a repetition, if it is one
        children = self._body(op.body, main)
        side_children = self._body(op.shortcut, side) if op.shortcut is not None else None
        if self._failed_since(errors):  # a failed body has no output to build a graph from
            return None
        shortcut = None if side_children is None else side.graph(side_children)
        out_short = x if shortcut is None else shortcut.outputs[0].type
        if shortcut is not None and "shortcut" in main.tensors:
            raise fail(
                "E206",
                f"{name}: a statement of the body is named `shortcut`, the projection's name",
                op.span,
            )
        body = main.graph(children)
        out_main = body.outputs[0].type
        if tuple(out_main.shape) != tuple(out_short.shape):
            what = "shortcut" if shortcut is not None else "input (identity shortcut)"
            notes = [f"body output {out_main}, {what} {out_short}"]
            if shortcut is None and len(out_main.shape) == len(x.shape):
                notes.append(
                    "add `shortcut { ... }` with a projection, e.g. a 1x1 Conv2d with that stride"
                )
            raise fail(
                "E403",
                f"{name}: the residual's branches differ: {out_main} + {out_short}",
                op.span,
                notes,
            )
        return Step(
            name=name,
            path=path,
            span=op.span,
            form="residual",
            inputs=inputs,
            outputs=[Tensor(name, _rebase_type(out_main, _mapping(sizes)))],
            body=body,
            shortcut=shortcut,
            sizes=sizes,
        )

    def _failed_since(self, mark: int) -> bool:
        return any(d.severity == "error" for d in self.diagnostics[mark:])

    # expectations ---------------------------------------------------------------------------

    def _expect(
        self, stmt: ast.ExpectStmt, last: Step | None, top: bool, env: Mapping[str, Any]
    ) -> None:
        if stmt.total:
            if not top:
                raise fail("E305", "`expect total` belongs at the model level", stmt.span)
            for check in stmt.checks:
                if check.quantity.name not in TOTAL_QUANTITIES:
                    raise fail(
                        "E305",
                        f"unknown model quantity {check.quantity.name!r}",
                        check.quantity.span,
                        [f"quantities: {', '.join(TOTAL_QUANTITIES)}"],
                    )
            for check in stmt.checks:
                if check.args and check.quantity.name != "train_memory":
                    message = f"{check.quantity.name} takes no arguments"
                    self.error(Diagnostic.at("E305", message, check.args[0].span))
                else:
                    self.total_checks.append((check, env))
            return
        for check in stmt.checks:
            if check.quantity.name not in LAYER_QUANTITIES:
                raise fail(
                    "E305",
                    f"unknown quantity {check.quantity.name!r}",
                    check.quantity.span,
                    [
                        f"quantities: {', '.join(LAYER_QUANTITIES)}; "
                        "for the whole model: expect total ..."
                    ],
                )
        if last is None:
            return  # the statement it checks had errors (reported) or there is none
        for check in stmt.checks:
            try:
                self._check_layer(check, last, env)
            except DiagnosticError as err:
                self.error(err.diagnostic)

    def _check_layer(self, check: ast.Check, step: Step, env: Mapping[str, Any]) -> None:
        quantity = check.quantity.name
        # the statement as named: its tensor's name, or its tensors'
        who = step.name if len(step.outputs) == 1 else ", ".join(t.name for t in step.outputs)
        if quantity == "shape":
            want = evaluate(check.value, env)
            if not isinstance(want, list):
                raise fail(
                    "E305", "a shape is written as a list, e.g. [64, 24, 24]", check.value.span
                )
            got = [list(t.type.shape) for t in step.outputs]
            # several outputs: a list of their shapes, or one shape they all have
            equal = (
                want == got
                if len(got) > 1 and want and isinstance(want[0], list)
                else all(want == shape for shape in got)
            )
            if check.op not in ("==", "!="):
                raise fail("E305", "shapes compare with == or !=", check.span)
            if equal != (check.op == "=="):
                shown = ", ".join(str(t.type) for t in step.outputs)
                raise fail(
                    "E302",
                    f"{who} expected shape {check.op} {_fmt_shape(want)}, "
                    f"but its output{'s are' if len(step.outputs) > 1 else ' is'} {shown}",
                    check.span,
                    _shape_notes(step),
                )
            return
        if quantity == "params":
            actual: int = step.params
            notes = _param_notes(step)
            noun = "parameters"
        elif quantity == "buffers":
            actual, notes, noun = step.buffer_count, [], "buffer elements"
        else:
            actual = value_at(step.total_macs, self.bindings)
            notes = _macs_notes(step, self.bindings)
            noun = "MACs"
        want = evaluate(check.value, env)
        if _fails(actual, check.op, want, check.value):
            code = {"params": "E301", "buffers": "E301", "macs": "E303"}[quantity]
            raise fail(
                code,
                f"{who} was expected to have {_claim(check.op, want)} {noun}, "
                f"but {step.label} has {n(actual)}",
                check.span,
                notes,
            )

    def _check_totals(self, graph: ModelGraph) -> None:
        for check, env in self.total_checks:
            quantity = check.quantity.name
            notes: list[str] = []
            if quantity == "train_memory":
                try:
                    chosen = _train_options(check, env)
                except DiagnosticError as err:
                    self.error(err.diagnostic)
                    continue
                parts = memory.train_bytes(graph, chosen)
                actual = parts.pop("total")
                listed = " + ".join(f"{name} {human_bytes(b)}" for name, b in parts.items())
                notes = [f"training at {chosen.describe()}: {listed}"]
            elif quantity == "macs":
                actual = value_at(graph.total_macs, graph.bindings)
            elif quantity == "buffers":
                actual = graph.buffer_count
            else:  # params as torch counts them: buffers are not parameters
                actual = graph.trainable_params
            try:
                want = evaluate(check.value, env)
                failed = _fails(actual, check.op, want, check.value)
            except DiagnosticError as err:
                self.error(err.diagnostic)
                continue
            if failed and quantity == "train_memory":
                self.error(
                    Diagnostic.at(
                        "E304",
                        f"training needs {human_bytes(actual)} ({n(actual)} bytes), which breaks "
                        f"`expect total train_memory {check.op} {human_bytes(want)}`",
                        check.span,
                        notes,
                    )
                )
            elif failed:
                self.error(
                    Diagnostic.at(
                        "E304",
                        f"the model has {n(actual)} {TOTAL_NOUNS[quantity]}, which breaks "
                        f"`expect total {quantity} {check.op} {_fmt_num(want)}`",
                        check.span,
                        _largest(graph, quantity),
                    )
                )


def _train_options(check: ast.Check, env: Mapping[str, Any]) -> memory.Options:
    """``train_memory(batch=32, precision="bf16")``'s arguments, keyword only."""
    values: dict[str, Any] = {}
    for arg in check.args:
        if arg.name is None:
            raise fail("E305", "write train_memory's arguments by name, e.g. batch=32", arg.span)
        if arg.name.name in values:  # as a layer's argument given twice is
            raise fail("E213", f"argument {arg.name.name!r} given twice", arg.span)
        values[arg.name.name] = evaluate(arg.value, env)
        try:
            memory.options({arg.name.name: values[arg.name.name]})
        except ValueError as exc:
            raise fail("E305", f"train_memory: {exc}", arg.span) from None
    return memory.options(values)


def _statement_names(statements: Sequence[ast.Statement]) -> set[str]:
    """The names statements give their tensors, in either branch of an `if`."""
    names: set[str] = set()
    for stmt in statements:
        if isinstance(stmt, ast.LayerStmt):
            for ident in stmt.names:
                names.add(ident.name)
        elif isinstance(stmt, ast.IfStmt):
            names |= _statement_names(stmt.body) | _statement_names(stmt.orelse)
    return names


def _shift(
    tensors: list[Tensor], stmt: ast.LayerStmt, index: Callable[[Tree], Tree]
) -> list[Tensor]:
    """``tensors`` a copy of an indexed repetition gives, with its index ``i`` written as
    ``index(i)``: a size the copy computed from its index (``w + i``) is ``w + (i - 1)``
    read by the next copy (:mod:`provenance`). Simplified: a thousand copies, each adding
    to the expression of what it reads, would otherwise nest it a thousand deep."""
    if not isinstance(stmt.repeat, ast.Loop):
        return tensors
    name = stmt.repeat.index.name
    mapping = {name: index(provenance.name(name))}
    return [
        Tensor(
            t.name,
            TensorType(
                tuple(provenance.simplified(provenance.rebase(d, mapping)) for d in t.type.shape),
                t.type.dtype,
            ),
        )
        for t in tensors
    ]


def _loop_indexes(statements: Sequence[ast.Statement]) -> dict[str, Span]:
    """The loop indexes of the repetitions among statements (in either branch of an `if`),
    with where each is declared."""
    found: dict[str, Span] = {}
    for stmt in statements:
        if isinstance(stmt, ast.LayerStmt) and isinstance(stmt.repeat, ast.Loop):
            found.setdefault(stmt.repeat.index.name, stmt.repeat.index.span)
        elif isinstance(stmt, ast.IfStmt):
            found |= _loop_indexes(stmt.body) | _loop_indexes(stmt.orelse)
    return found


def _unnamed_read(step: Step, span: Span, body: str | None = None) -> DiagnosticError:
    """E410: a statement without ``<-`` (or the end of ``body``, which returns its last
    tensor) would read "the previous output", but ``step`` wrote several."""
    names = ", ".join(t.name for t in step.outputs)
    gives = f"{step.label} (line {step.span.line}), which gives {len(step.outputs)} outputs"
    if body is None:
        message = f"this statement reads no tensor by name, but follows {gives}: {names}"
        note = f"say which it reads, e.g. `<- {step.outputs[0].name}`"
    else:
        message = f"{body} ends with {gives}: {names}; which does it return?"
        note = f"declare them: `output {names}` (or some of them)"
    return fail("E410", message, span, [note])


def _names(idents: list[ast.Ident]) -> list[str]:
    return [ident.name for ident in idents]


def _named(name: str, types: list[TensorType], labels: list[str] | None = None) -> list[Tensor]:
    """A step's output tensors: one is called ``name``; several ``name.0``, ``name.1``... or
    ``name.a``, ``name.b`` after ``labels`` (a statement names them as it writes them)."""
    if len(types) == 1:
        return [Tensor(name, types[0])]
    labels = labels or list(map(str, range(len(types))))
    return [Tensor(f"{name}.{label}", t) for label, t in zip(labels, types, strict=True)]


def _alike(reads: list[Tensor], following: list[Tensor], program: bool) -> bool:
    """Whether a repetition's next copy reads what the last one read: the same types, and in
    a program's analysis the same expressions of every size (:mod:`provenance`), since a
    copy's numbers carry them. Names do not matter: a copy reads its tensors as given."""
    for a, b in zip(reads, following, strict=True):
        if a.type != b.type:
            return False
        if program and any(
            provenance.local_of(x) != provenance.local_of(y)
            or provenance.root_of(x) != provenance.root_of(y)
            for x, y in zip(a.type.shape, b.type.shape, strict=True)
        ):
            return False
    return True


def _threads(stmt: ast.LayerStmt, step: Step, inputs: int) -> int:
    """How many inputs of the next copy a repeated step's outputs give: its one output gives
    the first (the other inputs stay); several outputs give as many inputs, one to one (E412
    when they are not as many)."""
    count = len(step.outputs)
    if count == 1 or count == inputs:
        return count
    notes = [f"its signature: {_signature(step.block.definition)}"] if step.block else []
    raise fail(
        "E412",
        f"{step.label} gives {count} outputs but reads {_count(inputs, 'input')}, so its "
        "copies cannot be chained: each copy's outputs must be the next one's inputs, "
        "one to one",
        stmt.span,
        notes,
    )


def _output_count(stmt: ast.LayerStmt, step: Step) -> DiagnosticError:
    """E411: a statement names another number of tensors than its operation gives."""
    count = len(step.outputs)
    given = ", ".join(i.name for i in stmt.names)
    if stmt.names:
        verb = "are" if len(stmt.names) > 1 else "is"
        message = (
            f"{step.label} gives {_count(count, 'output')}, but {len(stmt.names)} {verb} "
            f"named ({given})"
        )
    else:
        message = f"{step.label} gives {count} outputs; name each of them"
    notes = [step.count_note] if step.count_note else []
    if step.block is not None:
        notes.append(f"its signature: {_signature(step.block.definition)}")
    elif count > 1:
        example = ", ".join(f"x{i}" for i in range(count))
        reads = ", ".join(t.name for t in step.inputs)
        notes.append(f"write e.g. `{example} = {step.label} <- {reads}`")
    span = stmt.span
    if stmt.names:  # the names, first to last
        first, last = stmt.names[0].span, stmt.names[-1].span
        span = Span(first.line, first.column, last.end_line, last.end_column)
    return fail("E411", message, span, notes)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _signature(definition: ast.Definition) -> str:
    """``Dec(d: int, heads: int = 8) <- tgt, memory``, as written, and ``-> a, b`` when its
    body declares its outputs."""
    params = ", ".join(
        f"{p.name.name}: {p.type.name}" + (" = ..." if p.default is not None else "")
        for p in definition.params
    )
    inputs = ", ".join(i.name for i in definition.inputs) or "input"
    outputs = _declared(definition.body)
    returns = f" -> {', '.join(i.name for i in outputs)}" if outputs else ""
    return f"{definition.name.name}({params}) <- {inputs}{returns}"


def _declared(statements: Sequence[ast.Statement]) -> list[ast.Ident]:
    """The outputs a body declares (the first `output`, in either branch of an `if`)."""
    for stmt in statements:
        if isinstance(stmt, ast.OutputDecl):
            return stmt.names
        if isinstance(stmt, ast.IfStmt) and (found := _declared([*stmt.body, *stmt.orelse])):
            return found
    return []


def _at(bindings: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in bindings.items())


def _claim(op: str, value: Any) -> str:
    return _fmt_num(value) if op == "==" else f"{op} {_fmt_num(value)}"


def _fmt_num(value: Any) -> str:
    return n(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _fmt_value(value: Any) -> str:
    """A let's value as hover shows it: ``16``, ``T + 1``, ``0.5``, ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return _fmt_shape(value)
    if isinstance(value, str):
        return repr(value)
    return _fmt_num(provenance.plain(value)) if isinstance(value, int) else str(value)


def _fmt_shape(shape: list[Any]) -> str:
    """``[64, T]``; ``[[5], [1]]`` for the shapes of several outputs."""
    return (
        "["
        + ", ".join(
            fmt_dim(d)
            if isinstance(d, (int, Poly))
            else _fmt_shape(d)
            if isinstance(d, list)
            else repr(d)
            for d in shape
        )
        + "]"
    )


def _tolerance(expr: ast.Expr) -> float:
    """``96.66M`` means "96.66 million, to the digits shown": half a unit of the last digit."""
    if isinstance(expr, ast.Num) and expr.text[-1] in "KMGT" and "." in expr.text:
        from dlspec.syntax.parser import SUFFIXES

        decimals = len(expr.text[:-1].split(".")[1].replace("_", ""))
        return SUFFIXES[expr.text[-1]] * 0.5 * 10.0**-decimals
    return 0.0


def _fails(actual: int, op: str, want: Any, expr: ast.Expr) -> bool:
    if isinstance(want, bool) or not isinstance(want, (int, float)):
        raise fail("E305", f"expected a number, got {want!r}", expr.span)
    tol = _tolerance(expr)
    if op == "==":
        return abs(actual - want) > tol
    if op == "!=":
        return abs(actual - want) <= tol
    return not {"<": actual < want, "<=": actual <= want, ">": actual > want, ">=": actual >= want}[
        op
    ]


def _param_notes(step: Step) -> list[str]:
    """The arithmetic behind a parameter count: each tensor's shape and size."""
    parts = []
    for leaf in step.leaves():
        for wname, shape in leaf.weights.items():
            if wname in leaf.tied:
                continue
            prefix = f"{leaf.path}." if leaf is not step else ""
            dims = " x ".join(n(d) for d in shape) or "1"
            parts.append(f"{prefix}{wname} [{dims}] = {n(numel(shape))}")
    if not parts:
        return [f"{step.label} has no parameters"]
    if len(parts) > 6:
        return [f"{len(parts)} tensors in {len(step.leaves())} layers; total {n(step.params)}"]
    return [" + ".join(parts) + (f" = {n(step.params)}" if len(parts) > 1 else "")]


def _macs_notes(step: Step, bindings: dict[str, int]) -> list[str]:
    total = step.total_macs
    if isinstance(total, Poly):
        return [f"MACs = {total} at " + ", ".join(f"{k}={v}" for k, v in bindings.items())]
    return [f"{step.label}: {n(total)} multiply-accumulates per sample (one per bias add)"]


def _shape_notes(step: Step) -> list[str]:
    ins = ", ".join(str(t.type) for t in step.inputs)
    return [f"{step.label} maps {ins} to {', '.join(str(t.type) for t in step.outputs)}"]


def _largest(graph: ModelGraph, quantity: str) -> list[str]:
    def size(leaf: Step) -> int:
        if quantity == "macs":
            return value_at(leaf.macs, graph.bindings)
        return leaf.buffer_count if quantity == "buffers" else leaf.params

    leaves = sorted(graph.leaves(), key=size, reverse=True)[:3]
    return ["largest layers: " + ", ".join(f"{leaf.path} {n(size(leaf))}" for leaf in leaves)]


def _fresh_type(
    x: TensorType, names: list[str], sizes: dict[str, Any], program: bool
) -> TensorType:
    """``x`` with each fixed size under its name in ``names`` (:mod:`provenance`); ``sizes``
    collects each name's value outside (symbolic dimensions stay as they are). Outside a
    program's analysis, ``x`` itself."""
    if not program:
        return x
    shape: list[Dim] = []
    for dim, size_name in zip(x.shape, names, strict=True):
        if isinstance(dim, int):
            sizes[size_name] = dim
            dim = provenance.fresh(dim, size_name)
        shape.append(dim)
    return TensorType(tuple(shape), x.dtype)


def _mapping(values: Mapping[str, Any]) -> dict[str, Tree]:
    """Each local name of a body as the caller's expression."""
    return {k: provenance.local_of(v) for k, v in values.items()}


def _rebase_type(x: TensorType, mapping: Mapping[str, Tree]) -> TensorType:
    return TensorType(tuple(provenance.rebase(d, mapping) for d in x.shape), x.dtype)


class _Reserve(Struct):
    """The generated names an `if` branch that did not run would have taken (``conv2d2``),
    reserved so that the statements after it are named alike whichever branch ran."""

    statements: Sequence[ast.Statement]

    def apply(self, scope: Scope) -> None:
        for stmt in self.statements:
            if isinstance(stmt, ast.IfStmt):
                _Reserve([*stmt.body, *stmt.orelse]).apply(scope)
            elif isinstance(stmt, ast.LayerStmt) and len(stmt.names) != 1:
                scope.generated_name(
                    stmt.op.name.name if isinstance(stmt.op, ast.Call) else "residual"
                )

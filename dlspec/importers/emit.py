"""Write a captured model (:mod:`dlspec.importers.ir`) as spec text a person would keep.

Modules of one class whose bodies differ only in numbers become one ``block`` whose
parameters are the numbers that differ (``BasicBlock(out_channels: int, stride: int)``);
bodies of one class that differ in structure become ``BasicBlock``, ``BasicBlock2``... Each
model-level statement carries ``expect`` lines with the parameter and buffer counts and the
output shape torch reported, so that ``dlspec check`` confirms the import.
"""

from __future__ import annotations

import keyword
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dlspec.importers.ir import Body, Imported, LayerCall, Statement, Value
from dlspec.layers import REGISTRY

INDENT = "    "
EXPECT_COLUMN = 48
WIDTH = 100  # where a statement's `expect` starts, as in the shipped specs


@dataclass
class _Block:
    """A block definition: its name, parameters (name, type) and, per value column of its
    bodies, the parameter that column reads (None: the same literal in every copy)."""

    name: str
    params: list[tuple[str, str]]
    columns: list[str | None]


@dataclass
class _Use:
    block: _Block
    args: list[Value]


class _Writer:
    def __init__(self, model: Imported) -> None:
        self.model = model
        self.uses: dict[int, _Use] = {}  # id(body) -> its block and arguments
        self.blocks: list[tuple[_Block, Body]] = []
        self._find_blocks()

    # blocks ---------------------------------------------------------------------------------

    def _find_blocks(self) -> None:
        """Group every traced body by (class, structure), innermost first; the value columns
        that differ within a group become the block's parameters."""
        bodies = _bodies(self.model.body)
        by_height: dict[int, list[Body]] = defaultdict(list)
        for body in bodies:
            by_height[_height(body)].append(body)
        taken = set(REGISTRY) | {self.model.name}
        for height in sorted(by_height):
            groups: dict[tuple[str, Any], list[Body]] = {}
            for body in by_height[height]:
                self._repeats(body)
                structure, _, _ = self._flatten(body)
                # dlspec's own generated code numbers the variants of a block: Stage, Stage2
                family = re.sub(r"(?<=[A-Za-z_])\d+$", "", body.cls)
                groups.setdefault((family, structure), []).append(body)
            for members in groups.values():
                name = _class_name(members[0].cls, taken)
                taken.add(name)
                flat = [self._flatten(body) for body in members]
                names = flat[0][2]
                rows = [values for _, values, _ in flat]
                block = _Block(name, [], [])
                seen: dict[tuple[Value, ...], str] = {}
                for column, hole in enumerate(names):
                    values = tuple(row[column] for row in rows)
                    if len(set(values)) == 1:
                        block.columns.append(None)
                        continue
                    if values not in seen:
                        pname = _unique(hole, {p for p, _ in block.params})
                        kind = "int" if all(isinstance(v, int) for v in values) else "float"
                        block.params.append((pname, kind))
                        seen[values] = pname
                    block.columns.append(seen[values])
                for body, row in zip(members, rows, strict=True):
                    args = [row[block.columns.index(p)] for p, _ in block.params]
                    self.uses[id(body)] = _Use(block, args)
                self.blocks.append((block, members[0]))
        self._repeats(self.model.body)

    def _repeats(self, body: Body) -> None:
        """Fold runs of copies of one block with one set of arguments, made from the children
        ``P.0``, ``P.1``... of one container (an nn.Sequential or nn.ModuleList), into one
        statement ``P = Block(...) * N``; its module paths are then those of the original."""
        out: list[Statement] = []
        tail: dict[int, str] = {}  # a statement folding copies -> its last copy's own name
        first: dict[int, int] = {}  # ... -> the index of its first copy in their container
        for st in body.statements:
            last = out[-1] if out else None
            if (
                last is not None
                and isinstance(st.op, Body)
                and isinstance(last.op, Body)
                and _chained(last, st, tail.get(id(last), last.name))
                and self._same_use(last, st)
            ):
                parent, _, index = st.origin.rpartition(".")
                copies = last.copies or [last.op]
                if not last.copies:  # a run may start after the container's first (T5's)
                    above, _, start = last.origin.rpartition(".")
                    if above == parent and start.isdigit():
                        first[id(last)] = int(start)
                if id(last) in first and index == str(first[id(last)] + len(copies)):
                    if not last.copies:
                        tail[id(last)] = last.name
                        taken = {s.name for s in body.statements} - {last.name}
                        # named as the first copy, without its index (``decoder_block_1``
                        # -> ``decoder_block``: a stack inlined with a prefix), else as the
                        # container
                        suffix = f"_{first[id(last)]}"
                        own = last.name.removesuffix(suffix) if last.name.endswith(suffix) else ""
                        last.name = _unique(own or parent.rpartition(".")[2] or last.name, taken)
                        last.origin, last.copies = parent, [last.op]
                    last.copies.append(st.op)
                    last.params += st.params
                    last.buffers += st.buffers
                    last.shape = st.shape
                    tail[id(last)] = st.name
                    continue
            out.append(st)
        # what read the last copy reads the repetition
        folded = {tail[id(st)]: st.name for st in out if id(st) in tail}
        for st in out:
            st.sources = [folded.get(s, s) for s in st.sources]
        body.outputs = [folded.get(s, s) for s in body.outputs]
        body.statements = out

    def _same_use(self, a: Statement, b: Statement) -> bool:
        first, second = self.uses.get(id(a.op)), self.uses.get(id(b.op))
        return (
            first is not None
            and second is not None
            and first.block is second.block
            and first.args == second.args
        )

    def _flatten(self, body: Body) -> tuple[Any, list[Value], list[str]]:
        """A body's structure with its numbers taken out, the numbers, and their names."""
        structure: list[Any] = []
        values: list[Value] = []
        names: list[str] = []
        for st in body.statements:
            if isinstance(st.op, LayerCall):
                args: list[tuple[str, Value | None]] = []
                for key, value in st.op.args.items():
                    if _number(value):
                        values.append(value)
                        names.append(key)
                        args.append((key, None))
                    else:
                        args.append((key, value))
                structure.append((st.name, st.op.kind, tuple(args), tuple(st.sources)))
            else:
                use = self.uses[id(st.op)]
                values += use.args
                names += [p for p, _ in use.block.params]
                count = len(st.copies) or 1
                outputs = tuple(st.outputs)
                structure.append((st.name, use.block.name, count, tuple(st.sources), outputs))
        if len(body.inputs) > 1:
            structure.append(tuple(body.inputs))
        if body.outputs:
            structure.append(("output", *body.outputs))
        return tuple(structure), values, names

    # text -----------------------------------------------------------------------------------

    def text(self) -> str:
        model = self.model
        # one comment line whatever the file's name holds (a newline would end the comment)
        source = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in model.source)
        lines = [f"# Imported by dlspec from {source}.", ""]
        for block, body in self.blocks:
            params = ", ".join(f"{p}: {t}" for p, t in block.params)
            head = f"block {block.name}({params})" if params else f"block {block.name}"
            if len(body.inputs) > 1:
                head += " <- " + ", ".join(body.inputs)
            lines.append(head + " {")
            lines += self._statements(body, block.columns, expects=False)
            if body.outputs:
                lines.append(f"{INDENT}output {', '.join(body.outputs)}")
            lines += ["}", ""]
        dims = ", ".join(f"{s}: dim = {v}" for s, v in model.symbols.items())
        lines.append(f"model {model.name}({dims}) {{" if dims else f"model {model.name} {{")
        for name, dtype, shape in model.inputs:
            lines.append(f"{INDENT}input {name}: {dtype}[{', '.join(map(str, shape))}]")
        lines += self._statements(model.body, None, expects=True)
        if model.body.outputs:
            lines.append(f"{INDENT}output {', '.join(model.body.outputs)}")
        totals = [f"params == {_int(model.params)}"]
        if model.buffers:
            totals.append(f"buffers == {_int(model.buffers)}")
        lines.append(f"{INDENT}expect total {', '.join(totals)}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _statements(self, body: Body, columns: list[str | None] | None, expects: bool) -> list[str]:
        lines = []
        _, values, _ = self._flatten(body)
        cursor = 0

        def arg(value: Value) -> str:
            nonlocal cursor
            param = columns[cursor] if columns is not None else None
            cursor += 1
            return param if param is not None else _literal(value)

        for st in body.statements:
            if isinstance(st.op, LayerCall):
                text = f"{st.name} = {_call(st.op, arg)}"
            else:
                use = self.uses[id(st.op)]
                args = ", ".join(arg(v) for v in use.args)
                text = (
                    f"{st.name} = {use.block.name}({args})"
                    if args
                    else f"{st.name} = {use.block.name}"
                )
                if st.copies:
                    text += f" * {len(st.copies)}"
                if st.outputs:
                    text = ", ".join(st.outputs) + text[len(st.name) :]
            if st.sources:
                text += " <- " + ", ".join(st.sources)
            line = _wrap(INDENT + text)
            checks = _checks(st) if expects else []
            if checks:
                expect = "expect " + ", ".join(checks)
                if len(line.rsplit("\n", 1)[-1]) < EXPECT_COLUMN - 1:
                    line = line.ljust(EXPECT_COLUMN) + expect
                else:
                    line += "\n" + " " * EXPECT_COLUMN + expect
            lines.append(line)
        assert cursor == len(values)
        return lines


def write_spec(model: Imported) -> str:
    """The spec text of a captured model."""
    return _Writer(model).text()


def _layers(model: Imported) -> Iterator[tuple[str, Statement]]:
    """Every layer statement, with its path in the module dlspec generates (a statement of
    several outputs has no name: its module is the block's name, lowercase, numbered)."""
    uses = _Writer(model).uses

    def walk(body: Body, prefix: str) -> Iterator[tuple[str, Statement]]:
        unnamed: dict[str, int] = defaultdict(int)
        for st in body.statements:
            path = f"{prefix}{st.name}"
            if st.outputs:
                base = uses[id(st.op)].block.name.lower()
                unnamed[base] += 1
                path = f"{prefix}{base}{unnamed[base]}"
            if isinstance(st.op, LayerCall):
                yield path, st
            elif st.copies:
                for i, copy in enumerate(st.copies):
                    yield from walk(copy, f"{path}.{i}.")
            else:
                yield from walk(st.op, f"{path}.")

    return walk(model.body, "")


def state_names(model: Imported) -> dict[str, str]:
    """Each state_dict name of the model dlspec generates from the written spec -> the name
    of the same tensor in the original module."""
    mapping: dict[str, str] = {}
    for path, st in _layers(model):
        for key in st.state:
            theirs = f"{st.origin}.{key}" if st.origin else key
            mapping[f"{path}.{key}"] = st.state_from.get(key, theirs)
    return mapping


def transposed_names(model: Imported) -> set[str]:
    """The state_dict names (of the module dlspec generates) whose tensors the original
    holds transposed."""
    return {f"{path}.{key}" for path, st in _layers(model) for key in st.transposed}


# helpers ------------------------------------------------------------------------------------


def _chained(first: Statement, copy: Statement, previous: str) -> bool:
    """Whether ``copy`` reads what a repetition's next copy reads: the previous copy, as its
    first input (``previous`` names it), and the first copy's other inputs."""
    return not copy.sources or (
        len(copy.sources) > 1 and copy.sources == [previous, *first.sources[1:]]
    )


def _bodies(root: Body) -> list[Body]:
    """Every body under ``root`` (not ``root`` itself), in pre-order; copies included."""
    out: list[Body] = []
    for st in root.statements:
        if isinstance(st.op, Body):
            for body in st.copies or [st.op]:
                out.append(body)
                out += _bodies(body)
    return out


def _height(body: Body) -> int:
    inner = [_height(st.op) for st in body.statements if isinstance(st.op, Body)]
    return 1 + max(inner) if inner else 0


def _number(value: Value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _class_name(cls: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in cls) or "Block"
    if not base[0].isalpha():
        base = f"Block{base}"
    if base in REGISTRY:
        base += "Block"
    return _unique(base, taken)


def _unique(base: str, taken: set[str]) -> str:
    if base not in taken and not keyword.iskeyword(base):
        return base
    i = 2
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


def _int(value: int) -> str:
    """``18_496`` for large numbers, as the specs write them."""
    return f"{value:_}" if abs(value) >= 10_000 else str(value)


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return f"'{value}'" if '"' in value else f'"{value}"'
    return "[" + ", ".join(_literal(v) for v in value) + "]"


def _call(op: LayerCall, arg: Any) -> str:
    """``Conv2d(32, kernel=3, padding=1)``: required positional arguments by position (an
    aliased one by its alias), the rest by name, each through ``arg`` (which counts numbers)."""
    cls = REGISTRY[op.kind]
    parts = []
    positional = True
    for key, value in op.args.items():
        field = cls.model_fields[key]
        text = arg(value) if _number(value) else _literal(value)
        if key == cls.variadic:
            assert isinstance(value, tuple)
            parts += [_literal(v) for v in value]
            continue
        if key in cls.references:
            text = str(value)  # a statement's name, written bare: tie=tok_emb
        in_place = len(parts) < len(cls.positional) and cls.positional[len(parts)] == key
        required = field.is_required() and not field.validation_alias
        if positional and in_place and (not parts or required):
            parts.append(text)
            continue
        positional = False
        alias = field.validation_alias if isinstance(field.validation_alias, str) else key
        parts.append(f"{alias}={text}")
    return f"{op.kind}({', '.join(parts)})" if parts else op.kind


def _wrap(line: str) -> str:
    """A statement longer than the line limit, its arguments aligned under the first."""
    if len(line) <= WIDTH or "(" not in line:
        return line
    head, _, rest = line.partition("(")
    pad = " " * (len(head) + 1)
    lines, current = [], head + "("
    for part in rest.split(", "):
        if len(current) + len(part) + 2 > WIDTH and current.strip() and not current.endswith("("):
            lines.append(current + ",")
            current = pad + part
        else:
            current += part if current.endswith("(") else ", " + part
    return "\n".join([*lines, current])


def _checks(st: Statement) -> list[str]:
    checks = []
    if st.params:
        checks.append(f"params == {_int(st.params)}")
    if st.buffers:
        checks.append(f"buffers == {_int(st.buffers)}")
    if st.shape is not None and (isinstance(st.op, Body) or st.params):
        checks.append(
            f"shape == [{', '.join(_literal(d) if isinstance(d, int) else d for d in st.shape)}]"
        )
    return checks

"""`dlspec fmt`: one canonical layout, comments kept, idempotent, meaning unchanged."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Lark, Tree

from dlspec.analysis.check import check_text
from dlspec.cli import main
from dlspec.syntax.format import LINE_LENGTH, format_text, format_tree, scan, spaced
from dlspec.syntax.parser import _parser, grammar_text, parse_tree

SPECS = sorted((ROOT / "specs").rglob("*.dl"))  # the shipped specs and the model zoo
SPEC_TEXTS = [p.read_text(encoding="utf-8") for p in SPECS]

MESSY = """\
# header

# second header
block B(c: int) {   # opener
    residual {  # main
        Conv2d(c, kernel=3, padding=1)   # inside
        # own
    } shortcut {
        Conv2d(c, kernel = 1)
    }   # after residual
    ReLU()
}
model M(a: int = 1,  # inside header
        b: int = 2) {
    input x: float[3, 8, 8]
    y = B(3) * (a + 1)
    z = Conv2d(4, kernel=1,   # in args
               padding=0)
    # between
    expect params == 20
    w = Conv2d(4, kernel=1)
    expect params == (4*4+4) - 0 + (-(a - a)),
    shape == [4, 8, 8]



    expect total params < 10M   # t
    train { epochs = 2  batch_size = 3  optimizer = Adam(lr=1e-3) }  # end train
}   # end
# trailing file comment
"""

MESSY_FORMATTED = """\
# header

# second header
block B(c: int) {  # opener
    residual {  # main
        Conv2d(c, kernel=3, padding=1)   # inside
        # own
    } shortcut {
        Conv2d(c, kernel=1)
    }  # after residual
    ReLU
}

# inside header
model M(a: int = 1, b: int = 2) {
    input x: float[3, 8, 8]
    y = B(3) * (a + 1)
    # in args
    z = Conv2d(4, kernel=1, padding=0)
    # between
    expect params == 20
    w = Conv2d(4, kernel=1)     expect params == 4 * 4 + 4 - 0 + -(a - a), shape == [4, 8, 8]

    expect total params < 10M   # t
    train {
        epochs = 2
        batch_size = 3
        optimizer = Adam(lr=1e-3)
    }  # end train
}  # end

# trailing file comment
"""


def fmt(text: str) -> str:
    formatted, diagnostics = format_text(text)
    assert formatted is not None, diagnostics
    return formatted


def meaning(text: str) -> dict[str, Any]:
    """The check report without source positions: what a spec means, not where it says it."""
    report = check_text(text, "spec.dl").report.model_dump()
    diagnostics = sorted((d["code"], d["message"]) for d in report.pop("diagnostics"))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            drop = {"line", "column", "end_line", "end_column"}
            return {k: strip(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {"report": strip(report), "diagnostics": diagnostics}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: str(p.relative_to(ROOT / "specs")))
def test_shipped_specs_are_formatted(spec: Path) -> None:
    text = spec.read_text(encoding="utf-8")
    assert fmt(text) == text, f"run `dlspec fmt {spec.name}`"
    assert all(len(line) <= LINE_LENGTH for line in text.splitlines() if "#" not in line)


def test_messy_spec_layout_keeps_every_comment() -> None:
    assert fmt(MESSY) == MESSY_FORMATTED
    assert fmt(MESSY_FORMATTED) == MESSY_FORMATTED
    assert meaning(MESSY) == meaning(MESSY_FORMATTED)
    assert [c.text for c in scan(MESSY)[0]] == [c.text for c in scan(MESSY_FORMATTED)[0]]


def test_long_calls_expects_and_sums_break_at_the_line_length() -> None:
    text = (
        "model Wide(a_long_parameter_name: int = 1, another_long_parameter: int = 2, "
        "a_third_one: int = 3, fourth: int = 4) {\n"
        "    input x: float[3, 8, 8]\n"
        "    Flatten\n"
        "    fc = Linear(a_long_parameter_name + another_long_parameter, bias=true, "
        "in_features=192, tie_nothing_here=1)\n"
        "    h = Linear(8) expect params == 192 * 8 + 8 + 0 * a_long_parameter_name "
        "+ 0 * another_long_parameter + 0 * a_third_one, shape == [8]\n"
        "}\n"
    )
    assert fmt(text) == WIDE
    assert all(len(line) <= LINE_LENGTH for line in WIDE.splitlines())


WIDE = """\
model Wide(a_long_parameter_name: int = 1, another_long_parameter: int = 2, a_third_one: int = 3,
           fourth: int = 4) {
    input x: float[3, 8, 8]
    Flatten
    fc = Linear(a_long_parameter_name + another_long_parameter, bias=true, in_features=192,
                tie_nothing_here=1)
    h = Linear(8)   expect params == 192 * 8 + 8 + 0 * a_long_parameter_name
                                   + 0 * another_long_parameter + 0 * a_third_one,
                           shape == [8]
}
"""


def perturbed(text: str, draw: st.DrawFn) -> str:
    """``text`` with its layout changed but not its meaning or its comments' places: spaces
    added, removed or turned into line breaks, blank lines kept."""
    ends = [0]
    for tok in _parser().parse_interactive(text).iter_parse():
        ends += [tok.start_pos or 0, tok.end_pos or 0]
    ends.append(len(text))
    out = []
    for k in range(0, len(ends), 2):  # gaps between tokens, then the next token
        gap = text[ends[k] : ends[k + 1]]
        pieces = re.split(r"(#[^\n]*)", gap)
        for p, piece in enumerate(pieces):
            if piece.startswith("#"):
                out.append(piece)
                continue
            before_comment = p + 1 < len(pieces)
            after_comment = p > 0
            newlines = min(piece.count("\n"), 2)
            if newlines == 0 and not before_comment and draw(st.booleans()):
                newlines = 1  # a break inside a statement
            elif newlines == 1 and not before_comment and not after_comment:
                newlines = draw(st.integers(0, 1))  # two statements on one line
            out.append("\n" * newlines + " " * draw(st.integers(0 if newlines else 1, 9)))
        if k + 2 < len(ends):
            out.append(text[ends[k + 1] : ends[k + 2]])
    return "".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SPEC_TEXTS), st.data())
def test_any_layout_of_a_spec_formats_to_the_canonical_one(text: str, data: st.DataObject) -> None:
    messy = perturbed(text, data.draw)
    assert fmt(messy) == text


SOURCE = MESSY
FRAGMENTS = ["(", ")", "{", "}", "=", "*", ",", "<-", "expect", "# c\n", "\n", "'x'", "-1"]
FRAGMENTS += ["**", "let v = ", " for i in range(2)"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(SOURCE)), st.integers(0, 8), st.sampled_from([*FRAGMENTS, ""])
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fmt_is_idempotent_and_keeps_the_meaning(edits: list[tuple[int, int, str]]) -> None:
    text = SOURCE
    for pos, cut, insert in edits:
        text = text[:pos] + insert + text[pos + cut :]
    formatted, diagnostics = format_text(text)
    if formatted is None:
        assert diagnostics and diagnostics[0].code.startswith("E1")
        return
    assert fmt(formatted) == formatted
    assert meaning(formatted) == meaning(text)
    assert sorted(c.text for c in scan(formatted)[0]) == sorted(c.text for c in scan(text)[0])


# whitespace the grammar skips (form feed, tab, carriage return) and line separators that only
# comments and strings may hold (str.splitlines splits at them, the parser does not)
SEPARATORS = ["\x0c", "\t", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x1c", "\x1d", "\x1e"]


@st.composite
def unusual_text(draw: st.DrawFn) -> str:
    """MESSY with separators inserted: bare (whitespace, or a syntax error), inside new
    comments, inside new strings, and inside its own comments."""
    text = SOURCE
    for _ in range(draw(st.integers(1, 6))):
        sep = draw(st.sampled_from(SEPARATORS))
        what = draw(st.sampled_from(["bare", "comment", "string"]))
        piece = {"bare": sep, "comment": f"  # a{sep}b\n", "string": f"'s{sep}t'"}[what]
        if what == "string":  # a string where one may stand: a model parameter's default
            text = text.replace("b: int = 2", f"b: int = 2, s: str = {piece}", 1)
            continue
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + piece + text[pos:]
    return text


def bare_calls(tree: Any) -> Any:
    """``tree`` with empty argument lists dropped, as fmt drops them."""
    if not isinstance(tree, Tree):
        return tree
    children = [bare_calls(c) for c in tree.children]
    children = [
        None if isinstance(c, Tree) and c.data == "arguments" and not any(c.children) else c
        for c in children
    ]
    return Tree(tree.data, children)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unusual_text())
def test_fmt_keeps_meaning_and_comments_across_unusual_whitespace(text: str) -> None:
    tree, _ = parse_tree(text)
    formatted, diagnostics = format_text(text)
    if tree is None:
        assert formatted is None and diagnostics[0].code.startswith("E1")
        return
    assert formatted is not None
    # the same parse tree, tokens and structure (fmt writes `ReLU()` as `ReLU`)
    assert bare_calls(parse_tree(formatted)[0]) == bare_calls(tree)
    assert sorted(c.text for c in scan(formatted)[0]) == sorted(c.text for c in scan(text)[0])
    assert fmt(formatted) == formatted


def test_fmt_refuses_stdin_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"model M {\xff}\n")))
    assert main(["fmt", "-"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "error[E003]: standard input is not UTF-8 text" in captured.err


def test_fmt_command_check_rewrite_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.dl"
    good.write_text(MESSY_FORMATTED)
    bad = tmp_path / "bad.dl"
    bad.write_text(MESSY)
    assert main(["fmt", "--check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert out == f"would reformat {bad}\n1 of 2 specs are not formatted; run `dlspec fmt`\n"
    assert bad.read_text() == MESSY  # --check rewrites nothing

    assert main(["fmt", str(good), str(bad)]) == 0
    assert capsys.readouterr().out == f"formatted {bad}\n"
    assert bad.read_text() == MESSY_FORMATTED
    assert main(["fmt", "--check", str(good), str(bad)]) == 0

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(MESSY.encode())))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == MESSY_FORMATTED


def test_fmt_refuses_a_syntax_error_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.dl"
    broken.write_text("model M {\n    conv = Conv2d(3\n}\n")
    assert main(["fmt", str(broken)]) == 1
    assert "error[E101]" in capsys.readouterr().err
    assert broken.read_text() == "model M {\n    conv = Conv2d(3\n}\n"
    assert main(["fmt", str(tmp_path / "missing.dl")]) == 2
    assert "error[E001]" in capsys.readouterr().err


CONDITIONAL = """\
block Dec(d: int, deep: bool) <- tgt, memory {  # two inputs
    # before the choice
    if d == 1 and not (deep or input.shape[0] < 2 * d) {  # opener
        x = Add <- tgt, memory
    } else if deep {
    } else {
        x = Linear(memory.shape[0]) <- tgt   # kept
    }
    y = Linear(d)
}
"""


def test_if_else_and_block_inputs_layout() -> None:
    messy = CONDITIONAL.replace(" <- tgt, memory {", "<-tgt,memory{").replace("} else", "}\nelse")
    messy = messy.replace("not (deep or", "not(deep or").replace("< 2 * d", "<2*d")
    assert fmt(messy) == CONDITIONAL
    assert meaning(messy) == meaning(CONDITIONAL)


def test_a_rule_without_a_layout_is_written_from_its_tokens() -> None:
    """The grammar of the memory budget (``expect total train_memory(...) < 8GiB``, sizes in
    bytes), added to this one: its check has arguments this module has no layout for."""
    grammar = grammar_text().replace(
        "check: NAME COMPARE value",
        'check: NAME [check_args] COMPARE value\ncheck_args: "(" [arg ("," arg)* [","]] ")"',
    )
    grammar = grammar.replace("[KMGT]?(?!", "([KMGT]i?B|[KMGT])?(?!")
    parser = Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)
    text = (
        "model M {input x: float[8]  fc = Linear(8)\n"
        'expect total train_memory( batch = 32,precision="bf16" )<8GiB, params < 1M}\n'
    )
    expected = (
        "model M {\n    input x: float[8]\n    fc = Linear(8)\n"
        '    expect total train_memory(batch=32, precision="bf16") < 8GiB, params < 1M\n}\n'
    )
    formatted = format_tree(text, parser.parse(text))
    assert formatted == expected
    assert format_tree(formatted, parser.parse(formatted)) == formatted


@pytest.mark.parametrize(
    ("source", "spaced_text"),
    [
        ("f( a = -1,b ) <-x,y", "f(a=-1, b) <- x, y"),
        ("x=- a*( -b ) # c", "x = -a * (-b)"),
        ("if not-a<= input . shape [0] {", "if not -a <= input.shape[0] {"),
        ("s = 'a # b' + 1e-3", "s = 'a # b' + 1e-3"),
    ],
)
def test_tokens_take_the_canonical_spacing(source: str, spaced_text: str) -> None:
    assert spaced(source) == spaced_text
    assert spaced(spaced_text) == spaced_text


def expressions(names: list[str]) -> st.SearchStrategy[str]:
    """Random expressions over ``names``, numbers and ``input.shape[i]``."""
    leaves = st.one_of(
        st.sampled_from(names), st.integers(0, 9).map(str), st.just("input.shape[0]")
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "//"]), inner).map(" ".join),
            inner.map(lambda e: f"({e})"),
            inner.map(lambda e: f"-{e}"),
        ),
        max_leaves=4,
    )


@st.composite
def conditions(draw: st.DrawFn, names: list[str]) -> str:
    expr = expressions(names)
    compare = st.tuples(expr, st.sampled_from(["==", "!=", "<", ">=", "<="]), expr).map(" ".join)
    return draw(
        st.recursive(
            st.one_of(compare, st.sampled_from(names)),
            lambda inner: st.one_of(
                st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
                inner.map(lambda c: f"not {c}"),
                inner.map(lambda c: f"({c})"),
            ),
            max_leaves=3,
        )
    )


@st.composite
def conditional_blocks(draw: st.DrawFn) -> str:
    """A block with one or more named inputs and nested if / else if / else choices, a
    comment or a blank line here and there, in a random layout."""
    inputs = draw(st.lists(st.sampled_from(["a", "b", "memory"]), min_size=1, max_size=3))
    names = ["n", "flag"]

    def body(depth: int) -> str:
        lines = []
        for _ in range(draw(st.integers(0, 3))):
            choice = draw(st.integers(0, 3 if depth < 2 else 1))
            if choice == 0:
                lines.append(f"x = Linear({draw(expressions(names))})")
            elif choice == 1:
                lines.append("y = Add <- " + ", ".join(sorted(set(inputs))))
            else:
                text = f"if {draw(conditions(names))} {{ {body(depth + 1)}\n}}"
                while draw(st.booleans()) and depth < 2:
                    head = "else if " + draw(conditions(names)) if draw(st.booleans()) else "else"
                    text += f" {head} {{ {body(depth + 1)}\n}}"
                    if head == "else":
                        break
                lines.append(text)
            lines.append(draw(st.sampled_from(["", "# c", "\n"])))
        return "\n".join(lines)

    sources = ", ".join(dict.fromkeys(inputs))
    block = f"block B(n: int, flag: bool) <- {sources} {{\n{body(0)}\n}}\n"
    model = (
        "model M { input x: float[4]\n B(2, true) <- x" + ", x" * (len(set(inputs)) - 1) + " }\n"
    )
    return block + model


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conditional_blocks())
def test_generated_if_else_blocks_format_idempotently(text: str) -> None:
    formatted, diagnostics = format_text(text)
    assert formatted is not None, diagnostics
    assert fmt(formatted) == formatted
    assert meaning(formatted) == meaning(text)
    assert sorted(c.text for c in scan(formatted)[0]) == sorted(c.text for c in scan(text)[0])


SEVERAL = """\
model M {
    input x: float[4, 12]
    q, k, v = Chunk(3) <- x   # three outputs
    s = Add <- q, k
    output s, v
}
"""


def test_several_names_layout() -> None:
    messy = SEVERAL.replace("q, k, v = Chunk(3)", "q,k ,  v=Chunk( 3 )")
    assert fmt(messy) == SEVERAL
    assert meaning(messy) == meaning(SEVERAL)

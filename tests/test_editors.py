"""The VS Code extension in editors/vscode: its manifest points at real files, and its
highlighting knows every keyword of the grammar."""

from __future__ import annotations

import json
import re

from conftest import ROOT

VSCODE = ROOT / "editors" / "vscode"


def test_manifest_files_exist() -> None:
    manifest = json.loads((VSCODE / "package.json").read_text())
    assert (VSCODE / manifest["main"]).is_file()
    (language,) = manifest["contributes"]["languages"]
    assert language["extensions"] == [".dl"]
    json.loads((VSCODE / language["configuration"]).read_text())
    (grammar,) = manifest["contributes"]["grammars"]
    assert grammar["language"] == language["id"]
    assert (VSCODE / grammar["path"]).is_file()
    command = manifest["contributes"]["configuration"]["properties"]["dlspec.command"]
    assert command["default"] == ["dlspec", "lsp"]


def test_highlighting_covers_the_grammar_keywords() -> None:
    grammar = json.loads((VSCODE / "syntaxes" / "dlspec.tmLanguage.json").read_text())
    patterns = {name: re.compile(rule["match"]) for name, rule in grammar["repository"].items()}
    lines = (ROOT / "grammar" / "dlspec.lark").read_text().splitlines()
    lark = "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    keywords = set(re.findall(r'"([a-z]+)"', lark))
    assert keywords >= {  # every keyword of the grammar, whatever it adds, is highlighted
        "model",
        "block",
        "input",
        "output",
        "residual",
        "shortcut",
        "expect",
        "total",
        "train",
    }
    for word in keywords - {"model", "block"}:
        assert patterns["keyword"].fullmatch(word), word
    assert patterns["definition"].match("block Basic")
    for number in ("18_496", "1e-3", "10M", "0.5"):
        assert patterns["number"].fullmatch(number), number
    assert patterns["comment"].search("x = 1  # note").group() == "# note"

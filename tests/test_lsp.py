"""The language server, driven over its protocol (a `dlspec lsp` subprocess on stdio)."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_lsp
from conftest import ROOT
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from dlspec.analysis.check import check_file
from dlspec.analysis.render import human_bytes
from dlspec.syntax.format import format_text


@pytest_lsp.fixture(
    config=ClientServerConfig(server_command=[sys.executable, "-m", "dlspec", "lsp"])
)
async def client(lsp_client: LanguageClient) -> AsyncIterator[None]:
    await lsp_client.initialize_session(
        types.InitializeParams(capabilities=types.ClientCapabilities())
    )
    yield
    await lsp_client.shutdown_session()


async def open_spec(client: LanguageClient, path: Path, text: str | None = None) -> str:
    """Open ``path`` (with ``text`` in the editor) and wait for its diagnostics."""
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(
                uri=uri, language_id="dlspec", version=1, text=text or path.read_text()
            )
        )
    )
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    return uri


def spec_copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text((ROOT / "specs" / name).read_text())
    return path


async def test_diagnostics_match_check(client: LanguageClient, tmp_path: Path) -> None:
    path = spec_copy(tmp_path, "seed_prose.dl")
    uri = await open_spec(client, path)
    expected = check_file(path).report.diagnostics
    got = client.diagnostics[uri]
    assert [d.code for d in got] == [d.code for d in expected] == ["W504", "E301"]
    for lsp, diag in zip(got, expected, strict=True):
        assert lsp.message.splitlines() == [diag.message, *diag.notes]
        start, end = lsp.range.start, lsp.range.end
        assert (start.line + 1, start.character + 1) == (diag.line, diag.column)
        assert (end.line + 1, end.character + 1) == (diag.end_line, diag.end_column)
    assert got[1].severity == types.DiagnosticSeverity.Error


async def test_diagnostics_follow_edits(client: LanguageClient, tmp_path: Path) -> None:
    path = spec_copy(tmp_path, "mlp.dl")
    uri = await open_spec(client, path)
    assert list(client.diagnostics[uri]) == []
    broken = path.read_text().replace("ReLU", "Relu", 1)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=broken)],
        )
    )
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    (diag,) = client.diagnostics[uri]
    assert diag.code == "E201"
    assert (diag.range.start.line, diag.range.start.character) == (4, 4)


async def hover(client: LanguageClient, uri: str, line: int, character: int = 6) -> str | None:
    result = await client.text_document_hover_async(
        types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )
    if result is None:
        return None
    assert isinstance(result.contents, types.MarkupContent)
    return result.contents.value


async def test_hover_shows_shape_params_macs_memory(client: LanguageClient, tmp_path: Path) -> None:
    path = spec_copy(tmp_path, "cnn.dl")
    uri = await open_spec(client, path)
    text = await hover(client, uri, 5)  # conv2 = Conv2d(64, kernel=3, padding=1)
    assert text == README_HOVER
    assert await hover(client, uri, 0) is None  # a comment

    # the oracle: the generated torch module's parameters and output for conv2 and fc1
    import torch

    import dlspec

    model = dlspec.load(path).to_torch()
    outputs: dict[str, torch.Tensor] = {}
    for name in ("conv2", "fc1"):
        module = getattr(model, name)
        module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    model(torch.zeros(1, 3, 48, 48))
    for name, line in (("conv2", 5), ("fc1", 13)):
        shown = await hover(client, uri, line)
        assert shown is not None
        numbers = dict(re.findall(r"^(\w+) +(.*)$", shown, re.M))
        params = sum(p.numel() for p in getattr(model, name).parameters())
        assert numbers["params"] == f"{params:,}"
        shape = list(outputs[name].shape[1:])
        assert numbers["output"] == str(shape)
        output, weights = human_bytes(4 * outputs[name].numel()), human_bytes(4 * params)
        assert numbers["memory"] == f"weights {weights}, output {output} per sample (fp32)"


async def test_hover_on_symbolic_shapes(client: LanguageClient, tmp_path: Path) -> None:
    uri = await open_spec(client, spec_copy(tmp_path, "lstm_lm.dl"))
    text = await hover(client, uri, 5)  # embed = Embedding(vocab, 128)
    assert text is not None
    assert "output   [T, 128] = [128, 128] at T=128" in text


async def definition(client: LanguageClient, uri: str, line: int, character: int) -> int | None:
    result = await client.text_document_definition_async(
        types.DefinitionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )
    assert result is None or isinstance(result, types.Location)
    return None if result is None else result.range.start.line


async def test_go_to_definition(client: LanguageClient, tmp_path: Path) -> None:
    uri = await open_spec(client, spec_copy(tmp_path, "resnet_block.dl"))
    assert await definition(client, uri, 31, 14) == 1  # layer1 = Basic(16) -> block Basic
    assert await definition(client, uri, 32, 14) == 12  # layer2 = Down(32) -> block Down
    assert await definition(client, uri, 31, 0) is None  # indentation
    uri = await open_spec(client, spec_copy(tmp_path, "transformer.dl"))
    assert await definition(client, uri, 9, 44) == 6  # `<- src` -> input src


async def complete(client: LanguageClient, uri: str, line: int, character: int) -> list[str]:
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )
    assert isinstance(result, types.CompletionList)
    return [item.label for item in result.items]


async def test_completion_of_kinds_and_arguments(client: LanguageClient, tmp_path: Path) -> None:
    path = spec_copy(tmp_path, "resnet_block.dl")
    lines = path.read_text().splitlines()
    for text, expected in (
        ("    x = Conv2d(16, ", {"kernel", "stride", "padding", "bias"}),
        ("    x = Conv2d(16, kernel=3,\n               ", {"padding", "bias"}),
        ("    x = Basic(", {"channels"}),
        ("    y = ", {"Conv2d", "Linear", "LSTM", "Basic", "Down"}),
        ("    y = Conv2d(3) * 2\n    ", {"Conv2d", "Basic"}),
    ):
        edited = [*lines[:28], text]
        uri = await open_spec(client, path, "\n".join(edited))
        row = len(edited) + text.count("\n") - 1
        assert expected <= set(await complete(client, uri, row, len(text.split("\n")[-1])))


async def test_formatting_is_fmt(client: LanguageClient, tmp_path: Path) -> None:
    path = tmp_path / "messy.dl"
    messy = "model M(n:int=4){input x:float[8]\n  fc=Linear(n) expect params==(8+1)*n # c\n}"
    uri = await open_spec(client, path, messy)
    edits = await client.text_document_formatting_async(
        types.DocumentFormattingParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            options=types.FormattingOptions(tab_size=4, insert_spaces=True),
        )
    )
    assert edits is not None
    (edit,) = edits
    assert (edit.range.start.line, edit.range.start.character) == (0, 0)
    assert edit.range.end.line >= 2
    assert edit.new_text == format_text(messy)[0]


README_HOVER = """\
```text
conv2: Conv2d(64, k=3, p=1)
kind     Conv2d (convolution)
output   [64, 48, 48]
params   18,496
MACs     42,614,784
memory   weights 72.25 KiB, output 576.00 KiB per sample (fp32)
```"""


def test_the_manual_shows_this_hover() -> None:
    assert README_HOVER in (ROOT / "docs" / "editing.md").read_text()


async def test_hover_and_definition_of_several_outputs(
    client: LanguageClient, tmp_path: Path
) -> None:
    path = tmp_path / "split.dl"
    path.write_text(
        "model M {\n    input x: float[6, 12]\n    q, k, v = Chunk(3)\n    s = Add <- q, v\n}\n"
    )
    uri = await open_spec(client, path)
    text = await hover(client, uri, 2)
    assert text is not None
    assert "output   q [6, 4]\n         k [6, 4]\n         v [6, 4]" in text
    assert "output 288 B per sample" in text  # the three of them: 3 x 24 floats
    assert await definition(client, uri, 3, 18) == 2  # `v` in `<- q, v`


async def test_hover_keeps_the_figures_of_a_document_with_errors(
    client: LanguageClient, tmp_path: Path
) -> None:
    """While typing, a document is never free of errors: the statements that analyze keep
    their hover (the figures of the spec without the error), the one in error has none."""
    path = spec_copy(tmp_path, "cnn.dl")
    lines = path.read_text().splitlines()
    assert lines[16].lstrip().startswith("fc2 = Linear")
    lines.insert(17, "    bad = Linear(10, in_features=99)")  # the wrong in_features
    uri = await open_spec(client, path, "\n".join(lines) + "\n")
    assert [d.code for d in client.diagnostics[uri]] == ["E401"]
    assert await hover(client, uri, 5) == README_HOVER  # conv2, before the error
    assert await hover(client, uri, 17) is None  # the statement in error
    # beside the error: a branch that does not read what failed keeps its figures, which
    # are those of the document once the error is fixed
    two = "model Two {{\n input x: float[8]\n input y: float[8]\n {}\n b = Linear(4) <- y\n}}\n"
    broken = await open_spec(
        client, tmp_path / "two.dl", two.format("a = Linear(16, in_features=3) <- x")
    )
    assert [d.code for d in client.diagnostics[broken]] == ["E401"]
    fixed = await open_spec(client, tmp_path / "fixed.dl", two.format("a = Linear(16) <- x"))
    beside = await hover(client, broken, 4)
    assert beside is not None and "params   36" in beside
    assert beside == await hover(client, fixed, 4)


async def test_lets_and_loop_indexes(client: LanguageClient, tmp_path: Path) -> None:
    """Hover shows what a let computes; definition finds a let and a loop index; completion
    inside a call offers them."""
    path = tmp_path / "wave.dl"
    path.write_text((ROOT / "specs" / "zoo" / "wavenet.dl").read_text())
    lines = path.read_text().splitlines()
    let = next(i for i, line in enumerate(lines) if line.strip().startswith("let n ="))
    loop = next(i for i, line in enumerate(lines) if " for i in range(" in line)
    uri = await open_spec(client, path)
    assert await hover(client, uri, let) == "```text\nn = 40\n```"
    column = lines[loop].index("range(n") + len("range(")
    assert await definition(client, uri, loop, column) == let  # n -> let n
    column = lines[loop].index("2 ** ((i") + len("2 ** ((")
    assert await definition(client, uri, loop, column) == loop  # i -> for i
    edited = [*lines[: loop + 1], "    Conv1d(4, kernel="]
    uri = await open_spec(client, path, "\n".join(edited))
    assert {"n", "i"} <= set(await complete(client, uri, loop + 1, len(edited[-1])))

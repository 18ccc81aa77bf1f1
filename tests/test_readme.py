"""The manual (the README and the pages under docs/): its generated tables are current, every
`$ ` command in its console blocks runs and prints what the page shows, on any machine (with
or without native bf16 or a GPU), without writing into the checkout, the README stays a
front page, and the site builds strictly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from dlspec.docs import manual_pages, render

PAGES = manual_pages(ROOT)
README_LINES = 250  # a front page: the rest is the manual's


def console_commands() -> list[tuple[str, list[str]]]:
    """Every page's commands with the output shown, pages in reading order."""
    commands = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```console\n(.*?)```", text, re.S):
            current: tuple[str, list[str]] | None = None
            for line in block.splitlines():
                if line.startswith("$ "):
                    current = (line[2:], [])
                    commands.append(current)
                elif current is not None:
                    current[1].append(line)
    return commands


# Commands whose figures depend on timing or floating-point details of the machine: their
# output must have the README's lines and layout, with any numbers.
MEASURED = (
    "dlspec build",
    "dlspec export",
    "dlspec bench",
    "dlspec predict",
    "dlspec sample",
    "mkdir -p build/import && dlspec import",
)

# What else depends on the machine, normalised in MEASURED output: the arithmetic a CPU with
# or without native bf16 trains in, and the device (a GPU's).
_MACHINE = [
    (re.compile(r"\b(bfloat16|float16|fp32)\b"), "<precision>"),
    (re.compile(r"\bdevice (cpu|cuda(:\d+)?)\b"), "device <device>"),
    (re.compile(r"\b(CPU|CUDA)\b"), "<device>"),
]


def _mask(lines: list[str]) -> list[str]:
    masked = []
    for line in lines:
        if line.startswith("CUDA "):  # bench's rows for a GPU, where there is one
            continue
        for pattern, replacement in _MACHINE:
            line = pattern.sub(replacement, line)
        masked.append(" ".join(re.sub(r"\d[\d,]*(\.\d+)?", "#", line).split()))
    return masked


def matches(command: str, expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality; numbers and the machine's precision and device masked for
    MEASURED commands."""
    if command.startswith(MEASURED):
        return _mask(expected) == _mask(actual)
    return expected == actual


def _unsupported(command: str) -> str | None:
    """Why this machine cannot run a README command as shown, or None."""
    graphviz = command.startswith("dlspec draw") and "--format html" not in command
    if graphviz and shutil.which("dot") is None:
        return "Graphviz's dot is not installed (draw then writes .dot only, and exits 3)"
    if "--nproc-per-node 2" in command and (os.cpu_count() or 1) < 2:
        return "one CPU core: two training processes are refused"
    return None


COMMANDS = console_commands()


class Runner:
    """Runs the manual's commands in order, each once (a command shown again, as the README's
    tour shows the pages', is not run again), in a scratch copy of the layout they expect
    (specs/, tests/, docs/examples/ linked from the checkout; build/ and docs/images/ fresh),
    so that a later command finds what an earlier one wrote and nothing is written into the
    checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("specs", "tests"):
            (root / name).symlink_to(ROOT / name)
        (root / "docs" / "images").mkdir(parents=True)
        (root / "docs" / "examples").symlink_to(ROOT / "docs" / "examples")
        self.outputs: list[str] = []
        self.ran: dict[str, str] = {}  # command -> its output

    def output(self, index: int) -> str:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env["COLUMNS"] = "100"
        while len(self.outputs) <= index:
            command = COMMANDS[len(self.outputs)][0]
            if _unsupported(command):
                self.outputs.append("")
                continue
            if command in self.ran:
                self.outputs.append(self.ran[command])
                continue
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=self.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.ran[command] = result.stdout + result.stderr
            self.outputs.append(self.ran[command])
        return self.outputs[index]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(tmp_path_factory.mktemp("readme"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_generated_sections_are_current(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert render(text) == text, "run `make docs`"


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_LINES, f"the README has {lines} lines: move sections to docs/"


def test_every_page_is_in_the_manual() -> None:
    """Every Markdown page under docs/ is in mkdocs.yml's nav (and so in the tests)."""
    assert {p.name for p in (ROOT / "docs").glob("*.md")} == {p.name for p in PAGES[:-1]}


def test_machine_dependent_output_is_normalised() -> None:
    readme = ["data: digits (train 1,293; 10 classes); device cpu, bfloat16"]
    here = ["data: digits (train 1,293; 10 classes); device cuda:0, fp32"]
    assert matches("dlspec build x", readme, here)
    assert not matches("dlspec build x", readme, ["data: mnist; device cpu, fp32"])


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=lambda i: COMMANDS[i][0][:60])
def test_readme_command(index: int, runner: Runner) -> None:
    command, expected = COMMANDS[index]
    if reason := _unsupported(command):
        pytest.skip(reason)
    output = runner.output(index)
    actual = output.rstrip("\n").splitlines()
    assert matches(command, expected, actual), (
        "the manual shows:\n" + "\n".join(expected) + "\n\ngot:\n" + output
    )


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "-d", str(site)], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs-material is a dev dependency: make install")
    result = build_site(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "draw" / "index.html").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("[a link](nowhere.md)", "nowhere.md"),
        ("[an anchor](check.md#nowhere)", "nowhere"),
        (f"{'<' * 7} ours\na\n{'=' * 7}\nb\n{'>' * 7} theirs\n", "merge conflict markers"),
    ],
    ids=["link", "anchor", "conflict"],
)
def test_a_broken_page_fails_the_site(tmp_path: Path, change: str, message: str) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs-material is a dev dependency: make install")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "diff.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n" + change + "\n", encoding="utf-8")
    result = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and message in result.stderr, result.stderr

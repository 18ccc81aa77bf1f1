"""Fuzzing the command line and the language server with hostile input (issue 26).

* CLI mode: random invocations of every command, with options and values drawn from the
  command's own argparse definition (its flags, choices and types) and from a pool of hostile
  values (400-digit numbers, inf, nan, 1e-320, 2**64, paths that are the command's input, a
  FIFO, a directory, a device, a symbolic link). Each runs in a forked child (the parent has
  dlspec imported, so a run costs no interpreter start) under a 30 s limit. A run fails when
  it exits 70 (the internal error an escaping exception becomes) or by a signal, prints a
  traceback, runs past the limit, or changes a file other than the outputs it names.
* LSP mode: random message sequences to one `dlspec lsp` process: documents opened and
  edited with random text, requests at random positions and on URIs never opened (a FIFO,
  /dev/zero), and malformed frames (bad, short and huge Content-Length, bodies that are not
  JSON or not objects, params of the wrong type). After each sequence a request must be
  answered within 30 s; no reply may be an internal error; stderr holds no traceback.

``python tests/fuzz_surfaces.py --cli 2000 --lsp 2000 [--seed S]`` is part of ``make fuzz``;
``tests/test_fuzz_surfaces.py`` runs a few dozen of each.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 30.0  # seconds a run or an answer may take
INTERNAL = 70  # dlspec.cli.EXIT_INTERNAL

SPEC = """\
model Small(width: int = 8) {
    input x: float[4]
    Linear(width)  # hidden
    ReLU
    Linear(3)
    train { epochs = 1  batch_size = 8  val_split = 0 }
}
"""

BROKEN = "model Broken {\n    input x: float[4]\n    Linear(3, bogus=1)\n}\n"

# values an option may be given: numbers out of every range, and paths of every kind
NUMBERS = ["0", "1", "2", "-1", "1.5", "1e-320", "1e308", "inf", "-inf", "nan", "9" * 400]
NUMBERS += [str(2**64), str(2**63), "10000", "1000000000", "abc", "", "0x10", "1_000"]
SIZES = ["1", "1K", "1MiB", "1GiB", "24G", "1P", "-3G", "0", "9" * 400 + "G", "1e400GiB"]
PATHS = ["small.dl", "broken.dl", "link.dl", "fifo", "dir", "/dev/null", "missing/x.dl"]
PATHS += ["out.onnx", "out.svg", "out.dot", "out.dl", "out.png", "out.npz", "m.onnx", "d.onnx"]
PATHS += ["data.npz", "-", "small.dl:Nothing", "\udcff.dl", "out\n.dl"]
TEXTS = ["x", "", "a" * 2000, "\u2028", "width=3", "width=" + "9" * 400, "width=1e400"]
TEXTS += ["num_classes=3", "=", "float[4]", "long[T]", "float[600000000]"]
# plausible values, so that runs get past the options into the command's work
GOOD = {"numbers": ["1", "2", "3"], "sizes": ["1GiB", "64M"], "texts": ["width=3", "float[4]"]}
GOOD["paths"] = ["out.onnx", "out.svg", "out.dl", "out.png", "outdir"]
INPUTS = {  # a command's plausible positionals
    "predict": ["m.onnx", "data.npz"],
    "sample": ["d.onnx"],
    "import": ["m.onnx"],
    "bench": ["m.onnx"],
}
# options that wait for ever by design (--watch) or start long work (training)
SKIP = {"--watch", "-h", "--help", "--version"}


@dataclass
class Run:
    argv: list[str]
    code: int | None  # None: killed at the limit
    seconds: float
    out: str
    err: str
    changed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.code is None:
            found.append(f"no exit within {LIMIT:.0f} s")
        elif self.code == INTERNAL or self.code < 0:
            found.append(f"exit {self.code}")
        if "Traceback (most recent call last)" in self.err + self.out:
            found.append("a traceback")
        if self.changed:
            found.append(f"changed files it does not name: {self.changed}")
        return found


# the workspace ---------------------------------------------------------------------------


def onnx_model(path: Path, metadata: dict[str, str]) -> Path:
    """A one-node ONNX model (Identity on float[N, 4]) with ``metadata``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


#: What `dlspec export` writes for a diffusion model: 1x2x2 images of the one class "a".
DIFFUSION_METADATA = {
    "dlspec.classes": '["a"]',
    "dlspec.diffusion": json.dumps(
        {
            "order": ["image", "timestep", "prompt"],
            "image": [1, 2, 2],
            "prompt_length": 1,
            "token_limit": 4,
            "schedule": "linear",
            "timesteps": 10,
            "prediction": "epsilon",
            "sampler": "ddim",
            "sample_steps": 2,
            "guidance": 1.0,
        }
    ),
}


def denoiser_inputs() -> list[Any]:
    """The inputs of a diffusion model of DIFFUSION_METADATA, in its order: the image x, the
    timestep t and the prompt's one token."""
    from onnx import TensorProto, helper

    return [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2]),
        helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("prompt", TensorProto.INT64, ["N", 1]),
    ]


def denoiser_model(path: Path) -> Path:
    """A diffusion model for `dlspec sample`: y = x, with DIFFUSION_METADATA."""
    import onnx
    from onnx import TensorProto, helper

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 2, 2])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "denoiser", denoiser_inputs(), [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, DIFFUSION_METADATA)
    onnx.save(model, path)
    return path


def make_workspace(directory: Path) -> None:
    """The files the invocations name: specs, data, models (a classifier, a denoiser), a FIFO,
    a directory, a link."""
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "small.dl").write_text(SPEC)
    (directory / "broken.dl").write_text(BROKEN)
    (directory / "link.dl").symlink_to("small.dl")
    (directory / "dir").mkdir()
    os.mkfifo(directory / "fifo")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.savez(directory / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    onnx_model(directory / "m.onnx", {"dlspec.classes": '["a", "b", "c", "d"]'})
    denoiser_model(directory / "d.onnx")


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every regular file under ``directory``: its content's hash and its mode."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(directory))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mode,
            )
    return files


def named_outputs(argv: list[str], directory: Path) -> set[Path]:
    """The files an invocation may write: the values of its output options, their .dot
    fallback, fmt's specs and the default outputs beside the specs (and what a build writes
    in its --out directory)."""
    command, allowed = argv[0], set()
    for index, arg in enumerate(argv[:-1]):
        if arg in ("--out", "-o", "--weights") and not (command == "export" and arg == "--weights"):
            allowed.add(directory / argv[index + 1])
    for path in list(allowed):
        allowed.add(path.with_suffix(".dot"))
    if command in ("draw", "export"):  # default: SPEC's name .onnx, or .FORMAT, in the cwd
        from dlspec.commands.draw import FORMATS

        spec = next((a for a in argv[1:] if not a.startswith("-")), "")
        stem = Path(spec).stem
        allowed |= {directory / f"{stem}.{ext}" for ext in ("onnx", *FORMATS)}
    if command == "fmt" and "--check" not in argv:
        allowed |= {(directory / a).resolve() for a in argv[1:] if not a.startswith("-")}
    return {p.resolve() if _exists(p) else p for p in allowed}


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; False for a name the system refuses (too long, ...)."""
    try:
        return path.exists()
    except OSError:
        return False


# the command line ----------------------------------------------------------------------------


def command_options() -> dict[str, tuple[list[argparse.Action], list[argparse.Action]]]:
    """Each command's positional and optional arguments, from its argparse definition."""
    from dlspec.cli import COMMANDS, build_parser

    parser = build_parser(tuple(COMMANDS))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {}
    for name, command in sub.choices.items():
        if command.get_default("run") is None:
            continue
        positional = [a for a in command._actions if not a.option_strings]
        optional = [
            a for a in command._actions if a.option_strings and not SKIP & set(a.option_strings)
        ]
        commands[name] = (positional, optional)
    return commands


def value_for(action: argparse.Action, rng: random.Random) -> str:
    """A value for ``action``: one of its choices, or a hostile one of a plausible kind."""
    if action.choices and rng.random() < 0.7:
        return str(rng.choice(list(action.choices)))
    kinds = ["numbers", "sizes", "paths", "texts"]
    metavar = str(action.metavar or action.dest).lower()
    if any(word in metavar for word in ("size", "memory")):
        kinds = ["sizes"]
    elif any(word in metavar for word in ("out", "file", "dir", "checkpoint", "weights")):
        kinds = ["paths"]
    elif any(word in metavar for word in ("set", "name", "type", "input", "prompt", "text")):
        kinds = ["texts"]
    elif metavar in ("n", "s", "k", "t", "w", "seconds", "rate", "batch", "seed", "num"):
        kinds = ["numbers"]
    kind = rng.choice(kinds)
    hostile = {"numbers": NUMBERS, "sizes": SIZES, "paths": PATHS, "texts": TEXTS}[kind]
    return rng.choice(GOOD[kind] if rng.random() < 0.5 else hostile)


def invocation(
    rng: random.Random, commands: dict[str, tuple[list[argparse.Action], list[argparse.Action]]]
) -> list[str]:
    """A random command line: the command, its positionals, up to five random options."""
    name = rng.choice(sorted(commands))
    positional, optional = commands[name]
    argv = [name]
    plausible = INPUTS.get(name, ["small.dl"])
    for index, action in enumerate(positional):
        count = 1 if action.nargs in (None, "?") or rng.random() < 0.7 else 2
        for _ in range(count):
            good = plausible[min(index, len(plausible) - 1)]
            argv.append(good if rng.random() < 0.6 else rng.choice(PATHS))
    chosen = [a for a in optional if a.required and rng.random() < 0.9]
    chosen += [rng.choice(optional) for _ in range(rng.randint(0, 4) if optional else 0)]
    for action in chosen:
        argv.append(rng.choice(action.option_strings))
        if action.nargs != 0:
            argv.append(value_for(action, rng))
    if name == "build":  # training is a long run by design: build the model only
        argv.append("--no-train")
    return argv


def run_forked(argv: list[str], directory: Path, limit: float = LIMIT) -> Run:
    """``dlspec ARGV`` in a forked child working in ``directory`` (stdin empty)."""
    out = tempfile.NamedTemporaryFile(prefix="dlspec-fuzz-", delete=False)  # noqa: SIM115
    err = tempfile.NamedTemporaryFile(prefix="dlspec-fuzz-", delete=False)  # noqa: SIM115
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 99
        try:
            os.chdir(directory)
            os.setsid()  # its own process group: killed whole at the limit
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the child's streams)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            from dlspec.cli import main

            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # what escaped main: the parent sees exit 99 and the trace
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    code: int | None = None
    while time.monotonic() - started < limit:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.01)
    else:
        for target in (-pid, pid):  # its process group, then itself
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGKILL)
        os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    texts = []
    for handle in (out, err):
        handle.close()
        texts.append(Path(handle.name).read_text(errors="backslashreplace"))
        os.unlink(handle.name)
    return Run(argv, code, seconds, texts[0], texts[1])


def fuzz_cli(count: int, seed: int, log: Callable[[str], None] = print) -> list[Run]:
    """``count`` random invocations from ``seed``; the runs that failed."""
    rng = random.Random(seed)
    commands = command_options()
    failed = []
    with tempfile.TemporaryDirectory(prefix="dlspec-fuzz-cli-") as root:
        for index in range(count):
            directory = Path(root) / "work"
            if index % 20 == 0 or not directory.exists():  # a fresh workspace now and then
                shutil.rmtree(directory, ignore_errors=True)
                make_workspace(directory)
            argv = invocation(rng, commands)
            before = snapshot(directory)
            run = run_forked(argv, directory)
            after = snapshot(directory)
            allowed = named_outputs(argv, directory)
            run.changed = [
                name
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name)
                and not {directory / name, (directory / name).resolve()} & allowed
                and not (argv[0] == "build" and (directory / name).parent in allowed)
            ]
            if run.changed or run.code is None:  # start the next one from a clean state
                shutil.rmtree(directory, ignore_errors=True)
            if run.problems():
                failed.append(run)
                log(f"FAIL {argv!r}: {'; '.join(run.problems())}\n{run.err[-2000:]}")
    return failed


# the language server ---------------------------------------------------------------------


class RawServer:
    """`dlspec lsp` in a subprocess, spoken to in raw bytes; replies collected by a thread."""

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dlspec", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.errors: list[dict[str, Any]] = []  # replies that are internal errors
        self.log: list[str] = []  # the window/logMessage notifications' messages
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.next_id = 1

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b"\n") and length is not None:
                    break
            message = json.loads(stream.read(length))
            error = message.get("error")
            if error and error.get("code") == -32603:
                self.errors.append(message)
            if message.get("method") == "window/logMessage":
                self.log.append(message["params"]["message"])
            self.replies.put(message)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr += line

    def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params: Any, limit: float = LIMIT) -> dict[str, Any] | None:
        """Send a request; its reply, or None when none came within ``limit`` seconds."""
        ident = self.next_id
        self.next_id += 1
        self.send({"id": ident, "method": method, "params": params})
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                reply = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if reply.get("id") == ident:
                return reply
        return None

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def close(self) -> int | None:
        """Shut down and exit; the exit code (None when it had to be killed)."""
        try:
            self.request("shutdown", None, limit=10)
            self.notify("exit", None)
            return self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
            return None


def initialize(server: RawServer) -> dict[str, Any] | None:
    reply = server.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    server.notify("initialized", {})
    return reply


def _position(rng: random.Random) -> dict[str, int]:
    line = rng.choice([0, 1, 2, 3, 5, 10, 10**6, -1])
    return {"line": line, "character": rng.choice([0, 1, 4, 8, 40, 10**6, -1])}


def _frames(rng: random.Random) -> bytes:
    """A malformed frame."""
    body = b'{"jsonrpc": "2.0", "method": "textDocument/hover", "id": 7}'
    return rng.choice(
        [
            b"Content-Length: abc\r\n\r\n" + body,
            b"Content-Length: 5\r\n\r\n" + body,
            b"Content-Length: 1000000000000\r\n\r\n" + body,
            b"Content-Length: %d\r\n\r\n[1, 2]" % 6,
            b"Content-Length: 4\r\n\r\nnull",
            b"Content-Length: %d\r\n\r\n" % len(body) + body.replace(b"{", b"(", 1),
            b"garbage without a header\r\n\r\n",
            b"Content-Length: -3\r\n\r\n{}",
            bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))),
        ]
    )


def _edit(rng: random.Random, text: str) -> str:
    pieces = ["\u2028", "\x0c", "\x00", "{", "}", "(", "Linear(", "# c", "\n", "Ω", "\ud800"]
    pieces += ["model M {", "x" * rng.randint(1, 300), "expect params == 1"]
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(text))
        cut = rng.randint(0, 5)
        text = text[:at] + rng.choice(pieces) + text[at + cut :]
    return text


def lsp_sequence(server: RawServer, rng: random.Random, directory: Path, texts: list[str]) -> str:
    """One random sequence of messages; what went wrong ("" when nothing did)."""
    uri = (directory / f"doc{rng.randint(0, 3)}.dl").as_uri()
    text = rng.choice(texts)
    version = 1
    server.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "dlspec", "version": 1, "text": text}},
    )
    unopened = [
        (directory / "fifo").as_uri(),
        "file:///dev/zero",
        (directory / "never.dl").as_uri(),
    ]
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        target = rng.choice([uri, uri, uri, *unopened])
        if kind < 0.25:
            text = _edit(rng, text)
            version += 1
            change = {"text": text.encode("utf-8", "replace").decode("utf-8")}
            server.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": target, "version": version}, "contentChanges": [change]},
            )
        elif kind < 0.55:
            method = rng.choice(
                [
                    "textDocument/hover",
                    "textDocument/definition",
                    "textDocument/completion",
                    "textDocument/formatting",
                ]
            )
            params: Any = {"textDocument": {"uri": target}, "position": _position(rng)}
            if method == "textDocument/formatting":
                params = {"textDocument": {"uri": target}, "options": {"tabSize": 4}}
            if rng.random() < 0.1:
                params = rng.choice([5, "x", None, {"textDocument": 3}])
            server.send({"id": 10**6 + rng.randint(0, 10**6), "method": method, "params": params})
        elif kind < 0.65:
            method = rng.choice(["textDocument/didSave", "textDocument/didClose"])
            server.notify(method, {"textDocument": {"uri": target}})
        else:
            server.send_bytes(_frames(rng))
    if rng.random() < 0.5:  # close the document, or leave it open for the next sequence
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    started = time.monotonic()
    reply = server.request(
        "textDocument/hover",
        {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}},
    )
    if reply is None:
        return f"no answer within {LIMIT:.0f} s (process exit {server.process.poll()})"
    if server.errors:
        return f"an internal error reply: {server.errors[-1]}"
    if time.monotonic() - started > LIMIT:
        return "a slow answer"
    return ""


def fuzz_lsp(count: int, seed: int, log: Callable[[str], None] = print) -> list[str]:
    """``count`` random message sequences from ``seed`` to one server; the failures."""
    rng = random.Random(seed)
    texts = [SPEC, BROKEN, *(p.read_text() for p in sorted((ROOT / "specs").glob("*.dl"))[:8])]
    failed = []
    with tempfile.TemporaryDirectory(prefix="dlspec-fuzz-lsp-") as root:
        directory = Path(root)
        os.mkfifo(directory / "fifo")
        server = RawServer(directory)
        if initialize(server) is None:
            return ["the server did not answer initialize"]
        for index in range(count):
            problem = lsp_sequence(server, rng, directory, texts)
            if problem:
                failed.append(f"sequence {index}: {problem}")
                log(f"FAIL lsp sequence {index} (seed {seed}): {problem}")
                server.close()
                server = RawServer(directory)
                initialize(server)
        code = server.close()
        if code != 0:
            failed.append(f"the server exited {code}")
        if b"Traceback" in server.stderr:
            failed.append("a traceback on stderr:\n" + server.stderr.decode(errors="replace"))
    for problem in failed[-1:]:
        log(problem)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", type=int, default=2000, help="random invocations")
    parser.add_argument("--lsp", type=int, default=2000, help="random message sequences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    cli = fuzz_cli(args.cli, args.seed)
    lsp = fuzz_lsp(args.lsp, args.seed)
    print(
        f"{args.cli} invocations: {len(cli)} failed; {args.lsp} LSP sequences: {len(lsp)} "
        f"failed ({time.monotonic() - started:.0f} s)"
    )
    return 1 if cli or lsp else 0


if __name__ == "__main__":
    sys.exit(main())

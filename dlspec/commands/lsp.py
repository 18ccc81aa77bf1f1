"""Run the language server on stdin/stdout (for editors: diagnostics, hover, completion)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Speak the Language Server Protocol on stdin/stdout: diagnostics as you type, hover "
        "with a layer's shape, parameters, MACs and memory, go to definition, completion. "
        "Editors start it; see editors/vscode."
    )


def run(args: argparse.Namespace) -> int:
    from dlspec.lsp.server import serve

    serve()
    return 0

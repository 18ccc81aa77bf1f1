"""A quick run of the command-line and language-server fuzzer (the long one is `make fuzz`,
tests/fuzz_surfaces.py): random hostile invocations and message sequences, none of which may
crash, hang, print a traceback or change a file it does not name."""

from __future__ import annotations

from fuzz_surfaces import fuzz_cli, fuzz_lsp


def test_random_invocations_of_every_command() -> None:
    assert fuzz_cli(20, seed=0) == []


def test_random_language_server_message_sequences() -> None:
    assert fuzz_lsp(40, seed=0) == []

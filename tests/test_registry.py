"""The layer registry: every kind's name known without importing it, a kind's module imported
(its pydantic models made) only when a spec uses one of its kinds."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from dlspec.layers import REGISTRY, Layer
from dlspec.layers.base import register
from dlspec.layers.registry import KINDS, PACKAGE

# `dlspec ARGS` in a fresh process; then, on stderr's last line, the modules it imported
PROBE = """
import json, sys
from dlspec.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def run_fresh(*args: str) -> tuple[int, str, set[str]]:
    """The exit code of ``dlspec ARGS`` in a fresh process, its output (stdout and stderr),
    and the modules of layer kinds (:data:`KINDS`) it imported."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True
    )
    *err, last = run.stderr.splitlines()
    result = json.loads(last)
    kinds = {m.removeprefix(f"{PACKAGE}.") for m in result["modules"]} & set(KINDS)
    return result["code"], run.stdout + "\n".join(err), kinds


def test_every_listed_kind_is_the_class_its_module_registers() -> None:
    for module, kinds in KINDS.items():
        importlib.import_module(f"{PACKAGE}.{module}")
        for kind in kinds:
            cls = REGISTRY[kind]
            assert (cls.kind, cls.__module__) == (kind, f"{PACKAGE}.{module}")
    assert len(REGISTRY) == len(dict(REGISTRY.items())) == sum(map(len, KINDS.values()))


def test_register_refuses_a_kind_the_registry_does_not_list() -> None:
    class Unlisted(Layer):
        kind = "Unlisted"
        family = "dense"

    with pytest.raises(ValueError, match="not listed"):
        register(Unlisted)
    assert "Unlisted" not in REGISTRY


def test_check_imports_only_the_kinds_a_spec_uses() -> None:
    code, out, kinds = run_fresh("check", "specs/cnn.dl")
    assert code == 0 and "9,536,074" in out
    # Conv2d, ReLU, MaxPool2d, Flatten, Dropout and Linear: 5 of the modules
    assert kinds == {"activation", "conv", "dense", "pool", "shape"}


def test_an_unknown_kind_is_named_without_importing_any() -> None:
    code, out, kinds = run_fresh("check", "tests/errors/unknown_kind.dl")
    assert code == 1 and "did you mean Conv2d?" in out and "did you mean Linear?" in out
    assert not kinds


@pytest.mark.parametrize("module", sorted(KINDS))
def test_a_module_of_kinds_evaluates_its_annotations_once(module: str) -> None:
    """pydantic reads every annotation of a kind's bases again for each kind it makes: as
    strings (``from __future__ import annotations``), each would be compiled again, per kind."""
    source = (ROOT / PACKAGE.replace(".", "/") / f"{module}.py").read_text(encoding="utf-8")
    assert "from __future__ import annotations" not in source

# The few commands everyone runs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CHECKER := $(VENV)/.installed-check
RUNTIME := $(VENV)/.installed
DEV     := $(VENV)/.installed-dev

.PHONY: install demo demo-check test lint format docs bench bench-smoke fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Three steps, each on top of the one before: what `dlspec check` needs (lark and pydantic, at
# pyproject's versions), what dlspec needs to run (the demo), the development tools (test).
$(CHECKER): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $$(grep -oE '"(lark|pydantic)[<>=!~][^"]*"' pyproject.toml | tr -d '"')
	$(BIN)/pip install -q --no-deps -e .
	touch $(CHECKER)

# torch first, pinned: its CPU build lies on this machine's disk, while an unpinned torch pulls
# a multi-GB CUDA build. pyproject declares a range that 2.13.0 satisfies.
$(RUNTIME): $(CHECKER)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	command -v dot >/dev/null || (apt-get update -qq && apt-get install -y -qq graphviz) \
		|| echo "note: could not install Graphviz; 'dlspec draw' will write .dot files only"
	touch $(RUNTIME)

# the viewer's test drives Debian's Chromium with playwright (never `playwright install`)
$(DEV): $(RUNTIME)
	$(BIN)/pip install -q -e '.[dev]'
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "note: could not install Chromium; the viewer's browser test will be skipped"
	touch $(DEV)

install: $(DEV)

# The main job on the embedded default data: check MY_NET, then build and train it on the
# handwritten digits that ship with scikit-learn, then draw it.
demo-check: $(CHECKER)
	$(BIN)/dlspec check specs/cnn.dl

demo: demo-check $(RUNTIME)
	$(BIN)/dlspec build specs/cnn.dl --out build/cnn
	$(BIN)/dlspec draw specs/cnn.dl --out build/cnn/model.svg

lint: $(DEV)
	$(BIN)/ruff format --check dlspec tests bench
	$(BIN)/ruff check dlspec tests bench
	$(BIN)/mypy

# two workers (the suite's files shared out whole: the manual's commands run in order)
test: lint
	$(BIN)/pytest -n 2 --dist loadfile

format: $(DEV)
	$(BIN)/ruff format dlspec tests bench
	$(BIN)/ruff check --fix dlspec tests bench

# the manual's generated tables, then the site (strict: broken links and conflict markers fail)
docs: $(DEV)
	$(BIN)/python -m dlspec.docs README.md docs/*.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(RUNTIME)
	$(BIN)/python bench/check_speed.py

# every script in bench/ at a tiny size, and bench/gpu_check.sh --dry-run (`make test` runs
# these too, so a bench that breaks fails the tests)
bench-smoke: $(DEV)
	$(BIN)/pytest tests/test_bench.py

# Differential fuzzing: random valid specs, the analysis against torch and ONNX Runtime.
# FUZZ_COUNT specs from FUZZ_SEED; a disagreement prints its seed and the shrunk spec.
# Then hostile fuzzing: FUZZ_CLI random invocations of every command and FUZZ_LSP random
# message sequences to the language server (no crash, hang, traceback or stray write).
FUZZ_COUNT ?= 10000
FUZZ_CLI   ?= 2000
FUZZ_LSP   ?= 2000
FUZZ_SEED  ?= 0
fuzz: $(DEV)
	$(BIN)/python tests/fuzzing.py --count $(FUZZ_COUNT) --seed $(FUZZ_SEED)
	$(BIN)/python tests/fuzz_surfaces.py --cli $(FUZZ_CLI) --lsp $(FUZZ_LSP) --seed $(FUZZ_SEED)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

# The README's commands. Both create .venv on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/toy

# torch is installed first, and only into a .venv that has none yet.
# TORCH_SPEC pins the version tfx is tested with. It does not choose between a CPU and a
# CUDA build: pip installs the build its index serves for that version, and PyPI's torch
# for Linux x86_64 is a CUDA build of several GB. TORCH_INDEX, when set, is the index torch
# comes from instead (pip's --index-url), and so picks the build:
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu test       a CPU-only build
#   make TORCH_INDEX=https://download.pytorch.org/whl/cu<XYZ> test   a build for CUDA X.YZ
#     (pytorch.org/get-started/locally names the CUDA versions each torch release has)
# Or put the torch you want into .venv before the first make (python3 -m venv .venv, then
# .venv/bin/pip install torch ...): the install step keeps it.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test test-transformers4 lint format clean toy-data backtranslation

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import torch' 2>/dev/null || \
		$(BIN)/pip install -q '$(TORCH_SPEC)' $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)')
	$(BIN)/pip install -q -e '.[dev,export,tensorboard]'
	touch $@

demo: $(BIN)/.installed
	bash scripts/demo.sh $(RUN_DIR)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# tests/export under transformers 4.x, which still has pipeline("translation") (docs/export.md)
VENV4 := .venv-transformers4
test-transformers4:
	test -x $(VENV4)/bin/python || $(PYTHON) -m venv $(VENV4)
	$(VENV4)/bin/python -c 'import torch' 2>/dev/null || \
		$(VENV4)/bin/pip install -q '$(TORCH_SPEC)' $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)')
	$(VENV4)/bin/pip install -q -e '.[dev,export]' 'transformers>=4.40,<5'
	$(VENV4)/bin/python -m pytest -q tests/export

# ruff over the whole tree; mypy over the package (the files of [tool.mypy] in pyproject.toml)
lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# docs/backtranslation.md: make backtranslation DATA=path/to/multi30k (1.5 to 2 hours on a CPU)
backtranslation: $(BIN)/.installed
	DATA='$(DATA)' bash bench/backtranslation.sh

toy-data: $(BIN)/.installed
	$(BIN)/python -m transformer_cli.data.toy data/toy

# what runs, tests, lint and builds leave behind; .venv stays
clean:
	rm -rf runs bench/out .pytest_cache .ruff_cache .mypy_cache .hypothesis build dist *.egg-info
	find . \( -path ./.venv -o -path ./.git \) -prune -o -type d -name __pycache__ -prune \
		-exec rm -rf {} +

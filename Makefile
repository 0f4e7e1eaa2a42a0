# The README's commands. Both create .venv on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/toy

.PHONY: demo test lint format clean toy-data

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that no multi-GB CUDA build is pulled in
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	bash scripts/demo.sh $(RUN_DIR)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# ruff over the whole tree; mypy over the package (the files of [tool.mypy] in pyproject.toml)
lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

toy-data: $(BIN)/.installed
	$(BIN)/python -m transformer_cli.data.toy data/toy

clean:
	rm -rf runs .pytest_cache

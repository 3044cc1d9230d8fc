# Two commands on a fresh machine: `make demo` (pretrain a tiny BERT end to end, offline) and
# `make test` (the test suite). Both create .venv when missing; nothing else needs installing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_WORKDIR ?= demo_workdir

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the declared dependencies change. The demo needs the package alone; the
# tests add the reference implementations (PyTorch, transformers) and checkers.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.core

install: $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/bertjax demo --workdir $(DEMO_WORKDIR)

# Lint and format check first (seconds), then the suite; tests/test_layering.py checks the
# import layers. Two workers: much of the suite is single-threaded (compiling, starting
# processes, waiting on peers).
test: $(VENV)/.test
	$(BIN)/ruff check bertjax tests
	$(BIN)/ruff format --check bertjax tests
	$(BIN)/python -m pytest -q -ra --durations=20 -n 2 --dist worksteal

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO_WORKDIR)

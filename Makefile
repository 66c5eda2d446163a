# Two entry points for a fresh machine (Python >= 3.11 with venv; nothing else):
#   make demo   virtualenv, install, example files, ingest into a local table, status, a query
#   make test   virtualenv with the test extra, lint, type-check, the whole suite (starts moto itself)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test unit lint bench bench-quick bench-throughput bench-throughput-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/python examples/generate_events.py demo/events
	$(BIN)/lakesink ingest demo/events demo/lake/events --app-id demo-events --partition-by day --batch-rows 25000
	$(BIN)/lakesink ingest demo/events demo/lake/events --app-id demo-events
	$(BIN)/lakesink status demo/lake/events
	$(BIN)/python examples/query.py demo/lake/events

lint: $(VENV)/.installed-test
	$(BIN)/ruff check lakesink tests benchmarks examples tools
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tools/lint_architecture.py

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/commit_cost.py

bench-quick: $(VENV)/.installed-test
	$(BIN)/python benchmarks/commit_cost.py --quick

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(VENV)/.installed $(VENV)/.installed-test $@

bench-throughput: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/throughput.py --profile

bench-throughput-quick: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/throughput.py --quick

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache

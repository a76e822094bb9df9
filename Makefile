# The two commands a new user types: `make demo` and `make test`.
# Each sets up .venv and installs the package with its extras by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test demo lint typecheck docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy resilience

test: lint typecheck
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m resilience demo

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(BENCH_STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only -p no:randomly -q

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache

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
	$(BIN)/lint-imports  # the layers contract (pyproject.toml [tool.importlinter])

typecheck: $(STAMP)
	$(BIN)/mypy  # strict, over resilience/, tests/ and benchmarks/ (pyproject.toml)

test: lint typecheck
	$(BIN)/python -m pytest

# DEMO_SECONDS=N stops it by itself; DEMO_PORT sets the gateway port (default 8000).
demo: $(STAMP)
	$(BIN)/python -m resilience demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS)) $(if $(DEMO_PORT),--port $(DEMO_PORT))

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# Runs every benchmark once and rewrites the tables of docs/benchmarks.md.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache

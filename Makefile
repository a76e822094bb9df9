# The two commands a new user types: `make demo` and `make test`.
# Each sets up .venv and installs the package with its extras by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# The transport's happy path compiled with mypyc (python -m resilience speedups); rebuilt when its sources change.
SPEEDUPS := resilience/_speedups$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
SPEEDUPS_SOURCES := resilience/_resolve.py resilience/_happy.py resilience/_hot.py resilience/_speedups_build.py

.PHONY: test demo lint typecheck docs bench speedups clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

$(SPEEDUPS): $(STAMP) $(SPEEDUPS_SOURCES)
	$(BIN)/python -m resilience speedups

speedups: $(SPEEDUPS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy  # strict, over resilience/, tests/ and benchmarks/ (pyproject.toml)

test: lint typecheck $(SPEEDUPS)
	$(BIN)/python -m pytest

# DEMO_SECONDS=N stops it by itself; DEMO_PORT sets the gateway port (default 8000).
demo: $(STAMP)
	$(BIN)/python -m resilience demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS)) $(if $(DEMO_PORT),--port $(DEMO_PORT))

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# Runs every benchmark once and rewrites the tables of docs/benchmarks.md.
bench: $(BENCH_STAMP) $(SPEEDUPS)
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache resilience/_speedups*.so

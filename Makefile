# `make demo` and `make test` create the environment on a fresh machine, then run.
# torch is installed first from its pin (a CPU build here); override with TORCH_SPEC=... for CUDA builds.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env demo test test-all lint format bench bench-smoke clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m perceiver.training.demo

# The fast suite runs in one pytest process per core (pytest-xdist, at most 4; tests/conftest.py gives each its share
# of the threads): most tests are single-threaded Python (tracing, compiling, small models). TEST_WORKERS=0: serial.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --maxprocesses 4

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint + format) and mypy on src/perceiver (pyproject's [tool.mypy]; the package ships py.typed, so users' type
# checkers read its hints). Both are pinned in the dev extra: a new release may add findings, bump it on purpose.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Side-by-side benchmarks against the peers (results in benchmarks/results/); tens of minutes on 2 cores.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_classic.py
	$(BIN)/python benchmarks/bench_perceiver_io.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_ar.py
	$(BIN)/python benchmarks/bench_krasserm.py
	$(BIN)/python benchmarks/bench_lora.py
	$(BIN)/python benchmarks/bench_quant.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bounds.py
	$(BIN)/python benchmarks/tables.py

# smoke runs of the benchmark scripts (fewer cases and runs, eager forms): into /tmp, never into benchmarks/results
bench-smoke: $(STAMP)
	for s in classic perceiver_io ar load; do $(BIN)/python benchmarks/bench_$$s.py --quick --results-dir /tmp/bench-smoke || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache

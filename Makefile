# The two commands from the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick bench-scale lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m gmvae_cli.demo

# One thread per test process: small networks gain nothing from more, and two
# processes (xdist) on two cores must not oversubscribe them.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/python -m benchmarks.quality

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.quality --quick

# Throughput on a 10M-row table (generated once into bench-cache/): see docs/scaling.md.
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

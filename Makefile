# The two commands from the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick bench-tables bench-speed bench-scale lint clean

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

# Quality on digits and small tables (docs/benchmarks.md), then the table benchmark, one
# after the other: runs that share the cores would spoil each other's timings.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.quality
	$(BIN)/python -m benchmarks.tables

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.quality --quick

# Real and synthetic tables, GMVAE against k-means, GMM and UMAP + GMM (docs/benchmarks.md,
# between the tables markers); `--quick` for a smoke run.
bench-tables: $(STAMP)
	$(BIN)/python -m benchmarks.tables

# Wall time of whole commands against their targets (docs/speed.md).
bench-speed: $(STAMP)
	$(BIN)/python -m benchmarks.speed

# Throughput on a 10M-row table (generated once into bench-cache/), then the default recipe
# on 100k-2M rows and MNIST in memory, streamed and on 2 processes: see docs/scaling.md.
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale
	$(BIN)/python -m benchmarks.scale_recipe

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

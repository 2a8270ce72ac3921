# The two commands from the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick bench-tables bench-speed bench-scale bench-gpu bench-outliers describe-mnist lint clean

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

# Quality on digits and small tables (docs/benchmarks.md), then the table benchmark and the
# outlier recall, one after the other: runs that share the cores would spoil each other's timings.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.quality
	$(BIN)/python -m benchmarks.tables
	$(BIN)/python -m benchmarks.outliers

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.quality --quick

# Real and synthetic tables, GMVAE against k-means, GMM and UMAP + GMM (docs/benchmarks.md,
# between the tables markers); `--quick` for a smoke run.
bench-tables: $(STAMP)
	$(BIN)/python -m benchmarks.tables

# Recall of planted outliers at a 2% flag rate (assign --score): bench-results/outliers.json.
bench-outliers: $(STAMP)
	$(BIN)/python -m benchmarks.outliers

# The pictures of docs/describe.md from the MNIST model `make bench` trains (default recipe,
# K = 10, seed 0); trains it first when bench-cache/ does not hold it yet.
MNIST_MODEL := bench-cache/runs/mnist-k10-s0.pt
describe-mnist: $(STAMP)
	$(BIN)/python -c "from benchmarks.quality import datasets; datasets()"
	mkdir -p bench-cache/runs
	test -f $(MNIST_MODEL) || $(BIN)/gmvae train bench-cache/mnist-test.parquet --k 10 --seed 0 -o $(MNIST_MODEL)
	$(BIN)/gmvae describe $(MNIST_MODEL) bench-cache/mnist-test.parquet --json \
		--examples docs/img/describe-mnist-examples.png --image-shape 28x28 \
		--plot docs/img/describe-mnist-heatmap.png > bench-cache/describe-mnist.json

# Wall time of whole commands against their targets (docs/speed.md).
bench-speed: $(STAMP)
	$(BIN)/python -m benchmarks.speed

# --device cuda end to end (MNIST twice with one seed: time, accuracy, bit-identical weights;
# a small table): needs a CUDA GPU; bench-results/gpu.json, docs/scaling.md.
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.gpu

# Throughput on a 10M-row table (generated once into bench-cache/), then the default recipe
# on 100k-2M rows and MNIST in memory, streamed and on 2 processes: see docs/scaling.md.
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale
	$(BIN)/python -m benchmarks.scale_recipe

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

"""`make bench-scale`: how `gmvae` copes with a table larger than it should hold in memory.

    python -m benchmarks.scale                  # 10,000,000 rows × 32 columns (1.3 GB Parquet)
    python -m benchmarks.scale --rows 200000    # a small run that checks the set-up

1. Generates the table once into bench-cache/ (Gaussian blobs, float32, a `label` column,
   row groups of 1M rows) and takes its first --train-rows rows as a training sample.
2. Reads the file with pyarrow alone (iter_batches over the feature columns), with its default
   reader and with the buffered one gmvae opens: the faster is the raw rate.
3. Trains a small model on the sample with `torchrun --nproc-per-node 1` and `2`, the same
   epochs and the same total batch (per-process batch / N), and scores each on the sample (ARI).
4. Runs `gmvae assign` on the whole file with the 1-process model, as a subprocess: rows/s
   and its peak RSS (the kernel's maximum resident set size of that process).

5. Times the network alone on one row group already in memory, and the rate the machine's
   matmul peak would allow for its multiply-adds per row: the ceiling for assign here.
6. Times assign's own work with the network replaced by a uniform answer (3M rows): what
   assign approaches where the network is nearly free, as on a GPU.

Results go to bench-results/scale.json (scale-ROWS.json for other --rows, a -threadsN suffix
for other --threads, -cuda for --device cuda) and a table on stdout.
Every process runs with --threads threads (OMP_NUM_THREADS), 1 by default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.metrics import adjusted_rand_score

from benchmarks.common import matmul_peak_gflops
from gmvae_cli import checkpoint, inference, rows
from gmvae_cli.api import GMVAE
from gmvae_cli.data import TableWriter, iter_table, open_parquet, read_ahead
from gmvae_cli.model import GMVAENet

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench-cache"
RESULTS = ROOT / "bench-results"
FULL_ROWS = 10_000_000
WRITE_ROWS = 1_000_000  # rows generated and written at a time (one row group each)
K = 8
MODEL = ["--k", str(K), "--recipe", "paper", "--hidden", "64,64", "--quiet"]


def generate(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    """K blobs in `cols` dimensions, written a row group at a time (memory stays small)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 8.0, size=(K, cols)).astype(np.float32)
    names = [f"c{i}" for i in range(cols)]
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, WRITE_ROWS):
        n = min(WRITE_ROWS, rows - start)
        labels = rng.integers(0, K, size=n)
        values = centers[labels] + rng.standard_normal((n, cols), dtype=np.float32)
        arrays = [pa.array(values[:, j]) for j in range(cols)] + [pa.array(labels.astype(np.int8))]
        table = pa.Table.from_arrays(arrays, names=[*names, "label"])
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=WRITE_ROWS)
    writer.close()
    tmp.replace(path)


def take_sample(source: Path, path: Path, rows: int) -> None:
    """The first `rows` rows (the rows are in random order, so this is a random sample)."""
    batches, held = [], 0
    for batch in pq.ParquetFile(source).iter_batches(batch_size=min(rows, 65_536)):
        batches.append(batch.slice(0, rows - held))
        held += len(batches[-1])
        if held >= rows:
            break
    pq.write_table(pa.Table.from_batches(batches), path)


def raw_read(path: str, columns: list[str]) -> dict:
    """pyarrow's own rate over the feature columns: batches only, then with to_pandas.

    Each is timed with pyarrow's default reader and with the buffered one gmvae opens, and the
    faster counts: the yardstick is the best pyarrow alone does (its default reader's rate
    varied from 3M to 13M rows/s between runs here, the buffered one's much less).
    """
    out = {}
    for name, convert in (("raw_read", False), ("read_to_pandas", True)):
        best = None
        for reader in (pq.ParquetFile(path), open_parquet(path)):
            started, rows = time.perf_counter(), 0
            for batch in reader.iter_batches(batch_size=65_536, columns=columns):
                rows += batch.num_rows
                if convert:
                    batch.to_pandas()
            seconds = time.perf_counter() - started
            if best is None or seconds < best["seconds"]:
                best = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": rows / seconds}
        out[name] = best
    return out


def network_ceiling(model_path: Path, path: Path, columns: list[str], device: str) -> dict:
    """What the network alone allows: assign's computation on one row group already in
    memory (no reading, no writing), its multiply-adds per row, and the best rate the
    machine's matmul peak would give them (the CPU's; on a GPU the rate itself is the
    figure)."""
    model = GMVAE.load(str(model_path), device=device)
    matrix, _ = model.matrix(pq.ParquetFile(path).read_row_group(0, columns=columns).to_pandas())
    inference.log_proba(model.net_, matrix[:65_536])  # a GPU's first kernels load here
    started = time.perf_counter()
    inference.log_proba(model.net_, matrix)  # what assign computes for each preprocessed chunk
    seconds = time.perf_counter() - started
    state = checkpoint.load(str(model_path))["state_dict"]
    # Per row with posterior means: the encoder and the prior network once (no decoder).
    macs = sum(t.shape[0] * t.shape[1] for name, t in state.items()
               if name.split(".")[0] in ("encoder", "prior") and t.ndim == 2)
    peak = matmul_peak_gflops()
    return {
        "rows": len(matrix), "seconds": round(seconds, 3), "rows_per_s": len(matrix) / seconds,
        "macs_per_row": macs, "matmul_gflops": round(peak, 1),
        "peak_bound_rows_per_s": peak * 1e9 / (2 * macs),
    }


def pipeline_without_network(model_path: Path, path: Path, count: int = 3_000_000) -> dict:
    """assign's own work (read, preprocess, output columns, Parquet write) on the first `count`
    rows, in this process, with the network replaced by a uniform answer: the rate assign
    would approach on a device where the network costs next to nothing (a GPU)."""
    model = GMVAE.load(str(model_path))
    k = model.config.k
    real = GMVAENet.cluster_log_proba
    GMVAENet.cluster_log_proba = lambda self, y, mc_samples=0: torch.full((len(y), k), -math.log(k))
    try:
        columns = list(model.preprocessor_.columns)
        chunks = read_ahead(itertools.islice(  # as assign reads (rows.write_per_row)
            iter_table(str(path), chunk_rows=65_536, columns=columns), -(-count // 65_536)))
        out = CACHE / "scale-pipeline.parquet"
        started, done = time.perf_counter(), 0
        with TableWriter(str(out)) as writer:
            for frame in rows.per_row(model, chunks, None, rows.assign_columns(model)):
                writer.write(frame)
                done += len(frame)
        seconds = time.perf_counter() - started
        out.unlink()
    finally:
        GMVAENet.cluster_log_proba = real
    return {"rows": done, "seconds": round(seconds, 3), "rows_per_s": done / seconds}


def measured(command: list[str], env: dict) -> dict:
    """Run a command; its wall time and its peak resident memory.

    The peak is the process's own VmHWM, polled from /proc: wait4's ru_maxrss would also count
    this (large) benchmark process, whose memory high-water mark a forked child inherits.
    """
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stderr=log)
        peak_kib = 0
        while proc.poll() is None:
            peak_kib = max(peak_kib, _peak_kib(proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{log.read()[-3000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(peak_kib / 1024, 1)}


def _peak_kib(pid: int) -> int:
    """VmHWM of a process and its children (torchrun's workers), 0 once it has gone."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    kids = [int(c) for c in found]
    return kids + [g for k in kids for g in _children(k)]


def train(sample: Path, model: Path, procs: int, epochs: int, batch: int, env: dict) -> dict:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [
        torchrun, "--standalone", "--nproc-per-node", str(procs), "-m", "gmvae_cli", "train",
        str(sample), "-o", str(model), "--exclude", "label", *MODEL, "--epochs", str(epochs),
        "--batch-size", str(batch // procs),
    ]
    result = measured(command, env)
    history = checkpoint.load(str(model)).get("history", [])
    epoch_seconds = sum(h.get("seconds", 0.0) for h in history) or result["seconds"]
    rows = pq.ParquetFile(sample).metadata.num_rows
    fitted = GMVAE.load(str(model))
    table = pq.read_table(sample)
    labels = table.column("label").to_numpy()
    ari = adjusted_rand_score(labels, fitted.predict(table.drop(["label"]).to_pandas()))
    return {
        "processes": procs, "epochs": epochs, "batch_per_process": batch // procs,
        "wall_seconds": result["seconds"], "epoch_seconds": round(epoch_seconds, 3),
        "rows_per_s": rows * epochs / epoch_seconds, "ari": round(float(ari), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="rows of the big table")
    parser.add_argument("--cols", type=int, default=32, help="feature columns")
    parser.add_argument("--train-rows", type=int, default=200_000, help="rows of the sample")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run")
    parser.add_argument("--batch-size", type=int, default=256, help="total rows per step")
    parser.add_argument("--assign-batch", type=int, default=65_536, help="assign --batch-size")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    parser.add_argument("--device", default="cpu", help="assign's --device (cuda on a GPU "
                        "machine; training stays on the CPU, as torchrun × 2 needs)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    CACHE.mkdir(exist_ok=True)
    big = CACHE / f"scale-{args.rows}x{args.cols}.parquet"
    if not big.exists():
        print(f"generating {big} …", file=sys.stderr, flush=True)
        generate(big, args.rows, args.cols)
    sample_rows = min(args.train_rows, args.rows)
    sample = CACHE / f"scale-{args.rows}x{args.cols}-sample-{sample_rows}.parquet"
    if not sample.exists():
        take_sample(big, sample, sample_rows)
    features = [f"c{i}" for i in range(args.cols)]

    print("reading with pyarrow …", file=sys.stderr, flush=True)
    raw_read(str(big), features)  # once to warm the page cache: every reader below finds it warm
    reads = raw_read(str(big), features)

    runs = []
    for procs in (1, 2):
        print(f"training with {procs} process(es) …", file=sys.stderr, flush=True)
        model = CACHE / f"scale-model-{procs}.pt"
        runs.append(train(sample, model, procs, args.epochs, args.batch_size, env))

    print("assigning …", file=sys.stderr, flush=True)
    out = CACHE / "scale-assign.parquet"
    command = [
        sys.executable, "-m", "gmvae_cli", "assign", str(CACHE / "scale-model-1.pt"), str(big),
        "-o", str(out), "--batch-size", str(args.assign_batch), "--device", args.device,
    ]
    assign = measured(command, env)
    assigned = pq.ParquetFile(out).metadata.num_rows
    out.unlink()
    assign.update(rows=assigned, rows_per_s=assigned / assign["seconds"])

    print("timing the network alone …", file=sys.stderr, flush=True)
    ceiling = network_ceiling(CACHE / "scale-model-1.pt", big, features, args.device)
    print("timing assign without the network …", file=sys.stderr, flush=True)
    pipeline = pipeline_without_network(CACHE / "scale-model-1.pt", big, min(args.rows, 3_000_000))

    report = {
        "rows": args.rows, "cols": args.cols, "file_mib": round(big.stat().st_size / 2**20, 1),
        "threads": args.threads, "cpus": os.cpu_count(), "machine": platform.processor() or
        platform.machine(), "torch": torch.__version__, "model": " ".join(MODEL),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "read": reads, "assign": assign, "network": ceiling,
        "pipeline_without_network": pipeline, "train": runs,
        "assign_vs_raw_read": assign["rows_per_s"] / reads["raw_read"]["rows_per_s"],
        "pipeline_vs_raw_read": pipeline["rows_per_s"] / reads["raw_read"]["rows_per_s"],
    }
    RESULTS.mkdir(exist_ok=True)
    name = "scale" if args.rows == FULL_ROWS else f"scale-{args.rows}"
    suffix = ("" if args.threads == 1 else f"-threads{args.threads}") + \
        ("" if args.device == "cpu" else f"-{args.device}")
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {path.relative_to(ROOT)}", file=sys.stderr)


def print_table(r: dict) -> None:
    print(f"{r['rows']:,} rows × {r['cols']} columns, {r['file_mib']} MiB Parquet, "
          f"{r['threads']} thread(s) per process, {r['cpus']} CPUs")
    print(f"{'step':<34}{'rows/s':>14}{'seconds':>10}{'peak RSS':>12}{'ARI':>8}")
    reads = (("pyarrow iter_batches", "raw_read"), ("pyarrow + to_pandas", "read_to_pandas"))
    for name, key in reads:
        x = r["read"][key]
        print(f"{name:<34}{x['rows_per_s']:>14,.0f}{x['seconds']:>10.2f}")
    a = r["assign"]
    print(f"{'gmvae assign':<34}{a['rows_per_s']:>14,.0f}{a['seconds']:>10.2f}"
          f"{a['peak_rss_mib']:>9.0f} MiB")
    n = r["network"]
    print(f"{'network alone (rows in memory)':<34}{n['rows_per_s']:>14,.0f}{n['seconds']:>10.2f}")
    p = r["pipeline_without_network"]
    print(f"{'assign without the network':<34}{p['rows_per_s']:>14,.0f}{p['seconds']:>10.2f}")
    print(f"{'CPU matmul-peak bound':<34}{n['peak_bound_rows_per_s']:>14,.0f}"
          f"   ({n['macs_per_row']:,} multiply-adds per row, {n['matmul_gflops']} GFLOP/s)")
    for t in r["train"]:
        name = f"train, torchrun × {t['processes']} ({t['epochs']} epochs)"
        print(f"{name:<34}{t['rows_per_s']:>14,.0f}{t['epoch_seconds']:>10.2f}{'':>12}"
              f"{t['ari']:>8.3f}")
    print(f"assign / raw read: {r['assign_vs_raw_read']:.3f}; "
          f"without the network: {r['pipeline_vs_raw_read']:.2f}")


if __name__ == "__main__":
    main()

"""`make bench-scale`, second part: the default recipe at any size.

    python -m benchmarks.scale_recipe                      # 100k, 500k, 2M rows; MNIST three ways
    python -m benchmarks.scale_recipe --rows 100000 --no-mnist   # one size only

1. Synthetic tables of 100,000, 500,000 and 2,000,000 rows × 32 columns, generated once into
   bench-cache/ by benchmarks.scale.generate: K = 8 Gaussian clusters, centres drawn from
   N(0, 8²) per column, unit variance within a cluster, labels uniform (a `label` column that
   training leaves out). Each is trained with the default recipe exactly as a user would
   (`gmvae train FILE --k 8 --exclude label`): wall time, rows per second (rows / wall),
   peak resident memory of the whole command, the ARI of `gmvae assign` on every row, and the
   stage timings the checkpoint keeps. The cost per row beyond the fixed warm-start cost
   (sample, pretraining, neighbours, embedding, mixture) is wall time minus those stages,
   divided by the rows.
2. MNIST-test (10,000 digits, the cached Parquet of benchmarks.quality) with the default
   recipe, seed 0: in memory, with --stream, and with torchrun on 2 processes (gloo, one
   thread each): Hungarian accuracy of each, and the recipe `gmvae info` reports.

Results go to bench-results/scale-recipe.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from sklearn.metrics import adjusted_rand_score

from benchmarks.common import CACHE, RESULTS, ROOT
from benchmarks.scale import K, generate, measured
from gmvae_cli import checkpoint
from gmvae_cli.metrics import hungarian_accuracy

SIZES = (100_000, 500_000, 2_000_000)
WARM_START = ("sample", "pretrain", "columns", "neighbours", "embedding", "mixture")


def gmvae_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gmvae_cli", *args]


def assign_clusters(model: Path, data: Path, out: Path, env: dict) -> np.ndarray:
    subprocess.run(gmvae_command("assign", str(model), str(data), "-o", str(out), "--quiet"),
                   check=True, env=env, cwd=ROOT)
    return pq.read_table(out).column("cluster").to_numpy()


def synthetic(rows: int, env: dict) -> dict:
    data = CACHE / f"recipe-scale-{rows}.parquet"
    if not data.exists():
        generate(data, rows, 32)
    model, out = data.with_suffix(".pt"), data.with_suffix(".clusters.parquet")
    run = measured(gmvae_command("train", str(data), "--k", str(K), "--exclude", "label",
                                 "-o", str(model), "--force", "--quiet"), env)
    clusters = assign_clusters(model, data, out, env)
    labels = pq.read_table(data, columns=["label"]).column("label").to_numpy()
    timings = checkpoint.load(str(model)).get("timings", {})
    fixed = sum(timings.get(stage, 0.0) for stage in WARM_START)
    return {
        "rows": rows, "wall_seconds": run["seconds"], "rows_per_s": rows / run["seconds"],
        "peak_rss_mib": run["peak_rss_mib"], "ari": float(adjusted_rand_score(labels, clusters)),
        "warm_start_seconds": round(fixed, 2),
        "seconds_per_million_rows_beyond_warm_start": (run["seconds"] - fixed) / rows * 1e6,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def mnist(how: str, env: dict) -> dict:
    from benchmarks.quality import datasets

    ds = datasets()["mnist"]
    model = CACHE / f"recipe-scale-mnist-{how}.pt"
    args = ["train", ds["file"], "--k", "10", "--seed", "0", "-o", str(model), "--force",
            "--quiet"]
    if how == "stream":
        args.append("--stream")
    if how == "torchrun":
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "gmvae_cli", *args]
        env = {**env, "OMP_NUM_THREADS": "1"}
    else:
        command = gmvae_command(*args)
    run = measured(command, env)
    clusters = assign_clusters(model, Path(ds["file"]), model.with_suffix(".parquet"), env)
    info = subprocess.run(gmvae_command("info", str(model), "--json"), check=True, env=env,
                          cwd=ROOT, capture_output=True, text=True)
    return {"how": how, "wall_seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"],
            "accuracy": hungarian_accuracy(ds["labels"], clusters),
            "recipe": json.loads(info.stdout)["recipe"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="a table size (repeatable)")
    parser.add_argument("--no-mnist", action="store_true", help="skip the MNIST runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    report = {
        "date": date.today().isoformat(), "command": "make bench-scale",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": args.threads},
        "synthetic": [], "mnist": [],
    }
    for rows in args.rows or SIZES:
        report["synthetic"].append(synthetic(rows, env))
        print(json.dumps(report["synthetic"][-1]), flush=True)
    if not args.no_mnist:
        for how in ("memory", "stream", "torchrun"):
            report["mnist"].append(mnist(how, env))
            print(json.dumps(report["mnist"][-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("scale-recipe.json" if not args.rows else "scale-recipe-partial.json")
    out.write_text(json.dumps(report, indent=2))
    print(pd.DataFrame(report["synthetic"]).drop(columns=["timings"]).to_string(index=False))
    if report["mnist"]:
        print(pd.DataFrame(report["mnist"]).to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""`make bench`: clustering quality on MNIST (test digits), USPS and three small tables
(iris, wine, breast cancer, shipped with scikit-learn), run as a user would.

Each GMVAE run is two CLI calls, `gmvae train FILE --k K --seed S` (default options) and
`gmvae assign`, timed from outside. Labels are read only here, to score the assignments.
Baselines (k-means, GMM on PCA-50, UMAP + GMM; on the small tables k-means and a GMM on the
standardised columns) are scored in the same run on the same cores.

    python -m benchmarks.quality            # full run, writes bench-results/ and docs/benchmarks.md
    python -m benchmarks.quality --quick    # smoke run: one short MNIST run and k-means
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import (
    CACHE,
    DATA,
    RESULTS,
    ROOT,
    TABLES_END,
    TABLES_START,
    between,
    epoch_rows_per_s,
    gmvae,
    kept_notes,
    machine,
    machine_line,
    matmul_peak_gflops,
    model_flops_per_row,
    score,
)
from gmvae_cli import checkpoint

# (data set, K, seeds, extra options): the runs; extra options only for the paper recipe.
FULL_RUNS = [
    ("mnist", 10, [0, 1, 2, 3, 4], []),
    ("mnist", 30, [0, 1, 2], []),
    ("usps", 10, [0, 1, 2], []),
    ("mnist", 10, [0], ["--recipe", "paper"]),
    ("usps", 10, [0], ["--recipe", "paper"]),
    # Small tables, shipped with scikit-learn: where users often try a clustering tool first.
    ("iris", 3, [0, 1, 2, 3], []),
    ("wine", 3, [0, 1, 2, 3], []),
    ("breast_cancer", 2, [0, 1, 2, 3], []),
]
SMALL_TABLES = ("iris", "wine", "breast_cancer")
QUICK_RUNS = [("usps", 10, [0], [])]


# -- data, converted once into the cache as files a user would hold ---------------------------


def read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def datasets() -> dict[str, dict]:
    CACHE.mkdir(exist_ok=True)
    mnist = CACHE / "mnist-test.parquet"
    mnist_labels = read_idx(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz", 8).astype(int)
    if not mnist.exists():
        pixels = read_idx(DATA / "mnist" / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784)
        frame = pd.DataFrame((pixels / 255.0).astype(np.float32),
                             columns=[f"px{i}" for i in range(784)])
        frame.to_parquet(mnist)
    import h5py

    usps = DATA / "usps.h5"
    with h5py.File(usps, "r") as h5:
        usps_labels = h5["train/target"][()].astype(int)
    sets = {
        "mnist": {"file": str(mnist), "options": [], "labels": mnist_labels},
        "usps": {"file": str(usps), "options": ["--key", "train/data"], "labels": usps_labels},
    }
    from sklearn import datasets as bundled

    for name in SMALL_TABLES:
        table = getattr(bundled, f"load_{name}")()
        path = CACHE / f"{name}.csv"
        if not path.exists():
            pd.DataFrame(table.data, columns=table.feature_names).to_csv(path, index=False)
        sets[name] = {"file": str(path), "options": [], "labels": table.target.astype(int)}
    return sets


def load_matrix(ds: dict) -> np.ndarray:
    if ds["file"].endswith(".csv"):
        return pd.read_csv(ds["file"]).to_numpy(np.float32)
    if ds["file"].endswith(".parquet"):
        return pd.read_parquet(ds["file"]).to_numpy(np.float32)
    import h5py

    with h5py.File(ds["file"], "r") as h5:
        return h5["train/data"][()].astype(np.float32)


def run_gmvae(name: str, ds: dict, k: int, seed: int, extra: list[str], folder: Path) -> dict:
    tag = f"{name}-k{k}-s{seed}{'-' + '-'.join(extra).strip('-') if extra else ''}"
    model, out = folder / f"{tag}.pt", folder / f"{tag}.csv"
    train_s = gmvae(["train", ds["file"], *ds["options"], "--k", str(k), "--seed", str(seed),
                     "-o", str(model), "--quiet", *extra])
    assign_s = gmvae(["assign", str(model), ds["file"], *ds["options"], "-o", str(out)])
    clusters = pd.read_csv(out)["cluster"].to_numpy()
    payload = checkpoint.load(str(model))
    rows_per_s = epoch_rows_per_s(payload, len(clusters))
    result = {
        "data": name, "k": k, "seed": seed, "options": extra or ["(defaults)"],
        "train_seconds": round(train_s, 1), "assign_seconds": round(assign_s, 1),
        "train_rows_per_s": rows_per_s,
        "flops_per_row": model_flops_per_row(payload),
        **score(ds["labels"], clusters, k, len(np.unique(ds["labels"]))),
    }
    print(json.dumps(result), flush=True)
    return result


# -- baselines -----------------------------------------------------------------------------


def baselines(name: str, ds: dict, seed: int = 0) -> list[dict]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x, labels, k = load_matrix(ds), ds["labels"], len(np.unique(ds["labels"]))
    found = []

    def record(method: str, fit):
        started = time.perf_counter()
        clusters = fit()
        result = {"data": name, "method": method, "k": k, "seed": seed,
                  "seconds": round(time.perf_counter() - started, 1),
                  **score(labels, clusters, k, k)}
        print(json.dumps(result), flush=True)
        found.append(result)

    record("k-means on pixels (n_init=10)",
           lambda: KMeans(k, n_init=10, random_state=seed).fit_predict(x))
    record("GMM (full) on PCA-50", lambda: GaussianMixture(
        k, covariance_type="full", random_state=seed).fit_predict(
            PCA(50, random_state=seed).fit_transform(x)))

    def umap_gmm():
        import umap

        emb = umap.UMAP(n_components=10, n_neighbors=20, min_dist=0.0,
                        random_state=seed).fit_transform(x)
        return GaussianMixture(k, covariance_type="full", random_state=seed).fit_predict(emb)

    record("UMAP (10 dims) + GMM (full)", umap_gmm)
    return found


def small_table_baselines(name: str, ds: dict, seed: int = 0) -> list[dict]:
    """k-means and a full-covariance GMM on the standardised columns, 10 inits each."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    x, labels = StandardScaler().fit_transform(load_matrix(ds)), ds["labels"]
    k = len(np.unique(labels))
    found = []
    for method, model in (
        ("k-means on standardised columns (n_init=10)", KMeans(k, n_init=10, random_state=seed)),
        ("GMM (full) on standardised columns (n_init=10)",
         GaussianMixture(k, covariance_type="full", n_init=10, random_state=seed)),
    ):
        started = time.perf_counter()
        clusters = model.fit_predict(x)
        found.append({"data": name, "method": method, "k": k, "seed": seed,
                      "seconds": round(time.perf_counter() - started, 1),
                      **score(labels, clusters, k, k)})
        print(json.dumps(found[-1]), flush=True)
    return found


# -- report --------------------------------------------------------------------------------


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"], r["k"], " ".join(r["options"])), []).append(r)
    rows = []
    for (data, k, options), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        rows.append({
            "data": data, "k": k, "options": options, "seeds": [r["seed"] for r in rs],
            "protocol": rs[0]["accuracy_protocol"],
            "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
            "accuracy_min": float(acc.min()), "per_seed": [round(a, 4) for a in acc],
            "nmi_mean": float(np.mean([r["nmi"] for r in rs])),
            "ari_mean": float(np.mean([r["ari"] for r in rs])),
            "min_non_empty": min(r["non_empty_clusters"] for r in rs),
            "max_train_seconds": max(r["train_seconds"] for r in rs),
            "train_rows_per_s": float(np.mean([r["train_rows_per_s"] or 0 for r in rs])),
            "flops_per_row": rs[0]["flops_per_row"],
        })
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks: clustering quality",
        "",
        (f"Measured {report['date']} with `{report['command']}` on {machine_line(m)}. "
        f"Dense matmul peak in the same run: {report['matmul_gflops']:.1f} GFLOP/s."),
        "",
        ("Accuracy is Hungarian one-to-one matching when K equals the number of classes and "
        "majority mapping when K is larger (column `protocol`). GMVAE runs use only `--k` and "
        "`--seed` unless the options column says otherwise. Labels are used only for scoring."),
        "",
        "## GMVAE",
        "",
        ("| data | K | options | protocol | accuracy mean ± std | worst | per seed | NMI | ARI | "
        "min non-empty | max train s | train rows/s | MFU |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        mfu = s["train_rows_per_s"] * s["flops_per_row"] / (report["matmul_gflops"] * 1e9)
        lines.append(
            f"| {s['data']} | {s['k']} | {s['options']} | {s['protocol']} | "
            f"{s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | {s['accuracy_min']:.3f} | "
            f"{', '.join(f'{a:.3f}' for a in s['per_seed'])} (seeds {s['seeds']}) | "
            f"{s['nmi_mean']:.3f} | {s['ari_mean']:.3f} | {s['min_non_empty']} | "
            f"{s['max_train_seconds']:.0f} | {s['train_rows_per_s']:.0f} | {mfu:.1%} |"
        )
    lines += ["", "## Baselines (same run, seed 0, Hungarian accuracy)", "",
              "| data | method | accuracy | NMI | ARI | seconds |", "|---|---|---|---|---|---|"]
    for b in report["baselines"]:
        lines.append(f"| {b['data']} | {b['method']} | {b['accuracy']:.3f} | {b['nmi']:.3f} | "
                     f"{b['ari']:.3f} | {b['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args()
    sets = datasets()
    folder = CACHE / "runs"
    folder.mkdir(exist_ok=True, parents=True)
    runs = [run_gmvae(name, sets[name], k, seed, extra, folder)
            for name, k, seeds, extra in (QUICK_RUNS if args.quick else FULL_RUNS)
            for seed in seeds]
    found = []
    if not args.quick:
        found = baselines("mnist", sets["mnist"]) + baselines("usps", sets["usps"])
        found += [b for name in SMALL_TABLES for b in small_table_baselines(name, sets[name])]
    report = {
        "date": date.today().isoformat(),
        "command": "make bench-quick" if args.quick else "make bench",
        "machine": machine(),
        "matmul_gflops": matmul_peak_gflops(),
        "runs": runs, "summary": summarise(runs), "baselines": found,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("quality-quick.json" if args.quick else "quality.json")
    out.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if not args.quick:
        doc = ROOT / "docs" / "benchmarks.md"
        # Survive a rerun: the small-table section `make bench-tables` writes, and the
        # hand-written analysis below the "## Notes" heading.
        old = doc.read_text() if doc.exists() else ""
        tables = between(old, TABLES_START, TABLES_END)
        doc.write_text(text + (f"\n{tables}\n" if tables else "") + kept_notes(old))
    print(f"wrote {out}" + ("" if args.quick else " and docs/benchmarks.md"))


if __name__ == "__main__":
    main()

"""`make bench`: clustering quality on MNIST (test digits) and USPS, run as a user would
(`make bench` then runs benchmarks.tables for the tables).

Each GMVAE run is two CLI calls, `gmvae train FILE --k K --seed S` (default options) and
`gmvae assign`, timed from outside. Labels are read only here, to score the assignments.
Beside each run: the accuracy of the recipe's own pseudo-clusters (the checkpoint's
`pseudo_labels`), so the GMVAE's own contribution is a number, and where the run's time went
(the checkpoint's stage timings; start-up is the process's time before training began).
Baselines, seeds 0-2 each, in the same run on the same cores, with the care the recipe gets:
k-means (10 inits) on the pixels; a full-covariance GMM (10 inits) on PCA-50; umap-learn
(5 dims, 20 neighbours, min_dist 0, the recipe's settings) + the same GMM on the pixels; and
N2D, the same UMAP + GMM on the codes of an autoencoder of the GMVAE's shape pretrained as the
recipe pretrains its own (Adam 1e-3, batch 128, warm_start.pretrain_epochs: 51 epochs on
MNIST-test, 71 on USPS).

    python -m benchmarks.quality            # full run, writes bench-results/ and docs/benchmarks.md
    python -m benchmarks.quality --quick    # smoke run: one short MNIST run and k-means
    python -m benchmarks.quality --rerun usps   # that data set's GMVAE runs again, merged
    python -m benchmarks.quality --rerun usps --with-n2d   # and its N2D baseline
    python -m benchmarks.quality --render   # runs nothing: the page again from quality.json
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
]
QUICK_RUNS = [("usps", 10, [0], [])]
BASELINE_SEEDS = (0, 1, 2)
UMAP = {"n_components": 5, "n_neighbors": 20, "min_dist": 0.0}  # the recipe's embedding
GMM_INITS = 10
# The targets of the issue "The GMVAE earns its clusters": (what, data, K, measure, goal,
# "min" or "max"); measures: "mean" and "worst" accuracy, "gain" (GMVAE − pseudo-clusters,
# mean over seeds), "seconds" (slowest `gmvae train` of any default-recipe run).
TARGETS = [
    ("MNIST-test K = 10, mean accuracy", "mnist", 10, "mean", 0.97, "min"),
    ("MNIST-test K = 10, worst seed", "mnist", 10, "worst", 0.96, "min"),
    ("MNIST-test K = 10, GMVAE − pseudo-clusters", "mnist", 10, "gain", 0.015, "min"),
    ("USPS K = 10, mean accuracy", "usps", 10, "mean", 0.98, "min"),
    ("MNIST-test K = 30, mean accuracy (majority)", "mnist", 30, "mean", 0.97, "min"),
    ("every run, seconds", None, None, "seconds", 180.0, "max"),
]
# The checkpoint's stage timings, in the order a run goes through them.
STAGES = ("startup", "read", "sample", "pretrain", "columns", "neighbours", "embedding",
          "mixture", "place", "guided", "refine", "elbo", "write")


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
                     "-o", str(model), "--force", "--quiet", *extra])
    assign_s = gmvae(["assign", str(model), ds["file"], *ds["options"], "-o", str(out)])
    clusters = pd.read_csv(out)["cluster"].to_numpy()
    payload = checkpoint.load(str(model))
    rows_per_s = epoch_rows_per_s(payload, len(clusters))
    classes = len(np.unique(ds["labels"]))
    pseudo = payload.get("pseudo_labels")
    timings = {name: round(float(value), 2) for name, value in payload.get("timings", {}).items()}
    result = {
        "data": name, "k": k, "seed": seed, "options": extra or ["(defaults)"],
        "train_seconds": round(train_s, 1), "assign_seconds": round(assign_s, 1),
        "train_rows_per_s": rows_per_s,
        "flops_per_row": model_flops_per_row(payload),
        **score(ds["labels"], clusters, k, classes),
        "pseudo_accuracy": None if pseudo is None else
        score(ds["labels"], np.asarray(pseudo), k, classes)["accuracy"],
        "warm_start": payload.get("warm_start"),
        "timings": timings,
    }
    print(json.dumps(result), flush=True)
    return result


# -- baselines -----------------------------------------------------------------------------


N2D = "N2D: autoencoder codes + UMAP (5 dims) + GMM (full, n_init=10)"


def baselines(name: str, ds: dict, seeds=BASELINE_SEEDS, only: str | None = None) -> list[dict]:
    """k-means, PCA-50 + GMM, UMAP + GMM and N2D (or `only` that method), each for every
    seed (module doc)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x, labels, k = load_matrix(ds), ds["labels"], len(np.unique(ds["labels"]))
    found = []

    def gmm(space, seed):
        return GaussianMixture(k, covariance_type="full", n_init=GMM_INITS, reg_covar=1e-4,
                               random_state=seed).fit_predict(space)

    def umap_gmm(space, seed):
        import umap

        emb = umap.UMAP(**UMAP, random_state=seed).fit_transform(space)
        return gmm(emb, seed)

    methods = {
        "k-means on pixels (n_init=10)":
            lambda s: KMeans(k, n_init=10, random_state=s).fit_predict(x),
        "GMM (full, n_init=10) on PCA-50":
            lambda s: gmm(PCA(50, random_state=s).fit_transform(x), s),
        "UMAP (5 dims) + GMM (full, n_init=10) on pixels": lambda s: umap_gmm(x, s),
        N2D: lambda s: umap_gmm(autoencoder_codes(x, s), s),
    }
    for method, fit in methods.items():
        if only is not None and method != only:
            continue
        for seed in seeds:
            started = time.perf_counter()
            clusters = fit(seed)
            result = {"data": name, "method": method, "k": k, "seed": seed,
                      "seconds": round(time.perf_counter() - started, 1),
                      **score(labels, clusters, k, k)}
            print(json.dumps(result), flush=True)
            found.append(result)
    return found


def autoencoder_codes(x: np.ndarray, seed: int) -> np.ndarray:
    """Codes of an autoencoder shaped and pretrained as the default recipe's own."""
    import torch

    from gmvae_cli import warm_start
    from gmvae_cli.api import auto_hidden
    from gmvae_cli.model import GMVAENet, ModelConfig

    torch.manual_seed(seed)
    likelihood = "bernoulli" if x.min() >= 0 and x.max() <= 1 else "gaussian"
    net = GMVAENet(ModelConfig(input_dim=x.shape[1], hidden=auto_hidden(x.shape[1]),
                               likelihood=likelihood))
    rows, cpu = torch.from_numpy(x), torch.device("cpu")
    warm_start.pretrain([net], rows, warm_start.DEFAULT_SETTINGS, 128, cpu, seed,
                        lambda stage, done: None, lambda state: None)
    return warm_start.encode_means(net, rows, cpu).numpy()


def baseline_summary(found: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for b in found:
        groups.setdefault((b["data"], b["method"]), []).append(b)
    return [{"data": data, "method": method, "seeds": [b["seed"] for b in bs],
             "accuracy_mean": float(np.mean([b["accuracy"] for b in bs])),
             "accuracy_min": float(np.min([b["accuracy"] for b in bs])),
             "per_seed": [round(b["accuracy"], 4) for b in bs],
             "nmi_mean": float(np.mean([b["nmi"] for b in bs])),
             "ari_mean": float(np.mean([b["ari"] for b in bs])),
             "seconds_max": max(b["seconds"] for b in bs)}
            for (data, method), bs in groups.items()]


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
            "pseudo_per_seed": [None if r["pseudo_accuracy"] is None
                                else round(r["pseudo_accuracy"], 4) for r in rs],
            "warm_start": [(r["warm_start"] or {}).get("chosen") for r in rs],
        })
    return rows


def targets(summary: list[dict]) -> list[dict]:
    """Each TARGET against the default-recipe rows of `summary`: the measured value, whether
    it is met, and by how much it falls short (0 when met)."""
    defaults = [s for s in summary if s["options"] == "(defaults)"]
    found = []
    for what, data, k, measure, goal, kind in TARGETS:
        rows = [s for s in defaults if (s["data"], s["k"]) == (data, k)] if data else defaults
        if not rows:
            continue
        if measure == "seconds":
            value = max(s["max_train_seconds"] for s in rows)
        elif measure == "gain":
            pseudo = [p for p in rows[0]["pseudo_per_seed"] if p is not None]
            if not pseudo:
                continue
            value = float(np.mean(rows[0]["per_seed"]) - np.mean(pseudo))
        else:
            value = rows[0]["accuracy_mean" if measure == "mean" else "accuracy_min"]
        met = value >= goal if kind == "min" else value <= goal
        found.append({"target": what, "measure": measure, "goal": goal, "kind": kind,
                      "value": value, "met": met, "short_by": 0.0 if met else abs(goal - value)})
    return found


def _shown(measure: str, value: float) -> str:
    return {"seconds": f"{value:.0f} s", "gain": f"{value:+.3f}"}.get(measure, f"{value:.3f}")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks: clustering quality",
        "",
        (f"Measured {report['date']} with {report['command']} on {machine_line(m)}. "
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
    lines += ["", "## The GMVAE's own contribution", "",
              ("Accuracy of the warm start's pseudo-clusters and of the trained GMVAE, seed by "
               "seed (the way the pseudo-clusters were found in brackets)."), "",
              "| data | K | options | pseudo-clusters per seed | GMVAE per seed | GMVAE − pseudo (mean) |",
              "|---|---|---|---|---|---|"]
    for s in report["summary"]:
        pseudo = [p for p in s["pseudo_per_seed"] if p is not None]
        if not pseudo:
            continue
        gain = np.mean(s["per_seed"]) - np.mean(pseudo)
        ways = sorted({w for w in s["warm_start"] if w})
        lines.append(f"| {s['data']} | {s['k']} | {s['options']} | "
                     f"{', '.join(f'{p:.3f}' for p in pseudo)} ({', '.join(ways)}) | "
                     f"{', '.join(f'{a:.3f}' for a in s['per_seed'])} | {gain:+.3f} |")
    lines += ["", "## Targets", "",
              "The issue \"The GMVAE earns its clusters\", its targets against this page's runs.",
              "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in targets(report["summary"]):
        gap = _shown(t["measure"], t["short_by"]).lstrip("+")
        verdict = "yes" if t["met"] else f"no, short by {gap}"
        lines.append(f"| {t['target']} | {'≥' if t['kind'] == 'min' else '≤'} "
                     f"{_shown(t['measure'], t['goal'])} | {_shown(t['measure'], t['value'])} "
                     f"| {verdict} |")
    lines += ["", "## Where the time goes (seconds, mean over seeds)", "",
              "| data | K | options | wall | " + " | ".join(STAGES) + " |",
              "|---|---|---|---|" + "---|" * len(STAGES)]
    for s in report["summary"]:
        runs = [r for r in report["runs"] if (r["data"], r["k"], " ".join(r["options"]))
                == (s["data"], s["k"], s["options"])]
        cells = [f"{np.mean([r['timings'].get(stage, 0.0) for r in runs]):.1f}" for stage in STAGES]
        wall = np.mean([r["train_seconds"] for r in runs])
        lines.append(f"| {s['data']} | {s['k']} | {s['options']} | {wall:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Baselines (same run, seeds 0-2, Hungarian accuracy)", "",
              "| data | method | accuracy mean | worst | per seed | NMI | ARI | max seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for b in report["baseline_summary"]:
        lines.append(f"| {b['data']} | {b['method']} | {b['accuracy_mean']:.3f} | "
                     f"{b['accuracy_min']:.3f} | {', '.join(f'{a:.3f}' for a in b['per_seed'])} | "
                     f"{b['nmi_mean']:.3f} | {b['ari_mean']:.3f} | {b['seconds_max']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--rerun", choices=["mnist", "usps"],
                        help="run this data set's GMVAE runs again and replace them in "
                             "bench-results/quality.json (baselines and other runs kept)")
    parser.add_argument("--with-n2d", action="store_true",
                        help="with --rerun: run that data set's N2D baseline again too")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write docs/benchmarks.md again from "
                             "bench-results/quality.json (after a change to the page's layout)")
    args = parser.parse_args()
    if args.render:
        write_doc(json.loads((RESULTS / "quality.json").read_text()))
        return
    if args.with_n2d and not args.rerun:
        parser.error("--with-n2d goes with --rerun (a full run reruns every baseline)")
    sets = datasets()
    folder = CACHE / "runs"
    folder.mkdir(exist_ok=True, parents=True)
    plan = QUICK_RUNS if args.quick else FULL_RUNS
    if args.rerun:
        plan = [run for run in plan if run[0] == args.rerun]
    runs = [run_gmvae(name, sets[name], k, seed, extra, folder)
            for name, k, seeds, extra in plan for seed in seeds]
    found, reruns = [], []  # reruns: what replaced part of the full run since, in order
    if args.rerun:
        saved = json.loads((RESULTS / "quality.json").read_text())
        found = saved["baselines"]
        reruns = [r for r in saved.get("reruns", []) if r.split()[1] != args.rerun]
        reruns.append(f"--rerun {args.rerun}{' --with-n2d' if args.with_n2d else ''}")
        runs = [r for r in saved["runs"] if r["data"] != args.rerun] + runs
        if args.with_n2d:
            found = [b for b in found if (b["data"], b["method"]) != (args.rerun, N2D)] + \
                baselines(args.rerun, sets[args.rerun], only=N2D)
    elif not args.quick:
        found = baselines("mnist", sets["mnist"]) + baselines("usps", sets["usps"])
    report = {
        "date": date.today().isoformat(),
        "command": ("`make bench-quick`" if args.quick else "`make bench`" + (
            " (then " + " and ".join(f"`python -m benchmarks.quality {r}`" for r in reruns) + ")"
            if reruns else "")),
        "reruns": reruns,
        "machine": machine(),
        "matmul_gflops": matmul_peak_gflops(),
        "runs": runs, "summary": summarise(runs), "baselines": found,
        "baseline_summary": baseline_summary(found),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("quality-quick.json" if args.quick else "quality.json")
    out.write_text(json.dumps(report, indent=2))
    if args.quick:
        print(markdown(report))
    else:
        write_doc(report)
    print(f"wrote {out}" + ("" if args.quick else " and docs/benchmarks.md"))


def write_doc(report: dict) -> None:
    """docs/benchmarks.md from `report`, keeping what other commands and people wrote there:
    the small-table section `make bench-tables` writes, and the notes below "## Notes"."""
    text = markdown(report)
    print(text)
    doc = ROOT / "docs" / "benchmarks.md"
    old = doc.read_text() if doc.exists() else ""
    tables = between(old, TABLES_START, TABLES_END)
    doc.write_text(text + (f"\n{tables}\n" if tables else "") + kept_notes(old))


if __name__ == "__main__":
    main()

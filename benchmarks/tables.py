"""`make bench-tables`: the GMVAE's default recipe on small real tables and on synthetic tables
that are each a known hard case, against k-means, a GMM and UMAP + GMM, all in one run.

    python -m benchmarks.tables                  # full run: bench-results/tables.json and the
                                                 # tables section of docs/benchmarks.md
    python -m benchmarks.tables --quick          # smoke run: iris and biopsy, seed 0
    python -m benchmarks.tables --only glass,imbalanced --seeds 0 --methods gmvae,kmeans

Runs with --only, --seeds or --methods write bench-results/tables-partial.json; only the full
run (and --quick, to tables-quick.json) writes its own file, and only the full run touches docs.

The tables are written once into bench-cache/tables/NAME.csv as a user would hold them: the
label is a column of the file (`label`, or the shared tables' own `type` / `class`) that every
method leaves out (`--exclude`). Delete that folder after changing a generator below.

Real tables: iris, wine, breast_cancer, digits (scikit-learn's bundled copies, `load_*`, with
the target as column `label`), glass and biopsy (copied from $GMVAE_DATA/tables/, default
../shared/data/tables/; biopsy has an `ID` column with repeats and 16 missing values in `V6`).

Synthetic tables, each from its own fixed seed (numpy default_rng), Gaussian clusters of
within-cluster standard deviation 1 unless said otherwise; "gap g" means the cluster means are
drawn from a standard normal and rescaled so that the closest two are g apart:
- nuisance (seed 1): 1,500 rows, 4 equal clusters in 6 columns, gap 4.5, plus `batch`, an
  integer column uniform on {1, 2, 3} and independent of the clusters (a site or batch code).
- anisotropic (seed 2): 1,500 rows, 3 equal clusters in 4 columns, gap 5, then the whole
  table is multiplied by R1 diag(6, 1, 1, 1) R2 (R1, R2 random rotations): long parallel
  ellipses, as in scikit-learn's "k-means assumptions" example. k-means cuts across them
  (ARI about 0.3); a full-covariance GMM does not (about 0.99).
- scales (seed 3): 2,000 rows, 4 equal clusters in 6 columns, gap 5 (along the first two
  columns the means are shrunk to 0.3x their spread), then the columns are scaled by 1000,
  1000, 1, 1, 0.001, 0.001 and shifted by 50,000, 2,000, 0, 0, 0.05, 0.01: units 1,000x apart,
  and the big columns carry the least signal.
- noise (seed 4): 2,000 rows, 4 equal clusters in 5 informative columns, gap 4, plus 20
  columns of pure standard-normal noise.
- imbalanced (seed 5): 4 clusters of 2,000, 2,000, 200 and 200 rows (10:1) in 5 columns,
  gap 4.5.
- midsize (seed 6): 20,000 rows x 8 columns, 6 equal clusters, gap 4.5, each cluster with its
  own covariance (a random rotation, standard deviations uniform in 0.5-1.5).
- categorical (seed 7): 3,000 rows, 5 equal clusters. Two string columns carry most of the
  signal: `colour` (5 values) is the cluster's own colour with probability 0.8, else uniform
  over all 5; `material` (8 values) is one of the cluster's two materials (c and c + 5 mod 8)
  with probability 0.8, else uniform over all 8. Four numeric columns carry weak signal
  (gap 1.5): the true model's own posterior scores ARI 0.91 on this table, a GMM on the
  numeric columns alone about 0.5.

Methods, each for every seed (default 0, 1, 2):
- GMVAE: `gmvae train FILE --k K --seed S` with only the options a user must add for the file
  (`--exclude` the label, and `--id-column` for biopsy), then `gmvae assign`. Its seconds are the wall time of `train`.
  Beside it, the recipe's own pseudo-clusters (the checkpoint's `pseudo_labels`, where present).
- Baselines on the table as a user would prepare it for scikit-learn: the id and label columns
  dropped, missing values filled with the column mean, numeric columns standardised, string
  columns one-hot encoded (0/1, not scaled; only `categorical` has any):
  k-means (n_init=10); a full-covariance GaussianMixture (n_init=10), on PCA to 10 dimensions
  where the prepared table is wider than 30 columns (digits); GMM (BIC): the same, for each
  covariance type (full, tied, diag, spherical), the lowest BIC kept, as the GMVAE's warm
  start chooses its columns' mixture (the equal-care baseline for that choice); UMAP (n_components=5,
  n_neighbors=20, min_dist=0, random_state=seed, the same for every table) then the same GMM
  on its embedding. UMAP's numba compilation is done once before timing.

Scores: ARI (sklearn adjusted_rand_score) and Hungarian accuracy (gmvae_cli.metrics) against
the label, on every row of the table. A row that `assign` leaves without a cluster (dropped for
missing values) counts as wrong: it gets a cluster of its own for the ARI and is never matched
in the accuracy. Pseudo-clusters are scored on the training rows they cover.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from benchmarks.common import (
    CACHE,
    DATA,
    RESULTS,
    ROOT,
    TABLES_END,
    TABLES_START,
    CLIFailed,
    command_line,
    machine,
    machine_line,
    replace_block,
    run_cli,
)
from gmvae_cli import checkpoint
from gmvae_cli.metrics import hungarian_accuracy

FOLDER = CACHE / "tables"
RUNS = CACHE / "tables-runs"
METHODS = ("gmvae", "kmeans", "gmm", "gmm_bic", "umap")
TITLES = {"gmvae": "GMVAE", "kmeans": "k-means", "gmm": "GMM", "gmm_bic": "GMM (BIC)",
          "umap": "UMAP + GMM"}
COVARIANCES = ("full", "tied", "diag", "spherical")  # the types GMM (BIC) chooses among
UMAP = {"n_components": 5, "n_neighbors": 20, "min_dist": 0.0}
GMM_INITS = 10
PCA_ABOVE = 30  # prepared tables wider than this go through PCA to PCA_DIMS before the GMM
PCA_DIMS = 10
QUICK = ("iris", "biopsy")


# -- the tables -------------------------------------------------------------------------------


def spread_means(rng: np.random.Generator, k: int, dims: int, gap: float) -> np.ndarray:
    """k means drawn from a standard normal, rescaled so that the closest two are `gap` apart."""
    means = rng.standard_normal((k, dims))
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    return means * gap / d[np.triu_indices(k, 1)].min()


def rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.sign(np.diag(r))


def gaussian_clusters(rng, sizes, means, stds=None, rotations=None):
    """Rows of Gaussian clusters, shuffled: (values, labels). Cluster c is
    mean_c + rotation_c @ (stds_c * standard normal), each part optional."""
    parts, labels = [], []
    for c, (n, mean) in enumerate(zip(sizes, means)):
        z = rng.standard_normal((n, len(mean)))
        if stds is not None:
            z = z * stds[c]
        if rotations is not None:
            z = z @ rotations[c].T
        parts.append(z + mean)
        labels.append(np.full(n, c))
    order = rng.permutation(sum(sizes))
    return np.vstack(parts)[order], np.concatenate(labels)[order]


def frame(values: np.ndarray, labels: np.ndarray, prefix: str = "x") -> pd.DataFrame:
    out = pd.DataFrame(values, columns=[f"{prefix}{i + 1}" for i in range(values.shape[1])])
    out["label"] = labels
    return out


def make_nuisance() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x, y = gaussian_clusters(rng, [375] * 4, spread_means(rng, 4, 6, 4.5))
    out = frame(x, y)
    out.insert(3, "batch", rng.integers(1, 4, len(out)))
    return out


def make_anisotropic() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    x, y = gaussian_clusters(rng, [500] * 3, spread_means(rng, 3, 4, 5.0))
    stretch = rotation(rng, 4) @ np.diag([6.0, 1.0, 1.0, 1.0]) @ rotation(rng, 4)
    return frame(x @ stretch, y)


def make_scales() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    means = spread_means(rng, 4, 6, 5.0)
    means[:, :2] *= 0.3
    x, y = gaussian_clusters(rng, [500] * 4, means)
    x = x * np.array([1000, 1000, 1, 1, 0.001, 0.001]) + np.array([5e4, 2e3, 0, 0, 0.05, 0.01])
    return frame(x, y)


def make_noise() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    x, y = gaussian_clusters(rng, [500] * 4, spread_means(rng, 4, 5, 4.0))
    out = frame(x, y, "signal")
    for i in range(20):
        out.insert(5 + i, f"noise{i + 1}", rng.standard_normal(len(out)))
    return out


def make_imbalanced() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return frame(*gaussian_clusters(rng, [2000, 2000, 200, 200], spread_means(rng, 4, 5, 4.5)))


def make_midsize() -> pd.DataFrame:
    rng = np.random.default_rng(6)
    k, dims = 6, 8
    means = spread_means(rng, k, dims, 4.5)
    stds = rng.uniform(0.5, 1.5, (k, dims))
    sizes = [20_000 // k + (c < 20_000 % k) for c in range(k)]
    rotations = [rotation(rng, dims) for _ in range(k)]
    return frame(*gaussian_clusters(rng, sizes, means, stds, rotations))


def make_categorical() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    k, n = 5, 3000
    x, y = gaussian_clusters(rng, [n // k] * k, spread_means(rng, k, 4, 1.5))
    colours = np.array(["red", "green", "blue", "yellow", "black"])
    materials = np.array(["wood", "steel", "glass", "paper", "cotton", "clay", "brass", "wool"])
    colour = np.where(rng.random(n) < 0.8, y, rng.integers(0, 5, n))
    favoured = np.where(rng.random(n) < 0.5, y, (y + 5) % 8)
    material = np.where(rng.random(n) < 0.8, favoured, rng.integers(0, 8, n))
    out = frame(x, y)
    out.insert(0, "colour", colours[colour])
    out.insert(1, "material", materials[material])
    return out


def sklearn_table(name: str) -> Callable[[], pd.DataFrame]:
    def make() -> pd.DataFrame:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        names = bunch.feature_names if name != "digits" else [f"px{i}" for i in range(64)]
        out = pd.DataFrame(bunch.data, columns=names)
        out["label"] = bunch.target
        return out
    return make


def shared_table(name: str) -> Callable[[], Path]:
    return lambda: DATA / "tables" / f"{name}.csv"


@dataclass(frozen=True)
class Table:
    name: str
    k: int
    make: Callable[[], pd.DataFrame | Path]  # a frame to write, or a shared file to copy
    made: str  # one line for the doc
    label: str = "label"
    id_column: str | None = None

    @property
    def path(self) -> Path:
        return FOLDER / f"{self.name}.csv"

    def file(self) -> str:
        """The table's CSV, written into the cache the first time; relative to the repo root."""
        if not self.path.exists():
            FOLDER.mkdir(parents=True, exist_ok=True)
            made = self.make()
            if isinstance(made, Path):
                shutil.copyfile(made, self.path)
            else:
                made.to_csv(self.path, index=False)
        return str(self.path.relative_to(ROOT))

    def user_options(self) -> list[str]:
        """What a user must add to `gmvae train` for this file."""
        options = ["--exclude", self.label]
        if self.id_column:
            options += ["--id-column", self.id_column]
        return options


TABLES = [
    Table("iris", 3, sklearn_table("iris"), "scikit-learn `load_iris`, 150 × 4"),
    Table("wine", 3, sklearn_table("wine"), "scikit-learn `load_wine`, 178 × 13"),
    Table("breast_cancer", 2, sklearn_table("breast_cancer"),
          "scikit-learn `load_breast_cancer`, 569 × 30"),
    Table("digits", 10, sklearn_table("digits"),
          "scikit-learn `load_digits`, 1,797 × 64 (8 × 8 pixels, 0-16)"),
    Table("glass", 6, shared_table("glass"), "shared `tables/glass.csv`, 214 × 9, 6 imbalanced "
          "classes (9-76 rows), label `type` (strings)", label="type"),
    Table("biopsy", 2, shared_table("biopsy"), "shared `tables/biopsy.csv`, 699 × 9 ordinal "
          "scores 1-10, id `ID` (repeats), 16 missing in `V6`, label `class`",
          label="class", id_column="ID"),
    Table("nuisance", 4, make_nuisance, "1,500 × 7: 4 blobs in 6 columns + `batch`, an "
          "integer column on {1, 2, 3} unrelated to the clusters"),
    Table("anisotropic", 3, make_anisotropic, "1,500 × 4: 3 blobs stretched 6× along one "
          "shared, oblique direction (long parallel ellipses)"),
    Table("scales", 4, make_scales, "2,000 × 6: 4 blobs, columns in units 1,000× apart "
          "(×1000, ×1, ×0.001), the big ones least informative"),
    Table("noise", 4, make_noise, "2,000 × 25: 4 blobs in 5 columns + 20 pure-noise columns"),
    Table("imbalanced", 4, make_imbalanced, "4,400 × 5: 4 blobs of 2,000, 2,000, 200, 200 rows"),
    Table("midsize", 6, make_midsize, "20,000 × 8: 6 clusters, each its own rotated covariance"),
    Table("categorical", 5, make_categorical, "3,000 × 6: 2 string columns (`colour`, "
          "`material`) carry most of the signal, 4 numeric columns a weak one"),
]
BY_NAME = {t.name: t for t in TABLES}


def labels_of(table: Table) -> np.ndarray:
    return pd.factorize(pd.read_csv(table.path)[table.label])[0]


def features_of(table: Table) -> pd.DataFrame:
    """The file's columns but the label and the id."""
    return pd.read_csv(table.path).drop(columns=[c for c in (table.label, table.id_column) if c])


def prepared(table: Table) -> np.ndarray:
    """The table as a user prepares it for scikit-learn (module docstring, "Baselines")."""
    data = features_of(table)
    strings = [c for c in data.columns if not pd.api.types.is_numeric_dtype(data[c])]
    numeric = data.drop(columns=strings).to_numpy(np.float64)
    numeric = np.where(np.isnan(numeric), np.nanmean(numeric, axis=0), numeric)
    std = numeric.std(axis=0)
    numeric = (numeric - numeric.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if not strings:
        return numeric
    return np.hstack([numeric, pd.get_dummies(data[strings], dtype=np.float64).to_numpy()])


def describe(table: Table) -> dict:
    file = table.file()  # written into the cache the first time
    features = features_of(table)
    strings = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    return {"name": table.name, "file": file, "k": table.k, "rows": len(features),
            "feature_columns": features.shape[1], "string_columns": strings,
            "missing_values": int(features.isna().sum().sum()), "label": table.label,
            "id_column": table.id_column, "made": table.made,
            "gmvae_options": table.user_options()}


# -- scoring ----------------------------------------------------------------------------------


def scores(labels: np.ndarray, clusters: np.ndarray) -> dict:
    """ARI and Hungarian accuracy on every row; a row without a cluster (NaN) counts as wrong."""
    clusters = np.asarray(clusters, dtype=np.float64)
    assigned = ~np.isnan(clusters)
    # Each unassigned row gets a cluster of its own: no pair agreement for the ARI, and the
    # accuracy below matches only assigned rows (over all rows).
    own = np.where(assigned, clusters, -1.0 - np.arange(len(clusters)))
    accuracy = (hungarian_accuracy(labels[assigned], own[assigned]) * assigned.mean()
                if assigned.any() else 0.0)
    return {"ari": float(adjusted_rand_score(labels, own)), "accuracy": float(accuracy),
            "unassigned": int((~assigned).sum())}


def pseudo_scores(payload: dict, labels: np.ndarray, assigned: np.ndarray) -> dict:
    """The warm start's own clusters (the checkpoint's `pseudo_labels`), on the rows they cover."""
    pseudo = payload.get("pseudo_labels")
    if pseudo is None:
        return {}
    pseudo = np.asarray(pseudo.cpu() if hasattr(pseudo, "cpu") else pseudo).ravel()
    if len(pseudo) == len(labels):
        covered = labels
    elif len(pseudo) == int(assigned.sum()):  # rows dropped for missing values left out
        covered = labels[assigned]
    else:
        return {"pseudo_error": f"{len(pseudo)} pseudo-labels for {len(labels)} rows"}
    return {"pseudo_ari": float(adjusted_rand_score(covered, pseudo)),
            "pseudo_accuracy": hungarian_accuracy(covered, pseudo)}


# -- runs -------------------------------------------------------------------------------------


def run_gmvae(table: Table, seed: int) -> dict:
    RUNS.mkdir(parents=True, exist_ok=True)
    model = str((RUNS / f"{table.name}-s{seed}.pt").relative_to(ROOT))
    out = str((RUNS / f"{table.name}-s{seed}.csv").relative_to(ROOT))
    train = ["train", table.file(), "--k", str(table.k), "--seed", str(seed),
             *table.user_options(), "-o", model, "--force"]
    assign = ["assign", model, table.file(), "-o", out, "--quiet"]
    if table.id_column:
        assign += ["--id-column", table.id_column]
    result = {"data": table.name, "method": "gmvae", "seed": seed, "k": table.k,
              "command": command_line(train), "assign_command": command_line(assign)}
    try:
        seconds, done = run_cli(train, capture=True)
        result["assign_seconds"] = round(run_cli(assign, capture=True)[0], 2)
    except CLIFailed as e:
        return {**result, "error": str(e)}
    result["seconds"] = round(seconds, 2)
    result["notes"] = done.stderr.strip().splitlines()[-10:]  # the CLI's notes and warnings
    labels = labels_of(table)
    clusters = pd.read_csv(ROOT / out)["cluster"].to_numpy(np.float64)
    result.update(scores(labels, clusters))
    payload = checkpoint.load(str(ROOT / model))
    result.update(pseudo_scores(payload, labels, ~np.isnan(clusters)))
    if payload.get("timings") is not None:
        result["timings"] = {k: float(v) for k, v in payload["timings"].items()}
    if payload.get("warm_start"):  # which way found the pseudo-clusters, and how stable each was
        result["warm_start"] = payload["warm_start"]
    return result


def run_baseline(table: Table, method: str, seed: int) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x, k = prepared(table), table.k
    width = x.shape[1]

    def gmm(values: np.ndarray) -> np.ndarray:
        return GaussianMixture(k, covariance_type="full", n_init=GMM_INITS,
                               random_state=seed).fit_predict(values)

    def gmm_bic(values: np.ndarray) -> np.ndarray:
        fits = [GaussianMixture(k, covariance_type=c, n_init=GMM_INITS, random_state=seed).fit(values)
                for c in COVARIANCES]
        return min(fits, key=lambda f: f.bic(values)).predict(values)

    started = time.perf_counter()
    if method == "kmeans":
        call = f"KMeans({k}, n_init=10, random_state={seed})"
        clusters = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
    elif method in ("gmm", "gmm_bic"):
        call = (f"GaussianMixture({k}, covariance_type='full', n_init={GMM_INITS}, "
                f"random_state={seed})")
        if method == "gmm_bic":
            call = (f"GaussianMixture({k}, covariance_type=T, n_init={GMM_INITS}, "
                    f"random_state={seed}) for T in {', '.join(COVARIANCES)}, lowest BIC kept")
        if x.shape[1] > PCA_ABOVE:
            call = f"PCA({PCA_DIMS}, random_state={seed}) then {call}"
            x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
        clusters = (gmm if method == "gmm" else gmm_bic)(x)
    else:
        import umap

        settings = ", ".join(f"{key}={value}" for key, value in UMAP.items())
        call = (f"umap.UMAP({settings}, random_state={seed}) then GaussianMixture({k}, "
                f"covariance_type='full', n_init={GMM_INITS}, random_state={seed})")
        clusters = gmm(umap.UMAP(**UMAP, random_state=seed).fit_transform(x))
    seconds = time.perf_counter() - started
    return {"data": table.name, "method": method, "seed": seed, "k": k,
            "command": f"{call} on the prepared table ({width} columns)",
            "seconds": round(seconds, 2), **scores(labels_of(table), clusters)}


def warm_up_umap(rows: int) -> None:
    """Compile UMAP's numba code outside the timings (once per process; 10-30 s here).
    Past 4,096 rows UMAP searches neighbours with pynndescent, compiled separately."""
    import umap

    x = np.random.default_rng(0).standard_normal((rows, 5))
    umap.UMAP(**UMAP, random_state=0).fit_transform(x)


# -- report -----------------------------------------------------------------------------------


SCORES = ("ari", "accuracy", "pseudo_ari", "pseudo_accuracy")


def summarise(runs: list[dict], tables: list[Table], methods: list[str]) -> dict:
    """{table: {method: summary}}; a summary holds, for each score, its mean over seeds and
    its worst seed (`ari_mean`, `ari_worst`, …), `seconds_mean`, and the number of runs."""
    out: dict[str, dict[str, dict]] = {}
    for table in tables:
        for method in methods:
            done = [r for r in runs if r["data"] == table.name and r["method"] == method]
            ok = [r for r in done if "error" not in r]
            row = {"runs": len(ok), "failed": len(done) - len(ok)}
            for key in (*SCORES, "seconds"):
                values = [r[key] for r in ok if key in r]
                if values and len(values) == len(ok):
                    row[f"{key}_mean"] = float(np.mean(values))
                    row[f"{key}_worst"] = float(min(values))
            out.setdefault(table.name, {})[method] = row
    return out


def overall(summary: dict, methods: list[str]) -> dict:
    """{method: the mean over tables of each per-table figure}; a figure a method lacks on
    some table is left out."""
    out = {}
    for method in methods:
        rows = [by_method[method] for by_method in summary.values()]
        keys = {key for row in rows for key in row if key.endswith(("_mean", "_worst"))}
        out[method] = {key: float(np.mean([row[key] for row in rows]))
                       for key in sorted(keys) if all(key in row for row in rows)}
    return out


def cell(row: dict, key: str, best: float | None = None, failures: bool = True) -> str:
    """'mean (worst)', bold where it is the row's best, and how many runs failed (with
    `failures`); '–' where there is no such figure."""
    if f"{key}_mean" not in row:
        return "failed" if row.get("failed") and not row.get("runs") else "–"
    mean = row[f"{key}_mean"]
    text = f"{mean:.3f} ({row[f'{key}_worst']:.3f})"
    if best is not None and round(mean, 3) == round(best, 3):
        text = f"**{text}**"
    return text + (f" ({row['failed']} failed)" if failures and row.get("failed") else "")


def score_table(report: dict, key: str, with_extras: bool) -> list[str]:
    """One markdown table of `key` (ari or accuracy): a row per table and their mean."""
    methods = report["methods"]
    gmvae = "gmvae" in methods
    heads = (["GMVAE", "pseudo-clusters"] if gmvae else []) + [
        TITLES[m] for m in methods if m != "gmvae"]
    if with_extras:
        heads += ["GMVAE accuracy", "pseudo-cluster accuracy"] if gmvae else []
        heads += [f"seconds per run ({' / '.join(TITLES[m] for m in methods)})"]
    lines = ["| data | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    rows = [(t["name"], report["summary"][t["name"]]) for t in report["tables"]]
    rows.append((f"**mean of {len(rows)} tables**", report["overall"]))
    for name, by_method in rows:
        best = max((r[f"{key}_mean"] for r in by_method.values() if f"{key}_mean" in r),
                   default=None)
        cells = []
        if gmvae:
            cells += [cell(by_method["gmvae"], key, best),
                      cell(by_method["gmvae"], f"pseudo_{key}", failures=False)]
        cells += [cell(by_method[m], key, best) for m in methods if m != "gmvae"]
        if with_extras:
            if gmvae:
                cells += [cell(by_method["gmvae"], "accuracy", failures=False),
                          cell(by_method["gmvae"], "pseudo_accuracy", failures=False)]
            cells.append(" / ".join(f"{by_method[m]['seconds_mean']:.1f}"
                                    if "seconds_mean" in by_method[m] else "–" for m in methods))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    lines = [
        "## Small and synthetic tables (`make bench-tables`)",
        "",
        (f"Measured {report['date']} with `{report['command']}` on "
         f"{machine_line(report['machine'])}; seeds {', '.join(map(str, report['seeds']))} for "
         "every method, all in the same run. Each cell is the mean over seeds with the worst "
         "seed in brackets; the best mean of a row is in bold; the last row averages both "
         "over the tables. Labels are used only for scoring."),
        "",
        ("GMVAE: `gmvae train FILE --k K --seed S` plus only what the file needs (`--exclude` "
         "its label; `--id-column ID` and `--missing mean` for biopsy), scored from `gmvae "
         "assign`; its seconds are the wall time of `train` (process start included). "
         "*Pseudo-clusters* are the default recipe's warm-start clusters, read from the "
         "checkpoint (`pseudo_labels`; – where the checkpoint does not hold them). Baselines "
         "see the table as a user prepares it for scikit-learn: id and label dropped, missing "
         "values filled with the column mean, numeric columns standardised, string columns "
         "one-hot (0/1; only `categorical` has them, and `gmvae train` one-hot encodes them itself). "
         f"k-means: n_init=10. GMM: full covariance, n_init={GMM_INITS}, after PCA to "
         f"{PCA_DIMS} dimensions where the prepared table is wider than {PCA_ABOVE} columns "
         "(digits). GMM (BIC): that GMM for each covariance type (full, tied, diag, "
         "spherical), the lowest BIC kept, as the GMVAE's warm start chooses its columns' "
         "mixture. UMAP + GMM: UMAP (n_components=5, n_neighbors=20, min_dist=0, "
         "random_state=seed), then that GMM; UMAP's numba compilation is done before timing. "
         "A row that `assign` leaves without a cluster counts as wrong. How each table is "
         "made: `benchmarks/tables.py`; every command line is in `bench-results/tables.json`."),
        "",
        "| data | rows × columns | K | how made |",
        "|---|---|---|---|",
    ]
    for t in report["tables"]:
        strings = f" ({len(t['string_columns'])} strings)" if t["string_columns"] else ""
        lines.append(f"| {t['name']} | {t['rows']:,} × {t['feature_columns']}{strings} | "
                     f"{t['k']} | {t['made']} |")
    lines += ["", "**Adjusted Rand index**", "", *score_table(report, "ari", True)]
    lines += ["", "**Hungarian accuracy**", "", *score_table(report, "accuracy", False)]
    lines += ["", *warm_start_table(report)]
    return "\n".join(lines) + "\n"


def warm_start_table(report: dict) -> list[str]:
    """Per table and seed, the way the warm start kept (with the columns' covariance type
    where they were kept) and each way's stability (the ARI between its two runs; – where
    the graph was not built because it could not win)."""
    lines = [("**The warm start's choice** (per seed: the way kept, the columns' covariance "
              "type where they were kept (*power*: on the Yeo-Johnson transformed "
              "columns; *joined*: the graph's clusters from four seeds' embeddings), "
              "then the stability of columns / graph; – : the graph "
              "was not built, the columns' runs agreeing)"), "",
             "| data | " + " | ".join(f"seed {s}" for s in report["seeds"]) + " |",
             "|---" * (len(report["seeds"]) + 1) + "|"]
    for t in report["tables"]:
        cells = []
        for seed in report["seeds"]:
            run = next((r for r in report["runs"] if r["data"] == t["name"]
                        and r["method"] == "gmvae" and r["seed"] == seed), {})
            found = run.get("warm_start")
            if not found:
                cells.append("–")
                continue
            stability = found.get("stability", {})
            way = found["chosen"]
            if way == "columns" and "covariance" in found:
                way += f" {found['covariance']}" + (", power" if found.get("power") else "")
            elif found.get("joined"):
                way += " joined"
            cells.append(f"{way} ({stability.get('columns', float('nan')):.2f} / "
                         + (f"{stability['graph']:.2f})" if "graph" in stability else "–)"))
        lines.append(f"| {t['name']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(QUICK)}, seed 0; writes tables-quick.json")
    parser.add_argument("--only", help="comma-separated tables: " + ",".join(BY_NAME))
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS))
    args = parser.parse_args()
    # umap-learn says, every fit, that a seeded run uses one thread: known, and said above.
    warnings.filterwarnings("ignore", message="n_jobs value")

    names = list(QUICK) if args.quick else list(BY_NAME)
    if args.only:
        names = args.only.split(",")
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            parser.error(f"--only: unknown table {unknown[0]!r}; known: {', '.join(BY_NAME)}")
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else [0] if args.quick else [0, 1, 2])
    methods = args.methods.split(",") if args.methods else list(METHODS)
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    partial = bool(args.only or args.seeds or args.methods)
    tables = [BY_NAME[n] for n in names]

    described = [describe(t) for t in tables]  # writes any table not cached yet
    if "umap" in methods:
        warm_up_umap(4200 if max(d["rows"] for d in described) > 4096 else 300)
    runs = []
    for table in tables:
        for method in methods:
            for seed in seeds:
                if method == "gmvae":
                    run = run_gmvae(table, seed)
                else:
                    try:
                        run = run_baseline(table, method, seed)
                    except Exception as e:  # noqa: BLE001 (recorded; the other runs go on)
                        run = {"data": table.name, "method": method, "seed": seed,
                               "k": table.k, "error": f"{type(e).__name__}: {e}"}
                print(json.dumps({k: v for k, v in run.items() if k != "notes"}), flush=True)
                runs.append(run)

    command = "python -m benchmarks.tables" + (" --quick" if args.quick else "") + "".join(
        f" --{flag} {value}" for flag, value in
        (("only", args.only), ("seeds", args.seeds), ("methods", args.methods)) if value)
    summary = summarise(runs, tables, methods)
    report = {
        "date": date.today().isoformat(),
        "command": "make bench-tables" if command == "python -m benchmarks.tables" else command,
        "machine": machine(), "seeds": seeds, "methods": methods,
        "settings": {"umap": UMAP, "gmm_inits": GMM_INITS, "pca_above_columns": PCA_ABOVE,
                     "pca_dims": PCA_DIMS, "kmeans_inits": 10},
        "tables": described, "runs": runs, "summary": summary,
        "overall": overall(summary, methods),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("tables-quick.json" if args.quick
                     else "tables-partial.json" if partial else "tables.json")
    out.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    wrote = [str(out.relative_to(ROOT))]
    if not (args.quick or partial):
        doc = ROOT / "docs" / "benchmarks.md"
        old = doc.read_text() if doc.exists() else "# Benchmarks\n"
        doc.write_text(replace_block(old, TABLES_START, TABLES_END, text))
        wrote.append("docs/benchmarks.md")
    print("wrote " + " and ".join(wrote))


if __name__ == "__main__":
    main()

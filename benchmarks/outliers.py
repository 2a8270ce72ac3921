"""`make bench` (also `make bench-outliers`): how well `assign --score` finds outliers.

Seeded Gaussian blobs (K = 5 centres in 16 columns, unit variance, centres drawn with
spread 8) with 1% of the rows replaced by points far from every centre: uniform in a box
three times the centres' spread, each at least 15 from every centre (a blob's own rows lie
about 4 from it). Each seed is run as a user would: `gmvae train FILE --k 5 --seed S
--outlier-quantile 0.02` (default options otherwise) and `gmvae assign --score`, on the
training table and on fresh rows (same centres, new rows, new planted points). Reported:
recall (planted rows flagged / planted rows) at the 2% flag rate, the flag rate itself and
the precision. A harder case is scored with the same models: fresh rows whose planted
points lie just outside the blobs, 6 to 8 from the nearest centre (the farthest of 10,000
blob rows lies about 6.5 from its centre). docs/describe.md explains the score and the
threshold.

    python -m benchmarks.outliers            # seeds 0, 1, 2; writes bench-results/outliers.json
    python -m benchmarks.outliers --quick    # one seed, paper recipe, small net
"""

from __future__ import annotations

import argparse
import json
from datetime import date

import numpy as np
import pandas as pd

from benchmarks.common import CACHE, RESULTS, gmvae, machine, machine_line

ROWS, COLUMNS, K, SPREAD = 10_000, 16, 5, 8.0
SHARE = 0.01  # rows replaced by far points
FLAG_RATE = 0.02  # --outlier-quantile: flag twice as many rows as were planted
FAR = 15.0  # the least distance of a planted point from every centre
NEAR = (6.0, 8.0)  # the harder case: distance to the nearest centre, at least 6 from all
SEEDS = [0, 1, 2]
QUICK = ["--recipe", "paper", "--hidden", "32,32", "--epochs", "15"]


def planted_blobs(centres: np.ndarray, rows: int, seed: int,
                  near: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows around the centres with SHARE of them replaced by far points (or, `near`, points
    just outside the blobs); the planted mask."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), rows)
    values = centres[labels] + rng.normal(0.0, 1.0, (rows, centres.shape[1]))
    count, reach = round(SHARE * rows), 3.0 * centres.std()
    points = []
    while len(points) < count:
        if near:  # a random direction from a random centre, at a distance in NEAR
            direction = rng.normal(size=centres.shape[1])
            direction /= np.linalg.norm(direction)
            point = centres[rng.integers(len(centres))] + rng.uniform(*NEAR) * direction
            if np.linalg.norm(centres - point, axis=1).min() >= NEAR[0]:
                points.append(point)
            continue
        point = rng.uniform(-reach, reach, centres.shape[1])
        if np.linalg.norm(centres - point, axis=1).min() >= FAR:
            points.append(point)
    planted = rng.choice(rows, count, replace=False)
    values[planted] = points
    mask = np.zeros(rows, dtype=bool)
    mask[planted] = True
    return pd.DataFrame(values, columns=[f"c{i}" for i in range(centres.shape[1])]), mask


def flags_of(model: str, data: str, out: str) -> np.ndarray:
    gmvae(["assign", model, data, "--score", "-o", out, "--quiet"])
    return pd.read_csv(out)["outlier"].to_numpy(dtype=bool)


def measured(flagged: np.ndarray, mask: np.ndarray) -> dict:
    return {"recall": float(flagged[mask].mean()), "flag_rate": float(flagged.mean()),
            "precision": float(mask[flagged].mean()) if flagged.any() else None}


def run(seed: int, extra: list[str]) -> dict:
    folder = CACHE / "outliers"
    folder.mkdir(parents=True, exist_ok=True)
    centres = np.random.default_rng(1000 + seed).normal(0.0, SPREAD, (K, COLUMNS))
    train, train_mask = planted_blobs(centres, ROWS, seed=2 * seed)
    fresh, fresh_mask = planted_blobs(centres, ROWS, seed=2 * seed + 1)
    near, near_mask = planted_blobs(centres, ROWS, seed=2 * seed + 1, near=True)
    tag = f"blobs-s{seed}{'-quick' if extra else ''}"
    train_csv, fresh_csv, near_csv, model = (
        str(folder / f"{tag}{suffix}") for suffix in ("-train.csv", "-fresh.csv", "-near.csv", ".pt"))
    train.to_csv(train_csv, index=False)
    fresh.to_csv(fresh_csv, index=False)
    near.to_csv(near_csv, index=False)
    seconds = gmvae(["train", train_csv, "--k", str(K), "--seed", str(seed), "--outlier-quantile",
                     str(FLAG_RATE), "-o", model, "--force", "--quiet", *extra])
    result = {
        "seed": seed, "options": extra or ["(defaults)"], "train_seconds": round(seconds, 1),
        "training_table": measured(flags_of(model, train_csv, str(folder / f"{tag}-train-out.csv")),
                                   train_mask),
        "fresh_rows": measured(flags_of(model, fresh_csv, str(folder / f"{tag}-fresh-out.csv")),
                               fresh_mask),
        "fresh_rows_near": measured(flags_of(model, near_csv, str(folder / f"{tag}-near-out.csv")),
                                    near_mask),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, paper recipe, small net")
    args = parser.parse_args()
    runs = [run(seed, QUICK if args.quick else []) for seed in (SEEDS[:1] if args.quick else SEEDS)]
    summary = {
        table: {"recall_mean": float(np.mean([r[table]["recall"] for r in runs])),
                "recall_min": float(min(r[table]["recall"] for r in runs)),
                "flag_rate_mean": float(np.mean([r[table]["flag_rate"] for r in runs]))}
        for table in ("training_table", "fresh_rows", "fresh_rows_near")
    }
    report = {
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.outliers" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "data": {"rows": ROWS, "columns": COLUMNS, "k": K, "spread": SPREAD,
                 "planted_share": SHARE, "least_distance": FAR, "near_distance": NEAR},
        "outlier_quantile": FLAG_RATE,
        "runs": runs,
        "summary": summary,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("outliers-quick.json" if args.quick else "outliers.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"\nOutlier recall at a {FLAG_RATE:.0%} flag rate ({SHARE:.0%} planted, seeds "
          f"{[r['seed'] for r in runs]}) on {machine_line(report['machine'])}:")
    for table, s in summary.items():
        print(f"  {table.replace('_', ' ')}: recall {s['recall_mean']:.3f} (worst "
              f"{s['recall_min']:.3f}), flag rate {s['flag_rate_mean']:.3%}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""`make bench-speed`: wall time of whole `gmvae` commands with default options, as a user
runs them (`python -m gmvae_cli ...` in a subprocess, timed from outside), against targets.

    python -m benchmarks.speed            # full run: bench-results/speed.json and docs/speed.md
    python -m benchmarks.speed --quick    # smoke run: the smallest table and the help timings

- `gmvae train FILE --k K -o MODEL` on Gaussian blobs (scikit-learn make_blobs, random_state
  0, standard deviation 1, centres uniform in [-10, 10]; written once to bench-cache/speed/ as
  CSV, features only: the labels are made again from the same call to score the run) and on
  MNIST-test (the parquet file `make bench` caches). Each model is then assigned (`gmvae
  assign`, not timed against a target) and scored: ARI, and Hungarian accuracy on MNIST.
- `gmvae select-k FILE --k-range 2:9 --json` on blobs with 5 true clusters, default restarts:
  its time, and whether `recommended` is 5.
- `gmvae --help` and `gmvae train --help`: best of 3.
- MFU of the GMVAE epochs: rows/s over the checkpoint history's per-epoch `seconds` x the
  model's training FLOPs per row / the dense matmul peak measured in the same run.
- Each run's time per stage, where the checkpoint holds one (`timings`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from benchmarks.common import (
    CACHE,
    RESULTS,
    ROOT,
    CLIFailed,
    command_line,
    epoch_rows_per_s,
    kept_notes,
    machine,
    machine_line,
    matmul_peak_gflops,
    model_flops_per_row,
    run_cli,
)
from gmvae_cli import checkpoint
from gmvae_cli.metrics import hungarian_accuracy

FOLDER = CACHE / "speed"
HELP_REPEATS = 3


@dataclass(frozen=True)
class Blobs:
    rows: int
    columns: int
    k: int

    @property
    def name(self) -> str:
        return f"blobs {self.rows:,} × {self.columns}, K = {self.k}"

    @property
    def slug(self) -> str:
        return f"blobs-{self.rows}x{self.columns}-k{self.k}"

    def make(self) -> tuple[pd.DataFrame, np.ndarray]:
        x, y = make_blobs(self.rows, self.columns, centers=self.k, random_state=0)
        return pd.DataFrame(x, columns=[f"x{i + 1}" for i in range(self.columns)]), y

    def file(self) -> tuple[str, np.ndarray]:
        """The CSV (written the first time; relative to the repo root) and the true labels."""
        path = FOLDER / f"{self.slug}.csv"
        table, labels = self.make()
        if not path.exists():
            FOLDER.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
        return str(path.relative_to(ROOT)), labels


# (table, target seconds for `gmvae train`)
TRAIN = [(Blobs(1500, 6, 3), 5.0), (Blobs(3000, 12, 6), 8.0), (Blobs(2000, 50, 32), 20.0)]
MNIST_TARGET = 45.0
SELECT_K, SELECT_K_RANGE, SELECT_K_TARGET = Blobs(2500, 10, 5), "2:9", 60.0
HELP = [["--help"], ["train", "--help"]]
HELP_TARGET = 1.0


def target(what: str, command: str, seconds: float, limit: float, extra: str = "",
           condition: str = "", ok: bool = True) -> dict:
    """A target: at most `limit` seconds and, where given, `condition` (then `ok` says whether
    it held; `extra` describes what was found)."""
    by = seconds - limit
    verdict = f"{-by:.1f} s under" if by <= 0 else f"over by {by:.1f} s ({by / limit:+.0%})"
    if extra:
        verdict += f"; {extra}" if ok else f", {'but' if by <= 0 else 'and'} {extra}"
    return {"what": what, "command": command, "seconds": round(seconds, 2), "target": limit,
            "condition": condition, "met": by <= 0 and ok, "verdict": verdict}


def train_and_score(name: str, slug: str, file: str, k: int, labels: np.ndarray,
                    peak: float) -> dict:
    """`gmvae train` timed, then `gmvae assign` to score the model against the labels."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    model = str((FOLDER / f"{slug}.pt").relative_to(ROOT))
    out = str((FOLDER / f"{slug}-clusters.csv").relative_to(ROOT))
    train = ["train", file, "--k", str(k), "-o", model, "--force"]
    result = {"what": name, "command": command_line(train), "rows": len(labels), "k": k}
    try:
        seconds, done = run_cli(train, capture=True)
        result["seconds"] = round(seconds, 2)
        assign = ["assign", model, file, "-o", out, "--quiet"]
        result["assign_seconds"] = round(run_cli(assign, capture=True)[0], 2)
    except CLIFailed as e:
        return {**result, "error": str(e)}
    result["notes"] = done.stderr.strip().splitlines()[-5:]
    clusters = pd.read_csv(ROOT / out)["cluster"].to_numpy()
    result["ari"] = float(adjusted_rand_score(labels, clusters))
    result["accuracy"] = hungarian_accuracy(labels, clusters)
    payload = checkpoint.load(str(ROOT / model))
    rows_per_s = epoch_rows_per_s(payload, len(labels))
    flops = model_flops_per_row(payload)
    result.update({"epoch_rows_per_s": rows_per_s, "flops_per_row": flops,
                   "mfu": rows_per_s * flops / (peak * 1e9) if rows_per_s else None})
    if payload.get("timings") is not None:
        result["timings"] = {k: round(float(v), 2) for k, v in payload["timings"].items()}
    return result


def best_of(args: list[str], repeats: int = HELP_REPEATS) -> float:
    return min(run_cli(args, capture=True)[0] for _ in range(repeats))


def select_k() -> dict:
    file = SELECT_K.file()[0]
    args = ["select-k", file, "--k-range", SELECT_K_RANGE, "--json"]
    result = {"what": f"select-k on blobs {SELECT_K.rows:,} × {SELECT_K.columns}, true K = "
                      f"{SELECT_K.k}, --k-range {SELECT_K_RANGE}", "command": command_line(args)}
    try:
        seconds, done = run_cli(args, capture=True)
    except CLIFailed as e:
        return {**result, "error": str(e)}
    sweep = json.loads(done.stdout)
    return {**result, "seconds": round(seconds, 2), "recommended": sweep.get("recommended"),
            "true_k": SELECT_K.k, "reason": sweep.get("reason"), "sweep": sweep}


def failed(run: dict, limit: float, condition: str = "") -> dict:
    return {"what": run["what"], "command": run["command"], "seconds": None, "target": limit,
            "condition": condition, "met": False,
            "verdict": f"failed: {run['error'].splitlines()[-1]}"}


def train_target(r: dict, limit: float) -> dict:
    if "error" in r:
        return failed(r, limit)
    found = f"ARI {r['ari']:.3f}, accuracy {r['accuracy']:.3f}"
    if r["mfu"] is not None:
        found += f", MFU {r['mfu']:.1%}"
    return target(f"train, {r['what']}", r["command"], r["seconds"], limit, found)


def select_k_target(r: dict) -> dict:
    condition = f"recommends {SELECT_K.k}"
    if "error" in r:
        return failed(r, SELECT_K_TARGET, condition)
    return target(r["what"], r["command"], r["seconds"], SELECT_K_TARGET,
                  f"recommended {r['recommended']}", condition, r["recommended"] == SELECT_K.k)


def run(quick: bool) -> dict:
    peak = matmul_peak_gflops()
    runs, targets = [], []
    for blobs, limit in TRAIN[:1] if quick else TRAIN:
        file, labels = blobs.file()
        runs.append(train_and_score(blobs.name, blobs.slug, file, blobs.k, labels, peak))
        targets.append(train_target(runs[-1], limit))
    if not quick:
        from benchmarks.quality import datasets

        mnist = datasets()["mnist"]
        file = str(Path(mnist["file"]).relative_to(ROOT))
        runs.append(train_and_score("MNIST-test 10,000 × 784, K = 10", "mnist-k10", file, 10,
                                    mnist["labels"], peak))
        targets.append(train_target(runs[-1], MNIST_TARGET))
        runs.append(select_k())
        targets.append(select_k_target(runs[-1]))
    for args in HELP:
        seconds = best_of(args)
        runs.append({"what": " ".join(args), "command": command_line(args),
                     "seconds": round(seconds, 3), "repeats": HELP_REPEATS})
        targets.append(target(f"`gmvae {' '.join(args)}`, best of {HELP_REPEATS}",
                              command_line(args), seconds, HELP_TARGET))
    return {"date": date.today().isoformat(),
            "command": "python -m benchmarks.speed --quick" if quick else "make bench-speed",
            "machine": machine(), "matmul_gflops": round(peak, 1),
            "targets": targets, "runs": runs}


def markdown(report: dict) -> str:
    lines = [
        "# Speed: whole commands",
        "",
        (f"Measured {report['date']} with `{report['command']}` on "
         f"{machine_line(report['machine'])}; dense matmul peak in the same run "
         f"{report['matmul_gflops']:.1f} GFLOP/s. Each time is the wall time of one "
         "`python -m gmvae_cli …` process with default options, timed from outside (process "
         "start and imports included). How the tables are made: `benchmarks/speed.py`."),
        "",
        "## Targets",
        "",
        "| what | seconds | target | met | by how much |",
        "|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        seconds = "–" if t["seconds"] is None else f"{t['seconds']:.2f}"
        condition = f", {t['condition']}" if t.get("condition") else ""
        lines.append(f"| {t['what']} | {seconds} | ≤ {t['target']:g} s{condition} | "
                     f"{'yes' if t['met'] else '**no**'} | {t['verdict']} |")
    trained = [r for r in report["runs"] if "flops_per_row" in r]
    if trained:
        lines += ["", "## Training runs", "",
                  ("MFU = GMVAE-epoch rows/s (from the checkpoint's per-epoch `seconds`) × "
                   "training FLOPs per row (3 × 2 × the linear layers' multiply-adds) / the "
                   "matmul peak; the epochs only, not the warm start."), "",
                  "| run | command | train s | assign s | ARI | accuracy | epoch rows/s | MFU |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in trained:
            rate = f"{r['epoch_rows_per_s']:,.0f}" if r["epoch_rows_per_s"] else "–"
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
            lines.append(f"| {r['what']} | `{r['command']}` | {r['seconds']:.1f} | "
                         f"{r['assign_seconds']:.1f} | {r['ari']:.3f} | {r['accuracy']:.3f} | "
                         f"{rate} | {mfu} |")
    timed = [r for r in report["runs"] if r.get("timings")]
    if timed:
        keys = list(dict.fromkeys(k for r in timed for k in r["timings"]))
        lines += ["", "## Where the time goes (seconds per stage, from the checkpoint)", "",
                  "| run | " + " | ".join(keys) + " | sum | train wall |",
                  "|---" * (len(keys) + 3) + "|"]
        for r in timed:
            cells = [f"{r['timings'][k]:.1f}" if k in r["timings"] else "–" for k in keys]
            lines.append(f"| {r['what']} | " + " | ".join(cells) +
                         f" | {sum(r['timings'].values()):.1f} | {r['seconds']:.1f} |")
    else:
        lines += ["", "No per-stage times: the checkpoints hold no `timings`."]
    chosen = [r for r in report["runs"] if "recommended" in r]
    for r in chosen:
        lines += ["", (f"select-k: recommended K = {r['recommended']} (true {r['true_k']}): "
                       f"{r['reason']}")]
    failures = [r for r in report["runs"] if "error" in r]
    if failures:
        lines += ["", "## Failed", ""] + [
            f"- `{r['command']}`: {' — '.join(r['error'].splitlines()[1:])}" for r in failures]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the smallest table and the help timings")
    args = parser.parse_args()
    report = run(args.quick)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("speed-quick.json" if args.quick else "speed.json")
    out.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if not args.quick:
        doc = ROOT / "docs" / "speed.md"
        old = doc.read_text() if doc.exists() else ""
        notes = kept_notes(old) or ("\n## Notes\n\nHand-written; `make bench-speed` rewrites "
                                    "everything above this heading and keeps this section.\n")
        doc.write_text(text + notes)
    print(f"wrote {out.relative_to(ROOT)}" + ("" if args.quick else " and docs/speed.md"))


if __name__ == "__main__":
    main()

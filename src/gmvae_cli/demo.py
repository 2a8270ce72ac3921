"""`make demo`: the main job end to end on an embedded data set, run as a user would.

The data set is scikit-learn's bundled handwritten digits (1,797 rows × 64 pixel columns,
10 classes), shipped inside the scikit-learn package, so nothing is downloaded.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
from sklearn.datasets import load_digits


def run(*args: str) -> None:
    command = ["gmvae", *args]
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "gmvae_cli", *args], check=True)


def main(folder: str = "demo-output") -> None:
    out = Path(folder)
    out.mkdir(exist_ok=True)
    digits = load_digits()
    features = pd.DataFrame(digits.data, columns=[f"px{i}" for i in range(digits.data.shape[1])])
    data, labels = out / "digits.csv", out / "labels.csv"
    features.to_csv(data, index=False)
    pd.DataFrame({"digit": digits.target}).to_csv(labels, index=False)
    print(f"wrote {data} ({len(features)} rows × {features.shape[1]} columns) and {labels}")

    model, clusters = out / "model.pt", out / "clusters.csv"
    run("train", str(data), "--k", "10", "--seed", "0", "-o", str(model))
    run("assign", str(model), str(data), "--probs", "-o", str(clusters))
    run("evaluate", str(model), str(data), "--labels", str(labels),
        "--plot", str(out / "evaluation.png"))
    print(f"\noutputs in {out.resolve()}/: model.pt (checkpoint), clusters.csv (assignments),"
          " evaluation.png (confusion matrix and cluster sizes)")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""`--device cuda` checked end to end on a GPU machine: the default recipe on MNIST-test
trained twice with one seed (time, where it went, accuracy, and whether the two runs agree
bit for bit), and a small table (time). `make bench-gpu` runs it where the data is; for a
GPU machine without ../shared/data, first write the MNIST files into a folder to take along:

    python -m benchmarks.gpu --prepare bench-cache/gpu           # here
    python -m benchmarks.gpu --data bench-cache/gpu --out gpu.json   # there

Labels score the clusters and choose nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_blobs

from benchmarks.common import RESULTS, run_cli, score
from benchmarks.quality import datasets
from gmvae_cli import checkpoint


def train_and_assign(data: str, k: int, seed: int, folder: Path, tag: str, device: str) -> dict:
    model, out = folder / f"{tag}.pt", folder / f"{tag}-clusters.csv"
    train_s, _ = run_cli(["train", data, "--k", str(k), "--seed", str(seed), "--device", device,
                          "-o", str(model), "--quiet"], capture=True)
    assign_s, _ = run_cli(["assign", str(model), data, "--device", device, "-o", str(out)],
                          capture=True)
    payload = checkpoint.load(str(model))
    return {"train_seconds": round(train_s, 1), "assign_seconds": round(assign_s, 1),
            "timings": {n: round(float(v), 2) for n, v in payload.get("timings", {}).items()},
            "clusters": pd.read_csv(out)["cluster"].to_numpy(),
            "pseudo": payload.get("pseudo_labels"), "state": payload["state_dict"]}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder --prepare wrote (default: "
                        "MNIST-test from ../shared/data)")
    parser.add_argument("--prepare", type=Path, help="write the MNIST files into this folder "
                        "and stop")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--device", default="cuda", help="cpu for a smoke run without a GPU")
    args = parser.parse_args()
    if args.prepare:
        args.prepare.mkdir(parents=True, exist_ok=True)
        mnist = datasets()["mnist"]
        shutil.copyfile(mnist["file"], args.prepare / "mnist-test.parquet")
        np.save(args.prepare / "mnist-labels.npy", mnist["labels"])
        return
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.data:
            mnist, labels = str(args.data / "mnist-test.parquet"), np.load(args.data / "mnist-labels.npy")
        else:
            found = datasets()["mnist"]
            mnist, labels = found["file"], found["labels"]
        runs = [train_and_assign(mnist, 10, 0, folder, f"mnist-{i}", args.device) for i in range(2)]
        report["mnist"] = [{"train_seconds": r["train_seconds"],
                            "assign_seconds": r["assign_seconds"], "timings": r["timings"],
                            "accuracy": score(labels, r["clusters"], 10, 10)["accuracy"],
                            "pseudo_accuracy": score(labels, np.asarray(r["pseudo"]), 10,
                                                     10)["accuracy"]} for r in runs]
        report["mnist_same_clusters"] = bool(np.array_equal(runs[0]["clusters"],
                                                            runs[1]["clusters"]))
        report["mnist_same_weights"] = same_weights(runs[0]["state"], runs[1]["state"])
        print(json.dumps(report), flush=True)

        x, y = make_blobs(n_samples=3000, n_features=12, centers=6, random_state=0)
        table = folder / "blobs.csv"
        pd.DataFrame(x, columns=[f"f{i}" for i in range(12)]).to_csv(table, index=False)
        blobs = train_and_assign(str(table), 6, 0, folder, "blobs", args.device)
        report["blobs_3000x12"] = {"train_seconds": blobs["train_seconds"],
                                   "timings": blobs["timings"],
                                   "ari": score(y, blobs["clusters"], 6, 6)["ari"]}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Shared test data: seeded Gaussian blobs, and one small trained model reused across tests.

Tests keep networks tiny (hidden 32,32) and epochs few so `make test` stays fast on 2 cores.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import settings
from typer.testing import CliRunner

from gmvae_cli.cli import app

# The suite asserts the CPU's behaviour (exact values, the same answer from any batch size),
# which GPU kernels do not promise; it runs on the CPU wherever it runs. test_devices.py
# checks a GPU, where there is one, in subprocesses that see it.
# The value before hiding survives into xdist's workers, which inherit the hidden one.
os.environ.setdefault("GMVAE_TESTS_VISIBLE_GPUS", os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""

torch.set_num_threads(1)  # small nets: threads only add overhead, and tests run two at a time

# Property tests draw the same examples on every run (derandomize) and keep no example
# database between runs: a CI failure reproduces locally, and a pass stays a pass.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci")

# Small and fast, yet enough to separate well-spaced blobs; used by most CLI tests.
FAST_TRAIN = ["--recipe", "paper", "--hidden", "32,32", "--epochs", "15", "--quiet"]


def make_blobs_frame(n_rows=2000, n_features=16, k=5, seed=0, spread=8.0):
    """k well-separated Gaussian clusters; returns the feature frame and the true labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(k, n_features))
    labels = rng.integers(0, k, size=n_rows)
    values = centers[labels] + rng.normal(0.0, 1.0, size=(n_rows, n_features))
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(n_features)])
    return frame, labels


def blob_centres(n_features=16, k=5, seed=0, spread=8.0):
    """The centres make_blobs_frame draws for the same arguments (its generator's first draw)."""
    return np.random.default_rng(seed).normal(0.0, spread, size=(k, n_features))


def blob_rows(centres, n_rows, seed):
    """Fresh rows around known centres (unit variance): new data for a trained model."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), size=n_rows)
    values = centres[labels] + rng.normal(0.0, 1.0, size=(n_rows, centres.shape[1]))
    return pd.DataFrame(values, columns=[f"c{i}" for i in range(centres.shape[1])]), labels


def plant_outliers(frame, centres, share=0.01, seed=0, distance=15.0):
    """Replace `share` of the rows by points far from every centre: uniform in a box three
    times the centres' spread, kept only at least `distance` from each centre (a blob's own
    rows lie about sqrt(n_features) = 4 from it). Returns the new frame and the planted mask."""
    rng = np.random.default_rng(seed)
    n, width = frame.shape
    count = round(share * n)
    reach = 3.0 * centres.std()
    points = []
    while len(points) < count:
        point = rng.uniform(-reach, reach, width)
        if np.linalg.norm(centres - point, axis=1).min() >= distance:
            points.append(point)
    rows = rng.choice(n, count, replace=False)
    planted = frame.copy()
    planted.iloc[rows] = np.array(points)
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return planted, mask


@pytest.fixture(scope="session")
def blobs():
    return make_blobs_frame()


@pytest.fixture(scope="session")
def blobs_csv(tmp_path_factory, blobs):
    path = tmp_path_factory.mktemp("blobs") / "blobs.csv"
    blobs[0].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, blobs_csv):
    """A checkpoint trained once on the blobs (paper recipe, small net) for read-only use."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    result = CliRunner().invoke(app, ["train", str(blobs_csv), "--k", "5", "-o", str(path),
                                      "--missing", "error", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def runner():
    return CliRunner()


def run_cli(*args, input=None):
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)

"""Shared test data: seeded Gaussian blobs, and one small trained model reused across tests.

Tests keep networks tiny (hidden 32,32) and epochs few so `make test` stays fast on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import settings
from typer.testing import CliRunner

from gmvae_cli.cli import app

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

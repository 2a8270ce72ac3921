"""`gmvae sample` and GMVAE.sample: shape, columns, even spread, clusters that come back
under `assign`, reproducible seeds, Bernoulli output, the image grid, and bad input."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from gmvae_cli import plots
from gmvae_cli.api import GMVAE


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def no_traceback(result) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ")
    assert result.stdout == ""


def test_sample_rows_and_columns(trained_model, blobs):
    result = run_cli("sample", trained_model, "-n", "200")
    assert result.exit_code == 0, result.stderr
    rows = read_csv(result.stdout)
    assert len(rows) == 200
    assert list(rows.columns) == [*blobs[0].columns, "cluster"]
    assert rows["cluster"].value_counts().sort_index().tolist() == [40] * 5
    # Original scale: the samples spread like the data, not like standardised values.
    assert rows[blobs[0].columns].to_numpy().std() == pytest.approx(blobs[0].to_numpy().std(), rel=0.3)


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_rows_come_back_to_their_cluster(trained_model, tmp_path, k):
    out = tmp_path / "samples.csv"
    result = run_cli("sample", trained_model, "-n", "200", "--cluster", k, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assigned = run_cli("assign", trained_model, out)
    assert assigned.exit_code == 0, assigned.stderr
    clusters = read_csv(assigned.stdout)["cluster"]
    assert len(clusters) == 200
    assert (clusters == k).mean() >= 0.9


def test_every_cluster_comes_back(trained_model):
    model = GMVAE.load(str(trained_model))
    rows = model.sample(500, seed=1)
    assert (model.predict(rows) == rows["cluster"].to_numpy()).mean() >= 0.9


def test_several_clusters_spread_evenly_and_parquet(trained_model, tmp_path):
    out = tmp_path / "samples.parquet"
    result = run_cli("sample", trained_model, "-n", "7", "--cluster", "4", "--cluster", "0", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert pd.read_parquet(out)["cluster"].tolist() == [4, 4, 4, 4, 0, 0, 0]


def test_seed_reproducible_and_mean(trained_model):
    first = run_cli("sample", trained_model, "-n", "20", "--seed", "5").stdout
    assert first == run_cli("sample", trained_model, "-n", "20", "--seed", "5").stdout
    assert first != run_cli("sample", trained_model, "-n", "20", "--seed", "6").stdout
    model = GMVAE.load(str(trained_model))
    state = torch.get_rng_state()
    draws = model.sample(400, clusters=[2], seed=0).drop(columns="cluster")
    means = model.sample(400, clusters=[2], mean=True, seed=0).drop(columns="cluster")
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    assert (means.std() < draws.std()).all()  # no decoder noise


@pytest.fixture(scope="module")
def bernoulli_model(tmp_path_factory):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame((rng.random((200, 16)) < 0.3).astype(float), columns=[f"p{i}" for i in range(16)])
    folder = tmp_path_factory.mktemp("bernoulli")
    frame.to_csv(folder / "bits.csv", index=False)
    path = folder / "bits.pt"
    result = run_cli(
        "train", folder / "bits.csv", "--k", "2", "-o", path, "--recipe", "paper",
        "--hidden", "8", "--epochs", "2", "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    return path


def test_bernoulli_probabilities_and_binary(bernoulli_model, trained_model):
    probs = read_csv(run_cli("sample", bernoulli_model, "-n", "30").stdout).drop(columns="cluster")
    assert ((probs >= 0) & (probs <= 1)).all().all()
    assert not probs.isin([0, 1]).all().all()
    bits = read_csv(run_cli("sample", bernoulli_model, "-n", "30", "--binary").stdout).drop(columns="cluster")
    assert bits.isin([0, 1]).all().all()
    no_traceback(run_cli("sample", trained_model, "--binary"))  # a Gaussian model


def test_grid_png(trained_model, tmp_path):
    import matplotlib.image as mpimg

    square, flat = tmp_path / "square.png", tmp_path / "flat.png"
    result = run_cli("sample", trained_model, "-n", "50", "--grid", square)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # with --grid and no -o, only the picture
    # 16 columns -> 4x4 images; 5 clusters of 10 samples.
    assert mpimg.imread(square).shape[:2] == plots.grid_shape(5, 10, (4, 4)) == (26, 51)
    result = run_cli(
        "sample", trained_model, "-n", "100", "--cluster", "0", "--cluster", "2",
        "--grid", flat, "--image-shape", "2x8", "-o", "-",
    )
    assert result.exit_code == 0, result.stderr
    assert len(read_csv(result.stdout)) == 100
    assert mpimg.imread(flat).shape[:2] == plots.grid_shape(2, 16, (2, 8))  # at most 16 per row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.png", "square.png"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--cluster", "5"], "--cluster 5 is out of range"),
        (["--cluster", "-1"], "out of range"),
        (["-n", "0"], "-n must be at least 1"),
        (["--grid", "g.png", "--image-shape", "3x3"], "--image-shape"),
        (["--grid", "g.png", "--image-shape", "four"], "HxW"),
        (["--grid", "g.jpg"], ".png"),
        (["-o", "out.txt"], ".csv or .parquet"),
    ],
)
def test_bad_input(trained_model, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    result = run_cli("sample", trained_model, *args)
    no_traceback(result)
    assert words in result.stderr
    assert list(tmp_path.iterdir()) == []  # no partial output

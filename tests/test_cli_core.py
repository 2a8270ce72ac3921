"""The core issue end to end: train then assign over CSV, Parquet, HDF5 and a shell pipe."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import FAST_TRAIN, run_cli
from gmvae_cli import checkpoint


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        with h5py.File(path, "w") as h5:
            h5["features/data"] = frame.to_numpy()
            h5["features/labels"] = np.arange(len(frame))  # 1-D: not a candidate table
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".h5"])
def test_train_then_assign_recovers_blobs_in_every_format(tmp_path, blobs, suffix):
    frame, labels = blobs
    data = write_table(frame, tmp_path / f"blobs{suffix}")
    model = tmp_path / "model.pt"
    result = run_cli("train", data, "--k", 5, "-o", model, *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "clusters.parquet"
    result = run_cli("assign", model, data, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # the output went to the file
    assigned = pd.read_parquet(out)
    assert list(assigned.columns) == ["row", "cluster", "confidence"]
    assert len(assigned) == len(frame)
    assert adjusted_rand_score(labels, assigned["cluster"]) >= 0.9


def test_assign_through_a_shell_pipe(tmp_path, trained_model, blobs_csv, blobs):
    gmvae = Path(sys.executable).with_name("gmvae")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.csv"
    cmd = f"cat {blobs_csv} | {gmvae} assign {trained_model} - > {out}"
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assigned = pd.read_csv(out)
    assert adjusted_rand_score(blobs[1], assigned["cluster"]) >= 0.9


def test_probs_id_column_and_confidence(tmp_path, blobs):
    frame = blobs[0].head(300).copy()
    frame.insert(0, "name", [f"r{i}" for i in range(len(frame))])
    data = tmp_path / "named.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--id-column", "name", "-o", model, *FAST_TRAIN).exit_code == 0
    result = run_cli("assign", model, data, "--probs")
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout))
    assert list(out.columns) == ["name", "cluster", "confidence", "prob_0", "prob_1", "prob_2"]
    assert out["name"].tolist() == frame["name"].tolist()
    probs = out[["prob_0", "prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["confidence"], probs.max(1), rtol=1e-6)
    assert (out["cluster"].to_numpy() == probs.argmax(1)).all()


def test_non_numeric_columns_are_skipped_with_a_note(tmp_path, blobs):
    frame = blobs[0].head(200).copy()
    frame["city"] = "Oslo"
    data = tmp_path / "mixed.csv"
    frame.to_csv(data, index=False)
    result = run_cli("train", data, "--k", 2, "-o", tmp_path / "m.pt", "--recipe", "paper",
                     "--hidden", "16", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert "skipping non-numeric columns: city" in result.stderr
    payload = checkpoint.load(str(tmp_path / "m.pt"))
    assert "city" not in payload["preprocess"]["columns"]


def test_missing_mean_is_reapplied_by_assign(tmp_path, blobs):
    frame = blobs[0].head(400).copy()
    frame.loc[3, "c2"] = np.nan
    data = tmp_path / "holes.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--missing", "mean", "-o", model, *FAST_TRAIN).exit_code == 0
    payload = checkpoint.load(str(model))
    stored = payload["preprocess"]
    assert stored["missing"] == "mean"
    assert stored["fill"][2] == pytest.approx(frame["c2"].mean())
    result = run_cli("assign", model, data)
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout))
    assert out["cluster"].notna().all() and len(out) == len(frame)


def test_missing_drop_leaves_empty_cluster_for_dropped_rows(tmp_path, blobs):
    frame = blobs[0].head(400).copy()
    frame.loc[5, "c0"] = np.inf
    data = tmp_path / "holes.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--missing", "drop", "-o", model, *FAST_TRAIN).exit_code == 0
    out = pd.read_csv(io.StringIO(run_cli("assign", model, data).stdout))
    assert len(out) == len(frame)
    assert out["cluster"].isna().tolist() == [i == 5 for i in range(len(frame))]


def test_checkpoint_holds_config_columns_history_and_versions(trained_model):
    payload = checkpoint.load(str(trained_model))
    assert payload["format_version"] == checkpoint.FORMAT_VERSION
    assert payload["package_version"]
    assert payload["config"]["k"] == 5
    assert payload["preprocess"]["columns"] == [f"c{i}" for i in range(16)]
    assert len(payload["preprocess"]["center"]) == 16
    history = payload["history"]
    assert len(history) == 15
    for key in ("elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior", "cluster_usage"):
        assert key in history[-1]
    assert sum(history[-1]["cluster_usage"]) == 2000
    # Loading is weights_only: the same file loads with the safe unpickler directly.
    torch.load(trained_model, weights_only=True)


def test_info_json(trained_model):
    result = run_cli("info", trained_model, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["k"] == 5 and info["likelihood"] == "gaussian" and info["epochs"] == 15
    assert sum(info["cluster_sizes"]) == 2000
    assert set(info["final_terms"]) >= {"elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior"}
    human = run_cli("info", trained_model)
    assert human.exit_code == 0 and "cluster_sizes" in human.stdout


def test_bernoulli_is_chosen_for_data_in_unit_interval(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame((rng.uniform(size=(300, 8)) > 0.5).astype(float), columns=list("abcdefgh"))
    data = tmp_path / "bits.parquet"
    frame.to_parquet(data)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 2, "-o", model, "--recipe", "paper", "--hidden", "16",
                   "--epochs", "2", "-q").exit_code == 0
    assert checkpoint.load(str(model))["config"]["likelihood"] == "bernoulli"


def test_library_api_matches_cli(tmp_path, blobs):
    from gmvae_cli.api import GMVAE

    frame, labels = blobs
    model = GMVAE(k=5, recipe="paper", hidden=(32, 32), epochs=15, seed=0).fit(frame)
    clusters = model.predict(frame)
    assert adjusted_rand_score(labels, clusters) >= 0.9
    np.testing.assert_array_equal(model.predict_proba(frame).argmax(1), clusters)
    model.save(str(tmp_path / "api.pt"))
    again = GMVAE.load(str(tmp_path / "api.pt"))
    np.testing.assert_array_equal(again.predict(frame), clusters)
    assert set(model.score(frame)) >= {"elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior"}

"""Per-row scores and outliers: `assign --score`, GMVAE.score_samples and outlier_flags, the
threshold stored at training (train --outlier-quantile), evaluate's count and describe's
shares, on seeded blobs with 1% of the rows replaced by points far from every centre."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST_TRAIN, blob_centres, blob_rows, make_blobs_frame, plant_outliers, run_cli
from gmvae_cli import checkpoint
from gmvae_cli.api import GMVAE
from gmvae_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"  # this checkout's package, whatever the working folder
SEED = 3  # the blobs' seed: their centres are blob_centres(seed=SEED)
FLAG_RATE = 0.02


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """10,000 rows of 5 blobs, 100 of them replaced by far points, and a model trained on
    them whose threshold is the 2% quantile of the training rows' ELBO."""
    frame, _ = make_blobs_frame(n_rows=10_000, seed=SEED)
    centres = blob_centres(seed=SEED)
    table, mask = plant_outliers(frame, centres, share=0.01, seed=1)
    folder = tmp_path_factory.mktemp("planted")
    data, model = folder / "planted.csv", folder / "model.pt"
    table.to_csv(data, index=False)
    result = run_cli("train", data, "--k", 5, "--outlier-quantile", FLAG_RATE, "-o", model,
                     *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    return SimpleNamespace(data=data, model=model, table=table, mask=mask, centres=centres)


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def old_checkpoint(path, target):
    """A copy of a checkpoint as gmvae wrote it before outlier thresholds existed."""
    payload = checkpoint.load(str(path))
    for name in ("outlier_threshold", "outlier_quantile", "format", "format_version",
                 "package_version"):
        payload.pop(name)
    checkpoint.save(str(target), payload)
    return target


def test_flagged_rows_recover_the_planted_outliers_at_a_2_percent_flag_rate(planted):
    """On the training table the threshold is the 2% quantile of its own scores, so exactly
    2% of the rows are flagged: the test is how many of the 1% planted rows are among them."""
    result = run_cli("assign", planted.model, planted.data, "--score")
    assert result.exit_code == 0, result.stderr
    flagged = read_csv(result.stdout)["outlier"].to_numpy(dtype=bool)
    assert flagged.mean() == pytest.approx(FLAG_RATE, abs=0.0005)
    assert flagged[planted.mask].mean() >= 0.9


def test_the_threshold_carries_over_to_new_rows(planted):
    """Fresh rows from the same blobs with fresh far points: the stored threshold flags
    about 2% again and still finds the planted rows."""
    fresh, _ = blob_rows(planted.centres, 10_000, seed=7)
    fresh, mask = plant_outliers(fresh, planted.centres, share=0.01, seed=8)
    model = GMVAE.load(str(planted.model))
    flagged = model.outlier_flags(fresh)
    assert 0.01 <= flagged.mean() <= 0.03
    assert flagged[mask].mean() >= 0.9
    np.testing.assert_array_equal(flagged, model.score_samples(fresh) < model.outlier_threshold_)


def test_the_threshold_is_the_quantile_of_the_training_rows_scores(planted, trained_model):
    payload = checkpoint.load(str(planted.model))
    assert payload["outlier_quantile"] == FLAG_RATE
    scores = GMVAE.load(str(planted.model)).score_samples(planted.table)
    assert payload["outlier_threshold"] == pytest.approx(np.quantile(scores, FLAG_RATE), rel=1e-6)
    assert checkpoint.load(str(trained_model))["outlier_quantile"] == 0.01  # the default
    info = json.loads(run_cli("info", planted.model, "--json").stdout)
    assert info["outlier_quantile"] == FLAG_RATE
    assert info["outlier_threshold"] == payload["outlier_threshold"]


def test_assign_score_columns_are_deterministic_and_equal_the_library(planted):
    first = run_cli("assign", planted.model, planted.data, "--score")
    again = run_cli("assign", planted.model, planted.data, "--score", "--batch-size", 777)
    plain = run_cli("assign", planted.model, planted.data)
    assert first.exit_code == again.exit_code == plain.exit_code == 0, first.stderr
    assert first.stderr == ""
    out = read_csv(first.stdout)
    assert list(out.columns) == ["row", "cluster", "confidence", "elbo", "outlier"]
    # Each row's score depends on that row alone: other chunk sizes give the same values.
    pd.testing.assert_frame_equal(out, read_csv(again.stdout), rtol=1e-6)
    # Scoring changes nothing else.
    # (Values, not dtypes: a CSV column of confidences that are all 1.0 reads back as
    # integers from pyarrow's writer, "1", and as floats from pandas', "1.0".)
    pd.testing.assert_frame_equal(out[["row", "cluster", "confidence"]], read_csv(plain.stdout),
                                  check_dtype=False)
    model = GMVAE.load(str(planted.model))
    np.testing.assert_allclose(out["elbo"], model.score_samples(planted.table), rtol=1e-5)
    np.testing.assert_array_equal(out["outlier"], out["elbo"] < model.outlier_threshold_)
    twice = run_cli("assign", planted.model, planted.data, "--score")
    assert twice.stdout == first.stdout  # two runs, the same bytes


def test_probs_and_monte_carlo_assignment_combine_with_scores(planted, tmp_path):
    target = tmp_path / "scored.parquet"
    result = run_cli("assign", planted.model, planted.data, "--score", "--probs",
                     "--mc-samples", 5, "-o", target)
    assert result.exit_code == 0, result.stderr
    out = pd.read_parquet(target)
    assert list(out.columns)[-2:] == ["elbo", "outlier"] and "prob_4" in out
    assert str(out["outlier"].dtype) in ("bool", "boolean")
    mc = read_csv(run_cli("assign", planted.model, planted.data, "--probs",
                          "--mc-samples", 5).stdout)
    np.testing.assert_allclose(out["prob_0"], mc["prob_0"], rtol=1e-5)


def test_dropped_rows_have_empty_scores(planted, tmp_path):
    dropping = tmp_path / "drop.pt"
    payload = checkpoint.load(str(planted.model))
    payload["preprocess"]["missing"] = "drop"
    checkpoint.save(str(dropping), payload)
    frame = planted.table.iloc[:20].copy()
    frame.loc[[2, 5], "c3"] = np.nan
    frame.to_csv(tmp_path / "holes.csv", index=False)
    out = read_csv(run_cli("assign", dropping, tmp_path / "holes.csv", "--score").stdout)
    assert out["elbo"].isna().tolist() == [i in (2, 5) for i in range(20)]
    assert out["outlier"].isna().tolist() == out["elbo"].isna().tolist()


def test_a_model_without_a_threshold_still_scores_and_says_why_flags_are_empty(
        planted, tmp_path):
    old = old_checkpoint(planted.model, tmp_path / "old.pt")
    result = run_cli("assign", old, planted.data, "--score")
    assert result.exit_code == 0, result.stderr
    assert "no outlier threshold" in result.stderr and "retrain" in result.stderr
    out = read_csv(result.stdout)
    assert out["elbo"].notna().all() and out["outlier"].isna().all()

    report = json.loads(run_cli("evaluate", old, planted.data, "--json").stdout)
    assert report["outliers"] is None
    human = run_cli("evaluate", old, planted.data)
    assert "no threshold" in human.stdout

    described = run_cli("describe", old, planted.data, "--json")
    assert described.exit_code == 0, described.stderr
    assert "no outlier threshold" in described.stderr
    found = json.loads(described.stdout)
    assert found["outlier_share"] is None and found["outlier_threshold"] is None

    model = GMVAE.load(str(old))
    assert model.outlier_threshold_ is None
    with pytest.raises(UserError, match="no outlier threshold"):
        model.outlier_flags(planted.table)


def test_evaluate_counts_the_flagged_rows(planted):
    result = run_cli("evaluate", planted.model, planted.data, "--json")
    assert result.exit_code == 0, result.stderr
    outliers = json.loads(result.stdout)["outliers"]
    text = (ROOT / "docs" / "evaluate.md").read_text().split("## The outliers object", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_]+)`", text.split("\n## ", 1)[0], flags=re.MULTILINE))
    assert set(outliers) == documented
    assert outliers["rows"] == round(FLAG_RATE * 10_000)
    assert outliers["share"] == pytest.approx(FLAG_RATE)
    assert outliers["quantile"] == FLAG_RATE
    assert outliers["threshold"] == checkpoint.load(str(planted.model))["outlier_threshold"]
    human = run_cli("evaluate", planted.model, planted.data)
    assert "outliers" in human.stdout and "200 (2.0%" in human.stdout


def test_describe_shows_the_outliers_share_per_cluster(planted):
    result = run_cli("describe", planted.model, planted.data, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outlier_share"] == pytest.approx(FLAG_RATE)
    assert report["outlier_quantile"] == FLAG_RATE
    flagged = sum(c["outlier_share"] * c["size"] for c in report["clusters"] if c["size"])
    assert flagged == pytest.approx(FLAG_RATE * 10_000)
    human = run_cli("describe", planted.model, planted.data)
    assert "outliers" in human.stdout


def test_library_scores_by_monte_carlo_are_seeded(planted):
    model = GMVAE.load(str(planted.model))
    rows = planted.table.iloc[:500]
    state = torch.get_rng_state()
    a = model.score_samples(rows, mc_samples=4, seed=0)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone
    np.testing.assert_array_equal(a, model.score_samples(rows, mc_samples=4, seed=0))
    assert not np.array_equal(a, model.score_samples(rows, mc_samples=4, seed=1))
    np.testing.assert_array_equal(model.score_samples(rows), model.score_samples(rows))


def test_the_threshold_of_a_stream_and_of_a_sample(planted):
    """The same network gives the same threshold over rows in memory and streamed from disk;
    from a bounded sample of scores it lands close to the exact quantile."""
    from gmvae_cli.sources import InMemoryRows
    from gmvae_cli.stream import ChunkStream
    from gmvae_cli.train import outlier_threshold

    model = GMVAE.load(str(planted.model))
    pre = model.preprocessor_
    in_memory = InMemoryRows(model.matrix(planted.table)[0])
    streamed = ChunkStream(str(planted.data), pre, None, None, 1500)
    exact = outlier_threshold(model.net_, in_memory, FLAG_RATE)
    assert outlier_threshold(model.net_, streamed, FLAG_RATE) == pytest.approx(exact, rel=1e-6)
    sampled = outlier_threshold(model.net_, in_memory, FLAG_RATE, seed=0, sample=3000)
    scores = np.sort(model.score_samples(planted.table))
    assert scores[100] <= sampled <= scores[300]  # between the 1% and 3% quantiles


@pytest.mark.parametrize(
    ("value", "shown"), [("1.5", "1.5"), ("0", "0.0"), ("-0.1", "-0.1")],
)
def test_a_bad_outlier_quantile_is_refused_before_the_data_is_read(tmp_path, value, shown):
    probe = ("import sys\nfrom gmvae_cli.cli import app\ntry:\n    app()\nexcept SystemExit as e:\n"
             "    print(e.code, 'torch' in sys.modules)\n")
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "big.parquet", "--outlier-quantile", value],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.stdout.splitlines()[-1] == "2 False"
    assert result.stderr == (f"error: --outlier-quantile must lie between 0 and 1 (e.g. 0.01 "
                             f"for 1% of the rows), got {shown}\n")
    with pytest.raises(UserError, match="--outlier-quantile"):
        GMVAE(outlier_quantile=float(value))


def test_assign_help_names_the_score_and_its_estimator():
    text = run_cli("assign", "--help").stdout
    assert "--score" in text and "posterior means" in text and "Example:" in text

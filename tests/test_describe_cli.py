"""`gmvae describe`: the describe module wired to a trained model, through the real CLI.

The shared `trained_model` (5 seeded blobs, conftest.py) is described on fresh rows from the
same centres; the computation itself is tested by hand in test_describe.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from conftest import blob_centres, blob_rows, run_cli
from gmvae_cli import checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "describe.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """20,000 new rows around the centres the shared model was trained on, as Parquet."""
    centres = blob_centres()
    frame, labels = blob_rows(centres, 20_000, seed=11)
    path = tmp_path_factory.mktemp("fresh") / "fresh.parquet"
    frame.to_parquet(path)
    return path, centres, labels


def documented_keys(section: str) -> set[str]:
    """The keys listed as `| \\`key\\` | …` rows under a '## section' heading of the doc."""
    text = DOC.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.MULTILINE))


def one_line_error(result) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def test_cluster_means_lie_within_a_tenth_of_a_std_of_the_true_centres(trained_model, fresh):
    path, centres, _ = fresh
    result = run_cli("describe", trained_model, path, "--json", "--batch-size", 4096)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 20_000 and report["rows_unassigned"] == 0
    columns = report["numeric_columns"]
    means = np.array([[c["features"][f]["mean"] for f in columns] for c in report["clusters"]])
    # Match clusters to centres (Hungarian on the distance), then compare every coordinate.
    distance = np.linalg.norm(means[:, None, :] - centres[None, :, :], axis=2)
    found, true = linear_sum_assignment(distance)
    error = np.abs(means[found] - centres[true])  # in units of the blobs' std, which is 1
    assert error.max() <= 0.1, error.max()


def test_json_keys_are_documented(trained_model, fresh):
    result = run_cli("describe", trained_model, fresh[0], "--json", "--top", 3)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == documented_keys("Top-level keys")
    cluster = report["clusters"][0]
    assert set(cluster) == documented_keys("Per-cluster entries")
    assert set(cluster["features"]["c0"]) <= {"mean", "std", "std_diff", "median"}
    assert len(cluster["top"]) == 3
    assert report["outlier_quantile"] == 0.01 and report["outlier_threshold"] is not None
    # Fresh rows from the training distribution: about the training share is flagged.
    assert 0.0 <= report["outlier_share"] <= 0.03
    examples = cluster["examples"]
    assert len(examples["typical"]) == len(examples["atypical"]) == 8
    typical = [e["score"] for e in examples["typical"]]
    assert typical == sorted(typical, reverse=True)
    assert min(typical) > max(e["score"] for e in examples["atypical"])


def test_the_same_report_from_any_chunk_size(trained_model, blobs_csv):
    """One pass, chunk by chunk: the chunking changes nothing but the last digits."""
    small = run_cli("describe", trained_model, blobs_csv, "--json", "--batch-size", 97)
    whole = run_cli("describe", trained_model, blobs_csv, "--json")
    assert small.exit_code == whole.exit_code == 0, small.stderr
    a, b = json.loads(small.stdout), json.loads(whole.stdout)
    assert [c["size"] for c in a["clusters"]] == [c["size"] for c in b["clusters"]]
    assert [c["examples"] for c in a["clusters"]] == [c["examples"] for c in b["clusters"]]
    for ca, cb in zip(a["clusters"], b["clusters"]):
        for name, values in ca["features"].items():
            for key, value in values.items():
                assert value == pytest.approx(cb["features"][name][key], rel=1e-9, abs=1e-12)


def test_tables_for_people_on_stdout(trained_model, blobs_csv):
    result = run_cli("describe", trained_model, blobs_csv, "--top", 2)
    assert result.exit_code == 0, result.stderr
    assert "5 clusters, 2,000 rows" in result.stdout
    assert "outliers" in result.stdout and "sets it apart" in result.stdout
    assert "means" in result.stdout
    assert result.stderr == ""


def test_plot_and_examples_write_pngs(trained_model, blobs_csv, tmp_path):
    heat, examples = tmp_path / "heat.png", tmp_path / "examples.png"
    result = run_cli("describe", trained_model, blobs_csv, "--plot", heat,
                     "--examples", examples, "--image-shape", "4x4")
    assert result.exit_code == 0, result.stderr
    for path in (heat, examples):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert f"wrote {path}" in result.stderr
    # 16 columns make a square: --image-shape may be left out.
    square = tmp_path / "square.png"
    assert run_cli("describe", trained_model, blobs_csv, "--examples", square,
                   "--quiet").exit_code == 0
    assert square.read_bytes()[:8] == PNG_SIGNATURE
    # With --image-shape, --plot draws each cluster's differences as an image.
    maps = tmp_path / "maps.png"
    result = run_cli("describe", trained_model, blobs_csv, "--plot", maps, "--image-shape", "2x8")
    assert result.exit_code == 0, result.stderr
    assert maps.read_bytes()[:8] == PNG_SIGNATURE
    assert maps.read_bytes() != heat.read_bytes()


def test_rows_the_model_drops_are_counted_apart(trained_model, blobs, tmp_path):
    dropping = tmp_path / "drop.pt"
    payload = checkpoint.load(str(trained_model))
    payload["preprocess"]["missing"] = "drop"
    checkpoint.save(str(dropping), payload)
    frame = blobs[0].iloc[:300].copy()
    frame.loc[[3, 30, 300 - 1], "c5"] = np.nan
    frame.to_csv(tmp_path / "holes.csv", index=False)
    result = run_cli("describe", dropping, tmp_path / "holes.csv", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rows"], report["rows_unassigned"]) == (297, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top", "0"], "error: --top must be at least 1, got 0"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        (["--plot", "heat.jpg"], "error: --plot 'heat.jpg' must end in .png"),
        (["--examples", "e.gif"], "error: --examples 'e.gif' must end in .png"),
        (["--examples", "e.png", "--image-shape", "28by28"],
         "error: --image-shape takes HxW such as 28x28, got '28by28'"),
        (["--examples", "e.png", "--image-shape", "0x16"],
         "error: --image-shape takes positive sizes such as 28x28, got '0x16'"),
    ],
)
def test_options_are_checked_before_torch_the_model_or_the_data(tmp_path, args, message):
    """Neither model.pt nor big.parquet exists: each option is the first thing checked."""
    probe = ("import sys\nfrom gmvae_cli.cli import app\ntry:\n    app()\nexcept SystemExit as e:\n"
             "    print(e.code, 'torch' in sys.modules)\n")
    result = subprocess.run(
        [sys.executable, "-c", probe, "describe", "model.pt", "big.parquet", *args],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.stdout.splitlines()[-1] == "2 False"
    assert result.stderr == message + "\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("picture", ["--examples", "--plot"])
def test_an_image_shape_that_does_not_fit_the_model_fails_before_the_data(
        trained_model, tmp_path, picture):
    result = run_cli("describe", trained_model, tmp_path / "absent.csv",
                     picture, tmp_path / "e.png", "--image-shape", "3x5")
    one_line_error(result)
    assert result.stderr == ("error: --image-shape 3x5 holds 15 pixels but the model has 16 "
                             "columns; pick H and W with H×W = 16\n")
    assert list(tmp_path.iterdir()) == []


def test_describe_help_carries_an_example():
    text = run_cli("describe", "--help").stdout
    assert "Example: gmvae describe" in text
    for option in ("--json", "--plot", "--top", "--examples", "--image-shape"):
        assert option in text


def test_a_wide_table_is_read_in_smaller_chunks():
    from gmvae_cli.describing import CHUNK_VALUES, DEFAULT_CHUNK_ROWS, default_chunk_rows

    assert default_chunk_rows(16) == DEFAULT_CHUNK_ROWS
    assert default_chunk_rows(784) == CHUNK_VALUES // 784
    assert pd.api.types.is_integer(default_chunk_rows(10**9)) and default_chunk_rows(10**9) >= 1


def test_text_columns_are_described_by_their_shares(tmp_path):
    """A model with a one-hot encoded text column: describe gives that column's share of
    each value per cluster (not a mean), and the numbers as numbers."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    frame = pd.DataFrame({"x": labels * 8.0 + rng.normal(size=400),
                          "colour": np.where(labels == 1, "red", "blue")})
    frame.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", tmp_path / "t.csv", "--k", 2, "-o", model, "--recipe", "paper",
                   "--hidden", "16,16", "--epochs", 15, "--quiet").exit_code == 0
    result = run_cli("describe", model, tmp_path / "t.csv", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["numeric_columns"] == ["x"] and report["categorical_columns"] == ["colour"]
    shares = sorted(c["categorical"]["colour"].get("red", 0.0) for c in report["clusters"])
    assert shares[0] < 0.05 and shares[1] > 0.95  # one cluster is the red rows, one the blue

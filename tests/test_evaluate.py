"""`gmvae evaluate` and the metric helpers: accuracy on seeded blobs, the documented JSON
keys, ELBO terms equal to GMVAE.score, label files, the PNG figure, and bad input."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import FAST_TRAIN, run_cli
from gmvae_cli import checkpoint, plots
from gmvae_cli.api import GMVAE
from gmvae_cli.metrics import hungarian_accuracy, label_report, majority_accuracy

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluate.md"


def documented_keys(section: str) -> set[str]:
    """The keys listed as `| \\`key\\` | …` rows under a '## section' heading of the doc."""
    text = DOC.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory, blobs):
    frame, labels = blobs
    path = tmp_path_factory.mktemp("labelled") / "labelled.csv"
    frame.assign(label=labels).to_csv(path, index=False)
    return path


def no_traceback(result) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert result.stderr.startswith("error: ")
    assert result.stdout == ""


# -- metric helpers ----------------------------------------------------------------------------


def brute_force_accuracy(labels, clusters):
    """Independent reference: try every one-to-one map of clusters to labels."""
    classes, ks = np.unique(labels), np.unique(clusters)
    best = 0
    for perm in itertools.permutations(classes, len(ks)):
        mapping = dict(zip(ks, perm))
        best = max(best, sum(mapping[c] == y for c, y in zip(clusters, labels)))
    return best / len(labels)


def test_accuracies_against_reference():
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array(["a", "b", "c"]), size=60)
    clusters = rng.integers(0, 3, size=60)
    assert hungarian_accuracy(labels, clusters) == pytest.approx(brute_force_accuracy(labels, clusters))
    # Majority: each cluster maps to its most frequent label, computed directly.
    direct = sum(pd.Series(labels[clusters == c]).value_counts().iloc[0] for c in np.unique(clusters))
    assert majority_accuracy(labels, clusters) == pytest.approx(direct / 60)


def test_more_clusters_than_labels():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # every cluster pure, two per label
    assert majority_accuracy(labels, clusters) == 1.0
    assert hungarian_accuracy(labels, clusters) == 0.5  # one-to-one: two clusters unmatched


def test_label_report_counts_and_empty_clusters():
    report = label_report(np.array([5, 5, 7]), np.array([0, 0, 2]), k=4)
    assert report["confusion"] == [[2, 0, 0, 0], [0, 0, 1, 0]]
    assert report["per_cluster"][1] == {
        "cluster": 1, "size": 0, "share": 0.0, "majority_label": None, "purity": None
    }
    assert report["per_cluster"][0]["majority_label"] == 5
    json.dumps(report)  # plain data only


# -- the command -----------------------------------------------------------------------------


def test_evaluate_with_label_column(trained_model, labelled_csv):
    result = run_cli("evaluate", trained_model, labelled_csv, "--labels", "label", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == documented_keys("Top-level keys")
    assert set(report["labels"]) == documented_keys("The labels object")
    assert set(report["labels"]["per_cluster"][0]) == documented_keys("Per-cluster rows")
    assert set(report["score"]) == documented_keys("The score object")
    labels = report["labels"]
    assert labels["accuracy_hungarian"] >= 0.95
    assert labels["accuracy_majority"] >= 0.95
    assert labels["ari"] >= 0.9 and labels["nmi"] >= 0.9
    assert np.asarray(labels["confusion"]).sum() == 2000
    assert np.asarray(labels["confusion"]).shape == (5, 5)
    assert sum(report["cluster_sizes"]) == report["rows"] == 2000
    assert report["effective_clusters"] == 5
    assert 0 < report["mean_confidence"] <= 1


def test_evaluate_table_for_people(trained_model, labelled_csv):
    result = run_cli("evaluate", trained_model, labelled_csv, "--labels", "label")
    assert result.exit_code == 0, result.stderr
    for text in ("Hungarian", "majority", "NMI", "ARI", "purity", "confusion matrix", "ELBO"):
        assert text in result.stdout


def test_label_column_is_not_a_feature(tmp_path, labelled_csv):
    """A numeric label column becomes a feature unless --exclude names it, and evaluate
    refuses to score a model that saw its labels in training."""
    leaky, clean = tmp_path / "leaky.pt", tmp_path / "clean.pt"
    assert run_cli("train", labelled_csv, "--k", 5, "-o", leaky, *FAST_TRAIN).exit_code == 0
    assert run_cli("train", labelled_csv, "--k", 5, "--exclude", "label", "-o", clean,
                   *FAST_TRAIN).exit_code == 0
    assert "label" in checkpoint.load(str(leaky))["preprocess"]["columns"]
    assert "label" not in checkpoint.load(str(clean))["preprocess"]["columns"]
    refused = run_cli("evaluate", leaky, labelled_csv, "--labels", "label")
    assert refused.exit_code == 2
    assert refused.stderr == ("error: label column 'label' is one of the model's features, so "
                              "the model saw the labels in training; retrain with --exclude label\n")
    scored = run_cli("evaluate", clean, labelled_csv, "--labels", "label", "--json")
    assert scored.exit_code == 0, scored.stderr
    assert json.loads(scored.stdout)["labels"]["ari"] >= 0.9


def test_unlabelled_elbo_matches_score(trained_model, blobs_csv):
    result = run_cli("evaluate", trained_model, blobs_csv, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["labels"] is None
    expected = GMVAE.load(str(trained_model)).score(pd.read_csv(blobs_csv), seed=0)
    assert set(expected) >= {"elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior"}
    for name, value in expected.items():
        assert report["score"][name] == pytest.approx(value, rel=1e-6, abs=1e-6)
    terms = report["score"]
    assert terms["elbo"] == pytest.approx(
        terms["reconstruction"] - terms["conditional_prior"] - terms["w_prior"] - terms["z_prior"],
        abs=1e-4,
    )
    human = run_cli("evaluate", trained_model, blobs_csv)
    assert human.exit_code == 0 and "effective clusters" in human.stdout
    assert "confusion" not in human.stdout


def test_labels_from_csv_and_hdf5_files(trained_model, blobs_csv, blobs, tmp_path):
    pd.DataFrame({"y": blobs[1]}).to_csv(tmp_path / "y.csv", index=False)
    with h5py.File(tmp_path / "y.h5", "w") as h5:
        h5["test/labels"] = blobs[1]
    from_csv = run_cli("evaluate", trained_model, blobs_csv, "--labels", tmp_path / "y.csv", "--json")
    from_h5 = run_cli(
        "evaluate", trained_model, blobs_csv, "--labels", tmp_path / "y.h5",
        "--labels-key", "test/labels", "--json",
    )
    assert from_csv.exit_code == 0, from_csv.stderr
    assert from_h5.exit_code == 0, from_h5.stderr
    a, b = json.loads(from_csv.stdout)["labels"], json.loads(from_h5.stdout)["labels"]
    assert a["accuracy_hungarian"] == b["accuracy_hungarian"] >= 0.95
    assert b["source"].endswith(":test/labels")


def test_plot_png(trained_model, labelled_csv, blobs_csv, tmp_path):
    import matplotlib.image as mpimg

    with_labels, sizes_only = tmp_path / "eval.png", tmp_path / "sizes.png"
    result = run_cli("evaluate", trained_model, labelled_csv, "--labels", "label", "--plot", with_labels)
    assert result.exit_code == 0, result.stderr
    result = run_cli("evaluate", trained_model, blobs_csv, "--plot", sizes_only, "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)  # the picture does not disturb the JSON on stdout
    for path, (w, h) in ((with_labels, plots.FIGURE_WITH_LABELS), (sizes_only, plots.FIGURE_SIZES_ONLY)):
        image = mpimg.imread(path)
        assert image.shape[:2] == (round(h * plots.DPI), round(w * plots.DPI))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.png", "sizes.png"]  # no temp files


# -- bad input -------------------------------------------------------------------------------


def test_missing_label_column(trained_model, blobs_csv, tmp_path):
    result = run_cli("evaluate", trained_model, blobs_csv, "--labels", "nope", "--plot", tmp_path / "x.png")
    no_traceback(result)
    assert "'nope'" in result.stderr and "column" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_label_file_length_differs(trained_model, blobs_csv, blobs, tmp_path):
    pd.DataFrame({"y": blobs[1][:-1]}).to_csv(tmp_path / "short.csv", index=False)
    result = run_cli(
        "evaluate", trained_model, blobs_csv, "--labels", tmp_path / "short.csv", "--plot", tmp_path / "x.png"
    )
    no_traceback(result)
    assert "1999 labels" in result.stderr and "2000 rows" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--labels", "c0"], "model's features"),  # a feature cannot be the labels
        (["--plot", "eval.jpg"], ".png"),
        (["--labels-key", "y"], "--labels FILE"),
    ],
)
def test_other_bad_input(trained_model, labelled_csv, args, words):
    result = run_cli("evaluate", trained_model, labelled_csv, *args)
    no_traceback(result)
    assert words in result.stderr


def test_hdf5_labels_need_key(trained_model, blobs_csv, blobs, tmp_path):
    with h5py.File(tmp_path / "y.h5", "w") as h5:
        h5["labels"] = blobs[1]
    result = run_cli("evaluate", trained_model, blobs_csv, "--labels", tmp_path / "y.h5")
    no_traceback(result)
    assert "--labels-key" in result.stderr


def test_help_ends_with_example():
    for command in ("evaluate", "sample"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0
        assert f"Example: gmvae {command}" in result.stdout

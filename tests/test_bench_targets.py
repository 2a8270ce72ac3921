"""The target table `make bench` writes (benchmarks/quality.py): each target is judged on the
default-recipe runs only, with the shortfall where it is missed."""

from __future__ import annotations

import pytest
from benchmarks.quality import targets


def row(data, k, options, mean, worst, per_seed, pseudo, seconds):
    return {"data": data, "k": k, "options": options, "accuracy_mean": mean,
            "accuracy_min": worst, "per_seed": per_seed, "pseudo_per_seed": pseudo,
            "max_train_seconds": seconds}


def test_targets_judge_default_runs_and_say_how_far():
    summary = [
        row("mnist", 10, "(defaults)", 0.975, 0.955, [0.97, 0.98], [0.95, 0.96], 150.0),
        row("usps", 10, "(defaults)", 0.973, 0.972, [0.973], [None], 190.0),
        # another recipe's run: neither its accuracy nor its time counts
        row("mnist", 10, "--recipe paper", 0.5, 0.5, [0.5], [None], 500.0),
    ]
    found = {t["target"]: t for t in targets(summary)}
    mean = found["MNIST-test K = 10, mean accuracy"]
    assert mean["met"] and mean["value"] == 0.975 and mean["short_by"] == 0.0
    worst = found["MNIST-test K = 10, worst seed"]
    assert not worst["met"] and worst["short_by"] == pytest.approx(0.005)
    gain = found["MNIST-test K = 10, GMVAE − pseudo-clusters"]
    assert gain["met"] and gain["value"] == pytest.approx(0.975 - 0.955)
    usps = found["USPS K = 10, mean accuracy"]
    assert not usps["met"] and usps["short_by"] == pytest.approx(0.007)
    seconds = found["every run, seconds"]
    assert seconds["value"] == 190.0 and not seconds["met"] and seconds["short_by"] == 10.0
    # no K = 30 run: that target is not judged
    assert "MNIST-test K = 30, mean accuracy (majority)" not in found
    assert len(found) == 5

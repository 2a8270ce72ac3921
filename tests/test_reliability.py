"""Reliability: hostile checkpoints, interruption and resume, divergence, degenerate data,
determinism. See docs/reliability.md."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_blobs_frame, run_cli
from gmvae_cli import checkpoint
from gmvae_cli.model import GMVAENet
from gmvae_cli.optimizer import FusedAdam
from gmvae_cli.train import DIVERGED

TINY = ["--recipe", "paper", "--hidden", "8,8", "--x-dim", "2", "--w-dim", "2", "--quiet"]
RESUME_HINT = "continue with the same command and --resume"


@pytest.fixture
def small_csv(tmp_path, monkeypatch):
    """200 rows in 3 blobs, 4 columns; the test runs inside tmp_path."""
    monkeypatch.chdir(tmp_path)
    make_blobs_frame(n_rows=200, n_features=4, k=3, seed=3)[0].to_csv("small.csv", index=False)
    return "small.csv"


def train_args(data: str, out: str, epochs: int, *extra: str) -> list[str]:
    return ["train", data, "--k", "3", "-o", out, "--epochs", str(epochs), *TINY, *extra]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- checkpoints that would run code ----------------------------------------------------------


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling calls Path.touch(marker): code from the file runs
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["torch.save", "pickle", "inside-a-real-checkpoint"])
@pytest.mark.parametrize("command", ["info", "assign"])
def test_code_payload_is_never_run(how, command, tmp_path, monkeypatch, trained_model):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(Payload(marker), evil)
    elif how == "pickle":
        evil.write_bytes(pickle.dumps(Payload(marker)))
    else:
        payload = torch.load(trained_model, weights_only=True)
        torch.save({**payload, "history": [Payload(marker)]}, evil)
    make_blobs_frame(n_rows=20, n_features=16, seed=2)[0].to_csv("data.csv", index=False)

    args = ["info", evil] if command == "info" else ["assign", evil, "data.csv", "-o", "out.csv"]
    result = run_cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {evil} ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not Path("out.csv").exists() and leftovers(tmp_path) == []

    # The payload is live: an ordinary unpickler does run it (proves the test means something).
    if how == "pickle":
        pickle.loads(evil.read_bytes())
        assert marker.exists()


# -- interruption and resume ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_resumable_checkpoint(sig, small_csv, tmp_path):
    epochs = 250  # a few seconds: long enough to be interrupted right after the first save
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = train_args(small_csv, "model.pt", epochs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmvae_cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not Path("model.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        f"interrupted: the last finished epoch is saved in model.pt; {RESUME_HINT}"
    ]
    assert stdout == "" and leftovers(tmp_path) == []
    saved = checkpoint.load("model.pt")["training"]
    assert saved is not None and 1 <= saved["epoch"] < epochs
    if sig == signal.SIGTERM:
        return  # the same resumable state as after SIGINT; resuming is checked once

    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.stderr
    payload = checkpoint.load("model.pt")
    assert payload["training"] is None  # finished
    assert [h["epoch"] for h in payload["history"]] == list(range(1, epochs + 1))


def test_interrupt_during_save_keeps_the_previous_checkpoint(small_csv, tmp_path, monkeypatch):
    """Ctrl-C halfway through writing epoch 3's checkpoint: epoch 2's file stays whole."""
    real_save, calls = torch.save, []

    def save_then_interrupt(obj, handle, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            handle.write(b"PK\x03\x04 half a zip")  # a partial write, then the signal lands
            raise KeyboardInterrupt
        real_save(obj, handle, *a, **kw)

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    result = run_cli(*train_args(small_csv, "model.pt", 6))
    assert result.exit_code == 130
    assert RESUME_HINT in result.stderr
    assert leftovers(tmp_path) == []
    assert checkpoint.load("model.pt")["training"]["epoch"] == 2

    monkeypatch.setattr(torch, "save", real_save)
    result = run_cli(*train_args(small_csv, "model.pt", 6), "--resume")
    assert result.exit_code == 0, result.stderr
    assert len(checkpoint.load("model.pt")["history"]) == 6


def test_interrupt_before_the_first_epoch_says_nothing_was_saved(small_csv, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gmvae_cli.train.Trainer._epoch", interrupted)
    result = run_cli(*train_args(small_csv, "model.pt", 3))
    assert result.exit_code == 130
    assert result.stderr == "interrupted before the first epoch ended; nothing was saved\n"
    assert not Path("model.pt").exists()


def interrupted_then_resumed(monkeypatch, args: list[str], stop) -> tuple[dict, dict]:
    """Train whole.pt without a break, and parts.pt interrupted (Ctrl-C) right after the
    epoch-end checkpoint whose training state `stop` accepts, then resumed; both payloads."""
    assert run_cli(*args, "-o", "whole.pt").exit_code == 0
    real_save = checkpoint.save

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        if payload["training"] and stop(payload["training"]):
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    interrupted = run_cli(*args, "-o", "parts.pt")
    assert interrupted.exit_code == 130
    during_warm_start = checkpoint.load("parts.pt")["training"]["epoch"] == 0
    assert interrupted.stderr.startswith(
        "interrupted during the warm start: its progress is saved in parts.pt; "
        if during_warm_start else "interrupted: the last finished epoch is saved in parts.pt; ")
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert run_cli(*args, "-o", "parts.pt", "--resume").exit_code == 0
    whole, parts = checkpoint.load("whole.pt"), checkpoint.load("parts.pt")
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, parts["state_dict"][name]), name
    assert whole["terms"] == parts["terms"]
    return whole, parts


def test_resumed_run_equals_an_uninterrupted_one(small_csv, monkeypatch):
    """Same seed: interrupted in the second restart, then resumed, gives the same bytes."""
    args = ["train", small_csv, "--k", "3", "--epochs", "5", "--restarts", "2", *TINY]
    whole, parts = interrupted_then_resumed(
        monkeypatch, args, lambda state: state["restart"] == 1 and state["epoch"] == 2
    )
    timeless = lambda history: [{**h, "seconds": None} for h in history]
    assert timeless(whole["history"]) == timeless(parts["history"])
    out = [run_cli("assign", m, small_csv, "--probs").stdout for m in ("whole.pt", "parts.pt")]
    assert out[0] == out[1]


@pytest.mark.parametrize("stop_after", [1, 4])  # in the guided phase; in the plain-ELBO phase
def test_default_recipe_resume_equals_an_uninterrupted_run(small_csv, monkeypatch, stop_after):
    """The warm start is not redone on resume: its pseudo-cluster responsibilities travel in
    the checkpoint until the guided epochs end, so the resumed run gives the same bytes."""
    # TINY without "--recipe paper"; 5 epochs: 2 guided, 3 plain ELBO, 5 of pretraining.
    args = ["train", small_csv, "--k", "3", "--epochs", "5", *TINY[2:]]
    whole, _ = interrupted_then_resumed(monkeypatch, args, lambda state: state["epoch"] == stop_after)
    assert [h["phase"] for h in whole["history"]] == ["guided"] * 2 + ["elbo"] * 3


# -- numerical faults --------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_csv, monkeypatch):
    real, calls = GMVAENet.elbo_terms, []

    def nan_after_two_epochs(self, y, *args, **kwargs):
        terms = real(self, y, *args, **kwargs)
        calls.append(1)
        if len(calls) > 4:  # two batches per epoch (200 rows, batch 128)
            terms.reconstruction = terms.reconstruction * float("nan")
        return terms

    monkeypatch.setattr(GMVAENet, "elbo_terms", nan_after_two_epochs)
    result = run_cli(*train_args(small_csv, "model.pt", 6))
    assert result.exit_code == 2
    assert result.stderr == f"error: {DIVERGED}\n"
    saved = checkpoint.load("model.pt")
    assert saved["training"]["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_nan_weights_behind_a_finite_loss_are_not_saved(small_csv, monkeypatch):
    """A NaN step at the very end of epoch 2: the epoch-1 checkpoint must survive."""
    real_step, steps = FusedAdam.step, []

    def poisoned_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(FusedAdam, "step", poisoned_step)
    result = run_cli(*train_args(small_csv, "model.pt", 6))
    assert result.exit_code == 2 and result.stderr == f"error: {DIVERGED}\n"
    saved = checkpoint.load("model.pt")
    assert saved["training"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_huge_learning_rate_is_reported_not_crashed(small_csv):
    result = run_cli(*train_args(small_csv, "model.pt", 5, "--lr", "1e30"))
    assert result.exit_code == 2 and result.stderr == f"error: {DIVERGED}\n"


@pytest.mark.parametrize(
    "kind", ["constant-columns", "all-constant", "duplicated-rows", "missing-drop", "missing-mean"]
)
def test_degenerate_data_trains_without_nan(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame, _ = make_blobs_frame(n_rows=120, n_features=4, k=3, seed=4)
    extra: list[str] = []
    if kind == "constant-columns":
        frame["c1"], frame["c3"] = 7.0, -2.5
    elif kind == "all-constant":
        frame.loc[:, :] = 1.5
    elif kind == "duplicated-rows":
        frame = pd.concat([frame.iloc[:3]] * 40, ignore_index=True)  # 3 distinct rows
    else:
        frame.loc[::7, "c0"] = np.nan
        frame.loc[3, "c2"] = np.inf
        extra = ["--missing", kind.split("-")[1]]
    frame.to_csv("data.csv", index=False)
    complete = int(np.isfinite(frame.to_numpy()).all(axis=1).sum())
    result = run_cli(*train_args("data.csv", "model.pt", 3, *extra))
    assert result.exit_code == 0, result.stderr
    payload = checkpoint.load("model.pt")
    assert all(np.isfinite(v) for v in payload["terms"].values())
    assert all(torch.isfinite(t).all() for t in payload["state_dict"].values())
    out = run_cli("assign", "model.pt", "data.csv", "--probs")
    assert out.exit_code == 0, out.stderr
    table = pd.read_csv(io.StringIO(out.stdout))
    assert len(table) == len(frame)
    kept = table.dropna(subset=["cluster"])
    assert len(kept) == (complete if kind == "missing-drop" else len(frame))
    assert np.isfinite(kept.drop(columns=["row"]).to_numpy(dtype=float)).all()


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes(small_csv):
    for out in ("a.pt", "b.pt"):
        assert run_cli(*train_args(small_csv, out, 4, "--seed", "7")).exit_code == 0
    for model in ("a.pt", "b.pt"):
        assert run_cli("assign", model, small_csv, "--probs", "-o", f"{model}.csv").exit_code == 0
    assert Path("a.pt.csv").read_bytes() == Path("b.pt.csv").read_bytes()
    other = run_cli(*train_args(small_csv, "c.pt", 4, "--seed", "8"))
    assert other.exit_code == 0
    run_cli("assign", "c.pt", small_csv, "--probs", "-o", "c.pt.csv")
    assert Path("c.pt.csv").read_bytes() != Path("a.pt.csv").read_bytes()  # the seed matters


def test_resume_keeps_the_id_column(small_csv, monkeypatch):
    """An interrupted run with --id-column, resumed: assign still writes the ids."""
    frame = pd.read_csv(small_csv)
    frame.insert(0, "sample", [f"s{i:03d}" for i in range(len(frame))])
    frame.to_csv("ids.csv", index=False)
    args = ["train", "ids.csv", "--k", "3", "--epochs", "4", "--id-column", "sample", *TINY]
    real_save = checkpoint.save

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        if payload["training"] and payload["training"]["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert run_cli(*args, "-o", "ids.pt").exit_code == 130
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert run_cli(*args, "-o", "ids.pt", "--resume").exit_code == 0
    assert checkpoint.load("ids.pt")["id_column"] == "sample"
    out = pd.read_csv(io.StringIO(run_cli("assign", "ids.pt", "ids.csv").stdout))
    assert list(out.columns[:1]) == ["sample"]
    assert out["sample"].tolist() == frame["sample"].tolist()


def test_restarts_keep_the_best_elbo(small_csv, monkeypatch):
    """Three restarts: the model kept is the one whose mean ELBO was highest."""
    from gmvae_cli import train
    from gmvae_cli.api import GMVAE

    seen = []
    real = train.evaluate_terms

    def spy(net, data, seed=0):
        terms = real(net, data, seed)
        seen.append((terms["elbo"], {k: v.clone() for k, v in net.state_dict().items()}))
        return terms

    monkeypatch.setattr(train, "evaluate_terms", spy)
    model = GMVAE(k=3, recipe="paper", hidden=(8, 8), x_dim=2, w_dim=2, epochs=3,
                  restarts=3, seed=5).fit(pd.read_csv(small_csv))
    elbos = [elbo for elbo, _ in seen[:3]]
    best = int(np.argmax(elbos))
    assert len(set(elbos)) == 3  # the restarts really differ
    assert model.terms_["elbo"] == elbos[best]
    assert {h["restart"] for h in model.history_} == {best}
    for name, tensor in model.net_.state_dict().items():
        assert torch.equal(tensor, seen[best][1][name]), name


@pytest.mark.parametrize("stop", ["pretraining", "ready"])
def test_interrupted_warm_start_resumes_where_it_stopped(small_csv, monkeypatch, stop):
    """Ctrl-C during the default recipe's warm start keeps its progress: right after the
    second pretraining epoch, or once the pseudo-clusters are found. --resume continues from
    there (pretraining is not redone) and ends with the model of an uninterrupted run."""
    from gmvae_cli import warm_start

    args = ["train", small_csv, "--k", "3", "--epochs", "6", *TINY[2:]]  # 6 pretraining epochs

    def at_stop(state):
        recipe = state["recipe"]
        if stop == "ready":
            return state["epoch"] == 0 and recipe["stage"] == "ready"
        return recipe["stage"] == "pretraining" and recipe["pretraining"]["epoch"] == 2

    real_pretrain, started_at = warm_start.pretrain, []

    def pretrain(*a, **kw):
        state = a[-1] if len(a) > 8 else kw.get("state")
        started_at.append(None if state is None else state["epoch"])
        return real_pretrain(*a, **kw)

    monkeypatch.setattr(warm_start, "pretrain", pretrain)
    _, parts = interrupted_then_resumed(monkeypatch, args, at_stop)
    # whole, the interrupted run, then the resumed one (which pretrains only if it stopped there)
    assert started_at == ([None, None, 2] if stop == "pretraining" else [None, None])
    assert [h["phase"] for h in parts["history"]] == ["guided"] * 3 + ["elbo"] * 3

"""Progress on stderr for the row-streaming commands (assign, embed): a bar with a row count
when stderr is a terminal, nothing with --quiet, and stdout left clean for the data."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from conftest import run_cli
from gmvae_cli import progress
from gmvae_cli.data import count_rows


@pytest.fixture
def terminal_stderr(monkeypatch):
    """Make the stderr console behave as a terminal; what it draws lands in the buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "stderr", Console(file=buffer, force_terminal=True, width=120))
    return buffer


@pytest.mark.parametrize("command", ["assign", "embed"])
def test_bar_counts_rows_and_leaves_stdout_clean(terminal_stderr, trained_model, blobs, tmp_path, command):
    path = tmp_path / "rows.parquet"
    blobs[0].iloc[:700].to_parquet(path)
    result = run_cli(command, trained_model, path, "--batch-size", "256")
    assert result.exit_code == 0, result.output
    drawn = terminal_stderr.getvalue()
    assert "700/700" in drawn and "rows/s" in drawn  # the total came from the Parquet metadata
    out = pd.read_csv(io.StringIO(result.stdout))
    assert len(out) == 700 and "\x1b" not in result.stdout


def test_quiet_draws_nothing(terminal_stderr, trained_model, blobs_csv):
    result = run_cli("assign", trained_model, blobs_csv, "--quiet")
    assert result.exit_code == 0, result.output
    assert terminal_stderr.getvalue() == ""
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 2000


def test_no_terminal_no_bar(trained_model, blobs_csv):
    result = run_cli("assign", trained_model, blobs_csv)
    assert result.exit_code == 0 and result.stderr == ""


def test_count_rows_from_metadata(tmp_path):
    frame = pd.DataFrame(np.zeros((123, 3)), columns=["a", "b", "c"])
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    with h5py.File(tmp_path / "t.h5", "w") as h5:
        h5["x"] = np.zeros((45, 3))
    assert count_rows(str(tmp_path / "t.parquet")) == 123
    assert count_rows(str(tmp_path / "t.h5")) == 45
    assert count_rows(str(tmp_path / "t.csv")) is None  # unknown without reading the file
    assert count_rows(str(tmp_path / "missing.parquet")) is None  # the reader reports it

"""Property-based tests: whatever small table lands in a CSV file — NaN, ±inf, text, empty
columns, odd headers, ragged lines — reading and preprocessing either work (a finite float
matrix) or stop with the one-line UserError. Never any other exception."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from gmvae_cli.data import read_table
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import Preprocessor, choose_columns

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
# A warning would be extra lines on the user's stderr: treat it as a failure.
pytestmark = pytest.mark.filterwarnings("error")

headers = st.one_of(
    st.sampled_from(["a", "b", "", " ", "a", "1", "x,y", 'q"uote', "ünï", "row", "NaN"]),
    st.text(max_size=6),
)
cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-10**20, 10**20),
    st.sampled_from(["", "nan", "inf", "-inf", "NA", "abc", "1e300", "-1e309", "True", " 3 "]),
    st.text(max_size=4),
    st.none(),
)


@st.composite
def csv_text(draw) -> str:
    """A CSV file's text: a header and rows, mostly rectangular, sometimes ragged."""
    n_cols = draw(st.integers(1, 4))
    n_rows = draw(st.integers(0, 6))
    header = draw(st.lists(headers, min_size=n_cols, max_size=n_cols))
    empty_column = draw(st.one_of(st.none(), st.integers(0, n_cols - 1)))
    ragged = draw(st.booleans()) and draw(st.booleans())  # a quarter of the files
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for _ in range(n_rows):
        width = draw(st.integers(1, n_cols + 1)) if ragged else n_cols
        row = draw(st.lists(cells, min_size=width, max_size=width))
        if empty_column is not None and empty_column < width:
            row[empty_column] = ""
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def prepare(path: Path, missing: str, categorical: str) -> np.ndarray:
    """What `gmvae train` does before the network sees the data."""
    frame = read_table(str(path))
    choice = choose_columns(frame, None, categorical=categorical)
    pre, _ = Preprocessor.fit([frame], choice.columns, missing, "auto",
                              encode=choice.categorical, categorical=categorical)
    matrix, keep = pre.transform(frame)
    assert matrix.shape == (int(keep.sum()), pre.width)
    return matrix


def check_one_line(error: UserError) -> None:
    message = str(error)
    assert message and "\n" not in message


@SETTINGS
@given(text=csv_text(), missing=st.sampled_from(["error", "drop", "mean"]),
       categorical=st.sampled_from(["auto", "ignore"]))
def test_reading_and_preprocessing_work_or_say_why(text, missing, categorical):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "table.csv"
        path.write_bytes(text.encode())
        try:
            matrix = prepare(path, missing, categorical)
        except UserError as e:
            check_one_line(e)
            return
        assert matrix.dtype == np.float32
        assert np.isfinite(matrix).all()
        assert path.read_bytes() == text.encode()  # read, never written


@SETTINGS
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_reader(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "table.csv"
        path.write_bytes(data)
        try:
            prepare(path, "drop", "auto")
        except UserError as e:
            check_one_line(e)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=csv_text(), missing=st.sampled_from(["error", "drop", "mean"]))
def test_train_one_epoch_exits_0_or_2(text, missing):
    """The whole command, a few times: exit 0, or 2 with one line; never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        data, model = Path(folder) / "table.csv", Path(folder) / "model.pt"
        data.write_bytes(text.encode())
        result = run_cli(
            "train", data, "--k", "1", "-o", model, "--missing", missing, "--epochs", "1",
            "--recipe", "paper", "--hidden", "4", "--x-dim", "1", "--w-dim", "1", "--quiet",
        )
        assert "Traceback" not in result.output
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
            assert not model.exists()
        assert sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")) == []


def test_columns_naming_an_all_empty_text_column():
    """No value to quote as an example (e.g. a Parquet column of nulls): still one line."""
    import pandas as pd

    frame = pd.DataFrame({"x": pd.Series([None, None], dtype=object), "y": [1.0, 2.0]})
    with pytest.raises(UserError, match="column 'x' is not numeric; drop it from --columns"):
        choose_columns(frame, ["x"], categorical="ignore")
    choice = choose_columns(frame, ["x"])  # --categorical auto: a text column, with no value
    with pytest.raises(UserError, match="column 'x' has no values; drop it from --columns"):
        Preprocessor.fit([frame], choice.columns, "mean", "auto", encode=choice.categorical,
                         named=choice.named)

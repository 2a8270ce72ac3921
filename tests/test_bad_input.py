"""The bad-input matrix: every case is refused with one line on stderr and exit status 2.

Each case runs the real CLI in-process inside its own temporary folder (as the working
directory, so messages are predictable) and then checks what the user would: exit status 2,
exactly the documented one-line message, no traceback, no warning noise, and a folder left
exactly as it was (no output file, no `.*.tmp` leftovers, inputs byte-for-byte untouched).

docs/reliability.md shows the same matrix; `test_documented` keeps the two in step
(`python tests/test_bad_input.py` prints the table's rows).
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import make_blobs_frame, run_cli

# A network small enough that a case which wrongly got as far as training still ends fast.
TINY = ["--recipe", "paper", "--hidden", "8,8", "--x-dim", "2", "--w-dim", "2",
        "--epochs", "2", "--quiet"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
TMP = "{tmp}"  # stands for the case's temporary folder in expected messages


class Evil:
    """Unpickling this would run code: it touches a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def write_inputs(tmp: Path, model: Path) -> None:
    """Every file the cases read, written fresh into the case's folder."""
    frame, _ = make_blobs_frame(n_rows=40, n_features=16, k=3, seed=1)  # columns c0 … c15
    frame.to_csv(tmp / "data.csv", index=False)
    frame.to_csv(tmp / "data.xyz", index=False)
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "header.csv").write_text("a,b,c\n")
    (tmp / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5,6,7\n8,9,10\n")
    (tmp / "folder.csv").mkdir()
    text = frame.astype(object)
    text.loc[5, "c3"] = "abc"
    text.to_csv(tmp / "text_value.csv", index=False)
    named = frame.copy()
    named.insert(0, "name", [f"row{i}" for i in range(len(frame))])
    named.to_csv(tmp / "named.csv", index=False)
    named[["name"]].to_csv(tmp / "names_only.csv", index=False)
    holes = frame.copy()
    holes.loc[[1, 2], "c1"] = np.nan
    holes.loc[3, "c4"] = np.inf
    holes.loc[4, "c4"] = -np.inf
    holes.to_csv(tmp / "holes.csv", index=False)
    every_row = frame.copy()
    every_row.loc[::2, "c0"] = np.nan  # each row misses a value, yet no column is all NaN
    every_row.loc[1::2, "c1"] = np.nan
    every_row.to_csv(tmp / "every_row.csv", index=False)
    blank = frame.copy()
    blank["c5"] = np.nan
    blank.to_csv(tmp / "blank_column.csv", index=False)
    frame.iloc[:1].to_csv(tmp / "one_row.csv", index=False)
    frame.iloc[:3].to_csv(tmp / "three_rows.csv", index=False)
    huge = frame.copy()
    huge["c2"] = np.linspace(-1e300, 1e300, len(frame))
    huge.to_csv(tmp / "huge.csv", index=False)
    frame.drop(columns=["c7"]).to_csv(tmp / "no_c7.csv", index=False)
    with h5py.File(tmp / "data.h5", "w") as h5:
        h5["a"] = frame.to_numpy()
        h5["b"] = frame.to_numpy()
        h5["cube"] = np.zeros((4, 3, 2))
    shutil.copy(model, tmp / "model.pt")
    shutil.copy(tmp / "data.csv", tmp / "not_a_model.pt")
    whole = (tmp / "model.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    payload = torch.load(tmp / "model.pt", map_location="cpu", weights_only=True)
    torch.save({**payload, "format_version": 99}, tmp / "newer.pt")
    marker = str(tmp / "MARKER")
    torch.save({**payload, "config": Evil(marker)}, tmp / "code.pt")
    with open(tmp / "code_pickle.pt", "wb") as handle:
        pickle.dump(Evil(marker), handle)


@dataclass
class Case:
    id: str
    what: str  # the row's description in docs/reliability.md
    args: list[str]
    message: str  # the exact stderr line, "{tmp}" standing for the folder
    input: str | None = None  # stdin

    def command(self) -> str:
        """As shown in the docs: without the tiny-network options every train case adds."""
        shown = self.args
        while self.args[0] == "train" and shown[-1] in TINY:  # every TINY value is in TINY too
            shown = shown[:-1]
        return "gmvae " + " ".join(shown)


def train(*args: str) -> list[str]:
    """A train command with the tiny-network options, save those the case sets itself."""
    tiny = [a for i, a in enumerate(TINY) if a not in args and TINY[i - 1] not in args]
    return ["train", *args, *tiny]


CASES = [
    Case("missing-file", "missing file", train("nope.csv", "-o", "m.pt"),
         "error: nope.csv: no such file; check the path"),
    Case("directory", "directory instead of a file", train("folder.csv", "-o", "m.pt"),
         "error: folder.csv is a directory; pass a data file"),
    Case("unknown-suffix", "unknown suffix", train("data.xyz", "-o", "m.pt"),
         "error: cannot tell the format of 'data.xyz' from its suffix '.xyz'; "
         "pass --format csv|parquet|hdf5"),
    Case("unknown-format", "unknown --format", train("data.csv", "--format", "xls", "-o", "m.pt"),
         "error: --format 'xls' is not known; use one of csv, parquet, hdf5"),
    Case("empty-file", "empty file", train("empty.csv", "-o", "m.pt"),
         "error: empty.csv is empty; it needs a header row and at least one data row"),
    Case("empty-stdin", "empty standard input", train("-", "-o", "m.pt"),
         "error: standard input is empty; pipe a CSV table with a header row", input=""),
    Case("header-only", "CSV with a header and no rows", train("header.csv", "-o", "m.pt"),
         "error: header.csv has no data rows; it needs at least one row below the header"),
    Case("ragged", "ragged CSV (a row with an extra field)", train("ragged.csv", "-o", "m.pt"),
         "error: ragged.csv is not a well-formed CSV table (Error tokenizing data. C error: "
         "Expected 3 fields in line 3, saw 4); fix the rows named"),
    Case("text-in-model-column", "non-numeric value in a model column (assign)",
         ["assign", "model.pt", "text_value.csv", "-o", "out.csv"],
         "error: model column 'c3' holds non-numeric values; clean that column"),
    Case("text-column-named", "non-numeric column named in --columns (train, --categorical ignore)",
         train("named.csv", "--columns", "c0,name", "--categorical", "ignore", "-o", "m.pt"),
         "error: column 'name' is not numeric (e.g. 'row0'); drop it from --columns or clean "
         "its values"),
    Case("id-text-column-named", "text column with a value per row named in --columns (train)",
         train("named.csv", "--columns", "c0,name", "-o", "m.pt"),
         "error: column 'name' has 40 distinct values in 40 rows: too many to encode as "
         "categories (at most 50, and at most half the rows); drop it from --columns, or pass "
         "it as --id-column if it is an id"),
    Case("unknown-column-named", "--columns names a column the table lacks",
         train("data.csv", "--columns", "c0,nope", "-o", "m.pt"),
         "error: --columns names 'nope', not in the table; its columns are: c0, c1, c2, c3, c4, "
         "c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15"),
    Case("no-numeric-columns", "no numeric column, and a text column with too many values",
         train("names_only.csv", "-o", "m.pt"),
         "error: the table has no numeric feature columns and no text column to encode: name "
         "(40 distinct values in 40 rows); check the file or --columns"),
    Case("nan-inf-train", "NaN and ±inf, --missing error, train",
         train("holes.csv", "--missing", "error", "-o", "m.pt"),
         "error: missing or infinite values in columns 'c1' (2), 'c4' (2); pass --missing drop "
         "or --missing mean, or clean the data"),
    Case("nan-inf-assign", "NaN and ±inf at assign (model trained with --missing error)",
         ["assign", "model.pt", "holes.csv", "-o", "out.csv"],
         "error: missing or infinite values in columns 'c1' (2), 'c4' (2); pass --missing drop "
         "or --missing mean, or clean the data"),
    Case("drop-leaves-nothing", "--missing drop when every row has a NaN",
         train("every_row.csv", "--missing", "drop", "-o", "m.pt"),
         "error: every row has a missing or infinite value, so --missing drop leaves no rows; "
         "use --missing mean or clean the data"),
    Case("empty-column", "a column with no values at all (--missing mean)",
         train("blank_column.csv", "--missing", "mean", "-o", "m.pt"),
         "error: column 'c5' has no finite values; drop it with --exclude"),
    Case("unknown-missing", "unknown --missing rule", train("data.csv", "--missing", "zero", "-o", "m.pt"),
         "error: --missing 'zero' is not known; use error|drop|mean"),
    Case("unknown-categorical", "unknown --categorical rule",
         train("data.csv", "--categorical", "onehot", "-o", "m.pt"),
         "error: --categorical 'onehot' is not known; use auto|ignore"),
    Case("single-row", "a single row (--k 1)", train("one_row.csv", "--k", "1", "-o", "m.pt"),
         "error: training needs at least 2 rows but got 1; add more rows"),
    Case("fewer-rows-than-k", "fewer rows than K", train("three_rows.csv", "--k", "5", "-o", "m.pt"),
         "error: expected at least K rows but got 3 rows for --k 5; use a smaller --k or more data"),
    Case("k-zero", "--k 0", train("data.csv", "--k", "0", "-o", "m.pt"),
         "error: --k must be at least 1, got 0"),
    Case("k-negative", "--k -3", train("data.csv", "--k", "-3", "-o", "m.pt"),
         "error: --k must be at least 1, got -3"),
    Case("huge-train", "huge values (±1e300) at train", train("huge.csv", "-o", "m.pt"),
         "error: values too large to scale (overflow); rescale the columns"),
    Case("huge-assign", "huge values (±1e300) at assign",
         ["assign", "model.pt", "huge.csv", "-o", "out.csv"],
         "error: column 'c2' holds values too large for the model (e.g. 1e300); rescale the column"),
    Case("lacks-model-column", "assign on a table lacking a model column",
         ["assign", "model.pt", "no_c7.csv", "-o", "out.csv"],
         "error: the table lacks the model's column 'c7'; pass a table with the columns the "
         "model was trained on"),
    Case("hdf5-no-key", "HDF5 with several datasets and no --key", train("data.h5", "-o", "m.pt"),
         "error: data.h5 holds 2 2-D datasets (a, b, cube); choose one with --key"),
    Case("hdf5-wrong-key", "HDF5 --key that is not there",
         train("data.h5", "--key", "nope", "-o", "m.pt"),
         "error: data.h5 has no dataset 'nope'; choose --key from: a, b, cube"),
    Case("hdf5-not-2d", "HDF5 dataset that is not 2-D",
         train("data.h5", "--key", "cube", "-o", "m.pt"),
         "error: dataset 'cube' in data.h5 has shape (4, 3, 2); gmvae needs a 2-D table "
         "(rows × features): choose another --key"),
    Case("train-output-no-folder", "unwritable checkpoint path (its folder is a file)",
         train("data.csv", "-o", "data.csv/m.pt"),
         f"error: cannot write checkpoint data.csv/m.pt: folder {TMP}/data.csv does not exist"),
    Case("train-output-directory", "checkpoint path is a directory",
         train("data.csv", "-o", "folder.csv"),
         "error: cannot write checkpoint folder.csv: it is a directory; pass a file such as "
         "model.pt"),
    Case("assign-output-no-folder", "unwritable output path (no such folder)",
         ["assign", "model.pt", "data.csv", "-o", "nowhere/out.csv"],
         f"error: cannot write nowhere/out.csv: folder {TMP}/nowhere does not exist"),
    Case("assign-output-suffix", "output with an unknown suffix",
         ["assign", "model.pt", "data.csv", "-o", "out.json"],
         "error: output 'out.json' must end in .csv or .parquet"),
    Case("train-output-is-input", "checkpoint path equal to the input",
         train("data.csv", "-o", "data.csv"),
         "error: checkpoint data.csv is also the input data; write to another -o path"),
    Case("assign-output-is-input", "output path equal to the input",
         ["assign", "model.pt", "data.csv", "-o", "data.csv"],
         "error: output data.csv is also an input; write to another file"),
    Case("negative-lambda", "negative λ", train("data.csv", "--lambda", "-0.5", "-o", "m.pt"),
         "error: --lambda must be 0 or more, got -0.5"),
    Case("x-dim-zero", "--x-dim 0", train("data.csv", "--x-dim", "0", "-o", "m.pt"),
         "error: --x-dim must be at least 1, got 0"),
    Case("unknown-device", "unknown device", train("data.csv", "--device", "tpu", "-o", "m.pt"),
         "error: --device 'tpu' is not known; use auto, cpu, cuda or mps"),
    Case("unknown-device-assign", "unknown device (assign)",
         ["assign", "model.pt", "data.csv", "--device", "tpu", "-o", "out.csv"],
         "error: --device 'tpu' is not known; use auto, cpu, cuda or mps"),
    Case("cuda-without-gpu", "--device cuda with no GPU (skipped where CUDA exists)",
         train("data.csv", "--device", "cuda", "-o", "m.pt"),
         "error: --device cuda was asked for but no CUDA GPU is visible; use --device cpu"),
    Case("resume-finished", "--resume on a finished model",
         train("data.csv", "--resume", "-o", "model.pt"),
         "error: model.pt holds a finished model with no training state to resume"),
    Case("ckpt-missing", "checkpoint: no such file", ["info", "nope.pt"],
         "error: nope.pt: no such checkpoint; train one with `gmvae train`"),
    Case("ckpt-not-a-checkpoint", "checkpoint: not a checkpoint (a CSV named .pt)",
         ["info", "not_a_model.pt"],
         "error: not_a_model.pt is not a gmvae checkpoint (unreadable or truncated); retrain it"),
    Case("ckpt-truncated", "checkpoint: truncated",
         ["assign", "truncated.pt", "data.csv", "-o", "out.csv"],
         "error: truncated.pt is not a gmvae checkpoint (unreadable or truncated); retrain it"),
    Case("ckpt-newer", "checkpoint: newer format version", ["info", "newer.pt"],
         "error: newer.pt has checkpoint format 99, newer than this gmvae reads (1); upgrade gmvae"),
    Case("ckpt-code-info", "checkpoint carrying a pickled code payload (info)", ["info", "code.pt"],
         "error: code.pt holds objects other than tensors and plain data; refused to load it (it "
         "may run code). Use a checkpoint written by `gmvae train`"),
    Case("ckpt-code-assign", "checkpoint carrying a pickled code payload (assign)",
         ["assign", "code.pt", "data.csv", "-o", "out.csv"],
         "error: code.pt holds objects other than tensors and plain data; refused to load it (it "
         "may run code). Use a checkpoint written by `gmvae train`"),
    Case("ckpt-bare-pickle", "checkpoint: a bare pickle with a code payload",
         ["assign", "code_pickle.pt", "data.csv", "-o", "out.csv"],
         "error: code_pickle.pt is not a gmvae checkpoint (unreadable or truncated); retrain it"),
]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path below folder with its bytes and mtime (None for folders)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = None if path.is_dir() else (path.read_bytes(), path.stat().st_mtime_ns)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Case, tmp_path, monkeypatch, trained_model):
    if case.id == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    write_inputs(tmp_path, trained_model)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli(*case.args, input=case.input)
    expected = case.message.replace(TMP, str(tmp_path.resolve()))
    assert result.exit_code == 2, result.output
    assert result.stderr == expected + "\n"  # one line: the problem and the fix
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert [str(w.message) for w in caught] == []  # would be extra lines on a real stderr
    assert snapshot(tmp_path) == before  # no output, no .tmp leftovers, inputs untouched
    assert not (tmp_path / "MARKER").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("--debug", "train", "nope.csv", *TINY)
    assert result.exit_code != 0
    assert result.exception is not None and "no such file" in str(result.exception)


def doc_rows() -> list[str]:
    rows = []
    for case in CASES:
        message = case.message.replace(TMP, "<tmp>").replace("|", "\\|")
        command = case.command().replace("|", "\\|")
        stdin = " (empty stdin)" if case.input == "" else ""
        rows.append(f"| `{case.id}` | {case.what} | `{command}`{stdin} | `{message}` | 2 |")
    return rows


def test_documented():
    """docs/reliability.md holds each case's row, with the exact message."""
    text = DOCS.read_text()
    missing = [row for row in doc_rows() if row not in text]
    assert missing == []


if __name__ == "__main__":
    print("\n".join(doc_rows()))

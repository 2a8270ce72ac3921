"""`gmvae embed`: latent coordinates per row, with the same rows, ids and clusters as assign."""

import io

import numpy as np
import pandas as pd
import pytest

from conftest import FAST_TRAIN, run_cli
from gmvae_cli.api import GMVAE

X_DIM, W_DIM = 10, 10  # the CLI defaults the shared trained_model was trained with


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def test_embed_shape_and_columns(trained_model, blobs_csv, blobs):
    result = run_cli("embed", trained_model, blobs_csv)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = read_csv(result.stdout)
    assert list(out.columns) == ["row"] + [f"x_{j}" for j in range(X_DIM)]
    assert len(out) == len(blobs[0])
    assert np.isfinite(out.drop(columns="row").to_numpy()).all()


def test_embed_matches_assign_rows_and_clusters(trained_model, blobs_csv):
    assigned = read_csv(run_cli("assign", trained_model, blobs_csv).stdout)
    result = run_cli("embed", trained_model, blobs_csv, "--with-w", "--with-cluster")
    assert result.exit_code == 0, result.stderr
    out = read_csv(result.stdout)
    expected = ["row"] + [f"x_{j}" for j in range(X_DIM)] + [f"w_{j}" for j in range(W_DIM)]
    assert list(out.columns) == expected + ["cluster", "confidence"]
    assert out["row"].tolist() == assigned["row"].tolist()
    assert out["cluster"].tolist() == assigned["cluster"].tolist()
    np.testing.assert_allclose(out["confidence"], assigned["confidence"], rtol=1e-6)


def test_embed_equals_library_transform_and_streams_in_chunks(trained_model, blobs_csv, blobs):
    model = GMVAE.load(str(trained_model))
    expected = model.transform(blobs[0], with_w=True)
    assert expected.shape == (len(blobs[0]), X_DIM + W_DIM)
    # Small chunks: row numbers must continue across chunks and nothing may change.
    result = run_cli("embed", trained_model, blobs_csv, "--with-w", "--batch-size", 333)
    assert result.exit_code == 0, result.stderr
    out = read_csv(result.stdout)
    assert out["row"].tolist() == list(range(len(blobs[0])))
    np.testing.assert_allclose(out.drop(columns="row").to_numpy(), expected, atol=1e-5)


def test_embed_id_column_parquet_output_and_stdin(tmp_path, trained_model, blobs):
    frame = blobs[0].head(50).copy()
    frame.insert(0, "name", [f"r{i}" for i in range(len(frame))])
    data = tmp_path / "named.csv"
    frame.to_csv(data, index=False)
    target = tmp_path / "latent.parquet"
    result = run_cli("embed", trained_model, data, "--id-column", "name", "--with-cluster",
                     "-o", target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    out = pd.read_parquet(target)
    assert out["name"].tolist() == frame["name"].tolist()
    assigned = read_csv(run_cli("assign", trained_model, data, "--id-column", "name").stdout)
    assert out["cluster"].tolist() == assigned["cluster"].tolist()
    piped = run_cli("embed", trained_model, "-", input=data.read_text())
    assert piped.exit_code == 0, piped.stderr
    assert len(read_csv(piped.stdout)) == len(frame)


def test_embed_leaves_dropped_rows_empty(tmp_path, blobs):
    frame = blobs[0].head(300).copy()
    data = tmp_path / "holes.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "model.pt"
    assert run_cli("train", data, "--k", 3, "-o", model, "--missing", "drop", *FAST_TRAIN).exit_code == 0
    frame.iloc[[3, 7], 0] = np.nan
    frame.to_csv(data, index=False)
    out = read_csv(run_cli("embed", model, data, "--with-cluster").stdout)
    assert len(out) == len(frame)
    assert out.loc[[3, 7], ["x_0", "cluster"]].isna().all().all()
    assert out.drop(index=[3, 7])[["x_0", "cluster"]].notna().all().all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--id-column", "nope"], "--id-column 'nope'"),
        (["-o", "out.txt"], ".csv or .parquet"),
    ],
)
def test_embed_bad_input_exits_2_with_one_line(trained_model, blobs_csv, args, message):
    result = run_cli("embed", trained_model, blobs_csv, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

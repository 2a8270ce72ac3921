"""Text columns as categories (--categorical auto, the default), and the notes on numeric
columns that look like ids or codes.

The encoding: chunked and exact statistics, the checkpoint, unseen and missing categories
(an all-zero block, a note once per column), columns with too many values, sampling back to
category values, the library API, and checkpoints from before categories existed.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import run_cli
from gmvae_cli import checkpoint, warm_start
from gmvae_cli.api import GMVAE
from gmvae_cli.errors import UserError
from gmvae_cli.model import GMVAENet, ModelConfig
from gmvae_cli.preprocess import Preprocessor, choose_columns

COLORS = [["red", "orange"], ["green", "teal"], ["blue", "navy"]]
SHAPES = [["circle", "oval"], ["square", "cube"], ["star", "cross"]]
SMALL = ["--recipe", "paper", "--hidden", "32,32", "--x-dim", "4", "--w-dim", "4"]


def category_table(n_rows: int = 1200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three clusters told apart by two text columns (each cluster has two colours and two
    shapes of its own); of the three numeric columns only `size` carries a weak signal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_rows)
    pick = rng.integers(0, 2, (n_rows, 2))
    frame = pd.DataFrame({
        "size": rng.normal(0.5 * labels, 1.0),
        "color": [COLORS[k][j] for k, j in zip(labels, pick[:, 0])],
        "noise_a": rng.normal(size=n_rows),
        "shape": [SHAPES[k][j] for k, j in zip(labels, pick[:, 1])],
        "noise_b": rng.normal(size=n_rows),
    })
    return frame, labels


@pytest.fixture(scope="module")
def category_model(tmp_path_factory):
    """A model trained once on category_table through the CLI, with its data file."""
    folder = tmp_path_factory.mktemp("categories")
    frame, labels = category_table()
    frame.to_csv(folder / "data.csv", index=False)
    # Two restarts, the better ELBO kept: the paper recipe from random weights now and then
    # settles on a split of the combinations of colour and shape (with a lower ELBO).
    result = run_cli("train", folder / "data.csv", "--k", 3, "-o", folder / "model.pt",
                     *SMALL, "--epochs", 20, "--restarts", 2, "--quiet")
    assert result.exit_code == 0, result.stderr
    return folder / "model.pt", folder / "data.csv", labels


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


# -- the encoding ---------------------------------------------------------------------------


def test_encoding_is_exact_over_chunks_and_round_trips():
    frame, _ = category_table(n_rows=300, seed=1)
    frame.loc[[4, 9], "color"] = None  # missing: an all-zero block, never a refusal
    frame.loc[250:, "shape"] = "hexagon"  # a category only the last chunk holds
    choice = choose_columns(frame, None)
    assert choice.columns == list(frame.columns) and choice.categorical == ["color", "shape"]
    chunks = (frame.iloc[s : s + 64] for s in range(0, len(frame), 64))
    pre, kept = Preprocessor.fit(chunks, choice.columns, "error", "auto",
                                 encode=choice.categorical, categorical="auto")
    whole, _ = Preprocessor.fit([frame], choice.columns, "error", "auto",
                                encode=choice.categorical, categorical="auto")
    assert kept == 300 and pre.columns == whole.columns
    assert pre.categories == whole.categories and pre.category_scale == whole.category_scale
    np.testing.assert_allclose(pre.center, whole.center, rtol=1e-12)
    np.testing.assert_allclose(pre.scale, whole.scale, rtol=1e-12)
    assert pre.categories == {"color": sorted({c for pair in COLORS for c in pair}),
                              "shape": sorted({s for pair in SHAPES for s in pair} | {"hexagon"})}
    assert pre.likelihood == "gaussian" and pre.width == 3 + 6 + 7
    # Each indicator is 1/√(Σ p(1 − p)): the block's total variance is 1, as a numeric column's.
    shares = frame["color"].value_counts().sort_index().to_numpy() / len(frame)
    assert pre.category_scale["color"] == pytest.approx((shares * (1 - shares)).sum() ** -0.5)

    matrix, keep = pre.transform(frame)
    assert keep.all() and matrix.shape == (300, pre.width)
    color = matrix[:, 3:9]  # numbers first, then the blocks in column order
    np.testing.assert_allclose(color.sum(1)[frame["color"].notna()], pre.category_scale["color"],
                               rtol=1e-6)
    assert (color[[4, 9]] == 0).all()
    assert pre.indicators == [0.0] * 3 + [pre.category_scale["color"]] * 6 + \
        [pre.category_scale["shape"]] * 7
    assert np.allclose(color.var(0).sum(), 1.0, atol=0.02)  # the blocks' total variance ≈ 1
    back = pre.inverse(matrix.astype(np.float64))
    assert list(back.columns) == list(frame.columns)  # the original column order
    np.testing.assert_allclose(back[["size", "noise_a", "noise_b"]], frame[["size", "noise_a", "noise_b"]],
                               rtol=1e-5, atol=1e-5)
    assert back["shape"].tolist() == frame["shape"].tolist()
    assert back["color"].drop(index=[4, 9]).tolist() == frame["color"].drop(index=[4, 9]).tolist()

    # Stored as plain data: the checkpoint loads with the safe unpickler and restores it.
    buffer = io.BytesIO()
    torch.save({"preprocess": pre.to_dict()}, buffer)
    buffer.seek(0)
    again = Preprocessor.from_dict(torch.load(buffer, weights_only=True)["preprocess"])
    assert again == pre
    np.testing.assert_array_equal(again.transform(frame)[0], matrix)


def test_codes_read_as_numbers_in_one_chunk_and_text_in_another_are_one_category():
    """A CSV chunk can read a column of codes as integers, the next one as text."""
    text = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5], "code": ["1", "2", "A", "2", "1", "A"]})
    numbers = pd.DataFrame({"x": [0.5, 1.5], "code": [1.0, np.nan]})
    pre, _ = Preprocessor.fit([text], ["x", "code"], "error", "auto", encode=["code"])
    assert pre.categories == {"code": ["1", "2", "A"]}
    block = pre.transform(numbers)[0][:, 1:]
    np.testing.assert_array_equal(block > 0, [[True, False, False], [False, False, False]])


def test_bernoulli_keeps_0_1_indicators_and_sample_binary_gives_categories(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame((rng.random((300, 4)) > 0.5).astype(float), columns=list("abcd"))
    frame["kind"] = rng.choice(["x", "y", "z"], len(frame))
    frame.to_parquet(tmp_path / "bits.parquet")
    model = tmp_path / "m.pt"
    result = run_cli("train", tmp_path / "bits.parquet", "--k", 2, "-o", model, *SMALL,
                     "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.stderr
    loaded = GMVAE.load(str(model))
    assert loaded.config.likelihood == "bernoulli"
    assert loaded.preprocessor_.category_scale == {"kind": 1.0}
    matrix = loaded.matrix(frame)[0]
    assert set(np.unique(matrix[:, 4:])) == {0.0, 1.0} and (matrix[:, 4:].sum(1) == 1).all()
    result = run_cli("sample", model, "-n", 20, "--binary")
    assert result.exit_code == 0, result.stderr
    rows = read_csv(result.stdout)
    assert set(rows["kind"]) <= {"x", "y", "z"} and set(np.unique(rows[list("abcd")])) <= {0, 1}


# -- train, assign, sample through the CLI -------------------------------------------------


def test_clusters_carried_by_two_text_columns_are_found(category_model, tmp_path):
    model, data, labels = category_model
    result = run_cli("assign", model, data)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # every category was seen in training: no note
    assert adjusted_rand_score(labels, read_csv(result.stdout)["cluster"]) >= 0.9
    pre = checkpoint.load(str(model))["preprocess"]
    assert pre["categorical"] == "auto" and list(pre["categories"]) == ["color", "shape"]
    # Without the text columns the same table has next to no cluster signal left.
    ignored = tmp_path / "ignored.pt"
    result = run_cli("train", data, "--k", 3, "-o", ignored, *SMALL, "--epochs", 20, "--quiet",
                     "--categorical", "ignore")
    assert result.exit_code == 0, result.stderr
    clusters = read_csv(run_cli("assign", ignored, data).stdout)["cluster"]
    assert adjusted_rand_score(labels, clusters) < 0.5


def test_unseen_categories_get_one_note_per_column_and_an_all_zero_block(category_model, tmp_path):
    model, data, _ = category_model
    frame = pd.read_csv(data)
    frame.loc[[0, 150, 299], "color"] = ["purple", "mauve", "purple"]  # in three chunks
    frame.loc[5, "shape"] = "blob"
    frame.loc[7, "color"] = np.nan
    frame.to_csv(tmp_path / "new.csv", index=False)
    for command in ("assign", "embed"):
        result = run_cli(command, model, tmp_path / "new.csv", "--batch-size", 100)
        assert result.exit_code == 0, result.stderr
        lines = result.stderr.splitlines()
        assert lines == [
            ("note: column 'color' has values the model never saw in training ('purple'); "
             "those rows get no category for it (an all-zero block)"),
            ("note: column 'shape' has values the model never saw in training ('blob'); "
             "those rows get no category for it (an all-zero block)"),
        ]
        assert len(read_csv(result.stdout)) == len(frame)
    assert run_cli("assign", model, tmp_path / "new.csv", "--quiet").stderr == ""
    result = run_cli("evaluate", model, tmp_path / "new.csv", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("note: column 'color' has values") == 1  # three passes, one note
    loaded = GMVAE.load(str(model))
    loaded.note = lambda s: None
    blocks = loaded.matrix(frame)[0][:, 3:]  # size, noise_a, noise_b, then the blocks
    assert (blocks[[0, 7], :6] == 0).all() and (blocks[5, 6:] == 0).all()
    assert (blocks[[0, 7], 6:] != 0).sum() == 2  # the other column is still encoded


def test_sample_gives_category_values_in_the_original_column_order(category_model, tmp_path):
    model, _, _ = category_model
    out = tmp_path / "samples.csv"
    result = run_cli("sample", model, "-n", 300, "--seed", 1, "-o", out)
    assert result.exit_code == 0, result.stderr
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["size", "color", "noise_a", "shape", "noise_b", "cluster"]
    assert set(rows["color"]) <= {c for pair in COLORS for c in pair}
    assert set(rows["shape"]) <= {s for pair in SHAPES for s in pair}
    # Each cluster's two commonest sampled colours are one true cluster's pair, a different
    # pair for each cluster (a small, briefly trained model's draws are noisy: not all).
    pairs = [set(rows.loc[rows["cluster"] == k, "color"].value_counts().index[:2]) for k in range(3)]
    assert sorted(map(sorted, pairs)) == sorted(map(sorted, COLORS))
    assert run_cli("sample", model, "--grid", tmp_path / "g.png").exit_code == 2


def test_too_many_values_are_skipped_with_a_note_and_a_named_one_encoded(tmp_path):
    frame, _ = category_table(n_rows=200, seed=3)
    frame["comment"] = [f"free text {i}" for i in range(len(frame))]
    frame["code"] = [f"id-{i % 90}" for i in range(len(frame))]  # 90 values: over 50
    frame["ward"] = np.where(np.arange(len(frame)) % 2, "A", "B")
    frame.to_csv(tmp_path / "data.csv", index=False)
    result = run_cli("train", tmp_path / "data.csv", "--k", 2, "-o", tmp_path / "m.pt", *SMALL,
                     "--epochs", 1)
    assert result.exit_code == 0, result.stderr
    assert ("note: skipping text columns that cannot be encoded as categories (more than 50 "
            "distinct values, or more than half the rows): comment (more than 50 distinct "
            "values), code (more than 50 distinct values); pass an id as --id-column"
            ) in result.stderr.splitlines()
    pre = checkpoint.load(str(tmp_path / "m.pt"))["preprocess"]
    assert list(pre["categories"]) == ["color", "shape", "ward"]
    assert "comment" not in pre["columns"] and "code" not in pre["columns"]
    # --columns naming a text column encodes it (--categorical ignore refuses it: test_bad_input).
    result = run_cli("train", tmp_path / "data.csv", "--k", 2, "-o", tmp_path / "n.pt", *SMALL,
                     "--epochs", 1, "--columns", "size,ward", "--quiet")
    assert result.exit_code == 0, result.stderr
    pre = checkpoint.load(str(tmp_path / "n.pt"))["preprocess"]
    assert pre["columns"] == ["size", "ward"] and pre["categories"] == {"ward": ["A", "B"]}
    # Small tables: more than one value per two rows is too many as well.
    few = pd.DataFrame({"x": np.arange(8.0), "t": list("abcdeabc")})
    with pytest.raises(UserError, match=r"column 't' has 5 distinct values in 8 rows"):
        Preprocessor.fit([few], ["x", "t"], "error", "auto", encode=["t"], named=True)


def test_streamed_training_collects_categories_from_every_chunk(tmp_path):
    frame, _ = category_table(n_rows=400, seed=4)
    frame.loc[390:, "color"] = "violet"  # only in the last chunk
    frame.to_csv(tmp_path / "data.csv", index=False)
    result = run_cli("train", tmp_path / "data.csv", "--k", 3, "-o", tmp_path / "m.pt", *SMALL,
                     "--epochs", 2, "--stream", "--chunk-rows", 64, "--quiet")
    assert result.exit_code == 0, result.stderr
    pre = checkpoint.load(str(tmp_path / "m.pt"))["preprocess"]
    assert "violet" in pre["categories"]["color"]
    whole, _ = Preprocessor.fit([frame], list(frame.columns), "mean", "auto",
                                encode=["color", "shape"], categorical="auto")
    assert pre["categories"] == whole.categories
    assert pre["category_scale"] == pytest.approx(whole.category_scale, rel=1e-12)


# -- numeric columns that look like ids or codes ---------------------------------------------


def test_id_and_code_columns_get_a_note_scores_and_floats_do_not(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    frame = pd.DataFrame({
        "visit": np.arange(1, n + 1),  # a running number
        "patient": rng.permutation(np.arange(10_000, 10_000 + n)),  # distinct, in no order
        "year": rng.integers(2015, 2021, n),
        "site": rng.choice([101, 205, 310, 412], n),
        "score": rng.integers(1, 11, n),  # an ordinal 1-10 score: no note
        "grade": rng.integers(0, 5, n),  # 0-4: no note
        "weight": rng.normal(70, 10, n),  # an ordinary float column: no note
        "count": rng.poisson(3, n),  # small counts: no note
    })
    frame.to_csv(tmp_path / "data.csv", index=False)
    result = run_cli("train", tmp_path / "data.csv", "--k", 2, "-o", tmp_path / "m.pt", *SMALL,
                     "--epochs", 1)
    assert result.exit_code == 0, result.stderr  # only notes: training goes on with them
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: column")]
    assert notes == [
        ("note: column 'visit' holds a different whole number in every row, like an id; it is "
         "used as a feature: if it is an id, leave it out with --exclude visit or carry it to "
         "the output with --id-column visit"),
        ("note: column 'patient' holds a different whole number in every row, like an id; it is "
         "used as a feature: if it is an id, leave it out with --exclude patient or carry it to "
         "the output with --id-column patient"),
        ("note: column 'year' holds only 6 different whole numbers (2015, 2016, 2017, 2018, "
         "2019, …), like a code or a year; it is used as a number: if it is a code, leave it "
         "out with --exclude year (or --id-column year), or store it as text to have it "
         "one-hot encoded"),
        ("note: column 'site' holds only 4 different whole numbers (101, 205, 310, 412), like "
         "a code or a year; it is used as a number: if it is a code, leave it out with "
         "--exclude site (or --id-column site), or store it as text to have it one-hot encoded"),
    ]
    assert "visit" in checkpoint.load(str(tmp_path / "m.pt"))["preprocess"]["columns"]
    # Chunked: the same notes from chunks, and a repeat in a later chunk ends the id.
    notes = []
    Preprocessor.fit((frame.iloc[s : s + 70] for s in range(0, n, 70)), list(frame.columns),
                     "error", "auto", notes.append)
    assert len(notes) == 4
    repeated = frame.assign(patient=np.r_[frame["patient"][:-1], frame["patient"][0]])
    notes = []
    Preprocessor.fit((repeated.iloc[s : s + 70] for s in range(0, n, 70)), ["patient"],
                     "error", "auto", notes.append)
    assert notes == []


# -- the library API and old checkpoints -----------------------------------------------------


def test_library_api_takes_a_frame_with_text_columns(tmp_path):
    frame, labels = category_table(seed=6)
    model = GMVAE(k=3, recipe="paper", hidden=(32, 32), x_dim=4, w_dim=4, epochs=20, seed=0,
                  restarts=2)
    model.fit(frame)
    clusters = model.predict(frame)
    assert adjusted_rand_score(labels, clusters) >= 0.9
    model.save(str(tmp_path / "api.pt"))
    again = GMVAE.load(str(tmp_path / "api.pt"))
    np.testing.assert_array_equal(again.predict(frame), clusters)
    unseen = frame.assign(color="purple")
    with pytest.warns(UserWarning, match="column 'color' has values the model never saw"):
        assert len(again.predict(unseen)) == len(frame)
    with pytest.raises(UserError, match=re.escape("--categorical 'yes' is not known; use auto|ignore")):
        GMVAE(categorical="yes")
    sampled = model.sample(30, seed=0)
    assert sampled["color"].isin(frame["color"]).all()
    ignored = GMVAE(k=3, recipe="paper", hidden=(8,), epochs=1, categorical="ignore").fit(frame)
    assert ignored.preprocessor_.columns == ["size", "noise_a", "noise_b"]


def test_checkpoint_from_before_categories_still_loads(trained_model, blobs_csv, tmp_path):
    payload = torch.load(trained_model, map_location="cpu", weights_only=True)
    for key in ("categorical", "categories", "category_scale"):
        del payload["preprocess"][key]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    model = GMVAE.load(str(old))
    assert model.preprocessor_.categories == {} and model.categorical == "ignore"
    result = run_cli("assign", old, blobs_csv)
    assert result.exit_code == 0, result.stderr
    fresh = run_cli("assign", trained_model, blobs_csv)
    assert result.stdout == fresh.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(model.sample(10, seed=0)) == 10


def test_the_warm_starts_graph_sees_plain_indicators_and_standardised_numbers():
    """Off the codes path the neighbour graph gets one-hot columns at 0/1 (a category apart
    weighs as much as a typical difference on one standardised number); the columns'
    mixture keeps every column standardised, and a table of numbers only is unchanged."""
    frame, _ = category_table(n_rows=300, seed=1)
    choice = choose_columns(frame, None)
    pre, _ = Preprocessor.fit([frame], choice.columns, "error", "auto",
                              encode=choice.categorical, categorical="auto")
    sample = torch.from_numpy(pre.transform(frame)[0])
    net = GMVAENet(ModelConfig(input_dim=pre.width, k=3))
    found = warm_start.spaces([net], sample, 0, torch.device("cpu"), {},
                              indicators=pre.indicators)
    one_hot = pd.get_dummies(frame[["color", "shape"]]).to_numpy(float)
    np.testing.assert_allclose(found.graph_input[:, 3:], one_hot, atol=1e-6)
    numbers = frame[["size", "noise_a", "noise_b"]].to_numpy(float)
    standardised = (numbers - numbers.mean(0)) / numbers.std(0, ddof=1)
    np.testing.assert_allclose(found.graph_input[:, :3], standardised, atol=1e-5)
    columns = found.columns_view(sample, torch.device("cpu"))
    np.testing.assert_allclose(columns.std(0), 1.0, rtol=1e-4)  # the mixture's columns
    alone = warm_start.spaces([net], sample, 0, torch.device("cpu"), {})
    assert (alone.graph_input[:, 3:].std(0) > 0.9).all()  # standardised, as before


def test_the_preprocessor_says_which_cells_were_mean_filled():
    """`filled`: per model column, the value a filled cell holds (0 for a standardised
    column, whose centre is the fill), NaN for columns without gaps, for one-hot blocks and
    under --missing drop; checkpoints from before `gaps` load with none."""
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 3, "b": np.arange(12.0),
                          "colour": ["red", "blue", "red", None] * 3})
    pre, _ = Preprocessor.fit([frame], ["a", "b", "colour"], "mean", "gaussian",
                              encode=["colour"])
    assert pre.gaps == ["a"]
    values = pre.transform(frame)[0]
    assert values[1, 0] == pre.filled[0] == 0.0
    assert np.isnan(pre.filled[1:]).all() and len(pre.filled) == pre.width == 4
    dropped, _ = Preprocessor.fit([frame], ["a", "b"], "drop", "gaussian")
    assert np.isnan(dropped.filled).all()
    old = pre.to_dict()
    del old["gaps"]
    assert np.isnan(Preprocessor.from_dict(old).filled).all()
    unit = pd.DataFrame({"p": [0.2, np.nan, 0.6, 0.7]})
    bernoulli, _ = Preprocessor.fit([unit], ["p"], "mean", "bernoulli")
    assert bernoulli.filled == [pytest.approx(0.5)]
    assert bernoulli.transform(unit)[0][1, 0] == bernoulli.filled[0]

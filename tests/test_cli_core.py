"""The core issue end to end: train then assign over CSV, Parquet, HDF5 and a shell pipe."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import FAST_TRAIN, run_cli
from gmvae_cli import checkpoint


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        with h5py.File(path, "w") as h5:
            h5["features/data"] = frame.to_numpy()
            h5["features/labels"] = np.arange(len(frame))  # 1-D: not a candidate table
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".h5"])
def test_train_then_assign_recovers_blobs_in_every_format(tmp_path, blobs, suffix):
    frame, labels = blobs
    data = write_table(frame, tmp_path / f"blobs{suffix}")
    model = tmp_path / "model.pt"
    result = run_cli("train", data, "--k", 5, "-o", model, *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "clusters.parquet"
    result = run_cli("assign", model, data, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # the output went to the file
    assigned = pd.read_parquet(out)
    assert list(assigned.columns) == ["row", "cluster", "confidence"]
    assert len(assigned) == len(frame)
    assert adjusted_rand_score(labels, assigned["cluster"]) >= 0.9


def test_assign_through_a_shell_pipe(tmp_path, trained_model, blobs_csv, blobs):
    gmvae = Path(sys.executable).with_name("gmvae")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.csv"
    cmd = f"cat {blobs_csv} | {gmvae} assign {trained_model} - > {out}"
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assigned = pd.read_csv(out)
    assert adjusted_rand_score(blobs[1], assigned["cluster"]) >= 0.9


def test_probs_id_column_and_confidence(tmp_path, blobs):
    frame = blobs[0].head(300).copy()
    frame.insert(0, "name", [f"r{i}" for i in range(len(frame))])
    data = tmp_path / "named.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--id-column", "name", "-o", model, *FAST_TRAIN).exit_code == 0
    result = run_cli("assign", model, data, "--probs")
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout))
    assert list(out.columns) == ["name", "cluster", "confidence", "prob_0", "prob_1", "prob_2"]
    assert out["name"].tolist() == frame["name"].tolist()
    probs = out[["prob_0", "prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["confidence"], probs.max(1), rtol=1e-6)
    assert (out["cluster"].to_numpy() == probs.argmax(1)).all()


def test_categorical_ignore_skips_text_columns_with_a_note(tmp_path, blobs):
    """--categorical ignore: text columns are skipped as before the categories existed
    (tests/test_categorical.py has the default, auto)."""
    frame = blobs[0].head(200).copy()
    frame["city"] = "Oslo"
    data = tmp_path / "mixed.csv"
    frame.to_csv(data, index=False)
    result = run_cli("train", data, "--k", 2, "-o", tmp_path / "m.pt", "--recipe", "paper",
                     "--hidden", "16", "--epochs", "2", "--categorical", "ignore")
    assert result.exit_code == 0, result.stderr
    assert ("skipping non-numeric columns: city (--categorical auto encodes text columns)"
            in result.stderr)
    payload = checkpoint.load(str(tmp_path / "m.pt"))
    assert "city" not in payload["preprocess"]["columns"]
    assert payload["preprocess"]["categorical"] == "ignore"
    assert payload["preprocess"]["categories"] == {}


def test_missing_mean_is_reapplied_by_assign(tmp_path, blobs):
    frame = blobs[0].head(400).copy()
    frame.loc[3, "c2"] = np.nan
    data = tmp_path / "holes.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--missing", "mean", "-o", model, *FAST_TRAIN).exit_code == 0
    payload = checkpoint.load(str(model))
    stored = payload["preprocess"]
    assert stored["missing"] == "mean"
    assert stored["fill"][2] == pytest.approx(frame["c2"].mean())
    result = run_cli("assign", model, data)
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout))
    assert out["cluster"].notna().all() and len(out) == len(frame)


def test_missing_drop_leaves_empty_cluster_for_dropped_rows(tmp_path, blobs):
    frame = blobs[0].head(400).copy()
    frame.loc[5, "c0"] = np.inf
    data = tmp_path / "holes.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 3, "--missing", "drop", "-o", model, *FAST_TRAIN).exit_code == 0
    out = pd.read_csv(io.StringIO(run_cli("assign", model, data).stdout))
    assert len(out) == len(frame)
    assert out["cluster"].isna().tolist() == [i == 5 for i in range(len(frame))]


def test_checkpoint_holds_config_columns_history_and_versions(trained_model):
    payload = checkpoint.load(str(trained_model))
    assert payload["format_version"] == checkpoint.FORMAT_VERSION
    assert payload["package_version"]
    assert payload["config"]["k"] == 5
    assert payload["preprocess"]["columns"] == [f"c{i}" for i in range(16)]
    assert len(payload["preprocess"]["center"]) == 16
    history = payload["history"]
    assert len(history) == 15
    for key in ("elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior", "cluster_usage"):
        assert key in history[-1]
    assert sum(history[-1]["cluster_usage"]) == 2000
    # Loading is weights_only: the same file loads with the safe unpickler directly.
    torch.load(trained_model, weights_only=True)


def test_info_json(trained_model):
    result = run_cli("info", trained_model, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["k"] == 5 and info["likelihood"] == "gaussian" and info["epochs"] == 15
    assert sum(info["cluster_sizes"]) == 2000
    assert set(info["final_terms"]) >= {"elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior"}
    human = run_cli("info", trained_model)
    assert human.exit_code == 0 and "cluster_sizes" in human.stdout


def test_bernoulli_is_chosen_for_data_in_unit_interval(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame((rng.uniform(size=(300, 8)) > 0.5).astype(float), columns=list("abcdefgh"))
    data = tmp_path / "bits.parquet"
    frame.to_parquet(data)
    model = tmp_path / "m.pt"
    assert run_cli("train", data, "--k", 2, "-o", model, "--recipe", "paper", "--hidden", "16",
                   "--epochs", "2", "-q").exit_code == 0
    assert checkpoint.load(str(model))["config"]["likelihood"] == "bernoulli"


def test_library_api_matches_cli(tmp_path, blobs):
    from gmvae_cli.api import GMVAE

    frame, labels = blobs
    model = GMVAE(k=5, recipe="paper", hidden=(32, 32), epochs=15, seed=0).fit(frame)
    clusters = model.predict(frame)
    assert adjusted_rand_score(labels, clusters) >= 0.9
    np.testing.assert_array_equal(model.predict_proba(frame).argmax(1), clusters)
    model.save(str(tmp_path / "api.pt"))
    again = GMVAE.load(str(tmp_path / "api.pt"))
    np.testing.assert_array_equal(again.predict(frame), clusters)
    assert set(model.score(frame)) >= {"elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior"}


# -- inputs a pipeline hands over, and outputs a user made ------------------------------------


def test_integer_column_names_are_left_alone_and_predict(blobs):
    """fit must not rename the caller's columns, and a frame with integer names predicts."""
    from gmvae_cli.api import GMVAE

    frame = blobs[0].iloc[:400].copy()
    frame.columns = range(frame.shape[1])
    before = list(frame.columns)
    model = GMVAE(k=5, recipe="paper", hidden=(16,), epochs=2, seed=0).fit(frame)
    assert list(frame.columns) == before
    assert model.preprocessor_.columns == [str(c) for c in before]
    assert len(model.predict(frame)) == len(frame)


def _feed_fifo(path: Path, text: str) -> None:
    """Write text into a named pipe from a thread, as `<(zcat data.csv.gz)` would."""
    import threading

    os.mkfifo(path)

    def write():
        with open(path, "w") as pipe:
            pipe.write(text)

    threading.Thread(target=write, daemon=True).start()


@pytest.mark.timeout(120)
def test_named_pipes_are_read_as_streams(tmp_path, blobs):
    frame, labels = blobs
    text = frame.to_csv(index=False)
    _feed_fifo(tmp_path / "train.pipe", text)
    model = tmp_path / "model.pt"
    result = run_cli("train", tmp_path / "train.pipe", "--format", "csv", "--k", 5, "-o", model, *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    _feed_fifo(tmp_path / "assign.pipe", text)
    result = run_cli("assign", model, tmp_path / "assign.pipe", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    clusters = pd.read_csv(io.StringIO(result.stdout))["cluster"]
    assert adjusted_rand_score(labels, clusters) >= 0.9


def test_stream_refuses_a_pipe(tmp_path, blobs):
    _feed_fifo(tmp_path / "train.pipe", blobs[0].iloc[:50].to_csv(index=False))
    result = run_cli("train", tmp_path / "train.pipe", "--format", "csv", "--stream", *FAST_TRAIN)
    assert result.exit_code == 2
    assert "pass a file path, not - (stdin) or a pipe" in result.stderr
    with open(tmp_path / "train.pipe") as pipe:  # let the writer thread finish
        pipe.read()


@pytest.mark.parametrize("text", ["a,a,b\n1,2,3\n4,5,6\n", "x,a,b,a\n1,2,3,4\n5,6,7,8\n"])
def test_duplicate_column_names_are_refused(tmp_path, text):
    (tmp_path / "dup.csv").write_text(text)
    result = run_cli("train", tmp_path / "dup.csv", "-o", tmp_path / "m.pt", *FAST_TRAIN)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {tmp_path / 'dup.csv'} has duplicate column names: 'a' (2×); "
                             "rename them so that every column has its own name\n")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.xz"])
def test_compressed_csv_by_suffix_in_every_command(tmp_path, blobs, suffix):
    frame, labels = blobs
    data = tmp_path / f"blobs{suffix}"
    frame.assign(label=labels).to_csv(data, index=False)  # pandas compresses by suffix
    model = tmp_path / "model.pt"
    result = run_cli("train", data, "--k", 5, "--exclude", "label", "-o", model, *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    assigned = run_cli("assign", model, data)
    assert assigned.exit_code == 0, assigned.stderr
    clusters = pd.read_csv(io.StringIO(assigned.stdout))["cluster"]
    assert adjusted_rand_score(labels, clusters) >= 0.9
    embedded = run_cli("embed", model, data)
    assert embedded.exit_code == 0 and len(pd.read_csv(io.StringIO(embedded.stdout))) == len(frame)
    report = run_cli("evaluate", model, data, "--labels", "label", "--json")
    assert report.exit_code == 0, report.stderr
    assert json.loads(report.stdout)["labels"]["ari"] >= 0.9


def test_existing_checkpoint_is_kept_unless_forced(tmp_path, blobs):
    data = tmp_path / "blobs.csv"
    blobs[0].iloc[:300].to_csv(data, index=False)
    model = tmp_path / "model.pt"
    model.write_bytes(b"a model someone trained for a week")
    result = run_cli("train", data, "--k", 5, "-o", model, *FAST_TRAIN)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {model} already exists; pass --force to replace it, "
                             "--resume to continue its run, or choose another -o path\n")
    assert model.read_bytes() == b"a model someone trained for a week"
    result = run_cli("train", data, "--k", 5, "-o", model, "--force", *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(str(model))["config"]["k"] == 5


def test_exclude_leaves_columns_out_and_assign_does_not_need_them(tmp_path, blobs):
    frame, labels = blobs
    data = tmp_path / "blobs.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "model.pt"
    result = run_cli("train", data, "--k", 5, "--exclude", "c0,c3", "-o", model, *FAST_TRAIN)
    assert result.exit_code == 0, result.stderr
    columns = checkpoint.load(str(model))["preprocess"]["columns"]
    assert columns == [c for c in frame.columns if c not in ("c0", "c3")]
    fewer = tmp_path / "fewer.csv"
    frame.drop(columns=["c0", "c3"]).to_csv(fewer, index=False)
    result = run_cli("assign", model, fewer)
    assert result.exit_code == 0, result.stderr
    clusters = pd.read_csv(io.StringIO(result.stdout))["cluster"]
    assert adjusted_rand_score(labels, clusters) >= 0.9


def test_assign_with_monte_carlo_samples(trained_model, blobs_csv):
    """--mc-samples > 0 averages p(z|x,w) over draws: probabilities that sum to one, a
    cluster that is their argmax, the same answer on a rerun, and (on well-separated blobs)
    nearly the same clusters as the posterior means give."""
    runs = [run_cli("assign", trained_model, blobs_csv, "--probs", "--mc-samples", 20) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    table = pd.read_csv(io.StringIO(runs[0].stdout))
    probs = table.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), table["cluster"])
    means = pd.read_csv(io.StringIO(run_cli("assign", trained_model, blobs_csv).stdout))
    assert (means["cluster"] == table["cluster"]).mean() >= 0.99


def test_parquet_output_keeps_the_first_chunks_types(trained_model, blobs, tmp_path):
    """CSV chunks are typed one by one: integer ids that gain a gap in a later chunk are
    written as integers with a null; ids that turn to text cannot be, and say so."""
    frame = blobs[0].iloc[:300].copy()
    frame.insert(0, "id", np.arange(300, dtype=float))
    frame.loc[250, "id"] = np.nan  # only the third chunk of 100 rows reads as floats
    frame.to_csv(tmp_path / "gap.csv", index=False)
    out = tmp_path / "out.parquet"
    result = run_cli("assign", trained_model, tmp_path / "gap.csv", "--id-column", "id",
                     "--batch-size", 100, "-o", out)
    assert result.exit_code == 0, result.stderr
    written = pd.read_parquet(out)
    assert str(written["id"].dtype) == "int64" or written["id"].isna().sum() == 1
    assert written["id"].isna().sum() == 1 and written["id"].iloc[0] == 0
    ids = frame["id"].astype(object)
    ids.iloc[250] = "x-250"
    frame.assign(id=ids).to_csv(tmp_path / "text.csv", index=False)
    out.unlink()
    result = run_cli("assign", trained_model, tmp_path / "text.csv", "--id-column", "id",
                     "--batch-size", 100, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: column 'id' changes type within the input")
    assert result.stderr.count("\n") == 1 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_every_command_has_help_with_an_example():
    from gmvae_cli.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) >= 7
    for name in names:
        result = run_cli(name, "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.stdout, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--help"], None),
        (["train", "--help"], None),
        (["train", "big.parquet", "--recipe", "papr"], "error: --recipe 'papr' is not known; use default|paper"),
        (["train", "big.parquet", "--missing", "zero"], "error: --missing 'zero' is not known; use error|drop|mean"),
        (["train", "big.parquet", "--likelihood", "poisson"],
         "error: --likelihood 'poisson' is not known; use auto|gaussian|bernoulli"),
        (["train", "big.parquet", "--device", "tpu"], "error: --device 'tpu' is not known; use auto, cpu, cuda or mps"),
        (["train", "big.parquet", "--epochs", "0"], "error: --epochs must be at least 1, got 0"),
        (["train", "big.parquet", "--categorical", "onehot"],
         "error: --categorical 'onehot' is not known; use auto|ignore"),
        (["select-k", "big.parquet", "--recipe", "papr"], "error: --recipe 'papr' is not known; use default|paper"),
    ],
)
def test_options_are_checked_before_torch_or_the_data_is_loaded(tmp_path, args, message):
    """Help and a mistyped option answer without importing torch or reading the table
    (big.parquet does not even exist: the option is the first thing checked)."""
    probe = ("import sys\nfrom gmvae_cli.cli import app\ntry:\n    app()\nexcept SystemExit as e:\n"
             "    print(e.code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == ("0 False" if message is None else "2 False")
    if message is not None:
        assert result.stderr == message + "\n"


def test_missing_values_are_filled_by_default_with_a_note(tmp_path, blobs):
    frame = blobs[0].iloc[:300].copy()
    frame.loc[[3, 7, 11], "c2"] = np.nan
    frame.loc[5, "c9"] = np.inf
    frame.to_csv(tmp_path / "holes.csv", index=False)
    result = run_cli("train", tmp_path / "holes.csv", "--k", 5, "-o", tmp_path / "m.pt",
                     *[a for a in FAST_TRAIN if a != "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert ("note: missing or infinite values in columns 'c2' (3), 'c9' (1): filled with the "
            "column means (--missing drop or --missing error to change)") in result.stderr
    pre = checkpoint.load(str(tmp_path / "m.pt"))["preprocess"]
    assert pre["missing"] == "mean"
    assert pre["fill"][2] == pytest.approx(frame["c2"].mean())


@pytest.mark.parametrize(("columns", "width"), [(4, 64), (6, 64), (12, 96), (50, 416), (64, 500), (784, 500)])
def test_auto_width_follows_the_columns(columns, width):
    from gmvae_cli.api import auto_hidden

    assert auto_hidden(columns) == (width, width)


def test_hidden_auto_is_resolved_and_stored(tmp_path, blobs):
    data = tmp_path / "blobs.csv"
    blobs[0].iloc[:300].to_csv(data, index=False)
    args = [a for a in FAST_TRAIN if a not in ("--hidden", "32,32")]
    assert run_cli("train", data, "--k", 5, "-o", tmp_path / "m.pt", *args).exit_code == 0
    assert checkpoint.load(str(tmp_path / "m.pt"))["config"]["hidden"] == [128, 128]  # 16 columns


def test_console_script_skips_teardown_but_keeps_exit_codes_output_and_exit_handlers(tmp_path):
    """main() leaves with os._exit (no ~0.5 s interpreter teardown): the exit status, what
    was printed and the exit handlers libraries registered all survive."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
             "from gmvae_cli.cli import main\n"
             "sys.argv = ['gmvae', *sys.argv[1:]]\n"
             "main()\n"
             "print('not reached')\n")
    ok = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True,
                        cwd=tmp_path, timeout=60, check=False)
    assert ok.returncode == 0 and "Usage" in ok.stdout and "not reached" not in ok.stdout
    assert ok.stderr.endswith("handler ran\n")
    bad = subprocess.run([sys.executable, "-c", probe, "train", "missing.csv", "--k", "2"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr == "error: missing.csv: no such file; check the path\nhandler ran\n"

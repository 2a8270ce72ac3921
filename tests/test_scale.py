"""Data larger than memory and training on several processes: chunked reads, streamed
statistics, the shuffled chunk stream, `train --stream`, and torchrun with two CPU processes."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import FAST_TRAIN, run_cli
from gmvae_cli import checkpoint, stream
from gmvae_cli.api import GMVAE
from gmvae_cli.data import csv_rows, iter_table, read_ahead
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import Preprocessor

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def blobs_files(tmp_path_factory, blobs):
    """The blobs as CSV, Parquet with row groups of 300 rows, and HDF5."""
    frame = blobs[0]
    folder = tmp_path_factory.mktemp("scale")
    frame.to_csv(folder / "blobs.csv", index=False)
    frame.to_parquet(folder / "blobs.parquet", row_group_size=300)
    with h5py.File(folder / "blobs.h5", "w") as h5:
        h5["data"] = frame.to_numpy()
    return folder


def test_iter_table_reads_only_the_wanted_columns(blobs_files):
    for name, wanted in (("blobs.parquet", ["c3", "c1"]), ("blobs.csv", ["c3", "c1"]),
                         ("blobs.h5", ["f3", "f1"])):
        chunks = list(iter_table(str(blobs_files / name), chunk_rows=700, columns=[*wanted, "nope"]))
        assert [len(c) for c in chunks] == [700, 700, 600]
        assert sorted(chunks[0].columns) == sorted(wanted), name


@pytest.mark.parametrize("missing", ["error", "drop", "mean"])
def test_streamed_statistics_equal_the_whole_table_ones(missing):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(5.0, 3.0, size=(500, 4)), columns=list("abcd"))
    if missing != "error":
        frame.iloc[rng.integers(0, 500, 40), 1] = np.nan
        frame.iloc[rng.integers(0, 500, 10), 3] = np.inf
    columns = list(frame.columns)
    chunks = (frame.iloc[s : s + 37] for s in range(0, len(frame), 37))
    streamed, kept = Preprocessor.fit(chunks, columns, missing, "auto")
    assert streamed.likelihood == "gaussian"
    # The reference: numpy on the whole table, as the rule says.
    values = frame.to_numpy().copy()
    values[~np.isfinite(values)] = np.nan
    fill = np.nanmean(values, axis=0)
    used = values[~np.isnan(values).any(axis=1)] if missing == "drop" else \
        np.where(np.isnan(values), fill, values)
    np.testing.assert_allclose(streamed.fill, fill, rtol=1e-12)
    np.testing.assert_allclose(streamed.center, used.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(streamed.scale, used.std(axis=0), rtol=1e-12)
    assert kept == len(used) == len(streamed.transform(frame)[0])


def test_streamed_statistics_choose_bernoulli_and_report_gaps():
    frame = pd.DataFrame({"a": [0.0, 1.0, 0.5], "b": [1.0, 0.0, 0.25]})
    pre, _ = Preprocessor.fit(iter([frame[:2], frame[2:]]), ["a", "b"], "error", "auto")
    assert pre.likelihood == "bernoulli"
    frame.loc[1, "b"] = np.nan
    with pytest.raises(UserError, match=r"'b' \(1\).*--missing drop"):
        Preprocessor.fit(iter([frame[:2], frame[2:]]), ["a", "b"], "error", "auto")


@pytest.mark.parametrize("name", ["blobs.csv", "blobs.parquet", "blobs.h5"])
def test_chunk_stream_gives_every_row_once_per_epoch(blobs_files, blobs, name, monkeypatch):
    frame = blobs[0]
    columns = list(frame.columns) if name != "blobs.h5" else [f"f{i}" for i in range(16)]
    pre = Preprocessor(columns, "error", [0.0] * 16, [0.0] * 16, [1.0] * 16, "gaussian")
    source = stream.ChunkStream(str(blobs_files / name), pre, chunk_rows=256)
    assert source.rows == len(frame)
    generator = torch.Generator().manual_seed(0)
    epochs = [list(source.batches(50, generator)) for _ in range(2)]
    values = frame.to_numpy(np.float32)
    for batches in epochs:
        rows = torch.cat([y for y, _ in batches]).numpy()
        numbers = torch.cat([n for _, n in batches]).numpy()
        np.testing.assert_array_equal(np.sort(numbers), np.arange(len(frame)))  # each row once
        np.testing.assert_array_equal(rows, values[numbers])  # and its row number with it
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])  # a new order each epoch
    # Under torchrun each rank keeps rows i % world == rank: together, every row once.
    shards = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        shards.append(torch.cat([y for y, _ in source.in_order(100)]).numpy())
    np.testing.assert_array_equal(shards[0], frame.to_numpy(np.float32)[0::2])
    np.testing.assert_array_equal(shards[1], frame.to_numpy(np.float32)[1::2])


def test_csv_units_without_a_final_line_end(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n7,8\n9,10")  # no newline after the last row
    pre = Preprocessor(["a", "b"], "error", [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], "gaussian")
    source = stream.ChunkStream(str(path), pre, chunk_rows=2)
    assert [u.rows for u in source.units] == [2, 2, 1]
    rows = torch.cat([y for y, _ in source.in_order(10)]).numpy()
    np.testing.assert_array_equal(rows[:, 0], [1, 3, 5, 7, 9])


def test_should_stream_above_a_quarter_of_memory(blobs_files):
    path = str(blobs_files / "blobs.csv")
    size = os.path.getsize(path)
    assert stream.should_stream(path, memory=size)  # the file is 100% of "memory"
    assert not stream.should_stream(path, memory=8 * size)
    assert not stream.should_stream("-")


@pytest.mark.parametrize("name", ["blobs.parquet", "blobs.csv"])
def test_assign_in_small_batches_equals_one_big_batch(trained_model, blobs_files, name, tmp_path):
    data = blobs_files / name
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    for out, batch in ((small, 128), (big, 100_000)):
        result = run_cli("assign", trained_model, data, "-o", out, "--probs", "--batch-size", batch)
        assert result.exit_code == 0, result.stderr
    a, b = pd.read_parquet(small), pd.read_parquet(big)
    assert len(a) == 2000
    pd.testing.assert_frame_equal(a, b)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_train_stream_on_blobs(blobs_files, blobs, tmp_path):
    """--stream keeps the default recipe: its warm start sees a sample of 400 rows, the
    other 1,600 take their nearest sample rows' pseudo-clusters, and the clusters are clean."""
    model = tmp_path / "model.pt"
    result = run_cli("train", blobs_files / "blobs.csv", "--k", "5", "-o", model, "--stream",
                     "--chunk-rows", "256", "--hidden", "32,32", "--epochs", "6",
                     "--warm-sample", "400", "--quiet")
    assert result.exit_code == 0, result.stderr
    fitted = GMVAE.load(str(model))
    assert fitted.settings.recipe == "default"
    assert json.loads(run_cli("info", model, "--json").stdout)["recipe"] == "default"
    assert adjusted_rand_score(blobs[1], fitted.predict(blobs[0])) >= 0.9
    assert sum(fitted.cluster_sizes_) == 2000
    payload = checkpoint.load(str(model))
    pseudo = payload["pseudo_labels"]
    assert len(pseudo) == 2000 and adjusted_rand_score(blobs[1], pseudo) >= 0.9
    assert payload["timings"]["place"] > 0  # placing the other rows is timed as its own stage


def test_stream_needs_a_file():
    result = run_cli("train", "-", "--stream", *FAST_TRAIN, input="a,b\n1,2\n3,4\n")
    assert result.exit_code == 2
    assert "pass a file path" in result.stderr


TRAIN_ON_TWO = ["--k", "5", "--recipe", "paper", "--hidden", "32,32", "--epochs", "15",
                "--batch-size", "64"]  # 64 rows per process: 128 per step in all


def torchrun(launch: list[str], data: Path, folder: Path, *extra: str) -> subprocess.Popen:
    """One torchrun launcher training on `data` into folder/model.pt (one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), *launch, "-m", "gmvae_cli", "train", str(data), "-o",
               str(folder / "model.pt"), *TRAIN_ON_TWO, *extra]
    return subprocess.Popen(command, cwd=folder, env=env, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> str:
    _, stderr = proc.communicate(timeout=110)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


@pytest.fixture(scope="module")
def two_process_model(blobs_files, tmp_path_factory):
    """Two gloo processes on one machine (torchrun --standalone), each on half the rows."""
    folder = tmp_path_factory.mktemp("torchrun")
    launch = ["--standalone", "--nproc-per-node", "2"]
    stderr = finished(torchrun(launch, blobs_files / "blobs.csv", folder))
    return folder, stderr


@pytest.mark.timeout(120)
def test_torchrun_default_recipe_on_two_processes(blobs_files, blobs, tmp_path):
    """The default recipe under torchrun: rank 0 builds the warm start on a sample, both
    ranks receive it and train on their halves; one model, clean clusters."""
    launch = ["--standalone", "--nproc-per-node", "2"]
    stderr = finished(torchrun(launch, blobs_files / "blobs.csv", tmp_path, "--recipe", "default",
                               "--epochs", "6", "--warm-sample", "400"))
    assert stderr.count("wrote ") == 1
    model = GMVAE.load(str(tmp_path / "model.pt"))
    assert model.settings.recipe == "default"
    assert adjusted_rand_score(blobs[1], model.predict(blobs[0])) >= 0.9


@pytest.mark.timeout(120)
def test_torchrun_two_cpu_processes_train_one_model(two_process_model, blobs_files, blobs):
    folder, stderr = two_process_model
    assert stderr.count("wrote ") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]
    result = run_cli("assign", folder / "model.pt", blobs_files / "blobs.csv")
    assert result.exit_code == 0, result.stderr
    clusters = pd.read_csv(io.StringIO(result.stdout))["cluster"]
    assert adjusted_rand_score(blobs[1], clusters) >= 0.9


@pytest.mark.timeout(360)
def test_two_nodes_by_rendezvous_train_the_same_model(two_process_model, blobs_files, tmp_path):
    """Two torchrun launchers joined by c10d rendezvous, as on two machines (here both on
    localhost, one process each): the same seed and world size give the same weights as
    the one-machine run, whichever node gets rank 0."""
    folders = [tmp_path / "node-a", tmp_path / "node-b"]
    for folder in folders:
        folder.mkdir()
    for attempt in range(3):
        # Two launchers must agree on the rendezvous port before either starts, so it is
        # chosen here; another process can take it in between: then try another one.
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-id", f"test-{attempt}", "--rdzv-endpoint", f"localhost:{port}"]
        for folder in folders:
            (folder / "model.pt").unlink(missing_ok=True)
        nodes = [torchrun(launch, blobs_files / "blobs.csv", folder) for folder in folders]
        outcomes = [node.communicate(timeout=110)[1] for node in nodes]
        if all(node.returncode == 0 for node in nodes):
            break
        assert any("address already in use" in o.lower() or "eaddrinuse" in o.lower()
                   for o in outcomes), outcomes[0][-3000:] + outcomes[1][-3000:]
    reports = outcomes
    assert sum(r.count("wrote ") for r in reports) == 1  # rank 0's node alone writes
    written = [folder / "model.pt" for folder in folders]
    model = next(p for p in written if p.exists())
    assert sum(p.exists() for p in written) == 1
    ours, standalone = checkpoint.load(str(model)), checkpoint.load(str(two_process_model[0] / "model.pt"))
    for name, tensor in standalone["state_dict"].items():
        assert torch.equal(tensor, ours["state_dict"][name]), name


@pytest.mark.timeout(120)
def test_torchrun_with_stream_and_uneven_shares(blobs, tmp_path):
    """--stream under torchrun with 2,051 rows: rank 0 holds 1,026 (16 batches of 64 and one
    of 2), rank 1 holds 1,025 (16 batches; a last batch of one row is dropped), so rank 0
    takes one step more per epoch while DDP's join stands in for rank 1."""
    frame = pd.concat([blobs[0], blobs[0].iloc[:51]], ignore_index=True)
    labels = np.concatenate([blobs[1], blobs[1][:51]])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    launch = ["--standalone", "--nproc-per-node", "2"]
    stderr = finished(torchrun(launch, tmp_path / "rows.csv", tmp_path, "--stream",
                               "--chunk-rows", "333"))
    assert stderr.count("wrote ") == 1
    model = GMVAE.load(str(tmp_path / "model.pt"))
    assert sum(model.cluster_sizes_) == 2051  # every row counted once, across both ranks
    assert adjusted_rand_score(labels, model.predict(frame)) >= 0.9


def test_csv_rows_match_pandas_values_and_quote_only_where_needed():
    """The fast CSV writer: the same values as pandas' writer reads back, empty fields for
    missing values, quotes only for values that need them (pandas handles those chunks)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "id": [f"r{i}" for i in range(50)],
        "cluster": pd.arrays.IntegerArray(rng.integers(0, 9, 50), rng.random(50) < 0.1),
        "confidence": np.where(rng.random(50) < 0.1, np.nan, rng.random(50) * 10.0 ** -rng.integers(0, 12, 50)),
        "x_0": rng.standard_normal(50).astype(np.float32),
    })
    text = csv_rows(frame)
    assert '"' not in text  # plain ids need no quotes
    fields = [line.split(",") for line in text.splitlines()]
    missing = frame["cluster"].isna().to_numpy()
    assert all(f[1] == "" for f in np.array(fields, dtype=object)[missing])  # empty, not "nan"
    back = pd.read_csv(io.StringIO(text), header=None, names=list(frame.columns))
    expected = pd.read_csv(io.StringIO(frame.to_csv(index=False, header=False)), header=None,
                           names=list(frame.columns))
    pd.testing.assert_frame_equal(back, expected)
    assert back["cluster"].isna().sum() == frame["cluster"].isna().sum() > 0

    odd = frame.assign(id=["a,b", 'say "hi"'] + [f"r{i}" for i in range(48)])
    assert csv_rows(odd) == odd.to_csv(index=False, header=False)  # pandas wrote this chunk
    assert csv_rows(odd).startswith('"a,b",')


@pytest.mark.timeout(120)
def test_assign_streams_standard_input(trained_model, blobs):
    """Rows piped in come out before the input ends: stdin is parsed chunk by chunk, never
    held whole (a writer that never closes its end would otherwise wait forever)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmvae_cli", "assign", str(trained_model), "-", "--batch-size", "100"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        proc.stdin.write(blobs[0].to_csv(index=False).encode())  # 2000 rows; stdin stays open
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output while standard input was still open: it was read whole"
        assert proc.stdout.readline() == b"row,cluster,confidence\n"
        assert proc.stdout.readline().startswith(b"0,")
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdin.close()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert len(rest.splitlines()) == 1999


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gmvae-read-ahead"]


def test_read_ahead_keeps_order_and_raises_where_the_reader_failed():
    def chunks():
        yield from range(5)
        raise UserError("bad.csv is not a well-formed CSV table")

    got = []
    with pytest.raises(UserError, match="bad.csv"):
        got.extend(read_ahead(chunks()))  # keeps what arrived before the error
    assert got == [0, 1, 2, 3, 4]  # every chunk before the failure, in order
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))


def test_read_ahead_stops_and_closes_the_reader_when_the_consumer_stops():
    closed = threading.Event()
    produced = []

    def chunks():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = read_ahead(chunks(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)  # the reader fills its queue and waits: it reads at most depth ahead
    assert len(produced) <= 4
    stream.close()  # what an error downstream or Ctrl-C does to the generator
    assert closed.wait(5), "the source was not closed"
    deadline = time.monotonic() + 5
    while _reader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _reader_threads()


def _assign_from_open_stdin(model, text: str, tmp_path, interrupt: bool = False):
    """Run `gmvae assign MODEL -` with `text` piped in and stdin left open; its exit code
    (None if it never exits) and its stderr. With `interrupt`, Ctrl-C (SIGINT) is sent once
    its first output rows arrive: it is then inside the command, reading standard input."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gmvae_cli", "assign", str(model), "-", "--batch-size", "100"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
        )
        answered = threading.Event()

        def feed():
            try:
                proc.stdin.write(text.encode())
                proc.stdin.flush()
            except BrokenPipeError:  # it stopped reading: the case under test
                pass

        def drain():  # read its output as it comes, so it never blocks on a full pipe
            while proc.stdout.read(1024):
                answered.set()

        for work in (feed, drain):
            threading.Thread(target=work, daemon=True).start()
        try:
            if interrupt:
                assert answered.wait(60), "no output while standard input was open"
                proc.send_signal(2)  # SIGINT, as Ctrl-C
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            proc.kill()
            proc.stdin.close()
    return code, (tmp_path / "err").read_text()


@pytest.mark.timeout(120)
def test_bad_row_on_open_stdin_ends_with_one_line_error(trained_model, blobs, tmp_path):
    frame = blobs[0].astype(object)
    frame.iloc[150, 0] = "oops"  # the second chunk of 100 rows
    code, err = _assign_from_open_stdin(trained_model, frame.to_csv(index=False), tmp_path)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: model column")


@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_on_stdin_exits_130(trained_model, blobs, tmp_path):
    code, err = _assign_from_open_stdin(trained_model, blobs[0].to_csv(index=False), tmp_path,
                                        interrupt=True)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.timeout(120)
def test_torchrun_outlier_threshold_pools_every_ranks_scores(two_process_model, blobs):
    """Each rank scores its half; the pooled scores give the quantile over all rows."""
    folder, _ = two_process_model
    model = GMVAE.load(str(folder / "model.pt"))
    scores = model.score_samples(blobs[0])
    assert model.outlier_threshold_ == pytest.approx(np.quantile(scores, 0.01), rel=1e-5)


def test_a_table_in_memory_is_read_in_blocks_with_the_same_result():
    """Statistics and scaling of a frame in memory go block by block (bounded temporaries):
    the preprocessor and the matrix equal those of the whole frame at once."""
    from gmvae_cli.preprocess import Preprocessor
    from gmvae_cli.sources import open_table

    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(3.0, 2.0, (1000, 4)), columns=list("abcd"))
    frame.loc[[5, 700], "b"] = np.nan
    whole = open_table(frame, False, None, None, chunk_rows=10_000)
    blocks = open_table(frame, False, None, None, chunk_rows=96)
    assert len(list(blocks.chunks(list("abcd")))) == 11
    fits = [Preprocessor.fit(t.chunks(list("abcd")), list("abcd"), "drop", "auto") for t in (whole, blocks)]
    (one, kept_one), (other, kept_other) = fits
    assert kept_one == kept_other == 998
    np.testing.assert_allclose(one.center, other.center, rtol=1e-12)
    np.testing.assert_allclose(one.scale, other.scale, rtol=1e-12)
    expected = one.transform(frame)[0]
    np.testing.assert_array_equal(blocks.rows(one).matrix.numpy(), expected)

"""Reading feature tables (CSV, Parquet, HDF5) in chunks, and writing result tables atomically.

Every reader yields pandas DataFrames of at most `chunk_rows` rows, so callers that work
chunk by chunk (assign, embed) keep memory bounded whatever the file size; `read_table`
concatenates the chunks for callers that need everything (training).
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import lzma
import queue
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from typing_extensions import Self

from gmvae_cli.atomic import atomic_write, same_file
from gmvae_cli.errors import UserError

FORMATS = ("csv", "parquet", "hdf5")
SUFFIXES = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
}
# CSV compressions read by suffix (data.csv.gz): the opener for each.
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
STDIO = "-"
DEFAULT_CHUNK_ROWS = 65_536
T = TypeVar("T")


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt!r} is not known; use one of {', '.join(FORMATS)}")
        return fmt
    if path == STDIO:
        return "csv"
    suffix = Path(path).suffix.lower()
    if compression(path) is not None:  # data.csv.gz: the format is the suffix before
        suffix = Path(Path(path).stem).suffix.lower()
        if SUFFIXES.get(suffix) != "csv":
            raise UserError(f"{path}: only CSV is read compressed (.csv.gz, .csv.bz2, .csv.xz); "
                            "decompress it first")
    if suffix not in SUFFIXES:
        raise UserError(
            f"cannot tell the format of {path!r} from its suffix {suffix or '(none)'!r}; "
            f"pass --format {'|'.join(FORMATS)}"
        )
    return SUFFIXES[suffix]


def compression(path: str) -> str | None:
    """The compression suffix of a CSV path ('.gz', …), or None."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def is_pipe(path: str) -> bool:
    """Standard input, a named pipe or `<(…)`: readable once, front to back, size unknown."""
    if path == STDIO:
        return True
    try:
        return not stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False


def check_readable(path: str) -> None:
    if path == STDIO:
        return
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file; check the path")
    if p.is_dir():
        raise UserError(f"{path} is a directory; pass a data file")
    # A pipe (`<(zcat data.csv.gz)`) reports size 0 until it is read: only files are empty.
    if not is_pipe(path) and p.stat().st_size == 0:
        raise UserError(f"{path} is empty; it needs a header row and at least one data row")


def iter_table(
    path: str,
    fmt: str | None = None,
    key: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    columns: Sequence[str] | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the table at `path` (or stdin for '-') in chunks of at most chunk_rows rows.

    With `columns`, only those columns are read where the format allows it (Parquet reads
    only their column chunks, CSV parses only them); names the file lacks are left out, so
    the caller's own check can name them.
    """
    fmt = detect_format(path, fmt)
    check_readable(path)
    reader = {"csv": _iter_csv, "parquet": _iter_parquet, "hdf5": _iter_hdf5}[fmt]
    wanted = None if columns is None else list(dict.fromkeys(columns))
    any_rows = False
    for chunk in reader(path, key, chunk_rows, wanted):
        if len(chunk):
            any_rows = True
            yield chunk
    if not any_rows:
        name = "standard input" if path == STDIO else path
        raise UserError(f"{name} has no data rows; it needs at least one row below the header")


def count_rows(path: str, fmt: str | None = None, key: str | None = None) -> int | None:
    """The number of rows, where the format records it (Parquet metadata, an HDF5 shape);
    None for CSV and standard input, or when the file cannot be opened (reading it will then
    say why)."""
    try:
        fmt = detect_format(path, fmt)
        if fmt == "parquet":
            return open_parquet(path).metadata.num_rows
        if fmt == "hdf5":
            with open_hdf5(path) as h5:
                return _pick_hdf5_dataset(h5, path, key).shape[0]
    except (UserError, OSError):
        pass
    return None


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield `items` in order while a background thread already produces the next `depth`.

    pyarrow and pandas release the GIL while they parse, so reading the next chunk overlaps
    the model's work on this one. An error in the thread is raised here, at the chunk where it
    happened; stopping early (an error downstream, Ctrl-C) stops and closes the reader.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(("item", item)):
                    return
            hand_over(("end", None))
        except BaseException as e:  # noqa: BLE001 (re-raised in the consuming thread)
            hand_over(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="gmvae-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        # Bounded: a reader blocked inside a read cannot be woken; it is a daemon thread.
        thread.join(timeout=0.5)


def read_table(path: str, fmt: str | None = None, key: str | None = None) -> pd.DataFrame:
    return pd.concat(list(iter_table(path, fmt, key)), ignore_index=True)


def csv_separator(path: str) -> str:
    stem = path[: -len(compression(path) or "")] if compression(path) else path
    return "\t" if stem.lower().endswith(".tsv") else ","


def _open_csv(path: str):
    """A binary stream of the CSV text: stdin, or the file (decompressed by its suffix)."""
    if path == STDIO:
        return contextlib.nullcontext(getattr(sys.stdin, "buffer", sys.stdin))
    opener = COMPRESSIONS.get(compression(path) or "", open)
    return opener(path, "rb")


def _iter_csv(
    path: str, key: str | None, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    # Standard input and pipes are parsed as they arrive, a chunk at a time, like a file:
    # `cat big.csv | gmvae assign model.pt -` holds one chunk, not the whole stream.
    name = "standard input" if path == STDIO else path
    sep = csv_separator(path)
    usecols = None if columns is None else (lambda name: name in columns)
    try:
        with _open_csv(path) as raw:
            source = _Tap(raw)
            with pd.read_csv(source, sep=sep, chunksize=chunk_rows, usecols=usecols) as reader:
                for number, chunk in enumerate(reader):
                    if number == 0:
                        check_unique(source.header(sep), name)
                    yield chunk
    except (OSError, EOFError, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise UserError(f"cannot read {name}: {e.strerror}; check the file")
        raise UserError(f"{name} is not a readable {compression(path) or ''} file ({e}); "
                        "check the file or its suffix")
    except pd.errors.EmptyDataError:
        if path == STDIO:
            raise UserError("standard input is empty; pipe a CSV table with a header row")
        raise UserError(f"{name} is empty; it needs a header row and at least one data row")
    except pd.errors.ParserError as e:
        if source.interrupted:
            raise KeyboardInterrupt from None  # Ctrl-C while waiting on the pipe, not bad data
        detail = str(e).strip().splitlines()[-1]
        raise UserError(f"{name} is not a well-formed CSV table ({detail}); fix the rows named")
    except UnicodeDecodeError:
        raise UserError(f"{name} is not a text CSV file; pass --format if it is Parquet or HDF5")


class _Tap:
    """The CSV bytes for pandas, remembering two things pandas hides: the header line as
    written (pandas renames duplicate names a, a to a, a.1), and a Ctrl-C that arrived while
    it waited on a pipe (its C parser turns it into a ParserError "read(nbytes) failed")."""

    HEAD_LIMIT = 1 << 20

    def __init__(self, stream):
        self.stream = stream
        self.interrupted = False
        self.head = b""

    def read(self, size: int = -1):
        try:
            data = self.stream.read(size)
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        if b"\n" not in self.head and len(self.head) < self.HEAD_LIMIT:
            self.head += data
        return data

    def __iter__(self):
        return iter(self.stream)

    def header(self, sep: str) -> list[str]:
        line = self.head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
        return next(csv.reader([line], delimiter=sep), [])


def check_unique(names: Sequence[str], source: str) -> None:
    """A table whose columns share a name cannot say which one a model column means."""
    counts: dict[str, int] = {}
    for name in names:
        counts[str(name)] = counts.get(str(name), 0) + 1
    repeated = [f"{name!r} ({n}×)" for name, n in counts.items() if n > 1]
    if repeated:
        raise UserError(f"{source} has duplicate column names: {', '.join(repeated)}; "
                        "rename them so that every column has its own name")


def open_parquet(path: str) -> pq.ParquetFile:
    if path == STDIO:
        raise UserError("Parquet cannot be read from standard input; pass a file path")
    try:
        # Buffered reads without pre-buffering: pyarrow otherwise holds whole row groups of
        # raw column data and its pool keeps growing (5M rows read: 1.15 GiB RSS vs 0.34 GiB).
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({e}); check the file or --format")


def parquet_columns(parquet: pq.ParquetFile, columns: list[str] | None) -> list[str] | None:
    """The wanted columns the file has, for iter_batches (None: all of them)."""
    if columns is None:
        return None
    return [c for c in columns if c in parquet.schema_arrow.names]


def _iter_parquet(
    path: str, key: str | None, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    parquet = open_parquet(path)
    check_unique(parquet.schema_arrow.names, path)
    # Batch by batch, row group by row group: only one batch of the wanted columns in memory.
    wanted = parquet_columns(parquet, columns)
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=wanted):
        # One block per column: pandas then keeps Arrow's buffers instead of copying every
        # column into one 2-D block (2 ms of a 65,536-row chunk's 15, for nothing).
        yield batch.to_pandas(split_blocks=True)


def hdf5_datasets(h5: h5py.File) -> list[str]:
    found: list[str] = []
    h5.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def _pick_hdf5_dataset(h5: h5py.File, path: str, key: str | None) -> h5py.Dataset:
    names = hdf5_datasets(h5)
    if key is None:
        two_d = [n for n in names if h5[n].ndim == 2]
        if len(two_d) != 1:
            raise UserError(
                f"{path} holds {len(two_d)} 2-D datasets ({', '.join(names) or 'none'}); "
                "choose one with --key"
            )
        key = two_d[0]
    if key not in h5 or not isinstance(h5[key], h5py.Dataset):
        raise UserError(
            f"{path} has no dataset {key!r}; choose --key from: {', '.join(names) or '(none)'}"
        )
    ds = h5[key]
    if ds.ndim != 2:
        raise UserError(
            f"dataset {key!r} in {path} has shape {ds.shape}; gmvae needs a 2-D table "
            "(rows × features): choose another --key"
        )
    return ds


def open_hdf5(path: str) -> h5py.File:
    if path == STDIO:
        raise UserError("HDF5 cannot be read from standard input; pass a file path")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not a readable HDF5 file; check the file or --format")


def hdf5_frame(block: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
    """A slice of a 2-D dataset as a frame with columns f0, f1, …, or only the wanted ones."""
    names = [f"f{i}" for i in range(block.shape[1])]
    if columns is None:
        return pd.DataFrame(block, columns=names)
    index = [i for i, name in enumerate(names) if name in columns]
    return pd.DataFrame(block[:, index], columns=[names[i] for i in index])


def _iter_hdf5(
    path: str, key: str | None, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    with open_hdf5(path) as h5:
        ds = _pick_hdf5_dataset(h5, path, key)
        for start in range(0, ds.shape[0], chunk_rows):
            # One slice in memory at a time (HDF5 reads whole rows of a row-major dataset).
            yield hdf5_frame(ds[start : start + chunk_rows], columns)


def read_hdf5_array(path: str, key: str) -> np.ndarray:
    """A whole HDF5 dataset of any shape (e.g. labels held beside the data)."""
    check_readable(path)
    try:
        with h5py.File(path, "r") as h5:
            if key not in h5 or not isinstance(h5[key], h5py.Dataset):
                names = ", ".join(hdf5_datasets(h5)) or "(none)"
                raise UserError(f"{path} has no dataset {key!r}; choose from: {names}")
            return h5[key][()]
    except OSError:
        raise UserError(f"{path} is not a readable HDF5 file; check the path")


def csv_rows(frame: pd.DataFrame) -> str:
    """The frame's rows as CSV text, no header; empty fields for missing values.

    pyarrow's writer is about 9x faster than pandas' for numbers and plain strings. Other
    types (dates, booleans) and values that need quotes (a comma in an id; quoting "none"
    refuses them) go through pandas, which quotes only where needed, like the header.
    """
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if all(_arrow_csv_type(t) for t in table.schema.types):
            out = io.BytesIO()
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            pacsv.write_csv(table, out, options)
            return out.getvalue().decode()
    except pa.ArrowException:
        pass
    return frame.to_csv(index=False, header=False, lineterminator="\n")


def _arrow_csv_type(t: pa.DataType) -> bool:
    """Types pyarrow prints as pandas does (numbers up to the exponent form, plain text)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) \
        or pa.types.is_large_string(t) or pa.types.is_string_view(t)


class TableWriter:
    """Writes a table chunk by chunk to CSV or Parquet, or CSV on stdout for None / '-'.

    A file is written through atomic_write: it appears only when everything succeeded, so a
    failure never leaves a partial output file. The temporary file is made at once, so a
    path that cannot be written fails before any work.
    """

    def __init__(self, path: str | None, inputs: tuple[str, ...] = ()):
        self.path = None if path in (None, STDIO) else path
        self.fmt = "csv"
        self._parquet: pq.ParquetWriter | None = None
        self._handle = None
        self._header_done = False
        self._file = contextlib.ExitStack()
        if self.path is None:
            return
        suffix = Path(self.path).suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise UserError(f"output {self.path!r} must end in .csv or .parquet")
        self.fmt = "parquet" if suffix in (".parquet", ".pq") else "csv"
        if any(same_file(given, self.path) for given in inputs):
            raise UserError(f"output {self.path} is also an input; write to another file")
        self._tmp = self._file.enter_context(atomic_write(self.path))

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "parquet":
            self._write_parquet(pa.Table.from_pandas(frame, preserve_index=False))
            return
        if self._handle is None:
            self._handle = sys.stdout if self.path is None else open(self._tmp, "w", newline="")  # noqa: SIM115 (closed in __exit__)
        if not self._header_done:
            csv.writer(self._handle, lineterminator="\n").writerow(frame.columns)
            self._header_done = True
        self._handle.write(csv_rows(frame))

    def _write_parquet(self, table: pa.Table) -> None:
        if self._parquet is None:
            # Dictionary pages pay off only for a column of few values (the cluster); on
            # ids and floats pyarrow tries them, then falls back: 2.5x slower writes.
            few = [c for c in ("cluster",) if c in table.schema.names]
            self._parquet = pq.ParquetWriter(self._tmp, table.schema, use_dictionary=few)
        schema = self._parquet.schema
        if not table.schema.equals(schema):
            # CSV chunks are typed one by one: an id column of integers can hold a gap (float)
            # in a later chunk. The file keeps the first chunk's types where the values fit.
            try:
                table = table.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                changed = next(f for f in table.schema if f.type != schema.field(f.name).type)
                raise UserError(
                    f"column {changed.name!r} changes type within the input "
                    f"({schema.field(changed.name).type} in the first rows, {changed.type} "
                    "later), which Parquet cannot hold; write CSV (-o out.csv) or clean the column"
                )
        self._parquet.write_table(table)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
        elif self._handle is sys.stdout:
            sys.stdout.flush()
        self._file.__exit__(exc_type, exc, tb)  # rename into place, or remove on failure

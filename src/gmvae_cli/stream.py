"""Training on tables larger than memory: statistics in one streaming pass, and a shuffled
stream of chunks read from disk as the Trainer's second data source (the first is an
in-memory tensor).

A file is cut into units the format can read on their own: a Parquet row group, an HDF5 slice
of `chunk_rows` rows, or a run of `chunk_rows` CSV lines found by one scan for line ends. Each
epoch visits the units in an order drawn from the seeded generator and shuffles rows within
a buffer of SHUFFLE_CHUNKS chunks, so memory holds a few chunks whatever the file size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gmvae_cli import distributed
from gmvae_cli.data import (
    DEFAULT_CHUNK_ROWS,
    STDIO,
    _pick_hdf5_dataset,
    detect_format,
    hdf5_frame,
    iter_table,
    open_hdf5,
    open_parquet,
    parquet_columns,
)
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import LIKELIHOODS, MISSING_RULES, Preprocessor, choose_columns

SHUFFLE_CHUNKS = 4  # rows are shuffled within a buffer of this many chunks
# Stream automatically when the file takes more than this share of the machine's memory.
AUTO_STREAM_SHARE = 0.25
CSV_SCAN_BYTES = 1 << 24
STDIN_STREAM = "--stream reads the table several times; pass a file path, not - (stdin)"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_stream(path: str, memory: int | None = None) -> bool:
    """The automatic rule: stream a file larger than a quarter of the machine's memory."""
    if path == STDIO or not os.path.isfile(path):
        return False
    return os.path.getsize(path) > AUTO_STREAM_SHARE * (memory or physical_memory())


# -- statistics in one pass -------------------------------------------------------------------


class Moments:
    """Per-column count, mean, sum of squared deviations, min and max, in float64; NaNs are
    skipped. Chunks merge with Chan et al.'s pairwise update, stable for any number of rows."""

    def __init__(self, width: int):
        self.n = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, values: np.ndarray) -> None:
        ok = ~np.isnan(values)
        n_b = ok.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        with np.errstate(all="ignore"):  # all-NaN columns: n_b = 0, handled by the where()s
            mean_b = np.where(ok, values, 0.0).sum(axis=0) / n_b
            m2_b = np.where(ok, (values - mean_b) ** 2, 0.0).sum(axis=0)
            n = self.n + n_b
            delta = np.where(n_b > 0, mean_b - self.mean, 0.0)
            share = np.where(n > 0, n_b / n, 0.0)
            self.m2 = self.m2 + np.where(n_b > 0, m2_b + delta**2 * self.n * share, 0.0)
            self.mean = self.mean + delta * share
        self.n = n
        self.min = np.minimum(self.min, np.where(ok, values, np.inf).min(axis=0))
        self.max = np.maximum(self.max, np.where(ok, values, -np.inf).max(axis=0))


def fit_preprocessor(
    chunks: Iterator[pd.DataFrame], columns: list[str], missing: str, likelihood: str
) -> tuple[Preprocessor, int]:
    """Preprocessor.fit's statistics from a stream of chunks, and the number of rows kept.

    Fill values are the means of the finite values; the scaling comes from the complete rows
    (--missing drop) or from the mean-filled columns (--missing mean: a filled value adds no
    deviation, only a row), as Preprocessor.fit computes them on a whole table.
    """
    if missing not in MISSING_RULES:
        raise UserError(f"--missing {missing!r} is not known; use {'|'.join(MISSING_RULES)}")
    if likelihood not in LIKELIHOODS:
        raise UserError(f"--likelihood {likelihood!r} is not known; use {'|'.join(LIKELIHOODS)}")
    every, complete = Moments(len(columns)), Moments(len(columns))
    rows, absent = 0, np.zeros(len(columns), dtype=np.int64)
    for chunk in chunks:
        lacking = [c for c in columns if c not in chunk.columns]
        if lacking:
            raise UserError(f"column {lacking[0]!r} is missing from part of the file; fix it")
        values = chunk[columns].to_numpy(dtype=np.float64, copy=True)
        values[~np.isfinite(values)] = np.nan
        gaps = np.isnan(values)
        absent += gaps.sum(axis=0)
        every.add(values)
        complete.add(values[~gaps.any(axis=1)])
        rows += len(values)
    if missing == "error" and absent.any():
        worst = ", ".join(f"{c!r} ({n})" for c, n in zip(columns, absent) if n)
        raise UserError(
            f"missing or infinite values in columns {worst}; "
            "pass --missing drop or --missing mean, or clean the data"
        )
    if (every.n == 0).any():
        empty = columns[int(np.argmax(every.n == 0))]
        raise UserError(f"column {empty!r} has no finite values; drop it with --exclude")
    fill = every.mean
    if missing == "drop":
        kept, low, high = int(complete.n[0]), complete.min, complete.max
        center, variance = complete.mean, complete.m2 / max(kept, 1)
        if kept == 0:
            raise UserError(
                "every row has a missing or infinite value, so --missing drop leaves no rows; "
                "use --missing mean or clean the data"
            )
    else:  # "error" (no gaps) or "mean": filled values sit at the mean
        kept, center, variance = rows, fill, every.m2 / rows
        low, high = every.min, every.max
    if likelihood == "auto":
        likelihood = "bernoulli" if low.min() >= 0 and high.max() <= 1 else "gaussian"
    if likelihood == "bernoulli":
        if low.min() < 0 or high.max() > 1:
            raise UserError("--likelihood bernoulli needs every value in [0, 1]; use gaussian")
        center, scale = np.zeros(len(columns)), np.ones(len(columns))
    else:
        scale = np.sqrt(variance)
        if not (np.isfinite(scale).all() and np.isfinite(center).all()):
            raise UserError("values too large to scale (overflow); rescale the columns")
        scale[scale == 0] = 1.0  # a constant column stays constant (zero) instead of NaN
    pre = Preprocessor(columns, missing, fill.tolist(), center.tolist(), scale.tolist(), likelihood)
    return pre, kept


def prepare(
    path: str,
    fmt: str | None,
    key: str | None,
    *,
    columns: Sequence[str] | None,
    exclude: Sequence[str],
    id_column: str | None,
    missing: str,
    likelihood: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    note: Callable[[str], None] = lambda s: None,
) -> tuple[Preprocessor, int]:
    """Choose the columns from the first chunk, then fit the preprocessing in one pass."""
    if path == STDIO:
        raise UserError(STDIN_STREAM)
    first = next(iter_table(path, fmt, key, chunk_rows=min(chunk_rows, 1000)))
    chosen = choose_columns(first, columns, exclude, id_column, note)
    chunks = iter_table(path, fmt, key, chunk_rows=chunk_rows, columns=chosen)
    return fit_preprocessor(chunks, chosen, missing, likelihood)


# -- the chunk stream -------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of the file readable on its own: its first row and its address."""

    start: int  # index of its first row in the file
    rows: int
    address: int  # Parquet row group, HDF5 first row, or CSV byte offset
    end: int = 0  # CSV: the byte offset after its last line


class ChunkStream:
    """The rows of a file as shuffled float32 batches, a few chunks in memory at a time.

    Under torchrun each rank keeps the rows i with i % world == rank of every unit it reads:
    every rank reads the whole file, and the computation is split evenly.
    """

    def __init__(
        self,
        path: str,
        preprocessor: Preprocessor,
        fmt: str | None = None,
        key: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ):
        if path == STDIO:
            raise UserError(STDIN_STREAM)
        if chunk_rows < 2:
            raise UserError(f"--chunk-rows must be at least 2, got {chunk_rows}")
        self.path, self.key, self.chunk_rows = path, key, chunk_rows
        self.fmt = detect_format(path, fmt)
        self.preprocessor = preprocessor
        self.columns = preprocessor.columns
        units = {"parquet": self._parquet_units, "hdf5": self._hdf5_units, "csv": self._csv_units}
        self.units = units[self.fmt]()
        self.rows = sum(u.rows for u in self.units)

    # units of each format --------------------------------------------------------------

    def _parquet_units(self) -> list[Unit]:
        meta = open_parquet(self.path).metadata
        units, start = [], 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            units.append(Unit(start, rows, g))
            start += rows
        return units

    def _hdf5_units(self) -> list[Unit]:
        with open_hdf5(self.path) as h5:
            total = _pick_hdf5_dataset(h5, self.path, self.key).shape[0]
        step = self.chunk_rows
        return [Unit(s, min(step, total - s), s) for s in range(0, total, step)]

    def _csv_units(self) -> list[Unit]:
        """Runs of chunk_rows lines, found by one scan for line ends (so a row must not hold
        a quoted line break)."""
        units: list[Unit] = []
        step, row = self.chunk_rows, 0
        with open(self.path, "rb") as f:
            self._header = pd.read_csv(f, nrows=0, sep=self._sep()).columns.tolist()
            f.seek(0)
            f.readline()
            at = f.tell()
            starts = np.array([at])  # starts of the lines not yet in a unit
            while block := f.read(CSV_SCAN_BYTES):
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + at + 1
                at += len(block)
                starts = np.concatenate([starts, ends])
                full = (len(starts) - 1) // step  # runs whose last line has ended
                for j in range(full):
                    first, after = int(starts[j * step]), int(starts[(j + 1) * step])
                    units.append(Unit(row, step, first, after))
                    row += step
                starts = starts[full * step :]
        lines = len(starts) - 1 + (starts[-1] < at)  # the last line may lack its line end
        if lines:
            units.append(Unit(row, int(lines), int(starts[0]), at))
        return units

    def _read(self, unit: Unit) -> Iterator[pd.DataFrame]:
        if self.fmt == "parquet":
            parquet = open_parquet(self.path)
            wanted = parquet_columns(parquet, self.columns)
            for batch in parquet.iter_batches(
                batch_size=self.chunk_rows, row_groups=[unit.address], columns=wanted
            ):
                yield batch.to_pandas()
        elif self.fmt == "hdf5":
            with open_hdf5(self.path) as h5:
                ds = _pick_hdf5_dataset(h5, self.path, self.key)
                yield hdf5_frame(ds[unit.address : unit.address + unit.rows], self.columns)
        else:
            with open(self.path, "rb") as f:
                f.seek(unit.address)
                text = io.BytesIO(f.read(unit.end - unit.address))
            yield pd.read_csv(
                text, sep=self._sep(), header=None, names=self._header,
                usecols=lambda name: name in self.columns,
            )

    def _sep(self) -> str:
        return "\t" if self.path.lower().endswith(".tsv") else ","

    def _matrices(self, units: Sequence[Unit]) -> Iterator[np.ndarray]:
        """The preprocessed rows of these units that belong to this rank."""
        ctx = distributed.context()
        for unit in units:
            start = unit.start
            for frame in self._read(unit):
                n = len(frame)
                if ctx.active:
                    frame = frame[(start + np.arange(n)) % ctx.world == ctx.rank]
                start += n
                matrix, _ = self.preprocessor.transform(frame)
                if len(matrix):
                    yield matrix

    # what the Trainer uses -------------------------------------------------------------

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """One epoch of shuffled batches; a last batch of one row is dropped (batch norm)."""
        order = torch.randperm(len(self.units), generator=generator).tolist()
        held: list[np.ndarray] = []
        size, limit = 0, max(SHUFFLE_CHUNKS * self.chunk_rows, batch_size)
        for matrix in self._matrices([self.units[i] for i in order]):
            held.append(matrix)
            size += len(matrix)
            if size >= limit:
                rest = yield from _drain(held, batch_size, generator, keep_tail=True)
                held, size = [rest], len(rest)
        yield from _drain(held, batch_size, generator, keep_tail=False)

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """This rank's rows in file order (for the ELBO and cluster sizes at the end)."""
        for matrix in self._matrices(self.units):
            for s in range(0, len(matrix), batch_size):
                yield torch.from_numpy(matrix[s : s + batch_size])


def _drain(held, batch_size, generator, keep_tail):
    """Shuffle the buffer and yield its full batches; return the rows left over."""
    if not held:
        return np.zeros((0, 0), np.float32)
    rows = np.concatenate(held) if len(held) > 1 else held[0]
    rows = rows[torch.randperm(len(rows), generator=generator).numpy()]
    n = len(rows)
    stop = n - n % batch_size if keep_tail else n
    for s in range(0, stop, batch_size):
        batch = rows[s : min(s + batch_size, stop)]
        if len(batch) >= 2:
            yield torch.from_numpy(batch)
    return rows[stop:]

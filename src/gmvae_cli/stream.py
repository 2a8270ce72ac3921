"""Training on tables larger than memory: the rows of a file as a shuffled stream of chunks
read from disk, the second implementation of the training data (sources.py says what they offer;
sources.InMemoryRows is the first, a table in memory).

A file is cut into units the format can read on their own: a Parquet row group, an HDF5 slice
of `chunk_rows` rows, or a run of `chunk_rows` CSV lines found by one scan for line ends. Each
epoch visits the units in an order drawn from the seeded generator and shuffles rows within
a buffer of SHUFFLE_CHUNKS chunks, so memory holds a few chunks whatever the file size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gmvae_cli import distributed
from gmvae_cli.batching import uniform_sample
from gmvae_cli.data import (
    DEFAULT_CHUNK_ROWS,
    _pick_hdf5_dataset,
    compression,
    csv_separator,
    detect_format,
    hdf5_frame,
    is_pipe,
    open_hdf5,
    open_parquet,
    parquet_columns,
)
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import Preprocessor

SHUFFLE_CHUNKS = 4  # rows are shuffled within a buffer of this many chunks
# Stream automatically when the file takes more than this share of the machine's memory.
AUTO_STREAM_SHARE = 0.25
CSV_SCAN_BYTES = 1 << 24
STDIN_STREAM = "--stream reads the table several times; pass a file path, not - (stdin) or a pipe"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_stream(path: str, memory: int | None = None) -> bool:
    """The automatic rule: stream a file larger than a quarter of the machine's memory."""
    if is_pipe(path) or not os.path.isfile(path) or compression(path):
        return False
    return os.path.getsize(path) > AUTO_STREAM_SHARE * (memory or physical_memory())


def check_streamable(path: str) -> None:
    if is_pipe(path):
        raise UserError(STDIN_STREAM)
    if compression(path):
        raise UserError(f"--stream cannot seek in a compressed file ({path}); decompress it "
                        "or convert it to Parquet")


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
        check_streamable(path)
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
            self._header = pd.read_csv(f, nrows=0, sep=csv_separator(self.path)).columns.tolist()
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
                text, sep=csv_separator(self.path), header=None, names=self._header,
                usecols=lambda name: name in self.columns,
            )

    def _matrices(self, units: Sequence[Unit], mine: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The preprocessed rows of these units (only this rank's with `mine`) and their row
        numbers in the file."""
        ctx = distributed.context()
        for unit in units:
            start = unit.start
            for frame in self._read(unit):
                numbers = start + np.arange(len(frame))
                start += len(frame)
                if mine and ctx.active:
                    ours = numbers % ctx.world == ctx.rank
                    frame, numbers = frame[ours], numbers[ours]
                matrix, keep = self.preprocessor.transform(frame)
                if len(matrix):
                    yield matrix, numbers[keep]

    # the training-data interface (sources.py) -------------------------------------------

    @property
    def row_numbers(self) -> int:
        return self.rows

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of this rank's rows in shuffled batches, with their row numbers; a last
        batch of one row is dropped (batch norm)."""
        order = torch.randperm(len(self.units), generator=generator).tolist()
        held: list[tuple[np.ndarray, np.ndarray]] = []
        size, limit = 0, max(SHUFFLE_CHUNKS * self.chunk_rows, batch_size)
        for part in self._matrices([self.units[i] for i in order]):
            held.append(part)
            size += len(part[0])
            if size >= limit:
                rest = yield from _drain(held, batch_size, generator, keep_tail=True)
                held, size = [rest], len(rest[0])
        yield from _drain(held, batch_size, generator, keep_tail=False)

    def in_order(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's rows in file order, with their row numbers."""
        for matrix, numbers in self._matrices(self.units):
            for s in range(0, len(matrix), batch_size):
                yield (torch.from_numpy(matrix[s : s + batch_size]),
                       torch.from_numpy(numbers[s : s + batch_size]))

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to n rows of the whole file, the same on every rank (sources.uniform_sample)."""
        return uniform_sample(self._matrices(self.units, mine=False), n, seed,
                              self.preprocessor.width)


def _drain(held, batch_size, generator, keep_tail):
    """Shuffle the buffer and yield its full batches; return the rows left over."""
    if not held:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    rows = np.concatenate([h[0] for h in held]) if len(held) > 1 else held[0][0]
    numbers = np.concatenate([h[1] for h in held]) if len(held) > 1 else held[0][1]
    order = torch.randperm(len(rows), generator=generator).numpy()
    rows, numbers = rows[order], numbers[order]
    n = len(rows)
    stop = n - n % batch_size if keep_tail else n
    for s in range(0, stop, batch_size):
        batch = rows[s : min(s + batch_size, stop)]
        if len(batch) >= 2:
            yield torch.from_numpy(batch), torch.from_numpy(numbers[s : min(s + batch_size, stop)])
    return rows[stop:], numbers[stop:]

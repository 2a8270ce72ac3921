"""What training reads: rows as float32 batches with their row numbers.

Two implementations feed the one training loop (train.py) and every recipe:
- `InMemoryRows` here: a preprocessed table in memory;
- `stream.ChunkStream`: a file read from disk in shuffled chunks, for tables larger than memory.

Both offer the same four things:
- `rows` (rows over all ranks) and `row_numbers` (every row number is below it);
- `batches(batch_size, generator)`: one epoch of this rank's rows, shuffled, as
  (rows (B, D), row numbers (B,)); a last batch of one row is dropped (batch norm);
- `in_order(batch_size)`: this rank's rows in order, the same pairs (evaluation);
- `sample(n, seed)`: up to n rows of all ranks, uniformly without replacement, the same on
  every rank (a recipe's warm start).

Under torchrun each rank trains on its own share of the rows: sharding is the data's
business, not the loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gmvae_cli import distributed
from gmvae_cli.batching import index_batches, uniform_sample
from gmvae_cli.data import iter_table, read_table
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import Preprocessor, named_columns
from gmvae_cli.settings import check
from gmvae_cli.stream import ChunkStream, check_streamable


class InMemoryRows:
    def __init__(self, matrix: np.ndarray):
        self.matrix = torch.from_numpy(matrix)  # (rows, D), every row on every rank
        self.rows = self.row_numbers = len(matrix)
        ctx = distributed.context()
        # Shares of equal size (rows i with i % world == rank, cut to the same count): every
        # rank takes the same number of steps per epoch; at most world - 1 rows sit out.
        self.mine = (torch.arange(ctx.rank, self.rows, ctx.world)[: self.rows // ctx.world]
                     if ctx.active else None)

    def _numbers(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.mine is None else self.mine[idx]

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = self.rows if self.mine is None else len(self.mine)
        for idx in index_batches(count, batch_size, generator):
            numbers = self._numbers(idx)
            yield self.matrix[numbers], numbers

    def in_order(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        numbers = torch.arange(self.rows) if self.mine is None else self.mine
        for start in range(0, len(numbers), batch_size):
            part = numbers[start : start + batch_size]
            yield self.matrix[part], part

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n >= self.rows:  # every row: no copy, no draw
            return self.matrix, torch.arange(self.rows)
        parts = [(self.matrix.numpy(), np.arange(self.rows))]
        return uniform_sample(parts, n, seed, self.matrix.shape[1])


@dataclass
class Table:
    """A table to train on, before preprocessing: its first chunk (to choose the columns),
    its chunks (for the statistics) and, once the preprocessing is fitted, its rows."""

    first: Callable[[], pd.DataFrame]
    chunks: Callable[[list[str]], Iterator[pd.DataFrame]]
    rows: Callable[[Preprocessor], InMemoryRows | ChunkStream]


def open_table(data, stream: bool, fmt: str | None, key: str | None, chunk_rows: int) -> Table:
    """A DataFrame, an array or a file read whole; with `stream`, a file read in chunks
    from disk at every epoch. Everything after this is the same for both."""
    if not stream:
        if isinstance(data, str):
            data = read_table(data, fmt, key)
        frame = named_columns(as_frame(data))
        # Statistics and scaling in chunks here too: one pass over 2,000,000 rows × 32
        # columns at once held 2.6 GB of float64 temporaries.
        return Table(lambda: frame, lambda columns: _slices(frame, chunk_rows),
                     lambda pre: InMemoryRows(_transformed(pre, frame, chunk_rows)))
    if not isinstance(data, str):
        raise UserError("stream=True trains from a file: pass its path")
    check(chunk_rows=chunk_rows)
    check_streamable(data)
    return Table(
        lambda: next(iter_table(data, fmt, key, chunk_rows=min(chunk_rows, 1000))),
        lambda columns: iter_table(data, fmt, key, chunk_rows, columns),
        lambda pre: ChunkStream(data, pre, fmt, key, chunk_rows),
    )


def as_frame(table: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    """Arrays get column names f0, f1, … (as HDF5 tables do), so both kinds of input match."""
    if isinstance(table, pd.DataFrame):
        return table
    array = np.asarray(table)
    if array.ndim != 2:
        raise UserError(f"expected a 2-D table (rows × features), got shape {array.shape}")
    names = [f"f{i}" for i in range(array.shape[1])]
    return pd.DataFrame(array, columns=names)


def _slices(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    """The frame in consecutive blocks of `rows` (one empty block for an empty frame)."""
    for start in range(0, max(len(frame), 1), rows):
        yield frame.iloc[start : start + rows]


def _transformed(pre, frame: pd.DataFrame, rows: int) -> np.ndarray:
    """The preprocessed float32 matrix of the rows kept, built block by block."""
    parts = [pre.transform(block)[0] for block in _slices(frame, rows)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

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

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from gmvae_cli import distributed
from gmvae_cli.batching import index_batches


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


def uniform_sample(
    parts: Iterable[tuple[np.ndarray, np.ndarray]], n: int, seed: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n rows of (rows, row numbers) parts, uniformly without replacement, in row
    order: every row draws a random key and the n smallest keys stay (bottom-k sampling),
    so one pass holds at most n rows and a part, whatever the number of rows."""
    rng = np.random.default_rng(seed)
    rows, numbers, keys = np.zeros((0, width), np.float32), np.zeros(0, np.int64), np.zeros(0)
    for matrix, found in parts:
        rows = np.concatenate([rows, matrix])
        numbers = np.concatenate([numbers, found])
        keys = np.concatenate([keys, rng.random(len(matrix))])
        if len(keys) > n:
            smallest = np.argpartition(keys, n)[:n]
            rows, numbers, keys = rows[smallest], numbers[smallest], keys[smallest]
    order = np.argsort(numbers, kind="stable")
    return torch.from_numpy(rows[order]), torch.from_numpy(numbers[order])

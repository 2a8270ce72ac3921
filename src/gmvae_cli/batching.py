"""Drawing rows: batches (shuffled for training, in order for evaluation) and samples."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

EVAL_BATCH = 4096  # rows per forward pass where no gradient is kept


def index_batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over n rows, shuffled when a generator is given.

    A last batch of one row is dropped while shuffling: batch norm cannot train on it.
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if generator is not None and len(idx) < 2 and n > 1:
            continue
        yield idx


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

"""Cutting rows into batches: shuffled for training, in order for evaluation."""

from __future__ import annotations

from collections.abc import Iterator

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

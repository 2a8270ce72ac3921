"""What assign and embed share: one output row per input row, read and written chunk by
chunk under a rows bar, with only the columns the model needs read from the input."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pandas as pd

from gmvae_cli.api import GMVAE
from gmvae_cli.data import STDIO, TableWriter, count_rows, iter_table, read_ahead
from gmvae_cli.errors import UserError
from gmvae_cli.progress import write_rows


def write_per_row(
    model_path: str,
    data: str,
    output: str | None,
    per_chunk: Callable[[GMVAE, Iterator[pd.DataFrame]], Iterable[pd.DataFrame]],
    *,
    description: str,
    id_column: str | None,
    batch_size: int,
    device: str,
    fmt: str | None,
    key: str | None,
    quiet: bool,
) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model = GMVAE.load(model_path, device=device)
    with TableWriter(output, inputs=(data, model_path)) as writer:
        # Only the model's columns (and an id column) are read, where the format allows it.
        wanted = [*model.preprocessor_.columns, *(c for c in (id_column, model.id_column_) if c)]
        chunks = iter_table(data, fmt, key, chunk_rows=batch_size, columns=wanted)
        if data != STDIO:
            # Not for a pipe: a reader thread blocked on it cannot be stopped, and after an
            # error or Ctrl-C the interpreter aborts at exit, waiting for stdin's lock.
            chunks = read_ahead(chunks)
        frames = per_chunk(model, chunks)
        write_rows(frames, writer.write, description, count_rows(data, fmt, key), quiet)

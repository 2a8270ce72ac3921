"""Per-row output (assign and embed): one output row per input row, read and written chunk
by chunk under a rows bar, with only the columns the model needs read from the input.

Each output chunk has the id column (or `row`, the row number across chunks) first, then
the command's columns; rows the model's --missing drop rule left out get empty values.
`assign --score` adds `elbo` (GMVAENet.row_terms at the posterior means) and `outlier`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from gmvae_cli import devices, inference
from gmvae_cli.api import GMVAE
from gmvae_cli.data import TableWriter, count_rows, is_pipe, iter_table, read_ahead
from gmvae_cli.errors import UserError
from gmvae_cli.progress import note, write_rows

Columns = Callable[[np.ndarray, np.ndarray], dict]  # (kept rows' matrix, keep mask) -> columns


def cluster_columns(model: GMVAE, matrix: np.ndarray, keep: np.ndarray, probs: bool = False,
                    mc_samples: int = 0, log_p: np.ndarray | None = None) -> dict:
    """cluster, confidence (and prob_0 … with probs) for every row; empty where not kept.
    `log_p`: the kept rows' log p(z | y) when already computed (inference.row_scores)."""
    if log_p is None:
        log_p = inference.log_proba(model.net_, matrix, mc_samples)  # (kept rows, K)
    top = log_p.argmax(1)
    best = np.zeros(len(keep), dtype=np.int64)
    best[keep] = top
    cluster = pd.arrays.IntegerArray(best, ~keep)  # masked (empty) where not kept
    confidence = np.full(len(keep), np.nan)
    # The top log-probability by index: numpy's max along a short axis is 10x slower.
    confidence[keep] = np.exp(np.take_along_axis(log_p, top[:, None], axis=1)[:, 0])
    out = {"cluster": cluster, "confidence": confidence}
    if probs:
        p = np.full((len(keep), model.config.k), np.nan)
        p[keep] = np.exp(log_p)
        out.update({f"prob_{j}": p[:, j] for j in range(model.config.k)})
    return out


def assign_columns(model: GMVAE, probs: bool = False, mc_samples: int = 0,
                   score: bool = False, note: Callable[[str], None] = lambda s: None) -> Columns:
    """assign's columns; with `score`, also elbo and outlier (score_columns)."""
    if not score:
        return lambda matrix, keep: cluster_columns(model, matrix, keep, probs, mc_samples)
    if model.outlier_threshold_ is None:
        note("note: this model holds no outlier threshold (trained before gmvae stored one), "
             "so the outlier column is empty; retrain it to get one")

    def columns(matrix: np.ndarray, keep: np.ndarray) -> dict:
        elbo, log_p = inference.row_scores(model.net_, matrix)  # one pass for both
        clusters = cluster_columns(model, matrix, keep, probs, mc_samples,
                                   log_p if mc_samples == 0 else None)
        return {**clusters, **score_columns(model, elbo, keep)}

    return columns


def score_columns(model: GMVAE, elbo: np.ndarray, keep: np.ndarray) -> dict:
    """elbo (the kept rows' ELBO) and outlier (elbo below the model's threshold) for every
    row; empty where not kept, and outlier empty throughout without a threshold."""
    scores = np.full(len(keep), np.nan)
    scores[keep] = elbo
    flags = np.zeros(len(keep), dtype=bool)
    unknown = ~keep
    if model.outlier_threshold_ is None:
        unknown = np.ones(len(keep), dtype=bool)
    else:
        flags[keep] = elbo < model.outlier_threshold_
    return {"elbo": scores, "outlier": pd.arrays.BooleanArray(flags, unknown)}


def embed_columns(model: GMVAE, with_w: bool = False, with_cluster: bool = False) -> Columns:
    """x_0 … (w_0 … with with_w) and, with with_cluster, cluster and confidence as assign."""
    names = inference.embedding_columns(model.net_, with_w)

    def columns(matrix: np.ndarray, keep: np.ndarray) -> dict:
        values = np.full((len(keep), len(names)), np.nan, dtype=np.float32)
        values[keep] = inference.embedding(model.net_, matrix, with_w)
        out = {name: values[:, j] for j, name in enumerate(names)}
        if with_cluster:
            out.update(cluster_columns(model, matrix, keep))
        return out

    return columns


def per_row(model: GMVAE, chunks: Iterable[pd.DataFrame], id_column: str | None,
            columns: Columns) -> Iterator[pd.DataFrame]:
    offset = 0
    for chunk in chunks:
        if id_column is not None and id_column not in chunk.columns:
            raise UserError(f"--id-column {id_column!r} is not in the input table")
        matrix, keep = model.matrix(chunk)
        # The id column from training is used where the input has it, else row numbers.
        ids = id_column or (model.id_column_ if model.id_column_ in chunk.columns else None)
        if ids is not None:
            first = {ids: chunk[ids].to_numpy()}
        else:
            first = {"row": np.arange(offset, offset + len(chunk))}
        offset += len(chunk)
        yield pd.DataFrame({**first, **columns(matrix, keep)})


def write_per_row(
    model_path: str,
    data: str,
    output: str | None,
    make_columns: Callable[[GMVAE], Columns],
    *,
    description: str,
    id_column: str | None,
    batch_size: int,
    device: str,
    fmt: str | None,
    key: str | None,
    quiet: bool,
    seed: int = 0,
) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model = GMVAE.load(model_path, device=device)
    model.note = (lambda s: None) if quiet else note  # categories it never saw, once per column
    # Monte-Carlo draws (assign --mc-samples) come from `seed`: the same command, data and
    # device give the same output, as training does.
    cuda = [devices.of(model.net_)] if devices.of(model.net_).type == "cuda" else []
    with TableWriter(output, inputs=(data, model_path)) as writer, \
            torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        # Only the model's columns (and an id column) are read, where the format allows it.
        wanted = [*model.preprocessor_.columns, *(c for c in (id_column, model.id_column_) if c)]
        chunks = iter_table(data, fmt, key, chunk_rows=batch_size, columns=wanted)
        if not is_pipe(data):
            # Not for a pipe: a reader thread blocked on it cannot be stopped, and after an
            # error or Ctrl-C the interpreter aborts at exit, waiting for stdin's lock.
            chunks = read_ahead(chunks)
        frames = per_row(model, chunks, id_column, make_columns(model))
        write_rows(frames, writer.write, description, count_rows(data, fmt, key), quiet)

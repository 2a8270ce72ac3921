"""`gmvae describe`: what each of a model's clusters is, and which rows fit none, from a table
read once, chunk by chunk.

Per chunk: each row's cluster and ELBO in one pass of the networks (inference.row_scores,
at the posterior means: deterministic), its outlier flag (ELBO below the threshold stored at
training), and the rows themselves go to describe.ClusterProfile. Memory holds a few chunks
and the profile's bounded summaries, whatever the number of rows. describe.py turns the
profile into the report, the tables and the pictures; docs/describe.md explains the numbers.
"""

from __future__ import annotations

import json

import numpy as np
from rich.console import Console

from gmvae_cli import inference, plots
from gmvae_cli.api import GMVAE
from gmvae_cli.data import count_rows, is_pipe, iter_table, read_ahead
from gmvae_cli.describe import (
    ClusterProfile,
    difference_images,
    examples_figure,
    heatmap,
    report,
    show,
)
from gmvae_cli.errors import UserError
from gmvae_cli.preprocess import Preprocessor
from gmvae_cli.progress import Reporter, note

EXAMPLES = 8  # the most and the least typical rows kept per cluster (JSON and --examples)
CHUNK_VALUES = 4_000_000  # default chunk: 65,536 rows, fewer for wide tables (32 MB of float64)
DEFAULT_CHUNK_ROWS = 65_536


def default_chunk_rows(width: int) -> int:
    """Rows read at a time: DEFAULT_CHUNK_ROWS, or fewer so that a chunk of a wide table
    holds about CHUNK_VALUES values (MNIST's 784 columns: 5,102 rows)."""
    return max(1, min(DEFAULT_CHUNK_ROWS, CHUNK_VALUES // max(width, 1)))


def profile_columns(pre: Preprocessor) -> tuple[list[str], list[str]]:
    """(numeric, categorical) columns to describe: the model's columns, the one-hot encoded
    text columns apart (their shares of each value are described, not a mean)."""
    return pre.numeric_columns, pre.categorical_columns


def profile_table(model: GMVAE, data: str, fmt: str | None, key: str | None,
                  chunk_rows: int, seed: int = 0, quiet: bool = True) -> ClusterProfile:
    """One pass over DATA: clusters (-1 for rows the model's --missing rule drops), ELBO
    scores and outlier flags (none without a stored threshold) into a ClusterProfile."""
    numeric, categorical = profile_columns(model.preprocessor_)
    profile = ClusterProfile(numeric, categorical, model.config.k, examples=EXAMPLES, seed=seed)
    threshold = model.outlier_threshold_
    chunks = iter_table(data, fmt, key, chunk_rows=chunk_rows,
                        columns=list(dict.fromkeys([*model.preprocessor_.columns, *categorical])))
    if not is_pipe(data):  # as assign: a reader blocked on a pipe cannot be stopped
        chunks = read_ahead(chunks)
    with Reporter(quiet) as reporter:
        reporter.stage("describing", count_rows(data, fmt, key))
        for chunk in chunks:
            matrix, keep = model.matrix(chunk)
            elbo, log_p = inference.row_scores(model.net_, matrix)
            clusters = np.full(len(chunk), -1, dtype=np.int64)
            clusters[keep] = log_p.argmax(1)
            scores = np.full(len(chunk), np.nan)
            scores[keep] = elbo
            flags = None if threshold is None else scores < threshold  # NaN: not flagged
            profile.add(chunk, clusters, scores, flags)
            reporter.update(len(chunk))
    return profile


def run(model_path: str, data: str, as_json: bool, plot: str | None, top: int,
        examples: str | None, image_shape: str | None, seed: int, batch_size: int | None,
        device: str, fmt: str | None, key: str | None, quiet: bool) -> None:
    """`gmvae describe` (cli.py has its options and checks those that need no model)."""
    say = (lambda s: None) if quiet else note
    model = GMVAE.load(model_path, device=device)
    numeric, _ = profile_columns(model.preprocessor_)
    shape = None  # the shape must fit the model before the data is read
    if examples is not None or (plot is not None and image_shape is not None):
        shape = plots.parse_image_shape(image_shape, len(numeric), "--examples")
    elif image_shape is not None:
        say("note: --image-shape only matters with --examples or --plot")
    if model.outlier_threshold_ is None:
        say("note: this model holds no outlier threshold (trained before gmvae stored one), "
            "so no outlier shares are shown; retrain it to get them")
    chunk_rows = batch_size or default_chunk_rows(len(model.preprocessor_.columns))
    profile = profile_table(model, data, fmt, key, chunk_rows, seed, quiet)
    if profile.rows == 0:
        raise UserError("no row of DATA has a cluster (the model's --missing drop rule left "
                        "them all out); clean the data")
    found = report(profile, top=top)
    if plot is not None:
        if image_shape is not None:  # image data: each cluster's differences as an image
            difference_images(plot, found, shape)
        else:
            heatmap(plot, found, note=say)
        say(f"wrote {plot}")
    if examples is not None:
        examples_figure(examples, profile, shape)
        say(f"wrote {examples}")
    if as_json:
        threshold = model.outlier_threshold_
        print(json.dumps({
            "model": model_path, "data": data,
            "outlier_threshold": threshold,
            "outlier_quantile": None if threshold is None else model.outlier_quantile,
            **found,
        }, indent=2, allow_nan=False))
    else:
        show(found, Console(soft_wrap=True), top=top, note=say)

"""`gmvae sample`: new rows from a trained model's generative side (GMVAE.sample)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer

from gmvae_cli import plots
from gmvae_cli.api import GMVAE
from gmvae_cli.data import TableWriter
from gmvae_cli.options import Device, ModelPath, Output, Seed, handle_errors
from gmvae_cli.progress import note

GRID_MAX_COLUMNS = 16  # images per cluster row in --grid


@handle_errors
def sample(
    model_path: ModelPath,
    n: Annotated[int, typer.Option("-n", "--rows", help="Number of rows to draw, spread evenly over the clusters.")] = 100,
    cluster: Annotated[
        list[int] | None,
        typer.Option("--cluster", help="Draw only from this cluster; repeat for several (default: all)."),
    ] = None,
    mean: Annotated[bool, typer.Option("--mean", help="Decoder means instead of noisy draws.")] = False,
    binary: Annotated[
        bool, typer.Option("--binary", help="Bernoulli models: 0/1 draws instead of probabilities.")
    ] = False,
    seed: Seed = 0,
    output: Output = None,
    grid: Annotated[
        str | None,
        typer.Option("--grid", help="Save a PNG with one row of samples per cluster (image data)."),
    ] = None,
    image_shape: Annotated[
        str | None,
        typer.Option("--image-shape", help="HxW of one image for --grid, e.g. 28x28 (default: square)."),
    ] = None,
    device: Device = "auto",
) -> None:
    """Draw new rows from MODEL, in the original scale, with a `cluster` column.

    The rows go to stdout as CSV, or to -o (.csv or .parquet); with --grid and no -o only the
    picture is written (add -o - to print the rows as well).

    Example: gmvae sample model.pt -n 50 --cluster 3 --mean -o samples.csv
    """
    model = GMVAE.load(model_path, device=device)
    shape = None
    if grid is not None:
        plots.check_png(grid, "--grid")
        shape = plots.parse_image_shape(image_shape, len(model.preprocessor_.columns))
    elif image_shape is not None:
        note("note: --image-shape only matters with --grid")
    rows = model.sample(n, clusters=cluster or None, mean=mean, binary=binary, seed=seed)
    # Open the writer before drawing the picture so a bad -o fails before any file is written.
    writer = TableWriter(output, inputs=(model_path,)) if (output or grid is None) else None
    if writer is None:
        _save_grid(grid, rows, model, shape)
        return
    with writer:
        writer.write(rows)
        if grid is not None:
            _save_grid(grid, rows, model, shape)


def _save_grid(path: str, rows, model: GMVAE, shape: tuple[int, int]) -> None:
    columns = model.preprocessor_.columns
    label = rows.columns[-1]  # "cluster" (or "sampled_cluster" if a feature is named so)
    images = [
        rows.loc[rows[label] == k, columns].to_numpy(dtype=np.float64)[:GRID_MAX_COLUMNS]
        for k in dict.fromkeys(rows[label].tolist())
    ]
    plots.sample_grid(path, images, shape)
    note(f"wrote {path}: {len(images)} clusters × up to {GRID_MAX_COLUMNS} samples")

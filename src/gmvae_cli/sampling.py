"""`gmvae sample`: new rows from a trained model's generative side (GMVAE.sample)."""

from __future__ import annotations

import numpy as np

from gmvae_cli import plots
from gmvae_cli.api import GMVAE
from gmvae_cli.data import TableWriter
from gmvae_cli.errors import UserError
from gmvae_cli.progress import note

GRID_MAX_COLUMNS = 16  # images per cluster row in --grid


def run(model_path: str, n: int, cluster: list[int] | None, mean: bool, binary: bool,
        seed: int, output: str | None, grid: str | None, image_shape: str | None,
        device: str) -> None:
    """`gmvae sample` (cli.py has its options)."""
    model = GMVAE.load(model_path, device=device)
    shape = None
    if grid is not None:
        plots.check_png(grid, "--grid")
        if model.preprocessor_.categories:
            raise UserError("--grid draws image data, and this model has categorical columns; "
                            "leave out --grid")
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

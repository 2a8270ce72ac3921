"""PNG pictures: the evaluation figure and the grid of sampled images.

matplotlib runs on the Agg backend (no display needed). Every picture goes through
atomic_write, so a failure leaves no partial file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gmvae_cli.atomic import atomic_write
from gmvae_cli.errors import UserError

DPI = 100
# The evaluation figure, in inches at DPI: confusion matrix and sizes side by side, or sizes alone.
FIGURE_WITH_LABELS = (13.0, 5.5)
FIGURE_SIZES_ONLY = (6.5, 4.5)
ANNOTATE_MAX_CELLS = 400  # write the counts into the heatmap cells up to this many cells
GRID_PAD = 1  # pixels between the images of a sample grid


def _pyplot():
    """matplotlib on demand: importing it costs ~100 MB and a second, which assign,
    train and every other command that draws nothing should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_png(path: str, option: str) -> None:
    """Fail early, before any work, on a picture path that cannot be written."""
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"{option} {path!r} must end in .png")
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: folder {folder} does not exist")


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG, whole or not at all."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def evaluation_figure(path: str, report: dict) -> None:
    """Cluster sizes, and with labels a confusion-matrix heatmap (labels × clusters)."""
    labels = report.get("labels")
    size = FIGURE_WITH_LABELS if labels else FIGURE_SIZES_ONLY
    plt = _pyplot()
    fig = plt.figure(figsize=size, dpi=DPI)
    try:
        if labels:
            heat_ax, sizes_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
            _confusion_heatmap(heat_ax, fig, labels)
        else:
            sizes_ax = fig.subplots()
        k = len(report["cluster_sizes"])
        sizes_ax.bar(range(k), report["cluster_sizes"], color="tab:blue")
        sizes_ax.set_xlabel("cluster")
        sizes_ax.set_ylabel("rows")
        sizes_ax.set_title(f"cluster sizes ({report['effective_clusters']} of {k} effective)")
        if k <= 40:
            sizes_ax.set_xticks(range(k))
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)


def _confusion_heatmap(ax, fig, labels: dict) -> None:
    matrix = np.asarray(labels["confusion"])  # (n_labels, K)
    image = ax.imshow(matrix, aspect="auto", cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="rows")
    n_labels, k = matrix.shape
    if k <= 40:
        ax.set_xticks(range(k))
    if n_labels <= 40:
        ax.set_yticks(range(n_labels), [str(c) for c in labels["classes"]])
    if matrix.size <= ANNOTATE_MAX_CELLS:
        threshold = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    ax.set_xlabel("cluster")
    ax.set_ylabel("label")
    ax.set_title(
        f"confusion matrix — accuracy {labels['accuracy_hungarian']:.3f} (Hungarian), "
        f"{labels['accuracy_majority']:.3f} (majority)"
    )


def parse_image_shape(text: str | None, n_features: int, option: str = "--grid") -> tuple[int, int]:
    """'HxW' -> (H, W); without it, a square when the number of features is a square.
    `option` is the picture option that needs the shape (named in the message)."""
    if text is None:
        side = round(n_features**0.5)
        if side * side != n_features:
            raise UserError(
                f"{option} needs --image-shape HxW: the model's {n_features} columns are not a "
                "square image"
            )
        return side, side
    height, width = parse_hxw(text)
    if height * width != n_features:
        raise UserError(
            f"--image-shape {text} holds {height * width} pixels but the model has "
            f"{n_features} columns; pick H and W with H×W = {n_features}"
        )
    return height, width


def parse_hxw(text: str) -> tuple[int, int]:
    """--image-shape's syntax alone, 'HxW' -> (H, W): checkable before any model is loaded."""
    try:
        height, width = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--image-shape takes HxW such as 28x28, got {text!r}")
    if height < 1 or width < 1:
        raise UserError(f"--image-shape takes positive sizes such as 28x28, got {text!r}")
    return height, width


def grid_shape(rows: int, columns: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Pixel (height, width) of a grid of rows × columns images of this shape."""
    height, width = shape
    return rows * (height + GRID_PAD) + GRID_PAD, columns * (width + GRID_PAD) + GRID_PAD


def sample_grid(path: str, images: list[np.ndarray], shape: tuple[int, int]) -> None:
    """One row of images per entry of `images` (each (n_i, H*W)), grey on a black frame.

    Values are shown on one shared scale from the smallest to the largest value.
    """
    height, width = shape
    columns = max(len(block) for block in images)
    canvas = np.full(grid_shape(len(images), columns, shape), np.nan)
    finite = np.concatenate([block.ravel() for block in images])
    low, high = float(np.nanmin(finite)), float(np.nanmax(finite))
    for r, block in enumerate(images):
        for c, row in enumerate(block):
            top, left = GRID_PAD + r * (height + GRID_PAD), GRID_PAD + c * (width + GRID_PAD)
            canvas[top : top + height, left : left + width] = row.reshape(height, width)
    canvas = np.nan_to_num(canvas, nan=low)  # the frame and empty cells are the darkest value
    vmax = high if high > low else low + 1.0
    with atomic_write(path) as tmp:
        _pyplot().imsave(tmp, canvas, cmap="gray", vmin=low, vmax=vmax, format="png")

"""`gmvae embed`: the latent coordinates of each row (posterior means of x, optionally of w),
streamed chunk by chunk like `gmvae assign`, with the same row ids and options."""

from __future__ import annotations

from typing import Annotated

import typer

from gmvae_cli.options import (
    BatchSize,
    Device,
    Format,
    IdColumn,
    Key,
    ModelPath,
    Output,
    Quiet,
    handle_errors,
)
from gmvae_cli.rows import embed_columns, write_per_row


@handle_errors
def embed(
    model_path: ModelPath,
    data: Annotated[str, typer.Argument(help="Table to embed: .csv, .parquet, .h5, or - for stdin.")],
    output: Output = None,
    with_w: Annotated[bool, typer.Option("--with-w", help="Add w_0 … w_{Dw-1}, the means of w.")] = False,
    with_cluster: Annotated[
        bool, typer.Option("--with-cluster", help="Add cluster and confidence, as gmvae assign.")
    ] = False,
    id_column: IdColumn = None,
    batch_size: BatchSize = 65536,
    device: Device = "auto",
    fmt: Format = None,
    key: Key = None,
    quiet: Quiet = False,
) -> None:
    """Write each row's latent coordinates; CSV on stdout unless -o.

    One output row per input row, in input order, with the same ids as gmvae assign:
    x_0 … x_{Dx-1} are the posterior means of x (--with-w adds those of w).

    Example: gmvae embed model.pt input.csv -o latent.parquet --with-cluster
    """
    write_per_row(
        model_path, data, output,
        lambda model: embed_columns(model, with_w=with_w, with_cluster=with_cluster),
        description="embedding", id_column=id_column, batch_size=batch_size, device=device,
        fmt=fmt, key=key, quiet=quiet,
    )

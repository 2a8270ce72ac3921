"""The `gmvae` command line: thin commands over the library API (api.GMVAE)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gmvae_cli import __version__, distributed, embed, evaluate, sampling, select_k, stream
from gmvae_cli.api import GMVAE
from gmvae_cli.checkpoint import check_target
from gmvae_cli.errors import UserError
from gmvae_cli.options import (
    DEBUG,
    EXIT_INTERRUPTED,
    AsJson,
    BatchSize,
    Device,
    Format,
    IdColumn,
    Key,
    ModelPath,
    Output,
    Quiet,
    Seed,
    handle_errors,
    parse_list,
    parse_sizes,
)
from gmvae_cli.progress import Reporter, note
from gmvae_cli.rows import assign_columns, write_per_row
from gmvae_cli.settings import check

EPOCHS_HELP = (
    "GMVAE epochs (default: the recipe's: default 30 = 20 guided + 10 plain ELBO, after 20 "
    "of autoencoder pretraining; paper 50). The default recipe keeps its proportions: "
    "--epochs 15 runs 10 guided, 5 plain and 10 pretraining epochs."
)
LR_HELP = (
    "Adam learning rate (default 1e-3). The default recipe pretrains and guides at this rate "
    "and runs its plain-ELBO epochs at a tenth of it."
)

app = typer.Typer(
    help="Cluster the rows of a feature table with a Gaussian Mixture VAE.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold whole tables
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"gmvae {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    DEBUG["on"] = debug


@app.command()
@handle_errors
def train(
    data: Annotated[str, typer.Argument(help="Feature table: .csv, .parquet, .h5, or - for CSV on stdin.")],
    k: Annotated[int, typer.Option("--k", help="Number of clusters K.")] = 10,
    output: Annotated[str, typer.Option("-o", "--output", help="Checkpoint to write.")] = "model.pt",
    recipe: Annotated[str, typer.Option(help="default (warm start + ELBO) or paper (the spec's ELBO alone).")] = "default",
    epochs: Annotated[int | None, typer.Option(help=EPOCHS_HELP)] = None,
    batch_size: BatchSize = 128,
    lr: Annotated[float | None, typer.Option(help=LR_HELP)] = None,
    x_dim: Annotated[int, typer.Option(help="Dimension of the latent x, where clusters live.")] = 10,
    w_dim: Annotated[int, typer.Option(help="Dimension of the latent w.")] = 10,
    hidden: Annotated[str, typer.Option(help="Encoder layer sizes; the decoder mirrors them.")] = "500,500",
    mc_samples: Annotated[int, typer.Option(help="Monte-Carlo samples M per row.")] = 1,
    lambda_z: Annotated[float, typer.Option("--lambda", help="z-prior threshold λ.")] = 0.5,
    likelihood: Annotated[str, typer.Option(help="auto, gaussian or bernoulli.")] = "auto",
    restarts: Annotated[int, typer.Option(help="Independent fits; the best ELBO is kept.")] = 1,
    seed: Seed = 0,
    device: Device = "auto",
    columns: Annotated[str | None, typer.Option(help="Comma-separated feature columns.")] = None,
    exclude: Annotated[str | None, typer.Option(help="Comma-separated columns to leave out.")] = None,
    id_column: IdColumn = None,
    missing: Annotated[str, typer.Option(help="NaN/inf values: error, drop or mean.")] = "error",
    fmt: Format = None,
    key: Key = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --output.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing checkpoint at --output.")] = False,
    streamed: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Read shuffled chunks from disk each epoch instead of loading the table "
            "(default: stream files larger than a quarter of this machine's memory).",
        ),
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows read at a time with --stream; memory holds about 4 chunks.")
    ] = stream.DEFAULT_CHUNK_ROWS,
    quiet: Quiet = False,
) -> None:
    """Train a GMVAE on DATA and write a checkpoint.

    Example: gmvae train data.parquet --k 10 -o model.pt
    """
    # Every option is checked (GMVAE's constructor) before the data is read.
    model = GMVAE(
        k=k, x_dim=x_dim, w_dim=w_dim, hidden=parse_sizes(hidden, "--hidden"),
        mc_samples=mc_samples, lambda_z=lambda_z, likelihood=likelihood, recipe=recipe,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, restarts=restarts,
        device=device, missing=missing,
    )
    check(chunk_rows=chunk_rows)
    # Before the data is read or a minute is spent: an existing model is kept unless told.
    check_target(output, inputs=(data,), replace=force or resume)
    quiet = quiet or not distributed.is_main()  # under torchrun, rank 0 speaks for all
    say = (lambda s: None) if quiet else note
    if streamed is None and stream.should_stream(data):
        say(f"note: {data} is larger than a quarter of this machine's memory, so training "
            "streams it from disk (--no-stream loads it)")
    streamed = stream.should_stream(data) if streamed is None else streamed
    try:
        with Reporter(quiet) as reporter:
            model.fit(
                data, stream=streamed, fmt=fmt, key=key, chunk_rows=chunk_rows,
                columns=parse_list(columns) or None, exclude=parse_list(exclude),
                id_column=id_column, checkpoint_path=output, resume=resume, reporter=reporter,
                note=say,
            )
    except KeyboardInterrupt:
        if DEBUG["on"]:
            raise
        if model.history_ or resume:  # history_ is set by each epoch-end checkpoint
            note(f"interrupted: the last finished epoch is saved in {output}; "
                 f"continue with the same command and --resume")
        else:
            note("interrupted before the first epoch ended; nothing was saved")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        # Under torchrun: leave the process group before exit. Left to the interpreter's
        # teardown, gloo can abort a rank whose peer has already gone (SIGABRT, seen once).
        distributed.shutdown()
    if not distributed.is_main():
        return  # rank 0 reports for every rank
    terms = model.terms_
    say(f"wrote {output}: K={model.config.k}, ELBO {terms['elbo']:.3f}, "
        f"cluster sizes {model.cluster_sizes_}")
    warn_collapse(model)  # a warning, not a note: shown even with --quiet


def warn_collapse(model: GMVAE, say=note) -> None:
    """Say on stderr when fewer than K clusters hold at least 1% of the rows."""
    if not model.cluster_sizes_:  # a checkpoint without sizes: nothing to judge
        return
    used, k = model.effective_clusters(), model.config.k
    if used < k:
        say(f"warning: only {used} of {k} clusters hold at least 1% of the rows "
            f"(sizes {model.cluster_sizes_}); the data may hold fewer clusters than K: "
            f"try --k {used}, compare Ks with gmvae select-k, or try more --epochs, "
            "--restarts or another --lambda")


@app.command()
@handle_errors
def assign(
    model_path: ModelPath,
    data: Annotated[str, typer.Argument(help="Table to assign: .csv, .parquet, .h5, or - for stdin.")],
    output: Output = None,
    probs: Annotated[bool, typer.Option("--probs", help="Add prob_0 … prob_{K-1}.")] = False,
    id_column: IdColumn = None,
    mc_samples: Annotated[int, typer.Option(help="0: posterior means (deterministic); else the mean of p(z|x,w) over this many draws of x and w (seeded by --seed).")] = 0,
    seed: Seed = 0,
    batch_size: BatchSize = 65536,
    device: Device = "auto",
    fmt: Format = None,
    key: Key = None,
    quiet: Quiet = False,
) -> None:
    """Assign each row of DATA to a cluster; CSV on stdout unless -o.

    Example: gmvae assign model.pt input.csv -o clusters.parquet --probs
    """
    if mc_samples < 0:
        raise UserError(f"--mc-samples must be 0 or more, got {mc_samples}")
    write_per_row(
        model_path, data, output,
        lambda model: assign_columns(model, probs=probs, mc_samples=mc_samples),
        description="assigning", id_column=id_column, batch_size=batch_size, device=device,
        fmt=fmt, key=key, quiet=quiet, seed=seed,
    )


@app.command()
@handle_errors
def info(
    model_path: ModelPath,
    as_json: AsJson = False,
) -> None:
    """Show what a checkpoint holds.

    Example: gmvae info model.pt --json
    """
    model = GMVAE.load(model_path)
    summary = model_summary(model)
    if as_json:
        print(json.dumps(summary, indent=2))
        warn_collapse(model)
        return
    table = Table(title=model_path, show_header=False)
    for name, value in summary.items():
        table.add_row(name, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    Console(soft_wrap=True).print(table)
    warn_collapse(model)


def model_summary(model: GMVAE) -> dict:
    """What `gmvae info` shows: plain data only."""
    cfg = model.config
    return {
        "k": cfg.k,
        "input_dim": cfg.input_dim,
        "x_dim": cfg.x_dim,
        "w_dim": cfg.w_dim,
        "hidden": list(cfg.hidden),
        "likelihood": cfg.likelihood,
        "lambda": cfg.lambda_z,
        "mc_samples": cfg.mc_samples,
        "recipe": model.settings.recipe,
        "seed": model.settings.seed,
        "epochs": len(model.history_),
        "columns": model.preprocessor_.columns,
        "id_column": model.id_column_,
        "missing": model.preprocessor_.missing,
        "final_terms": model.terms_,
        "cluster_sizes": model.cluster_sizes_,
        "effective_clusters": model.effective_clusters() if model.cluster_sizes_ else None,
        "package_version": getattr(model, "package_version_", None),
    }


# Commands that live in their own modules (each already wrapped in handle_errors).
app.command()(evaluate.evaluate)
app.command()(sampling.sample)
app.command()(embed.embed)
app.command("select-k")(select_k.command)


def main() -> None:
    if not distributed.context().active:
        app()
        return
    # A torchrun worker leaves without the interpreter's teardown: once training is over and
    # the checkpoint written, destructors of gloo's threads and tensors at exit can still
    # abort a rank now and then ("terminate called without an active exception", SIGABRT),
    # and torchrun would then report a finished run as failed.
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""The `gmvae` command line: every command's options, and thin bodies over the library.

Only typer, rich and the option checks are imported up front: each body imports the
modules it needs (torch among them) when it runs, so `gmvae --help` answers at once and a
mistyped option fails before the data or torch is loaded.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import Annotated

import typer

from gmvae_cli import __version__, ranks
from gmvae_cli.atomic import check_checkpoint_target
from gmvae_cli.errors import UserError
from gmvae_cli.options import (
    DEBUG,
    EXIT_INTERRUPTED,
    AsJson,
    BatchSize,
    Categorical,
    Columns,
    Data,
    Device,
    Epochs,
    Exclude,
    Format,
    Hidden,
    IdColumn,
    Key,
    Lambda,
    LearningRate,
    Likelihood,
    Missing,
    ModelPath,
    Output,
    Quiet,
    Recipe,
    Seed,
    WDim,
    XDim,
    handle_errors,
    parse_list,
    parse_sizes,
)
from gmvae_cli.progress import note
from gmvae_cli.settings import check

DEFAULT_CHUNK_ROWS = 65_536  # data.DEFAULT_CHUNK_ROWS, without importing pandas for --help

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
    data: Data,
    k: Annotated[int, typer.Option("--k", help="Number of clusters K.")] = 10,
    output: Annotated[str, typer.Option("-o", "--output", help="Checkpoint to write.")] = "model.pt",
    recipe: Recipe = "default",
    epochs: Epochs = None,
    batch_size: BatchSize = 128,
    lr: LearningRate = None,
    x_dim: XDim = 10,
    w_dim: WDim = 10,
    hidden: Hidden = "auto",
    mc_samples: Annotated[int, typer.Option(help="Monte-Carlo samples M per row.")] = 1,
    lambda_z: Lambda = 0.5,
    likelihood: Likelihood = "auto",
    restarts: Annotated[int, typer.Option(help="Independent fits; the best ELBO is kept.")] = 1,
    warm_sample: Annotated[int, typer.Option(help="Rows the default recipe's warm start sees (a seeded sample when the table is larger).")] = 50_000,
    outlier_quantile: Annotated[float, typer.Option(
        "--outlier-quantile",
        help="Share of the training rows with the lowest ELBO that sets the outlier threshold "
        "stored in the checkpoint (assign --score, describe, evaluate).",
    )] = 0.01,
    seed: Seed = 0,
    device: Device = "auto",
    columns: Columns = None,
    exclude: Exclude = None,
    id_column: IdColumn = None,
    missing: Missing = "mean",
    categorical: Categorical = "auto",
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
    ] = DEFAULT_CHUNK_ROWS,
    quiet: Quiet = False,
) -> None:
    """Train a GMVAE on DATA and write a checkpoint.

    Example: gmvae train data.parquet --k 10 -o model.pt
    """
    options = {
        "k": k, "x_dim": x_dim, "w_dim": w_dim, "hidden": parse_sizes(hidden, "--hidden"),
        "mc_samples": mc_samples, "lambda_z": lambda_z, "likelihood": likelihood, "recipe": recipe,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "restarts": restarts,
        "device": device, "missing": missing, "categorical": categorical,
        "warm_sample": warm_sample, "outlier_quantile": outlier_quantile,
    }
    check(**options, chunk_rows=chunk_rows)  # every option, before the data is read
    # Before a minute is spent: an existing model is kept unless told otherwise.
    check_checkpoint_target(output, inputs=(data,), replace=force or resume)
    from gmvae_cli import distributed, stream
    from gmvae_cli.api import GMVAE
    from gmvae_cli.progress import Reporter

    model = GMVAE(**options)
    quiet = quiet or not ranks.is_main()  # under torchrun, rank 0 speaks for all
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
                note=say, startup=seconds_since_start(),
            )
    except KeyboardInterrupt:
        if DEBUG["on"]:
            raise
        if model.saved_epoch_ == 0:
            note(f"interrupted during the warm start: its progress is saved in {output}; "
                 "continue with the same command and --resume")
        elif model.saved_epoch_ or resume:
            note(f"interrupted: the last finished epoch is saved in {output}; "
                 f"continue with the same command and --resume")
        else:
            note("interrupted before the first epoch ended; nothing was saved")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        # Under torchrun: leave the process group before exit. Left to the interpreter's
        # teardown, gloo can abort a rank whose peer has already gone (SIGABRT, seen once).
        distributed.shutdown()
    if not ranks.is_main():
        return  # rank 0 reports for every rank
    terms = model.terms_
    say(f"wrote {output}: K={model.config.k}, ELBO {terms['elbo']:.3f}, "
        f"cluster sizes {model.cluster_sizes_}")
    warn_collapse(model)  # a warning, not a note: shown even with --quiet


def seconds_since_start() -> float | None:
    """How long this process has run (start-up and imports, for the stage timings); None
    where /proc does not say (not Linux)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
            return float(uptime.read().split()[0]) - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def warn_collapse(model) -> None:
    """Say on stderr when fewer than K clusters hold at least 1% of the rows."""
    if not model.cluster_sizes_:  # a checkpoint without sizes: nothing to judge
        return
    used, k = model.effective_clusters(), model.config.k
    if used < k:
        note(f"warning: only {used} of {k} clusters hold at least 1% of the rows "
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
    score: Annotated[bool, typer.Option(
        "--score",
        help="Add elbo (the row's ELBO, the model's lower bound on log p(y), with every "
        "expectation taken at the posterior means of x and w: deterministic, no sampling; "
        "docs/describe.md) and outlier (elbo below the threshold stored at training, "
        "train --outlier-quantile).",
    )] = False,
    seed: Seed = 0,
    batch_size: BatchSize = 65536,
    device: Device = "auto",
    fmt: Format = None,
    key: Key = None,
    quiet: Quiet = False,
) -> None:
    """Assign each row of DATA to a cluster; CSV on stdout unless -o.

    Example: gmvae assign model.pt input.csv -o clusters.parquet --probs --score
    """
    if mc_samples < 0:
        raise UserError(f"--mc-samples must be 0 or more, got {mc_samples}")
    from gmvae_cli import rows

    rows.write_per_row(
        model_path, data, output,
        lambda model: rows.assign_columns(model, probs=probs, mc_samples=mc_samples,
                                          score=score, note=note),
        description="assigning", id_column=id_column, batch_size=batch_size, device=device,
        fmt=fmt, key=key, quiet=quiet, seed=seed,
    )


@app.command()
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
    from gmvae_cli import rows

    rows.write_per_row(
        model_path, data, output,
        lambda model: rows.embed_columns(model, with_w=with_w, with_cluster=with_cluster),
        description="embedding", id_column=id_column, batch_size=batch_size, device=device,
        fmt=fmt, key=key, quiet=quiet,
    )


@app.command()
@handle_errors
def info(model_path: ModelPath, as_json: AsJson = False) -> None:
    """Show what a checkpoint holds.

    Example: gmvae info model.pt --json
    """
    from rich.console import Console
    from rich.table import Table

    from gmvae_cli.api import GMVAE

    model = GMVAE.load(model_path)
    summary = model_summary(model)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        table = Table(title=model_path, show_header=False)
        for name, value in summary.items():
            table.add_row(name, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
        Console(soft_wrap=True).print(table)
    warn_collapse(model)


def model_summary(model) -> dict:
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
        "categorical": model.preprocessor_.categorical,
        "categories": model.preprocessor_.categories,
        "final_terms": model.terms_,
        "cluster_sizes": model.cluster_sizes_,
        "effective_clusters": model.effective_clusters() if model.cluster_sizes_ else None,
        "outlier_quantile": model.outlier_quantile if model.outlier_threshold_ is not None else None,
        "outlier_threshold": model.outlier_threshold_,
        "package_version": getattr(model, "package_version_", None),
    }


@app.command()
@handle_errors
def evaluate(
    model_path: ModelPath,
    data: Annotated[str, typer.Argument(help="Table to evaluate: .csv, .parquet, .h5, or - for stdin.")],
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Known labels: a column of DATA, or a file (CSV/Parquet with one column, "
            "or HDF5 with --labels-key).",
        ),
    ] = None,
    labels_key: Annotated[
        str | None, typer.Option("--labels-key", help="HDF5 dataset of the labels, e.g. test/labels.")
    ] = None,
    as_json: AsJson = False,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="Save a PNG: confusion matrix (with labels) and cluster sizes."),
    ] = None,
    seed: Seed = 0,
    device: Device = "auto",
    fmt: Format = None,
    key: Key = None,
) -> None:
    """Score a model on DATA: ELBO terms, cluster sizes and, with --labels, accuracy.

    Example: gmvae evaluate model.pt test.csv --labels digit --plot eval.png
    """
    from gmvae_cli import evaluate as evaluation

    evaluation.run(model_path, data, labels, labels_key, as_json, plot, seed, device, fmt, key)


@app.command()
@handle_errors
def describe(
    model_path: ModelPath,
    data: Annotated[str, typer.Argument(help="Table to describe (the training table or new rows): .csv, .parquet, .h5, or - for stdin.")],
    as_json: AsJson = False,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="Save a PNG heatmap: how far each cluster's mean lies from the table's, per feature, in standard deviations (with --image-shape: one image per cluster)."),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Features listed per cluster, those that set it apart most.")] = 5,
    examples: Annotated[
        str | None,
        typer.Option("--examples", help="Save a PNG of each cluster's most and least typical rows (highest and lowest ELBO) as images (image data)."),
    ] = None,
    image_shape: Annotated[
        str | None,
        typer.Option("--image-shape", help="HxW of one image, e.g. 28x28: for --examples (default: square), and to draw --plot as images."),
    ] = None,
    seed: Seed = 0,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Rows read at a time (default 65,536; fewer for wide tables, about 4 million values)."),
    ] = None,
    device: Device = "auto",
    fmt: Format = None,
    key: Key = None,
    quiet: Quiet = False,
) -> None:
    """Describe what each cluster of MODEL is on DATA, and which rows fit none.

    One pass over DATA, chunk by chunk: per cluster its size, the share of outliers (rows
    whose ELBO is below the threshold stored at training), each feature's mean and standard
    deviation, and the features that set it apart from the whole table; rich tables on
    stdout, or --json. docs/describe.md explains the numbers and their limits.

    Example: gmvae describe model.pt data.parquet --top 3 --plot clusters.png
    """
    from gmvae_cli import plots

    # Every option that needs no model, before the model, torch or the data is loaded.
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    for path, option in ((plot, "--plot"), (examples, "--examples")):
        if path is not None:
            plots.check_png(path, option)
    if image_shape is not None:
        plots.parse_hxw(image_shape)
    from gmvae_cli import describing

    describing.run(model_path, data, as_json, plot, top, examples, image_shape, seed,
                   batch_size, device, fmt, key, quiet)


@app.command()
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
    from gmvae_cli import sampling

    sampling.run(model_path, n, cluster, mean, binary, seed, output, grid, image_shape, device)


@app.command("select-k")
@handle_errors
def select_k(
    data: Data,
    k_range: Annotated[str, typer.Option("--k-range", help="Ks to try: FIRST:LAST, FIRST:LAST:STEP or 4,7,10.")] = "2:20",
    restarts: Annotated[int, typer.Option(help="Models per K (seeds SEED, SEED+1, …); 2 or more measure stability.")] = 3,
    holdout: Annotated[float, typer.Option(help="Share of rows held out for the ELBO (seeded by --seed).")] = 0.2,
    workers: Annotated[int | None, typer.Option(help="Processes training models side by side after the first K (default: one per CPU core; 1 on a GPU). The result does not depend on it.")] = None,
    as_json: AsJson = False,
    plot_path: Annotated[str | None, typer.Option("--plot", help="Also draw the three curves into this PNG.")] = None,
    recipe: Recipe = "default",
    epochs: Epochs = None,
    batch_size: BatchSize = 128,
    lr: LearningRate = None,
    x_dim: XDim = 10,
    w_dim: WDim = 10,
    hidden: Hidden = "auto",
    lambda_z: Lambda = 0.5,
    likelihood: Likelihood = "auto",
    seed: Seed = 0,
    device: Device = "auto",
    columns: Columns = None,
    exclude: Exclude = None,
    missing: Missing = "mean",
    categorical: Categorical = "auto",
    fmt: Format = None,
    key: Key = None,
    quiet: Quiet = False,
) -> None:
    """Compare Ks on DATA and recommend one.

    Trains --restarts short models for each K and reports the held-out ELBO, the effective
    clusters and the stability across restarts; docs/choosing-k.md explains the rule.

    Example: gmvae select-k data.parquet --k-range 2:12 --restarts 3 --plot k.png
    """
    options = {
        "recipe": recipe, "epochs": epochs, "batch_size": batch_size, "lr": lr, "x_dim": x_dim, "w_dim": w_dim,
        "hidden": parse_sizes(hidden, "--hidden"), "lambda_z": lambda_z, "likelihood": likelihood,
        "seed": seed, "device": device, "missing": missing, "categorical": categorical,
    }
    check(**options)
    from gmvae_cli import select_k as sweep

    sweep.run(data, k_range, restarts, holdout, as_json, plot_path, columns, exclude, fmt, key,
              quiet, workers, **options)


def main() -> None:
    """The console script. It leaves without the interpreter's teardown: unloading torch
    and pandas takes about 0.5 s, a tenth of training a small table, and every file is
    complete before a command returns (atomic.py). Under torchrun it also keeps a finished
    rank alive: destructors of gloo's threads and tensors at exit can abort a rank now and
    then ("terminate called without an active exception", SIGABRT), and torchrun would then
    report a finished run as failed."""
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not ranks.context().active:
        atexit._run_exitfuncs()  # what a normal exit runs first (libraries' handlers)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left, or the stream is closed
            pass
    os._exit(code)

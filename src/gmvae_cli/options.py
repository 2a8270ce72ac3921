"""What every command shares: option definitions spelled the same everywhere, and the
error handling that turns bad input into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import signal
from typing import Annotated

import typer

from gmvae_cli.errors import UserError
from gmvae_cli.progress import note

# Set by the app callback's --debug: show tracebacks instead of one-line errors.
DEBUG = {"on": False}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def handle_errors(command):
    """Wrap a command: UserError -> one line + exit 2, Ctrl-C/SIGTERM -> exit 130, bugs -> exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Python leaves SIGINT ignored when the parent ignored it (a background job of a
        # non-interactive shell); `kill -INT` must still stop training with a checkpoint.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly
            _silence_stdout()
            raise typer.Exit(0)
        except UserError as e:
            if DEBUG["on"]:
                raise
            note(f"error: {e}")
            raise typer.Exit(EXIT_USAGE)
        except KeyboardInterrupt:
            if DEBUG["on"]:
                raise
            note("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED)
        except Exception as e:  # a bug, not bad input: still no traceback unless --debug
            if DEBUG["on"]:
                raise
            note(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for details)")
            raise typer.Exit(1)
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)

    return wrapper


def _silence_stdout() -> None:
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. under a test runner)
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_list(text: str | None) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def parse_sizes(text: str, option: str) -> tuple[int, ...] | str:
    if text == "auto":
        return text
    try:
        sizes = tuple(int(part) for part in parse_list(text))
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers such as 500,500, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise UserError(f"{option} takes positive layer sizes such as 500,500, got {text!r}")
    return sizes


# Shared option definitions ------------------------------------------------------------------
Format = Annotated[
    str | None, typer.Option("--format", help="csv, parquet or hdf5 (default: from the suffix).")
]
Key = Annotated[str | None, typer.Option("--key", help="HDF5 dataset path, e.g. train/data.")]
IdColumn = Annotated[
    str | None, typer.Option("--id-column", help="Column carried to the output as the row id.")
]
Output = Annotated[
    str | None, typer.Option("-o", "--output", help="Output .csv or .parquet (default: CSV on stdout).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed: same seed, data and device, same result.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows per batch.")]
ModelPath = Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint from gmvae train.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]
Data = Annotated[str, typer.Argument(help="Feature table: .csv (also .csv.gz), .parquet, .h5, or - for CSV on stdin.")]

# The model and training options train and select-k share.
Recipe = Annotated[str, typer.Option("--recipe", help="default (warm start + ELBO) or paper (the spec's ELBO alone).")]
Epochs = Annotated[int | None, typer.Option(
    "--epochs",
    help="GMVAE epochs (default: the recipe's: default 20 = 10 guided + 10 ELBO, after 20 "
    "of autoencoder pretraining, each phase at least 100 steps; paper 50). The default recipe keeps its proportions: "
    "--epochs 10 runs 5 guided, 5 ELBO and 10 pretraining epochs.",
)]
LearningRate = Annotated[float | None, typer.Option(
    "--lr",
    help="Adam learning rate (default 1e-3). The default recipe pretrains and guides at this "
    "rate and runs its ELBO epochs at a tenth of it.",
)]
XDim = Annotated[int, typer.Option("--x-dim", help="Dimension of the latent x, where clusters live.")]
WDim = Annotated[int, typer.Option("--w-dim", help="Dimension of the latent w.")]
Hidden = Annotated[str, typer.Option("--hidden", help="Encoder layer sizes such as 500,500 (the decoder mirrors them), or auto: two layers of 8 units per input column, from 64 to 500.")]
Lambda = Annotated[float, typer.Option("--lambda", help="z-prior threshold λ.")]
Likelihood = Annotated[str, typer.Option("--likelihood", help="auto, gaussian or bernoulli.")]
Columns = Annotated[str | None, typer.Option("--columns", help="Comma-separated feature columns.")]
Exclude = Annotated[str | None, typer.Option("--exclude", help="Comma-separated columns to leave out (labels, ids).")]
Categorical = Annotated[str, typer.Option("--categorical", help="Text, category and boolean columns: auto (one-hot encode those with at most 50 distinct values, and at most one per two rows; skip the others with a note) or ignore (skip them all).")]
Missing = Annotated[str, typer.Option("--missing", help="NaN/inf values: mean (fill with the column mean, with a note), drop (leave the row out) or error.")]

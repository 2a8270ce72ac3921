"""Checkpoint files: one `.pt` holding tensors and plain data only.

Loading uses `torch.load(weights_only=True)`, whose unpickler accepts tensors and plain
containers and refuses anything else, so a file crafted to run code is rejected, never run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import tempfile
import threading
import zipfile
from pathlib import Path

import torch

from gmvae_cli import __version__
from gmvae_cli.errors import UserError

FORMAT = "gmvae-checkpoint"
FORMAT_VERSION = 1


def save(path: str, payload: dict) -> None:
    """Write atomically: a temporary file beside the target, then a rename."""
    target = Path(path)
    folder = target.parent.resolve()
    if not folder.is_dir():
        raise UserError(f"cannot write checkpoint {path}: folder {folder} does not exist")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "package_version": __version__, **payload}
    # Ctrl-C or SIGTERM are held back while the file is written and renamed, and delivered
    # right after: an interrupt can never leave a half-written temporary file behind.
    with _signals_deferred():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        except OSError as e:
            raise UserError(f"cannot write checkpoint {path}: {e.strerror}; choose another -o path")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _signals_deferred():
    deferred = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_target(path: str, inputs: tuple[str, ...] = ()) -> None:
    """Fail early (before training) if the checkpoint could not be written to `path`."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"cannot write checkpoint {path}: it is a directory; pass a file such as model.pt")
    for given in inputs:
        if given != "-" and Path(given).exists() and Path(given).resolve() == target.resolve():
            raise UserError(f"checkpoint {path} is also the input data; write to another -o path")
    folder = target.parent.resolve()
    if not folder.is_dir():
        raise UserError(f"cannot write checkpoint {path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror}; choose another -o path")
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def load(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such checkpoint; train one with `gmvae train`")
    if p.is_dir():
        raise UserError(f"{path} is a directory; pass a checkpoint file")
    # torch.save writes a zip archive; anything else (text, a bare pickle, a truncated file)
    # is refused before any unpickling starts.
    if not zipfile.is_zipfile(p):
        raise UserError(f"{path} is not a gmvae checkpoint (unreadable or truncated); retrain it")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds objects other than tensors and plain data; refused to load it "
            "(it may run code). Use a checkpoint written by `gmvae train`"
        )
    except Exception:  # noqa: BLE001 (damaged archives raise KeyError, RuntimeError, …)
        raise UserError(f"{path} is not a gmvae checkpoint (unreadable or truncated); retrain it")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a gmvae checkpoint; pass a file written by `gmvae train`")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {version}, newer than this gmvae reads "
            f"({FORMAT_VERSION}); upgrade gmvae"
        )
    return payload

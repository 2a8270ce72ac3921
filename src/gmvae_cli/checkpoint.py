"""Checkpoint files: one `.pt` holding tensors and plain data only.

Loading uses `torch.load(weights_only=True)`, whose unpickler accepts tensors and plain
containers and refuses anything else, so a file crafted to run code is rejected, never run.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from gmvae_cli import __version__
from gmvae_cli.atomic import atomic_write
from gmvae_cli.errors import UserError

FORMAT = "gmvae-checkpoint"
FORMAT_VERSION = 1


def save(path: str, payload: dict) -> None:
    """Write atomically; Ctrl-C or SIGTERM wait until the file is in place, so an interrupt
    never leaves a half-written checkpoint behind."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "package_version": __version__, **payload}
    with atomic_write(path, "checkpoint ", hold_signals=True) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


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

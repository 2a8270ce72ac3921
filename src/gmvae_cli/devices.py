"""Which device runs the networks, and the random state that makes a run reproducible."""

from __future__ import annotations

import random

import numpy as np
import torch

from gmvae_cli.errors import UserError
from gmvae_cli.ranks import context
from gmvae_cli.settings import check_device


def resolve(name: str) -> torch.device:
    """auto: CUDA, then MPS, then the CPU; a named device must exist. Under torchrun each
    process needs a GPU of its own (nccl refuses two ranks on one GPU), so auto takes CUDA
    only where the node has a GPU for every process."""
    check_device(name)
    gpus_short = gpus_for_processes()
    if name == "auto":
        if torch.cuda.is_available() and not gpus_short:
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "cuda" and gpus_short:
        raise UserError(gpus_short)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def gpus_for_processes() -> str:
    """Why this node lacks a GPU per torchrun process, or "" (enough, or no torchrun)."""
    ctx = context()
    if not ctx.active or not torch.cuda.is_available():
        return ""
    visible = torch.cuda.device_count()
    if visible >= ctx.local_world:
        return ""
    return (f"--device cuda needs one GPU per process: torchrun started {ctx.local_world} on "
            f"this node and {visible} GPU(s) are visible; use --nproc-per-node {visible} "
            "or --device cpu")


def of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device) -> dict:
    """The global random state that training draws from: the CPU's and, on CUDA, the
    device's own (reparameterisation noise is drawn there), so a resumed run repeats it."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

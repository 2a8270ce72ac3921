"""A trained network over preprocessed rows, in evaluation batches: the numbers behind
predict, transform, score_samples and sample (api.GMVAE), and behind the per-row writers
(rows.py) and describe, which call these on each chunk's matrix directly."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from gmvae_cli import devices
from gmvae_cli.batching import EVAL_BATCH
from gmvae_cli.model import GMVAENet


@torch.no_grad()
def batched(net: GMVAENet, inputs: np.ndarray, fn: Callable, width: int) -> np.ndarray:
    """fn over the rows of inputs in evaluation batches, gathered as one (rows, width) array."""
    net.eval()
    device = devices.of(net)
    parts = [fn(torch.from_numpy(inputs[s : s + EVAL_BATCH]).to(device)).cpu()
             for s in range(0, len(inputs), EVAL_BATCH)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, width), np.float32)


@contextmanager
def seeded(net: GMVAENet, seed: int | None):
    """Draws inside come from `seed` (when given); the global random state is left as it was."""
    device = devices.of(net)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                               enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def log_proba(net: GMVAENet, matrix: np.ndarray, mc_samples: int = 0) -> np.ndarray:
    """log p(z | y) (rows, K); mc_samples = 0 uses the posterior means."""
    return batched(net, matrix, lambda y: net.cluster_log_proba(y, mc_samples), net.cfg.k)


def embedding_columns(net: GMVAENet, with_w: bool = False) -> list[str]:
    """Names of embedding's columns: x_0 … x_{x_dim-1}, then w_0 … with with_w."""
    names = [f"x_{j}" for j in range(net.cfg.x_dim)]
    return names + ([f"w_{j}" for j in range(net.cfg.w_dim)] if with_w else [])


def embedding(net: GMVAENet, matrix: np.ndarray, with_w: bool = False) -> np.ndarray:
    """Posterior means of x (and of w with with_w): (rows, x_dim [+ w_dim])."""
    def means(y):
        x, w = net.embed(y)  # (batch, x_dim), (batch, w_dim)
        return torch.cat([x, w], dim=1) if with_w else x

    return batched(net, matrix, means, len(embedding_columns(net, with_w)))


def row_scores(net: GMVAENet, matrix: np.ndarray, mc_samples: int = 0,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ELBO (rows,), log p(z | y) (rows, K)) in one pass. With mc_samples = 0 the
    log-probabilities equal log_proba's (the same rule) and no draws are made."""
    def both(y):
        terms = net.row_terms(y, mc_samples)
        return torch.cat([terms.elbo.unsqueeze(1), terms.log_proba], dim=1)

    with seeded(net, seed if mc_samples > 0 else None):
        found = batched(net, matrix, both, net.cfg.k + 1)
    return found[:, 0], found[:, 1:]


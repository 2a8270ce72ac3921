"""The default recipe's warm start: pretrained autoencoder codes, UMAP + GMM pseudo-clusters,
and a prior network initialised to them.

Why: a GMVAE trained from scratch finds poor, seed-dependent clusters (the paper's own K = 10
spread is 4-10 points). Pixels and plain autoencoder codes cluster badly; what separates
digits-like data is the k-nearest-neighbour structure that UMAP respects. So we use UMAP + a
full-covariance GMM on the pretrained codes only to *start* the GMVAE: its prior components are
set to the clusters' code statistics, and the recipe's guided phase (recipe.py) teaches the
encoder and prior those clusters. The GMVAE itself assigns, samples and scores afterwards.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gmvae_cli.batching import index_batches
from gmvae_cli.model import GMVAENet

Report = Callable[[str, float], None] | None


@dataclass(frozen=True)
class WarmStartSettings:
    pretrain_epochs: int = 20  # autoencoder epochs before UMAP
    pretrain_lr: float = 1e-3
    umap_dims: int = 5  # 10 dims gave the GMM bimodal restarts (0.81 vs 0.95); 5 is steadier
    gmm_inits: int = 10  # k-means-initialised restarts, best likelihood kept (unsupervised);
    # single fits often split one digit and merge two (0.81 vs 0.94 on MNIST)
    umap_neighbours: int = 20
    umap_min_rows: int = 500  # below this, no UMAP (its graph is too thin to help), and the
    # GMM sees the columns themselves where they are no wider than the codes (warm_start)
    # UMAP's neighbours by exact search up to here (pseudo_responsibilities): 4 s for 30k rows,
    # 43 s for 100k (square of the rows); pynndescent's ~20 s compile is cheaper past ~50k
    exact_knn_max_rows: int = 50_000
    prior_weight_scale: float = 0.01  # shrink β's output weights so every w gives ~ the init
    autoencoders: int = 2  # codes of independently initialised autoencoders, concatenated:
    # one autoencoder's codes sometimes merge two digits (MNIST seed 4: 0.82 with UMAP + GMM);
    # two together gave 0.943-0.949 on every pair tried, including that seed's


DEFAULT_SETTINGS = WarmStartSettings()
UMAP_SMALL_DATA = 4096  # umap-learn computes all distances itself below this many rows


def pretrain_autoencoder(
    net: GMVAENet,
    data: torch.Tensor,
    settings: WarmStartSettings,
    batch_size: int,
    device: torch.device,
    gen: torch.Generator,
    report: Report = None,
) -> None:
    """Train the encoder's x-mean path and the decoder as a deterministic autoencoder."""
    params = list(net.encoder.trunk.parameters()) + list(net.encoder.x_head.parameters())
    params += list(net.decoder.parameters())
    opt = torch.optim.Adam(params, lr=settings.pretrain_lr)
    net.train()
    for epoch in range(settings.pretrain_epochs):
        for idx in index_batches(len(data), batch_size, gen):
            y = data[idx].to(device)
            x_mu = net.encoder(y)[0]
            loss = -net.decoder.log_likelihood(y, x_mu).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if report:
            report("pretrain", (epoch + 1) / settings.pretrain_epochs)


@torch.no_grad()
def encode_means(net: GMVAENet, data: torch.Tensor, device: torch.device) -> torch.Tensor:
    net.eval()
    out = [net.encoder(data[i : i + 4096].to(device))[0].cpu() for i in range(0, len(data), 4096)]
    net.train()
    return torch.cat(out)


def pseudo_responsibilities(codes: np.ndarray, k: int, seed: int, settings: WarmStartSettings) -> np.ndarray:
    """UMAP on the codes, then a full-covariance GMM on the embedding: (N, K) responsibilities."""
    from sklearn.mixture import GaussianMixture

    n, dim = codes.shape
    if n < k:
        raise ValueError(f"cannot make {k} clusters from {n} rows")
    emb = codes
    # UMAP needs a real neighbourhood graph and only helps when it reduces the dimension;
    # on tiny tables it is also mostly numba compile time, so the GMM sees the codes directly.
    if n >= settings.umap_min_rows and dim > settings.umap_dims:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))
        import umap  # slow to import (numba); only the warm start needs it

        neighbours = min(settings.umap_neighbours, n - 1)
        # Exact neighbours by matrix products (0.5 s for 10k rows) instead of UMAP's own
        # approximate search (pynndescent, from 4,096 rows; below it UMAP is exact itself),
        # which spends ~20 s of every run compiling numba code.
        exact = None
        if UMAP_SMALL_DATA <= n <= settings.exact_knn_max_rows:
            exact = exact_neighbours(codes, neighbours)
        reducer = umap.UMAP(
            n_components=settings.umap_dims,
            n_neighbors=neighbours,
            min_dist=0.0,  # tight clumps: what a GMM separates best
            random_state=seed,  # reproducible, which makes UMAP single-threaded
            n_jobs=1,
            precomputed_knn=exact or (None, None, None),
        )
        with warnings.catch_warnings():  # UMAP's notes are not for our users' stderr
            warnings.simplefilter("ignore")
            emb = reducer.fit_transform(codes)
    gmm = GaussianMixture(
        k, covariance_type="full", random_state=seed, n_init=settings.gmm_inits, reg_covar=1e-4
    ).fit(emb)
    return gmm.predict_proba(emb)


@torch.no_grad()
def exact_neighbours(
    codes: np.ndarray, k: int, block_elements: int = 2**25
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest rows, nearest first (itself, or a duplicate of it), and their
    Euclidean distances, as UMAP's `precomputed_knn` takes them; blocks of rows keep each
    block's distance matrix near 128 MB."""
    x = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32))
    squared = (x * x).sum(1)
    index = np.empty((len(x), k), dtype=np.int64)
    distance = np.empty((len(x), k), dtype=np.float32)
    block = max(1, block_elements // len(x))
    for start in range(0, len(x), block):
        rows = slice(start, start + block)
        d2 = (squared[rows, None] - 2.0 * x[rows] @ x.T + squared[None, :]).clamp_min_(0.0)
        # A row's distance to itself must be exactly 0 (rounding leaves ~1e-3): UMAP takes
        # the first non-zero distance as the nearest neighbour's.
        d2[torch.arange(d2.shape[0]), torch.arange(start, start + d2.shape[0])] = 0.0
        nearest, at = torch.topk(d2, k, dim=1, largest=False)  # sorted, nearest first
        index[rows], distance[rows] = at.numpy(), nearest.sqrt().numpy()
    return index, distance


@torch.no_grad()
def init_prior(net: GMVAENet, codes: torch.Tensor, resp: torch.Tensor, settings: WarmStartSettings) -> None:
    """Make every w map to the clusters' code means and variances (β's output biases)."""
    nk = resp.sum(0).clamp_min(1e-6)  # (K,)
    means = (resp.T @ codes) / nk[:, None]  # (K, x_dim)
    var = (resp.T @ codes.pow(2)) / nk[:, None] - means.pow(2)
    var = var.clamp_min(1e-4 * codes.var(0).mean())
    p = net.prior
    for layer, value in ((p.means, means), (p.logvars, var.log())):
        layer.weight.mul_(settings.prior_weight_scale)
        layer.bias.copy_(value.reshape(-1).to(layer.bias.device))


def warm_start(
    net: GMVAENet,
    data: torch.Tensor,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    report: Report = None,
    settings: WarmStartSettings = DEFAULT_SETTINGS,
) -> torch.Tensor:
    """Pretrain `net` in place, initialise its prior network, return (N, K) pseudo-responsibilities.

    The pseudo-responsibilities come from UMAP + GMM on the codes of `net` and of
    `settings.autoencoders - 1` more autoencoders of the same shape, trained only for this;
    for a small table no wider than those codes, from a GMM on its own standardised columns.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # Codes learnt from a few hundred rows add noise, and no reduction to a narrow table: the
    # GMM clusters its columns instead (mean ARI, seeds 0-3: iris 0.61 -> 0.92, wine 0.82 ->
    # 0.88; docs/benchmarks.md), and only the GMVAE's own autoencoder is pretrained.
    on_inputs = (len(data) < settings.umap_min_rows
                 and data.shape[1] <= settings.autoencoders * net.cfg.x_dim)
    autoencoders = 1 if on_inputs else settings.autoencoders
    codes = _pretrained_codes(net, data, settings, batch_size, device, gen, report, 0, autoencoders)
    views = [data.float() if on_inputs else codes]
    for extra in range(1, autoencoders):
        helper = GMVAENet(net.cfg).to(device)  # same shape, its own initialisation
        views.append(_pretrained_codes(helper, data, settings, batch_size, device, gen, report,
                                       extra, autoencoders))
    if report:
        report("umap", 0.0)
    # Standardise each view so every autoencoder weighs the same in the neighbourhood graph.
    joined = torch.cat([_standardised(v) for v in views], dim=1)
    resp = pseudo_responsibilities(joined.numpy(), net.cfg.k, seed, settings)
    resp_t = torch.from_numpy(resp).float()
    init_prior(net, codes, resp_t, settings)
    if report:
        report("umap", 1.0)
    return resp_t


def _standardised(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean(0)) / values.std(0).clamp_min(1e-8)


def _pretrained_codes(net, data, settings, batch_size, device, gen, report, index: int, count: int):
    stage = "pretrain" if count == 1 else f"pretrain {index + 1}/{count}"
    pretrain_autoencoder(net, data, settings, batch_size, device, gen,
                         (lambda _, f: report(stage, f)) if report else None)
    return encode_means(net, data, device)

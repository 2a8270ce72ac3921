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
from torch import nn

from gmvae_cli.batching import EVAL_BATCH, index_batches
from gmvae_cli.model import Encoder, GMVAENet, ModelConfig

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
    sample_rows: int = 50_000  # the warm start sees at most this many rows (--warm-sample)
    place_neighbours: int = 10  # rows outside the sample take their nearest sample rows' clusters
    autoencoders: int = 2  # codes of independently initialised autoencoders, concatenated:
    # one autoencoder's codes sometimes merge two digits (MNIST seed 4: 0.82 with UMAP + GMM);
    # two together gave 0.943-0.949 on every pair tried, including that seed's


DEFAULT_SETTINGS = WarmStartSettings()
UMAP_SMALL_DATA = 4096  # umap-learn computes all distances itself below this many rows


def pretrain(
    nets: list[GMVAENet],
    sample: torch.Tensor,
    settings: WarmStartSettings,
    batch_size: int,
    device: torch.device,
    seed: int,
    report: Report,
    save: Callable[[dict], None],
    state: dict | None = None,
) -> None:
    """Train each net's encoder x-mean path and decoder as a deterministic autoencoder, one
    net after the other; `save` gets a resumable state after every epoch, and `state` (one
    such) continues from there with the same result as an uninterrupted run."""
    gen = torch.Generator().manual_seed(seed)
    first, start = 0, 0
    if state is not None:
        first, start = state["autoencoder"], state["epoch"]
        gen.set_state(state["shuffle"])
        for net, saved in zip(nets[1:], state["helpers"]):
            net.load_state_dict(saved)
    for i in range(first, len(nets)):
        net = nets[i]
        params = list(net.encoder.trunk.parameters()) + list(net.encoder.x_head.parameters())
        params += list(net.decoder.parameters())
        opt = torch.optim.Adam(params, lr=settings.pretrain_lr)
        if state is not None and i == first and state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
        stage = "pretrain" if len(nets) == 1 else f"pretrain {i + 1}/{len(nets)}"
        net.train()
        for epoch in range(start if i == first else 0, settings.pretrain_epochs):
            for idx in index_batches(len(sample), batch_size, gen):
                y = sample[idx].to(device)
                x_mu = net.encoder(y)[0]
                loss = -net.decoder.log_likelihood(y, x_mu).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            report(stage, (epoch + 1) / settings.pretrain_epochs)
            done = epoch + 1 == settings.pretrain_epochs
            save({
                "autoencoder": i + done, "epoch": 0 if done else epoch + 1,
                "optimizer": None if done else opt.state_dict(), "shuffle": gen.get_state(),
                "helpers": [helper.state_dict() for helper in nets[1:]],
            })


@torch.no_grad()
def encode_means(net: GMVAENet, data: torch.Tensor, device: torch.device) -> torch.Tensor:
    net.eval()
    out = [net.encoder(data[i : i + EVAL_BATCH].to(device))[0].cpu()
           for i in range(0, len(data), EVAL_BATCH)]
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


class View(nn.Module):
    """The space the pseudo-clusters are found in, for any row: the standardised codes of
    frozen copies of the pretrained encoders, joined, or the standardised inputs themselves
    (no encoders). It places rows outside the warm start's sample among its clusters."""

    def __init__(self, config: ModelConfig, encoders: int, center: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleList([Encoder(config) for _ in range(encoders)])
        self.register_buffer("center", center)  # (width,)
        self.register_buffer("scale", scale)

    @classmethod
    def of(cls, nets: list[GMVAENet] | None, sample: torch.Tensor, device: torch.device) -> View:
        """A view fitted on the sample: from the nets' encoders, or the inputs (nets None)."""
        config = nets[0].cfg if nets else ModelConfig(input_dim=sample.shape[1])
        view = cls(config, len(nets or []), torch.zeros(0), torch.zeros(0))
        for mine, net in zip(view.encoders, nets or []):
            mine.load_state_dict(net.encoder.state_dict())
        raw = view.raw(sample, device)
        view.center, view.scale = raw.mean(0), raw.std(0).clamp_min(1e-8)
        return view

    @torch.no_grad()
    def raw(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not len(self.encoders):
            return rows.float()
        self.to(device).eval()
        parts = []
        for start in range(0, len(rows), EVAL_BATCH):
            y = rows[start : start + EVAL_BATCH].to(device)
            parts.append(torch.cat([enc(y)[0] for enc in self.encoders], dim=1).cpu())
        return torch.cat(parts)  # (rows, encoders * x_dim)

    def forward(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Standardised: every encoder (or column) weighs the same in the neighbour graph."""
        return (self.raw(rows, device) - self.center.cpu()) / self.scale.cpu()

    def to_state(self) -> dict:
        return {"config": self.config.to_dict(), "encoders": len(self.encoders),
                "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> View:
        view = cls(ModelConfig.from_dict(state["config"]), state["encoders"],
                   torch.zeros(0), torch.zeros(0))
        view.center = state["state_dict"]["center"]
        view.scale = state["state_dict"]["scale"]
        view.load_state_dict(state["state_dict"])
        return view


def autoencoders(sample: torch.Tensor, config: ModelConfig, settings: WarmStartSettings) -> int:
    """How many autoencoders the warm start trains: none but the GMVAE's own for a small
    table no wider than the joined codes (its own columns are clustered: codes learnt from a
    few hundred rows add noise and no reduction), else `settings.autoencoders`."""
    if clusters_inputs(sample, config, settings):
        return 1
    return settings.autoencoders


def clusters_inputs(sample: torch.Tensor, config: ModelConfig, settings: WarmStartSettings) -> bool:
    # Mean ARI, seeds 0-3: iris 0.61 -> 0.92, wine 0.82 -> 0.88 (docs/benchmarks.md).
    return (len(sample) < settings.umap_min_rows
            and sample.shape[1] <= settings.autoencoders * config.x_dim)


def pseudo_clusters(
    nets: list[GMVAENet],
    sample: torch.Tensor,
    seed: int,
    device: torch.device,
    report: Report,
    settings: WarmStartSettings = DEFAULT_SETTINGS,
) -> tuple[torch.Tensor, View]:
    """(n, K) pseudo-responsibilities of the sample rows, and the view they were found in.

    The first net is the GMVAE itself: its prior network is initialised to the clusters.
    """
    net = nets[0]
    report("umap", 0.0)
    view = View.of(None if clusters_inputs(sample, net.cfg, settings) else nets, sample, device)
    joined = view(sample, device)
    resp = torch.from_numpy(pseudo_responsibilities(joined.numpy(), net.cfg.k, seed, settings)).float()
    init_prior(net, encode_means(net, sample, device), resp, settings)
    report("umap", 1.0)
    return resp, view


@torch.no_grad()
def place(view: View, sample_view: torch.Tensor, sample_resp: torch.Tensor, rows: torch.Tensor,
          device: torch.device, neighbours: int) -> torch.Tensor:
    """Responsibilities of rows outside the sample: the mean over their nearest sample rows
    in the view (the pseudo-clusters come from a neighbour graph, so neighbours carry them)."""
    x = view(rows, device)  # (B, d)
    d2 = (x * x).sum(1, keepdim=True) - 2.0 * x @ sample_view.T + (sample_view * sample_view).sum(1)
    nearest = torch.topk(d2, min(neighbours, len(sample_view)), dim=1, largest=False).indices
    return sample_resp[nearest].mean(1)  # (B, K)


def _standardised(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean(0)) / values.std(0).clamp_min(1e-8)

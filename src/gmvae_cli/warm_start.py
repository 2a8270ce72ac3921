"""The default recipe's warm start: pretrained autoencoder codes, pseudo-clusters of a sample
of rows, and a prior network initialised to them.

Why: a GMVAE trained from scratch finds poor, seed-dependent clusters (the paper's own K = 10
spread is 4-10 points). Two ways to find the pseudo-clusters suit different tables:
- a Gaussian mixture on the columns themselves (standardised, mean-filled gaps imputed,
  discrete columns dequantised, power-transformed where BIC prefers it, PCA where the table
  is wide): blobs, elongated clusters, most measurement tables;
- a mixture on a neighbour-graph embedding (UMAP's method, neighbour_embedding.py) of the
  columns, or of autoencoder codes for large image-like tables: digits, manifolds, one-hot
  blocks.
Neither wins everywhere, and labels may not choose, so both run twice with different seeds
and the one that finds the same partition again (higher stability, the adjusted Rand index
between its two runs) is kept; on a tie, the plainer mixture on the columns (so when the
columns' runs agree the graph cannot win and is not built: blobs skip it). A graph kept on
the columns gives the clusters of a third mixture, on four seeds' embeddings side by side
(Spaces.joint). On large wide tables, where the columns' mixture only sees a few principal
components, the graph of codes is kept unless it is unstable
(WarmStartSettings.codes_graph_floor), and its clusters are those of the most modular of
four seeds' layouts (Spaces.most_modular). The prior network is then set to the chosen
clusters' code statistics, and the recipe's guided phase (recipe.py) teaches the encoder
and prior those clusters. The GMVAE itself assigns, samples and scores afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from gmvae_cli import clustering, neighbour_embedding, power
from gmvae_cli.batching import EVAL_BATCH, index_batches
from gmvae_cli.model import Encoder, GMVAENet, ModelConfig
from gmvae_cli.optimizer import adam

Report = Callable[[str, float], None] | None


@dataclass(frozen=True)
class WarmStartSettings:
    pretrain_epochs: int = 20  # autoencoder epochs before the pseudo-clusters
    # On the codes path the pseudo-clusters are found in the autoencoders' codes, and 20
    # epochs of a 10,000-row sample (1,580 steps) leave them undertrained: each autoencoder
    # takes at least this many steps there (MNIST-test: 51 epochs; a 50,000-row sample's 20
    # epochs already take 7,820), so never more than a full sample's pretraining costs.
    codes_pretrain_steps: int | None = 4_000
    pretrain_lr: float = 1e-3
    sample_rows: int = 50_000  # the warm start sees at most this many rows (--warm-sample)
    place_neighbours: int = 10  # rows outside the sample take their nearest sample rows' clusters
    embed_dims: int = 5  # 10 dims gave the GMM bimodal restarts (MNIST 0.81 vs 0.95); 5 is steadier
    embed_neighbours: int = 20
    # The layout's epochs on autoencoder codes (None: umap-learn's rule, 500 up to 10,000
    # rows, else 200, which the columns keep). The graph of codes clusters as well after
    # 200 epochs, in about a third of the time (docs/model.md).
    codes_embed_epochs: int | None = 200
    embed_min_rows: int = 100  # below this a neighbour graph is too thin to cluster on
    # Layouts the joint mixture sees side by side (Spaces.joint): the two seeds' own and
    # more from the next seeds. Each layout tears the graph its own way; with two, one
    # digits seed in ten (the 1,797-row digits) kept a partition that split the 1s three
    # ways (accuracy 0.89), with four every seed of 0-9 scored 0.934-0.941 (docs/model.md).
    joint_layouts: int = 4
    # On the codes path the graph way's clusters come from the most modular of this many
    # layouts' mixtures (Spaces.most_modular): there the layout, not the mixture's start,
    # decides which digits merge (MNIST-test seed 2: 0.947-0.958 over four layouts), and
    # the graph's modularity ranked the layouts as accuracy does (docs/model.md).
    codes_layouts: int = 4
    gmm_inits: int = 10  # k-means-initialised restarts, best likelihood kept (unsupervised);
    # single fits often split one digit and merge two (0.81 vs 0.94 on MNIST)
    # The columns' mixture takes the covariance type of lowest BIC (clustering.mixture_by_bic):
    # a full covariance per cluster overfits a table of few rows per column (wine, 178 × 13,
    # gets axis-aligned ones) and a shared one suits clusters of one shape. The graph's
    # embedding keeps full covariances, as N2D fits them there.
    columns_covariances: tuple[str, ...] = clustering.COVARIANCES
    columns_max_dims: int = 10  # the columns' mixture runs on PCA to this many dims past
    columns_pca_above: int = 30  # this many columns (a full covariance needs rows per dim)
    graph_max_dims: int = 50  # the neighbour graph of a wider table is built on PCA to this
    # Autoencoder codes replace the columns in the neighbour graph for tables at least this
    # large and wide: on MNIST and USPS codes beat the pixels (0.947 vs 0.87 MNIST), on the
    # 1,797-row digits the pixels beat codes learnt from so few rows (0.94 vs 0.76-0.87).
    codes_min_rows: int = 5_000
    codes_min_width: int = 50
    autoencoders: int = 2  # codes of independently initialised autoencoders, concatenated:
    # one autoencoder's codes sometimes merge two digits (MNIST seed 4: 0.82 with UMAP + GMM);
    # two together gave 0.943-0.949 on every pair tried, including that seed's
    stability_margin: float = 0.01  # the graph's stability must beat the columns' by this
    # On the codes path (large, wide tables) the columns' mixture sees 10 principal components
    # of hundreds of columns, and its stability says how deterministic a mixture is in that
    # reduced space, not how good the partition is (USPS seeds 0 and 2: columns stability
    # 0.994 and 0.9995 at accuracy 0.60 and 0.56; graph 0.977 and 0.992 at 0.96). There the
    # graph is kept unless its own stability falls below this.
    codes_graph_floor: float = 0.9
    discrete_max_values: int = 32  # a column with at most this many values on a grid is discrete
    impute_neighbours: int = 5  # a mean-filled cell takes its nearest rows' median (imputed)
    # The columns' mixture is also fitted to the columns Yeo-Johnson transformed, and kept
    # where its BIC, counted on the columns' own scale, is lower (_columns_mixture).
    columns_power: bool = True
    prior_weight_scale: float = 0.01  # shrink β's output weights so every w gives ~ the init


DEFAULT_SETTINGS = WarmStartSettings()


def pretrain_epochs(sample: torch.Tensor, settings: WarmStartSettings, batch_size: int) -> int:
    """Epochs each autoencoder trains: settings.pretrain_epochs, and on the codes path at
    least settings.codes_pretrain_steps steps (None: the epochs as they are)."""
    steps = settings.codes_pretrain_steps
    if steps is None or not uses_codes(sample, settings):
        return settings.pretrain_epochs
    per_epoch = -(-len(sample) // batch_size)
    return max(settings.pretrain_epochs, -(-steps // per_epoch))


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
    epochs = pretrain_epochs(sample, settings, batch_size)
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
        opt = adam(params, device, lr=settings.pretrain_lr)
        if state is not None and i == first and state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
        stage = "pretrain" if len(nets) == 1 else f"pretrain {i + 1}/{len(nets)}"
        net.train()
        for epoch in range(start if i == first else 0, epochs):
            for idx in index_batches(len(sample), batch_size, gen):
                y = sample[idx].to(device)
                x_mu = net.encoder(y)[0]
                loss = -net.decoder.log_likelihood(y, x_mu).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            report(stage, (epoch + 1) / epochs)
            done = epoch + 1 == epochs
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
    def of(cls, nets: list[GMVAENet] | None, sample: torch.Tensor, device: torch.device,
           indicators: list[float] | None = None) -> View:
        """A view fitted on the sample: from the nets' encoders, or the inputs (nets None).
        `indicators` (the inputs' one-hot values, 0 for numbers): those columns are scaled
        back to plain 0/1 instead of standardised."""
        config = nets[0].cfg if nets else ModelConfig(input_dim=sample.shape[1])
        view = cls(config, len(nets or []), torch.zeros(0), torch.zeros(0))
        for mine, net in zip(view.encoders, nets or []):
            mine.load_state_dict(net.encoder.state_dict())
        raw = view.raw(sample, device)
        view.center, view.scale = raw.mean(0), raw.std(0).clamp_min(1e-8)
        if indicators is not None:
            values = torch.as_tensor(indicators, dtype=view.scale.dtype)
            view.center = torch.where(values > 0, 0.0, view.center)
            view.scale = torch.where(values > 0, values, view.scale)
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


def uses_codes(sample: torch.Tensor, settings: WarmStartSettings) -> bool:
    return len(sample) >= settings.codes_min_rows and sample.shape[1] > settings.codes_min_width


def autoencoders(sample: torch.Tensor, settings: WarmStartSettings) -> int:
    """How many autoencoders the warm start trains: the GMVAE's own, plus helpers whose codes
    join its own in the neighbour graph of a large image-like table."""
    return settings.autoencoders if uses_codes(sample, settings) else 1


@dataclass
class Candidate:
    """One way to find the pseudo-clusters: two runs (seeds) and how much they agree."""

    name: str
    runs: list[np.ndarray]  # (n, K) responsibilities of each run
    stability: float  # adjusted Rand index between the runs' hard clusters
    covariance: str = "full"  # the first run's covariance type
    power: bool = False  # the first run's columns were power-transformed


class ColumnsSpace(NamedTuple):
    """The columns as the columns' mixture sees them for one seed (_columns_space)."""

    plain: np.ndarray  # (n, d)
    powered: power.Transformed | None  # None where not tried (wide tables, or turned off)


@dataclass
class Spaces:
    """What the pseudo-clusters are found in, whatever K is (select-k builds it once per
    seed): each way's space for each of its two seeds, and the views that place other rows.
    The graph's embeddings are built the first time a K needs them (`graph`)."""

    columns: list[ColumnsSpace]  # per seed
    columns_view: View
    graph_view: View
    graph_input: np.ndarray | None  # the distinct rows the neighbour graph joins; None for
    # tiny samples
    seeds: list[int]
    settings: WarmStartSettings
    on_codes: bool = False  # the graph is built on autoencoder codes (uses_codes)
    embeddings: list[np.ndarray] | None = None
    # Results that depend only on the rows and a seed, kept across restart seeds (select-k's
    # restart seed s uses seeds s and s + 1, its next restart s + 1 and s + 2); None: unshared.
    memo: dict | None = None
    # Each sample row's row in graph_input, where the sample repeats rows (None: it does not).
    graph_rows: np.ndarray | None = None
    fuzzy: sp.coo_matrix | None = None  # the neighbour graph, once built (neighbours)
    # Each seed's layout, laid out once whatever K is, where `memo` does not keep them
    layouts: dict = field(default_factory=dict)

    def neighbours(self, timings: dict[str, float]) -> sp.coo_matrix:
        """UMAP's fuzzy neighbour graph of graph_input's rows: each seed's layout embeds it,
        and it picks the joint mixture among its restarts (_graph_score)."""
        if self.fuzzy is None:
            memo = self.memo if self._shares("graph") else {}
            if "neighbours" not in memo:
                timed = time.perf_counter()
                memo["neighbours"] = _neighbour_graph(self.graph_input, self.settings)
                _add(timings, "neighbours", timed)
            self.fuzzy = memo["neighbours"]
        return self.fuzzy

    def graph(self, timings: dict[str, float]) -> list[np.ndarray]:
        """The neighbour-graph embedding, per seed (empty for tiny samples)."""
        if self.graph_input is None:
            return []
        if self.embeddings is None:
            self.embeddings = [self._layout(s, timings) for s in self.seeds]
        return self.embeddings

    def _layout(self, seed: int, timings: dict[str, float]) -> np.ndarray:
        """The neighbour-graph embedding of one seed, for every sample row."""
        memo = self.memo if self._shares("graph") else self.layouts
        if ("embedding", seed) not in memo:
            epochs = self.settings.codes_embed_epochs if self.on_codes else None
            layout = _embedding(self.graph_input, self.neighbours(timings), seed, self.settings,
                                timings, epochs)
            memo["embedding", seed] = layout if self.graph_rows is None else \
                layout[self.graph_rows]  # a repeated row sits where its copies do
        return memo["embedding", seed]

    def runs(self, way: str, k: int, timings: dict[str, float]) -> list[clustering.Mixture]:
        """One way's mixture for each of the two seeds."""
        memo = self.memo if self._shares(way) else {}
        spaces = self.columns if way == "columns" else self.graph(timings)
        for space, s in zip(spaces, self.seeds):
            if (way, k, s) not in memo:
                memo[way, k, s] = (_columns_mixture(space, k, s, self.settings, timings)
                                   if way == "columns" else
                                   _mixture(space, k, s, self.settings, timings, ("full",)))
        return [memo[way, k, s] for s in self.seeds]

    def joint(self, k: int, timings: dict[str, float]) -> clustering.Mixture:
        """The mixture on graph embeddings side by side, the seeds' own and more from the
        next seeds (settings.joint_layouts): each layout tears and bends the graph its own
        way, and a mixture on all keeps what they share (docs/model.md has what it bought).
        Of its restarts the one whose clusters fit the neighbour graph best is kept
        (_graph_score)."""
        memo = self.memo if self._shares("graph") else {}
        key = ("joint", k, *self.seeds)
        if key not in memo:
            more = self._more_seeds(self.settings.joint_layouts)
            layouts = self.graph(timings) + [self._layout(s, timings) for s in more]
            joined = np.hstack(layouts).astype(np.float64)
            memo[key] = _mixture(joined, k, self.seeds[0], self.settings, timings, ("full",),
                                 self._graph_score(k, timings))
        return memo[key]

    def most_modular(self, k: int, runs: list[np.ndarray], timings: dict[str, float]) -> np.ndarray:
        """Of the mixtures on settings.codes_layouts layouts, each alone (`runs`: the seeds'
        own runs' responsibilities, then more layouts from the next seeds), the
        responsibilities of the one whose clusters fit the neighbour graph best."""
        found = list(runs) + [
            _mixture(self._layout(s, timings), k, s, self.settings, timings, ("full",)).resp
            for s in self._more_seeds(self.settings.codes_layouts)]
        labels = torch.stack([torch.from_numpy(resp.argmax(1)) for resp in found])
        return found[int(self._graph_score(k, timings)(labels).argmax())]

    def _more_seeds(self, layouts: int) -> range:
        """The seeds of the layouts after the two runs' own, `layouts` in all."""
        return range(self.seeds[-1] + 1, self.seeds[0] + layouts)

    def _graph_score(self, k: int, timings: dict[str, float]) -> Callable:
        """How the joint mixture picks among its restarts, and the codes path among its
        layouts (most_modular): by the modularity of their clusters in the neighbour graph,
        not by their likelihood in the layouts, which only draw the graph. On digits the
        likeliest of 10 restarts often merged two digits and split a third, and the graph's
        own communities did not (docs/model.md).
        Not for the two runs whose agreement is the graph way's stability: both seeds share
        the graph, so restarts picked by it agree even where the graph has no K clusters
        (iris), and the graph would win over the columns where they are the better way."""
        graph = self.neighbours(timings)
        # each distinct row's first copy among the sample rows
        first = None if self.graph_rows is None else \
            torch.from_numpy(np.unique(self.graph_rows, return_index=True)[1])
        return lambda labels: clustering.modularity(
            graph, labels if first is None else labels[:, first], k)

    def _shares(self, way: str) -> bool:
        """The columns' spaces depend on the rows and a seed only; a graph of autoencoder
        codes also on the restart's autoencoders."""
        return self.memo is not None and (way == "columns" or not self.on_codes)


def spaces(nets: list[GMVAENet], sample: torch.Tensor, seed: int, device: torch.device,
           timings: dict[str, float], settings: WarmStartSettings = DEFAULT_SETTINGS,
           memo: dict | None = None, indicators: list[float] | None = None,
           filled: list[float] | None = None) -> Spaces:
    """`memo`: a dict kept across restart seeds that see the very same sample rows.
    `indicators`: the one-hot columns' values in the inputs (Preprocessor.indicators).
    `filled`: the value a mean-filled cell holds in each input column, NaN where none was
    filled (Preprocessor.filled)."""
    inputs = View.of(None, sample, device)
    columns = inputs(sample, device).numpy().astype(np.float64)  # standardised
    gaps = None
    if filled is not None and not np.isnan(filled).all():
        gaps = sample.cpu().numpy() == np.asarray(filled, dtype=np.float32)  # NaN matches nothing
        columns = imputed(columns, gaps, settings.impute_neighbours)
    codes = uses_codes(sample, settings)
    graph_view = inputs
    if codes:
        graph_view = View.of(nets, sample, device)
    elif indicators is not None and any(v > 0 for v in indicators):
        # The graph of the columns sees one-hot indicators as plain 0/1: rows of different
        # categories are √2 apart, as far as two rows typically are on one standardised
        # number (the usual one-hot + standard scaling). Standardised column by column, an
        # indicator of a rare category weighs more than a number and a column weighs by its
        # count of categories; there the graph tore (docs/model.md).
        graph_view = View.of(None, sample, device, indicators)
    seeds = [seed, seed + 1]
    timed = time.perf_counter()
    found = [_columns_space(columns, s, settings) for s in seeds]
    _add(timings, "columns", timed)
    graph_input, graph_rows = None, None
    if len(sample) >= settings.embed_min_rows:
        values = columns if graph_view is inputs else graph_view(sample, device).numpy()
        if gaps is not None and not codes and graph_view is not inputs:
            # plain indicators beside the same standardised numbers: their imputed cells
            values = np.where(gaps, columns, values).astype(values.dtype)
        first, rows = distinct_rows(values)
        if len(first) >= settings.embed_min_rows:
            graph_input = _pca(values if codes else values.astype(np.float64),
                               settings.graph_max_dims)
            if len(first) < len(values):  # repeated rows: the graph joins each once
                graph_input, graph_rows = graph_input[first], rows
    return Spaces(found, inputs, graph_view, graph_input, seeds, settings, codes, memo=memo,
                  graph_rows=graph_rows)


def distinct_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour graph joins distinct rows only, as umap-learn's `unique=True`: where
    more copies of a row than neighbours exist (scores, codes: a third of biopsy's rows
    repeat another), each copy's neighbours are copies, and which copies is a matter of
    rounding; the graph falls apart into cliques that each layout places elsewhere. Returns
    each distinct row's first occurrence, in table order, and for every row the position of
    its distinct row among those."""
    _, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return first[order], position[inverse.ravel()]


def pseudo_clusters(
    net: GMVAENet,
    sample: torch.Tensor,
    found: Spaces,
    device: torch.device,
    timings: dict[str, float],
    settings: WarmStartSettings = DEFAULT_SETTINGS,
) -> tuple[torch.Tensor, View, dict]:
    """(n, K) pseudo-responsibilities of the sample rows, the view that places other rows
    among them, and what was measured to choose them (module doc); the GMVAE's prior
    network is initialised to the clusters."""
    k = net.cfg.k
    floor = settings.codes_graph_floor if found.on_codes else None
    graph_fits = found.graph_input is not None and len(sample) >= 3 * k
    graph = None
    if floor is not None and graph_fits:
        # On the codes path a graph this stable is kept whatever the columns give (choose):
        # their mixtures (seconds on MNIST, more at large K) are only fitted when it is not.
        graph = _candidate("graph", found.runs("graph", k, timings))
    if graph is not None and graph.stability >= floor:
        candidates = [graph]
    else:
        candidates = [_candidate("columns", found.runs("columns", k, timings))]
        if graph is None and graph_fits and graph_can_win(candidates[0],
                                                          settings.stability_margin, floor):
            graph = _candidate("graph", found.runs("graph", k, timings))
        if graph is not None:
            candidates.append(graph)
    chosen = choose(candidates, settings.stability_margin, floor)
    # Off the codes path the graph way's clusters come from four seeds' embeddings joined
    # (Spaces.joint). Not on codes, which already join two autoencoders: there the joined
    # embeddings' mixture merged digits (MNIST); the most modular layout's mixture does not.
    joined = chosen.name == "graph" and not found.on_codes
    if joined:
        resp = found.joint(k, timings).resp
    elif chosen.name == "graph":
        resp = found.most_modular(k, chosen.runs, timings)
    else:
        resp = chosen.runs[0]
    resp = torch.from_numpy(resp).float()
    init_prior(net, encode_means(net, sample, device), resp, settings)
    view = found.graph_view if chosen.name == "graph" else found.columns_view
    return resp, view, {"chosen": chosen.name, "covariance": chosen.covariance,
                        "power": chosen.power, "joined": joined,
                        "codes": found.on_codes,
                        "stability": {c.name: c.stability for c in candidates}}


def refined(codes: np.ndarray, current: np.ndarray, k: int, seed: int,
            settings: WarmStartSettings) -> np.ndarray:
    """The graph way once more, on the GMVAE's own codes after the guided phase (standardised
    posterior means, (n, x_dim)): the encoder has learnt the pseudo-clusters from two
    autoencoders' codes, and its space places their doubtful rows better than those codes
    did (docs/model.md). Returns (n, K) responsibilities whose clusters are matched to the
    `current` labels (n,) by their overlap, so that each keeps its prior component."""
    graph = _neighbour_graph(codes, settings)
    stages: dict[str, float] = {}  # the caller times the whole step (the recipe's "refine")
    layout = _embedding(codes, graph, seed, settings, stages, settings.codes_embed_epochs)
    resp = _mixture(layout.astype(np.float64), k, seed, settings, stages).resp
    overlap = np.zeros((k, k))
    np.add.at(overlap, (resp.argmax(1), current), 1)
    new, old = linear_sum_assignment(overlap, maximize=True)
    matched = np.zeros_like(resp)
    matched[:, old] = resp[:, new]
    return matched


def choose(candidates: list[Candidate], margin: float, graph_floor: float | None = None) -> Candidate:
    """The most stable candidate; an earlier (plainer) one wins unless beaten by `margin`.
    With `graph_floor` (the codes path) the graph wins whenever it is at least that stable."""
    graph = [c for c in candidates if c.name == "graph"]
    if graph_floor is not None and graph and graph[0].stability >= graph_floor:
        return graph[0]
    chosen = candidates[0]
    for candidate in candidates[1:]:
        if candidate.stability > chosen.stability + margin:
            chosen = candidate
    return chosen


def graph_can_win(columns: Candidate, margin: float, graph_floor: float | None) -> bool:
    """Whether `choose` could prefer the graph to these columns' runs: a stability (at most
    1) must beat theirs by `margin`, or reach the floor on the codes path."""
    return graph_floor is not None or columns.stability < 1.0 - margin


def _candidate(name: str, runs: list[clustering.Mixture]) -> Candidate:
    labels = [r.resp.argmax(1) for r in runs]
    return Candidate(name, [r.resp for r in runs], clustering.adjusted_rand(labels[0], labels[1]),
                     runs[0].covariance, runs[0].power)


def _columns_space(columns: np.ndarray, seed: int, settings: WarmStartSettings) -> ColumnsSpace:
    """The columns as a mixture sees them: discrete columns dequantised (a column of a few
    integer values is a stack of flat sheets that a full covariance fits with infinite
    likelihood, capturing the mixture), then PCA where the table is wide, or else also the
    power-transformed columns."""
    space = dequantised(columns, np.random.default_rng(seed), settings.discrete_max_values)
    if space.shape[1] > settings.columns_pca_above:
        return ColumnsSpace(_pca(space, settings.columns_max_dims), None)
    return ColumnsSpace(space, power.yeo_johnson(space) if settings.columns_power else None)


IMPUTE_BLOCK_ELEMENTS = 2**24  # distances computed at once while imputing (~128 MB)
# Rows a filled cell looks among for its neighbours (evenly spaced among those not filled):
# all of a 50,000-row sample took 26 s for 20 columns with a tenth missing each.
IMPUTE_DONORS = 10_000
# Past this many columns the neighbours are found once, on the mean-filled columns' principal
# components, instead of on all the other columns for each column with gaps: that took 14 s
# for 5,000 rows × 500 columns with a twentieth missing each (2.8 s on components), and grows
# with the width squared.
IMPUTE_MAX_DIMS = 50


def imputed(values: np.ndarray, gaps: np.ndarray, neighbours: int) -> np.ndarray:
    """Each filled cell (`gaps`, (n, d) bool) takes the median of its column over the
    `neighbours` rows nearest in the other columns among those not filled there (as
    scikit-learn's KNNImputer, with the lower median instead of the mean: a value the
    column holds, so a discrete column stays on its grid and is dequantised). Mean-filled
    cells are a flat sheet through the middle of the clusters, which a full covariance fits
    with unbounded likelihood (10 % of two columns of the anisotropic table missing took its
    mixture from ARI 0.99 to 0.43); rows' neighbours place them where their clusters are."""
    out = values.copy()
    wide = values.shape[1] > IMPUTE_MAX_DIMS
    reduced = torch.from_numpy(_pca(values.astype(np.float64), IMPUTE_MAX_DIMS)) if wide else None
    for j in np.nonzero(gaps.any(axis=0))[0]:
        need, have = np.nonzero(gaps[:, j])[0], np.nonzero(~gaps[:, j])[0]
        if not len(have):
            continue
        have = have[:: -(-len(have) // IMPUTE_DONORS)]
        other = reduced if wide else torch.from_numpy(np.delete(values, j, axis=1))
        donors = other[have]
        m = min(neighbours, len(have))
        block = max(1, IMPUTE_BLOCK_ELEMENTS // len(have))
        for start in range(0, len(need), block):
            rows = need[start : start + block]
            nearest = torch.cdist(other[rows], donors).topk(m, largest=False).indices.numpy()
            out[rows, j] = np.sort(values[have[nearest], j], axis=1)[:, (m - 1) // 2]
    return out


def _columns_mixture(space: ColumnsSpace, k: int, seed: int, settings: WarmStartSettings,
                     timings: dict[str, float]) -> clustering.Mixture:
    """The columns' mixture of lowest BIC over the covariance types, and over the columns
    as they are and power-transformed. The two BICs are comparable on the columns' own
    scale: the transformed density times the transform's Jacobian, one parameter more per
    λ. Skewed columns (breast cancer's sizes and areas) then get components that fit
    them; columns already near-Gaussian within their clusters keep the plain fit."""
    plain = _mixture(space.plain, k, seed, settings, timings, settings.columns_covariances)
    if space.powered is None:
        return plain
    powered = _mixture(space.powered.values, k, seed, settings, timings,
                       settings.columns_covariances)
    rows = len(space.plain)
    bic = (powered.bic - 2 * rows * space.powered.log_jacobian
           + space.powered.parameters * math.log(rows))
    return powered._replace(bic=bic, power=True) if bic < plain.bic else plain


def dequantised(values: np.ndarray, rng: np.random.Generator, max_values: int) -> np.ndarray:
    """Each column of at most `max_values` values on an even grid (integer codes, scores,
    counts, one-hot 0/1) plus uniform noise one grid step wide: the standard dequantisation
    of discrete data for a continuous density."""
    out = values.copy()
    for j in range(values.shape[1]):
        levels = np.unique(values[:, j])
        if 1 < len(levels) <= max_values:
            gaps = np.diff(levels)
            step = gaps.min()
            if np.allclose(gaps / step, np.round(gaps / step), atol=1e-6):
                out[:, j] += rng.uniform(-step / 2, step / 2, len(values))
    return out


def _pca(values: np.ndarray, dims: int) -> np.ndarray:
    return values if values.shape[1] <= dims else clustering.pca(values, dims)


def _neighbour_graph(rows: np.ndarray, settings: WarmStartSettings) -> sp.coo_matrix:
    """UMAP's fuzzy graph of the rows' exact nearest neighbours."""
    values = torch.from_numpy(rows.astype(np.float32))
    return neighbour_embedding.fuzzy_graph(*neighbour_embedding.exact_knn(
        values, min(settings.embed_neighbours, len(values) - 1)))


def _embedding(rows: np.ndarray, graph: sp.coo_matrix, seed: int, settings: WarmStartSettings,
               timings: dict[str, float], epochs: int | None = None) -> np.ndarray:
    timed = time.perf_counter()
    emb = neighbour_embedding.embed(rows, dims=settings.embed_dims, seed=seed, epochs=epochs,
                                    graph=graph)
    _add(timings, "embedding", timed)
    return emb


def _mixture(space: np.ndarray, k: int, seed: int, settings: WarmStartSettings,
             timings: dict[str, float], covariances: tuple[str, ...] = ("full",),
             score: Callable | None = None) -> clustering.Mixture:
    """A GMM, best of settings.gmm_inits k-means starts (by likelihood, or `score`), of the
    covariance type (among `covariances`) of lowest BIC."""
    timed = time.perf_counter()
    found = clustering.mixture_by_bic(space, k, seed, settings.gmm_inits, covariances, score)
    _add(timings, "mixture", timed)
    return found


def _add(timings: dict[str, float], name: str, since: float) -> None:
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - since


PLACE_BLOCK_ELEMENTS = 2**25  # distances computed at once while placing rows (~128 MB)


@torch.no_grad()
def place(view: View, sample_view: torch.Tensor, sample_resp: torch.Tensor, rows: torch.Tensor,
          device: torch.device, neighbours: int) -> torch.Tensor:
    """Responsibilities of rows outside the sample: the mean over their nearest sample rows
    in the view (the pseudo-clusters come from a neighbour graph, so neighbours carry them)."""
    x = view(rows, device)  # (B, d)
    sample_sq = (sample_view * sample_view).sum(1)  # (S,)
    k = min(neighbours, len(sample_view))
    # Blocks of rows against the whole sample: a batch of 4,096 rows against a 50,000-row
    # sample at once held 0.8 GB per temporary (100,000 rows trained at 2.6 GB peak RSS).
    block = max(1, PLACE_BLOCK_ELEMENTS // len(sample_view))
    nearest = torch.cat([
        torch.topk(torch.addmm(sample_sq, part, sample_view.T, alpha=-2.0),  # (b, S) = d2 - |x|2
                   k, dim=1, largest=False).indices
        for part in x.split(block)])  # (B, k)
    return sample_resp[nearest].mean(1)  # (B, K)

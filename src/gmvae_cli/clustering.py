"""The warm start's classical clustering in torch: k-means, Gaussian mixtures (scikit-learn's
four covariance types, one chosen by BIC), PCA and the adjusted Rand index.

Why not scikit-learn: importing it (it pulls in scipy.stats) takes 0.6-1.2 s on a 2-core
machine, a fifth of training a small table, and its mixture runs its restarts one after
the other. Here the restarts run side by side as one batch. The algorithms are
scikit-learn's (GaussianMixture with k-means initialisation, KMeans with k-means++ seeding,
PCA on the covariance matrix), so they find the same optima; tests compare them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    import scipy.sparse as sp

# scikit-learn's covariance types: one matrix per component, one shared by all, axis-aligned
# variances per component, one variance per component.
COVARIANCES = ("full", "tied", "diag", "spherical")


class Mixture(NamedTuple):
    resp: np.ndarray  # (n, k) responsibilities
    covariance: str  # the covariance type fitted
    bic: float = math.inf  # in the space it was fitted in (lower is better)
    power: bool = False  # fitted to the columns power-transformed (warm_start._columns_mixture)


def mixture_by_bic(x: np.ndarray, k: int, seed: int, inits: int = 10,
                   covariances: tuple[str, ...] = COVARIANCES,
                   score: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Mixture:
    """The mixture of lowest BIC among the covariance types, each the best of the same
    `inits` k-means starts (as scikit-learn starts every type). Choosing the covariance
    structure by BIC is model-based clustering's standard (mclust): a full covariance per
    component needs many rows per dimension, and where they are lacking BIC prefers a
    shared or axis-aligned one. `score` ((inits, n) hard labels -> (inits,), higher is
    better) picks the best start instead of the likelihood."""
    data = _tensor(x)
    labels = kmeans(data, k, inits, torch.Generator().manual_seed(seed))
    n, width = data.shape
    best = None
    for covariance in covariances:
        resp, log_likelihood = _em(data, k, labels, covariance, score)
        bic = -2 * log_likelihood * n + parameters(covariance, k, width) * math.log(n)
        if best is None or bic < best[0]:
            best = (bic, Mixture(resp, covariance, bic))
    return best[1]


def parameters(covariance: str, k: int, width: int) -> int:
    """Free parameters of a k-component mixture in `width` dimensions (weights, means,
    covariances), as scikit-learn's GaussianMixture counts them for its BIC."""
    matrix = width * (width + 1) // 2
    cov = {"full": k * matrix, "tied": matrix, "diag": k * width, "spherical": k}[covariance]
    return cov + k * width + k - 1


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def _em(data: torch.Tensor, k: int, labels: torch.Tensor, covariance: str,
        score: Callable[[torch.Tensor], torch.Tensor] | None = None, reg_covar: float = 1e-4,
        tol: float = 1e-3, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """EM from each restart's k-means labels (B, n); the best restart's (n, k)
    responsibilities and mean log-likelihood, best by likelihood or by `score`."""
    inits, outer = len(labels), _outer(data)
    params = list(_m_step(data, torch.nn.functional.one_hot(labels, k).double(), reg_covar,
                          covariance, outer))
    lower = torch.full((inits,), -math.inf, dtype=torch.float64)
    active = torch.arange(inits)  # restarts still iterating; each stops as it would alone
    for _ in range(max_iter):
        norm, log_resp = _e_step(data, [p[active] for p in params], outer)
        for p, fresh in zip(params, _m_step(data, log_resp.exp(), reg_covar, covariance, outer)):
            p[active] = fresh
        change = norm - lower[active]
        lower[active] = norm
        active = active[~(change.abs() < tol)]
        if not len(active):
            break
    if score is None:
        best = int(torch.nan_to_num(lower, nan=-math.inf).argmax())
    else:
        _, log_resp = _e_step(data, params, outer)
        best = int(score(log_resp.argmax(-1)).argmax())  # the first of equals, as argmax
    norm, log_resp = _e_step(data, [p[best : best + 1] for p in params], outer)
    return log_resp[0].exp().numpy(), float(norm[0])


def kmeans(data: torch.Tensor, k: int, inits: int, gen: torch.Generator,
           max_iter: int = 300, tol: float = 1e-4) -> torch.Tensor:
    """(inits, n) labels of Lloyd's algorithm from `inits` k-means++ seedings."""
    tol = float(data.var(0, unbiased=False).mean()) * tol  # scikit-learn's scale-free tolerance
    centers = _kmeans_plus_plus(data, (data * data).sum(1), k, inits, gen)
    active = torch.arange(inits)
    for _ in range(max_iter):
        old = centers[active]
        members = torch.nn.functional.one_hot(_nearest(data, old), k).double()  # (A, n, k)
        counts = members.sum(1)  # (A, k)
        sums = members.transpose(1, 2) @ data  # (A, k, d)
        # An empty cluster keeps its centre rather than dividing by zero.
        moved = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], old)
        centers[active] = moved
        active = active[((moved - old) ** 2).sum((1, 2)) > tol]
        if not len(active):
            break
    return _nearest(data, centers)


def _nearest(data, centers) -> torch.Tensor:
    """(B, n) index of each row's nearest centre (|x|² is the same for every centre)."""
    return ((centers * centers).sum(-1)[:, None, :] - 2 * data @ centers.transpose(1, 2)).argmin(-1)


def _distances(data, squares, centers) -> torch.Tensor:
    """(B, n, m) squared distances from every row to each restart's m centres."""
    cross = data @ centers.transpose(1, 2)
    return (squares[None, :, None] - 2 * cross + (centers * centers).sum(-1)[:, None, :]).clamp_min(0)


def _kmeans_plus_plus(data, squares, k, inits, gen) -> torch.Tensor:
    """scikit-learn's greedy k-means++: each new centre is the best (lowest potential) of
    2 + log(k) candidates drawn in proportion to the squared distance to the nearest centre."""
    n, trials = len(data), 2 + int(math.log(k))
    batch = torch.arange(inits)
    first = torch.randint(n, (inits,), generator=gen)
    centers = [data[first]]  # each (B, d)
    closest = _distances(data, squares, data[first][:, None, :])[..., 0]  # (B, n)
    for _ in range(1, k):
        weights = closest + 1e-300 * (closest.sum(1, keepdim=True) == 0)  # all rows on centres
        candidates = torch.multinomial(weights, trials, replacement=True, generator=gen)  # (B, t)
        to_candidates = _distances(data, squares, data[candidates])  # (B, n, t)
        merged = torch.minimum(closest[..., None], to_candidates)
        pick = merged.sum(1).argmin(1)  # (B,)
        closest = merged[batch, :, pick]
        centers.append(data[candidates[batch, pick]])
    return torch.stack(centers, 1)  # (B, k, d)


def _m_step(data, resp, reg_covar, covariance="full", outer=None):
    """Weights, means and precision Cholesky factors of each restart's mixture (B, k, …);
    every covariance type is held as a full matrix per component."""
    counts = resp.sum(1) + 10 * torch.finfo(torch.float64).eps  # (B, k)
    means = resp.transpose(1, 2) @ data / counts[..., None]  # (B, k, d)
    width = data.shape[1]
    outer = _outer(data) if outer is None else outer
    second = (resp.transpose(1, 2) @ outer).reshape(*counts.shape, width, width) / counts[..., None, None]
    cov = second - means[..., :, None] * means[..., None, :]
    cov = cov + reg_covar * torch.eye(width, dtype=torch.float64)
    if covariance == "tied":  # the components' covariances weighted by their sizes
        shared = (counts[..., None, None] * cov).sum(1) / counts.sum(1)[:, None, None]
        cov = shared[:, None].expand_as(cov)
    elif covariance in ("diag", "spherical"):
        variances = cov.diagonal(dim1=-2, dim2=-1)  # (B, k, d)
        if covariance == "spherical":
            variances = variances.mean(-1, keepdim=True).expand_as(variances)
        cov = torch.diag_embed(variances)
    chol, info = torch.linalg.cholesky_ex(cov)
    # A collapsed component (never seen with reg_covar on standardised data) gets a wide one.
    chol = torch.where((info > 0)[..., None, None], torch.eye(width, dtype=torch.float64), chol)
    eye = torch.eye(width, dtype=torch.float64).expand_as(chol)
    precision_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
    return counts / len(data), means, precision_chol


def _e_step(data, params, outer=None):
    """Each restart's mean log-likelihood (B,) and log responsibilities (B, n, k)."""
    weights, means, precision_chol = params
    restarts, k, width = means.shape
    log_det = precision_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B, k)
    # Mahalanobis distances as x'Px - 2 x'(P mu) + mu'P mu: one product of the rows' outer
    # products with every restart's and component's precision, no (n, B, k, d) temporary.
    precision = precision_chol @ precision_chol.transpose(-1, -2)  # (B, k, d, d)
    pulled = (precision @ means[..., None])[..., 0]  # (B, k, d)
    outer = _outer(data) if outer is None else outer
    distance = (outer @ precision.reshape(-1, width * width).T
                - 2 * data @ pulled.reshape(-1, width).T
                + (means * pulled).sum(-1).reshape(-1))  # (n, B*k)
    distance = distance.view(len(data), restarts, k).permute(1, 0, 2)  # (B, n, k)
    log_prob = -0.5 * (width * math.log(2 * math.pi) + distance) + (log_det + weights.log())[:, None, :]
    norm = torch.logsumexp(log_prob, -1)
    return norm.mean(1), log_prob - norm[..., None]


def _outer(data: torch.Tensor) -> torch.Tensor:
    """(n, d*d) each row's outer product with itself, flattened."""
    return (data[:, :, None] * data[:, None, :]).reshape(len(data), -1)


def pca(values: np.ndarray, dims: int) -> np.ndarray:
    """The rows on their first `dims` principal components (eigenvectors of the covariance
    matrix, as scikit-learn's PCA solves tall tables); signs are arbitrary."""
    data = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    centred = data - data.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return (centred @ vectors[:, -dims:].flip(1)).numpy()


def modularity(graph: sp.spmatrix, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Newman's modularity of each partition (B, n) of a weighted undirected graph (n, n):
    the share of edge weight inside clusters minus its expectation at the same degrees,
    (B,). The criterion graph clustering maximises (Louvain, Leiden: scanpy clusters
    single-cell neighbour graphs by it)."""
    edges = graph.tocoo()
    edges.sum_duplicates()
    weights = torch.from_numpy(edges.data.astype(np.float64))  # (E,) both directions
    total = weights.sum()
    degree = torch.from_numpy(np.asarray(edges.sum(1), dtype=np.float64).ravel())  # (n,)
    rows, cols = (torch.from_numpy(ends.astype(np.int64)) for ends in (edges.row, edges.col))
    inside = labels[:, rows] == labels[:, cols]  # (B, E)
    within = (inside * weights).sum(1)  # (B,)
    per_cluster = torch.zeros(len(labels), k, dtype=degree.dtype).scatter_add_(
        1, labels, degree.expand(len(labels), -1))  # (B, k) degree per cluster
    return within / total - (per_cluster / total).pow(2).sum(1)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index between two partitions of the same rows (1: identical)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1))

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    together = pairs(table)
    rows = pairs(np.bincount(a))
    cols = pairs(np.bincount(b))
    expected = rows * cols / pairs(np.array([len(a)])) if len(a) > 1 else 0.0
    best = (rows + cols) / 2
    if best == expected:  # both partitions trivial (one cluster, or every row alone)
        return 1.0
    return (together - expected) / (best - expected)

"""The warm start's k-means, Gaussian mixture, PCA and ARI (clustering.py) against
scikit-learn's, which they replace in the training process."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from gmvae_cli import clustering


@pytest.mark.parametrize("seed", range(4))
def test_adjusted_rand_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 6, 200)
    b[:120] = a[:120]  # partly agreeing
    assert clustering.adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert clustering.adjusted_rand(a, a + 7) == 1.0
    assert clustering.adjusted_rand(np.zeros(5), np.zeros(5)) == 1.0


def test_mixture_log_likelihood_equals_scikit_learn_for_the_same_parameters():
    x = StandardScaler().fit_transform(load_iris().data)
    gmm = GaussianMixture(3, covariance_type="full", random_state=0, reg_covar=1e-4).fit(x)
    params = (torch.tensor(gmm.weights_)[None], torch.tensor(gmm.means_)[None],
              torch.tensor(gmm.precisions_cholesky_)[None])
    norm, log_resp = clustering._e_step(torch.from_numpy(x), params)
    assert float(norm[0]) == pytest.approx(gmm.score(x), abs=1e-10)
    np.testing.assert_allclose(log_resp[0].exp().numpy(), gmm.predict_proba(x), atol=1e-10)


def test_m_step_equals_scikit_learn_from_the_same_responsibilities():
    x = StandardScaler().fit_transform(load_iris().data)
    resp = np.random.default_rng(1).dirichlet(np.ones(3), len(x))
    gmm = GaussianMixture(3, covariance_type="full", reg_covar=1e-4)
    gmm._initialize(x, resp)  # scikit-learn's M-step from given responsibilities
    weights, means, precision_chol = clustering._m_step(torch.from_numpy(x),
                                                        torch.from_numpy(resp)[None], 1e-4)
    np.testing.assert_allclose(weights[0].numpy(), gmm.weights_, atol=1e-12)
    np.testing.assert_allclose(means[0].numpy(), gmm.means_, atol=1e-12)
    np.testing.assert_allclose(precision_chol[0].numpy(), gmm.precisions_cholesky_, atol=1e-8)


def test_lloyd_iterations_equal_scikit_learn_from_the_same_seeding(monkeypatch):
    x = StandardScaler().fit_transform(load_iris().data)
    data = torch.from_numpy(x)
    seeds = clustering._kmeans_plus_plus(data, (data * data).sum(1), 3, 5,
                                         torch.Generator().manual_seed(0))
    monkeypatch.setattr(clustering, "_kmeans_plus_plus", lambda *args: seeds)
    ours = clustering.kmeans(data, 3, 5, torch.Generator())
    for b in range(5):
        theirs = KMeans(3, init=seeds[b].numpy(), n_init=1, algorithm="lloyd").fit(x).labels_
        assert adjusted_rand_score(theirs, ours[b].numpy()) == 1.0


def fitted(x, k, seed, covariance="full"):
    """The responsibilities of the best of 10 k-means-started EM runs of one covariance type."""
    return clustering.mixture_by_bic(x, k, seed, covariances=(covariance,)).resp


@pytest.mark.parametrize("seed", range(3))
def test_mixture_finds_scikit_learns_partition(seed):
    """Iris (standardised) and well separated blobs: the best of 10 restarts is the partition
    GaussianMixture(n_init=10) finds, and the responsibilities sum to one."""
    for x, k in [(StandardScaler().fit_transform(load_iris().data), 3),
                 (make_blobs(900, 5, centers=4, random_state=seed)[0], 4)]:
        ours = fitted(x, k, seed)
        theirs = GaussianMixture(k, covariance_type="full", n_init=10, reg_covar=1e-4,
                                 random_state=seed).fit(x).predict(x)
        assert adjusted_rand_score(theirs, ours.argmax(1)) == 1.0
        np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-9)


def test_same_seed_same_responsibilities_and_restarts_matter():
    x = StandardScaler().fit_transform(load_iris().data)
    a, b = fitted(x, 5, 3), fitted(x, 5, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, fitted(x, 5, 4))


def test_modularity_of_two_triangles_joined_by_one_edge():
    """Newman's Q by hand: 7 edges; each triangle holds 3 and a degree sum of 7, so the
    triangles score 2 (3/7 - (7/14)^2) = 5/14; one cluster scores 0."""
    import scipy.sparse as sp

    edges = [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5), (2, 3)]
    rows, cols = zip(*edges)
    graph = sp.coo_matrix((np.ones(14), (rows + cols, cols + rows)), shape=(6, 6))
    labels = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 1, 2, 2, 2]])
    q = clustering.modularity(graph, labels, 3).numpy()
    # third: {0,1} holds 1 edge, degrees 4; {2} none, 3; {3,4,5} 3 edges, 7
    third = (1 / 7 - (4 / 14) ** 2) + (0 - (3 / 14) ** 2) + (3 / 7 - (7 / 14) ** 2)
    np.testing.assert_allclose(q, [5 / 14, 0.0, third], atol=1e-12)


def test_a_score_picks_the_restart_instead_of_the_likelihood():
    """Uniform noise has many local optima: each score ranking picks its own restart, and
    the mixture kept is that restart's."""
    x = np.random.default_rng(0).uniform(size=(400, 2))
    seen = []

    def score(labels):
        seen.append(labels.clone())
        return torch.arange(len(labels), dtype=torch.float64) * direction

    picked = []
    for direction in (1.0, -1.0):
        seen.clear()
        labels = clustering.mixture_by_bic(x, 6, 0, covariances=("full",), score=score).resp.argmax(1)
        chosen = seen[0][-1] if direction > 0 else seen[0][0]
        np.testing.assert_array_equal(labels, chosen.numpy())
        picked.append(labels)
    assert adjusted_rand_score(*picked) < 1.0
    by_likelihood = fitted(x, 6, 0)
    assert not all(np.array_equal(by_likelihood.argmax(1), p) for p in picked)


def test_pca_spans_scikit_learns_components():
    x = np.random.default_rng(2).normal(size=(300, 8)) @ np.random.default_rng(3).normal(size=(8, 8))
    ours = clustering.pca(x, 3)
    theirs = PCA(3).fit_transform(x)
    for j in range(3):  # each component up to its sign
        assert abs(np.corrcoef(ours[:, j], theirs[:, j])[0, 1]) == pytest.approx(1.0, abs=1e-9)


def full_precision_cholesky(gmm: GaussianMixture, width: int) -> np.ndarray:
    """scikit-learn's precision Cholesky factors of any covariance type as (k, d, d) matrices."""
    factor, k = gmm.precisions_cholesky_, gmm.n_components
    return {"full": lambda: factor,
            "tied": lambda: np.broadcast_to(factor, (k, width, width)),
            "diag": lambda: np.stack([np.diag(row) for row in factor]),
            "spherical": lambda: np.stack([value * np.eye(width) for value in factor])}[
        gmm.covariance_type]()


@pytest.mark.parametrize("covariance", clustering.COVARIANCES)
def test_each_covariance_types_m_step_equals_scikit_learn(covariance):
    x = StandardScaler().fit_transform(load_iris().data)
    resp = np.random.default_rng(2).dirichlet(np.ones(3), len(x))
    gmm = GaussianMixture(3, covariance_type=covariance, reg_covar=1e-4)
    gmm._initialize(x, resp)
    weights, means, precision_chol = clustering._m_step(
        torch.from_numpy(x), torch.from_numpy(resp)[None], 1e-4, covariance)
    np.testing.assert_allclose(weights[0].numpy(), gmm.weights_, atol=1e-12)
    np.testing.assert_allclose(means[0].numpy(), gmm.means_, atol=1e-12)
    np.testing.assert_allclose(precision_chol[0].numpy(), full_precision_cholesky(gmm, 4), atol=1e-8)
    assert clustering.parameters(covariance, 3, 4) == gmm._n_parameters()


@pytest.mark.parametrize("covariance", clustering.COVARIANCES)
def test_each_covariance_type_finds_scikit_learns_partition(covariance):
    x = make_blobs(900, 5, centers=4, cluster_std=[1.0, 1.5, 0.7, 1.2], random_state=5)[0]
    ours = fitted(x, 4, 0, covariance=covariance)
    theirs = GaussianMixture(4, covariance_type=covariance, n_init=10, reg_covar=1e-4,
                             random_state=0).fit(x).predict(x)
    assert adjusted_rand_score(theirs, ours.argmax(1)) == 1.0


def test_bic_chooses_the_covariance_type_scikit_learns_bic_ranks_first():
    """Iris (150 rows, 4 columns) has room for a full covariance per cluster; wine (178 rows,
    13 columns) has not, and BIC takes axis-aligned ones."""
    for x, expected in ((load_iris().data, "full"), (load_wine().data, "diag")):
        x = StandardScaler().fit_transform(x)
        bic = {c: GaussianMixture(3, covariance_type=c, n_init=10, reg_covar=1e-4,
                                  random_state=0).fit(x).bic(x) for c in clustering.COVARIANCES}
        assert min(bic, key=bic.get) == expected
        found = clustering.mixture_by_bic(x, 3, 0)
        assert found.covariance == expected
        np.testing.assert_array_equal(found.resp,
                                      fitted(x, 3, 0, covariance=expected))

"""The default recipe's options on small synthetic data: warm start, guided loss, schedule."""

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import make_blobs_frame, run_cli
from gmvae_cli import recipe
from gmvae_cli.model import GMVAENet, ModelConfig
from gmvae_cli.train import Trainer, TrainSettings

SMALL = dataclasses.replace(recipe.DEFAULT_SCHEDULE, pretrain_epochs=3, guided_epochs=3, free_epochs=2)


def test_default_recipe_clusters_blobs_end_to_end(tmp_path):
    frame, labels = make_blobs_frame(n_rows=1000, k=4, seed=3)
    data = tmp_path / "blobs.csv"
    frame.to_csv(data, index=False)
    model = tmp_path / "m.pt"
    # Default recipe (warm start with two autoencoders, UMAP + GMM, guided then plain epochs).
    result = run_cli("train", data, "--k", 4, "--hidden", "32,32", "-o", model, "--quiet")
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(run_cli("assign", model, data).stdout))
    assert adjusted_rand_score(labels, out["cluster"]) >= 0.9
    phases = [h["phase"] for h in torch.load(model, weights_only=True)["history"]]
    expected = ["guided"] * recipe.DEFAULT_SCHEDULE.guided_epochs + ["elbo"] * recipe.DEFAULT_SCHEDULE.free_epochs
    assert phases == expected


def test_warm_start_initialises_the_prior_from_the_pseudo_clusters():
    frame, _ = make_blobs_frame(n_rows=300, n_features=6, k=3, seed=1)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=6, k=3, x_dim=2, w_dim=2, hidden=(16,), prior_hidden=16))
    resp = recipe.warm_start(net, data, seed=0, batch_size=64, device=torch.device("cpu"), schedule=SMALL)
    assert resp.shape == (300, 3)
    np.testing.assert_allclose(resp.sum(1).numpy(), 1.0, rtol=1e-5)
    # The prior's mean biases are the responsibility-weighted code means of each cluster.
    codes = recipe.encode_means(net, data, torch.device("cpu"))
    expected = (resp.T @ codes) / resp.sum(0)[:, None]
    np.testing.assert_allclose(net.prior.means.bias.detach().view(3, 2).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    # Shrunk output weights: every w gives nearly the same components.
    assert net.prior.means.weight.abs().max() < 0.01


def test_guided_loss_adds_cross_entropy_only_for_confident_rows():
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    y = torch.randn(6, 4)
    unsure = torch.full((6, 2), 0.5)  # below the confidence cutoff: no cross-entropy
    torch.manual_seed(1)
    loss, terms = recipe.guided_loss(net, y, unsure, recipe.DEFAULT_SCHEDULE)
    assert float(loss) == pytest.approx(float(-terms.elbo))
    sure = torch.tensor([[1.0, 0.0]] * 6)
    torch.manual_seed(1)
    loss, terms = recipe.guided_loss(net, y, sure, recipe.DEFAULT_SCHEDULE)
    x_mu, _, w_mu, _ = net.encoder(y)
    means, logvars = net.prior(w_mu)
    from gmvae_cli.model import log_cluster_posterior

    ce = -log_cluster_posterior(x_mu, means, logvars)[:, 0].mean()
    weight = recipe.DEFAULT_SCHEDULE.pseudo_label_weight
    assert float(loss) == pytest.approx(float(-terms.elbo + weight * ce), rel=1e-5)


def test_plain_elbo_epochs_use_the_lower_learning_rate():
    data = torch.zeros(10, 3)
    cfg = ModelConfig(input_dim=3, k=2)
    trainer = Trainer(data, cfg, TrainSettings(recipe="default"), torch.device("cpu"))
    assert trainer.learning_rate("guided") == recipe.DEFAULT_SCHEDULE.lr
    assert trainer.learning_rate("elbo") == recipe.DEFAULT_SCHEDULE.free_lr
    fixed = Trainer(data, cfg, TrainSettings(recipe="default", lr=0.01), torch.device("cpu"))
    assert fixed.learning_rate("elbo") == 0.01  # --lr wins over the schedule
    paper = Trainer(data, cfg, TrainSettings(recipe="paper", epochs=7), torch.device("cpu"))
    assert paper.epochs() == (0, 7)  # the spec's objective alone, no warm start


def test_epochs_option_splits_guided_then_plain():
    trainer = Trainer(torch.zeros(4, 2), ModelConfig(input_dim=2, k=2),
                      TrainSettings(recipe="default", epochs=25), torch.device("cpu"))
    guided = recipe.DEFAULT_SCHEDULE.guided_epochs
    assert trainer.epochs() == (guided, 25 - guided)


def test_exact_neighbours_match_brute_force_search_across_blocks():
    from sklearn.neighbors import NearestNeighbors

    codes = np.random.default_rng(5).standard_normal((300, 7)).astype(np.float32)
    index, distance = recipe.exact_neighbours(codes, 6, block_elements=300 * 64)  # 5 blocks
    want_distance, want_index = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(codes).kneighbors(codes)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(index[:, 0], np.arange(300))  # each row is its own nearest
    assert (distance[:, 0] == 0).all()  # exactly: UMAP reads the first non-zero as a neighbour
    np.testing.assert_allclose(distance, want_distance, atol=1e-4)


def test_small_narrow_tables_are_clustered_on_their_inputs():
    """Below umap_min_rows, a table no wider than the joined codes gets its pseudo-clusters
    from its own standardised columns; a wider one from the autoencoders' codes."""
    frame, _ = make_blobs_frame(n_rows=200, n_features=6, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    on_inputs = recipe.pseudo_responsibilities(recipe._standardised(data).numpy(), 3, 0, SMALL)
    for x_dim, expect_inputs in ((3, True), (2, False)):  # joined codes: 6 or 4 columns wide
        net = GMVAENet(ModelConfig(input_dim=6, k=3, x_dim=x_dim, w_dim=2, hidden=(16,), prior_hidden=16))
        resp = recipe.warm_start(net, data, seed=0, batch_size=64, device=torch.device("cpu"), schedule=SMALL)
        assert np.allclose(resp.numpy(), on_inputs) == expect_inputs


def test_default_recipe_on_iris_beats_kmeans(tmp_path):
    """150 rows × 4 columns: the default recipe finds the three species about as well as a
    full-covariance GMM (ARI 0.90); clustering autoencoder codes gave 0.61, k-means gives 0.62."""
    from sklearn.datasets import load_iris  # shipped with scikit-learn: nothing is downloaded

    iris = load_iris()
    data = tmp_path / "iris.csv"
    pd.DataFrame(iris.data, columns=iris.feature_names).to_csv(data, index=False)
    model = tmp_path / "iris.pt"
    assert run_cli("train", data, "--k", 3, "-o", model, "--quiet").exit_code == 0
    out = pd.read_csv(io.StringIO(run_cli("assign", model, data).stdout))
    assert adjusted_rand_score(iris.target, out["cluster"]) >= 0.85

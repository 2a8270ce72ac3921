"""The recipes on small synthetic data: warm start, guided loss, schedule, epochs and rates."""

import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import make_blobs_frame, run_cli
from gmvae_cli import clustering, neighbour_embedding, recipe, settings, warm_start
from gmvae_cli.model import ELBOTerms, GMVAENet, ModelConfig, log_cluster_posterior
from gmvae_cli.recipe import DefaultRecipe, PaperRecipe, Phase
from gmvae_cli.sources import InMemoryRows

SMALL = dataclasses.replace(warm_start.DEFAULT_SETTINGS, pretrain_epochs=3,
                            codes_pretrain_steps=None)
CPU = torch.device("cpu")


def prepared(net: GMVAENet, data: torch.Tensor, warm=SMALL, seed: int = 0) -> DefaultRecipe:
    """The default recipe's warm start on these rows (in memory), as the training loop runs it."""
    chosen = DefaultRecipe(warm=warm)
    chosen.prepare(net, InMemoryRows(data.numpy()), seed=seed, batch_size=64, device=CPU,
                   report=lambda stage, done: None, save=lambda: None, timings={})
    return chosen


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
    # 1,000 rows are 8 batches: 13 epochs per phase reach DefaultRecipe.MIN_PHASE_STEPS (100).
    assert phases == ["guided"] * 13 + ["elbo"] * 13


def test_warm_start_initialises_the_prior_from_the_pseudo_clusters():
    frame, _ = make_blobs_frame(n_rows=300, n_features=6, k=3, seed=1)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=6, k=3, x_dim=2, w_dim=2, hidden=(16,), prior_hidden=16))
    resp = prepared(net, data).targets
    assert resp.shape == (300, 3)
    np.testing.assert_allclose(resp.sum(1).numpy(), 1.0, rtol=1e-5)
    # The prior's mean biases are the responsibility-weighted code means of each cluster.
    codes = warm_start.encode_means(net, data, CPU)
    expected = (resp.T @ codes) / resp.sum(0)[:, None]
    np.testing.assert_allclose(net.prior.means.bias.detach().view(3, 2).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    # Shrunk output weights: every w gives nearly the same components.
    assert net.prior.means.weight.abs().max() < 0.01


def guided_recipe(targets: torch.Tensor) -> DefaultRecipe:
    chosen = DefaultRecipe()
    chosen.targets = targets
    return chosen


GUIDED = Phase("guided", 1, 1e-3)


def test_guided_loss_adds_cross_entropy_only_for_confident_rows():
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    y, rows = torch.randn(6, 4), torch.arange(6)
    unsure = torch.full((6, 2), 0.5)  # below the confidence cutoff: no cross-entropy
    torch.manual_seed(1)
    loss, terms = guided_recipe(unsure).loss(net, y, rows, GUIDED)
    assert float(loss) == pytest.approx(float(-terms.elbo))
    # Rows 0-3 sure of cluster 0, rows 4-5 unsure: the cross-entropy averages the sure rows.
    mixed = torch.tensor([[1.0, 0.0]] * 4 + [[0.5, 0.5]] * 2)
    torch.manual_seed(1)
    loss, terms = guided_recipe(mixed).loss(net, y, rows, GUIDED)
    x_mu, _, w_mu, _ = net.encoder(y)
    means, logvars = net.prior(w_mu)
    ce = -log_cluster_posterior(x_mu, means, logvars)[:4, 0].mean()
    weight = DefaultRecipe.PSEUDO_LABEL_WEIGHT
    assert float(loss) == pytest.approx(float(-terms.elbo + weight * ce), rel=1e-5)


def test_off_the_codes_path_the_pull_weighs_more():
    """The same batch and pseudo-labels: the loss is −ELBO + 5 × cross-entropy where the
    pseudo-clusters were found in autoencoder codes, and + 20 × where in the columns."""
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    y, rows = torch.randn(6, 4), torch.arange(6)
    targets = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    x_mu, _, w_mu, _ = net.encoder(y)
    log_pz = log_cluster_posterior(x_mu, *net.prior(w_mu))
    ce = -(log_pz[:3, 0].sum() + log_pz[3:, 1].sum()) / 6
    for codes, weight in ((True, 5.0), (False, 20.0)):
        chosen = guided_recipe(targets)
        chosen.found = {"codes": codes}
        torch.manual_seed(1)
        loss, terms = chosen.loss(net, y, rows, GUIDED)
        assert chosen.pseudo_label_weight == weight
        assert float(loss) == pytest.approx(float(-terms.elbo + weight * ce), rel=1e-5)


def test_elbo_phase_is_the_models_own_elbo_with_the_same_pull():
    """After the guided phase: the model's own ELBO (its p(z|x,w) in the conditional prior,
    not the pseudo-clusters) plus the same cross-entropy to confident pseudo-labels."""
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    y, rows = torch.randn(6, 4), torch.arange(6)
    targets = torch.tensor([[0.0, 1.0]] * 3 + [[0.6, 0.4]] * 3)
    torch.manual_seed(1)
    loss, terms = guided_recipe(targets).loss(net, y, rows, Phase("elbo", 1, 1e-4))
    torch.manual_seed(1)
    own = net.elbo_terms(y)
    for name in ELBOTerms.NAMES:
        assert float(getattr(terms, name)) == pytest.approx(float(getattr(own, name)), rel=1e-6)
    x_mu, _, w_mu, _ = net.encoder(y)
    ce = -log_cluster_posterior(x_mu, *net.prior(w_mu))[:3, 1].mean()
    weight = DefaultRecipe.PSEUDO_LABEL_WEIGHT
    assert float(loss) == pytest.approx(float(-own.elbo + weight * ce), rel=1e-5)


def test_a_run_resumed_without_pseudo_clusters_trains_the_plain_elbo():
    """Checkpoints of earlier versions dropped the pseudo-clusters after the guided phase;
    a run resumed from one in its ELBO phase goes on with the plain ELBO."""
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    chosen = DefaultRecipe()
    chosen.load_state_dict({"stage": "trained", "pretraining": None, "placer": None,
                            "pseudo_labels": None, "found": {}})
    y = torch.randn(5, 4)
    torch.manual_seed(1)
    loss, terms = chosen.loss(net, y, torch.arange(5), Phase("elbo", 1, 1e-4))
    assert float(loss) == pytest.approx(float(-terms.elbo))


def test_guided_loss_reads_the_targets_of_the_batch_rows():
    """Targets are looked up by row number: a shuffled batch gets its own rows' targets."""
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, x_dim=2, w_dim=2, hidden=(8,), prior_hidden=8)).eval()
    y = torch.randn(3, 4)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    torch.manual_seed(1)
    loss, terms = guided_recipe(targets).loss(net, y, torch.tensor([4, 1, 3]), GUIDED)
    x_mu, _, w_mu, _ = net.encoder(y)
    log_pz = log_cluster_posterior(x_mu, *net.prior(w_mu))
    ce = -(log_pz[0, 0] + log_pz[1, 1] + log_pz[2, 1]) / 3
    assert float(loss) == pytest.approx(float(-terms.elbo + DefaultRecipe.PSEUDO_LABEL_WEIGHT * ce), rel=1e-5)


def test_default_phases_and_rates():
    default = DefaultRecipe()
    assert default.phases() == [Phase("guided", 10, 1e-3), Phase("elbo", 10, 1e-4)]
    assert default.warm.pretrain_epochs == 20 and default.warm.pretrain_lr == 1e-3
    # --lr sets the base rate; the plain-ELBO phase keeps its tenth of it.
    assert DefaultRecipe(lr=0.01).phases() == [Phase("guided", 10, 0.01), Phase("elbo", 10, 0.001)]
    assert DefaultRecipe(lr=0.01).warm.pretrain_lr == 0.01
    assert PaperRecipe(epochs=7).phases() == [Phase("elbo", 7, 1e-3)]  # no warm start


@pytest.mark.parametrize(("rows", "epochs"), [(120, 100), (150, 50), (1000, 13), (1280, 10),
                                             (50_000, 10), (500_000, 1)])
def test_default_phases_scale_with_the_table(rows, epochs):
    """A small table's phases run at least MIN_PHASE_STEPS steps (120 rows: one per epoch);
    past FULL_EPOCHS_ROWS rows they shorten to about the steps taken there."""
    chosen = DefaultRecipe()
    chosen.rows, chosen.batch_size = rows, 128
    assert [(p.name, p.epochs) for p in chosen.phases()] == [("guided", epochs), ("elbo", epochs)]
    given = DefaultRecipe(epochs=4)  # --epochs is taken as it is
    given.rows, given.batch_size = rows, 128
    assert [p.epochs for p in given.phases()] == [2, 2]


@pytest.mark.parametrize(
    ("epochs", "guided", "free", "pretrain"),
    [(20, 10, 10, 20), (15, 7, 8, 15), (3, 1, 2, 3), (2, 1, 1, 2), (1, 1, 0, 1), (60, 30, 30, 60)],
)
def test_epochs_option_scales_every_phase(epochs, guided, free, pretrain):
    """--epochs keeps the default recipe's proportions: short runs still end with plain-ELBO
    epochs (before, --epochs 20 or less ran none) and pretraining shortens with them."""
    chosen = DefaultRecipe(epochs=epochs)
    assert [(p.name, p.epochs) for p in chosen.phases()] == \
        [("guided", guided)] + ([("elbo", free)] if free else [])
    assert chosen.warm.pretrain_epochs == pretrain


@pytest.mark.parametrize(("rows", "width", "epochs"), [
    (10_000, 784, 51),  # MNIST-test: 79 steps per epoch, 4,000 steps
    (7_291, 256, 71),  # USPS
    (5_000, 51, 100),  # the smallest sample on the codes path
    (50_000, 784, 20),  # a full sample's 20 epochs take 7,820 steps already
    (10_000, 50, 20),  # too narrow for codes: the autoencoder only starts the GMVAE
    (4_999, 784, 20),  # too few rows for codes
])
def test_codes_path_pretrains_for_a_number_of_steps(rows, width, epochs):
    """On the codes path each autoencoder takes at least codes_pretrain_steps steps at the
    batch size; elsewhere, and with --epochs, the epochs are taken as they are."""
    sample = torch.zeros(rows, width)
    assert warm_start.pretrain_epochs(sample, warm_start.DEFAULT_SETTINGS, 128) == epochs
    assert warm_start.pretrain_epochs(sample, DefaultRecipe(epochs=10).warm, 128) == 10


def test_recipe_names_are_declared_once():
    assert tuple(recipe.RECIPES) == settings.RECIPES


def test_exact_neighbours_match_brute_force_search_across_blocks():
    from sklearn.neighbors import NearestNeighbors

    codes = np.random.default_rng(5).standard_normal((300, 7)).astype(np.float32)
    index, distance = neighbour_embedding.exact_knn(torch.from_numpy(codes), 6,
                                                    block_elements=300 * 64)  # 5 blocks
    want_distance, want_index = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(codes).kneighbors(codes)
    np.testing.assert_array_equal(index.numpy(), want_index)
    np.testing.assert_array_equal(index[:, 0].numpy(), np.arange(300))  # each row its own nearest
    assert (distance[:, 0] == 0).all()  # exactly: UMAP reads the first non-zero as a neighbour
    np.testing.assert_allclose(distance.numpy(), want_distance, atol=1e-4)


def test_dequantising_spreads_grid_columns_by_one_step():
    rng = np.random.default_rng(0)
    values = np.column_stack([
        rng.integers(1, 4, 500) * 2.0,  # a code on a grid of step 2
        rng.integers(0, 2, 500),  # one-hot 0/1
        rng.normal(size=500),  # continuous: left alone
        np.r_[np.zeros(499), 0.3],  # two values, one grid step: spread too
    ])
    out = warm_start.dequantised(values, np.random.default_rng(1), max_values=32)
    np.testing.assert_array_equal(out[:, 2], values[:, 2])
    for j, step in ((0, 2.0), (1, 1.0), (3, 0.3)):
        noise = out[:, j] - values[:, j]
        assert np.abs(noise).max() <= step / 2 and noise.std() > step / 5
        np.testing.assert_array_equal(np.round(out[:, j] / step) * step, values[:, j])


def test_a_nuisance_code_column_does_not_capture_the_mixture():
    """Blobs plus an integer column on {1, 2, 3} unrelated to them: a full-covariance
    mixture on the raw columns fits the code's flat sheets on some seeds; dequantised, it
    finds the blobs on every seed."""
    from sklearn.metrics import adjusted_rand_score as ari

    frame, labels = make_blobs_frame(n_rows=900, n_features=6, k=4, seed=6, spread=5.0)
    frame["batch"] = np.random.default_rng(7).integers(1, 4, len(frame))
    columns = ((frame - frame.mean()) / frame.std()).to_numpy()
    timings: dict = {}
    raw = [warm_start._mixture(columns, 4, s, SMALL, timings).resp.argmax(1) for s in range(4)]
    fixed = [warm_start._columns_mixture(warm_start._columns_space(columns, s, SMALL), 4, s,
                                         SMALL, timings).resp.argmax(1) for s in range(4)]
    assert min(ari(labels, c) for c in fixed) >= 0.95
    assert min(ari(labels, c) for c in raw) < 0.9


def test_blobs_are_clustered_on_their_columns():
    """On blobs the columns' two runs agree, so the graph could not win and is never built."""
    from sklearn.metrics import adjusted_rand_score as ari

    frame, labels = make_blobs_frame(n_rows=600, n_features=4, k=3, seed=8)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=4, k=3, hidden=(16,)))
    timings: dict = {}
    spaces = warm_start.spaces([net], data, 0, CPU, timings, SMALL)
    resp, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, timings, SMALL)
    assert found["chosen"] == "columns" and found["stability"] == {"columns": 1.0}
    assert ari(labels, resp.argmax(1).numpy()) >= 0.99
    assert set(timings) == {"columns", "mixture"} and spaces.embeddings is None


@pytest.mark.parametrize(("columns", "floor", "can_win"),
                         [(1.0, None, False), (0.99, None, False), (0.985, None, True),
                          (1.0, 0.9, True)])
def test_the_graph_is_built_only_where_it_could_be_chosen(columns, floor, can_win):
    """With margin 0.01 a graph (stability at most 1) cannot beat columns at 0.99 or above,
    except on the codes path, where a stable graph is kept whatever the columns say."""
    runs = warm_start.Candidate("columns", [], columns)
    assert warm_start.graph_can_win(runs, 0.01, floor) is can_win
    if not can_win:
        best = warm_start.Candidate("graph", [], 1.0)
        assert warm_start.choose([runs, best], margin=0.01, graph_floor=floor).name == "columns"


@pytest.mark.parametrize(("columns", "graph", "chosen"),
                         [(1.0, 1.0, "columns"), (0.60, 0.605, "columns"), (0.87, 0.97, "graph")])
def test_the_more_stable_candidate_is_chosen(columns, graph, chosen):
    candidates = [warm_start.Candidate("columns", [], columns), warm_start.Candidate("graph", [], graph)]
    assert warm_start.choose(candidates, margin=0.01).name == chosen


@pytest.mark.parametrize(("columns", "graph", "chosen"),
                         [(0.9936, 0.9773, "graph"), (0.99, 0.85, "columns"), (0.5, 0.85, "graph")])
def test_on_codes_the_graph_is_kept_unless_unstable(columns, graph, chosen):
    """Large wide tables: the columns' mixture on a few principal components may be the more
    stable and still the worse partition (USPS), so a stable graph of codes is kept."""
    candidates = [warm_start.Candidate("columns", [], columns), warm_start.Candidate("graph", [], graph)]
    assert warm_start.choose(candidates, margin=0.01, graph_floor=0.9).name == chosen


@pytest.mark.parametrize(("min_width", "on_codes"), [(5, True), (8, False)])
def test_spaces_say_whether_the_graph_is_built_on_codes(min_width, on_codes):
    data = torch.randn(120, 8, generator=torch.Generator().manual_seed(0))
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    settings = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=min_width)
    spaces = warm_start.spaces([net], data, 0, CPU, {}, settings)
    assert spaces.on_codes is on_codes and len(spaces.graph({})) == 2


def test_on_codes_a_stable_graph_is_kept_without_fitting_the_columns(monkeypatch):
    """Blobs on the codes path: the graph of codes is stable, so the columns' mixtures,
    which could not change the choice, are never fitted; an unstable graph still gets
    them fitted and compared."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=8, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)  # the codes are an untrained encoder's: the same one in any test order
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    settings = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=5)
    fitted = []
    real = warm_start._mixture
    monkeypatch.setattr(warm_start, "_mixture", lambda space, *args: fitted.append(args[-1]) or
                        real(space, *args))
    spaces = warm_start.spaces([net], data, 0, CPU, {}, settings)
    _, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, {}, settings)
    assert found["chosen"] == "graph" and set(found["stability"]) == {"graph"}
    assert found["stability"]["graph"] >= settings.codes_graph_floor
    # the graph's two runs and two more layouts' (Spaces.most_modular), no columns
    assert fitted == [("full",)] * SMALL.codes_layouts
    unreachable = dataclasses.replace(settings, codes_graph_floor=1.01)
    spaces = warm_start.spaces([net], data, 0, CPU, {}, unreachable)
    _, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, {}, unreachable)
    assert set(found["stability"]) == {"columns", "graph"}


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


def test_rows_outside_the_sample_take_their_nearest_sample_rows_clusters(monkeypatch):
    """Placing in blocks (here 4 rows at a time) gives the brute-force answer."""
    gen = torch.Generator().manual_seed(3)
    sample, rows = torch.randn(50, 3, generator=gen), torch.randn(23, 3, generator=gen)
    resp = torch.softmax(torch.randn(50, 4, generator=gen), dim=1)
    view = warm_start.View.of(None, sample, CPU)
    monkeypatch.setattr(warm_start, "PLACE_BLOCK_ELEMENTS", 50 * 4)
    placed = warm_start.place(view, view(sample, CPU), resp, rows, CPU, neighbours=5)
    x, s = view(rows, CPU).numpy(), view(sample, CPU).numpy()
    nearest = np.argsort(((x[:, None, :] - s[None, :, :]) ** 2).sum(-1), axis=1)[:, :5]
    np.testing.assert_allclose(placed.numpy(), resp.numpy()[nearest].mean(1), rtol=1e-6)


def test_restart_seeds_share_embeddings_and_mixtures_with_the_same_results():
    """select-k's restart seeds 0 and 1 both need seed 1's embedding and mixtures: with a
    memo the second builds only seed 2's, and finds what it finds without one. The joint
    mixtures' four layouts (seeds 0-3, then 1-4) are each made once too."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=3, k=3, seed=2, spread=1.5)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=3, k=3, hidden=(8,)))
    settings = dataclasses.replace(SMALL, stability_margin=-1.0)  # the graph is always built
    memo: dict = {}
    for seed in (0, 1):
        timings: dict = {}
        shared = warm_start.spaces([net], data, seed, CPU, timings, settings, memo=memo)
        resp, _, _ = warm_start.pseudo_clusters(net, data, shared, CPU, timings, settings)
        alone = warm_start.spaces([net], data, seed, CPU, {}, settings)
        fresh, _, _ = warm_start.pseudo_clusters(net, data, alone, CPU, {}, settings)
        assert torch.equal(resp, fresh)
    assert sorted(key for key in memo if key[0] == "embedding") == [("embedding", s) for s in range(5)]
    assert len([key for key in memo if key[0] in ("columns", "graph")]) == 6  # 2 ways × seeds 0-2
    assert sorted(key for key in memo if key[0] == "joint") == [("joint", 3, 0, 1), ("joint", 3, 1, 2)]


def test_wine_gets_axis_aligned_covariances_and_keeps_its_columns():
    """Wine (178 rows, 13 columns): on its columns as they are, BIC gives the columns'
    mixture axis-aligned covariances, whose two runs agree, so the columns are kept; a full
    covariance per cluster (314 parameters for 178 rows) found partitions its two runs
    disagreed on. Power-transformed, its columns take one shared covariance, of lower BIC
    still (on the columns' own scale), and the runs agree as well."""
    from sklearn.datasets import load_wine

    values = load_wine().data
    data = torch.tensor((values - values.mean(0)) / values.std(0), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=13, k=3, hidden=(16,)))
    timings: dict = {}
    plain = dataclasses.replace(SMALL, columns_power=False)
    spaces = warm_start.spaces([net], data, 0, CPU, timings, plain)
    _, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, timings, plain)
    assert found["chosen"] == "columns" and found["covariance"] == "diag"
    assert found["stability"]["columns"] == 1.0 and not found["power"]
    spaces = warm_start.spaces([net], data, 0, CPU, timings, SMALL)
    _, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, timings, SMALL)
    assert (found["chosen"], found["covariance"], found["power"]) == ("columns", "tied", True)
    assert found["stability"]["columns"] == 1.0
    full = dataclasses.replace(plain, columns_covariances=("full",))
    spaces = warm_start.spaces([net], data, 0, CPU, timings, full)
    _, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, timings, full)
    assert found["covariance"] == "full" and found["stability"]["columns"] < 0.99


def test_off_codes_the_graph_ways_clusters_come_from_both_embeddings_joined():
    """Two moons and three noise columns on the graph way (made to win here): its
    pseudo-clusters are the mixture on both seeds' embeddings and two more seeds' (0-3)
    side by side. What that buys
    is measured by `make bench-tables`, not here: the layouts' floating point differs from
    one CPU to another, and so does a single seed's partition."""
    from sklearn.datasets import make_moons

    values, _ = make_moons(1000, noise=0.08, random_state=0)
    values = np.hstack([values, np.random.default_rng(0).normal(scale=0.3, size=(1000, 3))])
    data = torch.tensor(values, dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=5, k=2, hidden=(16,)))
    settings = dataclasses.replace(SMALL, stability_margin=-1.0)
    spaces = warm_start.spaces([net], data, 0, CPU, {}, settings)
    resp, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, {}, settings)
    assert found["chosen"] == "graph" and found["joined"]
    assert SMALL.joint_layouts == 4
    layouts = [spaces._layout(s, {}) for s in range(4)]
    for mine, theirs in zip(spaces.graph({}), layouts):
        np.testing.assert_array_equal(mine, theirs)
    fresh = {}
    layouts[2:] = [warm_start._embedding(spaces.graph_input, spaces.neighbours({}), s,
                                         settings, fresh) for s in (2, 3)]
    joined = clustering.mixture_by_bic(np.hstack(layouts).astype(np.float64), 2, 0,
                                       SMALL.gmm_inits, ("full",), spaces._graph_score(2, {}))
    np.testing.assert_array_equal(resp.numpy(), joined.resp.astype(np.float32))


def test_the_joint_mixture_keeps_the_restart_of_highest_modularity(monkeypatch):
    """Of the joint mixture's restarts the one whose clusters best fit the neighbour graph
    is kept (scored on the distinct rows: copies count once), whatever its likelihood; the
    two runs whose agreement is the graph's stability keep the likeliest."""
    rng = np.random.default_rng(1)
    values = np.vstack([rng.normal(size=(240, 4)), np.repeat(rng.normal(size=(1, 4)), 30, 0)])
    data = torch.tensor(values, dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=4, k=4, hidden=(16,)))
    spaces = warm_start.spaces([net], data, 0, CPU, {}, SMALL)
    scored = []
    real = clustering.modularity

    def recording(graph, labels, k):
        scored.append((labels.clone(), real(graph, labels, k)))
        return scored[-1][1]

    monkeypatch.setattr(clustering, "modularity", recording)
    spaces.runs("graph", 4, {})
    assert not scored
    chosen = spaces.joint(4, {}).resp.argmax(1)
    (labels, modularity), = scored
    assert labels.shape == (SMALL.gmm_inits, len(spaces.graph_input))
    assert len(spaces.graph_input) < len(values)
    first = np.unique(spaces.graph_rows, return_index=True)[1]
    np.testing.assert_array_equal(chosen[first], labels[int(modularity.argmax())].numpy())
    assert len(set(modularity.tolist())) > 1  # the restarts differ: the choice mattered


def test_on_codes_the_pseudo_clusters_are_the_most_modular_layouts(monkeypatch):
    """On the codes path the graph way's clusters are one layout's mixture: of the two runs'
    (seeds 0 and 1) and two more seeds' (2 and 3), the one whose clusters score the highest
    modularity in the neighbour graph, not the first run's."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=8, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    settings = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=5)
    fitted = []  # (seed, mixture) of every mixture on a layout
    real = warm_start._mixture

    def recording(space, k, seed, *args):
        fitted.append((seed, real(space, k, seed, *args)))
        # the extra layouts' clusters made to differ (rows rotated), so the choice shows;
        # the two runs stay as they are: their agreement keeps the graph
        resp = np.roll(fitted[-1][1].resp, max(seed - 1, 0), axis=0)
        fitted[-1] = (seed, fitted[-1][1]._replace(resp=resp))
        return fitted[-1][1]

    scored = []

    def modularity(graph, labels, k):
        scored.append(labels.clone())
        return torch.tensor([0.1, 0.2, 0.4, 0.3])  # the third layout fits best

    monkeypatch.setattr(warm_start, "_mixture", recording)
    monkeypatch.setattr(clustering, "modularity", modularity)
    spaces = warm_start.spaces([net], data, 0, CPU, {}, settings)
    resp, _, found = warm_start.pseudo_clusters(net, data, spaces, CPU, {}, settings)
    assert found["chosen"] == "graph" and not found["joined"]
    assert [seed for seed, _ in fitted] == [0, 1, 2, 3]
    (labels,) = scored
    np.testing.assert_array_equal(labels.numpy(), [m.resp.argmax(1) for _, m in fitted])
    np.testing.assert_array_equal(resp.numpy(), fitted[2][1].resp.astype(np.float32))


def test_on_codes_another_k_lays_out_no_layout_again(monkeypatch):
    """select-k asks one seed's spaces for several Ks: each of the four layouts is laid out
    once, for the first K, and the next K's mixtures reuse them."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=8, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    settings = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=5)
    seeds = []
    real = neighbour_embedding.embed
    monkeypatch.setattr(neighbour_embedding, "embed",
                        lambda *args, **kw: seeds.append(kw["seed"]) or real(*args, **kw))
    spaces = warm_start.spaces([net], data, 0, CPU, {}, settings)
    for k in (3, 4):
        spaces.most_modular(k, [m.resp for m in spaces.runs("graph", k, {})], {})
    assert seeds == [0, 1, 2, 3]


@pytest.mark.parametrize("min_width, epochs", [(5, 200), (50, None)])
def test_the_graph_of_codes_is_laid_out_in_fewer_epochs(monkeypatch, min_width, epochs):
    """Codes: 200 epochs; the columns keep umap-learn's rule (None: 500 up to 10,000 rows)."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=8, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    asked = []
    real = neighbour_embedding.embed
    monkeypatch.setattr(neighbour_embedding, "embed",
                        lambda *args, **kw: asked.append(kw["epochs"]) or real(*args, **kw))
    settings = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=min_width)
    warm_start.spaces([net], data, 0, CPU, {}, settings).graph({})
    assert asked == [epochs, epochs]


def test_distinct_rows_keep_table_order_and_map_every_copy():
    values = np.array([[2.0, 1.0], [0.0, 5.0], [2.0, 1.0], [1.0, 1.0], [0.0, 5.0]])
    first, rows = warm_start.distinct_rows(values)
    np.testing.assert_array_equal(first, [0, 1, 3])
    np.testing.assert_array_equal(rows, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(values[first][rows], values)


def test_the_graph_joins_distinct_rows_and_copies_share_their_place(monkeypatch):
    """Scores repeat rows (a third of biopsy's): the graph is built on the distinct rows, so
    copies are not each other's only neighbours, and every copy gets its row's layout."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(1, 11, size=(150, 4)).astype(float)
    copies = np.repeat(distinct[:1], 60, axis=0)  # one row 60 times: more than 20 neighbours
    values = np.vstack([distinct, copies, distinct[:30]])
    data = torch.tensor((values - values.mean(0)) / values.std(0), dtype=torch.float32)
    net = GMVAENet(ModelConfig(input_dim=4, k=2, hidden=(16,)))
    embedded = []
    real = neighbour_embedding.embed
    monkeypatch.setattr(neighbour_embedding, "embed",
                        lambda rows, **kw: embedded.append(len(rows)) or real(rows, **kw))
    spaces = warm_start.spaces([net], data, 0, CPU, {}, SMALL)
    layouts = spaces.graph({})
    unique = len(np.unique(distinct, axis=0))
    assert embedded == [unique, unique] and len(spaces.graph_input) == unique
    for layout in layouts:
        assert layout.shape == (len(values), SMALL.embed_dims)
        np.testing.assert_array_equal(layout[150:210], np.repeat(layout[:1], 60, axis=0))
        np.testing.assert_array_equal(layout[210:], layout[:30])


def test_refined_clusters_keep_the_components_they_overlap_most():
    """Three separated blobs of codes, the current labels a permutation of them with a few
    rows wrong: the clusters found again carry the current labels' numbers, so each keeps
    its prior component."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 100)
    codes = rng.normal(scale=0.3, size=(300, 4)) + np.eye(4)[truth] * 6
    current = np.array([2, 0, 1])[truth]
    current[:5] = 0  # five rows of blob 0 (label 2) labelled 0 now
    resp = warm_start.refined(codes, current, 3, 0, SMALL)
    assert resp.shape == (300, 3)
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(resp.argmax(1), np.array([2, 0, 1])[truth])


def elbo_phase(warm, seed: int = 0):
    """A default recipe's warm start and ELBO-phase start on blobs, with `warm` settings."""
    frame, _ = make_blobs_frame(n_rows=300, n_features=8, k=3, seed=2)
    data = torch.tensor(((frame - frame.mean()) / frame.std()).to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    net = GMVAENet(ModelConfig(input_dim=8, k=3, hidden=(16,)))
    rows = InMemoryRows(data.numpy())
    chosen = DefaultRecipe(warm=warm)
    chosen.prepare(net, rows, seed=seed, batch_size=64, device=CPU,
                   report=lambda stage, done: None, save=lambda: None, timings={})
    before = chosen.targets.clone()
    chosen.start_phase(net, rows, chosen.phases()[1], device=CPU, timings={})
    return chosen, net, rows, data, before


def test_on_codes_the_elbo_phase_pulls_towards_clusters_found_in_the_gmvaes_codes():
    codes_path = dataclasses.replace(SMALL, codes_min_rows=100, codes_min_width=5)
    chosen, net, rows, data, before = elbo_phase(codes_path)
    assert chosen.found["codes"] and chosen.found["chosen"] == "graph"
    view = warm_start.View.of([net], data, CPU)
    expected = warm_start.refined(view(data, CPU).numpy(), before.argmax(1).numpy(), 3, 0,
                                  codes_path)
    np.testing.assert_array_equal(chosen.targets.numpy(), expected.astype(np.float32))
    assert chosen.refined is not None and chosen.refined["covers"]
    # The pseudo-labels (the warm start's own) stay; a resumed run gets the refined targets.
    assert torch.equal(chosen.pseudo_labels, before.argmax(1).to(torch.int32))
    resumed = DefaultRecipe(warm=codes_path)
    resumed.load_state_dict(chosen.state_dict())
    resumed.prepare(net, rows, seed=0, batch_size=64, device=CPU,
                    report=lambda stage, done: None, save=lambda: None, timings={})
    assert torch.equal(resumed.targets, chosen.targets)
    assert torch.equal(resumed.pseudo_labels, chosen.pseudo_labels)
    resumed.start_phase(net, rows, resumed.phases()[1], device=CPU, timings={})  # once only
    assert torch.equal(resumed.targets, chosen.targets)


def test_off_codes_the_elbo_phase_keeps_the_warm_starts_clusters():
    chosen, _, _, _, before = elbo_phase(SMALL)
    assert not chosen.found["codes"] and chosen.refined is None
    assert torch.equal(chosen.targets, before)


def test_skewed_clusters_are_found_on_power_transformed_columns():
    """Two clusters of log-normal columns (sizes, concentrations): the mixture on the columns
    as they are spends its components' spread on the long tails; BIC on the columns' own
    scale prefers the power-transformed fit, which separates the clusters better. Gaussian
    blobs keep the plain fit."""
    from sklearn.metrics import adjusted_rand_score as ari

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    skewed = np.exp(labels[:, None] + 0.5 * rng.normal(size=(600, 3)))
    timings: dict = {}

    def mixture(values, k, settings=SMALL):
        columns = (values - values.mean(0)) / values.std(0)
        space = warm_start._columns_space(columns, 0, settings)
        return warm_start._columns_mixture(space, k, 0, settings, timings)

    found = mixture(skewed, 2)
    plain = mixture(skewed, 2, dataclasses.replace(SMALL, columns_power=False))
    assert found.power and not plain.power
    assert ari(labels, found.resp.argmax(1)) >= ari(labels, plain.resp.argmax(1)) + 0.05
    blobs, _ = make_blobs_frame(n_rows=600, n_features=3, k=3, seed=4)
    assert not mixture(blobs.to_numpy(), 3).power


def test_a_filled_cell_takes_the_median_of_its_nearest_rows(monkeypatch):
    """Neighbours by the other columns, among rows not filled in that column; the lower
    median of five, a value the column holds. Past IMPUTE_DONORS rows, evenly spaced ones."""
    position = np.arange(10.0)
    values = np.column_stack([position, [1, 2, 9, 3, 4, 5, 6, 7, 8, 0.0]])
    gaps = np.zeros_like(values, dtype=bool)
    gaps[2, 1] = gaps[9, 1] = True
    out = warm_start.imputed(values, gaps, neighbours=5)
    # row 2's nearest rows 1, 3, 0, 4, 5 (row 9 was filled too): values 2, 3, 1, 4, 5
    assert out[2, 1] == 3.0
    assert out[9, 1] == 6.0  # rows 8, 7, 6, 5, 4: values 8, 7, 6, 5, 4
    np.testing.assert_array_equal(np.delete(out, [2, 9], axis=0), np.delete(values, [2, 9], axis=0))
    monkeypatch.setattr(warm_start, "IMPUTE_DONORS", 4)  # rows 0, 3, 5, 7 of the 8 not filled
    capped = warm_start.imputed(values, gaps, neighbours=5)
    assert capped[9, 1] == 3.0  # all four, values 7, 5, 3, 1: the lower median


def test_mean_filled_gaps_do_not_capture_the_columns_mixture():
    """Elongated clusters with a tenth of two columns missing: filled with the mean, those
    cells are a flat sheet that a full covariance fits with unbounded likelihood; imputed
    from their nearest rows for the warm start, the clusters are found."""
    from sklearn.metrics import adjusted_rand_score as ari

    from gmvae_cli.preprocess import Preprocessor

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 900)
    stretch = np.array([[6.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    values = rng.normal(size=(900, 3)) @ stretch @ rotation + np.eye(3)[labels] * 10.0
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    for c in ("a", "b"):
        frame.loc[rng.random(900) < 0.1, c] = np.nan
    pre, _ = Preprocessor.fit([frame], ["a", "b", "c"], "mean", "gaussian")
    assert pre.gaps == ["a", "b"] and pre.filled == [0.0, 0.0, pytest.approx(math.nan, nan_ok=True)]
    data = torch.from_numpy(pre.transform(frame)[0])
    net = GMVAENet(ModelConfig(input_dim=3, k=3, hidden=(16,)))
    scores = {}
    for name, filled in (("filled", None), ("imputed", pre.filled)):
        spaces = warm_start.spaces([net], data, 0, CPU, {}, SMALL, filled=filled)
        resp, _, _ = warm_start.pseudo_clusters(net, data, spaces, CPU, {}, SMALL)
        scores[name] = ari(labels, resp.argmax(1).numpy())
    assert scores["imputed"] >= 0.9 and scores["filled"] < 0.8


def test_the_graph_of_numbers_and_indicators_sees_the_imputed_numbers_too():
    """With one-hot columns the graph sees plain 0/1 indicators beside the numbers; a filled
    number is imputed there as in the columns' space, not left at the column's mean."""
    from gmvae_cli.preprocess import Preprocessor

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300),
                          "kind": rng.choice(["x", "y", "z"], 300)})
    frame.loc[:29, "a"] = np.nan
    pre, _ = Preprocessor.fit([frame], ["a", "b", "kind"], "mean", "gaussian", encode=["kind"])
    data = torch.from_numpy(pre.transform(frame)[0])
    net = GMVAENet(ModelConfig(input_dim=pre.width, k=3, hidden=(8,)))
    spaces = warm_start.spaces([net], data, 0, CPU, {}, SMALL, indicators=pre.indicators,
                               filled=pre.filled)
    assert spaces.graph_rows is None  # every row distinct: graph_input is the sample's rows
    graph_a = spaces.graph_input[:, 0]
    columns_a = spaces.columns[0].plain[:, 0]
    assert len(np.unique(graph_a[:30])) > 1 and not np.isin(graph_a[:30], [0.0]).any()
    # the same rows imputed in both: standardised alike, so equal up to float32
    np.testing.assert_allclose(graph_a, columns_a, rtol=1e-5, atol=1e-5)


def test_a_wide_tables_gaps_are_imputed_from_neighbours_on_principal_components():
    """Past IMPUTE_MAX_DIMS columns the neighbours are found on the principal components:
    a filled cell still takes a value of its own cluster's side."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    values = np.where(labels[:, None] == 1, 2.0, -2.0) + rng.normal(size=(400, 80))
    gaps = rng.random(values.shape) < 0.05
    assert values.shape[1] > warm_start.IMPUTE_MAX_DIMS
    out = warm_start.imputed(np.where(gaps, 0.0, values), gaps, neighbours=5)
    side = np.where(labels[:, None] == 1, 1.0, -1.0) * np.ones_like(values)
    assert (np.sign(out[gaps]) == side[gaps]).mean() > 0.95
    np.testing.assert_array_equal(out[~gaps], values[~gaps])

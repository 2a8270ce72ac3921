"""Each ELBO term of MODEL.md against an independent NumPy computation on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from gmvae_cli.model import (
    GMVAENet,
    ModelConfig,
    gaussian_kl,
    log_cluster_posterior,
    standard_normal_kl,
    thresholded,
    z_prior_kl,
)


def np_gauss_kl(m1, lv1, m2, lv2):
    v1, v2 = np.exp(lv1), np.exp(lv2)
    return 0.5 * np.sum(np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0, axis=-1)


def np_log_normal(x, m, lv):
    v = np.exp(lv)
    return np.sum(-0.5 * np.log(2 * np.pi * v) - (x - m) ** 2 / (2 * v), axis=-1)


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def test_gaussian_kl_hand_values():
    # KL(N(1,1) || N(0,1)) = 1/2; KL(N(0,1) || N(0,4)) = (ln 4 + 1/4 - 1) / 2.
    assert float(gaussian_kl(t([1.0]), t([0.0]), t([0.0]), t([0.0]))) == pytest.approx(0.5)
    expected = 0.5 * (math.log(4.0) + 0.25 - 1.0)
    assert float(gaussian_kl(t([0.0]), t([0.0]), t([0.0]), t([math.log(4.0)]))) == pytest.approx(expected)
    # Summed over dimensions, and zero for identical Gaussians.
    assert float(gaussian_kl(t([0.3, -1.0]), t([0.2, 0.1]), t([0.3, -1.0]), t([0.2, 0.1]))) == pytest.approx(0.0)


def test_standard_normal_kl_is_the_general_kl_to_n01():
    rng = np.random.default_rng(0)
    mu, lv = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    got = standard_normal_kl(t(mu), t(lv)).numpy()
    np.testing.assert_allclose(got, np_gauss_kl(mu, lv, 0.0, 0.0), rtol=1e-12)
    # KL(N(2, 1) || N(0, 1)) = 2 by hand.
    assert float(standard_normal_kl(t([2.0]), t([0.0]))) == pytest.approx(2.0)


def test_cluster_posterior_is_bayes_rule_and_sums_to_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2))
    means, logvars = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2)) * 0.5
    got = log_cluster_posterior(t(x), t(means), t(logvars)).exp().numpy()
    joint = np.exp(np_log_normal(x[:, None, :], means, logvars)) / 3.0  # π_k = 1/3
    np.testing.assert_allclose(got, joint / joint.sum(1, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)


def test_cluster_posterior_does_not_underflow_far_from_every_component():
    x = t([[1e4, 1e4]])
    means, logvars = t([[[0.0, 0.0], [1.0, 1.0]]]), t([[[0.0, 0.0], [0.0, 0.0]]])
    p = log_cluster_posterior(x, means, logvars).exp()
    assert torch.isfinite(p).all() and float(p[0, 1]) == pytest.approx(1.0)


def test_z_prior_kl_values():
    k = 4
    uniform = torch.full((k,), 1.0 / k).log()
    assert float(z_prior_kl(uniform)) == pytest.approx(0.0, abs=1e-7)
    one_hot = t([1.0, 1e-300, 1e-300, 1e-300]).log()
    assert float(z_prior_kl(one_hot)) == pytest.approx(math.log(k))
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert float(z_prior_kl(t(p).log())) == pytest.approx(np.sum(p * np.log(k * p)))


def test_threshold_is_max_and_blocks_gradient_below_lambda():
    below = torch.tensor(0.2, requires_grad=True)
    out = thresholded(below, 0.5)
    out.backward()
    assert float(out.detach()) == 0.5 and float(below.grad) == 0.0
    above = torch.tensor(0.9, requires_grad=True)
    out = thresholded(above, 0.5)
    out.backward()
    assert float(out.detach()) == pytest.approx(0.9) and float(above.grad) == 1.0


def _tiny_net(k=3, likelihood="gaussian", mc=2):
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=4, k=k, x_dim=2, w_dim=3, hidden=(5,), prior_hidden=6,
                      likelihood=likelihood, mc_samples=mc, lambda_z=0.5)
    return GMVAENet(cfg).double().eval(), cfg


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_elbo_terms_match_numpy(likelihood):
    net, cfg = _tiny_net(likelihood=likelihood)
    rng = np.random.default_rng(2)
    y_np = rng.uniform(size=(3, 4)) if likelihood == "bernoulli" else rng.normal(size=(3, 4))
    y = t(y_np)
    torch.manual_seed(7)
    terms = net.elbo_terms(y)

    # Replay the same noise the model drew: first for x, then for w.
    torch.manual_seed(7)
    eps_x = torch.randn(2, 3, 2, dtype=torch.float64).numpy()
    eps_w = torch.randn(2, 3, 3, dtype=torch.float64).numpy()
    with torch.no_grad():
        x_mu, x_lv, w_mu, w_lv = (a.numpy() for a in net.encoder(y))
        x = x_mu + eps_x * np.exp(0.5 * x_lv)  # (M, B, x_dim)
        w = w_mu + eps_w * np.exp(0.5 * w_lv)
        means, logvars = (a.numpy() for a in net.prior(t(w)))  # (M, B, K, x_dim)
        dec_mean, dec_lv = net.decoder(t(x))
    # Reconstruction.
    if likelihood == "gaussian":
        log_lik = np_log_normal(y_np, dec_mean.numpy(), dec_lv.numpy())
    else:
        p = 1.0 / (1.0 + np.exp(-dec_mean.numpy()))
        log_lik = np.sum(y_np * np.log(p) + (1 - y_np) * np.log(1 - p), axis=-1)
    recon = log_lik.mean(0).mean()
    # p(z | x, w) by Bayes' rule with a uniform prior.
    joint = np.exp(np_log_normal(x[:, :, None, :], means, logvars))
    pz = joint / joint.sum(-1, keepdims=True)  # (M, B, K)
    kl_k = np_gauss_kl(x_mu[None, :, None, :], x_lv[None, :, None, :], means, logvars)
    conditional = (pz * kl_k).sum(-1).mean(0).mean()
    w_prior = np_gauss_kl(w_mu, w_lv, 0.0, 0.0).mean()
    z_kl = (pz * np.log(cfg.k * pz)).sum(-1).mean()

    assert float(terms.reconstruction) == pytest.approx(recon, rel=1e-9)
    assert float(terms.conditional_prior) == pytest.approx(conditional, rel=1e-9)
    assert float(terms.w_prior) == pytest.approx(w_prior, rel=1e-9)
    assert float(terms.z_prior_raw) == pytest.approx(z_kl, rel=1e-9, abs=1e-12)
    assert float(terms.z_prior) == pytest.approx(max(0.5, z_kl), rel=1e-9)
    assert float(terms.elbo) == pytest.approx(recon - conditional - w_prior - max(0.5, z_kl), rel=1e-9)


def test_k_equal_one_works():
    net, cfg = _tiny_net(k=1, mc=1)
    terms = net.elbo_terms(t(np.random.default_rng(3).normal(size=(4, 4))))
    assert float(terms.z_prior_raw) == pytest.approx(0.0, abs=1e-12)
    assert float(terms.z_prior) == pytest.approx(cfg.lambda_z)
    assert torch.isfinite(terms.elbo)
    proba = net.cluster_log_proba(t(np.zeros((2, 4)))).exp()
    assert proba.shape == (2, 1) and torch.allclose(proba, torch.ones(2, 1, dtype=torch.float64))


def test_cluster_weights_replace_the_posterior_in_the_conditional_prior():
    net, _ = _tiny_net(mc=1)
    y = t(np.random.default_rng(4).normal(size=(3, 4)))
    one_hot = torch.eye(3, dtype=torch.float64)
    torch.manual_seed(1)
    guided = net.elbo_terms(y, cluster_weights=one_hot)
    torch.manual_seed(1)
    x_mu, x_lv, w_mu, w_lv = net.encoder(y)
    torch.randn(1, 3, 2, dtype=torch.float64)  # the x noise comes first; only w matters here
    w = w_mu + torch.randn(1, 3, 3, dtype=torch.float64) * (0.5 * w_lv).exp()
    means, logvars = net.prior(w)
    kl = gaussian_kl(x_mu.unsqueeze(-2), x_lv.unsqueeze(-2), means, logvars)[0]  # (B, K)
    expected = kl.diagonal().mean()  # row i weighted wholly on cluster i
    assert float(guided.conditional_prior) == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("mc", [1, 3])
def test_assignment_term_is_the_posterior_at_the_means_and_changes_no_other_term(mc):
    """with_assignment runs β on w's draws and its mean together: the same terms as without,
    and log p(z | x̄, w̄), the rule cluster_log_proba assigns rows by."""
    net, _ = _tiny_net(mc=mc)
    y = t(np.random.default_rng(6).normal(size=(5, 4)))
    torch.manual_seed(2)
    plain = net.elbo_terms(y)
    torch.manual_seed(2)
    both = net.elbo_terms(y, with_assignment=True)
    for name in ("reconstruction", "conditional_prior", "w_prior", "z_prior"):
        assert float(getattr(both, name)) == pytest.approx(float(getattr(plain, name)), rel=1e-12)
    np.testing.assert_allclose(both.assignment_log_proba.detach().numpy(),
                               net.cluster_log_proba(y).numpy(), rtol=1e-12)


def test_deterministic_assignment_uses_posterior_means():
    net, _ = _tiny_net()
    y = t(np.random.default_rng(5).normal(size=(6, 4)))
    a = net.cluster_log_proba(y)
    b = net.cluster_log_proba(y)
    assert torch.equal(a, b)
    np.testing.assert_allclose(a.exp().sum(1).numpy(), 1.0, rtol=1e-12)


def test_row_elbo_with_draws_is_elbo_terms_per_row_without_the_threshold():
    """With the same M draws, the batch mean of row_elbo is elbo_terms' ELBO with the raw
    z-prior KL in place of max(λ, ·): the threshold is a training device on the batch mean."""
    net, _ = _tiny_net(mc=3)
    y = t(np.random.default_rng(6).normal(size=(5, 4)))
    torch.manual_seed(11)
    terms = net.elbo_terms(y)
    torch.manual_seed(11)
    rows = net.row_terms(y, mc_samples=3)
    assert rows.elbo.shape == (5,)
    assert float(rows.reconstruction.mean()) == pytest.approx(float(terms.reconstruction), rel=1e-12)
    assert float(rows.conditional_prior.mean()) == pytest.approx(float(terms.conditional_prior), rel=1e-12)
    assert float(rows.w_prior.mean()) == pytest.approx(float(terms.w_prior), rel=1e-12)
    assert float(rows.z_prior.mean()) == pytest.approx(float(terms.z_prior_raw), rel=1e-12, abs=1e-15)
    expected = terms.elbo + terms.z_prior - terms.z_prior_raw
    assert float(rows.elbo.mean()) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_row_elbo_at_the_posterior_means_matches_numpy(likelihood):
    """mc_samples = 0: every expectation taken at x̄ = E[x|y], w̄ = E[w|y], analytic KLs
    exact; deterministic, independent of the other rows, and its p(z|x̄,w̄) is assign's rule."""
    net, cfg = _tiny_net(likelihood=likelihood)
    rng = np.random.default_rng(7)
    y_np = rng.uniform(size=(4, 4)) if likelihood == "bernoulli" else rng.normal(size=(4, 4))
    y = t(y_np)
    rows = net.row_terms(y)
    with torch.no_grad():
        x_mu, x_lv, w_mu, w_lv = (a.numpy() for a in net.encoder(y))
        means, logvars = (a.numpy() for a in net.prior(t(w_mu)))  # (B, K, x_dim)
        dec_mean, dec_lv = net.decoder(t(x_mu))
    if likelihood == "gaussian":
        recon = np_log_normal(y_np, dec_mean.numpy(), dec_lv.numpy())
    else:
        p = 1.0 / (1.0 + np.exp(-dec_mean.numpy()))
        recon = np.sum(y_np * np.log(p) + (1 - y_np) * np.log(1 - p), axis=-1)
    joint = np.exp(np_log_normal(x_mu[:, None, :], means, logvars))
    pz = joint / joint.sum(-1, keepdims=True)  # (B, K)
    conditional = (pz * np_gauss_kl(x_mu[:, None, :], x_lv[:, None, :], means, logvars)).sum(-1)
    w_prior = np_gauss_kl(w_mu, w_lv, 0.0, 0.0)
    z_prior = (pz * np.log(cfg.k * pz)).sum(-1)
    np.testing.assert_allclose(rows.elbo.numpy(), recon - conditional - w_prior - z_prior, rtol=1e-9)
    np.testing.assert_allclose(rows.log_proba.numpy(), np.log(pz), rtol=1e-9)
    assert torch.equal(rows.log_proba, net.cluster_log_proba(y))
    alone = torch.cat([net.row_elbo(y[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(alone.numpy(), net.row_elbo(y).numpy(), rtol=1e-12)

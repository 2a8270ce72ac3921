"""The GMVAE networks and the ELBO, as specified in shared/spec/MODEL.md.

Notation follows the spec: `y` is an observed row (D features), `x` the continuous latent
where clusters live (x_dim), `w` the noise the mixture components are made from (w_dim),
`z` the one-hot cluster indicator over K clusters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)
# The decoder's Gaussian log-variance is kept in this range: without a floor a feature the
# network fits exactly drives its variance to zero and the likelihood to infinity.
MIN_LOGVAR, MAX_LOGVAR = -6.0, 6.0


@dataclass
class ModelConfig:
    input_dim: int
    k: int = 10
    x_dim: int = 10  # low: clusters separate better in a small latent space
    w_dim: int = 10
    hidden: tuple[int, ...] = (500, 500)  # encoder layers; the decoder mirrors them
    prior_hidden: int = 500  # the spec's prior network: w -> 500 (tanh) -> K means, K variances
    likelihood: str = "gaussian"  # "gaussian" or "bernoulli"
    mc_samples: int = 1  # M in the spec
    lambda_z: float = 0.5  # the z-prior threshold λ
    batch_norm: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


@dataclass
class ELBOTerms:
    """Batch means of the four ELBO terms; `elbo` is what training maximises."""

    reconstruction: torch.Tensor  # E_q(x|y)[log p(y|x)]
    conditional_prior: torch.Tensor  # E[KL(q(x|y) || p(x|w,z))]
    w_prior: torch.Tensor  # KL(q(w|y) || N(0, I))
    z_prior: torch.Tensor  # max(λ, E[KL(p(z|x,w) || p(z))])
    z_prior_raw: torch.Tensor = field(default=None)  # the KL before the threshold
    responsibilities: torch.Tensor = field(default=None)  # (B, K) mean p(z|x,w), detached
    # (B, K) log p(z | posterior means of x and w): the assignment rule, with gradient; only
    # when elbo_terms is asked for it (the default recipe's guided phase trains it)
    assignment_log_proba: torch.Tensor | None = None

    NAMES = ("elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior", "z_prior_raw")

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.conditional_prior - self.w_prior - self.z_prior

    def stacked(self) -> torch.Tensor:
        """The terms in NAMES order as one detached tensor on their device: summing these
        over a whole epoch costs no host round-trip per step."""
        parts = (self.elbo, self.reconstruction, self.conditional_prior, self.w_prior,
                 self.z_prior, self.z_prior_raw)
        return torch.stack([p.detach() for p in parts])

    def as_floats(self) -> dict[str, float]:
        return dict(zip(self.NAMES, self.stacked().tolist()))


@dataclass
class RowTerms:
    """The ELBO of each row and its four terms, (B,) each: see GMVAENet.row_terms."""

    reconstruction: torch.Tensor  # log p(y | x), at x = E[x|y] or averaged over M draws
    conditional_prior: torch.Tensor  # Σ_k p(z_k|x,w) KL(q(x|y) || p(x|w,z_k))
    w_prior: torch.Tensor  # KL(q(w|y) || N(0, I)), analytic
    z_prior: torch.Tensor  # KL(p(z|x,w) || p(z)), raw: no threshold λ
    log_proba: torch.Tensor  # (B, K) log p(z|x,w) (at the means: the assignment rule)

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.conditional_prior - self.w_prior - self.z_prior


# --- closed-form pieces, each a line of the spec -------------------------------------------


def gaussian_kl(mu1, logvar1, mu2, logvar2):
    """KL(N(mu1, e^logvar1) || N(mu2, e^logvar2)) for diagonal Gaussians, summed over the last dim."""
    return 0.5 * (
        logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1.0
    ).sum(-1)


def standard_normal_kl(mu, logvar):
    """KL(N(mu, e^logvar) || N(0, I)), summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_density(x, mu, logvar):
    """log N(x | mu, e^logvar) for diagonal Gaussians, summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) / logvar.exp()).sum(-1)


def log_cluster_posterior(x, means, logvars):
    """log p(z | x, w) by Bayes' rule with the uniform π, in log space (softmax over k).

    x: (..., x_dim); means, logvars: (..., K, x_dim) -> (..., K).
    """
    log_lik = gaussian_log_density(x.unsqueeze(-2), means, logvars)  # (..., K)
    return torch.log_softmax(log_lik, dim=-1)  # log π_k cancels: π is uniform


def z_prior_kl(log_pz):
    """KL(p(z|x,w) || Uniform(K)) = Σ_k p_k log(K p_k), over the last dim."""
    k = log_pz.shape[-1]
    return (log_pz.exp() * (log_pz + math.log(k))).sum(-1)


def thresholded(kl_mean, lambda_z: float):
    """max(λ, KL): below λ the term is the constant λ, so it pulls no gradient."""
    return torch.clamp(kl_mean, min=lambda_z)


# --- networks -------------------------------------------------------------------------------


def mlp(sizes: list[int], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(x|y) and q(w|y): diagonal Gaussians from one shared trunk."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = mlp([cfg.input_dim, *cfg.hidden], cfg.batch_norm)
        last = cfg.hidden[-1] if cfg.hidden else cfg.input_dim
        self.x_head = nn.Linear(last, 2 * cfg.x_dim)
        self.w_head = nn.Linear(last, 2 * cfg.w_dim)

    def forward(self, y):
        h = self.trunk(y)
        x_mu, x_logvar = self.x_head(h).chunk(2, dim=-1)
        w_mu, w_logvar = self.w_head(h).chunk(2, dim=-1)
        return x_mu, x_logvar, w_mu, w_logvar


class PriorNetwork(nn.Module):
    """β: one w -> K means and K diagonal log-variances of p(x | w, z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k, self.x_dim = cfg.k, cfg.x_dim
        self.hidden = nn.Sequential(nn.Linear(cfg.w_dim, cfg.prior_hidden), nn.Tanh())
        self.means = nn.Linear(cfg.prior_hidden, cfg.k * cfg.x_dim)
        self.logvars = nn.Linear(cfg.prior_hidden, cfg.k * cfg.x_dim)

    def forward(self, w):
        h = self.hidden(w)
        shape = (*w.shape[:-1], self.k, self.x_dim)
        return self.means(h).view(shape), self.logvars(h).view(shape)  # (..., K, x_dim)


class Decoder(nn.Module):
    """θ: x -> the likelihood of the row (Gaussian mean and log-variance, or Bernoulli logits)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gaussian = cfg.likelihood == "gaussian"
        sizes = [cfg.x_dim, *reversed(cfg.hidden)]
        self.trunk = mlp(sizes, cfg.batch_norm)
        self.out = nn.Linear(sizes[-1], cfg.input_dim * (2 if self.gaussian else 1))

    def forward(self, x):
        lead = x.shape[:-1]  # decode (M, B, x_dim) by flattening the sample dimension
        h = self.trunk(x.reshape(-1, x.shape[-1]))
        out = self.out(h).view(*lead, -1)
        if not self.gaussian:
            return out, None
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(MIN_LOGVAR, MAX_LOGVAR)

    def log_likelihood(self, y, x):
        """log p(y | x), summed over features. y: (B, D); x: (..., B, x_dim)."""
        mean, logvar = self(x)
        if self.gaussian:
            return gaussian_log_density(y, mean, logvar)
        y = y.expand_as(mean)
        return -F.binary_cross_entropy_with_logits(mean, y, reduction="none").sum(-1)


def reparameterise(mu, logvar, m: int):
    """m reparameterised draws: (B, d) -> (m, B, d)."""
    eps = torch.randn((m, *mu.shape), dtype=mu.dtype, device=mu.device)
    return mu + eps * (0.5 * logvar).exp()


class GMVAENet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.prior = PriorNetwork(cfg)
        self.decoder = Decoder(cfg)

    def elbo_terms(self, y, cluster_weights=None, with_assignment: bool = False) -> ELBOTerms:
        """The four ELBO terms of MODEL.md on a batch y: (B, D), with M Monte-Carlo samples.

        cluster_weights (B, K), optional: responsibilities that replace p(z|x,w) in the
        conditional-prior term (used only by the guided phase of the default recipe).
        with_assignment: also return log p(z | posterior means), the rule that assigns rows.
        """
        m = self.cfg.mc_samples
        x_mu, x_logvar, w_mu, w_logvar = self.encoder(y)
        x = reparameterise(x_mu, x_logvar, m)  # (M, B, x_dim)
        w = reparameterise(w_mu, w_logvar, m)  # (M, B, w_dim)
        if with_assignment:  # the prior at w's mean too, in the same pass of β
            means, logvars = self.prior(torch.cat([w, w_mu.unsqueeze(0)]))  # (M+1, B, K, x_dim)
            at_mean = means[m], logvars[m]
            means, logvars = means[:m], logvars[:m]
        else:
            means, logvars = self.prior(w)  # (M, B, K, x_dim)
        log_pz = log_cluster_posterior(x, means, logvars)  # (M, B, K)

        # Reconstruction: Monte Carlo over the M draws of x.
        reconstruction = self.decoder.log_likelihood(y, x).mean(0)  # (B,)
        # Conditional prior: exact sum over k of p(z_k|x,w) KL(q(x|y) || N(μ_k(w), σ²_k(w))).
        kl_per_k = gaussian_kl(x_mu.unsqueeze(-2), x_logvar.unsqueeze(-2), means, logvars)
        weights = log_pz.exp() if cluster_weights is None else cluster_weights.expand_as(log_pz)
        conditional_prior = (weights * kl_per_k).sum(-1).mean(0)  # (B,)
        # w-prior: analytic.
        w_prior = standard_normal_kl(w_mu, w_logvar)  # (B,)
        # z-prior: KL to the uniform prior, averaged over the samples; thresholded at λ
        # on the batch mean, as in the reference implementation.
        z_kl = z_prior_kl(log_pz).mean(0).mean()
        assignment = None
        if with_assignment:
            assignment = log_cluster_posterior(x_mu, *at_mean)  # (B, K)
        return ELBOTerms(
            reconstruction=reconstruction.mean(),
            conditional_prior=conditional_prior.mean(),
            w_prior=w_prior.mean(),
            z_prior=thresholded(z_kl, self.cfg.lambda_z),
            z_prior_raw=z_kl,
            responsibilities=log_pz.exp().mean(0).detach(),
            assignment_log_proba=assignment,
        )

    @torch.no_grad()
    def row_terms(self, y, mc_samples: int = 0) -> RowTerms:
        """Each row's ELBO terms, (B,) each: the score of `assign --score` and describe.

        mc_samples = 0 (deterministic, the default everywhere a row is scored): every
        expectation over q(x|y) q(w|y) is evaluated at the posterior means x̄ = E[x|y] and
        w̄ = E[w|y]; the KLs that are analytic in q stay exact:

            elbo(y) = log p(y | x̄)                                   reconstruction
                    − Σ_k p(z_k|x̄,w̄) KL( q(x|y) ‖ N(μ_k(w̄), σ²_k(w̄)) )  conditional prior
                    − KL( q(w|y) ‖ N(0, I) )                           w-prior
                    − KL( p(z|x̄,w̄) ‖ Uniform(K) )                      z-prior, raw

        A plug-in estimate, not itself a guaranteed bound: it differs from the ELBO by the
        curvature of log p(y|x) and of the mixture terms over q's spread (small where q is
        narrow). mc_samples = M > 0: the ELBO estimated as elbo_terms does, with M draws of
        (x, w) from the global generator (seed it first), an unbiased estimate of the ELBO.

        Unlike elbo_terms, the z-prior is the raw KL: max(λ, ·) is a training device applied
        to a batch mean, and the plain KL gives the tighter, honest lower bound on log p(y).
        With M draws and the same noise, the mean over a batch equals
        elbo_terms(y).elbo + z_prior − z_prior_raw.
        """
        x_mu, x_logvar, w_mu, w_logvar = self.encoder(y)
        if mc_samples == 0:
            x, w = x_mu.unsqueeze(0), w_mu.unsqueeze(0)  # (1, B, x_dim), (1, B, w_dim)
        else:
            x = reparameterise(x_mu, x_logvar, mc_samples)  # (M, B, x_dim)
            w = reparameterise(w_mu, w_logvar, mc_samples)  # (M, B, w_dim)
        means, logvars = self.prior(w)  # (M, B, K, x_dim)
        log_pz = log_cluster_posterior(x, means, logvars)  # (M, B, K)
        kl_per_k = gaussian_kl(x_mu.unsqueeze(-2), x_logvar.unsqueeze(-2), means, logvars)
        log_proba = log_pz[0] if mc_samples == 0 else (
            torch.logsumexp(log_pz, dim=0) - math.log(mc_samples))
        return RowTerms(
            reconstruction=self.decoder.log_likelihood(y, x).mean(0),  # (B,)
            conditional_prior=(log_pz.exp() * kl_per_k).sum(-1).mean(0),  # (B,)
            w_prior=standard_normal_kl(w_mu, w_logvar),  # (B,)
            z_prior=z_prior_kl(log_pz).mean(0),  # (B,)
            log_proba=log_proba,  # (B, K)
        )

    def row_elbo(self, y, mc_samples: int = 0) -> torch.Tensor:
        """Each row's ELBO, (B,): row_terms(y, mc_samples).elbo."""
        return self.row_terms(y, mc_samples).elbo

    @torch.no_grad()
    def cluster_log_proba(self, y, mc_samples: int = 0):
        """log p(z|y) ≈ log E_q[p(z|x,w)]; mc_samples = 0 uses the posterior means (deterministic)."""
        x_mu, x_logvar, w_mu, w_logvar = self.encoder(y)
        if mc_samples == 0:
            means, logvars = self.prior(w_mu)
            return log_cluster_posterior(x_mu, means, logvars)  # (B, K)
        x = reparameterise(x_mu, x_logvar, mc_samples)
        w = reparameterise(w_mu, w_logvar, mc_samples)
        means, logvars = self.prior(w)
        log_pz = log_cluster_posterior(x, means, logvars)  # (S, B, K)
        return torch.logsumexp(log_pz, dim=0) - math.log(mc_samples)

    @torch.no_grad()
    def embed(self, y):
        """Posterior means of x and w."""
        x_mu, _, w_mu, _ = self.encoder(y)
        return x_mu, w_mu

    @torch.no_grad()
    def sample(self, clusters: torch.Tensor, mean: bool = False, binary: bool = False):
        """One new row from each named component k (n,): w ~ N(0, I), x ~ p(x | w, k),
        then the decoder. Gaussian rows add the decoder's noise unless `mean`; Bernoulli
        rows are probabilities, or 0/1 draws with `binary` (the most likely value with
        `mean` as well). (n, D), in the model's scaled space."""
        n = clusters.shape[0]
        w = torch.randn(n, self.cfg.w_dim, device=clusters.device)
        means, logvars = self.prior(w)  # (n, K, x_dim)
        idx = clusters.view(n, 1, 1).expand(n, 1, self.cfg.x_dim)
        mu_k = means.gather(1, idx).squeeze(1)
        logvar_k = logvars.gather(1, idx).squeeze(1)
        x = mu_k + torch.randn_like(mu_k) * (0.5 * logvar_k).exp()
        out, logvar = self.decoder(x)
        if self.cfg.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            if not binary:
                return p
            return (p >= 0.5).float() if mean else torch.bernoulli(p)
        return out if mean else out + torch.randn_like(out) * (0.5 * logvar).exp()

"""The Yeo-Johnson power transform (Yeo & Johnson 2000), one λ per column by maximum
likelihood, as scikit-learn's PowerTransformer fits it, with the log-Jacobian that lets a
mixture on the transformed columns be compared by likelihood with one on the columns
themselves (model-based clustering with transformed variables, as flowClust does with
Box-Cox).

Why: skewed columns (sizes, concentrations, clinical scores piled up at their low end) give a
Gaussian mixture long tails to cover with wide components, and those wrap around the tight
ones; a power transform makes each column more symmetric first.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import optimize

LAMBDA_BOUNDS = (-3.0, 5.0)  # symmetric about λ = 1, the identity


class Transformed(NamedTuple):
    values: np.ndarray  # (n, d) transformed columns, each standardised
    log_jacobian: float  # mean over rows of log |det d values / d input|
    parameters: int  # one λ per column transformed


def yeo_johnson(x: np.ndarray) -> Transformed:
    """Each non-constant column of `x` (n, d) transformed by its maximum-likelihood λ, then
    standardised; constant columns are left as they are."""
    out = x.astype(np.float64, copy=True)
    log_jacobian, parameters = np.zeros(len(x)), 0
    for j in range(x.shape[1]):
        column = x[:, j].astype(np.float64)
        if column.std() == 0:
            continue
        lam = fitted_lambda(column)
        t = transform(column, lam)
        mean, std = t.mean(), t.std()
        out[:, j] = (t - mean) / std
        log_jacobian += (lam - 1) * _signed_log1p(column) - np.log(std)
        parameters += 1
    return Transformed(out, float(log_jacobian.mean()), parameters)


def fitted_lambda(x: np.ndarray) -> float:
    """The λ that makes the transformed column most nearly normal (its profile likelihood)."""
    signed = _signed_log1p(x).sum()

    def negative_log_likelihood(lam: float) -> float:
        variance = transform(x, lam).var()
        if not np.isfinite(variance) or variance <= 0:
            return np.inf
        return len(x) / 2 * np.log(variance) - (lam - 1) * signed

    with np.errstate(over="ignore", invalid="ignore"):
        found = optimize.minimize_scalar(negative_log_likelihood, bounds=LAMBDA_BOUNDS,
                                         method="bounded", options={"xatol": 1e-6})
    return float(found.x)


def transform(x: np.ndarray, lam: float) -> np.ndarray:
    """ψ(x; λ): ((x + 1)^λ − 1) / λ for x ≥ 0, −((1 − x)^(2 − λ) − 1) / (2 − λ) below (the
    logarithms at λ = 0 and λ = 2)."""
    out = np.empty_like(x, dtype=np.float64)
    positive = x >= 0
    up, down = x[positive], -x[~positive]
    out[positive] = np.log1p(up) if abs(lam) < 1e-8 else (np.power(up + 1, lam) - 1) / lam
    out[~positive] = (-np.log1p(down) if abs(lam - 2) < 1e-8
                      else -(np.power(down + 1, 2 - lam) - 1) / (2 - lam))
    return out


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    """log dψ/dx = (λ − 1) · sign(x) · log(1 + |x|) for the Yeo-Johnson ψ."""
    return np.sign(x) * np.log1p(np.abs(x))

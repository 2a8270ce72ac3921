"""The Yeo-Johnson transform the warm start may fit its columns' mixture to (power.py)."""

import math

import numpy as np
from sklearn.preprocessing import PowerTransformer

from gmvae_cli import power


def test_hand_computed_values():
    """λ = 1 is the identity; λ = 0 is log(1 + x) for x ≥ 0; λ = 2 is −log(1 − x) for x < 0;
    otherwise ((x + 1)^λ − 1) / λ and −((1 − x)^(2 − λ) − 1) / (2 − λ)."""
    x = np.array([-3.0, -1.0, 0.0, 1.0, math.e - 1])
    np.testing.assert_allclose(power.transform(x, 1.0), x)
    np.testing.assert_allclose(power.transform(x[2:], 0.0), [0.0, math.log(2), 1.0])
    np.testing.assert_allclose(power.transform(x[:2], 2.0), [-math.log(4), -math.log(2)])
    np.testing.assert_allclose(power.transform(np.array([3.0, -3.0]), 0.5),
                               [(2 - 1) / 0.5, -(4**1.5 - 1) / 1.5])


def test_lambdas_and_values_match_scikit_learns_power_transformer():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.lognormal(0, 0.8, 400), -rng.lognormal(0, 0.5, 400),
                         rng.normal(size=400), rng.exponential(size=400)])
    theirs = PowerTransformer().fit(x)
    np.testing.assert_allclose([power.fitted_lambda(x[:, j]) for j in range(4)],
                               theirs.lambdas_, atol=1e-4)
    np.testing.assert_allclose(power.yeo_johnson(x).values, theirs.transform(x), atol=1e-4)


def test_the_log_jacobian_is_the_mean_log_derivative_of_the_standardised_transform():
    """What makes a mixture's likelihood on the transformed columns comparable with one on
    the columns: log |det dz/dx| per row, here by central differences, column by column."""
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.lognormal(0, 1, 300), rng.normal(size=300), np.full(300, 2.0)])
    found = power.yeo_johnson(x)
    assert found.parameters == 2  # the constant column is left as it is
    np.testing.assert_array_equal(found.values[:, 2], x[:, 2])
    h, total = 1e-6, np.zeros(300)
    for j in range(2):
        lam = power.fitted_lambda(x[:, j])
        std = power.transform(x[:, j], lam).std()
        slope = (power.transform(x[:, j] + h, lam) - power.transform(x[:, j] - h, lam)) / (2 * h)
        total += np.log(slope / std)
    assert math.isclose(found.log_jacobian, total.mean(), rel_tol=1e-6)


def test_a_skewed_column_gets_a_lambda_below_one_a_symmetric_one_about_one():
    rng = np.random.default_rng(2)
    assert power.fitted_lambda(rng.lognormal(0, 1, 2000)) < 0.3
    assert abs(power.fitted_lambda(rng.normal(size=2000)) - 1) < 0.1

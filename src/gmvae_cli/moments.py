"""Exact column statistics over chunks: one pass, bounded memory, any number of rows."""

from __future__ import annotations

import numpy as np


class Moments:
    """Per-column count, mean, sum of squared deviations, min and max, in float64; NaNs are
    skipped. Chunks merge with Chan et al.'s pairwise update, stable for any number of rows."""

    def __init__(self, width: int):
        self.n = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, values: np.ndarray) -> None:
        ok = ~np.isnan(values)
        n_b = ok.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        with np.errstate(all="ignore"):  # all-NaN columns: n_b = 0, handled by the where()s
            mean_b = np.where(ok, values, 0.0).sum(axis=0) / n_b
            m2_b = np.where(ok, (values - mean_b) ** 2, 0.0).sum(axis=0)
            n = self.n + n_b
            delta = np.where(n_b > 0, mean_b - self.mean, 0.0)
            share = np.where(n > 0, n_b / n, 0.0)
            self.m2 = self.m2 + np.where(n_b > 0, m2_b + delta**2 * self.n * share, 0.0)
            self.mean = self.mean + delta * share
        self.n = n
        self.min = np.minimum(self.min, np.where(ok, values, np.inf).min(axis=0))
        self.max = np.maximum(self.max, np.where(ok, values, -np.inf).max(axis=0))

    @property
    def variance(self) -> np.ndarray:
        """Population variance (divided by n), as numpy's std computes it; NaN where n = 0."""
        with np.errstate(all="ignore"):
            return self.m2 / self.n

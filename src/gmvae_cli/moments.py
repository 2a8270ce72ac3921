"""Exact per-column count, mean, variance, min and max in one streaming pass, per group of rows.

Chunks merge with Chan, Golub and LeVeque's pairwise update, stable for any number of rows.
`Moments` (the preprocessing statistics) is the one-group case of `GroupMoments`; `describe`
keeps one group per cluster and merges them into the whole table's moments at the end.
"""

from __future__ import annotations

import numpy as np


def merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """(count, mean, sum of squared deviations) of two disjoint sets of values, elementwise.

    A side with count 0 must have mean 0 and m2 0 (then it changes nothing).
    """
    n = n_a + n_b
    share = np.divide(n_b, n, out=np.zeros(np.shape(n)), where=n > 0)
    delta = mean_b - mean_a
    return n, mean_a + delta * share, m2_a + m2_b + delta**2 * n_a * share


class GroupMoments:
    """Per group and column: count, mean, m2 (sum of squared deviations), min, max, in float64.

    NaNs are skipped, column by column. Arrays are (groups, width).
    """

    def __init__(self, groups: int, width: int):
        self.n = np.zeros((groups, width))
        self.mean = np.zeros((groups, width))
        self.m2 = np.zeros((groups, width))
        self.min = np.full((groups, width), np.inf)
        self.max = np.full((groups, width), -np.inf)

    def add(self, values: np.ndarray, group: np.ndarray) -> None:
        """Add rows (rows, width), NaN where missing, each to its group in [0, groups).
        Values too large to square overflow to inf quietly: the caller reports them."""
        if not len(values):
            return
        with np.errstate(over="ignore", invalid="ignore"):
            self._add(values, group)

    def _add(self, values: np.ndarray, group: np.ndarray) -> None:
        order = np.argsort(group, kind="stable")  # each group's rows side by side
        group, values = group[order], values[order]
        present, starts = np.unique(group, return_index=True)
        sizes = np.diff(np.append(starts, len(group)))
        ok = ~np.isnan(values)
        n_b = np.add.reduceat(ok, starts, axis=0, dtype=np.float64)
        sums = np.add.reduceat(np.where(ok, values, 0.0), starts, axis=0)
        mean_b = np.divide(sums, n_b, out=np.zeros_like(sums), where=n_b > 0)
        # Deviations from the chunk's own group means (two passes over the chunk): no
        # cancellation, unlike sums of squares.
        deviation = np.where(ok, values - np.repeat(mean_b, sizes, axis=0), 0.0)
        m2_b = np.add.reduceat(deviation**2, starts, axis=0)
        self.n[present], self.mean[present], self.m2[present] = merge(
            self.n[present], self.mean[present], self.m2[present], n_b, mean_b, m2_b
        )
        low = np.minimum.reduceat(np.where(ok, values, np.inf), starts, axis=0)
        high = np.maximum.reduceat(np.where(ok, values, -np.inf), starts, axis=0)
        self.min[present] = np.minimum(self.min[present], low)
        self.max[present] = np.maximum(self.max[present], high)

    def variance(self, ddof: int = 0) -> np.ndarray:
        """m2 / (n - ddof); NaN where there are no more than ddof values."""
        return np.divide(self.m2, self.n - ddof, out=np.full(self.n.shape, np.nan),
                         where=self.n > ddof)

    def total(self) -> GroupMoments:
        """All groups merged into one."""
        whole = GroupMoments(1, self.n.shape[1])
        for g in range(len(self.n)):
            whole.n[0], whole.mean[0], whole.m2[0] = merge(
                whole.n[0], whole.mean[0], whole.m2[0], self.n[g], self.mean[g], self.m2[g]
            )
        whole.min[0], whole.max[0] = self.min.min(axis=0), self.max.max(axis=0)
        return whole


class Moments:
    """One group of rows: the whole table, column by column (the preprocessing statistics)."""

    def __init__(self, width: int):
        self.whole = GroupMoments(1, width)

    def add(self, values: np.ndarray) -> None:
        self.whole.add(values, np.zeros(len(values), dtype=np.int64))

    @property
    def n(self) -> np.ndarray:
        return self.whole.n[0]

    @property
    def mean(self) -> np.ndarray:
        return self.whole.mean[0]

    @property
    def m2(self) -> np.ndarray:
        return self.whole.m2[0]

    @property
    def min(self) -> np.ndarray:
        return self.whole.min[0]

    @property
    def max(self) -> np.ndarray:
        return self.whole.max[0]

    @property
    def variance(self) -> np.ndarray:
        """Population variance (divided by n), as numpy's std computes it; NaN where n = 0."""
        return self.whole.variance()[0]

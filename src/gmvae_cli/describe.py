"""What each cluster is, and which rows fit none: the computation and presentation behind
`gmvae describe`.

`ClusterProfile` reads a table once, chunk by chunk, together with each row's cluster (and,
optionally, its ELBO score and outlier flag), and keeps only bounded summaries: exact
per-cluster count, mean and variance of every numeric column (`moments.GroupMoments`), a
seeded reservoir sample of rows for medians, value counts of the categorical columns, outlier
counts, and per cluster the rows that fit it best and worst. `report` turns it into plain
data (the `--json` object), `show` into rich tables, `heatmap`, `difference_images` (the
heatmap of image data, in the images' layout) and `examples_figure` into PNGs.

The report's keys:

    rows                 rows with a cluster. The others (`rows_unassigned`: the model dropped
                         them for missing values) count nowhere else.
    rows_unassigned, k
    outlier_share        share of the rows flagged as outliers; null when no flags were given
    numeric_columns, categorical_columns
    skewed_columns       the numeric columns whose medians are given (see `skewed`)
    overall              the whole table (its assigned rows): {"mean": {column: x},
                         "std": {column: x}, "categorical": {column: {value: share}}}
    clusters             one entry per cluster 0..k-1:
        cluster, size, share, outlier_share
        features         {column: {"mean", "std", "std_diff", "median" (skewed columns only)}}
        top              [[feature, std_diff], ...]: the `top` largest |std_diff|, sign kept
        categorical      {column: {value: share of the cluster's rows}}
        examples         {"typical": [{"row", "score"}, ...], "atypical": [...]}: rows (0-based,
                         in file order) with the highest and the lowest ELBO; only with examples

std is the sample standard deviation (ddof 1, as pandas); std_diff is (cluster mean − table
mean) / table std. A categorical value counts as the feature "column=value", a 0/1 indicator,
so it can be among the top features. A value that cannot be computed (an empty cluster, a
column without values, a constant column's std_diff) is null.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from gmvae_cli import plots
from gmvae_cli.errors import UserError
from gmvae_cli.moments import GroupMoments
from gmvae_cli.progress import note as stderr_note

# Medians come from a reservoir sample of rows: at most this many rows and values in all,
# shared equally by the clusters (32 MB of float64 at most).
SAMPLE_ROWS = 20_000
SAMPLE_VALUES = 4_000_000
SKEW_THRESHOLD = 0.2  # |mean − median| / std within clusters; an exponential gives 0.31
CATEGORY_TRACKED = 200  # distinct values counted per column; later new values go to OTHER
CATEGORY_SHOWN = 20  # values reported per column; the rest are summed into OTHER
OTHER, MISSING = "(other)", "(missing)"
BLOCK_ROWS = 8192  # rows converted to float64 at a time: a wide chunk is never copied whole
HEATMAP_FEATURES = 40
SHOW_FEATURES = 20  # wider tables show only the features that set clusters apart
SHOW_CLUSTERS = 10  # clusters per table of means; more clusters get more tables
SHOW_VALUES = 5  # categorical values per column in the tables


class ClusterProfile:
    """Streaming summaries of a table's clusters, in memory bounded by k and the width.

    Means and variances are exact. Medians are exact for clusters of up to `sample_capacity`
    rows and approximate above that: they come from a seeded reservoir sample (Algorithm R)
    of at most SAMPLE_ROWS rows and SAMPLE_VALUES values in all. Categorical columns count
    their first CATEGORY_TRACKED distinct values exactly; values first seen later count as
    OTHER. With `examples` > 0, each cluster keeps the `examples` rows with the highest and
    with the lowest score, and their numeric values (for drawing).
    """

    def __init__(
        self,
        numeric_columns: Sequence[str],
        categorical_columns: Sequence[str],
        k: int,
        examples: int = 0,
        seed: int = 0,
    ):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.numeric_columns = list(numeric_columns)
        self.categorical_columns = list(categorical_columns)
        self.k, self.examples = k, examples
        width = len(self.numeric_columns)
        self.moments = GroupMoments(k, width)
        self.sizes = np.zeros(k, dtype=np.int64)
        self.rows_unassigned = 0
        self.outliers: np.ndarray | None = None  # per cluster; None until flags are given
        self._rows_seen = 0  # assigned or not: the file position of the next chunk

        self._rng = np.random.default_rng(seed)
        self.sample_capacity = max(1, min(SAMPLE_ROWS, SAMPLE_VALUES // max(width, 1)) // k)
        self._sample = np.empty((k, self.sample_capacity, width))  # untouched pages cost nothing
        self._sample_seen = np.zeros(k, dtype=np.int64)  # rows offered to each reservoir

        # Per categorical column: value -> slot, and counts (slots, k); the last two slots
        # are OTHER and MISSING.
        self._slots: list[dict[str, int]] = [{} for _ in self.categorical_columns]
        self._value_counts = [
            np.zeros((CATEGORY_TRACKED + 2, k), dtype=np.int64) for _ in self.categorical_columns
        ]

        # The best and worst fitting rows: score, row number and values, per cluster.
        self._best = _Extremes(k, examples, width, highest=True)
        self._worst = _Extremes(k, examples, width, highest=False)

    @property
    def rows(self) -> int:
        return int(self.sizes.sum())

    @property
    def sample_rows(self) -> int:
        """Rows held in the reservoir now (at most k × sample_capacity)."""
        return int(np.minimum(self._sample_seen, self.sample_capacity).sum())

    def add(
        self,
        chunk: pd.DataFrame,
        clusters: np.ndarray,
        scores: np.ndarray | None = None,
        outliers: np.ndarray | None = None,
    ) -> None:
        """Add a chunk: each row's cluster in 0..k-1, or -1 where the model assigned none.

        `scores` (each row's ELBO) is needed when examples > 0; `outliers` flags rows.
        """
        clusters = np.asarray(clusters)
        n = len(chunk)
        for name, values in (("clusters", clusters), ("scores", scores), ("outliers", outliers)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for a chunk of {n} rows")
        if n and (clusters.min() < -1 or clusters.max() >= self.k):
            raise ValueError(f"clusters must lie in -1..{self.k - 1}")
        if self.examples and scores is None:
            raise ValueError("examples need each row's score")
        lacking = [c for c in self.numeric_columns + self.categorical_columns if c not in chunk]
        if lacking:
            raise UserError(f"column {lacking[0]!r} is missing from part of the table; fix it")
        text = [c for c in self.numeric_columns if not pd.api.types.is_numeric_dtype(chunk[c])]
        if text:  # checked before anything is counted, so a failed chunk leaves no trace
            raise UserError(f"column {text[0]!r} holds text; describe it as a categorical column")

        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
        assigned = clusters >= 0
        self.rows_unassigned += int(n - assigned.sum())
        self.sizes += np.bincount(clusters[assigned], minlength=self.k)
        if outliers is not None:
            if self.outliers is None:
                self.outliers = np.zeros(self.k, dtype=np.int64)
            flagged = assigned & np.asarray(outliers, dtype=bool)
            self.outliers += np.bincount(clusters[flagged], minlength=self.k)
        for c, column in enumerate(self.categorical_columns):
            self._count_values(c, chunk[column].to_numpy()[assigned], clusters[assigned])
        for start in range(0, n, BLOCK_ROWS):
            block = slice(start, min(start + BLOCK_ROWS, n))
            keep = assigned[block]
            values = self._numeric(chunk.iloc[block])
            if not keep.all():
                values = values[keep]
            groups = clusters[block][keep]
            rows = self._rows_seen + start + np.flatnonzero(keep)  # numbers in the file
            self.moments.add(values, groups)
            block_scores = None if scores is None else scores[block][keep]
            for j in np.unique(groups):
                # Positions, not copies: the reservoir and the examples take a few rows each.
                mine = np.flatnonzero(groups == j)
                self._add_to_sample(j, values, mine)
                if self.examples:
                    self._best.add(j, block_scores[mine], rows[mine], values, mine)
                    self._worst.add(j, block_scores[mine], rows[mine], values, mine)
        self._rows_seen += n

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[self.numeric_columns].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        values[~np.isfinite(values)] = np.nan  # ±inf would poison the means
        return values

    def _add_to_sample(self, j: int, values: np.ndarray, mine: np.ndarray) -> None:
        """Offer cluster j's rows `values[mine]` to its reservoir. Algorithm R: the t-th row
        of a cluster replaces a random slot with chance cap / t."""
        cap, seen = self.sample_capacity, int(self._sample_seen[j])
        self._sample_seen[j] += len(mine)
        take = max(0, min(cap - seen, len(mine)))
        self._sample[j, seen : seen + take] = values[mine[:take]]
        rest = mine[take:]
        if not len(rest):
            return
        t = seen + take + np.arange(1, len(rest) + 1)
        slot = self._rng.integers(0, t)
        hit = np.flatnonzero(slot < cap)
        # Rows drawing the same slot replace each other in turn: the last one stays.
        slots, last = np.unique(slot[hit][::-1], return_index=True)
        self._sample[j, slots] = values[rest[hit[::-1][last]]]

    def _count_values(self, c: int, values: np.ndarray, clusters: np.ndarray) -> None:
        codes, uniques = pd.factorize(values)  # a missing value gets code -1
        slots, slot_count = self._slots[c], CATEGORY_TRACKED + 2
        names = [str(v) for v in uniques]
        for name in names:
            if name not in slots and len(slots) < CATEGORY_TRACKED:
                slots[name] = len(slots)
        # Each chunk code's slot; the extra last entry is code -1's, MISSING.
        slot_of = np.array([slots.get(name, CATEGORY_TRACKED) for name in names]
                           + [CATEGORY_TRACKED + 1], dtype=np.int64)
        counts = np.bincount(slot_of[codes] * self.k + clusters, minlength=slot_count * self.k)
        self._value_counts[c] += counts.reshape(slot_count, self.k)

    def medians(self) -> np.ndarray:
        """(k, width) medians from the reservoir; NaN for an empty cluster or column."""
        out = np.full(self.moments.n.shape, np.nan)
        for j in range(self.k):
            kept = self._sample[j, : min(int(self._sample_seen[j]), self.sample_capacity)]
            has = ~np.isnan(kept).all(axis=0)
            if len(kept) and has.any():
                out[j, has] = np.nanmedian(kept[:, has], axis=0)
        return out

    def value_counts(self, c: int) -> dict[str, np.ndarray]:
        """A categorical column's counts per cluster: its CATEGORY_SHOWN commonest values,
        then OTHER (the rest) and MISSING where nonzero."""
        counts = self._value_counts[c]
        names = list(self._slots[c])
        order = np.argsort(-counts[: len(names)].sum(axis=1), kind="stable")
        out = {names[i]: counts[i] for i in order[:CATEGORY_SHOWN]}
        other = counts[CATEGORY_TRACKED] + counts[order[CATEGORY_SHOWN:]].sum(axis=0)
        for name, row in ((OTHER, other), (MISSING, counts[CATEGORY_TRACKED + 1])):
            if row.any():
                out[name] = row
        return out

    def example_rows(self, j: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Cluster j's most and least typical rows: (scores, row numbers, values) each, from
        the most extreme score inwards."""
        return {"typical": self._best.get(j), "atypical": self._worst.get(j)}


class _Extremes:
    """Per cluster, the `size` rows with the highest (or lowest) score seen so far."""

    def __init__(self, k: int, size: int, width: int, highest: bool):
        self.sign = 1.0 if highest else -1.0  # keep the largest sign × score
        self.scores = np.full((k, size), -np.inf)  # sign × score; -inf is an empty place
        self.rows = np.full((k, size), -1, dtype=np.int64)
        self.values = np.full((k, size, width), np.nan)

    def add(self, j, scores, rows, values, mine) -> None:
        """Offer cluster j's rows `values[mine]`, with their scores and row numbers."""
        keys = self.sign * scores
        keys[np.isnan(keys)] = -np.inf  # a row without a score is never an example
        size = self.scores.shape[1]
        if len(keys) > size:  # only the chunk's own best can enter
            best = np.argpartition(-keys, size - 1)[:size]
            keys, rows, mine = keys[best], rows[best], mine[best]
        values = values[mine]
        all_keys = np.concatenate([self.scores[j], keys])
        keep = np.argsort(-all_keys, kind="stable")[:size]
        self.rows[j] = np.concatenate([self.rows[j], rows])[keep]
        self.values[j] = np.concatenate([self.values[j], values])[keep]
        self.scores[j] = all_keys[keep]

    def get(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        filled = np.isfinite(self.scores[j])
        return self.sign * self.scores[j][filled], self.rows[j][filled], self.values[j][filled]


# -- the report ---------------------------------------------------------------------------------


def skewed(profile: ClusterProfile) -> np.ndarray:
    """Which numeric columns are skewed, as a boolean per column.

    The rule: within the clusters, mean and median lie apart — the size-weighted average over
    clusters of |mean − median| / std exceeds SKEW_THRESHOLD. Within clusters, because a
    column that merely separates clusters (two symmetric bumps of different sizes) has its
    whole-table median far from its mean without being skewed.
    """
    n, mean = profile.moments.n, profile.moments.mean
    std = np.sqrt(profile.moments.variance(ddof=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(mean - profile.medians()) / std
    usable = np.isfinite(gap)  # no values, one value, or a constant column in that cluster
    weight = np.where(usable, n, 0.0).sum(axis=0)
    total = np.where(usable, gap * n, 0.0).sum(axis=0)
    return np.divide(total, weight, out=np.zeros_like(total), where=weight > 0) > SKEW_THRESHOLD


def report(profile: ClusterProfile, top: int = 5) -> dict:
    """The profile as plain JSON-able data; the keys are listed in the module docstring."""
    m, whole = profile.moments, profile.moments.total()
    table_mean, table_std = whole.mean[0], np.sqrt(whole.variance(ddof=1)[0])
    table_mean = np.where(whole.n[0] > 0, table_mean, np.nan)
    cluster_mean = np.where(m.n > 0, m.mean, np.nan)
    cluster_std = np.sqrt(m.variance(ddof=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        std_diff = np.where(table_std > 0, (cluster_mean - table_mean) / table_std, np.nan)
    is_skewed = skewed(profile)
    medians = profile.medians()
    rows, numeric = profile.rows, profile.numeric_columns

    overall_values = {}
    categorical, indicators = [], []  # per cluster {column: {value: share}}; "column=value" diffs
    for c, column in enumerate(profile.categorical_columns):
        counts = profile.value_counts(c)  # value -> (k,) counts
        overall_values[str(column)] = {v: _share(row.sum(), rows) for v, row in counts.items()}
        for value, row in counts.items():
            if value != OTHER:
                indicators.append((f"{column}={value}", _indicator_diff(row, profile.sizes)))
        categorical.append(counts)

    clusters = []
    for j in range(profile.k):
        size = int(profile.sizes[j])
        features = {}
        for i, column in enumerate(numeric):
            entry = {"mean": _num(cluster_mean[j, i]), "std": _num(cluster_std[j, i]),
                     "std_diff": _num(std_diff[j, i])}
            if is_skewed[i]:
                entry["median"] = _num(medians[j, i])
            features[str(column)] = entry
        diffs = [(str(c), std_diff[j, i]) for i, c in enumerate(numeric)]
        diffs += [(name, d[j]) for name, d in indicators]
        diffs = [(name, float(d)) for name, d in diffs if np.isfinite(d)]
        diffs.sort(key=lambda item: -abs(item[1]))  # stable: ties keep the columns' order
        outlier_share = None if profile.outliers is None else _share(profile.outliers[j], size)
        entry = {
            "cluster": j,
            "size": size,
            "share": _share(size, rows),
            "outlier_share": outlier_share,
            "features": features,
            "top": [[name, d] for name, d in diffs[:top]],
            "categorical": {
                str(column): {v: _share(row[j], size) for v, row in counts.items()}
                for column, counts in zip(profile.categorical_columns, categorical)
            },
        }
        if profile.examples:
            entry["examples"] = {
                side: [{"row": int(r), "score": float(s)} for s, r, _ in zip(*found)]
                for side, found in profile.example_rows(j).items()
            }
        clusters.append(entry)

    return {
        "rows": rows,
        "rows_unassigned": profile.rows_unassigned,
        "k": profile.k,
        "outlier_share": None if profile.outliers is None else _share(profile.outliers.sum(), rows),
        "numeric_columns": [str(c) for c in numeric],
        "categorical_columns": [str(c) for c in profile.categorical_columns],
        "skewed_columns": [str(c) for c, s in zip(numeric, is_skewed) if s],
        "overall": {
            "mean": {str(c): _num(x) for c, x in zip(numeric, table_mean)},
            "std": {str(c): _num(x) for c, x in zip(numeric, table_std)},
            "categorical": overall_values,
        },
        "clusters": clusters,
    }


def _num(x) -> float | None:
    """A float for JSON: null instead of NaN or infinity."""
    x = float(x)
    return x if np.isfinite(x) else None


def _share(part, whole) -> float | None:
    return float(part) / float(whole) if whole else None


def _indicator_diff(counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """std_diff per cluster of the 0/1 column "row has this value" (sample std, as numeric)."""
    n, p = sizes.sum(), counts.sum() / max(sizes.sum(), 1)
    std = np.sqrt(p * (1 - p) * n / (n - 1)) if n > 1 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sizes > 0) & (std > 0), (counts / sizes - p) / std, np.nan)


# -- for people ---------------------------------------------------------------------------------


def signed(d: float) -> str:
    """+2.1 or −1.4 (a real minus sign)."""
    return f"{'+' if d >= 0 else '−'}{abs(d):.1f}"


def show(
    report: dict,
    console: Console,
    top: int | None = None,
    note: Callable[[str], None] = stderr_note,
) -> None:
    """The report as rich tables: a summary, the features' means, and categorical shares.

    `top` caps the features listed per cluster in the summary (None: all in the report).
    """
    clusters, with_outliers = report["clusters"], report["outlier_share"] is not None
    summary = Table(title=f"{report['k']} clusters, {report['rows']:,} rows")
    for name in ("cluster", "size", "share", *(("outliers",) if with_outliers else ())):
        summary.add_column(name, justify="right")
    summary.add_column("sets it apart (standardised difference from the table mean)")
    for c in clusters:
        cells = [str(c["cluster"]), f"{c['size']:,}", _fmt_share(c["share"])]
        if with_outliers:
            cells.append(_fmt_share(c["outlier_share"]))
        # A difference that rounds to 0.0 sets nothing apart.
        apart = [f"{signed(d)} {name}" for name, d in c["top"][:top] if abs(d) >= 0.05]
        cells.append(", ".join(apart))
        summary.add_row(*cells)
    console.print(summary)
    if report["rows_unassigned"]:
        unassigned = report["rows_unassigned"]
        note(f"{unassigned:,} row{'s' if unassigned > 1 else ''} without a cluster (missing "
             "values) left out")

    features = report["numeric_columns"]
    if len(features) > SHOW_FEATURES:
        features = _most_different(report, SHOW_FEATURES)
        note(f"means of the {len(features)} features that set the clusters apart most, of "
             f"{len(report['numeric_columns'])}; all of them are in --json")
    skewed_columns = set(report["skewed_columns"])
    for part in _parts(clusters, SHOW_CLUSTERS):
        means = Table(title="means" + (" (and medians)" if skewed_columns else ""))
        means.add_column("feature")
        means.add_column("all", justify="right")
        for c in part:
            means.add_column(str(c["cluster"]), justify="right")
        for name in features:
            means.add_row(name, _fmt(report["overall"]["mean"][name]),
                          *(_fmt(c["features"][name]["mean"]) for c in part))
            if name in skewed_columns:
                means.add_row("  median", "", *(_fmt(c["features"][name]["median"]) for c in part))
        if features:
            console.print(means)

    for column in report["categorical_columns"]:
        overall = report["overall"]["categorical"][column]
        values = list(overall)[:SHOW_VALUES]
        if not values:
            continue
        for part in _parts(clusters, SHOW_CLUSTERS):
            shares = Table(title=f"{column}: share of each value")
            shares.add_column("value")
            shares.add_column("all", justify="right")
            for c in part:
                shares.add_column(str(c["cluster"]), justify="right")
            for value in values:
                shares.add_row(value, _fmt_share(overall[value]),
                               *(_fmt_share(c["categorical"][column][value]) for c in part))
            console.print(shares)
        if len(overall) > SHOW_VALUES:
            note(f"{column}: the {SHOW_VALUES} commonest of {len(overall)} values shown; "
                 "the rest are in --json")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _fmt_share(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _parts(items: list, size: int) -> list[list]:
    return [items[s : s + size] for s in range(0, len(items), size)]


def _most_different(report: dict, count: int) -> list[str]:
    """The `count` numeric features with the largest |std_diff| in any cluster, largest first."""
    matrix = _std_diff_matrix(report)
    largest = np.where(np.isfinite(matrix), np.abs(matrix), -1.0).max(axis=0)  # all null: last
    order = np.argsort(-largest, kind="stable")[:count]
    return [report["numeric_columns"][i] for i in order]


def _std_diff_matrix(report: dict) -> np.ndarray:
    """(k, numeric features) standardised differences, NaN where null."""
    return np.array(
        [[np.nan if (d := c["features"][f]["std_diff"]) is None else d
          for f in report["numeric_columns"]] for c in report["clusters"]],
        dtype=np.float64,
    ).reshape(report["k"], len(report["numeric_columns"]))


# -- pictures -----------------------------------------------------------------------------------


def heatmap(
    path: str,
    report: dict,
    max_features: int = HEATMAP_FEATURES,
    note: Callable[[str], None] = stderr_note,
) -> list[str]:
    """A cluster × feature heatmap of the standardised differences; returns the features
    drawn, in their order.

    At most `max_features`, those with the largest |std_diff| in any cluster; the note says
    how many were left out. Features with similar profiles over the clusters sit together:
    the leaf order of an average-linkage clustering of their difference profiles.
    """
    matrix = _std_diff_matrix(report)
    drawable = [f for f, column in zip(report["numeric_columns"], matrix.T)
                if np.isfinite(column).any()]
    if not drawable:
        raise UserError("--plot draws numeric features, and this table has none with values")
    shown = _most_different(report, min(max_features, len(drawable)))
    left_out = len(report["numeric_columns"]) - len(shown)
    index = {f: i for i, f in enumerate(report["numeric_columns"])}
    matrix = matrix[:, [index[f] for f in shown]]
    if len(shown) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage

        profiles = np.nan_to_num(matrix.T)  # (features, k); an empty cluster adds nothing
        order = leaves_list(linkage(profiles, method="average", optimal_ordering=True))
        shown, matrix = [shown[i] for i in order], matrix[:, order]

    k, width = matrix.shape
    limit = max(float(np.nanmax(np.abs(matrix))), 1e-9)
    plt = plots._pyplot()
    fig = plt.figure(figsize=(min(max(6.0, 3.0 + 0.35 * width), 30.0), min(2.5 + 0.35 * k, 30.0)),
                     dpi=plots.DPI)
    try:
        ax = fig.subplots()
        image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="RdBu_r",
                          vmin=-limit, vmax=limit, interpolation="nearest")
        fig.colorbar(image, ax=ax, label="(cluster mean − table mean) / table std")
        ax.set_xticks(range(width), shown, rotation=90)
        if k <= 60:
            ax.set_yticks(range(k))
        if matrix.size <= plots.ANNOTATE_MAX_CELLS:
            for (i, j), d in np.ndenumerate(matrix):
                if np.isfinite(d):
                    ax.text(j, i, signed(d), ha="center", va="center", fontsize=7,
                            color="white" if abs(d) > limit / 2 else "black")
        ax.set_xlabel("feature")
        ax.set_ylabel("cluster")
        title = "how each cluster differs from the whole table"
        if left_out:
            title += f"\n{len(shown)} of {len(report['numeric_columns'])} features shown"
        ax.set_title(title)
        fig.tight_layout()
        plots.save_figure(fig, path)
    finally:
        plt.close(fig)
    if left_out:
        note(f"the heatmap shows the {len(shown)} features that differ most between clusters; "
             f"{left_out} more are left out (all are in --json)")
    return shown


def difference_images(path: str, report: dict, image_shape: tuple[int, int]) -> None:
    """For image data, the heatmap's numbers in the images' own layout: per cluster one H×W
    map of its standardised differences (red: more than the whole table, blue: less; grey
    where undefined, e.g. a pixel that is constant), on one shared symmetric scale."""
    height, width = image_shape
    matrix = _std_diff_matrix(report)  # (k, features)
    if height * width != matrix.shape[1]:
        raise UserError(
            f"--image-shape {height}x{width} holds {height * width} pixels but the table has "
            f"{matrix.shape[1]} numeric columns; pick H and W with that product"
        )
    k = report["k"]
    finite = np.isfinite(matrix)
    limit = max(float(np.abs(matrix[finite]).max()) if finite.any() else 0.0, 1e-9)
    columns = min(k, 10)
    rows = -(-k // columns)
    plt = plots._pyplot()
    fig = plt.figure(figsize=(1.5 * columns + 1.2, 1.6 * rows + 0.7), dpi=plots.DPI,
                     layout="constrained")
    try:
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
        image = None
        for j, ax in enumerate(axes):
            ax.set_axis_off()
            if j >= k:
                continue
            image = ax.imshow(np.ma.masked_invalid(matrix[j].reshape(height, width)), cmap=cmap,
                              vmin=-limit, vmax=limit, interpolation="nearest")
            share = report["clusters"][j]["share"]
            ax.set_title(f"{j}" + ("" if share is None else f" ({share:.0%})"), fontsize=9)
        fig.colorbar(image, ax=list(axes), shrink=0.9, label="standardised difference")
        fig.suptitle("how each cluster differs from the whole table: (cluster mean − table "
                     "mean) / table std, per cluster (share of rows)")
        plots.save_figure(fig, path)
    finally:
        plt.close(fig)


def examples_figure(path: str, profile: ClusterProfile, image_shape: tuple[int, int]) -> None:
    """Per cluster one row: its most typical rows (highest ELBO), a gap, then its least
    typical (lowest ELBO) — the worst fit at the far right. Grey, on one shared scale."""
    height, width = image_shape
    if not profile.examples:
        raise ValueError("the profile kept no examples; make it with examples > 0")
    if height * width != len(profile.numeric_columns):
        raise UserError(
            f"--image-shape {height}x{width} holds {height * width} pixels but the table has "
            f"{len(profile.numeric_columns)} numeric columns; pick H and W with that product"
        )
    m = profile.examples
    columns = 2 * m + 1  # the middle one stays empty, to part the two sides
    canvas = np.full(plots.grid_shape(profile.k, columns, image_shape), np.nan)
    for j in range(profile.k):
        found = profile.example_rows(j)
        # The least typical read from the middle outwards, so the worst sits at the far right.
        places = [(c, v) for c, v in enumerate(found["typical"][2])]
        places += [(columns - 1 - c, v) for c, v in enumerate(found["atypical"][2])]
        for c, row in places:
            top = plots.GRID_PAD + j * (height + plots.GRID_PAD)
            left = plots.GRID_PAD + c * (width + plots.GRID_PAD)
            canvas[top : top + height, left : left + width] = row.reshape(height, width)
    if np.isnan(canvas).all():
        raise UserError("no row has a score, so there are no examples to draw")
    low, high = float(np.nanmin(canvas)), float(np.nanmax(canvas))
    canvas = np.nan_to_num(canvas, nan=low)  # frame, gap and empty places: the darkest value

    inch = 0.6 / max(height, width)  # each image about 0.6 inch wide
    plt = plots._pyplot()
    fig = plt.figure(figsize=(min(canvas.shape[1] * inch + 1.5, 30.0),
                              min(canvas.shape[0] * inch + 1.2, 60.0)), dpi=plots.DPI)
    try:
        ax = fig.subplots()
        ax.imshow(canvas, cmap="gray", vmin=low, vmax=high if high > low else low + 1.0,
                  interpolation="nearest")
        step = height + plots.GRID_PAD
        ax.set_yticks([plots.GRID_PAD + j * step + height / 2 for j in range(profile.k)],
                      [str(j) for j in range(profile.k)])
        middle = plots.GRID_PAD + m * (width + plots.GRID_PAD) / 2
        ax.set_xticks([middle, canvas.shape[1] - middle],
                      ["most typical (highest ELBO)", "least typical (lowest ELBO)"])
        ax.set_ylabel("cluster")
        ax.tick_params(length=0)
        fig.tight_layout()
        plots.save_figure(fig, path)
    finally:
        plt.close(fig)

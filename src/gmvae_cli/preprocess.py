"""From a table to the float matrix the model sees: column choice, missing values, scaling.

Everything decided at training time (the columns, the missing-value rule, the fill values,
the scaling and the likelihood) is kept in the checkpoint, so `assign` applies the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from gmvae_cli.data import check_unique
from gmvae_cli.errors import UserError
from gmvae_cli.moments import Moments
from gmvae_cli.settings import check


def named_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with string column names (as CSV headers are), without touching the
    caller's frame: a frame with integer column names then matches a model's columns."""
    if all(isinstance(c, str) for c in frame.columns):
        return frame
    out = frame.copy(deep=False)
    out.columns = [str(c) for c in frame.columns]
    return out


def choose_columns(
    frame: pd.DataFrame,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    id_column: str | None = None,
    note: Callable[[str], None] = lambda s: None,
) -> list[str]:
    """The feature columns: those named, else every numeric column but the id and excluded
    ones. `frame` must have string column names (named_columns)."""
    names = list(frame.columns)
    check_unique(names, "the table")
    for option, given in (("--columns", columns or []), ("--exclude", exclude)):
        unknown = [c for c in given if c not in names]
        if unknown:
            raise UserError(
                f"{option} names {', '.join(map(repr, unknown))}, not in the table; "
                f"its columns are: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}"
            )
    if id_column is not None and id_column not in names:
        raise UserError(f"--id-column {id_column!r} is not in the table; pass one of its columns")
    if columns:
        bad = [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            example = "".join(f" (e.g. {v!r})" for v in frame[bad[0]].dropna().head(1))
            raise UserError(
                f"column {bad[0]!r} is not numeric{example}; "
                "drop it from --columns or clean its values"
            )
        return list(columns)
    candidates = [c for c in names if c != id_column and c not in exclude]
    chosen = [c for c in candidates if pd.api.types.is_numeric_dtype(frame[c])]
    skipped = [c for c in candidates if c not in chosen]
    if skipped:
        note(f"skipping non-numeric columns: {', '.join(skipped)} (name them in --columns to use)")
    if not chosen:
        raise UserError("the table has no numeric feature columns; check the file or --columns")
    return chosen


@dataclass
class Preprocessor:
    columns: list[str]
    missing: str  # what to do with NaN / ±inf: error, drop the row, or fill with the mean
    fill: list[float]  # training means, used by missing="mean"
    center: list[float]
    scale: list[float]
    likelihood: str  # resolved: gaussian or bernoulli

    @classmethod
    def fit(
        cls, chunks: Iterable[pd.DataFrame], columns: list[str], missing: str, likelihood: str,
        note: Callable[[str], None] = lambda s: None,
    ) -> tuple[Preprocessor, int]:
        """The statistics from the table's chunks in one pass (a table in memory is one
        chunk), and the number of rows kept.

        Fill values are the means of the finite values; the scaling comes from the complete
        rows (--missing drop) or from the mean-filled columns (--missing mean: a filled value
        adds no deviation, only a row).
        """
        check(missing=missing, likelihood=likelihood)
        every, complete = Moments(len(columns)), Moments(len(columns))
        rows, absent = 0, np.zeros(len(columns), dtype=np.int64)
        for chunk in chunks:
            lacking = [c for c in columns if c not in chunk.columns]
            if lacking:
                raise UserError(f"column {lacking[0]!r} is missing from part of the file; fix it")
            values = chunk[columns].to_numpy(dtype=np.float64, copy=True)
            values[~np.isfinite(values)] = np.nan
            gaps = np.isnan(values)
            absent += gaps.sum(axis=0)
            every.add(values)
            complete.add(values[~gaps.any(axis=1)])
            rows += len(values)
        if missing == "error" and absent.any():
            raise UserError(_missing_message(columns, absent))
        if absent.any():
            filled = "filled with the column means" if missing == "mean" else "rows left out"
            other = "drop" if missing == "mean" else "mean"
            note(f"note: missing or infinite values in {_counts(columns, absent)}: {filled} "
                 f"(--missing {other} or --missing error to change)")
        if (every.n == 0).any():
            empty = columns[int(np.argmax(every.n == 0))]
            raise UserError(f"column {empty!r} has no finite values; drop it with --exclude")
        fill = every.mean
        if missing == "drop":
            kept = int(complete.n[0])
            if kept == 0:
                raise UserError(
                    "every row has a missing or infinite value, so --missing drop leaves no "
                    "rows; use --missing mean or clean the data"
                )
            center, variance, low, high = complete.mean, complete.variance, complete.min, complete.max
        else:  # "error" (no gaps) or "mean": filled values sit at the mean
            kept, center, variance = rows, fill, every.m2 / rows
            low, high = every.min, every.max
        if likelihood == "auto":
            likelihood = "bernoulli" if low.min() >= 0 and high.max() <= 1 else "gaussian"
        if likelihood == "bernoulli":
            if low.min() < 0 or high.max() > 1:
                raise UserError("--likelihood bernoulli needs every value in [0, 1]; use gaussian")
            center, scale = np.zeros(len(columns)), np.ones(len(columns))
        else:
            scale = np.sqrt(variance)
            if not (np.isfinite(scale).all() and np.isfinite(center).all()):
                raise UserError("values too large to scale (overflow); rescale the columns")
            scale[scale == 0] = 1.0  # a constant column stays constant (zero) instead of NaN
        pre = cls(columns, missing, fill.tolist(), center.tolist(), scale.tolist(), likelihood)
        return pre, kept

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The model's float32 matrix, and the boolean mask of input rows kept."""
        absent = [c for c in self.columns if c not in frame.columns]
        if absent:
            raise UserError(
                f"the table lacks the model's column {absent[0]!r}"
                f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}; "
                "pass a table with the columns the model was trained on"
            )
        features = frame[self.columns]
        for c, dtype in zip(self.columns, features.dtypes):
            if not pd.api.types.is_numeric_dtype(dtype):
                raise UserError(f"model column {c!r} holds non-numeric values; clean that column")
        values = features.to_numpy(dtype=np.float64, copy=True)
        keep = np.ones(len(values), dtype=bool)
        finite = np.isfinite(values)
        if not finite.all():  # most chunks have no gaps: no bookkeeping then
            if self.missing == "error":
                raise UserError(_missing_message(self.columns, (~finite).sum(axis=0)))
            values[~finite] = np.nan
            keep = finite.all(axis=1)
            if self.missing == "drop":
                values = values[keep]
            elif self.missing == "mean":
                values = np.where(finite, values, np.asarray(self.fill))
                keep[:] = True
        # In place: a chunk of a large table is scaled without extra copies.
        values -= np.asarray(self.center)
        values /= np.asarray(self.scale)
        if self.likelihood == "bernoulli":
            np.clip(values, 0.0, 1.0, out=values)  # the Bernoulli likelihood needs [0, 1]
        with np.errstate(over="ignore"):
            scaled = values.astype(np.float32)
        if not np.isfinite(scaled).all():  # finite in float64, too large for float32
            column = self.columns[int(np.nonzero(~np.isfinite(scaled).all(axis=0))[0][0])]
            raise UserError(
                f"column {column!r} holds values too large for the model (e.g. 1e300); "
                "rescale the column"
            )
        return scaled, keep

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Back to the original scale (for sampled rows)."""
        return values * np.asarray(self.scale) + np.asarray(self.center)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls(**d)


def _counts(columns: list[str], counts: np.ndarray) -> str:
    return "columns " + ", ".join(f"{c!r} ({n})" for c, n in zip(columns, counts) if n)


def _missing_message(columns: list[str], counts: np.ndarray) -> str:
    return (f"missing or infinite values in {_counts(columns, counts)}; "
            "pass --missing drop or --missing mean, or clean the data")

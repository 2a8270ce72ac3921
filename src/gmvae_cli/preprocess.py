"""From a table to the float matrix the model sees: column choice, missing values, scaling.

Everything decided at training time (the columns, the missing-value rule, the fill values,
the scaling and the likelihood) is kept in the checkpoint, so `assign` applies the same steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from gmvae_cli.errors import UserError

MISSING_RULES = ("error", "drop", "mean")
LIKELIHOODS = ("auto", "gaussian", "bernoulli")


def choose_columns(
    frame: pd.DataFrame,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    id_column: str | None = None,
    note: Callable[[str], None] = lambda s: None,
) -> list[str]:
    """The feature columns: those named, else every numeric column but the id and excluded ones."""
    names = [str(c) for c in frame.columns]
    frame.columns = names
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
    def fit(cls, frame: pd.DataFrame, columns: list[str], missing: str, likelihood: str):
        if missing not in MISSING_RULES:
            raise UserError(f"--missing {missing!r} is not known; use {'|'.join(MISSING_RULES)}")
        if likelihood not in LIKELIHOODS:
            raise UserError(f"--likelihood {likelihood!r} is not known; use {'|'.join(LIKELIHOODS)}")
        values = frame[columns].to_numpy(dtype=np.float64, copy=True)
        values[~np.isfinite(values)] = np.nan
        _check_missing(values, columns, missing)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: reported next
            fill = np.nanmean(values, axis=0)
        if np.isnan(fill).any():
            empty = [c for c, f in zip(columns, fill) if np.isnan(f)]
            raise UserError(f"column {empty[0]!r} has no finite values; drop it with --exclude")
        finite = values[~np.isnan(values).any(axis=1)] if missing == "drop" else values
        if len(finite) == 0:
            raise UserError(
                "every row has a missing or infinite value, so --missing drop leaves no rows; "
                "use --missing mean or clean the data"
            )
        if missing == "mean":
            finite = np.where(np.isnan(values), fill, values)
        if likelihood == "auto":
            likelihood = "bernoulli" if finite.min() >= 0 and finite.max() <= 1 else "gaussian"
        if likelihood == "bernoulli":
            if finite.min() < 0 or finite.max() > 1:
                raise UserError(
                    "--likelihood bernoulli needs every value in [0, 1]; use gaussian"
                )
            center, scale = np.zeros(len(columns)), np.ones(len(columns))
        else:
            with np.errstate(all="ignore"):  # overflow is reported below as one line
                center = finite.mean(axis=0)
                scale = finite.std(axis=0)
            if not (np.isfinite(scale).all() and np.isfinite(center).all()):
                raise UserError("values too large to scale (overflow); rescale the columns")
            scale[scale == 0] = 1.0  # a constant column stays constant (zero) instead of NaN
        return cls(columns, missing, fill.tolist(), center.tolist(), scale.tolist(), likelihood)

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
            values[~finite] = np.nan
            _check_missing(values, self.columns, self.missing)
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


def _check_missing(values: np.ndarray, columns: list[str], missing: str) -> None:
    if missing != "error":
        return
    counts = np.isnan(values).sum(axis=0)
    if counts.any():
        worst = ", ".join(f"{c!r} ({n})" for c, n in zip(columns, counts) if n)
        raise UserError(
            f"missing or infinite values in columns {worst}; "
            "pass --missing drop or --missing mean, or clean the data"
        )

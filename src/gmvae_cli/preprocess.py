"""From a table to the float matrix the model sees: column choice, missing values, scaling,
and text columns as one-hot categories.

Everything decided at training time (the columns, the missing-value rule, the fill values,
the scaling, the categories and the likelihood) is kept in the checkpoint, so `assign`
applies the same steps.

The matrix holds the numeric columns first, in table order, then one block of indicators per
categorical column (categories.py), in table order; `inverse` puts them back in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from gmvae_cli.categories import MAX_CATEGORIES, CategoryCounts, Encoder, is_text_like
from gmvae_cli.column_notes import IdCodeScan
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


@dataclass(frozen=True)
class ColumnChoice:
    columns: list[str]  # the feature columns, in table order
    categorical: list[str]  # those to encode as categories (Preprocessor.fit may skip some)
    named: bool  # given with --columns: a column that cannot be encoded is an error, not a note


def choose_columns(
    frame: pd.DataFrame,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    id_column: str | None = None,
    note: Callable[[str], None] = lambda s: None,
    categorical: str = "auto",
) -> ColumnChoice:
    """The feature columns: those named, else every numeric column but the id and excluded
    ones, and with categorical="auto" the text, category and boolean ones too (which have
    few enough values is known only once every chunk is read: Preprocessor.fit).
    `frame` must have string column names (named_columns)."""
    check(categorical=categorical)
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

    def kind(c: str) -> str:
        if categorical == "auto" and is_text_like(frame[c].dtype):
            return "categorical"  # booleans too: under ignore they stay numbers, as before
        return "numeric" if pd.api.types.is_numeric_dtype(frame[c]) else "other"

    if columns:
        bad = [c for c in columns if kind(c) == "other"]
        if bad:
            example = "".join(f" (e.g. {v!r})" for v in frame[bad[0]].dropna().head(1))
            fix = "drop it from --columns or clean its values"
            if categorical == "auto":
                raise UserError(f"column {bad[0]!r} is neither numeric nor text{example}; {fix}")
            raise UserError(f"column {bad[0]!r} is not numeric{example}; {fix}")
        chosen = list(columns)
        return ColumnChoice(chosen, [c for c in chosen if kind(c) == "categorical"], named=True)
    candidates = [c for c in names if c != id_column and c not in exclude]
    chosen = [c for c in candidates if kind(c) != "other"]
    skipped = [c for c in candidates if c not in chosen]
    if skipped:
        what = "columns that are neither numeric nor text" if categorical == "auto" else \
            "non-numeric columns"
        use = "--categorical auto encodes text columns" if categorical == "ignore" else \
            "convert them to numbers or text to use them"
        note(f"skipping {what}: {', '.join(skipped)} ({use})")
    if not chosen:
        what = "numeric or text" if categorical == "auto" else "numeric"
        raise UserError(f"the table has no {what} feature columns; check the file or --columns")
    return ColumnChoice(chosen, [c for c in chosen if kind(c) == "categorical"], named=False)


@dataclass
class Preprocessor:
    columns: list[str]  # the model's columns in table order, numeric and categorical
    missing: str  # numeric NaN / ±inf: error, drop the row, or fill with the mean
    fill: list[float]  # training means, used by missing="mean" (one per numeric column)
    center: list[float]  # one per numeric column
    scale: list[float]  # one per numeric column
    likelihood: str  # resolved: gaussian or bernoulli
    # The --categorical rule; checkpoints from before it skipped text columns, as ignore does.
    categorical: str = "ignore"
    # Column -> its categories in block order (sorted by their text); a missing value or an
    # unseen category is an all-zero block. Column -> the value of its indicators.
    categories: dict[str, list] = field(default_factory=dict)
    category_scale: dict[str, float] = field(default_factory=dict)
    # The numeric columns with missing values at training (their cells were filled).
    gaps: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._encoders = {c: Encoder(c, self.categories[c], self.category_scale[c])
                          for c in self.categorical_columns}
        self._noted: set[str] = set()  # columns whose unseen categories were named already

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.categories]

    @property
    def categorical_columns(self) -> list[str]:
        return [c for c in self.columns if c in self.categories]

    @property
    def width(self) -> int:
        """Columns of the model's matrix: one per number, one per category."""
        return len(self.numeric_columns) + sum(len(v) for v in self.categories.values())

    @property
    def indicators(self) -> list[float]:
        """Per column of the model's matrix: the value of its one-hot indicator, 0 for a
        number."""
        values = [0.0] * len(self.numeric_columns)
        for c in self.categorical_columns:
            values += [self.category_scale[c]] * len(self.categories[c])
        return values

    @property
    def filled(self) -> list[float]:
        """Per column of the model's matrix: the value a mean-filled cell holds there (as
        transform writes it), NaN where no cell was filled at training."""
        values = [math.nan] * self.width
        if self.missing != "mean":
            return values
        for j, c in enumerate(self.numeric_columns):
            if c in self.gaps:
                value = (self.fill[j] - self.center[j]) / self.scale[j]
                if self.likelihood == "bernoulli":
                    value = min(max(value, 0.0), 1.0)
                values[j] = float(np.float32(value))
        return values

    @classmethod
    def fit(
        cls, chunks: Iterable[pd.DataFrame], columns: list[str], missing: str, likelihood: str,
        note: Callable[[str], None] = lambda s: None, *, encode: Sequence[str] = (),
        named: bool = False, categorical: str = "ignore",
    ) -> tuple[Preprocessor, int]:
        """The statistics from the table's chunks in one pass (a table in memory is one
        chunk), and the number of rows kept.

        `columns` are the feature columns in table order; those in `encode` are categorical
        (choose_columns with the `categorical` rule picks them). Such a column with too many
        distinct values (categories.MAX_CATEGORIES) is left out with a note, or refused when
        `named` (--columns). Fill values are the means of the finite values; the scaling
        comes from the complete rows (--missing drop) or from the mean-filled columns
        (--missing mean: a filled value adds no deviation, only a row). Category counts come
        from the rows kept; a missing category never drops or refuses a row.
        """
        check(missing=missing, likelihood=likelihood, categorical=categorical)
        numeric = [c for c in columns if c not in encode]
        every, complete = Moments(len(numeric)), Moments(len(numeric))
        counts = {c: CategoryCounts() for c in columns if c in encode}
        scan = IdCodeScan(numeric)
        rows, kept, absent = 0, 0, np.zeros(len(numeric), dtype=np.int64)
        for chunk in chunks:
            lacking = [c for c in columns if c not in chunk.columns]
            if lacking:
                raise UserError(f"column {lacking[0]!r} is missing from part of the file; fix it")
            text = [c for c in numeric if not pd.api.types.is_numeric_dtype(chunk[c])]
            if text:
                raise UserError(f"column {text[0]!r} holds non-numeric values in part of the "
                                "table; clean that column or leave it out with --exclude")
            values = chunk[numeric].to_numpy(dtype=np.float64, copy=True)
            values[~np.isfinite(values)] = np.nan
            gaps = np.isnan(values)
            whole = ~gaps.any(axis=1)  # every row when there are no numeric columns
            absent += gaps.sum(axis=0)
            if numeric:
                every.add(values)
                complete.add(values[whole])
                scan.add(values)
            for c, count in counts.items():
                count.add(chunk[c][whole] if missing == "drop" else chunk[c])
            rows += len(values)
            kept += int(whole.sum()) if missing == "drop" else len(values)
        if missing == "error" and absent.any():
            raise UserError(_missing_message(numeric, absent))
        if absent.any():
            filled = "filled with the column means" if missing == "mean" else "rows left out"
            other = "drop" if missing == "mean" else "mean"
            note(f"note: missing or infinite values in {_counts(numeric, absent)}: {filled} "
                 f"(--missing {other} or --missing error to change)")
        if (every.n == 0).any():
            empty = numeric[int(np.argmax(every.n == 0))]
            raise UserError(f"column {empty!r} has no finite values; drop it with --exclude")
        if missing == "drop" and kept == 0:
            raise UserError(
                "every row has a missing or infinite value, so --missing drop leaves no "
                "rows; use --missing mean or clean the data"
            )
        counts = _encodable(counts, columns, numeric, named, note)
        fill = every.mean
        if missing == "drop":
            center, variance, low, high = complete.mean, complete.variance, complete.min, complete.max
        else:  # "error" (no gaps) or "mean": filled values sit at the mean
            center, variance = fill, every.m2 / max(rows, 1)
            low, high = every.min, every.max
        in_unit = bool((low >= 0).all() and (high <= 1).all())  # one-hot blocks always are
        if likelihood == "auto":
            likelihood = "bernoulli" if in_unit else "gaussian"
        if likelihood == "bernoulli":
            if not in_unit:
                raise UserError("--likelihood bernoulli needs every value in [0, 1]; use gaussian")
            center, scale = np.zeros(len(numeric)), np.ones(len(numeric))
        else:
            scale = np.sqrt(variance)
            if not (np.isfinite(scale).all() and np.isfinite(center).all()):
                raise UserError("values too large to scale (overflow); rescale the columns")
            scale[scale == 0] = 1.0  # a constant column stays constant (zero) instead of NaN
        # The one-hot blocks' scale. Bernoulli: plain 0/1 indicators, the values that
        # likelihood models. Gaussian: each indicator is `scale` instead of 1, the same for the
        # whole block, with scale = 1/√(Σ p_j (1 − p_j)), so that the block's total variance is
        # 1, as a standardised numeric column's is: two rows then differ by 2 on average (in
        # squared distance) in a categorical column as in a numeric one, however many categories
        # it has, and a column of 50 categories does not outweigh 50 times a column of numbers.
        # The block is not centred, so a missing or unseen category stays an all-zero block.
        categories = {c: count.categories() for c, count in counts.items()}
        block_scale = {c: 1.0 if likelihood == "bernoulli" else count.block_scale(kept)
                       for c, count in counts.items()}
        for message in scan.notes():
            note(message)
        used = [c for c in columns if c in numeric or c in counts]
        pre = cls(used, missing, fill.tolist(), center.tolist(), scale.tolist(), likelihood,
                  categorical, categories, block_scale,
                  gaps=[c for c, count in zip(numeric, absent) if count])
        return pre, kept

    def transform(
        self, frame: pd.DataFrame, note: Callable[[str], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's float32 matrix, and the boolean mask of input rows kept. Categories
        the model never saw are named through `note`, once per column."""
        absent = [c for c in self.columns if c not in frame.columns]
        if absent:
            raise UserError(
                f"the table lacks the model's column {absent[0]!r}"
                f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}; "
                "pass a table with the columns the model was trained on"
            )
        numeric = self.numeric_columns
        features = frame[numeric]
        for c, dtype in zip(numeric, features.dtypes):
            if not pd.api.types.is_numeric_dtype(dtype):
                raise UserError(f"model column {c!r} holds non-numeric values; clean that column")
        values = features.to_numpy(dtype=np.float64, copy=True)
        keep = np.ones(len(values), dtype=bool)
        finite = np.isfinite(values)
        if not finite.all():  # most chunks have no gaps: no bookkeeping then
            if self.missing == "error":
                raise UserError(_missing_message(numeric, (~finite).sum(axis=0)))
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
            column = numeric[int(np.nonzero(~np.isfinite(scaled).all(axis=0))[0][0])]
            raise UserError(
                f"column {column!r} holds values too large for the model (e.g. 1e300); "
                "rescale the column"
            )
        if not self._encoders:
            return scaled, keep
        blocks = [scaled]
        for c, encoder in self._encoders.items():
            say = None if note is None or c in self._noted else _once(note, self._noted, c)
            block = encoder.block(frame[c], say)
            blocks.append(block if keep.all() else block[keep])
        return np.concatenate(blocks, axis=1), keep

    def inverse(self, values: np.ndarray) -> pd.DataFrame:
        """Rows of the model's matrix (sampled rows) back as a table in the model's column
        order: numbers in their original units, and each categorical column as the category
        whose indicator is largest in its block."""
        numeric = self.numeric_columns
        numbers = values[:, : len(numeric)] * np.asarray(self.scale) + np.asarray(self.center)
        out = {c: numbers[:, j] for j, c in enumerate(numeric)}
        start = len(numeric)
        for c, encoder in self._encoders.items():
            block = values[:, start : start + encoder.width]
            out[c] = np.asarray(self.categories[c], dtype=object)[block.argmax(axis=1)]
            start += encoder.width
        return pd.DataFrame({c: out[c] for c in self.columns}, index=pd.RangeIndex(len(values)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls(**d)


def _once(note: Callable[[str], None], noted: set[str], column: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        noted.add(column)
        note(message)

    return say


def _encodable(counts: dict[str, CategoryCounts], columns: list[str], numeric: list[str],
               named: bool, note: Callable[[str], None]) -> dict[str, CategoryCounts]:
    """The categorical columns that can be encoded; the others are refused when named in
    --columns, else left out with a note (an error when no feature column is left)."""
    reasons = {c: "no values" if count.present == 0 else count.too_many()
               for c, count in counts.items()}
    refused = {c: why for c, why in reasons.items() if why is not None}
    if not refused:
        return counts
    listed = ", ".join(f"{c} ({why})" for c, why in refused.items())
    first, why = next(iter(refused.items()))
    if named:
        if why == "no values":
            raise UserError(f"column {first!r} has no values; drop it from --columns")
        raise UserError(f"column {first!r} has {why}: too many to encode as categories (at "
                        f"most {MAX_CATEGORIES}, and at most half the rows); drop it from "
                        "--columns, or pass it as --id-column if it is an id")
    if not numeric and len(refused) == len(counts):
        raise UserError(f"the table has no numeric feature columns and no text column to "
                        f"encode: {listed}; check the file or --columns")
    note(f"note: skipping text columns that cannot be encoded as categories (more than "
         f"{MAX_CATEGORIES} distinct values, or more than half the rows): {listed}; "
         "pass an id as --id-column")
    return {c: count for c, count in counts.items() if c not in refused}


def _counts(columns: list[str], counts: np.ndarray) -> str:
    return "columns " + ", ".join(f"{c!r} ({n})" for c, n in zip(columns, counts) if n)


def _missing_message(columns: list[str], counts: np.ndarray) -> str:
    return (f"missing or infinite values in {_counts(columns, counts)}; "
            "pass --missing drop or --missing mean, or clean the data")

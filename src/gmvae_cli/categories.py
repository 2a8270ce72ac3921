"""Text columns as categories: which ones can be encoded, and their one-hot blocks.

Under `--categorical auto` a text, pandas-category or boolean column with few distinct values
becomes a block of 0/1 indicators, one per category (preprocess.Preprocessor keeps the
categories in the checkpoint). A row whose value is missing, or a category training never saw,
gets an all-zero block: it says "none of the known categories" and never stops a command.

A value's category is named by its text (`category_key`): a CSV chunk can read a column of
codes as numbers and the next chunk as text, and 1, 1.0 and "1" must stay one category.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

# A text column is encoded when it has at most this many distinct values and at most one
# distinct value per two rows that have one; more looks like an id or free text, whose
# one-hot block would be wide and teach the model nothing about the other rows.
MAX_CATEGORIES = 50
SHOW_UNSEEN = 3  # unseen values named in the note at assign time


def is_text_like(dtype) -> bool:
    """Text, pandas categories and booleans: the columns `--categorical auto` encodes."""
    return (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype))


def category_key(value) -> str:
    """The text naming a value's category: whole floats lose their ".0", so 1, 1.0 and "1"
    (the same code read as an integer, a float with gaps, or text) are one category."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def plain(value):
    """A category as the checkpoint stores it: a Python str, bool, int or float (what
    `torch.load(weights_only=True)` reads back); anything else as its text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value) if isinstance(value, str) else category_key(value)


class CategoryCounts:
    """One column's categories over a table's chunks, exact and in bounded memory: the rows
    per category, the first value seen of each, and the rows with a value. Past
    MAX_CATEGORIES categories it stops counting: the column has too many to encode."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.first: dict[str, object] = {}
        self.present = 0  # rows with a value
        self.over_limit = False

    def add(self, column: pd.Series) -> None:
        if self.over_limit:
            self.present += int(column.notna().sum())
            return
        codes, uniques = pd.factorize(column)  # code -1 where the value is missing
        seen = codes >= 0
        self.present += int(seen.sum())
        per_unique = np.bincount(codes[seen], minlength=len(uniques))
        for value, n in zip(uniques, per_unique):
            key = category_key(value)
            if key not in self.counts and len(self.counts) == MAX_CATEGORIES:
                self.over_limit = True
                self.counts, self.first = {}, {}
                return
            self.counts[key] = self.counts.get(key, 0) + int(n)
            self.first.setdefault(key, plain(value))

    def too_many(self) -> str | None:
        """Why the column cannot be encoded (its distinct values), or None if it can."""
        if self.over_limit:
            return f"more than {MAX_CATEGORIES} distinct values"
        if len(self.counts) > self.present / 2:
            return f"{len(self.counts)} distinct values in {self.present} rows"
        return None

    def categories(self) -> list:
        """The categories in a fixed order: sorted by their text."""
        return [self.first[key] for key in sorted(self.counts)]

    def block_scale(self, rows: int) -> float:
        """The value of an indicator for the Gaussian likelihood: 1 / √(total variance of the
        0/1 block over `rows` rows), so that the block, like a standardised numeric column,
        has total variance 1 (see Preprocessor.fit)."""
        shares = np.array([self.counts[key] for key in sorted(self.counts)]) / max(rows, 1)
        variance = float((shares * (1.0 - shares)).sum())
        return 1.0 / variance**0.5 if variance > 0 else 1.0  # one category: like a constant


class Encoder:
    """The one-hot block of one column: its categories, in order, each at value `scale`."""

    def __init__(self, name: str, categories: list, scale: float):
        self.name, self.scale = name, scale
        self.slots = {category_key(c): j for j, c in enumerate(categories)}
        self.width = len(categories)

    def block(self, column: pd.Series, note: Callable[[str], None] | None = None) -> np.ndarray:
        """(rows, categories) float32: `scale` at the row's category, all zero for a missing
        value or a category training never saw (those are named through `note`)."""
        codes, uniques = pd.factorize(column)
        # The slot of each distinct value, -1 for unseen; the last entry serves code -1 (missing).
        slots = np.array([self.slots.get(category_key(u), -1) for u in uniques] + [-1], np.int64)
        where = slots[codes]
        block = np.zeros((len(column), self.width), dtype=np.float32)
        rows = np.flatnonzero(where >= 0)
        block[rows, where[rows]] = self.scale
        if note is not None and (slots[:-1] < 0).any():
            unseen = [u for u, s in zip(uniques, slots) if s < 0]
            shown = ", ".join(repr(plain(u)) for u in unseen[:SHOW_UNSEEN])
            more = f" and {len(unseen) - SHOW_UNSEEN} more" if len(unseen) > SHOW_UNSEEN else ""
            note(f"note: column {self.name!r} has values the model never saw in training "
                 f"({shown}{more}); those rows get no category for it (an all-zero block)")
        return block

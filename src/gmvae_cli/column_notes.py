"""Numeric columns that look like ids or codes rather than amounts: a note at train time.

A running number or a site code is a number to the model: it then groups rows by it as if
101 and 205 were near each other. Training goes on with the column; the note names it and
the option that leaves it out. The rules (docs/model.md, "Columns that look like ids or codes"):

- an id: at least ID_MIN_ROWS values, every one a whole number and every one different (a
  running number 1, 2, 3, … or any distinct integers). Checked exactly for up to ID_TRACKED
  distinct values; past that, only a strictly increasing or decreasing column counts.
- a code: every value a whole number, few distinct values (the rule that lets a text column be
  encoded: at most MAX_CATEGORIES, and at most one per two rows), at least 2 of them, and
  either spread thinly over their range (max − min + 1 > CODE_SPREAD × distinct: site codes
  101, 205, 310) or all CODE_LARGE or more (years, four-digit codes). Ordinal scores such as
  1–10 or 0–4 fill their range and are small, so they get no note.
"""

from __future__ import annotations

import numpy as np

from gmvae_cli.categories import MAX_CATEGORIES

ID_MIN_ROWS = 20
ID_TRACKED = 1_000_000  # distinct values kept to check an id exactly (8 MB)
CODE_SPREAD = 4
HEAD_ROWS = 1000  # rows of each chunk looked at first
CODE_LARGE = 1000
SHOW_CODES = 5


class _Column:
    def __init__(self):
        self.integral = True
        self.present = 0
        self.few: set[float] | None = set()  # the distinct values, while there are few
        self.distinct: np.ndarray | None = np.zeros(0)  # sorted, while all differ (and not too many)
        self.all_differ = True
        self.rising = self.falling = True
        self.last: float | None = None

    @property
    def active(self) -> bool:
        return self.integral and (self.few is not None or self.all_differ)

    def add(self, v: np.ndarray) -> None:
        """The column's whole-number values in this chunk, in file order, none missing."""
        if not len(v):
            return
        self.present += len(v)
        if self.rising or self.falling:
            step = np.diff(v if self.last is None else np.concatenate([[self.last], v]))
            self.rising = self.rising and bool((step > 0).all())
            self.falling = self.falling and bool((step < 0).all())
        self.last = float(v[-1])
        if self.distinct is None and not (self.rising or self.falling):
            self.all_differ = False  # too many to check, and not a running number
        # A look at the chunk's first rows rules most columns out at a fraction of the cost
        # (a repeated value: no id; many values: no code).
        head = np.unique(v[:HEAD_ROWS])
        if len(head) < min(len(v), HEAD_ROWS):
            self.distinct, self.all_differ = None, False
        if len(head) > MAX_CATEGORIES:
            self.few = None
        if self.few is None and self.distinct is None:
            return
        values = np.unique(v)
        if self.few is not None:
            self.few.update(values.tolist())
            if len(self.few) > MAX_CATEGORIES:
                self.few = None
        if self.distinct is not None:
            merged = np.union1d(self.distinct, values)
            if len(values) < len(v) or len(merged) < len(self.distinct) + len(values):
                self.distinct, self.all_differ = None, False  # a value repeats: no id
            elif len(merged) > ID_TRACKED:
                self.distinct = None  # all differ so far; from here only the order tells
            else:
                self.distinct = merged

    def looks_like_id(self) -> bool:
        return (self.integral and self.present >= ID_MIN_ROWS and self.all_differ
                and (self.distinct is not None or self.rising or self.falling))

    def code_values(self) -> list[float] | None:
        if not self.integral or self.few is None or not 2 <= len(self.few) <= self.present / 2:
            return None
        low, high = min(self.few), max(self.few)
        if high - low + 1 > CODE_SPREAD * len(self.few) or low >= CODE_LARGE:
            return sorted(self.few)
        return None


class IdCodeScan:
    """One pass over a table's numeric chunks; `notes()` at the end says which columns look
    like ids or codes. Columns that have shown a fraction or many repeated values cost
    nothing more."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self._state = [_Column() for _ in columns]

    def add(self, values: np.ndarray) -> None:
        """A chunk (rows, columns) in float64, NaN where a value is missing or infinite."""
        for j, state in enumerate(self._state):
            if state.active:
                column = values[:, j]
                column = column[~np.isnan(column)]
                if np.array_equal(column, np.floor(column)):
                    state.add(column)
                else:
                    state.integral = False  # a fraction: neither an id nor a code

    def notes(self) -> list[str]:
        found = []
        for name, state in zip(self.columns, self._state):
            if state.looks_like_id():
                found.append(
                    f"note: column {name!r} holds a different whole number in every row, like "
                    f"an id; it is used as a feature: if it is an id, leave it out with "
                    f"--exclude {name} or carry it to the output with --id-column {name}"
                )
            elif (codes := state.code_values()) is not None:
                shown = ", ".join(str(int(c)) for c in codes[:SHOW_CODES])
                more = ", …" if len(codes) > SHOW_CODES else ""
                found.append(
                    f"note: column {name!r} holds only {len(codes)} different whole numbers "
                    f"({shown}{more}), like a code or a year; it is used as a number: if it is "
                    f"a code, leave it out with --exclude {name} (or --id-column {name}), or "
                    "store it as text to have it one-hot encoded"
                )
        return found

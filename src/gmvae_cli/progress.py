"""Progress on stderr: a rich bar when stderr is a terminal, nothing with --quiet.

Stdout is kept for data, so every note, warning and bar goes to this stderr console.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typing_extensions import Self

if TYPE_CHECKING:
    import pandas as pd

stderr = Console(stderr=True, soft_wrap=True)


def note(message: str) -> None:
    """A one-line note for people, on stderr."""
    stderr.print(message, markup=False, highlight=False)


class Reporter:
    """One bar per stage (pretraining, training, …); `update` moves it and shows the ELBO."""

    def __init__(self, quiet: bool = False):
        self.enabled = not quiet and stderr.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=stderr,
            disable=not self.enabled,
            transient=False,
            # stdout carries data (assign's CSV): rich must not route it through this console.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = None

    def __enter__(self) -> Self:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def stage(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=True)
        self._task = self._progress.add_task(description, total=total, info="")

    def update(self, advance: int = 1, info: str = "") -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=advance, info=info)


def write_rows(
    frames: Iterable[pd.DataFrame],
    write: Callable[[pd.DataFrame], None],
    description: str,
    total: int | None,
    quiet: bool = False,
) -> None:
    """Write frames one by one under a bar counting rows (total None: the count alone)."""
    started, done = time.perf_counter(), 0
    with Reporter(quiet) as reporter:
        reporter.stage(description, total)
        for frame in frames:
            write(frame)
            done += len(frame)
            reporter.update(len(frame), f"{done / (time.perf_counter() - started):,.0f} rows/s")

"""Every file gmvae writes (checkpoints, tables, PNG figures) is whole or absent.

`atomic_write` hands out a temporary name beside the target; the target is replaced by a
rename only when the writing succeeded, so a failure or Ctrl-C never leaves a partial file
and never damages the previous version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from gmvae_cli.errors import UserError


def _folder(path: str, what: str) -> Path:
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise UserError(f"cannot write {what}{path}: folder {folder} does not exist")
    return folder


def _temporary(path: str, what: str) -> str:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp",
                                   dir=_folder(path, what))
    except OSError as e:
        raise UserError(f"cannot write {what}{path}: {e.strerror}; choose another -o path")
    os.close(fd)
    return tmp


def check_writable(path: str, what: str = "") -> None:
    """Fail early, before any work, where `path` could not be written later."""
    Path(_temporary(path, what)).unlink(missing_ok=True)


def check_checkpoint_target(path: str, inputs: tuple[str, ...] = (), replace: bool = False) -> None:
    """Fail early (before training) if a checkpoint could not or should not be written to
    `path`: an existing file is a model someone trained, kept unless `replace` is given
    (--force, or --resume of that very run)."""
    if Path(path).is_dir():
        raise UserError(f"cannot write checkpoint {path}: it is a directory; pass a file such as model.pt")
    if any(same_file(given, path) for given in inputs):
        raise UserError(f"checkpoint {path} is also the input data; write to another -o path")
    if Path(path).exists() and not replace:
        raise UserError(f"{path} already exists; pass --force to replace it, --resume to "
                        "continue its run, or choose another -o path")
    check_writable(path, "checkpoint ")


@contextlib.contextmanager
def atomic_write(path: str, what: str = "", hold_signals: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; rename it onto `path` if the block succeeds.

    `what` names the file in messages ("checkpoint "). With `hold_signals`, Ctrl-C and
    SIGTERM wait until the file is in place (for short writes such as a checkpoint).
    """
    with _signals_deferred() if hold_signals else contextlib.nullcontext():
        tmp = _temporary(path, what)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_deferred():
    deferred = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one existing file ('-' names standard input, no file)."""
    return "-" not in (a, b) and Path(a).exists() and Path(a).resolve() == Path(b).resolve()

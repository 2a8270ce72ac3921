"""Help choosing K: train short models over a range of K and measure each three ways.

    sweep = select_k(frame, range(2, 11), restarts=3, hidden=(64, 64), epochs=20)
    sweep.recommended, sweep.reason

For every K, `restarts` models (seeds seed, seed + 1, …) are trained on the same training
split (all rows but a seeded held-out share, 20% by default). Each K gets:

- held-out ELBO: the mean ELBO per row on the held-out rows (GMVAE.score), averaged over the
  restarts, with its standard error; higher is better, and unlike the training ELBO it does
  not reward memorising the training rows;
- effective clusters: clusters that hold at least 1% of all rows when every row is assigned
  (median over the restarts); a GMVAE given more clusters than the data has leaves the
  surplus ones (nearly) empty;
- stability: the mean adjusted Rand index between the restarts' assignments of all rows;
  1 means every seed finds the same partition.

The rule (`recommend`, explained in docs/choosing-k.md):
1. keep the K whose stability is within STABILITY_TOLERANCE of the best;
2. among them take the smallest K whose held-out ELBO is within one standard error of the
   best held-out ELBO among them (the one-standard-error rule of cross-validation);
3. recommend the number of clusters that K's models actually use (its effective clusters),
   so the answer is never a K whose fits leave clusters empty.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from multiprocessing import forkserver
from multiprocessing.managers import SyncManager

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from gmvae_cli import clustering, devices, plots
from gmvae_cli.api import GMVAE
from gmvae_cli.data import read_table
from gmvae_cli.errors import UserError
from gmvae_cli.options import parse_list
from gmvae_cli.progress import Reporter, note
from gmvae_cli.sources import as_frame

# Ks whose stability (mean ARI between restarts) is at most this far below the best count as
# equally reproducible; ARI between good fits of the same data varies by about this much.
STABILITY_TOLERANCE = 0.05
DEFAULT_HOLDOUT = 0.2
# Below this best stability no K gives reproducible clusters: the reason line says so.
LOW_STABILITY = 0.5


@dataclass
class KResult:
    """What the restarts at one K measured; lists hold one entry per restart."""

    k: int
    seeds: list[int]
    heldout_elbo: list[float]
    effective: list[int]
    stability: float | None  # None with a single restart: there is nothing to compare

    @property
    def elbo_mean(self) -> float:
        return float(np.mean(self.heldout_elbo))

    @property
    def elbo_se(self) -> float:
        """Standard error of the mean held-out ELBO over the restarts (0 for one restart)."""
        n = len(self.heldout_elbo)
        return float(np.std(self.heldout_elbo, ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    @property
    def effective_median(self) -> int:
        return math.floor(np.median(self.effective))

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "heldout_elbo_mean": self.elbo_mean,
            "heldout_elbo_se": self.elbo_se,
            "effective_median": self.effective_median,
        }


@dataclass
class Sweep:
    results: list[KResult]  # the finished Ks, in the order swept
    recommended: int | None
    reason: str
    chosen_k: int | None  # the K of step 2; recommended is its effective clusters
    restarts: int
    seed: int
    train_rows: int
    heldout_rows: int
    interrupted: bool = False
    options: dict = field(default_factory=dict)  # the training options every model used

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [r.to_dict() for r in self.results]
        return d


def recommend(results: Sequence[KResult]) -> tuple[int | None, int | None, str]:
    """(recommended K, the swept K it comes from, a one-line reason) — see the module doc."""
    if not results:
        return None, None, "no K finished, so there is nothing to recommend"
    measured = [r.stability for r in results if r.stability is not None]
    if measured:
        floor = max(measured) - STABILITY_TOLERANCE
        stable = [r for r in results if r.stability is not None and r.stability >= floor]
        among = f"among the most reproducible Ks (stability ≥ {floor:.2f})"
    else:
        stable = list(results)
        among = "(one restart per K, so stability was not measured)"
    best = max(stable, key=lambda r: r.elbo_mean)
    threshold = best.elbo_mean - best.elbo_se
    chosen = min((r for r in stable if r.elbo_mean >= threshold), key=lambda r: r.k)
    used = chosen.effective_median
    reason = (
        f"K={chosen.k} is the smallest K within one standard error of the best held-out ELBO "
        f"({best.elbo_mean:.2f} at K={best.k}) {among}"
    )
    if used < chosen.k:
        reason += f", but its models use only {used} of {chosen.k} clusters"
    if measured and max(measured) < LOW_STABILITY:
        reason += (
            f"; caution: no K's restarts agree (best stability {max(measured):.2f}), so train "
            "longer (--epochs) or use more rows before trusting this"
        )
    return min(used, chosen.k), chosen.k, reason


def select_k(
    table: pd.DataFrame | np.ndarray,
    ks: Sequence[int],
    *,
    restarts: int = 3,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    reporter: Reporter | None = None,
    note: Callable[[str], None] = lambda s: None,
    workers: int | None = 1,
    **options,
) -> Sweep:
    """Train `restarts` models per K in `ks` and recommend a K (see the module doc).

    `options` are GMVAE's training options (hidden, x_dim, recipe, epochs, batch_size, …);
    each model gets seed `seed + restart`. The first K's models train here and build what
    every K shares; the others train in `workers` processes side by side (None: one per CPU
    core; always 1 on a GPU), each on one torch thread, so the sweep's result does not
    depend on how many there are. Workers import the calling script again, as
    multiprocessing's do: a script that passes workers other than 1 keeps its own work
    under `if __name__ == "__main__":`. Ctrl-C stops the sweep: the Ks finished so far are
    kept, the result says `interrupted`, and the recommendation uses what finished.
    """
    ks = sorted(dict.fromkeys(int(k) for k in ks))
    if not ks or ks[0] < 2:
        raise UserError(f"--k-range needs values of K of 2 or more, got {ks or 'none'}")
    if restarts < 1:
        raise UserError(f"--restarts must be at least 1, got {restarts}")
    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be between 0 and 1 (a share of the rows), got {holdout}")
    check_workers(workers)
    GMVAE(k=ks[0], **options)  # validates every option before any training starts
    frame = as_frame(table)
    n_held = round(len(frame) * holdout)
    if n_held < 1 or len(frame) - n_held < ks[-1]:
        raise UserError(
            f"{len(frame)} rows are too few to hold out {holdout:.0%} and train K={ks[-1]}; "
            "use more rows, a smaller --holdout or a lower --k-range"
        )
    order = np.random.default_rng(seed).permutation(len(frame))
    held, train = frame.iloc[order[:n_held]], frame.iloc[order[n_held:]]

    reporter = reporter or Reporter(quiet=True)
    reporter.stage(f"select-k K={ks[0]}…{ks[-1]}", len(ks) * restarts)
    seeds = [seed + r for r in range(restarts)]
    # One pretraining and one neighbour graph per seed, whatever K is (recipe.make).
    job = _Sweeper(frame, train, held, seed, columns, exclude, options, shared={})
    measured: dict[tuple[int, int], tuple[float, int, np.ndarray]] = {}

    def done(k: int, run_seed: int, fit: tuple[float, int, np.ndarray]) -> None:
        measured[k, run_seed] = fit
        reporter.update(1, f"K={k} seed {run_seed}: held-out ELBO {fit[0]:.2f}")

    rest = [(k, run_seed) for k in ks[1:] for run_seed in seeds]
    count = worker_count(workers, options, len(rest))
    context = _workers_context() if count > 1 else None
    interrupted = False
    try:
        for run_seed in seeds:  # the notes about the columns once, not once per model
            done(ks[0], run_seed, job.fit(ks[0], run_seed, note if run_seed == seed else None))
        for k, run_seed, fit in _in_parallel(job, rest, count, context):
            done(k, run_seed, fit)
    except KeyboardInterrupt:
        interrupted = True  # keep what finished; the caller reports it and exits 130
    results = [_result(k, seeds, measured) for k in ks
               if all((k, run_seed) in measured for run_seed in seeds)]
    recommended, chosen, reason = recommend(results)
    return Sweep(
        results=results, recommended=recommended, reason=reason, chosen_k=chosen,
        restarts=restarts, seed=seed, train_rows=len(train), heldout_rows=len(held),
        interrupted=interrupted, options={k: _plain(v) for k, v in options.items()},
    )


@dataclass
class _Sweeper:
    """What every model of a sweep sees: the rows, the split, the options, and the work the
    default recipe shares across Ks (`shared`, filled by the first K's models)."""

    frame: pd.DataFrame
    train: pd.DataFrame
    held: pd.DataFrame
    seed: int
    columns: Sequence[str] | None
    exclude: Sequence[str]
    options: dict
    shared: dict

    def fit(self, k: int, run_seed: int, say: Callable[[str], None] | None = None
            ) -> tuple[float, int, np.ndarray]:
        """(held-out ELBO, effective clusters, every row's cluster) of one model."""
        model = GMVAE(k=k, seed=run_seed, restarts=1, **self.options)
        model.fit(self.train, columns=self.columns, exclude=self.exclude,
                  note=say or (lambda message: None), shared=self.shared)
        if len(model.matrix(self.held)[0]) == 0:
            raise UserError("every held-out row was dropped as missing; use --missing mean")
        elbo = float(model.score(self.held, seed=self.seed)["elbo"])
        assigned = model.predict(self.frame)  # all rows: every restart is compared on them
        return elbo, int(model.effective_clusters(np.bincount(assigned, minlength=k))), assigned


def _result(k: int, seeds: list[int], measured: dict) -> KResult:
    elbos, effective, labels = zip(*(measured[k, s] for s in seeds))
    pairs = list(itertools.combinations(labels, 2))
    stability = float(np.mean([clustering.adjusted_rand(a, b) for a, b in pairs])) if pairs else None
    return KResult(k, seeds, list(elbos), list(effective), stability)


@contextmanager
def torch_threads(n: int):
    """Run the block on `n` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")


def worker_count(asked: int | None, options: dict, fits: int) -> int:
    """Processes for `fits` models (`asked` None: one per CPU core). Small models are bound
    by per-step overhead, not arithmetic: on 2 cores two one-thread fits side by side each
    ran as fast as one fit on both cores (docs/choosing-k.md)."""
    if fits < 2 or not can_fork_workers(options):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(asked or cores or 1, fits))


def can_fork_workers(options: dict) -> bool:
    """Training on Linux's CPU. A GPU runs the fits in this process, and so does the CPU
    elsewhere: Windows has no fork server, and forking a process that holds torch is not
    safe on macOS."""
    on_cpu = devices.resolve(options.get("device", "auto")).type == "cpu"
    return on_cpu and sys.platform.startswith("linux")


def _workers_context():
    """Workers come from a fork server that has imported this module and never trained:
    a process forked after its autograd engine has run cannot run backward (torch refuses
    it where CUDA is visible), and a spawned worker would import torch again. Started
    before the first K's models, the server's imports overlap their training."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    forkserver.ensure_running()
    return context


_WORKER_JOB: _Sweeper | None = None  # set in each worker process by _start_worker


def _quiet_child() -> None:
    """Ctrl-C is the parent's to handle; its terminate ends a helper process silently."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_worker(job: _Sweeper) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job
    torch.set_num_threads(1)
    _quiet_child()


def _fit_in_worker(fit: tuple[int, int]) -> tuple[int, int, tuple[float, int, np.ndarray]]:
    k, run_seed = fit
    return k, run_seed, _WORKER_JOB.fit(k, run_seed)


def _in_parallel(job: _Sweeper, fits: list[tuple[int, int]], count: int, context):
    """(K, seed, result) of each fit as it finishes, from `count` worker processes. What a
    fit adds to the warm start's memo (a seed's graph embedding, a mixture) goes to a dict
    every worker reads, so a later K reuses it whichever worker built it."""
    if count == 1:
        # Where workers could run, these fits run on one thread as a worker's do: the
        # sweep's result does not depend on --workers.
        with torch_threads(1) if can_fork_workers(job.options) else nullcontext():
            for k, run_seed in fits:
                yield k, run_seed, job.fit(k, run_seed)
        return
    manager = SyncManager(ctx=context)
    manager.start(_quiet_child)
    with manager:
        if "memo" in job.shared:
            memo = manager.dict(job.shared["memo"])
            job.shared["memo"] = memo
            for entry in job.shared.values():
                spaces = entry.get("spaces") if isinstance(entry, dict) else None
                if spaces is not None and spaces.memo is not None:
                    spaces.memo = memo
        with context.Pool(count, _start_worker, (job,)) as pool:  # on leaving: terminate
            yield from pool.imap_unordered(_fit_in_worker, fits)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def parse_k_range(text: str) -> list[int]:
    """'2:20' (inclusive), '2:20:2' (with a step) or '4,7,10'."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] < 1):
                raise ValueError
            start, stop = parts[0], parts[1]
            ks = list(range(start, stop + 1, parts[2] if len(parts) == 3 else 1))
        else:
            ks = [int(p) for p in parse_list(text)]
    except ValueError:
        ks = []
    if not ks or min(ks) < 2:
        raise UserError(
            f"--k-range takes FIRST:LAST (e.g. 2:20), FIRST:LAST:STEP or a list such as 4,7,10, "
            f"with every K at least 2; got {text!r}"
        )
    return ks


# -- output --------------------------------------------------------------------------------


def show(sweep: Sweep, console: Console) -> None:
    table = Table(title=f"select-k: {sweep.restarts} restart(s) per K, "
                        f"{sweep.train_rows} training rows, {sweep.heldout_rows} held out")
    table.add_column("K", justify="right")
    table.add_column("held-out ELBO", justify="right")
    table.add_column("± se", justify="right")
    table.add_column("effective clusters", justify="right")
    table.add_column("stability (ARI)", justify="right")
    table.add_column("seeds")
    table.add_column("")
    for r in sweep.results:
        spread = f" ({min(r.effective)}–{max(r.effective)})" if min(r.effective) != max(r.effective) else ""
        table.add_row(
            str(r.k), f"{r.elbo_mean:.3f}", f"{r.elbo_se:.3f}", f"{r.effective_median}{spread}",
            "–" if r.stability is None else f"{r.stability:.3f}",
            ",".join(map(str, r.seeds)), "←" if r.k == sweep.chosen_k else "",
        )
    console.print(table)
    if sweep.recommended is None:
        console.print(f"no recommendation: {sweep.reason}", markup=False, highlight=False)
    else:
        console.print(f"recommended K: {sweep.recommended} ({sweep.reason})",
                      markup=False, highlight=False)


def plot(sweep: Sweep, path: str) -> None:
    """Three curves over K: held-out ELBO (± se), effective clusters, stability."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ks = [r.k for r in sweep.results]
    fig, axes = plt.subplots(3, 1, figsize=(6, 8), sharex=True)
    axes[0].errorbar(ks, [r.elbo_mean for r in sweep.results],
                     yerr=[r.elbo_se for r in sweep.results], marker="o", capsize=3)
    axes[0].set_ylabel("held-out ELBO per row")
    axes[1].plot(ks, ks, linestyle="--", color="grey", label="K (all clusters used)")
    for r in sweep.results:
        axes[1].scatter([r.k] * len(r.effective), r.effective, color="tab:blue", alpha=0.4, s=12)
    axes[1].plot(ks, [r.effective_median for r in sweep.results], marker="o", label="median")
    axes[1].set_ylabel("effective clusters")
    axes[1].legend(loc="upper left", fontsize="small")
    axes[2].plot(ks, [np.nan if r.stability is None else r.stability for r in sweep.results],
                 marker="o")
    axes[2].set_ylabel("stability (mean ARI)")
    axes[2].set_xlabel("K")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    if sweep.chosen_k is not None:
        for ax in axes:
            ax.axvline(sweep.chosen_k, color="tab:red", alpha=0.4)
    fig.suptitle(f"recommended K = {sweep.recommended}")
    fig.tight_layout()
    try:
        plots.save_figure(fig, path)
    finally:
        plt.close(fig)


# -- the command ---------------------------------------------------------------------------


def run(data: str, k_range: str, restarts: int, holdout: float, as_json: bool,
        plot_path: str | None, columns: str | None, exclude: str | None, fmt: str | None,
        key: str | None, quiet: bool, workers: int | None = None, **options) -> None:
    """`gmvae select-k` (cli.py has its options); `options` are GMVAE's."""
    ks = parse_k_range(k_range)
    if plot_path is not None:
        plots.check_png(plot_path, "--plot")  # before minutes of training, not after
    GMVAE(k=ks[0], **options)  # every option is checked before the data is read
    check_workers(workers)
    frame = read_table(data, fmt, key)
    say = (lambda s: None) if quiet else note
    with Reporter(quiet) as reporter:
        sweep = select_k(
            frame, ks, restarts=restarts, holdout=holdout, columns=parse_list(columns) or None,
            exclude=parse_list(exclude), reporter=reporter, note=say, workers=workers, **options,
        )
    if as_json:
        import json

        print(json.dumps(sweep.to_dict(), indent=2))
    else:
        show(sweep, Console(soft_wrap=True))
    if plot_path is not None and sweep.results:
        plot(sweep, plot_path)
        say(f"wrote {plot_path}")
    if sweep.interrupted:
        done = ", ".join(str(r.k) for r in sweep.results) or "none"
        note(f"interrupted: results for the finished K values only ({done})")
        raise KeyboardInterrupt  # after the partial results: the CLI exits 130

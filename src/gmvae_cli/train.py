"""The one training loop: restarts kept by their ELBO, a recipe's phases, a resumable
checkpoint at every epoch end.

What happens before the first epoch, which phases follow and what each step minimises is the
recipe's business (recipe.py); where the rows come from is the data's (sources.py). The loop
owns the rest: seeds, the optimiser, devices and torchrun, progress, time and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from gmvae_cli import devices, distributed
from gmvae_cli.batching import EVAL_BATCH
from gmvae_cli.errors import UserError
from gmvae_cli.model import ELBOTerms, GMVAENet, ModelConfig
from gmvae_cli.optimizer import adam
from gmvae_cli.progress import Reporter
from gmvae_cli.recipe import Phase, Recipe
from gmvae_cli.settings import TrainSettings

# The outlier threshold is the exact quantile of every training row's score up to this many
# rows, and that of a seeded uniform sample of this many scores beyond (8 MB of float64).
SCORE_SAMPLE = 1_000_000
DIVERGED = (
    "training diverged (the loss became NaN or infinite); the last good checkpoint is kept: "
    "try a lower --lr or check the data for extreme values"
)


def restart_seed(seed: int, restart: int) -> int:
    return seed * 1009 + restart  # distinct, reproducible seeds for the restarts


@dataclass
class Fit:
    """What training leaves: the best restart's network, history and final ELBO terms."""

    net: GMVAENet
    history: list[dict]
    terms: dict[str, float]
    cluster_sizes: list[int]
    recipe_summary: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@torch.no_grad()
def evaluate_terms(net: GMVAENet, data, seed: int = 0) -> dict[str, float]:
    """Mean ELBO terms over all rows (eval mode, seeded Monte Carlo), e.g. to pick a restart.

    `data` is training data (sources.py); under torchrun the sums cover every rank's rows.
    """
    was_training = net.training
    net.eval()
    device = devices.of(net)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        sums = torch.zeros(len(ELBOTerms.NAMES) + 1, dtype=torch.float64, device=device)
        for y, _ in data.in_order(EVAL_BATCH):
            terms = net.elbo_terms(y.to(device))
            sums[:-1] += terms.stacked().double() * len(y)
            sums[-1] += len(y)
    net.train(was_training)
    sums = distributed.all_reduce_sum(sums.cpu())
    return {name: float(total / sums[-1]) for name, total in zip(ELBOTerms.NAMES, sums[:-1])}


@torch.no_grad()
def cluster_sizes(net: GMVAENet, data) -> list[int]:
    """Rows per most likely cluster over all rows (all ranks under torchrun)."""
    net.eval()
    device = devices.of(net)
    counts = torch.zeros(net.cfg.k, dtype=torch.long, device=device)
    for y, _ in data.in_order(EVAL_BATCH):
        best = net.cluster_log_proba(y.to(device), 0).argmax(1)
        counts += torch.bincount(best, minlength=net.cfg.k)
    return distributed.all_reduce_sum(counts.cpu()).long().tolist()


@torch.no_grad()
def outlier_threshold(net: GMVAENet, data, quantile: float, seed: int = 0,
                      sample: int = SCORE_SAMPLE) -> float:
    """The `quantile` of the training rows' ELBO scores (GMVAENet.row_elbo at the posterior
    means): a row scoring below it is an outlier (`assign --score`, `describe`).

    Exact up to `sample` rows; beyond that, the quantile of a seeded uniform sample of
    `sample` scores (bottom-k of random keys), whose error at q = 0.01 is about 0.0001 in
    rank. Under torchrun every rank samples its share and the samples are pooled.
    """
    net.eval()
    device = devices.of(net)
    ctx = distributed.context()
    cap = max(1, sample // ctx.world)
    rng = np.random.default_rng([seed, ctx.rank])
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (scores, random keys)
    held = 0

    def smallest_keys(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        scores, keys = (np.concatenate(p) for p in zip(*parts))
        kept = np.argpartition(keys, count)[:count] if len(keys) > count else slice(None)
        return [(scores[kept], keys[kept])]

    for y, _ in data.in_order(EVAL_BATCH):
        parts.append((net.row_elbo(y.to(device)).double().cpu().numpy(), rng.random(len(y))))
        held += len(y)
        if held > 2 * cap:  # keep the `cap` rows with the smallest keys: a uniform sample
            parts, held = smallest_keys(cap), cap
    scores = smallest_keys(cap)[0][0]
    if ctx.active:  # every rank's sample in its own slot of one summed table
        slots = torch.zeros(ctx.world, cap + 1, dtype=torch.float64)
        slots[ctx.rank, 0] = len(scores)
        slots[ctx.rank, 1 : len(scores) + 1] = torch.from_numpy(scores)
        slots = distributed.all_reduce_sum(slots)
        scores = np.concatenate([row[1 : int(row[0]) + 1].numpy() for row in slots])
    return float(np.quantile(scores, quantile))


class Trainer:
    """Fits one GMVAENet on `data` with `recipe`, restart by restart.

    `save` is called with a resumable state at every epoch end (the caller writes it).
    """

    def __init__(
        self,
        data,
        config: ModelConfig,
        recipe: Recipe,
        settings: TrainSettings,
        device: torch.device,
        reporter: Reporter | None = None,
        save: Callable[[dict], None] | None = None,
    ):
        self.data = data
        self.config = config
        self.recipe = recipe
        self.settings = settings
        self.device = distributed.setup(device)  # under torchrun: this rank's device
        self.reporter = reporter or Reporter(quiet=True)
        self.save = save or (lambda state: None)
        self.timings: dict[str, float] = {}
        self._stage: tuple[str, int] | None = None  # a recipe's stage and the percent shown

    def fit(self, resume: dict | None = None) -> Fit:
        """All restarts; returns the best by mean ELBO."""
        best = resume.get("best") if resume else None
        first = resume["restart"] if resume else 0
        for r in range(first, self.settings.restarts):
            net, history = self._fit_one(r, resume if (resume and r == first) else None, best)
            terms = evaluate_terms(net, self.data, seed=self.settings.seed)
            if best is None or terms["elbo"] > best["terms"]["elbo"]:
                best = {
                    "restart": r,
                    "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "history": history,
                    "terms": terms,
                    "recipe_summary": self.recipe.summary(),
                }
        net = GMVAENet(self.config).to(self.device)
        net.load_state_dict(best["state_dict"])
        net.eval()
        return Fit(net, best["history"], best["terms"], cluster_sizes(net, self.data),
                   best.get("recipe_summary", {}), self.timings)

    def _fit_one(self, r: int, state: dict | None, best: dict | None):
        seed = restart_seed(self.settings.seed, r)
        devices.seed_everything(seed)
        net = GMVAENet(self.config).to(self.device)  # same init on every rank (same seed)
        shuffle = torch.Generator().manual_seed(seed)
        history: list[dict] = []
        start = 0
        if state is not None:
            net.load_state_dict(state["state_dict"])
            self.recipe.load_state_dict(state["recipe"])
            shuffle.set_state(state["shuffle_rng"])
            devices.set_rng_state(state["rng"], self.device)
            history, start = state["history"], state["epoch"]

        def checkpoint(optimizer=None) -> None:
            started = time.perf_counter()
            self.save({
                "restart": r,
                "epoch": len(history),
                "state_dict": net.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "shuffle_rng": shuffle.get_state(),
                "rng": devices.rng_state(self.device),
                "history": history,
                "recipe": self.recipe.state_dict(),
                "best": best,
            })
            self.timings["write"] = self.timings.get("write", 0.0) + time.perf_counter() - started

        # A fresh run's warm start, or a resumed run's rest of it (a no-op once it is done).
        self.recipe.prepare(net, self.data, seed=seed, batch_size=self.settings.batch_size,
                            device=self.device, report=self._report_stage,
                            save=checkpoint, timings=self.timings)
        # Created after prepare: a warm start may have moved parameters.
        optimizer = adam(net.parameters(), self.device)
        if state is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        trained = distributed.for_training(net, self.device)  # wrapped in DDP under torchrun
        schedule = [phase for phase in self.recipe.phases() for _ in range(phase.epochs)]
        restarts = self.settings.restarts
        self.reporter.stage(f"training{f' (restart {r + 1}/{restarts})' if restarts > 1 else ''}",
                            len(schedule))
        self.reporter.update(start)
        for epoch in range(start, len(schedule)):
            phase = schedule[epoch]
            if epoch == start or phase != schedule[epoch - 1]:
                self.recipe.start_phase(net, self.data, phase, device=self.device,
                                        timings=self.timings)
            for group in optimizer.param_groups:
                group["lr"] = phase.lr
            distributed.epoch_seed(seed, epoch)
            started = time.perf_counter()
            record = self._epoch(trained, optimizer, shuffle, phase)
            seconds = time.perf_counter() - started
            self.timings[phase.name] = self.timings.get(phase.name, 0.0) + seconds
            record.update(epoch=epoch + 1, phase=phase.name, restart=r, seconds=seconds)
            history.append(record)
            self.reporter.update(1, f"ELBO {record['elbo']:.2f}")
            checkpoint(optimizer)
        return net, history

    def _epoch(self, net, optimizer, shuffle: torch.Generator, phase: Phase) -> dict:
        """One pass over this rank's rows. Sums stay on the device until the epoch ends: no
        host round-trip per step, so a GPU is never left waiting for the CPU."""
        net.train()
        k = self.config.k
        sums = torch.zeros(len(ELBOTerms.NAMES) + 1, dtype=torch.float64, device=self.device)
        usage = torch.zeros(k, dtype=torch.long, device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        with distributed.join(net):  # ranks whose share ends early wait for the others
            for y, rows in self.data.batches(self.settings.batch_size, shuffle):
                y = y.to(self.device, non_blocking=True)
                loss, terms = self.recipe.loss(net, y, rows, phase)
                finite &= torch.isfinite(loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums[:-1] += terms.stacked().double() * len(y)
                sums[-1] += len(y)
                usage += torch.bincount(terms.responsibilities.argmax(-1), minlength=k)
        # A NaN loss, or a NaN gradient in the last step behind a finite loss, leaves NaN
        # weights: stop before the epoch-end checkpoint would overwrite the last good one.
        finite &= torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all()
        if not bool(finite):
            raise UserError(DIVERGED)
        totals = distributed.all_reduce_sum(torch.cat([sums.cpu(), usage.cpu().double()]))
        count = float(totals[len(ELBOTerms.NAMES)])
        record = {name: float(total) / count
                  for name, total in zip(ELBOTerms.NAMES, totals[: len(ELBOTerms.NAMES)])}
        record["cluster_usage"] = totals[len(ELBOTerms.NAMES) + 1 :].long().tolist()
        return record

    def _report_stage(self, stage: str, fraction: float) -> None:
        """A recipe reports (stage, fraction done) while it prepares: a 100-step bar per stage."""
        if self._stage is None or self._stage[0] != stage:
            self._stage = (stage, 0)
            self.reporter.stage(stage, 100)
        name, shown = self._stage
        step = round(fraction * 100) - shown
        if step > 0:
            self._stage = (name, shown + step)
            self.reporter.update(step)

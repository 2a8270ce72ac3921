"""The training loop: recipes, epochs, restarts kept by ELBO, checkpoints at every epoch end.

Two recipes:
- "paper": the spec's objective alone, from random initialisation (MODEL.md as written).
- "default": the spec's objective after an unsupervised warm start (recipe.py): pretrain the
  autoencoder, cluster its codes, initialise the mixture from that clustering, train a few
  guided epochs, then train the plain ELBO.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gmvae_cli import distributed
from gmvae_cli.errors import UserError
from gmvae_cli.model import ELBOTerms, GMVAENet, ModelConfig
from gmvae_cli.progress import Reporter

RECIPES = ("default", "paper")
PAPER_EPOCHS = 50
EVAL_BATCH = 4096
TERM_NAMES = ("elbo", "reconstruction", "conditional_prior", "w_prior", "z_prior", "z_prior_raw")
DIVERGED = (
    "training diverged (the loss became NaN or infinite); the last good checkpoint is kept: "
    "try a lower --lr or check the data for extreme values"
)


@dataclass
class TrainSettings:
    recipe: str = "default"
    epochs: int | None = None  # None: the recipe's own number
    batch_size: int = 128
    lr: float | None = None  # None: the recipe's own rate
    seed: int = 0
    restarts: int = 1  # independent fits; the one with the best ELBO is kept

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r} is not known; use auto, cpu, cuda or mps")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restart_seed(seed: int, restart: int) -> int:
    return seed * 1009 + restart  # distinct, reproducible seeds for the restarts


def batches(n: int, batch_size: int, generator: torch.Generator | None):
    """Index batches over n rows, shuffled when a generator is given.

    A last batch of one row is dropped while shuffling: batch norm cannot train on it.
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if generator is not None and len(idx) < 2 and n > 1:
            continue
        yield idx


def eval_batches(data) -> Iterator[torch.Tensor]:
    """The rows of an in-memory tensor or of a stream.ChunkStream, in order, in big batches."""
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), EVAL_BATCH):
            yield data[start : start + EVAL_BATCH]
    else:
        yield from data.eval_batches(EVAL_BATCH)


@torch.no_grad()
def evaluate_terms(net: GMVAENet, data, seed: int = 0) -> dict[str, float]:
    """Mean ELBO terms over all rows (eval mode, seeded Monte Carlo), e.g. to pick a restart.

    `data` is a tensor or a stream.ChunkStream; under torchrun the sums cover every rank's rows.
    """
    was_training = net.training
    net.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    rows = 0
    for y in eval_batches(data):
        terms = net.elbo_terms(y.to(_device_of(net)))
        for name, value in terms.as_floats().items():
            sums[name] = sums.get(name, 0.0) + value * len(y)
        rows += len(y)
    torch.set_rng_state(state)
    net.train(was_training)
    sums, rows = distributed.sum_across(sums, TERM_NAMES, rows)
    return {name: total / rows for name, total in sums.items()}


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


class Trainer:
    """Fits one GMVAENet, restart by restart, on one of two data sources: an in-memory float
    tensor, or a stream.ChunkStream that reads shuffled chunks from disk (recipe paper only).
    Under torchrun (distributed.py) each process passes its own share of the rows.

    `save` is called with a resumable state dict at every epoch end (the caller writes it).
    """

    def __init__(
        self,
        data: torch.Tensor,
        config: ModelConfig,
        settings: TrainSettings,
        device: torch.device,
        reporter: Reporter | None = None,
        save: Callable[[dict], None] | None = None,
    ):
        if settings.recipe not in RECIPES:
            raise UserError(f"--recipe {settings.recipe!r} is not known; use {'|'.join(RECIPES)}")
        self.data = data
        self.config = config
        self.settings = settings
        self.device = device
        self.reporter = reporter or Reporter(quiet=True)
        self.save = save or (lambda state: None)
        self.schedule = None
        if settings.recipe == "default" and not isinstance(data, torch.Tensor):
            raise UserError("the default recipe's warm start needs the rows in memory; "
                            "with --stream use --recipe paper")
        if settings.recipe == "default":
            from gmvae_cli import recipe  # the warm start is only needed by this recipe

            self.schedule = recipe.RecipeSchedule()

    # -- the shape of a run --------------------------------------------------------------

    def epochs(self) -> tuple[int, int]:
        """(guided epochs, plain-ELBO epochs) for one restart."""
        if self.schedule is None:
            return 0, self.settings.epochs or PAPER_EPOCHS
        guided, free = self.schedule.guided_epochs, self.schedule.free_epochs
        if self.settings.epochs is not None:  # the user's total: guided first, then plain
            guided = min(guided, self.settings.epochs)
            free = self.settings.epochs - guided
        return guided, free

    def learning_rate(self, phase: str = "guided") -> float:
        if self.settings.lr is not None:
            return self.settings.lr
        if self.schedule is None:
            return 1e-3
        # After the guided epochs a lower rate lets the ELBO improve without drifting off
        # the clusters the warm start found.
        return self.schedule.free_lr if phase == "elbo" else self.schedule.lr

    # -- fitting -------------------------------------------------------------------------

    def fit(self, resume: dict | None = None) -> tuple[GMVAENet, list[dict], dict]:
        """All restarts; returns the best network by mean ELBO, its history and its final terms."""
        best = resume.get("best") if resume else None
        first = resume["restart"] if resume else 0
        for r in range(first, self.settings.restarts):
            state = resume if (resume and r == first) else None
            net, history = self._fit_one(r, state, best)
            terms = evaluate_terms(net, self.data, seed=self.settings.seed)
            if best is None or terms["elbo"] > best["terms"]["elbo"]:
                best = {
                    "restart": r,
                    "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "history": history,
                    "terms": terms,
                }
        net = GMVAENet(self.config).to(self.device)
        net.load_state_dict(best["state_dict"])
        net.eval()
        return net, best["history"], best["terms"]

    def _fit_one(self, r: int, state: dict | None, best: dict | None):
        seed = restart_seed(self.settings.seed, r)
        seed_everything(seed)
        net = GMVAENet(self.config).to(self.device)  # same init on every rank (same seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate())
        shuffle = torch.Generator().manual_seed(seed)
        guided, free = self.epochs()
        history: list[dict] = []
        responsibilities = None
        start = 0
        if state is not None:
            net.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["torch_rng"])
            history = state["history"]
            responsibilities = state.get("responsibilities")
            start = state["epoch"]
        elif self.schedule is not None:
            from gmvae_cli import recipe

            responsibilities = recipe.warm_start(
                net,
                self.data,
                seed=seed,
                batch_size=self.settings.batch_size,
                device=self.device,
                schedule=self.schedule,
                report=self._report_stage,
            )
            # The warm start may have moved parameters the optimizer holds state for.
            optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate())

        trained = distributed.for_training(net, self.device)  # wrapped in DDP under torchrun
        label = f"training{f' (restart {r + 1}/{self.settings.restarts})' if self.settings.restarts > 1 else ''}"
        self.reporter.stage(label, guided + free)
        self.reporter.update(start)
        for epoch in range(start, guided + free):
            phase = "guided" if epoch < guided else "elbo"
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate(phase)
            distributed.epoch_seed(seed, epoch)
            started = time.perf_counter()
            record = self._epoch(trained, optimizer, shuffle, responsibilities if phase == "guided" else None)
            record.update(epoch=epoch + 1, phase=phase, restart=r,
                          seconds=time.perf_counter() - started)
            history.append(record)
            self.reporter.update(1, f"ELBO {record['elbo']:.2f}")
            self.save(
                {
                    "restart": r,
                    "epoch": epoch + 1,
                    "state_dict": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "shuffle_rng": shuffle.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "responsibilities": responsibilities if epoch + 1 < guided else None,
                    "best": best,
                }
            )
        return net, history

    def _report_stage(self, stage: str, fraction: float) -> None:
        # recipe.warm_start reports (stage, fraction done); shown as a 100-step bar per stage.
        if getattr(self, "_stage_name", None) != stage:
            self._stage_name, self._stage_done = stage, 0
            self.reporter.stage(stage, 100)
        step = round(fraction * 100) - self._stage_done
        if step > 0:
            self._stage_done += step
            self.reporter.update(step)

    def _epoch(self, net, optimizer, shuffle, responsibilities) -> dict:
        net.train()
        totals: dict[str, float] = {}
        usage = torch.zeros(self.config.k, dtype=torch.long)
        seen = 0
        for y, idx in self._batches(net, shuffle):
            y = y.to(self.device, non_blocking=True)
            if responsibilities is not None:
                from gmvae_cli import recipe

                r = responsibilities[idx].to(self.device)
                loss, terms = recipe.guided_loss(net, y, r, self.schedule)
            else:
                terms = net.elbo_terms(y)
                loss = -terms.elbo
            if not torch.isfinite(loss):
                raise UserError(DIVERGED)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _accumulate(totals, terms, len(y))
            usage += torch.bincount(terms.responsibilities.argmax(-1).cpu(), minlength=self.config.k)
            seen += len(y)
        # A NaN gradient in the last step leaves NaN weights behind a finite loss: stop
        # here, before the epoch-end checkpoint would overwrite the last good one.
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            raise UserError(DIVERGED)
        totals, seen, usage = distributed.sum_across(totals, TERM_NAMES, seen, usage)
        record = {name: total / seen for name, total in totals.items()}
        record["cluster_usage"] = usage.tolist()
        return record

    def _batches(self, net, shuffle: torch.Generator):
        """(rows, their indices into the tensor, or None for a stream) of one epoch."""
        with distributed.join(net):  # ranks whose shard ends early wait for the others
            if isinstance(self.data, torch.Tensor):
                for idx in batches(len(self.data), self.settings.batch_size, shuffle):
                    yield self.data[idx], idx
            else:
                for y in self.data.batches(self.settings.batch_size, shuffle):
                    yield y, None

    @torch.no_grad()
    def cluster_sizes(self, net: GMVAENet) -> list[int]:
        """Rows per most likely cluster over all rows (all ranks under torchrun)."""
        net.eval()
        counts = torch.zeros(self.config.k, dtype=torch.long)
        for y in eval_batches(self.data):
            best = net.cluster_log_proba(y.to(_device_of(net)), 0).argmax(1).cpu()
            counts += torch.bincount(best, minlength=self.config.k)
        return distributed.all_reduce_sum(counts).long().tolist()


def _accumulate(totals: dict[str, float], terms: ELBOTerms, n: int) -> None:
    for name, value in terms.as_floats().items():
        if not math.isfinite(value):
            continue
        totals[name] = totals.get(name, 0.0) + value * n

"""Recipes: how a GMVAE is trained, as a few hooks the one training loop calls (train.py).

A recipe says what happens before the first epoch (`prepare`: a warm start, or nothing),
which phases follow (`phases`: name, epochs, learning rate) and what each step minimises
(`loss`). The loop knows no recipe by name. Two recipes:

- `paper`: the spec's ELBO (MODEL.md) from random initialisation, in one phase.
- `default`: the same ELBO after an unsupervised warm start (warm_start.py): a guided phase
  in which pseudo-clusters weight the conditional prior and confident ones pull the
  assignment rule towards them, then the model's own ELBO at a lower rate, the confident
  pseudo-clusters still pulling.

`--epochs N` and `--lr R` scale a recipe's whole schedule: each phase keeps its share of the
epochs and its rate relative to the others (`scaled_epochs`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gmvae_cli import distributed, ranks, warm_start
from gmvae_cli.batching import EVAL_BATCH
from gmvae_cli.model import ELBOTerms, GMVAENet
from gmvae_cli.settings import TrainSettings

Report = Callable[[str, float], None]


@dataclass(frozen=True)
class Phase:
    name: str  # recorded in each epoch's history
    epochs: int
    lr: float


class Recipe:
    """The hooks; the defaults train the spec's ELBO and keep no state."""

    name = ""

    def prepare(self, net: GMVAENet, data, *, seed: int, batch_size: int,
                device: torch.device, report: Report, save: Callable[[], None],
                timings: dict[str, float]) -> None:
        """Called before the first epoch of each restart, with a fresh network, and again
        when a run resumes (after load_state_dict): it continues where the checkpoint left
        off. `save()` writes a resumable checkpoint of the work so far (the network and
        this recipe's state_dict). Seconds spent per stage go into `timings`."""

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def start_phase(self, net: GMVAENet, data, phase: Phase, *, device: torch.device,
                    timings: dict[str, float]) -> None:
        """Called before a phase's first epoch, and before the first epoch a resumed run
        trains (its state_dict restored)."""

    def loss(self, net: GMVAENet, y: torch.Tensor, rows: torch.Tensor | None,
             phase: Phase) -> tuple[torch.Tensor, ELBOTerms]:
        """What one step minimises; `rows` are the batch's row numbers (data.py)."""
        terms = net.elbo_terms(y)
        return -terms.elbo, terms

    def state_dict(self) -> dict:
        """What a resumed run needs of prepare's work (saved at every epoch end)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def summary(self) -> dict:
        """Plain results worth keeping in the finished checkpoint."""
        return {}


def scaled_epochs(shares: list[int], total: int | None) -> list[int]:
    """Split `total` epochs over phases in proportion to their default `shares`; every phase
    keeps at least one epoch while there are enough to go round."""
    if total is None:
        return list(shares)
    counts = [max(1, round(total * s / sum(shares))) for s in shares]
    while sum(counts) > total and max(counts) > 1:
        counts[counts.index(max(counts))] -= 1
    counts[-1] += total - sum(counts)
    return counts


class PaperRecipe(Recipe):
    name = "paper"
    EPOCHS, LR = 50, 1e-3

    def __init__(self, epochs: int | None = None, lr: float | None = None):
        self.epochs = epochs or self.EPOCHS
        self.lr = lr or self.LR

    def phases(self) -> list[Phase]:
        return [Phase("elbo", self.epochs, self.lr)]


class DefaultRecipe(Recipe):
    name = "default"
    # The guided phase has taught the pseudo-clusters after 10 epochs: 20 scored the same
    # (MNIST K = 10 seeds 0-4 0.948 either way, the tables' mean ARI 0.826 against 0.829 for
    # 10) in a third more time (docs/benchmarks.md).
    GUIDED_EPOCHS, FREE_EPOCHS = 10, 10
    LR = 1e-3
    # The ELBO phase runs 10x slower: at the guided rate plain ELBO drifts off the guided
    # clusters (MNIST seed 0: 0.938 -> 0.929); at a tenth accuracy holds while the ELBO
    # still improves. It keeps the pseudo-label pull: without it the model's own ELBO still
    # drifted off on tables (ARI, categorical 0.80 -> 0.77, anisotropic 0.98 -> 0.97).
    FREE_LR_SHARE = 0.1
    # Cross-entropy of p(z|y) against confident pseudo-labels. At 1.0 the GMVAE reproduced
    # the pseudo-clusters loosely (MNIST K=30 seed 1: pseudo 0.953, GMVAE 0.943); at 5.0 it
    # kept them (0.951; K=10 seed 0: 0.945 -> 0.952) at the same ELBO.
    PSEUDO_LABEL_WEIGHT = 5.0
    # Off the codes path the pseudo-clusters come from the columns or their neighbour graph,
    # and a small table's GMVAE codes are no better a space than its columns (docs/model.md):
    # there the pull keeps the warm start's clusters tighter. At 5 the GMVAE ended below them
    # on the 1,797-row digits (seed 2: 0.924 against 0.935, after the guided phase already);
    # at 20 it kept them (docs/benchmarks.md).
    COLUMNS_PSEUDO_LABEL_WEIGHT = 20.0
    CONFIDENCE = 0.9  # pseudo-labels below this responsibility get no cross-entropy
    # Past this many rows the default phases shorten so that each does about the steps it
    # does here (at least one epoch): 2,000,000 rows train 1 + 1 epochs, not 10 + 10.
    FULL_EPOCHS_ROWS = 50_000
    # Below this many steps a phase barely trains the model: on select-k's 120 training rows
    # of iris (one step per epoch) the held-out ELBO per row was -57 after 10 guided epochs,
    # -16 after 20, and -7.7 with this rule. A small table's phases run enough epochs for
    # this many steps each (tables of 1,280 rows or more: none added).
    MIN_PHASE_STEPS = 100

    def __init__(self, epochs: int | None = None, lr: float | None = None,
                 warm: warm_start.WarmStartSettings = warm_start.DEFAULT_SETTINGS,
                 shared: dict | None = None, indicators: list[float] | None = None,
                 filled: list[float] | None = None):
        gmvae_epochs = self.GUIDED_EPOCHS + self.FREE_EPOCHS
        self.epochs = epochs
        self.guided, self.free = scaled_epochs([self.GUIDED_EPOCHS, self.FREE_EPOCHS], epochs)
        self.lr = lr or self.LR
        # Pretraining scales with the GMVAE epochs (--epochs N: N epochs, on any path) and
        # runs at the base rate.
        self.warm = dataclasses.replace(warm, pretrain_lr=self.lr)
        if epochs is not None:
            self.warm = dataclasses.replace(
                self.warm, codes_pretrain_steps=None,
                pretrain_epochs=max(1, round(warm.pretrain_epochs * epochs / gmvae_epochs)))
        # start -> pretraining -> ready (pseudo-clusters found)
        self.stage = "start"
        self.rows = 0  # rows over all ranks, known once prepare has seen the data
        self.batch_size = 1
        self.pretraining: dict | None = None  # resumable state while the autoencoders train
        self.placer: dict | None = None  # the sample's pseudo-clusters, and how to place rows
        self.targets: torch.Tensor | None = None  # (row numbers, K), this rank's rows
        self.pseudo_labels: torch.Tensor | None = None
        self.found: dict = {}  # how the pseudo-clusters were chosen (warm_start.pseudo_clusters)
        self.seed = 0
        # The pseudo-clusters found again in the GMVAE's own codes for the ELBO phase, placed
        # as `placer` places the warm start's (start_phase); None: not (yet) refined.
        self.refined: dict | None = None
        # Fits of several Ks on the same rows (select-k) share what does not depend on K,
        # per seed: the pretrained autoencoder and the spaces the pseudo-clusters are found in.
        self.shared = shared
        self.indicators = indicators  # the one-hot columns' values (warm_start.spaces)
        self.filled = filled  # the value of a mean-filled cell per column (warm_start.spaces)

    def prepare(self, net, data, *, seed, batch_size, device, report, save, timings) -> None:
        """The warm start on a sample of the rows; under torchrun rank 0 builds it and every
        rank receives it. Resumable: a checkpoint after every pretraining epoch and once the
        pseudo-clusters are found."""
        self.rows, self.batch_size, self.seed = data.rows, batch_size, seed
        if self.stage in ("start", "pretraining"):
            if ranks.is_main():
                self._build(net, data, seed, batch_size, device, report, save, timings)
            state, self.placer, self.found = distributed.from_main(
                (net.state_dict(), self.placer, self.found))
            net.load_state_dict(state)
            self.stage, self.pretraining = "ready", None
            save()
        if self.stage == "ready" and self.targets is None:
            timed = time.perf_counter()
            self.targets = self._place(data, net.cfg.k, device, self.placer)
            timings["place"] = timings.get("place", 0.0) + time.perf_counter() - timed
            self.pseudo_labels = self.targets.argmax(1).to(torch.int32)
            if self.refined is not None:  # resumed in the ELBO phase
                self.targets = self._place(data, net.cfg.k, device, self.refined)

    def start_phase(self, net, data, phase, *, device, timings) -> None:
        """Before the ELBO phase on the graph of autoencoder codes: the pseudo-clusters are
        found again in the GMVAE's own codes (warm_start.refined) and the ELBO phase is
        pulled towards those: without this step the GMVAE ended where its warm start's
        clusters were (docs/benchmarks.md has what it buys).
        Off the codes path the warm start's clusters stay: there the same step lost badly
        (digits, categorical, biopsy; docs/model.md)."""
        if phase.name != "elbo" or self.refined is not None or not self.found.get("codes") \
                or self.found.get("chosen") != "graph":
            return
        timed = time.perf_counter()
        refined = None
        if ranks.is_main():
            sample, numbers = self._sample(data)
            view = warm_start.View.of([net], sample, device)  # the GMVAE's standardised codes
            codes = view(sample, device)
            current = self.placer["resp"].argmax(1).numpy()
            resp = warm_start.refined(codes.numpy(), current, net.cfg.k, self.seed, self.warm)
            covers = self.placer["covers"]
            refined = {"numbers": numbers, "resp": torch.from_numpy(resp).float(),
                       "covers": covers, "view": None if covers else view.to_state(),
                       "sample_view": None if covers else codes}
        self.refined = distributed.from_main(refined)
        self.targets = self._place(data, net.cfg.k, device, self.refined)
        timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - timed

    def _sample(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The warm start's sample of the rows (the same draw every time: the same seed)."""
        return data.sample(self.warm.sample_rows, self.seed)

    def _build(self, net, data, seed, batch_size, device, report, save, timings) -> None:
        timed = time.perf_counter()
        sample, numbers = self._sample(data)
        timings["sample"] = timings.get("sample", 0.0) + time.perf_counter() - timed
        shared = self.shared.get(seed) if self.shared is not None else None
        covers = len(sample) == data.rows  # every row in the sample: no placing needed
        if shared is None:
            shared = self._pretrained(net, sample, covers, seed, batch_size, device, report,
                                      save, timings)
        else:  # the autoencoders' work does not depend on K: another K of select-k did it
            net.encoder.load_state_dict(shared["encoder"])
            net.decoder.load_state_dict(shared["decoder"])
        report("pseudo-clusters", 0.0)
        resp, view, self.found = warm_start.pseudo_clusters(
            net, sample, shared["spaces"], device, timings, self.warm)
        report("pseudo-clusters", 1.0)
        self.placer = {
            "numbers": numbers, "resp": resp, "covers": covers,
            "view": None if covers else view.to_state(),
            "sample_view": None if covers else view(sample, device),
        }

    def _pretrained(self, net, sample, covers, seed, batch_size, device, report, save,
                    timings) -> dict:
        """Pretrain the autoencoders and build the spaces the pseudo-clusters are found in.
        Under select-k, restart seeds that see every row share what depends on the rows and a
        seed only (warm_start.Spaces.memo), kept in `shared` beside the per-seed entries."""
        helpers = []
        for i in range(warm_start.autoencoders(sample, self.warm) - 1):
            # Same shape, each its own initialisation, drawn aside: the global random state
            # (which a resumed run restores) stays where an uninterrupted run has it.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 7919 + i + 1)
                helpers.append(GMVAENet(net.cfg).to(device))

        def checkpoint(pretraining: dict) -> None:
            self.stage, self.pretraining = "pretraining", pretraining
            save()

        timed = time.perf_counter()
        warm_start.pretrain([net, *helpers], sample, self.warm, batch_size, device, seed, report,
                            checkpoint, self.pretraining)
        timings["pretrain"] = timings.get("pretrain", 0.0) + time.perf_counter() - timed
        memo = self.shared.setdefault("memo", {}) if self.shared is not None and covers else None
        shared = {"encoder": net.encoder.state_dict(), "decoder": net.decoder.state_dict(),
                  "spaces": warm_start.spaces([net, *helpers], sample, seed, device, timings,
                                              self.warm, memo=memo, indicators=self.indicators,
                                              filled=self.filled)}
        if self.shared is not None:
            self.shared[seed] = {name: _copied(part) for name, part in shared.items()}
        return shared

    def _place(self, data, k: int, device, placer: dict) -> torch.Tensor:
        table = torch.zeros(data.row_numbers, k)
        if placer["covers"]:
            table[placer["numbers"]] = placer["resp"]
            return table
        view = warm_start.View.from_state(placer["view"])
        for rows, numbers in data.in_order(EVAL_BATCH):
            table[numbers] = warm_start.place(view, placer["sample_view"], placer["resp"], rows,
                                              device, self.warm.place_neighbours)
        return table

    def phases(self) -> list[Phase]:
        guided, free = self.guided, self.free
        if self.epochs is None and self.rows > self.FULL_EPOCHS_ROWS:
            share = self.FULL_EPOCHS_ROWS / self.rows
            guided, free = (max(1, round(n * share)) for n in (guided, free))
        elif self.epochs is None and self.rows:
            steps = -(-self.rows // self.batch_size)  # per epoch
            least = -(-self.MIN_PHASE_STEPS // steps)
            guided, free = (max(n, least) for n in (guided, free))
        phases = [Phase("guided", guided, self.lr),
                  Phase("elbo", free, self.lr * self.FREE_LR_SHARE)]
        return [p for p in phases if p.epochs > 0]

    def loss(self, net, y, rows, phase):
        """Guided: the pseudo-clusters weight the conditional prior; then the model's own
        ELBO. Both add the cross-entropy of the assignment rule to confident pseudo-labels."""
        if self.targets is None:  # resumed from an older version's checkpoint that dropped
            return super().loss(net, y, rows, phase)  # them after the guided phase
        targets = self.targets[rows].to(y.device)  # (B, K)
        guided = phase.name == "guided"
        terms = net.elbo_terms(y, cluster_weights=targets if guided else None,
                               with_assignment=True)
        confidence, labels = targets.max(-1)
        # Rows below the cutoff count as zero, not as a smaller batch: no host sync per step.
        sure = (confidence >= self.CONFIDENCE).to(y.dtype)
        nll = F.nll_loss(terms.assignment_log_proba, labels, reduction="none")
        cross_entropy = (nll * sure).sum() / sure.sum().clamp_min(1.0)
        return -terms.elbo + self.pseudo_label_weight * cross_entropy, terms

    @property
    def pseudo_label_weight(self) -> float:
        """Off the codes path, COLUMNS_PSEUDO_LABEL_WEIGHT (runs resumed from checkpoints that
        did not record the path keep the codes path's)."""
        on_codes = self.found.get("codes", True)
        return self.PSEUDO_LABEL_WEIGHT if on_codes else self.COLUMNS_PSEUDO_LABEL_WEIGHT

    def state_dict(self) -> dict:
        return {"stage": self.stage, "pretraining": self.pretraining, "placer": self.placer,
                "pseudo_labels": self.pseudo_labels, "found": self.found,
                "refined": self.refined}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.pretraining = state["stage"], state["pretraining"]
        self.placer, self.pseudo_labels = state["placer"], state["pseudo_labels"]
        self.found = state.get("found", {})
        self.refined = state.get("refined")
        self.targets = None  # placed again from the placer (prepare)

    def summary(self) -> dict:
        return {"pseudo_labels": self.pseudo_labels, "warm_start": self.found}


RECIPES = {"default": DefaultRecipe, "paper": PaperRecipe}


def make(settings: TrainSettings, shared: dict | None = None,
         indicators: list[float] | None = None, filled: list[float] | None = None) -> Recipe:
    """The recipe `settings` name; `shared` (a dict kept by the caller) lets fits of
    several Ks on the same rows share the default recipe's K-independent work; `indicators`
    (Preprocessor.indicators) tells the warm start which columns are one-hot, and `filled`
    (Preprocessor.filled) which cells were mean-filled."""
    if settings.recipe == "paper":
        return PaperRecipe(settings.epochs, settings.lr)
    warm = dataclasses.replace(warm_start.DEFAULT_SETTINGS, sample_rows=settings.warm_sample)
    return DefaultRecipe(settings.epochs, settings.lr, warm, shared, indicators, filled)


def _copied(part):
    """A state dict detached from the network that keeps training (spaces are not touched)."""
    if isinstance(part, dict):
        return {name: tensor.clone() for name, tensor in part.items()}
    return part

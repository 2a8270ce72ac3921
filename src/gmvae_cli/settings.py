"""Every option's allowed values, declared once and checked before any data is read.

Nothing here imports torch: `gmvae train big.parquet --recipe papr` fails in a fraction of
a second, and the library estimator runs the same checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gmvae_cli.errors import UserError

RECIPES = ("default", "paper")
LIKELIHOODS = ("auto", "gaussian", "bernoulli")
MISSING_RULES = ("error", "drop", "mean")
DEVICES = ("auto", "cpu", "cuda", "mps")
CATEGORICAL_RULES = ("auto", "ignore")  # text columns: one-hot encode (few values) or skip

# option name -> (CLI spelling, allowed values)
CHOICES = {
    "recipe": ("--recipe", RECIPES),
    "likelihood": ("--likelihood", LIKELIHOODS),
    "missing": ("--missing", MISSING_RULES),
    "categorical": ("--categorical", CATEGORICAL_RULES),
}
# option name -> (CLI spelling, smallest allowed value); None values mean "the default"
AT_LEAST = {
    "k": ("--k", 1),
    "x_dim": ("--x-dim", 1),
    "w_dim": ("--w-dim", 1),
    "mc_samples": ("--mc-samples", 1),
    "batch_size": ("--batch-size", 2),  # batch norm cannot train on one row
    "epochs": ("--epochs", 1),
    "restarts": ("--restarts", 1),
    "chunk_rows": ("--chunk-rows", 2),
    "warm_sample": ("--warm-sample", 2),
}
ZERO_OR_MORE = {"lambda_z": "--lambda"}
POSITIVE = {"lr": "--lr"}
BETWEEN_0_AND_1 = {"outlier_quantile": "--outlier-quantile"}  # open interval: 0 < value < 1


@dataclass
class TrainSettings:
    """How to train (the model's shape is model.ModelConfig); stored in the checkpoint."""

    recipe: str = "default"
    epochs: int | None = None  # None: the recipe's own schedule (see recipe.py)
    batch_size: int = 128
    lr: float | None = None  # None: the recipe's own rates
    seed: int = 0
    restarts: int = 1  # independent fits; the one with the best ELBO is kept
    warm_sample: int = 50_000  # the default recipe's warm start sees at most this many rows

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        known = {name: d[name] for name in cls.__dataclass_fields__ if name in d}
        return cls(**known)


def check(**values) -> None:
    """Raise UserError naming the option for the first value out of its allowed set."""
    for name, value in values.items():
        if value is None:
            continue
        if name in CHOICES:
            option, allowed = CHOICES[name]
            if value not in allowed:
                raise UserError(f"{option} {value!r} is not known; use {'|'.join(allowed)}")
        elif name == "device":
            check_device(value)
        elif name == "hidden":
            if value != "auto" and (not value or min(value) < 1):
                raise UserError(f"--hidden sizes must be positive, got {tuple(value)}")
        elif name in AT_LEAST:
            option, least = AT_LEAST[name]
            if value < least:
                raise UserError(f"{option} must be at least {least}, got {value}")
        elif name in ZERO_OR_MORE and value < 0:
            raise UserError(f"{ZERO_OR_MORE[name]} must be 0 or more, got {value}")
        elif name in POSITIVE and not value > 0:
            raise UserError(f"{POSITIVE[name]} must be positive, got {value}")
        elif name in BETWEEN_0_AND_1 and not 0 < value < 1:
            raise UserError(f"{BETWEEN_0_AND_1[name]} must lie between 0 and 1 (e.g. 0.01 "
                            f"for 1% of the rows), got {value}")


def check_device(name: str) -> None:
    """The name only; whether that device exists is known once torch is imported."""
    if name not in DEVICES:
        raise UserError(f"--device {name!r} is not known; use auto, cpu, cuda or mps")

"""The library API: a `GMVAE` estimator in the spirit of scikit-learn's GaussianMixture.

    model = GMVAE(k=10).fit(frame)          # train (a DataFrame, an array or a file path)
    model.predict(frame)                    # hard clusters
    model.predict_proba(frame)              # p(z | y)
    model.score(frame)                      # mean ELBO and its four terms
    model.score_samples(frame)              # each row's ELBO (deterministic)
    model.outlier_flags(frame)              # rows scoring below the training threshold
    model.save("model.pt"); GMVAE.load("model.pt")

The CLI is a thin layer over this class.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from gmvae_cli import checkpoint, devices, distributed, inference, recipe
from gmvae_cli.data import DEFAULT_CHUNK_ROWS
from gmvae_cli.errors import UserError
from gmvae_cli.model import GMVAENet, ModelConfig
from gmvae_cli.preprocess import Preprocessor, choose_columns, named_columns
from gmvae_cli.progress import Reporter
from gmvae_cli.settings import TrainSettings, check
from gmvae_cli.sources import InMemoryRows, as_frame, open_table
from gmvae_cli.train import Trainer, evaluate_terms, outlier_threshold

# A cluster holding less than this share of the rows counts as empty (collapse warnings).
EFFECTIVE_SHARE = 0.01


class GMVAE:
    def __init__(
        self,
        k: int = 10,
        *,
        x_dim: int = 10,
        w_dim: int = 10,
        hidden: Sequence[int] | str = "auto",
        mc_samples: int = 1,
        lambda_z: float = 0.5,
        likelihood: str = "auto",
        recipe: str = "default",
        epochs: int | None = None,
        batch_size: int = 128,
        lr: float | None = None,
        seed: int = 0,
        restarts: int = 1,
        device: str = "auto",
        missing: str = "mean",
        categorical: str = "auto",
        warm_sample: int = 50_000,
        outlier_quantile: float = 0.01,
    ):
        check(k=k, x_dim=x_dim, w_dim=w_dim, hidden=hidden, mc_samples=mc_samples,
              lambda_z=lambda_z, likelihood=likelihood, recipe=recipe, epochs=epochs,
              batch_size=batch_size, lr=lr, restarts=restarts, device=device, missing=missing,
              categorical=categorical, warm_sample=warm_sample)
        check(outlier_quantile=outlier_quantile)
        # input_dim, the likelihood and an "auto" width are filled in by fit, from the data.
        self.hidden = hidden
        self.config = ModelConfig(
            input_dim=1, k=k, x_dim=x_dim, w_dim=w_dim,
            hidden=() if hidden == "auto" else tuple(hidden),
            mc_samples=mc_samples, lambda_z=lambda_z, likelihood="gaussian",
        )
        self.likelihood = likelihood
        self.settings = TrainSettings(recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                      seed=seed, restarts=restarts, warm_sample=warm_sample)
        self.device = device
        self.missing = missing
        self.categorical = categorical  # text columns: "auto" one-hot encodes them, "ignore" skips
        # Where notes go when the model is used (a category it never saw): a warning for
        # library users; the CLI and fit(note=...) send them to stderr instead.
        self.note: Callable[[str], None] = _warn
        self.net_: GMVAENet | None = None
        self.preprocessor_: Preprocessor | None = None
        self.history_: list[dict] = []
        self.terms_: dict[str, float] = {}
        self.cluster_sizes_: list[int] = []
        self.id_column_: str | None = None
        self.recipe_summary_: dict = {}
        self.timings_: dict[str, float] = {}
        self.saved_epoch_: int | None = None  # epochs in the last checkpoint fit wrote
        # Rows whose ELBO lies below the outlier_quantile of the training rows' are outliers;
        # the threshold is measured once training ends.
        self.outlier_quantile = outlier_quantile
        self.outlier_threshold_: float | None = None

    # -- training ------------------------------------------------------------------------

    def fit(
        self,
        data: pd.DataFrame | np.ndarray | str,
        *,
        stream: bool = False,
        fmt: str | None = None,
        key: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        id_column: str | None = None,
        checkpoint_path: str | None = None,
        resume: bool = False,
        reporter: Reporter | None = None,
        note: Callable[[str], None] | None = None,
        shared: dict | None = None,
        startup: float | None = None,
    ) -> GMVAE:
        """Train on a table in memory, or on a file path (read whole, or with `stream` in
        shuffled chunks from disk at every epoch: the same training either way).

        `note` receives one-line notes about the data (columns skipped, filled or looking
        like ids) and, afterwards, those of predict and the other methods; without it,
        training is silent and later notes are warnings. `shared`: a dict the caller keeps
        across fits of several Ks on the same rows (select-k): the default recipe's work
        that does not depend on K is done once per seed. `startup`: seconds the process
        spent before this call, kept with the timings.
        """
        say = note or (lambda s: None)
        if note is not None:
            self.note = note
        device = devices.resolve(self.device)
        started = time.perf_counter()
        self.timings_ = {} if startup is None else {"startup": startup}
        table = open_table(data, stream, fmt, key, chunk_rows)
        resume_state = None
        if resume:
            resume_state = self._restore_for_resume(checkpoint_path)
        else:
            choice = choose_columns(table.first(), columns, exclude, id_column, say,
                                    self.categorical)
            self.id_column_ = id_column
            self.preprocessor_, kept = Preprocessor.fit(
                table.chunks(choice.columns), choice.columns, self.missing, self.likelihood, say,
                encode=choice.categorical, named=choice.named, categorical=self.categorical,
            )
            width = self.preprocessor_.width
            hidden = auto_hidden(width) if self.hidden == "auto" else self.config.hidden
            self.config = replace(self.config, input_dim=width, hidden=hidden,
                                  likelihood=self.preprocessor_.likelihood)
            check_rows(kept, self.config.k)
        rows = table.rows(self.preprocessor_)
        del table  # a file read whole (0.5 GB at 2,000,000 × 32) is not needed past its matrix
        self.timings_["read"] = time.perf_counter() - started
        return self._train(rows, device, checkpoint_path, resume_state, reporter, shared)

    def _train(self, data, device, checkpoint_path, resume_state, reporter, shared) -> GMVAE:
        """Run the training loop; under torchrun only rank 0 writes."""
        writes = checkpoint_path is not None and distributed.is_main()

        def save_state(state: dict) -> None:
            self.history_, self.saved_epoch_ = state["history"], state["epoch"]
            if writes:
                checkpoint.save(checkpoint_path, self._payload(state["state_dict"], state))

        chosen = recipe.make(self.settings, shared, self.preprocessor_.indicators,
                             self.preprocessor_.filled)
        self.outlier_threshold_ = None  # training checkpoints hold none
        trainer = Trainer(data, self.config, chosen, self.settings, device, reporter, save_state)
        fit = trainer.fit(resume=resume_state)
        self.net_, self.history_, self.terms_ = fit.net, fit.history, fit.terms
        self.cluster_sizes_, self.recipe_summary_ = fit.cluster_sizes, fit.recipe_summary
        self.timings_.update(fit.timings)
        started = time.perf_counter()
        self.outlier_threshold_ = outlier_threshold(self.net_, data, self.outlier_quantile,
                                                    seed=self.settings.seed)
        self.timings_["outlier_threshold"] = time.perf_counter() - started
        if writes:
            started = time.perf_counter()
            checkpoint.save(checkpoint_path, self._payload(self.net_.state_dict(), None))
            self.timings_["write"] = self.timings_.get("write", 0.0) + time.perf_counter() - started
        distributed.barrier()  # every rank leaves together, once the checkpoint is written
        return self

    def _restore_for_resume(self, path: str | None) -> dict:
        if path is None:
            raise UserError("--resume needs the checkpoint path (-o) of the run to continue")
        payload = checkpoint.load(path)
        state = payload.get("training")
        if state is None:
            raise UserError(f"{path} holds a finished model with no training state to resume")
        self._restore(payload, path)
        # Resuming may extend the number of epochs; everything else comes from the run itself.
        epochs = self.settings.epochs
        self.settings = TrainSettings.from_dict(payload["train_settings"])
        self.settings = replace(self.settings, epochs=epochs or self.settings.epochs)
        return state

    # -- using a trained model -----------------------------------------------------------

    def _require_fitted(self) -> GMVAENet:
        if self.net_ is None:
            raise UserError("the model is not trained yet; call fit or load a checkpoint")
        return self.net_

    def matrix(self, table: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed float32 matrix of a table, and the mask of rows kept."""
        self._require_fitted()
        return self.preprocessor_.transform(named_columns(as_frame(table)), self.note)

    def predict_proba(self, table, mc_samples: int = 0) -> np.ndarray:
        """p(z | y) per kept row; mc_samples = 0 uses the posterior means (deterministic)."""
        net = self._require_fitted()
        return np.exp(inference.log_proba(net, self.matrix(table)[0], mc_samples))

    def predict(self, table) -> np.ndarray:
        net = self._require_fitted()
        return inference.log_proba(net, self.matrix(table)[0]).argmax(1)

    def transform(self, table, with_w: bool = False) -> np.ndarray:
        """Posterior means of x (and of w with with_w) per kept row: (rows, x_dim [+ w_dim])."""
        net = self._require_fitted()
        return inference.embedding(net, self.matrix(table)[0], with_w)

    def score(self, table, seed: int = 0) -> dict[str, float]:
        """Mean ELBO and each of its four terms on this data."""
        net = self._require_fitted()
        return evaluate_terms(net, InMemoryRows(self.matrix(table)[0]), seed=seed)

    def score_samples(self, table, mc_samples: int = 0, seed: int = 0) -> np.ndarray:
        """Each kept row's ELBO, a lower bound on log p(y) for the preprocessed row (higher:
        the row fits the model better). mc_samples = 0 (deterministic) evaluates every
        expectation at the posterior means of x and w; M > 0 averages M draws seeded by
        `seed`. GMVAENet.row_terms defines both; the z-prior has no threshold λ."""
        net = self._require_fitted()
        return inference.row_scores(net, self.matrix(table)[0], mc_samples, seed)[0]

    def outlier_flags(self, table) -> np.ndarray:
        """True for each kept row whose ELBO (score_samples) is below the threshold that
        training stored: the outlier_quantile of the training rows' scores."""
        if self.outlier_threshold_ is None:
            raise UserError("this model has no outlier threshold (trained before gmvae "
                            "stored one); retrain it, or compare score_samples with your own")
        return self.score_samples(table) < self.outlier_threshold_

    @torch.no_grad()
    def sample(
        self,
        n: int,
        clusters: Sequence[int] | None = None,
        mean: bool = False,
        binary: bool = False,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """n new rows from the generative model, in the original scale of the training data.

        The rows are spread evenly over `clusters` (default: all K), in that order; a
        `cluster` column says where each row came from. Gaussian rows add decoder noise
        unless `mean`; Bernoulli rows are probabilities, or 0/1 draws with `binary` (with
        `mean` as well: the most likely value). A categorical column comes back as the
        category with the largest value in its decoded block. `seed` makes the draws
        reproducible without disturbing the global random state.
        """
        net = self._require_fitted()
        k = self.config.k
        chosen = list(dict.fromkeys(range(k) if clusters is None else clusters))
        if n < 1:
            raise UserError(f"-n must be at least 1, got {n}")
        if not chosen:
            raise UserError("no clusters to sample from; name at least one with --cluster")
        bad = [c for c in chosen if not 0 <= c < k]
        if bad:
            raise UserError(f"--cluster {bad[0]} is out of range; this model has clusters 0 to {k - 1}")
        bernoulli = self.config.likelihood == "bernoulli"
        if binary and not bernoulli:
            raise UserError("--binary is for Bernoulli models only; this model's likelihood is gaussian")
        # Even spread: the first n % len(chosen) clusters get one row more.
        counts = [n // len(chosen) + (i < n % len(chosen)) for i in range(len(chosen))]
        labels = np.repeat(np.asarray(chosen, dtype=np.int64), counts)

        pre = self.preprocessor_
        # A category is read from its block's probabilities, not from 0/1 draws (a block
        # drawn all zero would always give its first category): only numbers are drawn.
        draw = binary and not pre.categories
        with inference.seeded(net, seed):
            values = inference.batched(net, labels, lambda idx: net.sample(idx, mean, draw),
                                       self.config.input_dim).astype(np.float64)
            if binary and not draw:
                p = values[:, : len(pre.numeric_columns)]
                p[:] = (p >= 0.5) if mean else torch.bernoulli(torch.from_numpy(p)).numpy()
        frame = pre.inverse(values)  # Bernoulli: centre 0 and scale 1, values unchanged
        columns = pre.columns
        frame["cluster" if "cluster" not in columns else "sampled_cluster"] = labels
        return frame

    def effective_clusters(self, sizes: Sequence[int] | None = None) -> int:
        sizes = np.asarray(self.cluster_sizes_ if sizes is None else sizes)
        return int((sizes >= EFFECTIVE_SHARE * max(sizes.sum(), 1)).sum())

    # -- files ---------------------------------------------------------------------------

    def _payload(self, state_dict: dict, training: dict | None) -> dict:
        return {
            "config": self.config.to_dict(),
            "preprocess": self.preprocessor_.to_dict(),
            "train_settings": self.settings.to_dict(),
            "state_dict": state_dict,
            "history": self.history_,
            "terms": self.terms_,
            "cluster_sizes": self.cluster_sizes_,
            "training": training,
            "id_column": self.id_column_,
            "timings": self.timings_,
            "outlier_quantile": self.outlier_quantile,
            "outlier_threshold": self.outlier_threshold_,  # None while training
            **({} if training is not None else self.recipe_summary_),
        }

    def save(self, path: str) -> None:
        self._require_fitted()
        checkpoint.save(path, self._payload(self.net_.state_dict(), None))

    def _restore(self, payload: dict, path: str) -> None:
        """The configuration, preprocessing and id column a checkpoint holds."""
        try:
            self.config = ModelConfig.from_dict(payload["config"])
            self.settings = TrainSettings.from_dict(payload["train_settings"])
            self.preprocessor_ = Preprocessor.from_dict(payload["preprocess"])
        except (KeyError, TypeError) as e:
            raise UserError(f"{path} is a damaged gmvae checkpoint ({type(e).__name__}); retrain it")
        self.likelihood, self.missing = self.config.likelihood, self.preprocessor_.missing
        self.hidden = self.config.hidden
        self.categorical = self.preprocessor_.categorical
        self.id_column_ = payload.get("id_column")
        # Checkpoints from before outlier thresholds hold neither: no flags, scores still.
        self.outlier_quantile = payload.get("outlier_quantile", 0.01)
        self.outlier_threshold_ = payload.get("outlier_threshold")

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> GMVAE:
        payload = checkpoint.load(path)
        model = cls.__new__(cls)
        model._restore(payload, path)
        model.device = device
        model.note = _warn
        try:
            model.net_ = GMVAENet(model.config)
            model.net_.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{path} is a damaged gmvae checkpoint ({type(e).__name__}); retrain it")
        model.net_.to(devices.resolve(device)).eval()
        model.history_ = payload.get("history", [])
        model.terms_ = payload.get("terms", {})
        model.cluster_sizes_ = payload.get("cluster_sizes", [])
        model.timings_ = payload.get("timings", {})
        model.recipe_summary_ = {}
        model.package_version_ = payload.get("package_version")
        return model


def auto_hidden(columns: int) -> tuple[int, int]:
    """Two layers of 8 units per input column, in multiples of 32, from 64 to 500 (the
    paper's MNIST width): a narrow table trains a small, fast network."""
    width = min(500, max(64, -(-8 * columns // 32) * 32))
    return width, width


def _warn(message: str) -> None:
    """A note for library users: a warning they can see, filter or turn into an error."""
    warnings.warn(message.removeprefix("note: "), UserWarning, stacklevel=2)


def check_rows(rows: int, k: int) -> None:
    if rows < k:
        raise UserError(f"expected at least K rows but got {rows} rows for --k {k}; "
                        "use a smaller --k or more data")
    if rows < 2:  # batch norm cannot train on a single row
        raise UserError(f"training needs at least 2 rows but got {rows}; add more rows")

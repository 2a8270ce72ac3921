"""The library API: a `GMVAE` estimator in the spirit of scikit-learn's GaussianMixture.

    model = GMVAE(k=10).fit(frame)          # train
    model.predict(frame)                    # hard clusters
    model.predict_proba(frame)              # p(z | y)
    model.score(frame)                      # mean ELBO and its four terms
    model.save("model.pt"); GMVAE.load("model.pt")

The CLI is a thin layer over this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from gmvae_cli import checkpoint, distributed, stream
from gmvae_cli.data import DEFAULT_CHUNK_ROWS
from gmvae_cli.errors import UserError
from gmvae_cli.model import GMVAENet, ModelConfig
from gmvae_cli.preprocess import Preprocessor, choose_columns
from gmvae_cli.progress import Reporter
from gmvae_cli.train import EVAL_BATCH, Trainer, TrainSettings, evaluate_terms, resolve_device

# A cluster holding less than this share of the rows counts as empty (collapse warnings).
EFFECTIVE_SHARE = 0.01


def validate(config: ModelConfig, settings: TrainSettings) -> None:
    """Every option range, in one place, with the option's CLI name in the message."""
    checks = [
        (config.k >= 1, f"--k must be at least 1, got {config.k}"),
        (config.x_dim >= 1, f"--x-dim must be at least 1, got {config.x_dim}"),
        (config.w_dim >= 1, f"--w-dim must be at least 1, got {config.w_dim}"),
        (all(h >= 1 for h in config.hidden), f"--hidden sizes must be positive, got {config.hidden}"),
        (config.mc_samples >= 1, f"--mc-samples must be at least 1, got {config.mc_samples}"),
        (config.lambda_z >= 0, f"--lambda must be 0 or more, got {config.lambda_z}"),
        (settings.batch_size >= 2, f"--batch-size must be at least 2, got {settings.batch_size}"),
        (settings.epochs is None or settings.epochs >= 1, f"--epochs must be at least 1, got {settings.epochs}"),
        (settings.lr is None or settings.lr > 0, f"--lr must be positive, got {settings.lr}"),
        (settings.restarts >= 1, f"--restarts must be at least 1, got {settings.restarts}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


class GMVAE:
    def __init__(
        self,
        k: int = 10,
        *,
        x_dim: int = 10,
        w_dim: int = 10,
        hidden: Sequence[int] = (500, 500),
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
        missing: str = "error",
    ):
        # input_dim and the likelihood are filled in by fit, from the data.
        self.config = ModelConfig(
            input_dim=1, k=k, x_dim=x_dim, w_dim=w_dim, hidden=tuple(hidden),
            mc_samples=mc_samples, lambda_z=lambda_z, likelihood="gaussian",
        )
        self.likelihood = likelihood
        self.settings = TrainSettings(
            recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            restarts=restarts,
        )
        self.device = device
        self.missing = missing
        validate(self.config, self.settings)
        self.net_: GMVAENet | None = None
        self.preprocessor_: Preprocessor | None = None
        self.history_: list[dict] = []
        self.terms_: dict[str, float] = {}
        self.cluster_sizes_: list[int] = []
        self.id_column_: str | None = None

    # -- training ------------------------------------------------------------------------

    def fit(
        self,
        table: pd.DataFrame | np.ndarray,
        *,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        id_column: str | None = None,
        checkpoint_path: str | None = None,
        resume: bool = False,
        reporter: Reporter | None = None,
        note: Callable[[str], None] = lambda s: None,
    ) -> GMVAE:
        frame = as_frame(table)
        device = distributed.setup(resolve_device(self.device))  # one device per torchrun rank
        resume_state = None
        if resume:
            resume_state = self._restore_for_resume(checkpoint_path)
        else:
            chosen = choose_columns(frame, columns, exclude, id_column, note)
            self.id_column_ = id_column
            self.preprocessor_ = Preprocessor.fit(frame, chosen, self.missing, self.likelihood)
            self.config = replace(
                self.config, input_dim=len(chosen), likelihood=self.preprocessor_.likelihood
            )
        matrix, _ = self.preprocessor_.transform(frame)
        if len(matrix) < self.config.k:
            raise UserError(
                f"expected at least K rows but got {len(matrix)} rows for --k {self.config.k}; "
                "use a smaller --k or more data"
            )
        if len(matrix) < 2:  # batch norm cannot train on a single row
            raise UserError(f"training needs at least 2 rows but got {len(matrix)}; add more rows")
        data = torch.from_numpy(distributed.shard(matrix))  # under torchrun: this rank's rows

        return self._train(data, device, checkpoint_path, resume_state, reporter, note)

    def fit_stream(
        self,
        path: str,
        *,
        fmt: str | None = None,
        key: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        id_column: str | None = None,
        checkpoint_path: str | None = None,
        resume: bool = False,
        reporter: Reporter | None = None,
        note: Callable[[str], None] = lambda s: None,
    ) -> GMVAE:
        """fit for a file larger than memory: the scaling comes from one streaming pass, then
        every epoch reads shuffled chunks of `chunk_rows` rows from disk (stream.py)."""
        device = distributed.setup(resolve_device(self.device))
        resume_state = None
        if resume:
            resume_state = self._restore_for_resume(checkpoint_path)
        else:
            self.preprocessor_, rows = stream.prepare(
                path, fmt, key, columns=columns, exclude=exclude, id_column=id_column,
                missing=self.missing, likelihood=self.likelihood, chunk_rows=chunk_rows, note=note,
            )
            self.id_column_ = id_column
            self.config = replace(
                self.config, input_dim=len(self.preprocessor_.columns),
                likelihood=self.preprocessor_.likelihood,
            )
            if rows < max(self.config.k, 2):
                raise UserError(
                    f"expected at least K rows (and 2) but got {rows} rows for --k "
                    f"{self.config.k}; use a smaller --k or more data"
                )
        data = stream.ChunkStream(path, self.preprocessor_, fmt, key, chunk_rows)
        return self._train(data, device, checkpoint_path, resume_state, reporter, note)

    def _train(self, data, device, checkpoint_path, resume_state, reporter, note) -> GMVAE:
        """Run the Trainer on a tensor or a ChunkStream; under torchrun only rank 0 writes."""
        if self.settings.recipe == "default" and (
            not isinstance(data, torch.Tensor) or distributed.context().active
        ):
            note("note: the default recipe's warm start needs every row in one process; this "
                 "run uses --recipe paper (the spec's ELBO from a random start)")
            self.settings = replace(self.settings, recipe="paper")
        writes = checkpoint_path is not None and distributed.is_main()

        def save_state(state: dict) -> None:
            if checkpoint_path is not None:
                self.history_ = state["history"]
            if writes:
                checkpoint.save(checkpoint_path, self._payload(state["state_dict"], state))

        trainer = Trainer(data, self.config, self.settings, device, reporter, save_state)
        self.net_, self.history_, self.terms_ = trainer.fit(resume=resume_state)
        self.cluster_sizes_ = trainer.cluster_sizes(self.net_)
        if writes:
            checkpoint.save(checkpoint_path, self._payload(self.net_.state_dict(), None))
        distributed.barrier()  # every rank leaves together, once the checkpoint is written
        return self

    def _restore_for_resume(self, path: str | None) -> dict:
        if path is None:
            raise UserError("--resume needs the checkpoint path (-o) of the run to continue")
        payload = checkpoint.load(path)
        state = payload.get("training")
        if state is None:
            raise UserError(f"{path} holds a finished model with no training state to resume")
        self.config = ModelConfig.from_dict(payload["config"])
        self.preprocessor_ = Preprocessor.from_dict(payload["preprocess"])
        saved = TrainSettings(**payload["train_settings"])
        # Resuming may extend the number of epochs; everything else comes from the run itself.
        self.settings = replace(saved, epochs=self.settings.epochs or saved.epochs)
        return state

    # -- using a trained model -----------------------------------------------------------

    def _require_fitted(self) -> GMVAENet:
        if self.net_ is None:
            raise UserError("the model is not trained yet; call fit or load a checkpoint")
        return self.net_

    def matrix(self, table: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed float32 matrix of a table, and the mask of rows kept."""
        self._require_fitted()
        return self.preprocessor_.transform(as_frame(table))

    @torch.no_grad()
    def _batched(self, matrix: np.ndarray, fn) -> Iterable[torch.Tensor]:
        net = self._require_fitted()
        net.eval()
        device = next(net.parameters()).device
        for start in range(0, len(matrix), EVAL_BATCH):
            yield fn(torch.from_numpy(matrix[start : start + EVAL_BATCH]).to(device)).cpu()

    def _log_proba(self, matrix: np.ndarray, mc_samples: int = 0) -> np.ndarray:
        fn = lambda y: self.net_.cluster_log_proba(y, mc_samples)
        parts = list(self._batched(matrix, fn))
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.config.k), np.float32)

    def predict_proba(self, table, mc_samples: int = 0) -> np.ndarray:
        """p(z | y) per kept row; mc_samples = 0 uses the posterior means (deterministic)."""
        return np.exp(self._log_proba(self.matrix(table)[0], mc_samples))

    def predict(self, table) -> np.ndarray:
        return self._log_proba(self.matrix(table)[0]).argmax(1)

    def transform(self, table, with_w: bool = False) -> np.ndarray:
        """Posterior means of x (and of w with with_w) per kept row: (rows, x_dim [+ w_dim])."""
        return self._embed_matrix(self.matrix(table)[0], with_w)

    def embedding_columns(self, with_w: bool = False) -> list[str]:
        """Names of transform's columns: x_0 … x_{x_dim-1}, then w_0 … with with_w."""
        names = [f"x_{j}" for j in range(self.config.x_dim)]
        return names + ([f"w_{j}" for j in range(self.config.w_dim)] if with_w else [])

    def _embed_matrix(self, matrix: np.ndarray, with_w: bool) -> np.ndarray:
        def fn(y):
            x, w = self.net_.embed(y)  # (batch, x_dim), (batch, w_dim)
            return torch.cat([x, w], dim=1) if with_w else x

        parts = list(self._batched(matrix, fn))
        width = len(self.embedding_columns(with_w))
        return torch.cat(parts).numpy() if parts else np.zeros((0, width), np.float32)

    def assign_chunks(
        self,
        chunks: Iterable[pd.DataFrame],
        *,
        probs: bool = False,
        id_column: str | None = None,
        mc_samples: int = 0,
    ) -> Iterable[pd.DataFrame]:
        """One output row per input row, chunk by chunk: id (or row number), cluster,
        confidence and optionally prob_0 … prob_{K-1}. Rows dropped by --missing drop get
        empty values."""

        def columns(matrix: np.ndarray, keep: np.ndarray) -> dict:
            return self._cluster_columns(matrix, keep, probs=probs, mc_samples=mc_samples)

        return self._per_row(chunks, id_column, columns)

    def embed_chunks(
        self,
        chunks: Iterable[pd.DataFrame],
        *,
        with_w: bool = False,
        with_cluster: bool = False,
        id_column: str | None = None,
    ) -> Iterable[pd.DataFrame]:
        """One output row per input row, chunk by chunk: id (or row number), the posterior
        means x_0 … x_{x_dim-1}, optionally w_0 … w_{w_dim-1}, and optionally cluster and
        confidence exactly as assign_chunks gives them. Rows dropped by --missing drop get
        empty values."""
        names = self.embedding_columns(with_w)

        def columns(matrix: np.ndarray, keep: np.ndarray) -> dict:
            values = np.full((len(keep), len(names)), np.nan, dtype=np.float32)
            values[keep] = self._embed_matrix(matrix, with_w)
            out = {name: values[:, j] for j, name in enumerate(names)}
            if with_cluster:
                out.update(self._cluster_columns(matrix, keep))
            return out

        return self._per_row(chunks, id_column, columns)

    def _per_row(
        self,
        chunks: Iterable[pd.DataFrame],
        id_column: str | None,
        columns: Callable[[np.ndarray, np.ndarray], dict],
    ) -> Iterable[pd.DataFrame]:
        """The row bookkeeping assign and embed share: each chunk becomes a frame with one row
        per input row, the id column (or `row`, the row number across chunks) first, then
        `columns(matrix, keep)` computed from the chunk's kept rows, full length."""
        offset = 0
        for chunk in chunks:
            if id_column is not None and id_column not in chunk.columns:
                raise UserError(f"--id-column {id_column!r} is not in the input table")
            matrix, keep = self.matrix(chunk)
            # The id column from training is used where the input has it, else row numbers.
            ids = id_column or (self.id_column_ if self.id_column_ in chunk.columns else None)
            if ids is not None:
                first = {ids: chunk[ids].to_numpy()}
            else:
                first = {"row": np.arange(offset, offset + len(chunk))}
            offset += len(chunk)
            yield pd.DataFrame({**first, **columns(matrix, keep)})

    def _cluster_columns(
        self, matrix: np.ndarray, keep: np.ndarray, probs: bool = False, mc_samples: int = 0
    ) -> dict:
        """cluster, confidence (and prob_0 … with probs) for every row; empty where not kept."""
        log_p = self._log_proba(matrix, mc_samples)  # (kept rows, K)
        top = log_p.argmax(1)
        best = np.zeros(len(keep), dtype=np.int64)
        best[keep] = top
        cluster = pd.arrays.IntegerArray(best, ~keep)  # masked (empty) where not kept
        confidence = np.full(len(keep), np.nan)
        # The top log-probability by index: numpy's max along a short axis is 10x slower.
        confidence[keep] = np.exp(np.take_along_axis(log_p, top[:, None], axis=1)[:, 0])
        out = {"cluster": cluster, "confidence": confidence}
        if probs:
            p = np.full((len(keep), self.config.k), np.nan)
            p[keep] = np.exp(log_p)
            out.update({f"prob_{j}": p[:, j] for j in range(self.config.k)})
        return out

    def score(self, table, seed: int = 0) -> dict[str, float]:
        """Mean ELBO and each of its four terms on this data."""
        net = self._require_fitted()
        return evaluate_terms(net, torch.from_numpy(self.matrix(table)[0]), seed=seed)

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
        `mean` as well: the most likely value). `seed` makes the draws reproducible
        without disturbing the global random state.
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

        net.eval()
        device = next(net.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        parts = []
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, n, EVAL_BATCH):
                idx = torch.from_numpy(labels[start : start + EVAL_BATCH]).to(device)
                out, logvar = net.sample(idx)  # (batch, D)
                if bernoulli and binary:
                    out = (out >= 0.5).float() if mean else torch.bernoulli(out)
                elif not bernoulli and not mean:
                    out = out + torch.randn_like(out) * (0.5 * logvar).exp()
                parts.append(out.cpu().double().numpy())
        values = np.concatenate(parts)
        if not bernoulli:
            values = self.preprocessor_.inverse(values)
        columns = self.preprocessor_.columns
        frame = pd.DataFrame(values, columns=columns)
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
        }

    def save(self, path: str) -> None:
        self._require_fitted()
        checkpoint.save(path, self._payload(self.net_.state_dict(), None))

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> GMVAE:
        payload = checkpoint.load(path)
        try:
            config = ModelConfig.from_dict(payload["config"])
            settings = TrainSettings(**payload["train_settings"])
            model = cls.__new__(cls)
            model.config, model.settings = config, settings
            model.likelihood, model.device = config.likelihood, device
            model.preprocessor_ = Preprocessor.from_dict(payload["preprocess"])
            model.missing = model.preprocessor_.missing
            model.net_ = GMVAENet(config)
            model.net_.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{path} is a damaged gmvae checkpoint ({type(e).__name__}); retrain it")
        model.net_.to(resolve_device(device)).eval()
        model.history_ = payload.get("history", [])
        model.terms_ = payload.get("terms", {})
        model.cluster_sizes_ = payload.get("cluster_sizes", [])
        model.id_column_ = payload.get("id_column")
        model.package_version_ = payload.get("package_version")
        return model

    def summary(self) -> dict:
        """What `gmvae info` shows: plain data only."""
        cfg = self.config
        return {
            "k": cfg.k,
            "input_dim": cfg.input_dim,
            "x_dim": cfg.x_dim,
            "w_dim": cfg.w_dim,
            "hidden": list(cfg.hidden),
            "likelihood": cfg.likelihood,
            "lambda": cfg.lambda_z,
            "mc_samples": cfg.mc_samples,
            "recipe": self.settings.recipe,
            "seed": self.settings.seed,
            "epochs": len(self.history_),
            "columns": self.preprocessor_.columns,
            "id_column": self.id_column_,
            "missing": self.preprocessor_.missing,
            "final_terms": self.terms_,
            "cluster_sizes": self.cluster_sizes_,
            "effective_clusters": self.effective_clusters() if self.cluster_sizes_ else None,
            "package_version": getattr(self, "package_version_", None),
        }


def as_frame(table: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    """Arrays get column names f0, f1, … (as HDF5 tables do), so both kinds of input match."""
    if isinstance(table, pd.DataFrame):
        return table
    array = np.asarray(table)
    if array.ndim != 2:
        raise UserError(f"expected a 2-D table (rows × features), got shape {array.shape}")
    names = [f"f{i}" for i in range(array.shape[1])]
    return pd.DataFrame(array, columns=names)

"""`gmvae evaluate`: how good a trained model is on a table, with or without known labels.

Always: cluster sizes, effective clusters, mean confidence, the mean ELBO with its four
terms (GMVAE.score), and how many rows the model flags as outliers. With labels: both accuracies, NMI, ARI, purity, a per-cluster table
and the confusion matrix (metrics.py). Output: rich tables for people, `--json` for scripts,
`--plot` for a PNG figure. The report's keys are documented in docs/evaluate.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from gmvae_cli import plots
from gmvae_cli.api import GMVAE
from gmvae_cli.data import detect_format, read_hdf5_array, read_table
from gmvae_cli.errors import UserError
from gmvae_cli.progress import note

SHOW_CONFUSION_MAX = 30  # wider confusion matrices go to --json / --plot only


def read_labels(
    spec: str, labels_key: str | None, frame: pd.DataFrame, model: GMVAE
) -> tuple[np.ndarray, str, pd.DataFrame]:
    """The labels named by --labels, where they came from, and the table without them.

    --labels is a column of DATA when DATA has one by that name (and no --labels-key was
    given); otherwise a file: CSV/Parquet with one column, or HDF5 with --labels-key.
    """
    if labels_key is None and spec in frame.columns:
        if spec in model.preprocessor_.columns:
            raise UserError(
                f"label column {spec!r} is one of the model's features, so the model saw the "
                f"labels in training; retrain with --exclude {spec}"
            )
        # The labels must never be features: drop the column before anything else sees it.
        return frame[spec].to_numpy(), f"column {spec}", frame.drop(columns=[spec])
    if not Path(spec).is_file():
        names = ", ".join(map(str, frame.columns[:20])) + (" …" if frame.shape[1] > 20 else "")
        raise UserError(
            f"--labels {spec!r} is neither a column of DATA nor a file; "
            f"pass a labels file or one of DATA's columns: {names}"
        )
    fmt = detect_format(spec, None)
    if fmt == "hdf5":
        if labels_key is None:
            raise UserError(f"{spec} is an HDF5 file; name the labels dataset with --labels-key")
        labels = np.asarray(read_hdf5_array(spec, labels_key))
        if labels.ndim == 2 and 1 in labels.shape:
            labels = labels.ravel()
        if labels.ndim != 1:
            raise UserError(
                f"dataset {labels_key!r} in {spec} has shape {labels.shape}; labels need one "
                "value per row (a 1-D dataset)"
            )
        if labels.dtype.kind == "S":  # HDF5 byte strings -> text
            labels = labels.astype(str)
        source = f"{spec}:{labels_key}"
    else:
        if labels_key is not None:
            raise UserError("--labels-key is only for HDF5 label files; leave it out")
        table = read_table(spec, fmt)
        if table.shape[1] != 1:
            raise UserError(
                f"{spec} has {table.shape[1]} columns; a labels file holds exactly one "
                "(for a column of DATA pass its name to --labels)"
            )
        labels, source = table.iloc[:, 0].to_numpy(), spec
    if len(labels) != len(frame):
        raise UserError(
            f"{spec} holds {len(labels)} labels but DATA has {len(frame)} rows; pass one label "
            "per data row, in the same order (CSV and Parquet label files need a header row)"
        )
    return labels, source, frame


def build_report(
    model: GMVAE, frame: pd.DataFrame, labels: np.ndarray | None = None, seed: int = 0
) -> dict:
    """The whole evaluation as plain data (the `--json` object, see docs/evaluate.md)."""
    keep = model.matrix(frame)[1]  # rows left after the model's missing-value rule
    if not keep.any():
        raise UserError("no rows are left to evaluate after --missing drop; clean the data")
    proba = model.predict_proba(frame)  # (kept rows, K)
    clusters, confidence = proba.argmax(1), proba.max(1)
    k = model.config.k
    sizes = np.bincount(clusters, minlength=k)
    report = {
        "rows": int(keep.sum()),
        "rows_dropped": int((~keep).sum()),
        "k": k,
        "cluster_sizes": sizes.tolist(),
        "cluster_shares": (sizes / sizes.sum()).tolist(),
        "effective_clusters": model.effective_clusters(sizes),
        "mean_confidence": float(confidence.mean()),
        "score": model.score(frame, seed=seed),
        "outliers": outlier_summary(model, frame),
        "labels": None,
    }
    if labels is not None:
        labels = np.asarray(labels)[keep]
        known = ~pd.isna(labels)
        if not known.any():
            raise UserError("every label is missing; check the --labels column or file")
        from gmvae_cli.metrics import label_report  # scikit-learn/scipy: only when scoring

        report["labels"] = label_report(labels[known], clusters[known], k)
        report["labels"]["rows_unlabelled"] = int((~known).sum())
    return report


def outlier_summary(model: GMVAE, frame: pd.DataFrame) -> dict | None:
    """Rows whose ELBO (GMVAE.score_samples) is below the threshold stored at training;
    None for a model without one."""
    if model.outlier_threshold_ is None:
        return None
    flags = model.outlier_flags(frame)
    return {
        "rows": int(flags.sum()),
        "share": float(flags.mean()),
        "threshold": model.outlier_threshold_,
        "quantile": model.outlier_quantile,
    }


def run(model_path: str, data: str, labels: str | None, labels_key: str | None,
        as_json: bool, plot: str | None, seed: int, device: str, fmt: str | None,
        key: str | None) -> None:
    """`gmvae evaluate` (cli.py has its options)."""
    if plot is not None:
        plots.check_png(plot, "--plot")
    if labels_key is not None and labels is None:
        raise UserError("--labels-key needs --labels FILE naming the HDF5 file of the labels")
    model = GMVAE.load(model_path, device=device)
    model.note = note  # categories it never saw, once per column
    frame = read_table(data, fmt, key)
    label_values, source = None, None
    if labels is not None:
        label_values, source, frame = read_labels(labels, labels_key, frame, model)
    report = {"model": model_path, "data": data, **build_report(model, frame, label_values, seed)}
    if report["labels"] is not None:
        report["labels"] = {"source": source, **report["labels"]}
        if report["labels"]["rows_unlabelled"]:
            note(f"{report['labels']['rows_unlabelled']} rows without a label are left out of "
                 "the label metrics")
    if plot is not None:
        plots.evaluation_figure(plot, report)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        show(report, Console(soft_wrap=True))
    if plot is not None:
        note(f"wrote {plot}")


def show(report: dict, console: Console) -> None:
    """The report as rich tables, for people."""
    summary = Table(title=f"{report['model']} on {report['data']}", show_header=False)
    summary.add_row("rows", str(report["rows"]))
    if report["rows_dropped"]:
        summary.add_row("rows dropped (missing values)", str(report["rows_dropped"]))
    summary.add_row("clusters (K)", str(report["k"]))
    summary.add_row("effective clusters (≥ 1% of rows)", str(report["effective_clusters"]))
    summary.add_row("mean confidence", f"{report['mean_confidence']:.4f}")
    for name, value in report["score"].items():
        summary.add_row(name.replace("_", " ") if name != "elbo" else "ELBO (mean)", f"{value:.4f}")
    outliers = report["outliers"]
    summary.add_row(
        "outliers (ELBO below the training threshold)",
        f"{outliers['rows']} ({outliers['share']:.1%}; {outliers['quantile']:.1%} of the "
        "training rows)" if outliers else "- (the model holds no threshold; retrain it)",
    )
    found = report["labels"]
    if found:
        summary.add_row("labels", f"{found['source']} ({found['rows']} rows)")
        summary.add_row("accuracy (Hungarian one-to-one)", f"{found['accuracy_hungarian']:.4f}")
        summary.add_row("accuracy (majority label)", f"{found['accuracy_majority']:.4f}")
        summary.add_row("NMI", f"{found['nmi']:.4f}")
        summary.add_row("ARI", f"{found['ari']:.4f}")
        summary.add_row("purity", f"{found['purity']:.4f}")
    console.print(summary)

    per_cluster = Table(title="clusters")
    for name in ("cluster", "size", "share", *(("majority label", "purity") if found else ())):
        per_cluster.add_column(name, justify="right")
    for j, (size, share) in enumerate(zip(report["cluster_sizes"], report["cluster_shares"])):
        cells = [str(j), str(size), f"{share:.3f}"]
        if found:
            row = found["per_cluster"][j]
            cells += [str(row["majority_label"]) if row["size"] else "-",
                      f"{row['purity']:.3f}" if row["size"] else "-"]
        per_cluster.add_row(*cells)
    console.print(per_cluster)

    if not found:
        return
    classes, matrix = found["classes"], found["confusion"]
    if len(classes) > SHOW_CONFUSION_MAX or report["k"] > SHOW_CONFUSION_MAX:
        note("the confusion matrix is too wide to show here; see --json or --plot")
        return
    confusion = Table(title="confusion matrix (rows: labels, columns: clusters)")
    confusion.add_column("label")
    for j in range(report["k"]):
        confusion.add_column(str(j), justify="right")
    for label, counts in zip(classes, matrix):
        confusion.add_row(str(label), *map(str, counts))
    console.print(confusion)

"""External clustering metrics: how well clusters match known labels.

Every number comes from scikit-learn or SciPy; this module only names them and shapes the
results into plain data. Labels may be any hashable values (ints, strings); clusters are
integer cluster indices. Both are 1-D NumPy arrays of the same length.

Two accuracies, always named (MODEL.md, "Reference results"):
- Hungarian: the best one-to-one matching of clusters to labels (scipy linear_sum_assignment).
  With more clusters than labels the unmatched clusters count as wrong.
- majority: each cluster takes its most common label (several clusters may share one). This
  is more lenient and equals the purity of the clustering.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def _check(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and clusters must be 1-D and of the same length, "
            f"got shapes {labels.shape} and {clusters.shape}"
        )
    if len(labels) == 0:
        raise ValueError("labels and clusters are empty; at least one row is needed")
    return labels, clusters


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels."""
    labels, clusters = _check(labels, clusters)
    counts = contingency_matrix(labels, clusters)  # (n_labels, n_clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def majority_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy when every cluster is mapped to its majority label."""
    labels, clusters = _check(labels, clusters)
    counts = contingency_matrix(labels, clusters)
    return float(counts.max(axis=0).sum() / len(labels))


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of rows whose label is their cluster's majority label (= majority accuracy)."""
    return majority_accuracy(labels, clusters)


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    return float(normalized_mutual_info_score(*_check(labels, clusters)))


def ari(labels: np.ndarray, clusters: np.ndarray) -> float:
    return float(adjusted_rand_score(*_check(labels, clusters)))


def plain(value):
    """A NumPy scalar as the matching Python value, so reports serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def label_report(labels: np.ndarray, clusters: np.ndarray, k: int) -> dict:
    """Every label metric, the per-cluster table and the confusion matrix, as plain data.

    The confusion matrix has one row per label (sorted) and one column per cluster 0 … k-1,
    so empty clusters show as zero columns; it sums to the number of rows.
    """
    labels, clusters = _check(labels, clusters)
    classes, label_idx = np.unique(labels, return_inverse=True)
    confusion = np.zeros((len(classes), k), dtype=np.int64)
    np.add.at(confusion, (label_idx, clusters), 1)
    sizes = confusion.sum(axis=0)
    per_cluster = []
    for j in range(k):
        size = int(sizes[j])
        top = int(confusion[:, j].argmax())
        per_cluster.append({
            "cluster": j,
            "size": size,
            "share": size / len(labels),
            "majority_label": plain(classes[top]) if size else None,
            "purity": float(confusion[top, j] / size) if size else None,
        })
    return {
        "rows": len(labels),
        "classes": [plain(c) for c in classes],
        "accuracy_hungarian": hungarian_accuracy(labels, clusters),
        "accuracy_majority": majority_accuracy(labels, clusters),
        "nmi": nmi(labels, clusters),
        "ari": ari(labels, clusters),
        "purity": purity(labels, clusters),
        "per_cluster": per_cluster,
        "confusion": confusion.tolist(),
    }

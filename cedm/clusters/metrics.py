"""Agreement between two labelings of the same images, and cluster size statistics.

One module for the command line, the app and the benchmarks. Rows labelled -1 (no label) in either
labeling are ignored. NMI uses the arithmetic mean of the entropies (scikit-learn's default); AMI is the
paper's ANMI (NMI adjusted for chance). Accuracy, two ways (``a`` = clusters, ``b`` = classes):

- ``accuracy_hungarian``: the best one-to-one matching of ids (Hungarian algorithm); with more clusters
  than classes the surplus clusters match nothing and count as wrong;
- ``accuracy_majority``: the official TEMI/C-EDM evaluation: the same one-to-one matching, then every
  surplus cluster is mapped to its majority class (equal to the Hungarian accuracy when C <= classes).

``compare`` returns both; its ``accuracy`` key is the one-to-one (Hungarian) accuracy.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cedm.errors import CedmError


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a).astype(np.int64, copy=False).ravel()
    b = np.asarray(b).astype(np.int64, copy=False).ravel()
    if a.shape != b.shape:
        raise CedmError(f"labelings have different lengths ({len(a)} vs {len(b)})")
    keep = (a >= 0) & (b >= 0)
    if not keep.any():
        raise CedmError("no image is labelled in both labelings")
    return a[keep], b[keep]


def contingency(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``table[i, j]`` of rows with ``a == ids_a[i]`` and ``b == ids_b[j]`` (only ids that occur)."""
    a, b = _pair(a, b)
    ids_a, ia = np.unique(a, return_inverse=True)
    ids_b, ib = np.unique(b, return_inverse=True)
    table = np.zeros((len(ids_a), len(ids_b)), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    return table, ids_a, ids_b


def hungarian_accuracy(a, b) -> float:
    """Fraction of rows on which ``a`` and ``b`` agree after the best one-to-one mapping of their ids."""
    table, _, _ = contingency(a, b)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def majority_accuracy(a, b) -> float:
    """Accuracy after the one-to-one matching, with clusters of ``a`` left over mapped to their majority id in
    ``b`` (the official evaluation for over-clustering)."""
    table, _, _ = contingency(a, b)
    rows, cols = linear_sum_assignment(table, maximize=True)
    target = table.argmax(1)          # surplus clusters: their majority class
    target[rows] = cols               # matched clusters: their Hungarian class
    return float(table[np.arange(len(table)), target].sum() / table.sum())


def nmi(a, b) -> float:
    from sklearn.metrics import normalized_mutual_info_score
    return float(normalized_mutual_info_score(*_pair(a, b)))


def ami(a, b) -> float:
    """Adjusted mutual information (the paper's ANMI)."""
    from sklearn.metrics import adjusted_mutual_info_score
    return float(adjusted_mutual_info_score(*_pair(a, b)))


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score
    return float(adjusted_rand_score(*_pair(a, b)))


def compare(a, b) -> dict:
    """All agreement scores between two labelings, plus how many rows were compared."""
    pa, pb = _pair(a, b)
    acc = hungarian_accuracy(pa, pb)
    return {"nmi": nmi(pa, pb), "ami": ami(pa, pb), "ari": ari(pa, pb), "accuracy": acc,
            "accuracy_hungarian": acc, "accuracy_majority": majority_accuracy(pa, pb),
            "n_compared": int(len(pa)), "n_clusters_a": int(len(np.unique(pa))),
            "n_clusters_b": int(len(np.unique(pb)))}


def accuracy_text(m: dict) -> str:
    """'accuracy 0.162 one-to-one / 0.722 majority' from ``compare``'s result (one wording everywhere)."""
    return (f"accuracy {m['accuracy_hungarian']:.3f} one-to-one (Hungarian) / "
            f"{m['accuracy_majority']:.3f} majority (surplus clusters to their majority class)")


def size_stats(labels, n_clusters: int | None = None) -> dict:
    """Cluster sizes: how many of ``n_clusters`` are used, smallest/median/largest used cluster,
    and the effective number of clusters exp(entropy of q(c))."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    labels = labels[labels >= 0]
    n_clusters = int(n_clusters if n_clusters is not None else (labels.max() + 1 if len(labels) else 0))
    sizes = np.bincount(labels, minlength=n_clusters)
    used = sizes[sizes > 0]
    q = used / max(used.sum(), 1)
    return {"n_clusters": n_clusters, "n_used": int(len(used)),
            "utilization": float(len(used) / n_clusters) if n_clusters else 0.0,
            "min": int(used.min()) if len(used) else 0, "median": float(np.median(used)) if len(used) else 0.0,
            "max": int(used.max()) if len(used) else 0,
            "effective": float(np.exp(-(q * np.log(q)).sum())) if len(used) else 0.0,
            "sizes": sizes.tolist()}

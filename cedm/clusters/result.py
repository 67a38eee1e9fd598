"""The outcome of one clustering run, shared by k-means and TEMI."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ClusterResult:
    method: str                      # 'kmeans' or 'temi'
    n_clusters: int                  # C requested
    assignments: np.ndarray          # int64 (N,), cluster id of each image
    confidence: np.ndarray           # float32 (N,): cosine to own centroid (k-means) or max probability (TEMI)
    centroids: np.ndarray | None = None   # float32 (C, D), k-means only
    probs: np.ndarray | None = None       # float32 (N, C), TEMI best head only
    head: Any = None                 # TEMI: the trained best head (cedm.clusters.temi.MultiHead with one head)
    params: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # timings, per-head losses, ...
    artifact: Path | None = None     # the workspace folder it was stored in, if any

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=self.n_clusters)

    @property
    def q(self) -> np.ndarray:
        """Empirical cluster distribution q(c) on the clustered images (what C-EDM samples from)."""
        return (self.sizes / len(self.assignments)).astype(np.float64)

    @property
    def n_used(self) -> int:
        """C_u: clusters with at least one image."""
        return int((self.sizes > 0).sum())

    @property
    def utilization(self) -> float:
        """r_C = C_u / C."""
        return self.n_used / self.n_clusters


def l2_normalize(features) -> np.ndarray:
    """float32, C-contiguous, unit rows (features are expected normalised already; this is cheap insurance)."""
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or len(x) == 0:
        from cedm.errors import CedmError
        raise CedmError(f"expected a (N, D) feature matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_n_clusters(n_clusters: int, n: int) -> int:
    from cedm.errors import CedmError
    c = int(n_clusters)
    if c < 2:
        raise CedmError(f"the number of clusters must be at least 2, got {n_clusters}")
    if c > n:
        raise CedmError(f"cannot make {c} clusters from only {n} images: choose at most {n}")
    return c

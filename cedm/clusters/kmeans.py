"""k-means (faiss), seeded, several restarts (``nredo``) keeping the best objective.

Two objectives (``metric``):
- ``euclidean`` (the default, the paper's: the official code runs scikit-learn KMeans on the raw backbone
  embeddings): centroids are means of the raw features, images go to the nearest centroid in L2;
- ``spherical``: on L2-normalised features, centroids on the unit sphere, images assigned by cosine
  similarity (what cedm used before; the shipped demo models are conditioned on such a clustering).

The confidence of an image is its cosine similarity to its own centroid under either metric.
"""
from __future__ import annotations

import time

import numpy as np

from cedm.clusters.result import ClusterResult, check_n_clusters, l2_normalize
from cedm.errors import CedmError

KMEANS_METRICS = ("euclidean", "spherical")
DEFAULT_METRIC = "euclidean"


def check_metric(metric: str | None) -> str:
    metric = DEFAULT_METRIC if metric is None else str(metric)
    if metric not in KMEANS_METRICS:
        raise CedmError(f"unknown k-means metric {metric!r}: use one of {', '.join(KMEANS_METRICS)}")
    return metric


def kmeans(features, n_clusters: int, seed: int = 0, nredo: int = 5, niter: int = 50,
           gpu: bool | None = None, metric: str | None = None) -> ClusterResult:
    import faiss

    metric = check_metric(metric)
    spherical = metric == "spherical"
    x = l2_normalize(features) if spherical else _as_matrix(features)
    c = check_n_clusters(n_clusters, len(x))
    use_gpu = bool(faiss.get_num_gpus()) if gpu is None else bool(gpu)
    t0 = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], c, niter=niter, nredo=nredo, seed=int(seed), spherical=spherical,
                      gpu=use_gpu, verbose=False,
                      max_points_per_centroid=max(256, -(-len(x) // c)))  # never subsample: use every image
    km.train(x)
    centroids = l2_normalize(km.centroids) if spherical else np.ascontiguousarray(km.centroids, np.float32)
    assign, sims = assign_to_centroids(x, centroids, metric)
    return ClusterResult(method="kmeans" if not spherical else "skmeans", n_clusters=c, assignments=assign,
                         confidence=sims, centroids=centroids,
                         params={"n_clusters": c, "seed": int(seed), "nredo": nredo, "niter": niter,
                                 "metric": metric},
                         info={"seconds": time.perf_counter() - t0, "objective": float(km.obj[-1]),
                               "gpu": use_gpu})


def _as_matrix(features) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or len(x) == 0:
        raise CedmError(f"expected a (N, D) feature matrix, got shape {x.shape}")
    return x


def assign_to_centroids(features, centroids, metric: str = "spherical") -> tuple[np.ndarray, np.ndarray]:
    """(cluster id, cosine similarity to that centroid) of images' (raw) features: nearest centroid by cosine
    (spherical) or by L2 distance (euclidean)."""
    import faiss

    metric = check_metric(metric)
    x, cents = _as_matrix(features), _as_matrix(centroids)
    if metric == "spherical":
        x, cents = l2_normalize(x), l2_normalize(cents)
        index = faiss.IndexFlatIP(cents.shape[1])
    else:
        index = faiss.IndexFlatL2(cents.shape[1])
    index.add(cents)
    _, idx = index.search(x, 1)
    idx = idx[:, 0].astype(np.int64)
    sims = np.einsum("nd,nd->n", l2_normalize(x), l2_normalize(cents)[idx]).astype(np.float32)
    return idx, sims

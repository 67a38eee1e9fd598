"""Spherical k-means (faiss) on L2-normalised features: centroids live on the unit sphere and images are
assigned by cosine similarity. Several restarts (``nredo``) keep the best objective; seeded."""
from __future__ import annotations

import time

import numpy as np

from cedm.clusters.result import ClusterResult, check_n_clusters, l2_normalize


def kmeans(features, n_clusters: int, seed: int = 0, nredo: int = 5, niter: int = 50,
           gpu: bool | None = None) -> ClusterResult:
    import faiss

    x = l2_normalize(features)
    c = check_n_clusters(n_clusters, len(x))
    use_gpu = bool(faiss.get_num_gpus()) if gpu is None else bool(gpu)
    t0 = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], c, niter=niter, nredo=nredo, seed=int(seed), spherical=True,
                      gpu=use_gpu, verbose=False,
                      max_points_per_centroid=max(256, -(-len(x) // c)))  # never subsample: use every image
    km.train(x)
    centroids = l2_normalize(km.centroids)
    sims, assign = _nearest_centroid(x, centroids)
    return ClusterResult(method="kmeans", n_clusters=c, assignments=assign, confidence=sims,
                         centroids=centroids,
                         params={"n_clusters": c, "seed": int(seed), "nredo": nredo, "niter": niter},
                         info={"seconds": time.perf_counter() - t0, "objective": float(km.obj[-1]),
                               "gpu": use_gpu})


def _nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    sims, idx = index.search(x, 1)
    return sims[:, 0].astype(np.float32), idx[:, 0].astype(np.int64)


def assign_to_centroids(features, centroids) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id, cosine similarity) of new images to stored k-means centroids."""
    sims, idx = _nearest_centroid(l2_normalize(features), l2_normalize(centroids))
    return idx, sims

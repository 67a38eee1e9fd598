"""Cluster assignment of new features: the one place that turns features into cluster probabilities.

An :class:`Assigner` is a clustering's classifier: a TEMI head (its softmax at the head's temperature, 0.1)
or k-means centroids (a softmax over cosine similarities at temperature KMEANS_TEMPERATURE = 0.1: k-means has
no probabilities of its own, and 0.1 matches TEMI's so the two read alike). :func:`condition_map` maps the
clustering's ids to a model's condition ids (the labeling is compacted before training: empty clusters are
renumbered away, ``original_ids[k]`` is the clustering id of condition k). Used by the app's query view,
``cedm eval``'s MSP and the engine's sample confidence / best-of.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cedm.errors import CedmError

KMEANS_TEMPERATURE = 0.1
CENTROID_METHODS = ("kmeans", "skmeans")  # Euclidean and spherical k-means: both assign by centroid cosine here


@dataclass
class Assigner:
    method: str                       # 'temi', or 'kmeans' / 'skmeans' (centroids)
    head: object = None               # TEMI: a one-head MultiHead
    centroids: np.ndarray | None = None
    temperature: float = KMEANS_TEMPERATURE

    def __post_init__(self):
        if self.method == "temi" and self.head is None:
            raise CedmError("this TEMI clustering has no stored head, so new images cannot be assigned")
        if self.method in CENTROID_METHODS:
            if self.centroids is None:
                raise CedmError("this k-means clustering has no stored centroids")
            from cedm.clusters.result import l2_normalize
            self.centroids = l2_normalize(np.asarray(self.centroids, np.float32))
        elif self.method != "temi":
            raise CedmError(f"clustering method {self.method!r} has no cluster assigner (TEMI or k-means)")

    @classmethod
    def from_result(cls, res) -> "Assigner":
        """The assigner of a loaded clustering (cedm.clusters.result.ClusterResult)."""
        if res.method == "temi":
            return cls("temi", head=res.head,
                       temperature=float((res.params.get("temi") or {}).get("teacher_temp", 0.1)))
        return cls(res.method, centroids=res.centroids)

    def proba(self, feats: np.ndarray) -> np.ndarray:
        """(N, D) backbone features -> (N, C) probabilities over the clustering's clusters."""
        feats = np.asarray(feats, np.float32)
        if self.method == "temi":
            from cedm.clusters.temi import predict_proba
            return predict_proba(self.head, feats, self.temperature)
        from cedm.clusters.result import l2_normalize
        logits = l2_normalize(feats) @ self.centroids.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    @property
    def description(self) -> str:
        if self.method == "temi":
            return "TEMI head probabilities (softmax)"
        return f"softmax of centroid cosine / {self.temperature:g} (k-means)"


def condition_map(original_ids, n_clusters: int) -> np.ndarray:
    """(n_clusters,) model condition id of each clustering id; -1 for a cluster the model has no condition for."""
    ids = np.asarray(original_ids, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_clusters):
        raise CedmError(f"condition ids {ids.min()}..{ids.max()} do not fit a clustering of {n_clusters} clusters")
    out = np.full(int(n_clusters), -1, dtype=np.int64)
    out[ids] = np.arange(len(ids))
    return out

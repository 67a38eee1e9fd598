"""Cluster assignment of new features: the one place that turns features into cluster probabilities.

An :class:`Assigner` is a clustering's classifier: a TEMI head (its softmax at the head's temperature, 0.1)
or k-means centroids (a softmax over cosine similarities at temperature KMEANS_TEMPERATURE = 0.1: k-means has
no probabilities of its own, and 0.1 matches TEMI's so the two read alike). :func:`condition_map` maps the
clustering's ids to a model's condition ids (the labeling is compacted before training: empty clusters are
renumbered away, ``original_ids[k]`` is the clustering id of condition k). :func:`labeling_head` is the one
answer to "which clustering was this model (or probe) trained on": the cached clustering of its spec whose
compacted labels hash to its training labels; :func:`condition_head` applies it to a model folder, giving a
:class:`ConditionHead` (assigner + condition ids) and :func:`sample_confidence` its MSP. Used by the app's query
view, ``cedm eval``'s MSP and agreement, probes, and the engine's sample confidence / best-of.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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


# --- the condition classifier (MSP) ---------------------------------------------------------------------
@dataclass
class ConditionHead:
    """The classifier of a model's condition labeling, mapped to the model's condition ids."""
    spec: str
    method: str                 # 'temi' or 'kmeans'
    backbone: str
    weights: str | None
    model_ids: np.ndarray       # (C_head,) model condition id of each clustering cluster, -1 = not a condition
    head: object = None         # TEMI: a one-head MultiHead
    temperature: float = 0.1
    centroids: np.ndarray | None = None  # k-means: (C, D) unit rows
    artifact: str = ""

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        """(N, C_head) probabilities over the clustering's clusters."""
        return Assigner(self.method, self.head, self.centroids, self.temperature).proba(feats)


def labels_hash(labels: np.ndarray) -> str:
    """The fingerprint of training labels: a model's ``provenance.data.labels_sha`` (written by
    cedm.model.train.data_fingerprint) and a probe's ``labels_sha``."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes()).hexdigest()[:16]


def labeling_head(ws, spec: str, labels_sha: str | None) -> tuple[ConditionHead | None, str | None]:
    """The cluster assigner of a kmeans:K / skmeans:K / temi:K labeling of ``ws`` whose compacted labels hash to
    ``labels_sha`` (the ids a C-EDM or a probe was trained on; None: the only cached one), or (None, why).
    The one answer to "which clustering was this trained on", for ``condition_head`` and probes alike."""
    from cedm.clusters.labelings import METHODS, from_clusters, list_clusterings, load_clusters
    from cedm.features.backbones import OFFLINE_BACKBONE

    method, _, arg = str(spec).partition(":")
    if method not in METHODS:
        return None, f"labeling {spec} has no assigner of its own (it needs a TEMI or k-means labeling)"
    candidates = [c for c in list_clusterings(ws) if c["method"] == method and str(c["n_clusters"]) == arg]
    for c in reversed(candidates):  # newest first
        res = load_clusters(Path(c["artifact"]))
        lab = from_clusters(res, spec).compact()
        if labels_sha is not None and labels_hash(lab.labels) != labels_sha:
            continue
        if labels_sha is None and len(candidates) > 1:
            return None, f"{len(candidates)} cached {spec} clusterings and no labels hash to choose between them"
        head = ConditionHead(spec=spec, method=method, backbone=c["backbone"] or OFFLINE_BACKBONE,
                             weights=c.get("weights"), model_ids=condition_map(lab.original_ids, res.n_clusters),
                             artifact=str(c["artifact"]))
        if method == "temi":
            from cedm.clusters.temi import load_head
            head.head, cfg = load_head(Path(c["artifact"]) / "head")
            head.temperature = float(cfg.get("temperature", 0.1))
        else:
            from cedm.clusters.result import l2_normalize  # unit rows: Euclidean k-means keeps raw means
            head.centroids, head.temperature = l2_normalize(res.centroids), KMEANS_TEMPERATURE
        return head, None
    return None, (f"the {spec} clustering it was trained on is not cached in workspace {ws.name!r} "
                  f"(run 'cedm cluster' as for training)")


def condition_head(model_dir, ws) -> tuple[ConditionHead | None, str | None]:
    """(head, None), or (None, why not) when the model's condition has no classifier in ``ws``.

    The clustering is the cached one of the condition's method and C whose (compacted) labels are exactly the
    ones the model was trained on (the labels hash in its provenance), so the backbone need not be recorded."""
    from cedm.model.edm import read_model_info

    info = read_model_info(model_dir)
    cond = info.get("condition") or {}
    spec = str(cond.get("spec") or "none")
    if int(info.get("n_conditions", 0)) == 0:
        return None, "unconditional model: no condition classifier"
    from cedm.clusters.labelings import METHODS

    if spec.partition(":")[0] not in METHODS:
        return None, f"condition {spec} has no classifier (MSP needs a TEMI or k-means labeling)"
    return labeling_head(ws, spec, ((info.get("provenance") or {}).get("data") or {}).get("labels_sha"))


def sample_confidence(head: ConditionHead, images: np.ndarray | None, device=None, progress=None,
                      features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, MSP) per image: the predicted condition id (-1: a cluster that is no condition) and the
    maximum softmax probability. ``features``: the head backbone's features of ``images`` if already at hand.
    The one place MSP is computed."""
    if features is None:
        from cedm.fd import backbone_net, extract

        features = extract(backbone_net(head.backbone, head.weights, device), images, progress,
                           f"{head.spec} features")
    probs = head.predict_proba(features)
    return head.model_ids[probs.argmax(1)], probs.max(1).astype(np.float32)

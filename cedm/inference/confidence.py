"""Sample confidence (C-EDM paper sec. 5): how surely a generated image belongs to a cluster.

The generated image goes through the same backbone (and weights) whose features made the model's condition
labeling, then through that labeling's cluster assigner:

- TEMI: the trained head's softmax (its own temperature, 0.1); confidence = the maximum softmax probability.
- k-means: a softmax over the cosine similarities to the centroids with temperature 0.1 (our choice: k-means
  has no probabilities of its own; 0.1 matches TEMI's temperature so the two read alike).

Cluster ids are the model's condition ids: the labeling was compacted before training (empty clusters
renumbered away), and ``original_ids[k]`` is the clustering's id of condition k. An image whose best
cluster is one the model never saw gets id -1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cedm import io
from cedm.errors import CedmError

from cedm.clusters.assign import condition_map


@dataclass
class ConditionScorer:
    """A model's condition classifier (``cedm.clusters.assign.ConditionHead``: the cluster assigner of the labeling
    it was trained on, mapped to its condition ids) with its backbone, kept resident by the engine."""
    net: object                      # cedm.fd.MetricNet of the labeling's backbone
    head: object                     # cedm.clusters.assign.ConditionHead

    @property
    def original_ids(self) -> np.ndarray:
        """(C_model,) clustering id of each model condition."""
        ids = self.head.model_ids
        out = np.empty(int(ids.max(initial=-1)) + 1, dtype=np.int64)
        out[ids[ids >= 0]] = np.flatnonzero(ids >= 0)
        return out

    def cluster_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, R, R, 3) -> (N, n_clusters) probabilities over the clustering's own ids."""
        from cedm.fd import extract

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise CedmError(f"expected uint8 images (N, R, R, 3), got {images.dtype} {images.shape}")
        return self.head.predict_proba(extract(self.net, images))

    def proba(self, images: np.ndarray) -> np.ndarray:
        """(N, C_model) probability of each model condition (columns of the clustering's softmax)."""
        return self.cluster_proba(images)[:, self.original_ids]

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(condition id, maximum softmax probability) per image; id -1 = a cluster the model has no condition for."""
        p = self.cluster_proba(images)
        return self.head.model_ids[p.argmax(1)], p.max(1).astype(np.float32)


def _workspace_of(model_dir: Path, info: dict | None = None):
    """The workspace a model folder was trained in: ``<root>/models/<name>`` (or the demo's overlay); for a
    model shipped elsewhere (checkpoints/), the shipped demo when its provenance names the demo's dataset."""
    from cedm.workspace import DEMO_DIR, Workspace, open_demo

    parent = model_dir.resolve().parent
    if parent.name != "models":
        prov = (info or {}).get("provenance") or {}
        if (DEMO_DIR / "manifest.json").is_file() and prov.get("workspace_hash") == \
                io.read_json(DEMO_DIR / "manifest.json")["content_hash"]:
            return open_demo()
        return None
    root = parent.parent
    if (root / "manifest.json").is_file():
        return Workspace(root)
    if root.parent.name == "overlays" and root.name.startswith("demo-"):
        return open_demo(home=root.parent.parent)
    return None


def load_scorer(model_dir, info: dict, device=None) -> ConditionScorer:
    """The scorer of a model's condition labeling: its workspace, then ``cedm.clusters.assign.condition_head`` (the
    one answer to "which clustering was this trained on": the cached clustering whose compacted labels hash
    to the model's training labels)."""
    from cedm.clusters.labelings import METHODS
    from cedm.clusters.assign import condition_head
    from cedm.fd import backbone_net

    spec = str((info.get("condition") or {}).get("spec") or "")
    if spec.partition(":")[0] not in METHODS:
        raise CedmError(f"sample confidence needs a k-means or TEMI conditioned model; this one is conditioned "
                        f"on {spec or 'nothing recorded'!r}")
    ws = _workspace_of(Path(model_dir), info)
    if ws is None:
        raise CedmError(f"cannot find the clustering of {Path(model_dir).name}: it does not lie in a workspace's "
                        "models/ folder and was not trained on the shipped demo")
    head, why = condition_head(model_dir, ws)
    if head is None:
        raise CedmError(f"{Path(model_dir).name}: {why}")
    ids = (info.get("condition") or {}).get("original_ids")
    if ids is not None and not np.array_equal(condition_map(ids, len(head.model_ids)), head.model_ids):
        raise CedmError(f"the clustering {Path(head.artifact).name} ({len(head.model_ids)} clusters) does not "
                        f"match the model's {len(ids)} conditions")
    from cedm.clusters.labelings import resolve_backbone

    return ConditionScorer(backbone_net(resolve_backbone(head.backbone), head.weights, device), head)

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

from cedm.clusters.assign import KMEANS_TEMPERATURE, Assigner, condition_map  # noqa: F401 (re-exported)


@dataclass
class ConditionScorer:
    """Backbone + cluster assigner of one model's condition labeling, kept resident by the engine."""
    backbone: object                 # cedm.features.extract.Backbone
    method: str                      # 'temi' or 'kmeans'
    original_ids: np.ndarray         # (C_model,) clustering id of each model condition
    n_clusters: int                  # clusters of the clustering (>= C_model)
    head: object = None              # TEMI MultiHead (one head)
    centroids: np.ndarray | None = None
    temperature: float = 0.1
    artifact: str | None = None

    def cluster_proba(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """uint8 (N, R, R, 3) -> (N, n_clusters) probabilities over the clustering's own ids."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise CedmError(f"expected uint8 images (N, R, R, 3), got {images.dtype} {images.shape}")
        feats = np.concatenate([self.backbone(images[s:s + batch]) for s in range(0, len(images), batch)])
        return Assigner(self.method, self.head, self.centroids, self.temperature).proba(feats)

    def proba(self, images: np.ndarray) -> np.ndarray:
        """(N, C_model) probability of each model condition (columns of the clustering's softmax)."""
        return self.cluster_proba(images)[:, self.original_ids]

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(condition id, maximum softmax probability) per image; id -1 = a cluster the model has no condition for."""
        p = self.cluster_proba(images)
        best = p.argmax(1)
        return condition_map(self.original_ids, self.n_clusters)[best], p.max(1).astype(np.float32)


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


def find_condition_artifact(model_dir, info: dict) -> tuple[Path, dict]:
    """The clustering artifact (folder, params) that made a model's conditions.

    In order: ``condition.artifact`` when that folder still exists; the artifact keyed by ``condition.params``
    in the model's workspace; else the newest clustering of that workspace with the spec's method and C.
    """
    from cedm.clusters.labelings import STAGE_CLUSTERS

    cond = info.get("condition") or {}
    spec = str(cond.get("spec", ""))
    method, _, c = spec.partition(":")
    if method not in ("kmeans", "skmeans", "temi"):
        raise CedmError(f"sample confidence needs a k-means or TEMI conditioned model; this one is conditioned "
                        f"on {spec or 'nothing recorded'!r}")
    art = cond.get("artifact")
    if art and (Path(art) / "meta.json").is_file():
        return Path(art), io.read_json(Path(art) / "meta.json")["params"]
    ws = _workspace_of(Path(model_dir), info)
    if ws is None:
        raise CedmError(f"cannot find the clustering of {model_dir}: it does not lie in a workspace's models/ "
                        "folder and its cedm.json names no existing clustering artifact")
    params = cond.get("params")
    if params:
        found = ws.find_artifact(STAGE_CLUSTERS, params)
        if found is not None:
            return found, params
    matches = [(p, m["params"]) for p, m in ws.list_artifacts(STAGE_CLUSTERS)
               if m["params"].get("method") == method and str(m["params"].get("n_clusters")) == c]
    if not matches:
        raise CedmError(f"the {spec} clustering that {Path(model_dir).name} was trained on is no longer in "
                        f"workspace {ws.name!r}; run `cedm cluster` again")
    return matches[-1]


def load_scorer(model_dir, info: dict, device=None) -> ConditionScorer:
    """Build the scorer of a model's condition labeling (backbone weights from the clustering's params)."""
    from cedm.features.extract import cached_backbone

    folder, params = find_condition_artifact(model_dir, info)
    cond = info.get("condition") or {}
    n_model = int(info.get("n_conditions", cond.get("n_conditions", 0)))
    n_clusters = int(params["n_clusters"])
    ids = np.asarray(cond.get("original_ids") if cond.get("original_ids") is not None else np.arange(n_model),
                     dtype=np.int64)
    if len(ids) != n_model or (len(ids) and (ids.min() < 0 or ids.max() >= n_clusters)):
        raise CedmError(f"the clustering {folder.name} ({n_clusters} clusters) does not match the model's "
                        f"{n_model} conditions")
    from cedm.clusters.labelings import resolve_backbone

    backbone = cached_backbone(resolve_backbone(params.get("backbone")), params.get("weights"), device)
    if (folder / "head.safetensors").is_file():
        from cedm.clusters.temi import load_head

        head, cfg = load_head(folder / "head")
        head = head.to(backbone.device)
        return ConditionScorer(backbone, "temi", ids, n_clusters, head=head,
                               temperature=float(cfg.get("temperature", 0.1)), artifact=str(folder))
    if (folder / "centroids.npy").is_file():
        from cedm.clusters.result import l2_normalize

        return ConditionScorer(backbone, "kmeans", ids, n_clusters,
                               centroids=l2_normalize(io.load_npy(folder / "centroids.npy")),
                               temperature=KMEANS_TEMPERATURE, artifact=str(folder))
    raise CedmError(f"clustering artifact {folder} has neither a TEMI head nor k-means centroids")

"""Workspace labelings: one id per image row (-1 = none), from clusters, ground truth or saved pseudo-labels.

Clusterings are cached as workspace artifacts (stage ``clusters``; neighbours in stage ``knn``), keyed by
everything that changes the result (method, C, backbone, seed, TEMI settings), so asking again is free and
the bound's utilization curve grows run by run. Named labelings (e.g. CLIP pseudo-labels) live in stage
``labelings``. ``resolve(ws, spec)`` turns a spec into the Labeling that C-EDM conditions on:

    kmeans:C    k-means with C clusters (Euclidean on raw features, the paper's; ``kmeans_metric`` overrides)
    skmeans:C   spherical k-means (cosine, L2-normalised features; the shipped demo models' clustering)
    temi:C      TEMI with C clusters
    gt          the workspace's ground truth     labels:NAME  a labeling saved with save_labeling
    rows:NAME   a named set of rows (a selection, few-shot picks): 1 = in the set, 0 = the rest
    self:K@MODEL  the prototypes a self:K model (online self-guidance) assigned to each image at its last
                checkpoint (MODEL: the model's name in this workspace)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cedm import io
from cedm.clusters.result import ClusterResult
from cedm.device import resolve_device
from cedm.errors import CedmError

STAGE_CLUSTERS, STAGE_KNN, STAGE_LABELINGS, STAGE_ROWSETS = "clusters", "knn", "labelings", "rowsets"
METHODS = ("kmeans", "skmeans", "temi")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# --- features and neighbours ---------------------------------------------------------------------
def resolve_backbone(backbone: str | None) -> str:
    from cedm import features
    if backbone:
        return features.backbones.canonical_name(backbone)  # denoiser:M -> with its sigma/block defaults
    return features.DEFAULT_BACKBONE


def workspace_features(ws, backbone: str | None = None, weights: str | None = None,
                       normalized: bool = True) -> np.ndarray:
    from cedm import features  # written alongside this module; imported only when a workspace is used
    return features.get_features(ws, resolve_backbone(backbone), weights=weights, normalized=normalized)


def _features_key(backbone, weights) -> dict:
    return {"backbone": resolve_backbone(backbone), "weights": str(weights) if weights else None}


def workspace_neighbors(ws, backbone=None, weights=None, m: int = 50, feats: np.ndarray | None = None,
                        device=None) -> np.ndarray:
    """The (N, m) kNN table of a workspace's features, mined once and cached (stage ``knn``)."""
    from cedm.clusters.temi import EXACT_KNN_LIMIT, mine_neighbors

    m = int(min(m, ws.n - 1))
    params = {**_features_key(backbone, weights), "m": m, "exact": ws.n <= EXACT_KNN_LIMIT}
    found = ws.find_artifact(STAGE_KNN, params)
    if found is not None:
        return io.load_npy(found / "neighbors.npy")
    feats = workspace_features(ws, backbone, weights) if feats is None else feats
    nbrs = mine_neighbors(feats, m, device=device)
    with ws.write_artifact(STAGE_KNN, params) as d:
        io.save_npy(d / "neighbors.npy", nbrs)
    return nbrs


# --- clustering a workspace ----------------------------------------------------------------------
def kmeans_method(method: str, kmeans_metric: str | None = None) -> str:
    """'kmeans' (Euclidean) or 'skmeans' (spherical) for a k-means request; other methods unchanged."""
    if method != "kmeans":
        if kmeans_metric is not None and method != "skmeans":
            raise CedmError("--kmeans-metric applies to k-means only")
        return method
    from cedm.clusters.kmeans import check_metric
    return "skmeans" if check_metric(kmeans_metric) == "spherical" else "kmeans"


def spec_method(params: dict) -> str:
    """The spec name of a cached clustering's params: k-means without a recorded metric is spherical (keys
    written before the metric existed, e.g. the shipped demo's clusterings, stay addressable as skmeans:C)."""
    if params.get("method") == "kmeans" and "metric" not in params:
        return "skmeans"
    return params.get("method")


def cluster_params(ws, method: str, n_clusters: int, backbone=None, weights=None, seed: int = 0, device=None,
                   kmeans_metric: str | None = None, **temi_kw) -> dict:
    """The cache key of a clustering: everything that changes its result."""
    from cedm.device import resolve_device

    temi_kw = {k: v for k, v in temi_kw.items() if v is not None}
    if method not in METHODS:
        raise CedmError(f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}")
    method = kmeans_method(method, kmeans_metric)
    from cedm.clusters.result import check_n_clusters
    # spherical k-means keeps the key it had before the metric existed: method 'kmeans', no 'metric'
    params = {"method": "kmeans" if method == "skmeans" else method,
              "n_clusters": check_n_clusters(n_clusters, ws.n), "seed": int(seed), **_features_key(backbone, weights)}
    if method == "kmeans":
        params["metric"] = "euclidean"
    if method == "temi":
        from cedm.clusters.temi import resolve_settings
        settings = resolve_settings(resolve_device(device), seed=int(seed), **temi_kw)
        params["temi"] = settings
    elif temi_kw:
        raise CedmError(f"k-means takes no TEMI settings ({', '.join(sorted(temi_kw))})")
    return params


def find_clusters(ws, method: str, n_clusters: int, **kw) -> Path | None:
    """The cached artifact folder of a clustering, or None (nothing is computed)."""
    return ws.find_artifact(STAGE_CLUSTERS, cluster_params(ws, method, n_clusters, **kw))


def cluster_workspace(ws, method: str, n_clusters: int, backbone=None, weights=None, seed: int = 0,
                      device=None, progress=None, kmeans_metric: str | None = None, **temi_kw) -> ClusterResult:
    """Cluster a workspace's features (cached). ``temi_kw``: TemiConfig settings (heads, epochs, gamma, ...)."""
    params = cluster_params(ws, method, n_clusters, backbone, weights, seed, device, kmeans_metric, **temi_kw)
    method = spec_method(params)
    found = ws.find_artifact(STAGE_CLUSTERS, params)
    if found is not None:
        return load_clusters(found)
    # raw embeddings: TEMI heads and Euclidean k-means take them as they are (the official code's inputs)
    feats = workspace_features(ws, backbone, weights, normalized=False)
    if len(feats) != ws.n:
        raise CedmError(f"features have {len(feats)} rows but the workspace has {ws.n} images")
    if method in ("kmeans", "skmeans"):
        from cedm.clusters.kmeans import kmeans
        res = kmeans(feats, n_clusters, seed=seed, metric="spherical" if method == "skmeans" else "euclidean")
    else:
        from cedm.clusters.temi import temi
        settings = params["temi"]
        nbrs = workspace_neighbors(ws, backbone, weights, settings["knn"], feats=feats,
                                   device=resolve_device(device))
        # the training state goes to the workspace's scratch folder: an interrupted run resumes from it
        state = ws.scratch_dir(STAGE_CLUSTERS, params) / "temi-state.safetensors"
        res = temi(feats, n_clusters, neighbors=nbrs, device=device, progress=progress, checkpoint=state,
                   **settings)
    with ws.write_artifact(STAGE_CLUSTERS, params, info={"info": res.info, "n_used": res.n_used}) as d:
        io.save_npy(d / "assignments.npy", res.assignments)
        io.save_npy(d / "confidence.npy", res.confidence)
        if res.centroids is not None:
            io.save_npy(d / "centroids.npy", res.centroids.astype(np.float32))
        if res.probs is not None:
            io.save_npy(d / "probs.npy", res.probs.astype(np.float32))
            from cedm.clusters.temi import save_head
            save_head(res.head, d / "head", temperature=res.params["teacher_temp"])
    ws.clear_scratch(STAGE_CLUSTERS, params)
    res.params, res.artifact = params, ws.find_artifact(STAGE_CLUSTERS, params)
    return res


def load_clusters(folder: Path) -> ClusterResult:
    meta = io.read_json(folder / "meta.json")
    params = meta["params"]
    head = None
    if (folder / "head.safetensors").is_file():
        from cedm.clusters.temi import load_head
        head, _ = load_head(folder / "head")
    opt = lambda name: io.load_npy(folder / name) if (folder / name).is_file() else None  # noqa: E731
    return ClusterResult(method=spec_method(params), n_clusters=int(params["n_clusters"]),
                         assignments=io.load_npy(folder / "assignments.npy"),
                         confidence=io.load_npy(folder / "confidence.npy"),
                         centroids=opt("centroids.npy"), probs=opt("probs.npy"), head=head, params=params,
                         info=meta.get("info", {}), artifact=folder)


def list_clusterings(ws) -> list[dict]:
    """Params (plus artifact folder and C_u) of every cached clustering of a workspace, oldest first; 'method'
    is the spec's method name (``skmeans`` for spherical k-means)."""
    return [{**m["params"], "method": spec_method(m["params"]), "n_used": m.get("n_used"), "artifact": str(p)}
            for p, m in ws.list_artifacts(STAGE_CLUSTERS)]


# --- labelings -----------------------------------------------------------------------------------
@dataclass
class Labeling:
    name: str                                  # spec it came from, e.g. 'temi:100', 'gt', 'labels:clip'
    labels: np.ndarray                         # int64 (N,), -1 = no label
    class_names: list[str] | None = None
    probs: np.ndarray | None = None            # (N, K) float32 when available (TEMI, CLIP)
    confidence: np.ndarray | None = None       # (N,) float32 when available
    original_ids: np.ndarray | None = None     # after compact(): id k here is original_ids[k] in the source
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max(initial=-1) + 1)

    @property
    def q(self) -> np.ndarray:
        """Empirical distribution of the ids over labelled rows (what generation samples from)."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=self.n_classes).astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    def compact(self) -> "Labeling":
        """Renumber away ids no image has (empty clusters), keeping the mapping in ``original_ids``."""
        used = np.unique(self.labels[self.labels >= 0])
        if len(used) == 0:
            raise CedmError(f"labeling {self.name!r} labels no image")
        new_of_old = np.full(max(self.n_classes, int(used.max()) + 1), -1, dtype=np.int64)
        new_of_old[used] = np.arange(len(used))
        labels = np.where(self.labels >= 0, new_of_old[np.maximum(self.labels, 0)], -1).astype(np.int64)
        base = self.original_ids if self.original_ids is not None else np.arange(len(new_of_old))
        return replace(self, labels=labels, original_ids=base[used],
                       class_names=[self.class_names[i] for i in used] if self.class_names else None,
                       probs=self.probs[:, used] if self.probs is not None else None)


def from_clusters(res: ClusterResult, name: str | None = None) -> Labeling:
    return Labeling(name=name or f"{res.method}:{res.n_clusters}", labels=res.assignments.astype(np.int64),
                    class_names=[f"cluster {i}" for i in range(res.n_clusters)], probs=res.probs,
                    confidence=res.confidence, meta={"params": res.params})


def save_labeling(ws, name: str, labels, class_names: list[str] | None = None, probs=None,
                  params: dict | None = None) -> Path:
    """Store a named labeling (e.g. CLIP pseudo-labels) for ``labels:NAME``; replaces one of the same name."""
    _check_label_name(name, "labeling")
    labels = np.asarray(labels)
    if labels.shape != (ws.n,) or not np.issubdtype(labels.dtype, np.integer):
        raise CedmError(f"labels must be {ws.n} integers (one per image), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    k = len(class_names) if class_names is not None else int(labels.max(initial=-1) + 1)
    if labels.min(initial=0) < -1 or labels.max(initial=-1) >= k:
        raise CedmError(f"labels must lie in [-1, {k - 1}] for {k} classes")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (ws.n, k):
            raise CedmError(f"probs must have shape ({ws.n}, {k}), got {probs.shape}")
    info = {"class_names": list(class_names) if class_names is not None else None, "details": params or {}}
    with ws.write_artifact(STAGE_LABELINGS, {"name": name}, info=info) as d:
        io.save_npy(d / "labels.npy", labels)
        if probs is not None:
            io.save_npy(d / "probs.npy", probs)
    return ws.find_artifact(STAGE_LABELINGS, {"name": name})


def load_labeling(ws, name: str) -> Labeling:
    found = ws.find_artifact(STAGE_LABELINGS, {"name": name})
    if found is None:
        known = ", ".join(list_labelings(ws)) or "none"
        raise CedmError(f"no labeling named {name!r} in workspace {ws.name!r} (saved: {known})")
    meta = io.read_json(found / "meta.json")
    probs = io.load_npy(found / "probs.npy") if (found / "probs.npy").is_file() else None
    return Labeling(name=f"labels:{name}", labels=io.load_npy(found / "labels.npy"),
                    class_names=meta.get("class_names"), probs=probs,
                    confidence=probs.max(1) if probs is not None else None, meta=meta.get("details", {}))


def list_labelings(ws) -> list[str]:
    return sorted({m["params"]["name"] for _, m in ws.list_artifacts(STAGE_LABELINGS)})


# --- named row sets (selections, few-shot picks) -------------------------------------------------
def _check_label_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CedmError(f"invalid {what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def save_rows(ws, name: str, rows, note: str = "") -> Path:
    """Store a named set of image rows (``rows:NAME``); replaces a set of the same name."""
    _check_label_name(name, "row set")
    try:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise CedmError("rows must be integer row numbers") from None
    if len(rows) == 0:
        raise CedmError(f"row set {name!r} is empty: pick at least one image")
    if rows.min() < 0 or rows.max() >= ws.n:
        raise CedmError(f"rows must lie in [0, {ws.n - 1}] for workspace {ws.name!r}")
    rows = np.unique(rows)
    with ws.write_artifact(STAGE_ROWSETS, {"name": name}, info={"n_rows": int(len(rows)), "note": note}) as d:
        io.save_npy(d / "rows.npy", rows)
    return ws.find_artifact(STAGE_ROWSETS, {"name": name})


def rows_from_paths(ws, paths) -> np.ndarray:
    """Rows of the given source paths (as in ``ws.paths``); unknown paths are a CedmError naming them."""
    index = {p: i for i, p in enumerate(ws.paths)}
    wanted = [str(p).strip() for p in paths if str(p).strip()]
    missing = [p for p in wanted if p not in index]
    if missing:
        raise CedmError(f"{len(missing)} path(s) are not in workspace {ws.name!r}, e.g. {missing[0]!r}")
    return np.array(sorted({index[p] for p in wanted}), dtype=np.int64)


def load_rows(ws, name: str) -> np.ndarray:
    found = ws.find_artifact(STAGE_ROWSETS, {"name": name})
    if found is None:
        known = ", ".join(list_row_sets(ws)) or "none"
        raise CedmError(f"no row set named {name!r} in workspace {ws.name!r} (saved: {known})")
    return io.load_npy(found / "rows.npy")


def list_row_sets(ws) -> list[str]:
    return sorted({m["params"]["name"] for _, m in ws.list_artifacts(STAGE_ROWSETS)})


def rows_labeling(ws, name: str) -> Labeling:
    """Two classes: 0 = the rest, 1 = the rows of set ``name``."""
    labels = np.zeros(ws.n, dtype=np.int64)
    labels[load_rows(ws, name)] = 1
    return Labeling(name=f"rows:{name}", labels=labels, class_names=["rest", name])


def resolve(ws, spec: str, backbone=None, weights=None, seed: int = 0, device=None, progress=None,
            **temi_kw) -> Labeling:
    """The compacted Labeling for ``spec`` (kmeans:C, skmeans:C, temi:C, gt, labels:NAME); clusters are computed
    if needed."""
    spec = str(spec).strip()
    method, _, arg = spec.partition(":")
    if spec == "gt":
        gt = ws.ground_truth
        if gt is None or not (gt.labels >= 0).any():
            raise CedmError(f"workspace {ws.name!r} has no ground-truth labels")
        return Labeling(name="gt", labels=gt.labels, class_names=list(gt.names)).compact()
    if method == "labels" and arg:
        return load_labeling(ws, arg).compact()
    if method == "rows" and arg:
        return rows_labeling(ws, arg)
    if method == "self" and "@" in arg:
        return self_labeling(ws, spec)
    if method in METHODS:
        try:
            c = int(arg)
        except ValueError:
            raise CedmError(f"bad labeling {spec!r}: expected {method}:C with an integer C") from None
        res = cluster_workspace(ws, method, c, backbone=backbone, weights=weights, seed=seed, device=device,
                                progress=progress, **temi_kw)
        return from_clusters(res, spec).compact()
    raise CedmError(f"unknown labeling {spec!r}: use kmeans:C, skmeans:C, temi:C, gt, labels:NAME, rows:NAME "
                     "or self:K@MODEL")


def self_label_specs(ws) -> list[str]:
    """The ``self:K@MODEL`` labelings of ``ws``: one per online self-guided model trained on it that has saved
    its assignments (what the Clusters tab offers to browse)."""
    from cedm.model.registry import list_models
    from cedm.model.self_guidance import LABELS_FILE, parse_spec

    specs = []
    for entry in list_models(ws, shipped_dirs=()):
        k = parse_spec(entry.condition_spec or "")
        if k is not None and (entry.path / LABELS_FILE).is_file():
            specs.append(f"self:{k}@{entry.name.split('/', 1)[-1]}")
    return specs


def labeling_clusters(ws, spec: str, backbone=None, weights=None, progress=None) -> ClusterResult:
    """A labeling that is not a clustering of features (``self:K@MODEL``: the model's own prototypes) as a
    ClusterResult, so that it can be browsed and queried like one: its ids as they are (K clusters, unused
    ones included, so r_C = used / K), the mean L2-normalised ``backbone`` feature of each cluster as its
    centroid, and each image's cosine to its cluster's centroid as its confidence."""
    lab = resolve(ws, spec)
    ids = lab.original_ids if lab.original_ids is not None else np.arange(lab.n_classes)
    if (lab.labels < 0).any():
        raise CedmError(f"{spec} leaves {int((lab.labels < 0).sum())} images without a cluster")
    assignments = np.asarray(ids, np.int64)[lab.labels]
    method, _, arg = spec.partition(":")
    k = int(arg.partition("@")[0]) if method == "self" else int(ids.max()) + 1
    from cedm import features

    feats = features.get_features(ws, resolve_backbone(backbone), weights=weights, progress=progress)
    centroids = np.zeros((k, feats.shape[1]), np.float32)
    np.add.at(centroids, assignments, feats)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    confidence = np.einsum("nd,nd->n", feats, centroids[assignments]).astype(np.float32)
    return ClusterResult(method=method, n_clusters=k, assignments=assignments, confidence=confidence,
                         centroids=centroids, params={"spec": spec, **_features_key(backbone, weights)},
                         info={"labeling": lab.meta})


def self_labeling(ws, spec: str) -> Labeling:
    """``self:K@MODEL``: the per-image prototypes saved by an online self-guided model of this workspace."""
    from cedm.model.registry import find_model, list_models
    from cedm.model.self_guidance import LABELS_FILE

    k_text, _, model = spec.partition(":")[2].partition("@")
    try:
        k = int(k_text)
    except ValueError:
        raise CedmError(f"bad labeling {spec!r}: expected self:K@MODEL with an integer K") from None
    name = model if "/" in model else f"{ws.name}/{model}"
    entry = find_model(list_models(ws, shipped_dirs=()), name)
    path = entry.path / LABELS_FILE
    if entry.condition_spec != f"self:{k}" or not path.is_file():
        raise CedmError(f"model {name!r} is not a self:{k} model with saved assignments")
    labels = io.load_npy(path).astype(np.int64)
    if labels.shape != (ws.n,):
        raise CedmError(f"model {name!r} was trained on other images ({len(labels)} rows, workspace has {ws.n})")
    return Labeling(name=spec, labels=labels, class_names=[f"prototype {i}" for i in range(k)],
                    meta={"model": name, "utilization": entry.info.get("condition", {}).get("utilization")}
                    ).compact()

"""Pseudo-labels for a workspace (CLIP zero-shot, or the offline ImageNet classifier) and how two labelings
compare, which is also how clusters get names ("cluster 17: face-smiling 64%, ...").

CLIP zero-shot (C-EDM paper sec. 4.4): every label name k gets the text embedding

    t_k = normalize( mean_p normalize(text(prompt_p(name_k))) )      over the five PROMPTS

and image i the pseudo-label argmax_k of p(k|i) = softmax_k(s * <normalize(image_i), t_k>), s = the model's
logit scale (100 for trained CLIP). The image embeddings are the feature-cache entries of the CLIP image
tower (``clip_vitb32`` for the default model), so they are computed once, resumably, with the same
preprocessing as every backbone, and re-labelling with other names only costs the text tower (the cache
stores float16, which moves a cosine similarity by well under 1e-3).

ImageNet classifier labels: the 1000-class head of the offline EfficientNet-Lite0, applied to the cached
``efficientnet_lite0`` features (its pooled pre-logits), so they work with no network at all.

Both are saved as named workspace labelings, so ``labels:NAME`` works wherever a clustering does (comparison,
``cedm train --condition labels:NAME``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from cedm import io
from cedm.clusters import metrics
from cedm.clusters.labelings import (STAGE_LABELINGS, Labeling, list_labelings, load_labeling, resolve,
                                     save_labeling)
from cedm.errors import CedmError

PROMPTS = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of many {}.", "a photo of the large {}.",
           "a photo of the small {}.")
DEFAULT_MODEL = "ViT-B-32"
# open_clip has no default weights per model; these are the usual LAION-2B ones (bigG/14 is the paper's)
DEFAULT_TAGS = {"ViT-B-32": "laion2b_s34b_b79k", "ViT-B-16": "laion2b_s34b_b88k", "ViT-L-14": "laion2b_s32b_b82k",
                "ViT-H-14": "laion2b_s32b_b79k", "ViT-bigG-14": "laion2b_s39b_b160k"}
IMAGENET_NAME = "imagenet"
TOP_K = 5
FORMAT_VERSION = 1
Progress = Callable[[int, int, str], None]


# --- label names ------------------------------------------------------------------------------------
def check_names(names) -> list[str]:
    """Strip, drop empty entries, and insist on at least two distinct names."""
    if isinstance(names, str):
        names = names.split(",")
    out = [str(n).strip() for n in names if str(n).strip()]
    if len(out) < 2:
        raise CedmError(f"zero-shot labels need at least 2 label names, got {len(out)}")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise CedmError(f"label names must be distinct; repeated: {', '.join(dup[:5])}")
    return out


def read_names_file(path: str | os.PathLike) -> list[str]:
    """Label names from a UTF-8 text file, one per line (blank lines and lines starting with '#' skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CedmError(f"names file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise CedmError(f"cannot read names file {str(p)!r} as UTF-8 text ({e})") from None
    return check_names([ln for ln in text.splitlines() if not ln.lstrip().startswith("#")])


def ground_truth_names(ws) -> tuple[list[str], list[str]]:
    """(label names, prompt names) from the workspace's ground-truth class names ('-' read as a space, so the
    demo's 'face-smiling' is prompted as 'a photo of a face smiling.'). Ground truth only names the labels."""
    gt = ws.ground_truth
    if gt is None or not gt.names:
        raise CedmError(f"workspace {ws.name!r} has no ground-truth class names; give --names or --names-file")
    names = check_names(gt.names)
    return names, [n.replace("-", " ") for n in names]


# --- open_clip models ---------------------------------------------------------------------------------
def _model_config(model: str) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise CedmError(f"unknown open_clip model {model!r} (e.g. ViT-B-32, ViT-L-14, ViT-bigG-14; "
                        "see open_clip.list_models())")
    return cfg


def resolve_tag(model: str, pretrained: str | None, weights=None, random_init: bool = False) -> str | None:
    """The open_clip pretrained tag whose weights (or, with a weights file, preprocessing) are used."""
    import open_clip

    if weights is not None or random_init:
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model)
    tag = pretrained or DEFAULT_TAGS.get(model) or (tags[0] if tags else None)
    if tag is None:
        raise CedmError(f"open_clip has no published weights for {model!r}: pass a weights file with --weights PATH")
    if tag not in tags:
        raise CedmError(f"open_clip has no weights {tag!r} for {model!r} (available: {', '.join(tags)})")
    return tag


def _pretrained_cfg(model: str, tag: str | None) -> dict:
    from open_clip.pretrained import get_pretrained_cfg
    return get_pretrained_cfg(model, tag) if tag else {}


def clip_offline_message(model: str, tag: str | None, error: Exception | None = None) -> str:
    """One sentence: why the CLIP weights are missing and what to do instead."""
    from cedm import hub

    return hub.missing_message(f"the open_clip {model} ({tag}) weights", "use ImageNet classifier labels with "
                               "--imagenet or pass a local weights file with --weights PATH", error)


def _create(model: str, tag: str | None):
    """A randomly initialised open_clip model (weights are loaded afterwards)."""
    import open_clip

    quick_gelu = bool(_pretrained_cfg(model, tag).get("quick_gelu", False))
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"
    try:
        return open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        logging.disable(previous)


def _fetch(model: str, tag: str):
    """The whole CLIP checkpoint's file (cedm.hub.WeightsFile): the HF cache, or a download the policy allows."""
    from cedm import hub
    from cedm.features.backbones import clip_hub

    return hub.hub_file(*clip_hub(model, tag)())


def image_backbone(model: str, tag: str | None) -> str:
    """The feature-registry name of this CLIP image tower, registering it on first use.

    The default pair is the registry's ``clip_vitb32`` (so its features are shared with ``cedm features``)."""
    from cedm.features import backbones as bb

    if model == bb.CLIP_ARCH and tag in (bb.CLIP_TAG, None):
        return "clip_vitb32"
    name = f"clip:{model}:{tag}" if tag else f"clip:{model}"
    if name in bb.list_backbones():
        return name
    cfg, pre = _model_config(model), _pretrained_cfg(model, tag)
    pre = {**cfg.get("preprocess_cfg", {}), **pre}
    size = cfg["vision_cfg"].get("image_size", 224)
    bb.register(bb.BackboneSpec(
        name=name, summary=f"OpenCLIP {model} image tower ({tag or 'weights file'}), projected embedding",
        feature_dim=int(cfg["embed_dim"]), input_size=int(size if isinstance(size, int) else size[0]),
        interpolation=pre.get("interpolation", "bicubic"), mean=tuple(pre.get("mean", bb.OPENAI_CLIP_MEAN)),
        std=tuple(pre.get("std", bb.OPENAI_CLIP_STD)), weights_source=f"open_clip:{model}/{tag}",
        create=lambda: _create(model, tag).visual, embed=lambda net, x: net(x),
        hub_ref=bb.clip_hub(model, tag) if tag else None, adapt_state_dict=bb._clip_adapt))
    return name


def load_clip(model: str = DEFAULT_MODEL, tag: str | None = None, weights=None, device=None,
              random_init: bool = False):
    """(open_clip model in eval mode on ``device``, its tokenizer). Weights: a local file, the HF cache or a
    download cedm.hub's policy allows, or a reproducible random initialisation; missing weights give a
    one-sentence CedmError naming the alternatives. ``model.weights_record`` says which exact file was used."""
    import open_clip
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    from cedm import hub
    from cedm.device import resolve_device
    from cedm.features import backbones as bb

    dev = resolve_device(device) if not hasattr(device, "type") else device
    _model_config(model)
    sd, what = None, f"the open_clip {model} ({tag}) weights"
    record = {"source": "random-init", "seed": bb.RANDOM_INIT_SEED}
    if weights is not None:
        sd, what = bb.read_weights_file(weights), f"weights file {str(weights)!r}"
        record = hub.file_record(Path(weights).expanduser()).record()
    elif not random_init:
        try:
            wf = _fetch(model, tag)
        except (hub.DownloadsOff, hub.DownloadFailed, OSError, TimeoutError) as e:
            raise CedmError(clip_offline_message(model, tag, e)) from None
        sd, record = bb.read_weights_file(wf.path), wf.record()
    net = bb._random_init(lambda: _create(model, tag))
    if sd is not None:
        # the same conversions open_clip's own loader applies (older layouts, other position-grid sizes)
        sd = convert_state_dict(net, sd)
        if "logit_scale" in sd and sd["logit_scale"].ndim != net.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(net.logit_scale.shape)
        sd.pop("text.transformer.embeddings.position_ids", None)
        resize_pos_embed(sd, net)
        resize_text_pos_embed(sd, net)
        bb.load_state_dict_strict(net, sd, what)
    try:
        tokenizer = open_clip.get_tokenizer(model)
    except (OSError, ValueError) as e:  # hub tokenizers (non-CLIP text towers) need the internet
        raise CedmError(f"the tokenizer of {model} could not be loaded ({e}); use --imagenet") from None
    net.weights_record = record
    return net.eval().requires_grad_(False).to(dev), tokenizer


def text_embeddings(net, tokenizer, prompt_names: list[str], batch_size: int = 256):
    """(K, D) float32 tensor: per name, the mean of its normalised prompt embeddings, renormalised."""
    import torch
    import torch.nn.functional as F

    texts = [p.format(n) for n in prompt_names for p in PROMPTS]
    dev = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            out.append(net.encode_text(tokenizer(texts[s:s + batch_size]).to(dev)).float())
        emb = F.normalize(torch.cat(out), dim=-1).view(len(prompt_names), len(PROMPTS), -1)
        return F.normalize(emb.mean(1), dim=-1)


def zero_shot_probs(image_emb, text_emb, logit_scale: float = 100.0, chunk: int = 8192) -> np.ndarray:
    """(N, K) float32 softmax(logit_scale * image . text); image rows are L2-normalised here."""
    import torch
    import torch.nn.functional as F

    text = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
    image = np.asarray(image_emb, dtype=np.float32)
    if image.ndim != 2 or image.shape[1] != text.shape[1]:
        raise CedmError(f"image embeddings {image.shape} do not match text embeddings {tuple(text.shape)}")
    out = np.empty((len(image), len(text)), dtype=np.float32)
    for s in range(0, len(image), chunk):
        x = F.normalize(torch.from_numpy(image[s:s + chunk]), dim=-1)
        out[s:s + chunk] = torch.softmax(float(logit_scale) * x @ text.T, dim=1).numpy()
    return out


def _cached(ws, name: str, details: dict) -> Labeling | None:
    found = ws.find_artifact(STAGE_LABELINGS, {"name": name})
    if found is None:
        return None
    stored = io.read_json(found / "meta.json").get("details") or {}
    # the stored details hold these keys plus what was measured (e.g. the logit scale)
    return load_labeling(ws, name) if all(stored.get(k) == v for k, v in details.items()) else None


def clip_pseudo_labels(ws, names, model: str | None = None, pretrained: str | None = None, weights=None,
                       device=None, batch_size: int | None = None, progress: Progress | None = None,
                       save_as: str | None = None, prompt_names: list[str] | None = None,
                       _random_init: bool = False) -> Labeling:
    """CLIP zero-shot pseudo-labels of every image over ``names``, saved as labeling ``save_as``
    (default ``clip-<model>``) with the full probability rows; cached by (names, model, weights identity).

    ``pretrained``: the open_clip weights tag (default: the LAION-2B weights of ``model``); ``weights``: a local
    file instead (safetensors or a plain torch file); ``prompt_names``: how each name reads inside the
    prompts (default: the names themselves). ``model``: default DEFAULT_MODEL (ViT-B-32; ViT-bigG-14 is the
    paper's). The labeling's details record the exact weights file (repo, commit, sha256) used.
    """
    from cedm import hub
    from cedm.features import get_features, weights_identity

    model = model or DEFAULT_MODEL
    names = check_names(names)
    prompt_names = check_names(prompt_names) if prompt_names is not None else names
    if len(prompt_names) != len(names):
        raise CedmError(f"{len(prompt_names)} prompt names for {len(names)} labels")
    tag = resolve_tag(model, pretrained, weights, _random_init)
    save_as = save_as or "clip-" + "".join(c if c.isalnum() or c in "._-" else "-" for c in model)
    backbone = image_backbone(model, tag)  # the image tower's entry in the feature cache
    details = {"kind": "clip", "model": model, "pretrained": tag, "backbone": backbone,
               "weights": weights_identity(backbone, weights, pretrained=not _random_init), "names": names,
               "prompt_names": prompt_names, "prompts": list(PROMPTS), "version": FORMAT_VERSION}
    hit = _cached(ws, save_as, details)
    if hit is not None:
        return hit
    with hub.download_progress(progress):  # fails (offline, bad file) before anything is written
        net, tokenizer = load_clip(model, tag, weights, device, _random_init)
    text = text_embeddings(net, tokenizer, prompt_names).cpu().numpy()
    scale, record = float(net.logit_scale.exp()), net.weights_record
    del net
    image = get_features(ws, backbone, weights=weights, device=device, batch_size=batch_size,
                         normalized=True, progress=progress, pretrained=not _random_init)
    probs = zero_shot_probs(image, text, scale)
    save_labeling(ws, save_as, probs.argmax(1), class_names=names, probs=probs,
                  params={**details, "logit_scale": scale, "weights_file": record})
    return load_labeling(ws, save_as)


# --- ImageNet classifier labels (offline) ---------------------------------------------------------------
def imagenet_labels(ws, device=None, progress: Progress | None = None, batch_size: int | None = None) -> Labeling:
    """"ImageNet classifier labels": top-1 of EfficientNet-Lite0's 1000-class head as labeling ``imagenet``;
    the top-5 ids and probabilities are kept in the artifact (see :func:`imagenet_top5`)."""
    import torch

    from cedm.features import OFFLINE_BACKBONE, get_features, load_imagenet_classifier, weights_identity

    details = {"kind": "imagenet", "backbone": OFFLINE_BACKBONE, "weights": weights_identity(OFFLINE_BACKBONE),
               "top_k": TOP_K, "version": FORMAT_VERSION}
    hit = _cached(ws, IMAGENET_NAME, details)
    if hit is not None:
        return hit
    clf = load_imagenet_classifier(device="cpu")
    feats = get_features(ws, OFFLINE_BACKBONE, device=device, batch_size=batch_size, normalized=False,
                         progress=progress)
    head = clf.backbone.net.classifier.float()  # logits = W pooled + b: the classifier's last layer
    ids = np.empty((ws.n, TOP_K), dtype=np.int16)
    top = np.empty((ws.n, TOP_K), dtype=np.float16)
    with torch.inference_mode():
        for s in range(0, ws.n, 4096):
            p = torch.softmax(head(torch.from_numpy(feats[s:s + 4096])), dim=1)
            v, i = p.topk(TOP_K, dim=1)
            ids[s:s + 4096], top[s:s + 4096] = i.numpy(), v.numpy()
    info = {"class_names": list(clf.class_names), "details": details}
    with ws.write_artifact(STAGE_LABELINGS, {"name": IMAGENET_NAME}, info=info) as d:
        io.save_npy(d / "labels.npy", ids[:, 0].astype(np.int64))
        io.save_npy(d / "top5_ids.npy", ids)
        io.save_npy(d / "top5_probs.npy", top)
    return load_labeling(ws, IMAGENET_NAME)


def imagenet_top5(ws) -> tuple[np.ndarray, np.ndarray]:
    """(ids int16 (N, 5), probabilities float16 (N, 5)) of the saved ImageNet classifier labels."""
    found = ws.find_artifact(STAGE_LABELINGS, {"name": IMAGENET_NAME})
    if found is None or not (found / "top5_ids.npy").is_file():
        raise CedmError(f"workspace {ws.name!r} has no ImageNet classifier labels yet (cedm labels --imagenet)")
    return io.load_npy(found / "top5_ids.npy"), io.load_npy(found / "top5_probs.npy")


# --- comparing labelings, naming clusters -----------------------------------------------------------------
def _original_ids(lab: Labeling) -> np.ndarray:
    return lab.original_ids if lab.original_ids is not None else np.arange(lab.n_classes)


def compare_labelings(ws, a_spec: str, b_spec: str, **resolve_kw) -> dict:
    """NMI, AMI, ARI, Hungarian accuracy, the contingency table (rows: a's used ids, columns: b's) and the
    sizes, between two labelings (kmeans:C, temi:C, gt, labels:NAME). ``resolve_kw``: backbone, seed, ..."""
    a, b = resolve(ws, a_spec, **resolve_kw), resolve(ws, b_spec, **resolve_kw)
    table, rows, cols = metrics.contingency(a.labels, b.labels)
    ids_a, ids_b = _original_ids(a), _original_ids(b)
    return {"a": a_spec, "b": b_spec, **metrics.compare(a.labels, b.labels), "contingency": table,
            "a_ids": ids_a[rows].tolist(), "b_ids": ids_b[cols].tolist(),
            "a_names": [a.class_names[i] for i in rows] if a.class_names else None,
            "b_names": [b.class_names[j] for j in cols] if b.class_names else None,
            "a_sizes": table.sum(1).tolist(), "b_sizes": table.sum(0).tolist()}


def top_labels(clusters, labels, label_names: list[str], top: int = 3) -> dict[int, list[tuple[str, float]]]:
    """Per cluster id in ``clusters``: its ``top`` most common labels and their shares of the cluster's images
    (images without a label in either are left out). Clusters with no labelled image get an empty list."""
    clusters, labels = np.asarray(clusters, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    out: dict[int, list[tuple[str, float]]] = {int(c): [] for c in np.unique(clusters[clusters >= 0])}
    keep = (clusters >= 0) & (labels >= 0)
    if not keep.any():
        return out
    table, rows, cols = metrics.contingency(clusters[keep], labels[keep])
    for r, c in enumerate(rows):
        counts = table[r]
        order = np.lexsort((cols, -counts))[:top]  # most common first, ties by label id
        out[int(c)] = [(label_names[cols[j]], float(counts[j] / counts.sum())) for j in order if counts[j] > 0]
    return out


def cluster_names(ws, cluster_spec: str, label_spec: str, top: int = 3,
                  **resolve_kw) -> dict[int, list[tuple[str, float]]]:
    """{cluster id: [(label name, share), ...]}: each cluster of ``cluster_spec`` named by its ``top`` most
    common labels of ``label_spec`` (e.g. cluster_names(ws, 'kmeans:100', 'labels:imagenet'))."""
    clusters, labels = resolve(ws, cluster_spec, **resolve_kw), resolve(ws, label_spec, **resolve_kw)
    names = labels.class_names or [str(i) for i in _original_ids(labels)]
    found = top_labels(clusters.labels, labels.labels, names, top)
    ids = _original_ids(clusters)
    return {int(ids[k]): v for k, v in found.items()}


def describe(cluster, names: list[tuple[str, float]]) -> str:
    """'cluster 17: face-smiling 64%, face-affection 20%, ...' for a cluster id (or 'alphanum: ...' for a title);
    ImageNet names are shortened to their first synonym."""
    title = f"cluster {cluster}" if isinstance(cluster, (int, np.integer)) else str(cluster)
    parts = [f"{n.split(',')[0].strip()} {round(100 * s)}%" for n, s in names]
    return f"{title}: " + (", ".join(parts) if parts else "(no labelled image)")


def label_counts(lab: Labeling) -> list[tuple[str, int]]:
    """(name, count) of every used label, most common first."""
    counts = np.bincount(lab.labels[lab.labels >= 0], minlength=lab.n_classes)
    names = lab.class_names or [str(i) for i in range(lab.n_classes)]
    order = np.lexsort((np.arange(len(counts)), -counts))
    return [(names[i], int(counts[i])) for i in order if counts[i] > 0]


__all__ = ["PROMPTS", "DEFAULT_MODEL", "IMAGENET_NAME", "check_names", "read_names_file", "ground_truth_names",
           "load_clip", "text_embeddings", "zero_shot_probs", "clip_pseudo_labels", "imagenet_labels",
           "imagenet_top5", "compare_labelings", "top_labels", "cluster_names", "describe", "label_counts",
           "list_labelings"]


# --- cluster names: guessed from a labeling (said so), or given by the user ----------------------------------
STAGE_NAMES = "cluster_names"
NAME_THRESHOLD = 0.7  # a guessed name is shown only when at least this share of the cluster carries the label


def label_source(ws, label_spec: str) -> str:
    """Where names of ``label_spec`` come from, as a reader should see it: 'ImageNet guess', 'CLIP guess',
    'ground truth' or 'labels NAME'."""
    if label_spec == "gt":
        return "ground truth"
    name = label_spec.split(":", 1)[1] if label_spec.startswith("labels:") else label_spec
    found = [m for _, m in ws.list_artifacts(STAGE_LABELINGS) if m["params"].get("name") == name]
    kind = (found[-1].get("details", {}).get("kind") if found else None) or \
        ("imagenet" if name == IMAGENET_NAME else None)
    return {"imagenet": "ImageNet guess", "clip": "CLIP guess"}.get(kind, f"labels {name}")


def _names_params(ws, cluster_spec: str, backbone=None) -> dict:
    from cedm.clusters.labelings import resolve_backbone

    return {"clustering": str(cluster_spec), "backbone": resolve_backbone(backbone)}


def cluster_renames(ws, cluster_spec: str, backbone=None) -> dict[int, str]:
    """The names the user gave clusters of ``cluster_spec`` (on ``backbone`` features): {cluster id: name}."""
    found = ws.find_artifact(STAGE_NAMES, _names_params(ws, cluster_spec, backbone))
    if found is None:
        return {}
    return {int(k): str(v) for k, v in io.read_json(found / "names.json").items()}


def rename_cluster(ws, cluster_spec: str, cluster: int, name: str | None, backbone=None) -> dict[int, str]:
    """Give cluster ``cluster`` of ``cluster_spec`` a name (kept in the workspace; an empty name removes it).
    Returns all names of that clustering."""
    clusters = resolve(ws, cluster_spec, backbone=backbone)
    ids = {int(i) for i in _original_ids(clusters)}
    try:
        cluster = int(cluster)
    except (TypeError, ValueError):
        raise CedmError(f"choose a cluster to rename, got {cluster!r}") from None
    if cluster not in ids:
        raise CedmError(f"cluster {cluster} is not a cluster of {cluster_spec}")
    name = " ".join(str(name or "").split())
    if len(name) > 60:
        raise CedmError("a cluster name has at most 60 characters")
    names = cluster_renames(ws, cluster_spec, backbone)
    if name:
        names[cluster] = name
    else:
        names.pop(cluster, None)
    with ws.write_artifact(STAGE_NAMES, _names_params(ws, cluster_spec, backbone)) as d:
        io.write_json(d / "names.json", {str(k): v for k, v in sorted(names.items())})
    return names


def cluster_titles(ws, cluster_spec: str, label_spec: str | None = None, backbone=None,
                   threshold: float = NAME_THRESHOLD) -> dict[int, str]:
    """Honest names of the clusters of ``cluster_spec``: the user's name when given, else the most common label
    of ``label_spec`` saying where it comes from ("ImageNet guess: analog clock 80%") when at least
    ``threshold`` of the cluster carries it. Clusters with neither are absent (shown by their id)."""
    out: dict[int, str] = {}
    if label_spec:
        source = label_source(ws, label_spec)
        for c, top in cluster_names(ws, cluster_spec, label_spec, top=1, backbone=backbone).items():
            if top and top[0][1] >= threshold:
                out[int(c)] = f"{source}: {str(top[0][0]).split(',')[0].strip()} {round(100 * top[0][1])}%"
    out.update(cluster_renames(ws, cluster_spec, backbone))
    return out


def search_rows(ws, text: str, assignments=None, titles: dict[int, str] | None = None,
                label_spec: str | None = None) -> np.ndarray:
    """Rows whose file name, cluster name (``titles`` of the clusters in ``assignments``) or label (of
    ``label_spec``) contains ``text`` (case-insensitive), in row order."""
    needle = " ".join(str(text or "").split()).lower()
    if not needle:
        raise CedmError("type something to search for")
    hit = np.fromiter((needle in p.lower() for p in ws.paths), dtype=bool, count=ws.n)
    if titles and assignments is not None:
        named = [c for c, t in titles.items() if needle in str(t).lower()]
        hit |= np.isin(np.asarray(assignments), named)
    if label_spec:
        lab = resolve(ws, label_spec)
        matching = [k for k, n in enumerate(lab.class_names or []) if needle in str(n).lower()]
        if matching:  # a labeling's ids index its class names
            hit |= np.isin(np.asarray(lab.labels), matching)
    return np.flatnonzero(hit)

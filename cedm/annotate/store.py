"""Self-annotations of a workspace, computed once and cached as artifacts (stages ``boxes`` and ``segments``).

    artifacts/boxes/<key>/boxes.npy          int32 (N, 4) x0, y0, x1, y1 in pixels of the workspace images
                          seeds.npy          int32 (N, 2) the seed patch (row, col)
    artifacts/segments/<key>/masks.npy       uint8 (N, R, R) segment ids at the workspace resolution
                             patch_labels.npy  uint8 (N, h, w) the arg-max segment of every patch
                             centroids.npy   float32 (S, D) the segment classes

key = hash(dataset, backbone, weights identity, preprocessing, the annotation's own settings). The work runs in
chunks of rows written to the workspace's scratch folder, so an interrupted run resumes at the first missing
chunk (segments: after the sampled patches and the centroids, which are kept there too).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from cedm import io
from cedm.annotate.boxes import BoxAnnotator, lost_box, patch_box_to_pixels
from cedm.annotate.patches import check_spatial, load_spatial_backbone, patch_maps
from cedm.annotate.segments import (
    SegmentAnnotator,
    check_n_segments,
    fit_segments,
    sample_patches,
    segment_maps,
    segment_scores,
)
from cedm.errors import CedmError
from cedm.features.backbones import for_workspace

BOX_STAGE, SEGMENT_STAGE = "boxes", "segments"
VERSION = 1
CHUNK_ROWS = 512
MAX_PATCHES = 20_000  # patch vectors sampled for the k-means fit (spread evenly over the images)
Progress = Callable[[int, int, str], None]


def parse_spatial(spec: str) -> tuple[str, int | None]:
    """``box`` -> ('box', None); ``segments:S`` -> ('segments', S)."""
    s = str(spec or "").strip()
    if s == "box":
        return "box", None
    kind, _, arg = s.partition(":")
    if kind == "segments":
        try:
            return "segments", check_n_segments(int(arg))
        except ValueError:
            pass
    raise CedmError(f"unknown spatial condition {spec!r}: use 'box' or 'segments:S' (S = number of segments)")


def _base_params(backbone: str, weights, pretrained: bool) -> dict:
    from cedm.features.extract import feature_params

    check_spatial(backbone)
    p = feature_params(backbone, weights, pretrained)
    return {"backbone": p["backbone"], "weights": p["weights"], "preprocessing": p["preprocessing"],
            "annotate_version": VERSION}


def box_params(backbone: str, weights=None, pretrained: bool = True, k_patches: int | None = None) -> dict:
    return {**_base_params(backbone, weights, pretrained), "algorithm": "lost-centred",
            "k_patches": None if k_patches is None else int(k_patches)}


def segment_params(n_segments: int, backbone: str, weights=None, pretrained: bool = True, refine: bool = True,
                   seed: int = 0, max_patches: int = MAX_PATCHES) -> dict:
    return {**_base_params(backbone, weights, pretrained), "algorithm": "kmeans-patches",
            "n_segments": check_n_segments(n_segments), "refine": "joint-bilateral" if refine else "none",
            "seed": int(seed), "max_patches": int(max_patches)}


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(s, min(s + CHUNK_ROWS, n)) for s in range(0, n, CHUNK_ROWS)]


def _chunk_path(scratch: Path, prefix: str, s: int, e: int) -> Path:
    return scratch / f"{prefix}-{s:09d}-{e:09d}.npy"


def _run_chunks(ws, scratch: Path, prefix: str, fn, batch_size: int, progress: Progress | None, desc: str,
                done0: int = 0, total: int | None = None) -> list[np.ndarray]:
    """fn(rows s..e of the images, s) -> array per row; computed chunk by chunk (kept in scratch), then loaded."""
    n = ws.n
    total = total or n
    done = done0
    out = []
    for s, e in _chunks(n):
        p = _chunk_path(scratch, prefix, s, e)
        if not p.is_file():
            parts = []
            for b in range(s, e, batch_size):
                parts.append(fn(np.array(ws.images[b:min(b + batch_size, e)]), b))
                if progress:
                    progress(done + min(b + batch_size, e) - s, total, desc)
            io.save_npy(p, np.concatenate(parts))
        out.append(io.load_npy(p))
        done += e - s
        if progress:
            progress(done, total, desc)
    return out


def _batch_size(model, batch_size) -> int:
    from cedm.features.extract import default_batch_size

    if batch_size is not None and int(batch_size) < 1:
        raise CedmError(f"batch size must be at least 1, got {batch_size}")
    return int(batch_size or default_batch_size(model))


# --- boxes --------------------------------------------------------------------------------------------
@for_workspace
def find_boxes(ws, backbone: str, weights=None, pretrained: bool = True, k_patches: int | None = None):
    return ws.find_artifact(BOX_STAGE, box_params(backbone, weights, pretrained, k_patches))


@for_workspace
def boxes_artifact(ws, backbone: str, weights=None, device=None, pretrained: bool = True,
                   batch_size: int | None = None, k_patches: int | None = None,
                   progress: Progress | None = None) -> Path:
    """The artifact folder of the workspace's self-boxes, computing it when missing."""
    params = box_params(backbone, weights, pretrained, k_patches)
    found = ws.find_artifact(BOX_STAGE, params)
    if found is not None:
        return found
    annot = BoxAnnotator(backbone, weights, device, pretrained, k_patches)
    model = annot.model  # builds (or fails: offline, bad weights) before anything is written
    bs = _batch_size(model, batch_size)
    scratch = ws.scratch_dir(BOX_STAGE, params)
    io.clean_stale_tmp(scratch)
    R = ws.resolution
    grid = []

    def one_batch(images, start):
        maps = patch_maps(model, images)
        grid[:] = [maps.shape[1:3]]
        rows = []
        for m in maps:
            pb = lost_box(m, k_patches)
            rows.append([*patch_box_to_pixels(pb.box, m.shape[:2], R), *pb.seed])
        return np.asarray(rows, np.int32)

    parts = _run_chunks(ws, scratch, "boxes", one_batch, bs, progress, f"self-boxes {backbone}")
    allrows = np.concatenate(parts)
    h, w = grid[0] if grid else patch_maps(model, np.array(ws.images[:1])).shape[1:3]
    info = {"n": ws.n, "resolution": R, "grid": [int(h), int(w)], "device": str(model.device),
            "weights": model.weights_id}
    with ws.write_artifact(BOX_STAGE, params, info) as tmp:
        io.save_npy(tmp / "boxes.npy", np.ascontiguousarray(allrows[:, :4]))
        io.save_npy(tmp / "seeds.npy", np.ascontiguousarray(allrows[:, 4:]))
    ws.clear_scratch(BOX_STAGE, params)
    return ws.find_artifact(BOX_STAGE, params)


def get_boxes(ws, backbone: str, weights=None, device=None, pretrained: bool = True, **kw) -> np.ndarray:
    """int (N, 4) self-boxes x0, y0, x1, y1 (end exclusive) in pixels of the workspace images."""
    folder = boxes_artifact(ws, backbone, weights, device, pretrained, **kw)
    return io.load_npy(folder / "boxes.npy").astype(np.int64)


# --- segments -----------------------------------------------------------------------------------------
@for_workspace
def find_segments(ws, n_segments: int, backbone: str, weights=None, pretrained: bool = True, **kw):
    return ws.find_artifact(SEGMENT_STAGE, segment_params(n_segments, backbone, weights, pretrained, **kw))


@for_workspace
def segments_artifact(ws, n_segments: int, backbone: str, weights=None, device=None, pretrained: bool = True,
                      batch_size: int | None = None, refine: bool = True, seed: int = 0,
                      max_patches: int = MAX_PATCHES, progress: Progress | None = None) -> Path:
    """The artifact folder of the workspace's self-segments (S classes), computing it when missing.

    Two passes over the images: sample patch vectors and fit the S centroids, then segment every image."""
    params = segment_params(n_segments, backbone, weights, pretrained, refine, seed, max_patches)
    found = ws.find_artifact(SEGMENT_STAGE, params)
    if found is not None:
        return found
    if int(max_patches) < params["n_segments"]:
        raise CedmError(f"max_patches must be at least the number of segments, got {max_patches}")
    model = load_spatial_backbone(backbone, weights, device, pretrained)
    bs = _batch_size(model, batch_size)
    scratch = ws.scratch_dir(SEGMENT_STAGE, params)
    io.clean_stale_tmp(scratch)
    n, R = ws.n, ws.resolution
    per_image = max(1, math.ceil(int(max_patches) / n))

    def sample_batch(images, start):
        maps = patch_maps(model, images)
        return np.stack([sample_patches(m[None], per_image, np.random.default_rng([seed, start + i]))
                         for i, m in enumerate(maps)]).astype(np.float16)

    desc = f"self-segments {backbone}"
    cent_path = scratch / "centroids.npy"
    if not cent_path.is_file():
        vecs = np.concatenate(_run_chunks(ws, scratch, "sample", sample_batch, bs, progress,
                                          desc + ": sampling patches", 0, 2 * n))
        vecs = vecs.reshape(-1, vecs.shape[-1]).astype(np.float32)
        io.save_npy(cent_path, fit_segments(vecs, params["n_segments"], seed))
    centroids = io.load_npy(cent_path)
    grid = []

    def segment_batch(images, start):
        maps = patch_maps(model, images)
        grid[:] = [maps.shape[1:3]]
        masks = segment_maps(maps, centroids, images, R, refine)
        patch_lab = segment_scores(maps, centroids).argmax(1).astype(np.uint8)
        return np.concatenate([masks.reshape(len(masks), -1), patch_lab.reshape(len(masks), -1)], axis=1)

    rows = np.concatenate(_run_chunks(ws, scratch, "masks", segment_batch, bs, progress, desc, n, 2 * n))
    h, w = grid[0] if grid else patch_maps(model, np.array(ws.images[:1])).shape[1:3]
    counts = np.bincount(rows[:, :R * R].ravel(), minlength=params["n_segments"])
    info = {"n": n, "resolution": R, "grid": [int(h), int(w)], "n_segments": params["n_segments"],
            "pixel_fraction": (counts / max(counts.sum(), 1)).round(6).tolist(), "device": str(model.device),
            "weights": model.weights_id, "refine": params["refine"]}
    with ws.write_artifact(SEGMENT_STAGE, params, info) as tmp:
        io.save_npy(tmp / "masks.npy", np.ascontiguousarray(rows[:, :R * R].reshape(n, R, R)))
        io.save_npy(tmp / "patch_labels.npy", np.ascontiguousarray(rows[:, R * R:].reshape(n, h, w)))
        io.save_npy(tmp / "centroids.npy", centroids)
    ws.clear_scratch(SEGMENT_STAGE, params)
    return ws.find_artifact(SEGMENT_STAGE, params)


def get_segments(ws, n_segments: int, backbone: str, weights=None, device=None, pretrained: bool = True,
                 **kw) -> np.ndarray:
    """uint8 (N, R, R) self-segment ids at the workspace resolution."""
    folder = segments_artifact(ws, n_segments, backbone, weights, device, pretrained, **kw)
    return io.load_npy(folder / "masks.npy", mmap=True)


# --- one front door --------------------------------------------------------------------------------------
def annotate(ws, spatial: str, backbone: str, weights=None, device=None, pretrained: bool = True,
             progress: Progress | None = None, **kw) -> Path:
    """The artifact of a spatial spec (``box`` or ``segments:S``), computing it when missing."""
    kind, S = parse_spatial(spatial)
    if kind == "box":
        return boxes_artifact(ws, backbone, weights, device, pretrained, progress=progress, **kw)
    return segments_artifact(ws, S, backbone, weights, device, pretrained, progress=progress, **kw)


def workspace_annotations(ws, spatial: str, backbone: str, weights=None, device=None, pretrained: bool = True,
                          **kw) -> np.ndarray:
    """Per-image self-annotations: int (N, 4) boxes for ``box``, uint8 (N, R, R) ids for ``segments:S``."""
    folder = annotate(ws, spatial, backbone, weights, device, pretrained, **kw)
    name = "boxes.npy" if parse_spatial(spatial)[0] == "box" else "masks.npy"
    return io.load_npy(folder / name, mmap=name == "masks.npy")


@for_workspace
def load_annotator(ws, spatial: str, backbone: str, weights=None, device=None, pretrained: bool = True,
                   refine: bool = True, **kw):
    """An annotator for new images that matches the workspace's annotations (segments: its centroids)."""
    kind, S = parse_spatial(spatial)
    if kind == "box":
        return BoxAnnotator(backbone, weights, device, pretrained, kw.get("k_patches"))
    folder = segments_artifact(ws, S, backbone, weights, device, pretrained, refine=refine, **kw)
    return SegmentAnnotator(io.load_npy(folder / "centroids.npy"), backbone, weights, device, pretrained, refine)


def list_annotations(ws) -> list[dict]:
    """The cached self-annotations of a workspace (oldest first): spatial spec, backbone, refine, folder."""
    out = []
    for stage in (BOX_STAGE, SEGMENT_STAGE):
        for folder, meta in ws.list_artifacts(stage):
            p = meta.get("params", {})
            spec = "box" if stage == BOX_STAGE else f"segments:{p.get('n_segments')}"
            out.append({"spatial": spec, "backbone": p.get("backbone"), "refine": p.get("refine"),
                        "created": meta.get("created", 0), "path": str(folder)})
    return sorted(out, key=lambda d: d["created"])


def find_annotation(ws, spatial: str, backbone: str, weights=None, pretrained: bool = True, **kw):
    """The artifact folder of a spatial spec if it is cached, else None (never computes)."""
    kind, S = parse_spatial(spatial)
    if kind == "box":
        return find_boxes(ws, backbone, weights, pretrained, kw.get("k_patches"))
    return find_segments(ws, S, backbone, weights, pretrained, **kw)

"""Self-annotation overlays for the app's galleries and query images, and pictures of layouts.

Thin: every function calls cedm.annotate (the annotations, their cache, the drawing) and returns what a
Gradio component takes (gallery items (image, caption), an image). The tab modules wire them in.
"""
from __future__ import annotations

import numpy as np

from cedm import io
from cedm.annotate import overlay, store
from cedm.errors import CedmError


def annotation_choices(ws) -> list[tuple[str, str]]:
    """(label, value) pairs of the workspace's cached self-annotations; value = 'SPEC@BACKBONE'."""
    seen, out = set(), []
    for a in store.list_annotations(ws):
        value = f"{a['spatial']}@{a['backbone']}"
        if value not in seen:
            seen.add(value)
            out.append((f"{a['spatial']} ({a['backbone']})", value))
    return out


def _parse(value: str) -> tuple[str, str]:
    spatial, _, backbone = str(value or "").partition("@")
    store.parse_spatial(spatial)
    if not backbone:
        raise CedmError(f"choose an annotation as SPEC@BACKBONE, got {value!r}")
    return spatial, backbone


def _folder(ws, value: str):
    spatial, backbone = _parse(value)
    folder = store.find_annotation(ws, spatial, backbone)
    if folder is None:
        flag = "--boxes" if spatial == "box" else f"--segments {spatial.split(':')[1]}"
        raise CedmError(f"no {spatial} annotations with {backbone} yet: run "
                        f"cedm annotate {ws.name} {flag} --backbone {backbone}")
    return spatial, backbone, folder


def overlay_items(ws, rows, value: str) -> list[tuple[np.ndarray, str]]:
    """Gallery items of these rows with their cached self-annotation drawn over them."""
    spatial, _, folder = _folder(ws, value)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= ws.n):
        raise CedmError(f"rows must lie in 0..{ws.n - 1}")
    order = np.sort(rows)
    images = np.asarray(ws.images[order]) if len(order) else np.zeros((0, ws.resolution, ws.resolution, 3), np.uint8)
    if spatial == "box":
        boxes = io.load_npy(folder / "boxes.npy")[order]
        drawn = overlay.draw_boxes(images, boxes) if len(order) else images
        captions = [f"{ws.paths[r]} · box {b.tolist()}" for r, b in zip(order, boxes)]
    else:
        S = store.parse_spatial(spatial)[1]
        masks = io.load_npy(folder / "masks.npy", mmap=True)[order]
        drawn = overlay.blend_segments(images, masks, S) if len(order) else images
        captions = [f"{ws.paths[r]} · {len(np.unique(m))} of {S} segments" for r, m in zip(order, masks)]
    pos = {int(r): k for k, r in enumerate(order)}
    return [(drawn[pos[int(r)]], captions[pos[int(r)]]) for r in rows]


def query_overlay(ws, image: np.ndarray, value: str) -> np.ndarray:
    """A query image (uint8 (R, R, 3), at the workspace resolution) with its self-annotation drawn over it."""
    spatial, backbone, _ = _folder(ws, value)
    annot = store.load_annotator(ws, spatial, backbone)
    out = annot(image[None])
    if spatial == "box":
        return overlay.draw_boxes(image[None], out)[0]
    return overlay.blend_segments(image[None], out, annot.n_segments)[0]


def layout_picture(maps, size: int | None = None) -> np.ndarray:
    """uint8 (r, r, 3) picture of a (1, channels, r, r) layout map: a box white on grey, segments coloured."""
    m = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=np.float32)[0]
    if m.shape[0] == 1:
        pic = np.where(m[0] > 0, 255, 96).astype(np.uint8)[..., None].repeat(3, 2)
    else:
        pic = overlay.colour_segments(m.argmax(0), m.shape[0])[0]
    if size and size != pic.shape[0]:
        pic = np.kron(pic, np.ones((max(1, size // pic.shape[0]),) * 2 + (1,), np.uint8)).astype(np.uint8)
    return pic

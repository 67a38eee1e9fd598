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


def _at(image, resolution: int) -> np.ndarray:
    """uint8 (R, R, 3) of a PIL or numpy image of any size and mode (centre square, resized)."""
    from PIL import Image

    from cedm.dataset.imaging import square_resize

    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (resolution, resolution, 3):
        return image
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).astype(np.uint8))
    return square_resize(img, resolution)


def query_overlay(ws, image, value: str) -> np.ndarray:
    """A query image (any size; shown at the workspace resolution) with its self-annotation drawn over it."""
    spatial, backbone, _ = _folder(ws, value)
    if image is None:
        raise CedmError("upload or paste an image first")
    image = _at(image, ws.resolution)
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


def page_rows(ws, page: int, per_page: int = 24) -> tuple[np.ndarray, str]:
    """The rows of one gallery page and a 'page p of P' line."""
    n_pages = max(1, -(-ws.n // per_page))
    p = min(max(int(page or 1), 1), n_pages)
    return np.arange((p - 1) * per_page, min(p * per_page, ws.n)), f"page {p} of {n_pages} · {ws.n} images"


def missing_hint(ws, spatial: str, backbone: str) -> str:
    """How to get an annotation that is not cached yet (the CLI command; the app's button does the same)."""
    flag = "--boxes" if spatial == "box" else f"--segments {spatial.split(':')[1]}"
    return f"`cedm annotate {ws.name} {flag} --backbone {backbone}`"


def comparison_items(rows: list[dict]) -> tuple[list[tuple[np.ndarray, str]], str, int]:
    """Gallery items of a same-noise comparison (cedm.model.spatial.compare_guidance: one row per guidance
    kind, same seeds in every row), each captioned with its layout IoU; a summary table; the column count."""
    items, lines, cols = [], ["| guidance | mean layout IoU | per sample |", "|---|---|---|"], 1
    for r in rows:
        if r["images"] is None:
            lines.append(f"| {r['name']} | - | {r['note']} |")
            continue
        cols = max(cols, len(r["images"]))
        ious = r["iou"] or [None] * len(r["images"])
        items += [(img, f"{r['name']} · IoU {v:.2f}" if v is not None else r["name"])
                  for img, v in zip(r["images"], ious)]
        per = ", ".join(f"{v:.2f}" for v in r["iou"]) if r["iou"] else "-"
        lines.append(f"| {r['name']} | {r['mean_iou']:.3f} | {per} |" if r["mean_iou"] is not None
                     else f"| {r['name']} | - | - |")
    return items, "\n".join(lines), cols

"""Pictures of self-annotations: boxes drawn on images, segment maps blended over them, layouts coloured.

Pure numpy on uint8 (N, R, R, 3) images; the app's galleries and the docs' figures use these.
"""
from __future__ import annotations

import colorsys

import numpy as np

from cedm.annotate.boxes import check_boxes
from cedm.annotate.patches import check_images as _images
from cedm.errors import CedmError

BOX_COLOUR = (230, 25, 75)


def segment_palette(n_segments: int) -> np.ndarray:
    """uint8 (S, 3) distinct colours: hues in golden-ratio steps, so neighbouring ids differ."""
    hues = (np.arange(int(n_segments)) * 0.6180339887) % 1.0
    return np.array([[round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues], np.uint8)


def draw_boxes(images, boxes, colour=BOX_COLOUR, width: int | None = None) -> np.ndarray:
    """Copies of ``images`` with each image's box (x0, y0, x1, y1, end exclusive) outlined."""
    out = _images(images).copy()
    R = out.shape[1]
    b = check_boxes(boxes, R)
    if len(b) != len(out):
        raise CedmError(f"{len(b)} boxes for {len(out)} images")
    t = int(width or max(1, R // 32))
    for img, (x0, y0, x1, y1) in zip(out, b):
        for ys, xs in ((slice(y0, min(y0 + t, y1)), slice(x0, x1)), (slice(max(y1 - t, y0), y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, min(x0 + t, x1))), (slice(y0, y1), slice(max(x1 - t, x0), x1))):
            img[ys, xs] = colour
    return out


def colour_segments(masks, n_segments: int) -> np.ndarray:
    """uint8 (N, H, W, 3) pictures of (N, H, W) segment id maps."""
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.size and int(m.max()) >= int(n_segments):
        raise CedmError(f"segment id {int(m.max())} in a map of {n_segments} segments")
    return segment_palette(n_segments)[m]


def blend_segments(images, masks, n_segments: int, alpha: float = 0.5) -> np.ndarray:
    """``images`` with their segment maps blended over them (``alpha`` = weight of the colours)."""
    imgs = _images(images)
    col = colour_segments(masks, n_segments)
    if col.shape != imgs.shape:
        raise CedmError(f"segment maps of shape {col.shape[:3]} do not match images {imgs.shape[:3]}")
    return np.round((1 - alpha) * imgs + alpha * col).astype(np.uint8)


def ids_from_colours(picture, n_segments: int) -> np.ndarray:
    """uint8 (H, W) segment ids of a painted picture (H, W, 3 or 4): each pixel takes the id of the nearest
    colour of ``segment_palette(n_segments)`` (the inverse of ``colour_segments``; transparent pixels -> 0)."""
    p = np.asarray(picture)
    if p.ndim != 3 or p.shape[2] not in (3, 4) or not np.issubdtype(p.dtype, np.number):
        raise CedmError(f"a painted layout must be an (H, W, 3) or (H, W, 4) picture, got {p.dtype} {p.shape}")
    rgb = p[..., :3].astype(np.int32)
    pal = segment_palette(n_segments).astype(np.int32)
    d = ((rgb[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    ids = d.argmin(-1).astype(np.uint8)
    if p.shape[2] == 4:
        ids[p[..., 3] == 0] = 0
    return ids

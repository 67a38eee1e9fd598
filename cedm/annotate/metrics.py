"""Layout fidelity: how well an image's self-annotation matches the layout it was generated from.

- boxes: IoU of the conditioning box and the self-box of the generated image (same annotator);
- segments: mean over the segment classes present in either map of the per-class IoU (mIoU) between the
  conditioning map and the generated image's self-segment map.
"""
from __future__ import annotations

import numpy as np

from cedm.errors import CedmError


def box_iou(a, b) -> np.ndarray:
    """float (N,) IoU of boxes (N, 4) and (N, 4), x0, y0, x1, y1 with end exclusive."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise CedmError(f"box IoU needs as many boxes on both sides, got {len(a)} and {len(b)}")
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)


def segment_miou(a, b) -> np.ndarray:
    """float (N,) mean IoU over the classes present in either of the (N, H, W) id maps ``a`` and ``b``."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise CedmError(f"segment maps must have the same (N, H, W) shape, got {a.shape} and {b.shape}")
    out = np.zeros(len(a))
    for i in range(len(a)):
        x, y = a[i].ravel().astype(np.int64), b[i].ravel().astype(np.int64)
        k = int(max(x.max(), y.max())) + 1
        conf = np.bincount(x * k + y, minlength=k * k).reshape(k, k)
        inter = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - inter
        present = union > 0
        out[i] = (inter[present] / union[present]).mean()
    return out


def layout_iou(conditions, annotations, kind: str) -> np.ndarray:
    """Per-image layout IoU: ``kind`` 'box' (boxes (N, 4)) or 'segments' (id maps (N, H, W))."""
    if kind == "box":
        return box_iou(conditions, annotations)
    if kind == "segments":
        return segment_miou(conditions, annotations)
    raise CedmError(f"unknown layout kind {kind!r}: 'box' or 'segments'")

"""Self-boxes: one object box per image from its patch features, by a LOST-style seed and expansion.

LOST (Simeoni et al., BMVC 2021) on a patch map F (N patches x D):

1. A = F F^T, the patch-similarity graph (an edge where the correlation is positive).
2. Seed: the patch with the fewest positive correlations (lowest degree). An object covers less of the image
   than the background, so its patches correlate positively with fewer others.
3. Expansion: among the k lowest-degree patches, those positively correlated with the seed; M = the sum of
   their rows of A (each patch's total correlation with that set).
4. Box: the 4-connected component of {M > 0} that contains the seed, its bounding box scaled to pixels.

What is ours (docs/spatial.md): F is centred per image (each channel's mean over the image's patches is
subtracted) so that non-negative convnet activations can correlate negatively (LOST's convnet path applies a
LayerNorm over the whole map, which removes one scalar mean); k defaults to half of the patches (LOST uses
100 of the few hundred patches of a full-size VOC image); ties in the degree go to the lower patch index; a
featureless image (all patches equal) gets the whole image as its box.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from cedm.annotate.patches import SpatialBackbone
from cedm.errors import CedmError


@dataclasses.dataclass(frozen=True)
class PatchBox:
    seed: tuple[int, int]          # (row, col) of the seed patch
    box: tuple[int, int, int, int]  # (r0, c0, r1, c1) in patches, end exclusive
    mask: np.ndarray                # bool (h, w): the seed's component


def default_k(n_patches: int) -> int:
    return max(1, math.ceil(n_patches / 2))


def lost_box(feats, k_patches: int | None = None) -> PatchBox:
    """The seed-and-expand box of one (h, w, D) patch map."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 3 or min(f.shape) < 1:
        raise CedmError(f"expected a (h, w, D) patch map, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise CedmError("patch features must be finite")
    h, w, d = f.shape
    n = h * w
    k = default_k(n) if k_patches is None else int(k_patches)
    if k < 1:
        raise CedmError(f"k_patches must be at least 1, got {k_patches}")
    x = f.reshape(n, d)
    x = x - x.mean(axis=0, keepdims=True)
    scale = np.abs(x).max()
    if scale <= 1e-6 * max(np.abs(f).max(), 1e-30) or scale == 0:  # featureless: nothing stands out
        return PatchBox((0, 0), (0, 0, h, w), np.ones((h, w), bool))
    x = x / scale  # the signs of A do not change; keeps float64 sums tame
    A = x @ x.T
    off = A.copy()
    np.fill_diagonal(off, 0.0)
    degree = (off > 0).sum(axis=1)
    order = np.argsort(degree, kind="stable")
    seed = int(order[0])
    potentials = order[:min(k, n)]
    similars = potentials[A[seed, potentials] > 0]  # the seed itself is one (A[seed, seed] > 0)
    M = A[similars].sum(axis=0).reshape(h, w)
    labels, _ = ndimage.label(M > 0)  # 4-connectivity
    sr, sc = divmod(seed, w)
    cc = labels[sr, sc]
    if cc == 0:  # cannot happen while the seed correlates with itself; keep the seed patch alone
        mask = np.zeros((h, w), bool)
        mask[sr, sc] = True
    else:
        mask = labels == cc
    rows, cols = np.nonzero(mask)
    return PatchBox((sr, sc), (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1), mask)


def patch_box_to_pixels(box, grid: tuple[int, int], resolution: int) -> tuple[int, int, int, int]:
    """(r0, c0, r1, c1) in a (h, w) patch grid -> (x0, y0, x1, y1) pixels of a square image, end exclusive."""
    r0, c0, r1, c1 = box
    h, w = grid
    R = int(resolution)
    return (round(c0 * R / w), round(r0 * R / h), round(c1 * R / w), round(r1 * R / h))


def check_boxes(boxes, resolution: int) -> np.ndarray:
    """int (N, 4) boxes (x0, y0, x1, y1), end exclusive, inside a resolution x resolution image."""
    b = np.asarray(boxes)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or not np.issubdtype(b.dtype, np.number) or not np.isfinite(b).all():
        raise CedmError(f"boxes must be (N, 4) numbers x0, y0, x1, y1, got {b.dtype} {b.shape}")
    b = np.round(b).astype(np.int64)
    R = int(resolution)
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > R) | (b[:, 3] > R) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise CedmError(f"box {b[i].tolist()} is not a non-empty box x0 < x1, y0 < y1 inside 0..{R}")
    return b


def box_masks(boxes, resolution: int, out_resolution: int | None = None) -> np.ndarray:
    """uint8 (N, r, r) masks, 1 inside each box; boxes in pixels of ``resolution``, masks at ``out_resolution``."""
    b = check_boxes(boxes, resolution).astype(np.float64)
    r = int(out_resolution or resolution)
    s = r / int(resolution)
    lo = np.floor(b[:, :2] * s + 1e-9).astype(int)
    hi = np.maximum(np.ceil(b[:, 2:] * s - 1e-9).astype(int), lo + 1)
    idx = np.arange(r)
    inx = (idx[None] >= lo[:, 0:1]) & (idx[None] < hi[:, 0:1])  # (N, r) columns
    iny = (idx[None] >= lo[:, 1:2]) & (idx[None] < hi[:, 1:2])  # (N, r) rows
    return (iny[:, :, None] & inx[:, None, :]).astype(np.uint8)


class BoxAnnotator(SpatialBackbone):
    """``annotator(images uint8 (B, R, R, 3)) -> int (B, 4)`` self-boxes in pixels of the images."""

    kind = "box"

    def __init__(self, backbone: str, weights=None, device=None, pretrained: bool = True,
                 k_patches: int | None = None):
        self._use_backbone(backbone, weights, device, pretrained)
        self.k_patches = k_patches
        if k_patches is not None and int(k_patches) < 1:
            raise CedmError(f"k_patches must be at least 1, got {k_patches}")

    def __call__(self, images) -> np.ndarray:
        from cedm.annotate.patches import check_images, patch_maps

        images = check_images(images)
        maps = patch_maps(self.model, images)
        R = images.shape[1]
        out = np.zeros((len(images), 4), np.int64)
        for i, m in enumerate(maps):
            out[i] = patch_box_to_pixels(lost_box(m, self.k_patches).box, m.shape[:2], R)
        return out

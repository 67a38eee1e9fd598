"""Self-segments: S segment classes shared by the whole dataset, one segment map per image.

1. Fit: spherical k-means (cedm.clusters.kmeans) of L2-normalised patch vectors pooled over the dataset (a
   seeded sample of at most ``max_patches`` of them) into S centroids.
2. Assign: every patch gets soft scores softmax(cos(patch, centroid) / T), T = 0.05.
3. Upsample: the (S, h, w) score map is resized bilinearly to the output resolution.
4. Refine (optional, default on): a colour-guided joint bilateral filter of the score maps (weights
   exp(-|p - q|^2 / 2 sigma_s^2) exp(-|I_p - I_q|^2 / 2 sigma_c^2), I the image in [0, 1], sigma_c = 0.1,
   a window of one patch (radius half a patch, sigma_s a quarter patch), 5 iterations), so segment borders
   follow colour edges of the image instead of the patch grid.
   CRF-free, deterministic, no training. Then the arg-max class per pixel.

This stands in for STEGO (which trains a head on DINO correspondences before clustering; see docs/spatial.md).
"""
from __future__ import annotations

import numpy as np

from cedm.annotate.patches import SpatialBackbone
from cedm.errors import CedmError

TEMPERATURE = 0.05
REFINE_ITERATIONS = 5  # each moves a border by up to half a patch towards the colour edge
MAX_SEGMENTS = 255  # ids are stored as uint8 pixel values


def check_n_segments(n_segments) -> int:
    try:
        s = int(n_segments)
    except (TypeError, ValueError):
        raise CedmError(f"the number of segments must be an integer, got {n_segments!r}") from None
    if not 2 <= s <= MAX_SEGMENTS or s != n_segments:
        raise CedmError(f"the number of segments must be an integer from 2 to {MAX_SEGMENTS}, got {n_segments!r}")
    return s


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sample_patches(maps: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` patch vectors (L2-normalised) drawn without replacement from (B, h, w, D) maps."""
    flat = np.asarray(maps).reshape(-1, maps.shape[-1])
    take = rng.choice(len(flat), size=min(int(n), len(flat)), replace=False) if n < len(flat) else np.arange(len(flat))
    return _normalize(flat[np.sort(take)])


def fit_segments(patch_vectors, n_segments: int, seed: int = 0) -> np.ndarray:
    """float32 (S, D) unit centroids of (M, D) patch vectors (spherical k-means)."""
    from cedm.clusters.kmeans import kmeans

    S = check_n_segments(n_segments)
    x = np.asarray(patch_vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) < S:
        raise CedmError(f"need at least {S} patch vectors of shape (M, D) to find {S} segments, got {x.shape}")
    return kmeans(x, S, seed=seed, nredo=3, niter=30).centroids.astype(np.float32)


def segment_scores(maps, centroids, temperature: float = TEMPERATURE) -> np.ndarray:
    """float32 (B, S, h, w) soft segment scores of (B, h, w, D) patch maps."""
    m = _normalize(maps)
    c = _normalize(centroids)
    if m.shape[-1] != c.shape[-1]:
        raise CedmError(f"patch features have {m.shape[-1]} dimensions but the segments were fitted on "
                        f"{c.shape[-1]} (another backbone?)")
    logits = (m @ c.T) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    return np.ascontiguousarray(p.transpose(0, 3, 1, 2))


def joint_bilateral(scores, guide, radius: int, sigma_space: float | None = None, sigma_color: float = 0.1,
                    iterations: int = 2):
    """Colour-guided joint bilateral filtering of (B, S, R, R) scores by (B, 3, R, R) images in [0, 1]."""
    import torch
    import torch.nn.functional as F

    p = torch.as_tensor(scores, dtype=torch.float32)
    g = torch.as_tensor(guide, dtype=torch.float32)
    r = int(radius)
    if r < 1:
        return p
    ss = float(sigma_space or max(r / 2, 0.5))
    R_h, R_w = p.shape[-2:]
    gp = F.pad(g, (r, r, r, r), mode="replicate")
    for _ in range(int(iterations)):
        pp = F.pad(p, (r, r, r, r), mode="replicate")
        num = torch.zeros_like(p)
        den = torch.zeros_like(p[:, :1])
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                ws = np.exp(-(dx * dx + dy * dy) / (2 * ss * ss))
                gq = gp[:, :, r + dy:r + dy + R_h, r + dx:r + dx + R_w]
                wc = torch.exp(-((g - gq) ** 2).sum(1, keepdim=True) / (2 * sigma_color ** 2))
                wgt = ws * wc
                num += wgt * pp[:, :, r + dy:r + dy + R_h, r + dx:r + dx + R_w]
                den += wgt
        p = num / den
    return p


def segment_maps(maps, centroids, images, resolution: int | None = None, refine: bool = True) -> np.ndarray:
    """uint8 (B, R, R) segment ids of images (B, H, W, 3) from their (B, h, w, D) patch maps."""
    import torch
    import torch.nn.functional as F

    images = np.asarray(images)
    R = int(resolution or images.shape[1])
    scores = torch.from_numpy(segment_scores(maps, centroids))
    up = F.interpolate(scores, size=(R, R), mode="bilinear", align_corners=False)
    if refine:
        guide = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
        if guide.shape[-1] != R:
            guide = F.interpolate(guide, size=(R, R), mode="area" if guide.shape[-1] > R else "bilinear")
        patch_px = R / maps.shape[2]
        up = joint_bilateral(up, guide, radius=max(1, round(patch_px / 2)), iterations=REFINE_ITERATIONS)
    return up.argmax(1).numpy().astype(np.uint8)


class SegmentAnnotator(SpatialBackbone):
    """``annotator(images uint8 (B, R, R, 3)) -> uint8 (B, R, R)`` segment ids under fitted centroids."""

    kind = "segments"

    def __init__(self, centroids, backbone: str, weights=None, device=None, pretrained: bool = True,
                 refine: bool = True):
        self.centroids = _normalize(centroids)
        self.n_segments = check_n_segments(len(self.centroids))
        self._use_backbone(backbone, weights, device, pretrained)
        self.refine = bool(refine)

    def __call__(self, images, resolution: int | None = None) -> np.ndarray:
        from cedm.annotate.patches import check_images, patch_maps

        images = check_images(images)
        return segment_maps(patch_maps(self.model, images), self.centroids, images, resolution, self.refine)

"""Spatial features: uint8 images -> one feature vector per patch, from a registered backbone's spatial output.

The images go through the backbone's own preprocessing (resize to its input size, normalise); its ``spatial``
entry (ViT patch tokens, a convnet's last map) gives a (B, D, h, w) map, returned here as float32
(B, h, w, D) numpy. Nothing is cached at this level: a patch map is D x h x w numbers per image (1280 x 7 x 7
for EfficientNet-Lite0), too large to keep for a whole dataset, and each self-annotation keeps only what it
needs (a box, a segment map).
"""
from __future__ import annotations

import numpy as np

from cedm.errors import CedmError
from cedm.features.backbones import get_spec, list_backbones, scoped_workspace, workspace_scope


def spatial_backbones() -> list[str]:
    """The registered backbones that have a spatial output."""
    return [n for n in list_backbones() if get_spec(n).spatial is not None]


def check_spatial(backbone: str) -> str:
    spec = get_spec(backbone)
    if spec.spatial is None:
        raise CedmError(f"backbone {backbone!r} has no spatial (patch) features; use one of "
                        f"{', '.join(spatial_backbones())}")
    return spec.name


def load_spatial_backbone(backbone: str, weights=None, device=None, pretrained: bool = True):
    """The built backbone (kept in memory by cedm.features.extract.cached_backbone)."""
    from cedm.features.extract import cached_backbone

    check_spatial(backbone)
    return cached_backbone(backbone, weights, device, pretrained)


class SpatialBackbone:
    """What an annotator needs of its backbone: the checked name, and the built model, resolved in the
    workspace scope the annotator was made in (a workspace's own denoiser keeps working after the call)."""

    def _use_backbone(self, backbone: str, weights, device, pretrained: bool) -> None:
        self.backbone = check_spatial(backbone)
        self.weights, self.device, self.pretrained = weights, device, pretrained
        self._scope = scoped_workspace()

    @property
    def model(self):
        with workspace_scope(self._scope):
            return load_spatial_backbone(self.backbone, self.weights, self.device, self.pretrained)


def check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise CedmError(f"expected uint8 RGB images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def patch_maps(model, images) -> np.ndarray:
    """float32 (B, h, w, D) patch features of uint8 images (B, H, W, 3) under a built backbone ``model``."""
    import torch

    images = check_images(images)
    x = model.preprocess(torch.from_numpy(np.array(images, dtype=np.uint8)))
    with model.autocast():
        fmap = model.spec.spatial(model.net, x).float()
    out = fmap.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    if not np.isfinite(out).all():
        raise CedmError(f"backbone {model.name} produced non-finite patch features; the weights are probably "
                        "broken")
    return out

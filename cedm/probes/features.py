"""Denoiser representations for probes (seed 004): the pooled block activations of a trained model's UNet,
as cedm.features.denoiser computes them (one place for "denoiser features": hooks on the named blocks,
global average pooling, each block's vector L2-normalised when several are joined, the forward pass stopped
after the last block needed), here kept differentiable so guidance can take gradients through them.

Block names: ``mid`` (the bottleneck), ``upI`` / ``downI``. The paper's choice, bottleneck + second upsampling
block, is ``("mid", "up1")``. Features are read under the model's "no condition" label (the only class of
an unconditional model; the learned null of a C-EDM).
"""
from __future__ import annotations

import re

import torch

from cedm.errors import CedmError

DEFAULT_BLOCKS = ("mid", "up1")
_BLOCK_RE = re.compile(r"^(mid|up\d+|down\d+)$")


def check_blocks(model, blocks) -> tuple[str, ...]:
    from cedm.features.denoiser import block_channels

    blocks = tuple(blocks)
    if not blocks:
        raise CedmError("no denoiser blocks named for the features")
    for b in blocks:
        if not _BLOCK_RE.match(str(b)):
            raise CedmError(f"unknown denoiser block {b!r}: use mid, upI or downI")
        block_channels(dict(model.unet.config), b)
    return blocks


def feature_dim(model, blocks=DEFAULT_BLOCKS) -> int:
    from cedm.features.denoiser import block_channels

    return int(sum(block_channels(dict(model.unet.config), b) for b in check_blocks(model, blocks)))


def denoiser_features(model, x: torch.Tensor, sigma, blocks=DEFAULT_BLOCKS,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) pooled features of the network input ``x + sigma * noise`` (noise None: x is already noisy) at
    noise level ``sigma`` (a number or one per image), float32, with its autograd graph."""
    from cedm.features.denoiser import pooled_features

    blocks = check_blocks(model, blocks)
    return pooled_features(model, x, sigma, blocks, torch.zeros_like(x) if noise is None else noise)

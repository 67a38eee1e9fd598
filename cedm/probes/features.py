"""Denoiser representations (seed 004): globally pooled activations of blocks of the denoiser's UNet.

``denoiser_features(model, x, sigma)`` runs the EDM-wrapped diffusers UNet on ``x`` at noise level ``sigma``
with the "no condition" class label (the only class of an unconditional model; the learned null of a C-EDM),
catches the outputs of the named blocks with forward hooks, averages each over height and width and
concatenates them: (B, sum of the blocks' channels). The forward pass stops right after the last block it
needs (the remaining, full-resolution blocks are never run). The result keeps its autograd graph, so
guidance can differentiate a probe's log-probability through it.

Block names: ``mid`` (the bottleneck), ``upI`` / ``downI`` (the I-th up / down block, 0 = lowest
resolution for up blocks). The paper's choice, bottleneck + second upsampling block, is ``("mid", "up1")``.
"""
from __future__ import annotations

import contextlib
import re

import torch

from cedm.errors import CedmError

DEFAULT_BLOCKS = ("mid", "up1")
_BLOCK_RE = re.compile(r"^(mid|up\d+|down\d+)$")


class _Enough(Exception):
    """Raised by the hook of the last block needed: the rest of the UNet is not run."""


def block_module(unet, name: str):
    if not _BLOCK_RE.match(str(name)):
        raise CedmError(f"unknown denoiser block {name!r}: use mid, upI or downI")
    if name == "mid":
        return unet.mid_block
    kind, i = ("up_blocks", int(name[2:])) if name.startswith("up") else ("down_blocks", int(name[4:]))
    blocks = getattr(unet, kind)
    if i >= len(blocks):
        raise CedmError(f"denoiser block {name!r} does not exist: the network has {len(blocks)} {kind}")
    return blocks[i]


def _execution_order(name: str) -> tuple:
    """Down blocks run first, then the bottleneck, then the up blocks."""
    if name.startswith("down"):
        return (0, int(name[4:]))
    if name == "mid":
        return (1, 0)
    return (2, int(name[2:]))


def feature_dim(model, blocks=DEFAULT_BLOCKS) -> int:
    unet = model.unet
    dims = []
    for b in blocks:
        block_module(unet, b)
        if b == "mid":
            dims.append(unet.config.block_out_channels[-1])
        elif b.startswith("down"):
            dims.append(unet.config.block_out_channels[int(b[4:])])
        else:
            dims.append(list(reversed(unet.config.block_out_channels))[int(b[2:])])
    return int(sum(dims))


def denoiser_features(model, x: torch.Tensor, sigma, blocks=DEFAULT_BLOCKS) -> torch.Tensor:
    """(B, D) pooled features of ``x`` (B, 3, R, R) at noise level ``sigma`` (scalar or (B,)), float32."""
    blocks = tuple(blocks)
    if not blocks:
        raise CedmError("no denoiser blocks named for the features")
    unet = model.unet
    modules = [block_module(unet, b) for b in blocks]
    last = max(blocks, key=_execution_order)
    caught: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_mod, _inp, out):
            caught[name] = (out[0] if isinstance(out, tuple) else out).float().mean(dim=(2, 3))
            if name == last:
                raise _Enough
        return hook

    try:
        for b, m in zip(blocks, modules):
            handles.append(m.register_forward_hook(hook_for(b)))
        with contextlib.suppress(_Enough):
            model(x, sigma, None)
    finally:
        for h in handles:
            h.remove()
    missing = [b for b in blocks if b not in caught]
    if missing:
        raise CedmError(f"denoiser blocks {missing} produced no output")
    return torch.cat([caught[b] for b in blocks], dim=1)

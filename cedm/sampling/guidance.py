"""Classifier-free guidance (Ho & Salimans 2022) for a C-EDM denoiser.

    D_w(x; sigma, c) = D(x; sigma, none) + w (D(x; sigma, c) - D(x; sigma, none))

w = 0: unconditional, w = 1: plain conditional, w > 1: stronger guidance. The official C-EDM code writes
D = (1 + w') D(x|c) - w' D(x|none); the two agree with w' = w - 1 (its default w' = 0 is our w = 1).
Both halves are computed in ONE batched network call (batch 2B) rather than two calls.
"""
from __future__ import annotations

import torch

from cedm.errors import CedmError


def check_guidance(model, w: float, uncond: bool = False) -> None:
    """Refuse guidance that needs the "no condition" branch of a model trained without label dropout."""
    if model.n_conditions == 0:
        return
    p_uncond = float(model.info.get("p_uncond", 0.0))
    needs_uncond = uncond or w != 1.0
    if needs_uncond and p_uncond <= 0:
        what = "unconditional sampling" if uncond else f"guidance w = {w:g}"
        raise CedmError(f"{what} needs the model's unconditional branch, but this model was trained with "
                        "p_uncond = 0 (no label dropout); use guidance 1 (plain conditional) or train with "
                        "--p-uncond > 0")


def guided_denoiser(model, labels: torch.Tensor | None, w: float = 1.0, force_batched: bool = False):
    """A ``denoise(x, sigma)`` for the samplers. ``labels`` (B,) in 0..C-1, or None for unconditional.

    w = 0 and w = 1 need only one half, so they take a single call of batch B (same result);
    ``force_batched`` keeps the 2B call anyway (used by tests to check the combination).
    """
    w = float(w)
    if w < 0:
        raise CedmError(f"guidance must be >= 0, got {w}")
    none = model.uncond_index

    def uncond(x, sigma):
        return model(x, sigma, torch.full((x.shape[0],), none, dtype=torch.long, device=x.device))

    if labels is None:
        return uncond
    if not force_batched and w == 1.0:
        return lambda x, sigma: model(x, sigma, labels)
    if not force_batched and w == 0.0:
        return uncond

    def guided(x, sigma):
        both = torch.cat([labels, torch.full_like(labels, none)])
        d_cond, d_uncond = model(torch.cat([x, x]), sigma, both).chunk(2)
        return d_uncond + w * (d_cond - d_uncond)

    return guided

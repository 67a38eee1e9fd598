"""The plain reference sampler the engine must agree with (tests, bench/sampling.py)."""
from __future__ import annotations

import torch

from cedm.sampling.core import StackedRandomGenerator, check_request, labels_tensor, make_settings, sample_batch
from cedm.sampling.generate import choose_conditions


def reference_sample(model, n: int, clusters=None, from_q: bool = True, uncond: bool = False,
                     guidance=1.0, steps: int = 18, sampler: str = "heun", seed: int = 0,
                     churn: float = 0.0, guidance_interval=None) -> torch.Tensor:
    """The plain way, for checking the engine: float32, no inference mode, no compile, and guidance as two
    separate network calls per evaluation (the official C-EDM code). Same per-image noise, conditions and
    sampling core as the engine; returns float32 (n, 3, R, R) in [-1, 1]."""
    settings = make_settings(sampler, steps, guidance, guidance_interval, churn, model.info)
    n, seed, _ = check_request(n, seed)
    conds = choose_conditions(model, n, clusters, from_q, uncond, seed)
    settings = settings.for_model(model, conds[0] is not None)
    g = settings.guidance
    dev = next(model.parameters()).device
    labels = labels_tensor(model, conds, dev)
    none = torch.full_like(labels, model.uncond_index)

    def denoise(x, sigma):
        d_cond = model(x, sigma, labels)
        if g.scale == 1.0 or not g.active(sigma):
            return d_cond
        d_uncond = model(x, sigma, none)
        return d_uncond + g.scale * (d_cond - d_uncond)

    x = sample_batch(denoise, StackedRandomGenerator(range(seed, seed + n)), (3, model.resolution,
                     model.resolution), settings, device=dev, inference=False)
    return x.float().cpu()

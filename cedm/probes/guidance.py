"""Probe guidance and rejection (seed 004, sections 4.1 and 4.2).

Classifier guidance in EDM form, as a transform of any denoiser ``denoise(x, sigma)`` (so it works with every
sampler, and on top of classifier-free guidance of a C-EDM):

    D~(x; sigma) = D(x; sigma) + w sigma^2 grad_x log p_phi(y | x, sigma)

With the true p(y | x; sigma) and w = 1 this is exactly the class-conditional denoiser (Tweedie:
D(x; sigma) = x + sigma^2 grad log p_sigma(x), and log p(x | y) = log p(x) + log p(y | x) + const); the
paper's route approximates p(y | x, sigma) by p_phi(y | x0_hat(x)), x0_hat = D(x; sigma), and the gradient
then flows back through the denoiser (one extra backward pass per evaluation).

Rejection: k candidates per image, kept by the probe's probability of the wanted class (best of k, or the
first candidate at or above a threshold).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cedm.errors import CedmError

LogProb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_weight(w: float) -> float:
    w = float(w)
    if not (np.isfinite(w) and w >= 0):
        raise CedmError(f"probe guidance must be a number >= 0, got {w}")
    return w


def classifier_guidance(denoise, log_prob: LogProb, targets: torch.Tensor, w: float,
                        through_denoiser: bool = True, interval: tuple[float, float] | None = None):
    """``denoise`` with classifier guidance toward ``targets`` (B,) at weight ``w``.

    ``log_prob(x, sigma, denoised) -> (B, K)`` log-probabilities (differentiable in x; it may read the
    denoised estimate). ``through_denoiser``: differentiate through D as well (the x0-estimate route); False
    when log_prob reads x only, which saves the backward pass through the denoiser. ``interval`` (lo, hi):
    guide only for lo <= sigma <= hi (a limited guidance interval, Kynkäänniemi et al. 2024; outside it D is
    returned unchanged and no gradient is taken).
    """
    w = check_weight(w)
    if w == 0.0:
        return denoise

    def guided(x, sigma):
        if interval is not None and not interval[0] <= float(sigma) <= interval[1]:
            return denoise(x, sigma)
        # the samplers run under no_grad / inference_mode: guidance needs a graph from x
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            if through_denoiser:
                den = denoise(xg, sigma)
            else:
                with torch.no_grad():
                    den = denoise(xg, sigma)
            lp = log_prob(xg, sigma, den)
            t = targets.to(lp.device)
            sel = lp.gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(sel, xg)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2
        return (den.detach() + w * s2 * grad.to(den.dtype)).to(x.dtype)

    return guided


def probe_guidance(denoise, probe, targets, w: float, interval: tuple[float, float] | None = None):
    """``denoise`` guided by a trained probe (cedm.probes.probe.Probe) toward class ``targets`` (B,) or an int."""
    if not torch.is_tensor(targets):
        targets = torch.as_tensor(targets, dtype=torch.long)
    check_targets(probe, targets)
    return classifier_guidance(denoise, probe.log_prob, targets.long(), w, through_denoiser=probe.uses_denoised,
                               interval=interval)


def check_targets(probe, targets) -> None:
    t = np.asarray(targets.cpu() if torch.is_tensor(targets) else targets).reshape(-1)
    bad = t[(t < 0) | (t >= probe.n_classes)]
    if len(bad):
        raise CedmError(f"probe class {int(bad[0])} does not exist: this probe has classes "
                        f"0..{probe.n_classes - 1}")


def select_candidates(p_want: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rejection over (n, k) probabilities of each image's k candidates (candidate 0 first).

    Best of k (``threshold`` None): the most probable candidate. With a threshold: the first candidate whose
    probability reaches it; an image none of whose candidates does keeps its best one, marked not accepted.
    Returns (chosen candidate per image, accepted per image).
    """
    p = np.asarray(p_want, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise CedmError(f"expected (images, candidates) probabilities, got shape {p.shape}")
    best = p.argmax(1)
    if threshold is None:
        return best, np.ones(len(p), dtype=bool)
    if not 0 <= float(threshold) <= 1:
        raise CedmError(f"threshold must lie in [0, 1], got {threshold}")
    ok = p >= float(threshold)
    first = np.where(ok.any(1), ok.argmax(1), best)
    return first, ok.any(1)

"""ODE samplers for a denoiser D(x; sigma), k-diffusion style: plain functions with one signature

    sample_<name>(denoise, x, sigmas, callback=None, **options) -> x_0

``denoise(x, sigma)`` returns the denoised estimate (sigma a 0-d tensor); ``x`` is the initial noise already
scaled to ``sigmas[0]``; ``sigmas`` is decreasing and ends with 0; ``callback(i, n, x, denoised)`` is called
after each step. The probability-flow ODE in EDM's parametrisation is dx/dsigma = (x - D(x; sigma)) / sigma.
The caller chooses the autograd mode (cedm.sampling.core.sample_batch: inference mode). torch is imported
inside the functions, so that the command line can read the registry's names without loading torch.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from cedm.errors import CedmError

if TYPE_CHECKING:
    import torch

Denoiser = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device="cpu", dtype=None) -> torch.Tensor:
    """EDM's schedule sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0 (N + 1 values).
    float64 unless ``dtype`` says otherwise."""
    import torch

    if steps < 1:
        raise CedmError(f"steps must be at least 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=dtype or torch.float64)


def _d(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor):
    denoised = denoise(x, sigma)
    return (x - denoised) / sigma, denoised


def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """First-order Euler steps of the probability-flow ODE (N evaluations)."""
    n = len(sigmas) - 1
    for i in range(n):
        d, denoised = _d(denoise, x, sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * d
        if callback is not None:
            callback(i, n, x, denoised)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                noise_like: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, algorithm 2): 2N - 1 evaluations, the last step Euler.

    With ``S_churn > 0`` noise is added back for sigma in [S_min, S_max] (gamma = min(S_churn/N, sqrt(2) - 1));
    ``noise_like(x)`` then supplies that noise (pass per-image generators through it for reproducibility).
    """
    n = len(sigmas) - 1
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_churn > 0 and S_min <= float(s_cur) <= S_max else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            eps = noise_like(x) if noise_like is not None else x.new_empty(x.shape).normal_()
            x = x + (s_hat ** 2 - s_cur ** 2).sqrt() * S_noise * eps
        d, denoised = _d(denoise, x, s_hat)
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:  # 2nd-order correction, except at the last step (sigma = 0)
            d_next, denoised = _d(denoise, x_next, s_next)
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if callback is not None:
            callback(i, n, x, denoised)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep 2nd order in lambda = -ln(sigma): N evaluations.

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h) D', with h = lambda_{i+1} - lambda_i and
    D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1}/h_i (first step: D' = D_i; last step to 0: x = D').
    """
    n = len(sigmas) - 1
    old_denoised = None
    for i in range(n):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # the exponential integrator's limit sigma -> 0 (first-order final step)
        else:
            lam, lam_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = lam_next - lam
            d = denoised
            if old_denoised is not None:
                r = (lam - (-sigmas[i - 1].log())) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
        old_denoised = denoised
        if callback is not None:
            callback(i, n, x, denoised)
    return x


SAMPLERS = {"heun": sample_heun, "euler": sample_euler, "dpmpp2m": sample_dpmpp_2m}


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise CedmError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}") from None


def n_evaluations(sampler: str, steps: int) -> int:
    """Network evaluations per image (batched guidance counts once)."""
    return 2 * steps - 1 if sampler == "heun" else steps

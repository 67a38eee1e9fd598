"""Samplers and guidance against the exact denoiser of a Gaussian mixture (tests/gmm.py).

Tolerances: per-cluster mean within 4 standard errors (+0.01), per-cluster std within 8 % (the 18-step Heun
schedule itself is about 5 % off at std 0.5 on this data: measured, and shrinking at 2nd order with more steps).
"""
import math

import pytest
import torch

from cedm.errors import CedmError
from cedm.sampling.guidance import check_guidance, guided_denoiser
from cedm.sampling.samplers import SAMPLERS, edm_sigmas, get_sampler, sample_heun
from tests.gmm import GaussianMixtureDenoiser

D, N = 16, 3000
STDS, WEIGHTS = [0.4, 0.5, 0.6], [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def gmm():
    means = torch.randn(3, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    return GaussianMixtureDenoiser(means, STDS, WEIGHTS)


def _noise(sigmas, n=N, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigmas[0]


def _check_cluster(samples, mean, std, n):
    err = ((samples.mean(0) - mean) ** 2).mean().sqrt()
    assert err < 4 * std / math.sqrt(n) + 0.01, f"mean off by {err:.4f}"
    s = (samples - samples.mean(0)).pow(2).mean().sqrt()
    assert abs(s / std - 1) < 0.08, f"std {s:.4f} vs {std}"


def test_schedule():
    s = edm_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert math.isclose(s[0], 80) and math.isclose(s[-2], 0.002, rel_tol=1e-9)
    assert (s[:-1] > s[1:]).all()
    with pytest.raises(CedmError):
        edm_sigmas(0)
    with pytest.raises(CedmError, match="unknown sampler"):
        get_sampler("ddim")


@pytest.mark.parametrize("sampler,steps", [("heun", 18), ("dpmpp2m", 20), ("euler", 100)])
def test_conditional_and_unconditional_match_the_mixture(gmm, sampler, steps):
    fn, sig = SAMPLERS[sampler], edm_sigmas(steps)
    for k in range(3):
        lab = torch.full((N,), k)
        out = fn(lambda x, s: gmm(x, s, lab), _noise(sig), sig)
        _check_cluster(out, gmm.means[k], STDS[k], N)
    out = fn(lambda x, s: gmm(x, s), _noise(sig), sig)
    nearest = torch.cdist(out, gmm.means).argmin(1)
    frac = torch.bincount(nearest, minlength=3) / N
    for k in range(3):
        assert abs(frac[k] - WEIGHTS[k]) < 0.04, f"cluster {k} fraction {frac[k]:.3f}"
        _check_cluster(out[nearest == k], gmm.means[k], STDS[k], int((nearest == k).sum()))


@pytest.mark.parametrize("sampler,order", [("heun", 2), ("dpmpp2m", 2), ("euler", 1)])
def test_convergence_order(sampler, order):
    """One Gaussian, exact ODE solution known: error falls by ~2^order when the steps double."""
    s = 0.5
    g = GaussianMixtureDenoiser(torch.zeros(1, 1), [s], [1.0])
    errs = []
    for steps in (32, 64):
        sig = edm_sigmas(steps)
        x = torch.ones(1, 1, dtype=torch.float64) * sig[0]
        out = SAMPLERS[sampler](lambda x, t: g(x, t, torch.zeros(1, dtype=torch.long)), x, sig)
        exact = s * sig[0] / math.sqrt(s * s + sig[0] ** 2)  # x(sigma) scales with sqrt(s^2 + sigma^2)
        errs.append(abs(float(out) / float(exact) - 1))
    ratio = errs[0] / errs[1]
    assert 2 ** order * 0.75 < ratio < 2 ** order * 1.5, f"error ratio {ratio:.2f}"


def test_heun_churn_still_samples_the_data(gmm):
    sig = edm_sigmas(32)
    lab = torch.full((N,), 1)
    gen = torch.Generator().manual_seed(5)
    out = sample_heun(lambda x, s: gmm(x, s, lab), _noise(sig), sig, S_churn=20, S_min=0.05, S_max=50,
                      noise_like=lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype))
    _check_cluster(out, gmm.means[1], STDS[1], N)


def test_guidance_w0_w1_reproduce_uncond_and_cond_in_one_batched_call(gmm):
    sig = edm_sigmas(18)
    n = 500
    lab = torch.arange(n) % 3
    x = _noise(sig, n)
    cond = SAMPLERS["heun"](lambda x, s: gmm(x, s, lab), x, sig)
    uncond = SAMPLERS["heun"](lambda x, s: gmm(x, s), x, sig)
    for w, ref in ((0.0, uncond), (1.0, cond)):
        gmm.calls.clear()
        out = SAMPLERS["heun"](guided_denoiser(gmm, lab, w, force_batched=True), x, sig)
        assert torch.allclose(out, ref, atol=1e-9), w
        assert len(gmm.calls) == 35 and all(b == 2 * n for b, _ in gmm.calls)  # one 2B call per evaluation
        gmm.calls.clear()
        out = SAMPLERS["heun"](guided_denoiser(gmm, lab, w), x, sig)  # shortcut: one half only
        assert torch.allclose(out, ref, atol=1e-9) and all(b == n for b, _ in gmm.calls)
    # w > 1 is the linear extrapolation D_u + w (D_c - D_u), checked at one point.
    xs, s = x[:4] * 0.01, torch.tensor(1.0, dtype=torch.float64)
    d = guided_denoiser(gmm, lab[:4], 3.0)(xs, s)
    du, dc = gmm(xs, s), gmm(xs, s, lab[:4])
    assert torch.allclose(d, du + 3 * (dc - du))
    with pytest.raises(CedmError, match="guidance must be >= 0"):
        guided_denoiser(gmm, lab, -1.0)


def test_guidance_refused_without_label_dropout():
    g = GaussianMixtureDenoiser(torch.zeros(2, 2), [1, 1], [0.5, 0.5], p_uncond=0.0)
    check_guidance(g, 1.0)  # plain conditional needs no unconditional branch
    with pytest.raises(CedmError, match="p_uncond = 0"):
        check_guidance(g, 2.0)
    with pytest.raises(CedmError, match="unconditional sampling"):
        check_guidance(g, 1.0, uncond=True)

"""Samplers and guidance against the exact denoiser of a Gaussian mixture (tests/gmm.py).

Tolerances: per-cluster mean within 4 standard errors (+0.01), per-cluster std within 8 % (the 18-step Heun
schedule itself is about 5 % off at std 0.5 on this data: measured, and shrinking at 2nd order with more steps).
"""
import math

import pytest
import torch

from cedm.errors import CedmError
from cedm.sampling.core import StackedRandomGenerator, make_settings, sample_batch
from cedm.sampling.guidance import GUIDANCE, Guidance, GuidanceKind, check_guidance, guided_denoiser, register_guidance
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
    with pytest.raises(CedmError, match="guidance must be a number >= 0"):
        guided_denoiser(gmm, lab, -1.0)


def test_guidance_refused_without_label_dropout():
    g = GaussianMixtureDenoiser(torch.zeros(2, 2), [1, 1], [0.5, 0.5], p_uncond=0.0)
    check_guidance(g, 1.0)  # plain conditional needs no unconditional branch
    with pytest.raises(CedmError, match="p_uncond = 0"):
        check_guidance(g, 2.0)
    with pytest.raises(CedmError, match="unconditional sampling"):
        check_guidance(g, 1.0, uncond=True)


def test_noise_source_is_per_image():
    a = StackedRandomGenerator([5, 6, 7]).randn((2, 3))
    b = StackedRandomGenerator([7, 5]).randn((2, 3))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])  # a row depends on its seed alone
    assert torch.equal(a[1], torch.randn((2, 3), generator=torch.Generator().manual_seed(6)))
    g = StackedRandomGenerator([1, 2])
    first, second = g.randn((4,)), g.randn_like(torch.zeros(2, 4))
    assert not torch.equal(first, second)  # churn noise continues each image's own stream
    with pytest.raises(ValueError):
        g.randn_like(torch.zeros(3, 4))


def test_settings_are_validated_in_one_place():
    for kw, msg in [(dict(steps=0), "steps must be at least 1"), (dict(sampler="ddim"), "unknown sampler"),
                    (dict(guidance=float("nan")), "guidance must be a number"),
                    (dict(guidance_interval="3"), "two noise levels"),
                    (dict(guidance_interval=(2.0, 1.0)), "LO < HI"), (dict(churn=-1), "churn must be")]:
        with pytest.raises(CedmError, match=msg):
            make_settings(**kw)
    s = make_settings("euler", 4, 2.0, "0.3,5", churn=3)
    assert s.churn == 0 and s.guidance == Guidance(2.0, (0.3, 5.0)) and hash(s) == hash(make_settings(
        "euler", 4, 2, [0.3, 5]))
    assert make_settings(guidance=3.0).normalized(conditional=False).guidance == Guidance(1.0)


def test_guidance_interval_runs_only_the_conditional_half_outside(gmm):
    """Outside [lo, hi] the denoiser is the plain conditional one (batch B); inside, the 2B guided one."""
    sig = edm_sigmas(12)
    n, lo, hi = 64, 0.5, 5.0
    lab = torch.arange(n) % 3
    gmm.calls.clear()
    settings = make_settings("dpmpp2m", 12, 2.5, (lo, hi))
    out = sample_batch(guided_denoiser(gmm, lab, settings.guidance), StackedRandomGenerator(range(n)), (D,),
                       settings)
    inside = [(b, s) for b, s in gmm.calls if lo <= s <= hi]
    assert inside and all(b == 2 * n for b, _ in inside)
    assert all(b == n for b, s in gmm.calls if not lo <= s <= hi) and len(gmm.calls) == 12

    def manual(x, s):  # the same thing written out
        dc = gmm(x, s, lab)
        if not lo <= float(s) <= hi:
            return dc
        du = gmm(x, s)
        return du + 2.5 * (dc - du)
    x0 = StackedRandomGenerator(range(n)).randn((D,)) * sig[0]
    ref = SAMPLERS["dpmpp2m"](manual, x0.double(), sig)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_a_new_guidance_kind_is_one_registry_entry(gmm):
    """A kind registered from outside (here: a constant shift, standing in for a classifier gradient that
    needs autograd) is used by the unchanged sampling core."""
    seen = {}

    def build(net, labels, g):
        def denoise(x, sigma):
            seen["grad"] = torch.is_grad_enabled() or torch.is_inference_mode_enabled()
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                energy = (xr ** 2).sum()  # grad = 2x: checks autograd works inside the loop
                (grad,) = torch.autograd.grad(energy, xr)
            return net(x, sigma, labels) + g.get("shift", 0.0) + 0 * grad
        return denoise

    register_guidance(GuidanceKind("test-shift", build=build, check=lambda model, g, conditional: None,
                                   needs_grad=True))
    try:
        lab = torch.zeros(8, dtype=torch.long)
        settings = make_settings("euler", 3, Guidance(1.0, kind="test-shift", params=(("shift", 0.25),)))
        out = sample_batch(guided_denoiser(gmm, lab, settings.guidance), StackedRandomGenerator(range(8)), (D,),
                           settings)
        sig = edm_sigmas(3)
        x0 = StackedRandomGenerator(range(8)).randn((D,)).double() * sig[0]
        ref = SAMPLERS["euler"](lambda x, s: gmm(x, s, lab) + 0.25, x0, sig)
        assert torch.allclose(out.double(), ref, atol=1e-5)
        assert seen["grad"] is False
    finally:
        GUIDANCE.pop("test-shift")

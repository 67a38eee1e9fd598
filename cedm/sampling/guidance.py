"""Guidance: how the sampler's denoiser is built from the network, the condition labels and a guidance spec.

A :class:`Guidance` is a small frozen spec (kind, scale w, optional sigma interval, kind-specific params);
``GUIDANCE`` is the registry of kinds. Adding a kind is ONE entry: a :class:`GuidanceKind` with

- ``build(net, labels, g) -> denoise(x, sigma)``: the denoiser the samplers call (``net(x, sigma, labels)`` is
  the preconditioned network, ``labels`` (B,) condition ids where ``net.uncond_index`` = no condition);
- ``check(model, g, conditional)``: refuse, with a CedmError, what this model cannot do (before any work);
- ``normalize(g, conditional)``: the canonical spec (requests with equal specs are batched together);
- ``needs_grad``: True when ``build``'s denoiser takes gradients (the sampling loop then runs under
  ``torch.no_grad`` instead of inference mode, and the denoiser enables grad itself).

The sampling loop (cedm.sampling.core) never looks at the kind.

**cfg**, classifier-free guidance (Ho & Salimans 2022):

    D_w(x; sigma, c) = D(x; sigma, none) + w (D(x; sigma, c) - D(x; sigma, none))

w = 0: unconditional, w = 1: plain conditional, w > 1: stronger guidance. The official C-EDM code writes
D = (1 + w') D(x|c) - w' D(x|none); the two agree with w' = w - 1 (its default w' = 0 is our w = 1). Both
halves are computed in ONE batched network call (batch 2B). With ``interval=(lo, hi)`` guidance applies only
for lo <= sigma <= hi (Kynkäänniemi et al. 2024); outside it only the conditional half runs (batch B).

A classifier-gradient kind (seed 004: D + w sigma^2 grad_x log p(y | x)) is another entry: its ``build``
wraps ``net`` with the probe's gradient, ``needs_grad=True``, ``params`` names the probe and target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from cedm.errors import CedmError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Guidance:
    """A guidance request. ``params``: kind-specific settings as a tuple of (name, value) pairs (hashable)."""
    scale: float = 1.0
    interval: tuple[float, float] | None = None
    kind: str = "cfg"
    params: tuple = field(default=())

    def __post_init__(self):
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise CedmError(f"guidance must be a number >= 0, got {self.scale!r}") from None
        if not (math.isfinite(scale) and scale >= 0):
            raise CedmError(f"guidance must be a number >= 0, got {self.scale}")
        object.__setattr__(self, "scale", scale)
        if self.kind not in GUIDANCE:
            raise CedmError(f"unknown guidance kind {self.kind!r}: choose one of {', '.join(GUIDANCE)}")
        if self.interval is not None:
            object.__setattr__(self, "interval", parse_interval(self.interval))
        object.__setattr__(self, "params", tuple(self.params))

    @property
    def spec(self) -> "GuidanceKind":
        return GUIDANCE[self.kind]

    def get(self, name: str, default=None):
        return dict(self.params).get(name, default)

    def active(self, sigma) -> bool:
        """Whether guidance applies at this noise level (always, without an interval)."""
        if self.interval is None:
            return True
        s = float(sigma)
        return self.interval[0] <= s <= self.interval[1]

    def record(self) -> dict:
        """What a sample record says about it."""
        out = {"guidance": self.scale}
        if self.interval is not None:
            out["guidance_interval"] = list(self.interval)
        if self.kind != "cfg":
            out["guidance_kind"] = self.kind
        return out


FULL_RANGE = ("full", "all", "none")


def parse_interval(value) -> tuple[float, float] | None:
    """'LO,HI' or (lo, hi) -> (lo, hi) sigmas with 0 <= lo < hi; None, '', 'full' or 0,inf -> None (guidance
    at every sigma)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("",) + FULL_RANGE):
        return None
    try:
        if isinstance(value, str):
            parts = [float(v) for v in value.replace(" ", "").split(",")]
        else:
            parts = [float(v) for v in value]
    except (TypeError, ValueError):
        raise CedmError(f"guidance interval must be two noise levels LO,HI, got {value!r}") from None
    if len(parts) != 2 or not all(math.isfinite(v) or v == math.inf for v in parts):
        raise CedmError(f"guidance interval must be two noise levels LO,HI, got {value!r}")
    lo, hi = parts
    if not 0 <= lo < hi:
        raise CedmError(f"guidance interval needs LO below HI, both at least 0 (0 <= LO < HI), got {lo:g},{hi:g}")
    return None if lo == 0 and hi == math.inf else (lo, hi)


@dataclass(frozen=True)
class GuidanceKind:
    """One registry entry (see the module docstring)."""
    name: str
    build: Callable[..., Denoiser]
    check: Callable[..., None]
    normalize: Callable[[Guidance, bool], Guidance] = lambda g, conditional: g
    needs_grad: bool = False


GUIDANCE: dict[str, GuidanceKind] = {}


def register_guidance(kind: GuidanceKind) -> GuidanceKind:
    GUIDANCE[kind.name] = kind
    return kind


# --- classifier-free guidance ---------------------------------------------------------------------------
def _cfg_check(model, g: Guidance, conditional: bool) -> None:
    """Refuse guidance that needs the "no condition" branch of a model trained without label dropout."""
    if model.n_conditions == 0:
        return
    p_uncond = float(model.info.get("p_uncond", 0.0))
    needs_uncond = not conditional or g.scale != 1.0
    if needs_uncond and p_uncond <= 0:
        what = "unconditional sampling" if not conditional else f"guidance w = {g.scale:g}"
        raise CedmError(f"{what} needs the model's unconditional branch, but this model was trained with "
                        "p_uncond = 0 (no label dropout); use guidance 1 (plain conditional) or train with "
                        "--p-uncond > 0")


def _cfg_normalize(g: Guidance, conditional: bool) -> Guidance:
    if not conditional or g.scale == 1.0:
        return Guidance(1.0)  # one plain call (the labels say "none" for unconditional rows)
    return g


def _cfg_build(net, labels: torch.Tensor, g: Guidance, force_batched: bool = False) -> Denoiser:
    w = g.scale
    none = torch.full_like(labels, net.uncond_index)

    def cond(x, sigma):
        return net(x, sigma, labels)

    if not force_batched and w == 1.0:
        return cond
    if not force_batched and w == 0.0 and g.interval is None:
        return lambda x, sigma: net(x, sigma, none)
    both = torch.cat([labels, none])  # made once, not per step

    def guided(x, sigma):
        if not g.active(sigma):
            return net(x, sigma, labels)
        d_cond, d_uncond = net(torch.cat([x, x]), sigma, both).chunk(2)
        return torch.lerp(d_uncond, d_cond, w)  # d_uncond + w (d_cond - d_uncond), one fused op

    return guided


register_guidance(GuidanceKind("cfg", build=_cfg_build, check=_cfg_check, normalize=_cfg_normalize))


# --- the entry points the rest of cedm uses --------------------------------------------------------------
def as_guidance(guidance=1.0, interval=None) -> Guidance:
    """A Guidance from a Guidance, or from a scale w (+ an optional interval): the one validation.
    ``interval`` None keeps a Guidance's own; 'full' asks for every sigma."""
    if isinstance(guidance, Guidance):
        return guidance if interval is None else replace(guidance, interval=parse_interval(interval))
    return Guidance(guidance, parse_interval(interval))


def check_guidance(model, guidance=1.0, uncond: bool = False) -> None:
    """Refuse guidance this model cannot do (``uncond``: an unconditional request of a conditional model)."""
    g = as_guidance(guidance)
    g.spec.check(model, g, not uncond)


def guided_denoiser(net, labels: torch.Tensor | None, guidance=1.0, force_batched: bool = False) -> Denoiser:
    """A ``denoise(x, sigma)`` for the samplers. ``labels`` (B,) in 0..C (C = none), or None for unconditional.

    For cfg, w = 1 (and w = 0 without an interval) need only one half, so they take a single call of batch B
    (same result); ``force_batched`` keeps the 2B call anyway (used by tests to check the combination).
    """
    g = as_guidance(guidance)
    if labels is None:
        def uncond(x, sigma):
            return net(x, sigma, torch.full((x.shape[0],), net.uncond_index, dtype=torch.long, device=x.device))
        return uncond
    if g.kind == "cfg":
        return _cfg_build(net, labels, g, force_batched=force_batched)
    return g.spec.build(net, labels, g)

"""The one sampling core: per-image noise, validated settings, one batched sampler call.

Every sampling path goes through here: ``cedm.sampling.generate`` (library, training grids, ``cedm eval``),
the inference engine's batch runner, and the plain reference. What stays outside: how conditions are chosen
(generate.choose_conditions), the engine's queue / batching across requests / cancellation / progress.

Per-image noise (as EDM's StackedRandomGenerator): image i of a batch owns a generator seeded with its seed
alone; that generator gives its initial noise and then its churn noise, so an image does not depend on the
batch it is computed in, the device, or the other images. Numbers are drawn on the CPU (device-independent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from cedm.errors import CedmError
from cedm.sampling.guidance import Guidance, as_guidance
from cedm.sampling.samplers import SAMPLERS, edm_sigmas, get_sampler, n_evaluations


class StackedRandomGenerator:
    """One ``torch.Generator`` per image seed; ``randn`` stacks one draw per image."""

    def __init__(self, seeds: Sequence[int], device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        """(len(seeds), *shape) standard normal, row i from generator i."""
        out = torch.empty((len(self.seeds), *shape), dtype=torch.float32)
        for row, g in zip(out, self.generators):
            torch.randn(tuple(shape), generator=g, out=row)
        return out.to(self.device, dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.seeds):
            raise ValueError(f"{x.shape[0]} rows but {len(self.seeds)} generators")
        return self.randn(x.shape[1:], x.dtype).to(x.device)


def check_count(what: str, value, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise CedmError(f"{what} must be an integer, got {value!r}") from None
    if v != value and not isinstance(value, str):
        raise CedmError(f"{what} must be an integer, got {value!r}")
    if v < minimum:
        raise CedmError(f"{what} must be at least {minimum}, got {v}")
    return v


@dataclass(frozen=True)
class Settings:
    """What a batched sampler call needs besides the noise and the labels; validated on creation.

    Equal settings can share a batch (the engine uses them as its batch key together with the model).
    ``churn`` is Heun's S_churn (other samplers are deterministic and ignore it: normalised to 0).
    """
    sampler: str = "heun"
    steps: int = 18
    guidance: Guidance = field(default_factory=Guidance)
    churn: float = 0.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        get_sampler(self.sampler)
        object.__setattr__(self, "steps", check_count("steps", self.steps))
        object.__setattr__(self, "guidance", as_guidance(self.guidance))
        try:
            churn = float(self.churn)
        except (TypeError, ValueError):
            raise CedmError(f"churn must be a number >= 0, got {self.churn!r}") from None
        if not (math.isfinite(churn) and churn >= 0):
            raise CedmError(f"churn must be a number >= 0, got {self.churn}")
        object.__setattr__(self, "churn", churn if self.sampler == "heun" else 0.0)
        if not 0 < self.sigma_min < self.sigma_max or self.rho <= 0:
            raise CedmError(f"noise schedule needs 0 < sigma_min < sigma_max and rho > 0, got "
                            f"{self.sigma_min:g}, {self.sigma_max:g}, {self.rho:g}")

    def normalized(self, conditional: bool) -> "Settings":
        """The canonical settings (the guidance kind's normalize): equal ones give the same images."""
        g = self.guidance
        return replace(self, guidance=g.spec.normalize(g, conditional))

    def for_model(self, model, conditional: bool) -> "Settings":
        """Check the guidance against the model (its kind's check), then normalise it."""
        self.guidance.spec.check(model, self.guidance, conditional)
        return self.normalized(conditional)

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (batched guidance counts once)."""
        return n_evaluations(self.sampler, self.steps)

    def sigmas(self, device="cpu") -> torch.Tensor:
        device = torch.device(device)
        return edm_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho, device=device,
                          dtype=torch.float32 if device.type == "mps" else torch.float64)

    def record(self) -> dict:
        return {"steps": self.steps, "sampler": self.sampler, "evaluations": self.evaluations,
                **({"churn": self.churn} if self.churn else {})}


def make_settings(sampler: str = "heun", steps: int = 18, guidance=1.0, guidance_interval=None,
                  churn: float = 0.0, info=None, **schedule) -> Settings:
    """The one request validation of sampler, steps, guidance (+ interval) and churn.

    ``guidance_interval``: (lo, hi) or 'LO,HI'; 'full' for every sigma; None for the model's default
    (``info``'s ``sampling.guidance_interval``, cedm.model.info), which is every sigma when it has none."""
    if guidance_interval is None and info is not None and not isinstance(guidance, Guidance):
        from cedm.model.info import default_guidance_interval

        guidance_interval = default_guidance_interval(info)
    return Settings(sampler, steps, as_guidance(guidance, guidance_interval), churn, **schedule)


def check_request(n, seed=0, best_of=1, max_images: int | None = None) -> tuple[int, int, int]:
    """Validate the counts of a request: (n, seed, best_of)."""
    n = check_count("number of images", n)
    seed = check_count("seed", seed, 0)
    best_of = check_count("best-of", best_of)
    if max_images is not None and n * best_of > max_images:
        raise CedmError(f"{n * best_of} images in one request exceed the limit of {max_images}")
    return n, seed, best_of


def labels_tensor(model, conditions: Sequence[int | None], device) -> torch.Tensor:
    """Condition ids per row, None -> the model's "no condition" index."""
    none = model.uncond_index
    return torch.tensor([none if c is None else int(c) for c in conditions], dtype=torch.long, device=device)


def sample_batch(denoise: Callable, noise: StackedRandomGenerator, shape: Sequence[int], settings: Settings,
                 callback=None, device="cpu", inference: bool = True) -> torch.Tensor:
    """Run one batched sampler call: x_0 (B, *shape) from the noise source's initial noise.

    ``denoise(x, sigma)``: e.g. guided_denoiser(net, labels, settings.guidance). ``inference``: run under
    inference mode (False: plain no_grad, for the reference and for guidance kinds that take gradients).
    """
    device = torch.device(device)
    sigmas = settings.sigmas(device)
    x = noise.randn(shape).to(device) * sigmas[0].to(torch.float32)
    opts = {}
    if settings.churn > 0:
        opts = dict(S_churn=settings.churn, noise_like=noise.randn_like)
    mode = torch.inference_mode() if inference and not settings.guidance.spec.needs_grad else torch.no_grad()
    with mode:
        return SAMPLERS[settings.sampler](denoise, x, sigmas, callback=callback, **opts)

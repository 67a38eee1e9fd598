"""Sampling with a probe: guidance toward a probe class, rejection, and both; optionally on top of a C-EDM's
classifier-free guidance (its trained condition) at the same time.

Seeds follow cedm.sampling.generate: image i of a call with seed S starts from seed S + i alone; best-of
candidate j > 0 uses a seed derived from (S + i, j) (cedm.inference.engine.derived_seed). Probe targets
drawn from q come from the same per-image stream as C-EDM conditions, so with the same labeling and seeds a
probe-guided run and a C-EDM run aim each image at the same cluster.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from cedm.errors import CedmError
from cedm.probes.guidance import check_targets, check_weight, probe_guidance, select_candidates


def probe_targets(probe, n: int, targets: int | Sequence[int] | None = None, from_q: bool = True,
                  seed: int = 0) -> list[int]:
    """The probe class of each image: fixed, listed, or drawn per image from the labeling's q (uniform
    otherwise); a two-class picked-vs-rest probe aims at the picks by default."""
    from cedm.sampling.generate import choose_conditions

    if targets is None and probe.info.get("default_target") is not None:
        targets = int(probe.info["default_target"])
    if targets is not None:
        check_targets(probe, [targets] if isinstance(targets, (int, np.integer)) else list(targets))
    shim = SimpleNamespace(n_conditions=probe.n_classes, info={"condition": {"q": probe.info.get("q")}})
    out = choose_conditions(shim, n, targets, from_q, False, seed)
    check_targets(probe, out)
    return out


def candidate_seeds(seed: int, n: int, best_of: int) -> list[int]:
    from cedm.inference.engine import derived_seed

    return [derived_seed(seed + i, j) for i in range(n) for j in range(best_of)]


def generate_with_probe(model, probe, n: int, targets=None, w: float = 1.0, from_q: bool = True,
                        clusters=None, cfg: float = 1.0, steps: int = 12, sampler: str = "dpmpp2m",
                        seed: int = 0, batch_size: int = 16, best_of: int = 1, threshold: float | None = None,
                        progress: Callable[[int, int, str], None] | None = None,
                        should_stop: Callable[[], bool] | None = None, output: str = "uint8",
                        sigma_max: float | None = None):
    """Sample ``n`` images of ``model`` guided by ``probe`` toward ``targets`` at weight ``w`` (0: unguided,
    same noise). ``best_of=k`` / ``threshold``: rejection by the probe's probability. For a C-EDM,
    ``clusters`` / ``cfg`` are its own condition and classifier-free guidance weight (None: unconditional).
    Returns (uint8 (n, R, R, 3) or float (n, 3, R, R), records)."""
    from cedm.sampling.generate import choose_conditions, to_uint8
    from cedm.sampling.guidance import check_guidance, guided_denoiser
    from cedm.sampling.samplers import edm_sigmas, get_sampler, n_evaluations

    n, best_of, batch_size, steps = int(n), int(best_of), int(batch_size), int(steps)
    if n < 1 or best_of < 1 or batch_size < 1:
        raise CedmError("n, best-of and batch size must be at least 1")
    if threshold is not None and best_of < 2:
        raise CedmError("a rejection threshold needs --best-of 2 or more candidates to choose from")
    w = check_weight(w)
    sample_fn = get_sampler(sampler)
    if probe.model is not model:
        probe.check_model(model)
        probe.model = model
    tg = probe_targets(probe, n, targets, from_q, seed)
    conds = choose_conditions(model, n, clusters, from_q=True, uncond=clusters is None, seed=seed) \
        if model.n_conditions > 0 else [None] * n
    conditional = conds[0] is not None
    if conditional:
        check_guidance(model, cfg)
    seeds = candidate_seeds(seed, n, best_of)
    rows_t = [t for t in tg for _ in range(best_of)]
    rows_c = [c for c in conds for _ in range(best_of)]
    dev = next(model.parameters()).device
    sigmas = edm_sigmas(steps, device=dev)
    R = int(model.resolution)
    total = len(seeds)
    out = torch.empty((total, 3, R, R), dtype=torch.float32)
    done = [0]
    for s in range(0, total, batch_size):
        sl = slice(s, min(total, s + batch_size))
        x = torch.stack([torch.randn((3, R, R), generator=torch.Generator().manual_seed(q))
                         for q in seeds[sl]]).to(dev) * sigmas[0].float()
        labels = torch.tensor(rows_c[sl], dtype=torch.long, device=dev) if conditional else None
        base = guided_denoiser(model, labels, cfg if conditional else 0.0)
        denoise = probe_guidance(base, probe, torch.tensor(rows_t[sl], device=dev), w, sigma_max)
        nb = sl.stop - sl.start

        def callback(i, total_steps, _x, _d, nb=nb):
            if should_stop is not None and should_stop():
                raise CedmError("sampling stopped")
            if progress is not None:
                progress(done[0] + nb * (i + 1) // total_steps, total, "sampling with probe guidance")

        with torch.no_grad():
            out[sl] = sample_fn(denoise, x, sigmas, callback=callback).float().cpu()
        done[0] += nb
    rows = np.arange(n) * best_of
    extra = [{} for _ in range(n)]
    p_all = probe.proba_images(out.to(dev))
    p_want = p_all[np.arange(total), np.asarray(rows_t)]
    if best_of > 1:
        chosen, accepted = select_candidates(p_want.reshape(n, best_of), threshold)
        rows = rows + chosen
        extra = [{"best_of": best_of, "candidate": int(chosen[i]), "accepted": bool(accepted[i])}
                 for i in range(n)]
    x = out[torch.from_numpy(rows)]
    records = [{"index": i, "seed": seeds[rows[i]], "probe_class": int(tg[i]),
                "probe_class_name": probe.class_names[tg[i]], "probe_probability": float(p_want[rows[i]]),
                "probe_guidance": w, "condition": rows_c[rows[i]], "guidance": cfg if conditional else None,
                "steps": steps, "sampler": sampler, "evaluations": n_evaluations(sampler, steps),
                "guided_by": "probe" if not conditional else "classifier-free + probe",
                "probe_labeling": probe.info.get("labeling"), **extra[i]} for i in range(n)]
    return (x if output == "float" else to_uint8(x)), records

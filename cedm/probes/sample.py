"""Sampling with a probe: guidance toward a probe class, rejection, and both; optionally on top of a C-EDM's
classifier-free guidance (its trained condition) at the same time. Runs on the one sampling core
(cedm.sampling.core) with the ``probe`` guidance kind (cedm.probes.kind).

Seeds follow cedm.sampling.generate: image i of a call with seed S starts from seed S + i alone; best-of
candidate j > 0 uses a seed derived from (S + i, j) (cedm.inference.engine.derived_seed). Probe targets
drawn from q come from the same per-image stream as C-EDM conditions, so with the same labeling and seeds a
probe-guided run and a C-EDM run aim each image at the same cluster.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np
import torch

from cedm.errors import CedmError
from cedm.probes.guidance import check_targets, select_candidates


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
    return choose_conditions(shim, n, targets, from_q, False, seed)


def candidate_seeds(seed: int, n: int, best_of: int) -> list[int]:
    from cedm.inference.engine import derived_seed

    return [derived_seed(seed + i, j) for i in range(n) for j in range(best_of)]


def generate_with_probe(model, probe, n: int, targets=None, w: float = 1.0, from_q: bool = True,
                        condition: int | None = None, cfg: float = 1.0, steps: int = 12, sampler: str = "dpmpp2m",
                        seed: int = 0, batch_size: int = 16, best_of: int = 1, threshold: float | None = None,
                        interval=None, progress: Callable[[int, int, str], None] | None = None,
                        should_stop: Callable[[], bool] | None = None, output: str = "uint8"):
    """Sample ``n`` images of ``model`` guided by ``probe`` (a Probe, or its folder) toward ``targets`` at
    weight ``w`` (0: unguided, same noise). ``best_of=k`` / ``threshold``: rejection by the probe's probability.
    For a C-EDM, ``condition`` / ``cfg``: its own condition and classifier-free guidance weight (None: its
    unconditional branch). ``interval`` (lo, hi): probe guidance only there.
    Returns (uint8 (n, R, R, 3) or float (n, 3, R, R), records)."""
    from cedm.probes.kind import describe, prepare, probe_spec, select
    from cedm.sampling.core import (
        StackedRandomGenerator,
        check_count,
        check_request,
        make_settings,
        sample_batch,
    )
    from cedm.sampling.generate import to_uint8
    from cedm.sampling.guidance import guided_denoiser

    folder = getattr(probe, "folder", None) if hasattr(probe, "info") else probe
    if folder is None:
        raise CedmError("a probe must be saved (a probe folder) before sampling with it")
    g = probe_spec(folder, w, cfg, condition, interval)
    settings = make_settings(sampler, steps, g)
    n, seed, best_of = check_request(n, seed, best_of)
    batch_size = check_count("batch size", batch_size)
    if threshold is not None and best_of < 2:
        raise CedmError("a rejection threshold needs --best-of 2 or more candidates to choose from")
    run = settings.for_model(model, True)
    labels_img = prepare(model, g, n, targets, from_q, seed)
    seeds = candidate_seeds(seed, n, best_of)
    rows_l = [lab for lab in labels_img for _ in range(best_of)]
    dev = next(model.parameters()).device
    R = int(model.resolution)
    total = len(seeds)
    out = torch.empty((total, 3, R, R), dtype=torch.float32)
    done = 0
    for s in range(0, total, batch_size):
        sl = slice(s, min(total, s + batch_size))
        nb = sl.stop - sl.start
        labels = torch.tensor(rows_l[sl], dtype=torch.long, device=dev)

        def callback(i, total_steps, _x, _d, nb=nb, done=done):
            if should_stop is not None and should_stop():
                raise CedmError("sampling stopped")
            if progress is not None:
                progress(done + nb * (i + 1) // total_steps, total, "sampling with probe guidance")

        out[sl] = sample_batch(guided_denoiser(model, labels, run.guidance), StackedRandomGenerator(seeds[sl]),
                               (3, R, R), run, callback, dev).float().cpu()
        done += nb
    p_want = select(model, g, out, rows_l)
    rows = np.arange(n) * best_of
    extra = [{} for _ in range(n)]
    if best_of > 1:
        chosen, accepted = select_candidates(p_want.reshape(n, best_of), threshold)
        rows = rows + chosen
        extra = [{"best_of": best_of, "candidate": int(chosen[i]), "accepted": bool(accepted[i])}
                 for i in range(n)]
    x = out[torch.from_numpy(rows)]
    records = [{"index": i, "seed": seeds[rows[i]], **describe(model, g, rows_l[rows[i]]),
                "probe_probability": float(p_want[rows[i]]), "probe_guidance": g.scale,
                "guidance": g.get("cfg") if condition is not None else None, **settings.record(),
                "probe": str(g.get("probe")), **extra[i]} for i in range(n)]
    return (x if output == "float" else to_uint8(x)), records

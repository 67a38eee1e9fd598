"""Generate images from a C-EDM model: conditions, per-image seeds, guidance, batching, saving.

Image i of a call with ``seed=S`` uses seed S + i alone: its initial noise and its churn noise come from its
own generator (cedm.sampling.core.StackedRandomGenerator), its condition when drawn from q(c) from one seeded
with (S + i, 0xC0D), so the same seed gives the same
starting noise whatever the cluster, the guidance, the batch size or the other images in the call. That is
what lets the app show one noise under several conditions side by side.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cedm import io
from cedm.errors import CedmError
from cedm.sampling.core import (StackedRandomGenerator, check_count, check_request, labels_tensor, make_settings,
                                sample_batch)
from cedm.sampling.guidance import guided_denoiser

_COND_STREAM = 0xC0D  # second seed word of the per-image generator that draws a condition from q(c)


def _model_device(model) -> torch.device:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device(getattr(model, "device", "cpu"))


def choose_conditions(model, n: int, clusters: int | Sequence[int] | None = None, from_q: bool = True,
                      uncond: bool = False, seed: int = 0) -> list[int | None]:
    """The condition of each image: None (unconditional), a fixed cluster, a list, or drawn per image."""
    C = int(model.n_conditions)
    if uncond or C == 0:
        if clusters is not None:
            raise CedmError("clusters were given but unconditional sampling was asked for" if uncond else
                            "this model is unconditional (trained without conditions): it takes no clusters")
        return [None] * n
    if clusters is not None:
        cl = [int(clusters)] * n if isinstance(clusters, (int, np.integer)) else [int(c) for c in clusters]
        if len(cl) != n:
            raise CedmError(f"{len(cl)} clusters listed for {n} images: give one per image")
        bad = [c for c in cl if not 0 <= c < C]
        if bad:
            raise CedmError(f"cluster {bad[0]} does not exist: this model has clusters 0..{C - 1}")
        return cl
    q = np.asarray((model.info.get("condition") or {}).get("q") or [], dtype=np.float64) if from_q else None
    if q is None or len(q) != C or q.sum() <= 0:
        q = np.full(C, 1.0 / C)  # uniform when asked, or when the model carries no q(c)
    q = q / q.sum()
    return [int(np.random.default_rng([seed + i, _COND_STREAM]).choice(C, p=q)) for i in range(n)]


def generate(model, n: int, clusters: int | Sequence[int] | None = None, from_q: bool = True, uncond: bool = False,
             guidance: float = 1.0, steps: int = 18, sampler: str = "heun", seed: int = 0, batch_size: int = 16,
             progress: Callable[[int, int, str], None] | None = None, sigma_min: float = 0.002,
             sigma_max: float = 80.0, rho: float = 7.0, churn: float = 0.0,
             guidance_interval=None) -> tuple[np.ndarray, list[dict]]:
    """Sample ``n`` images. Returns uint8 (n, R, R, 3) and one record per image.

    Conditions: ``clusters`` an int (all images) or a list (one per image); else drawn from the training
    distribution q(c) (``from_q``, the default; uniform otherwise); ``uncond`` for none.
    ``guidance`` w: 0 unconditional, 1 conditional (default), > 1 stronger (see cedm.sampling.guidance; a
    Guidance spec is accepted too); ``guidance_interval`` (lo, hi): guide only for sigma in it.
    ``sampler``: heun (EDM, 2 steps - 1 evaluations), euler, dpmpp2m (few-step). ``churn``: Heun's S_churn.
    """
    settings = make_settings(sampler, steps, guidance, guidance_interval, churn, getattr(model, "info", None),
                             sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    n, seed, _ = check_request(n, seed)
    batch_size = check_count("batch size", batch_size)
    conditions = choose_conditions(model, n, clusters, from_q, uncond, seed)
    conditional = conditions[0] is not None
    run = settings.for_model(model, conditional)
    device = _model_device(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    R = int(model.resolution)
    out = np.empty((n, R, R, 3), dtype=np.uint8)
    n_batches = math.ceil(n / batch_size)
    done_steps, total_steps = 0, n_batches * settings.steps
    try:
        for b in range(n_batches):
            idx = range(b * batch_size, min(n, (b + 1) * batch_size))
            labels = labels_tensor(model, [conditions[i] for i in idx], device)

            def callback(i, total, _x, _d, b=b):
                nonlocal done_steps
                done_steps += 1
                if progress is not None:
                    progress(done_steps, total_steps, f"batch {b + 1}/{n_batches}, step {i + 1}/{total}")

            x = sample_batch(guided_denoiser(model, labels, run.guidance),
                             StackedRandomGenerator([seed + i for i in idx]), (3, R, R), run, callback, device)
            out[idx.start:idx.stop] = to_uint8(x)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    g = settings.guidance.record() if conditional else {"guidance": None}
    records = [{"index": i, "seed": seed + i, "condition": conditions[i], **g, **settings.record()}
               for i in range(n)]
    return out, records


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, R, R) in [-1, 1] -> uint8 (B, R, R, 3)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 (N, R, R, 3) images into one uint8 image (white padding)."""
    n, R = len(images), images.shape[1]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (R + pad) + pad, cols * (R + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (R + pad): pad + r * (R + pad) + R, pad + c * (R + pad): pad + c * (R + pad) + R] = im
    return grid


def save_samples(images: np.ndarray, records: list[dict], out_dir, extra: dict | None = None) -> Path:
    """Write <out>/<index>.png per image, grid.png and samples.jsonl (one JSON record per image)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for im, rec in zip(images, records):
        name = f"{rec['index']:05d}.png"
        with io.atomic_file(out_dir / name) as tmp:
            Image.fromarray(im).save(tmp, format="PNG")
        lines.append(json.dumps({"file": name, **rec, **(extra or {})}, sort_keys=True))
    with io.atomic_file(out_dir / "grid.png") as tmp:
        Image.fromarray(image_grid(images)).save(tmp, format="PNG")
    io.write_text(out_dir / "samples.jsonl", "\n".join(lines) + "\n")
    return out_dir

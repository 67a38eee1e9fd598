"""Evaluating a trained model (`cedm eval`): samples with the same seeds for every model and setting (generated
in resumable chunks), their Fréchet distance to the workspace's real images for each metric (cedm.fd: FD_EffNetLite0
always, FID / FD_DINOv2 when their weights can be had, each with its noise floor), and their MSP and agreement under
the model's condition classifier (cedm.clusters.assign). Results go under ``<home>/eval/<model>``, never into a
model folder.

Confidence (C-EDM sec. 5): the maximum softmax probability (MSP) of a generated sample under the classifier
of the model's condition labeling (the TEMI head; for k-means a softmax over cosine similarities to the
centroids at TEMI's temperature 0.1), applied to the labeling backbone's features of the sample. For
conditioned models ``agreement`` is the fraction of samples the classifier puts in the cluster they were
generated from.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from cedm import __version__, io
from cedm.clusters.assign import condition_head, sample_confidence
from cedm.errors import CedmError
from cedm.fd import (OFFLINE_BACKBONE, STAGE_REAL, Progress, real_params, backbone_net, extract, frechet_distance,
                     metric_nets, noise_floor, real_features, real_images)
from cedm.sampling.guidance import parse_interval

GENERATE_CHUNK = 256          # generated images saved per resumable chunk


# --- generation, resumable ----------------------------------------------------------------------------
def settings_key(ws, n: int, seed: int, w: float | None, from_q: bool, sampler: str, steps: int,
                 interval: tuple[float, float] | None = None) -> str:
    cond = "uncond" if w is None else f"{'q' if from_q else 'uniform'}-w{w:g}"
    if interval is not None and w is not None:
        cond += f"-gi{interval[0]:g}-{interval[1]:g}"
    return f"{ws.name}-n{n}-seed{seed}-{cond}-{sampler}{steps}"


def model_fingerprint(model_dir) -> str:
    """sha256 of the EMA weights file (what sampling uses)."""
    from cedm.features.backbones import file_sha256

    files = sorted((Path(model_dir) / "unet_ema").glob("*.safetensors"))
    if not files:
        raise CedmError(f"{model_dir} has no unet_ema/*.safetensors weights")
    return file_sha256(files[0])


def generate_resumable(model, n: int, conditions: Sequence[int | None], w: float, seed: int, sampler: str,
                       steps: int, batch_size: int, partial: Path, progress: Progress | None = None,
                       interval: tuple[float, float] | None = None) -> np.ndarray:
    """generate() in chunks of GENERATE_CHUNK images, each saved to ``partial``: a rerun skips finished
    chunks. Seeds are per image (S + i), so chunking does not change any image."""
    from cedm.sampling.generate import generate

    R = model.resolution
    out = np.empty((n, R, R, 3), dtype=np.uint8)
    for start in range(0, n, GENERATE_CHUNK):
        stop = min(n, start + GENERATE_CHUNK)
        f = partial / f"{start:07d}-{stop:07d}.npy"
        if f.is_file():
            chunk = io.load_npy(f)
            if chunk.shape == (stop - start, R, R, 3):
                out[start:stop] = chunk
                continue
        cl = None if conditions[0] is None else list(conditions[start:stop])

        def prog(done, total, desc, start=start):
            if progress:
                progress(start + (stop - start) * done // max(total, 1), n, f"sampling {desc}")

        chunk, _ = generate(model, stop - start, clusters=cl, uncond=cl is None and model.n_conditions > 0,
                            guidance=1.0 if w is None else w, steps=steps, sampler=sampler, seed=seed + start,
                            batch_size=batch_size, progress=prog, guidance_interval=interval)
        io.save_npy(f, chunk)
        out[start:stop] = chunk
    return out


# --- evaluating a model -------------------------------------------------------------------------------
def default_eval_dir(model_dir, home=None) -> Path:
    """Where `cedm eval` writes a model's results: ``<home>/eval/<model name>``."""
    from cedm.workspace import default_home

    return Path(home or default_home()).expanduser() / "eval" / Path(model_dir).name


def guidance_plan(model_dir, guidance: Sequence[float]) -> tuple[list[float | None], list[str]]:
    """The guidance values to run for a model (None = unconditional model, evaluated once) and notes on
    skipped ones. Refuses, before any work, guidance that the model cannot do (check_guidance)."""
    from types import SimpleNamespace

    from cedm.model.edm import read_model_info
    from cedm.sampling.guidance import check_guidance

    info = read_model_info(model_dir)
    values = [float(w) for w in guidance]
    if not values:
        raise CedmError("no guidance values given")
    if any(not np.isfinite(w) or w < 0 for w in values):
        raise CedmError(f"guidance must be a number >= 0, got {', '.join(f'{w:g}' for w in values)}")
    C = int(info.get("n_conditions", 0))
    if C == 0:
        skipped = sorted({w for w in values if w != 1.0})
        notes = [f"unconditional model: guidance w = {', '.join(f'{w:g}' for w in skipped)} skipped "
                 "(evaluated once, without guidance)"] if skipped else []
        return [None], notes
    plan = list(dict.fromkeys(values))
    for w in plan:  # e.g. a model trained with p_uncond = 0 refuses w != 1
        check_guidance(SimpleNamespace(n_conditions=C, info=info), w)
    return plan, []


def evaluate_model(model_dir, ws, n: int = 1000, seed: int = 0, guidance: Sequence[float] = (1.0,),
                   from_q: bool = True, sampler: str = "heun", steps: int = 18, batch_size: int = 64,
                   backbone: str = OFFLINE_BACKBONE, backbone_weights=None, inception_weights=None,
                   dinov2_weights=None, extra_metrics: bool = True, head_from=None,
                   progress: Progress | None = None, device=None, out_dir=None, guidance_interval=None) -> dict:
    """Generate ``n`` samples per guidance value and measure them against all real images of ``ws``.

    Returns {"model", "results": [one dict per setting], "notes"}; each result is also written to
    ``<out_dir>/<settings-key>.json`` (default ``<home>/eval/<model name>``: never the model's folder, which
    may be a read-only shipped checkpoint). ``guidance_interval`` (lo, hi): guide only for sigma in it.
    Results are always recomputed (only finished chunks of samples and the real-image features are reused),
    so a rerun checks the numbers rather than reading them back. ``head_from``: the model folder whose condition classifier scores MSP (default: this
    model; pass a conditioned model for an unconditional one, so that both are scored by one classifier).
    FID / FD_DINOv2 are added when their weights can be had (``extra_metrics``), else noted as skipped.
    """
    from cedm.device import resolve_device
    from cedm.model.edm import load_model, read_model_info
    from cedm.sampling.generate import choose_conditions

    model_dir = Path(model_dir)
    n, seed, steps = int(n), int(seed), int(steps)
    if n < 2:
        raise CedmError(f"need at least 2 samples for a Fréchet distance, got n = {n}")
    info = read_model_info(model_dir)
    prov = info.get("provenance") or {}
    if prov.get("workspace_hash") and prov["workspace_hash"] != ws.content_hash:
        raise CedmError(f"model {model_dir.name} was trained on workspace {prov.get('workspace')!r}, whose "
                        f"images differ from workspace {ws.name!r}: evaluate it against its own workspace")
    plan, notes = guidance_plan(model_dir, guidance)
    dev = resolve_device(device) if not hasattr(device, "type") else device
    model = load_model(model_dir, dev)
    out_dir = Path(out_dir) if out_dir is not None else default_eval_dir(model_dir)
    interval = parse_interval(guidance_interval)
    fingerprint = model_fingerprint(model_dir)
    R = model.resolution

    # Real side: features at the model resolution (cached), their statistics and the noise floor.
    nets, net_notes = metric_nets(backbone, backbone_weights, inception_weights, dinov2_weights,
                                  extra_metrics, dev, progress=progress)
    notes += net_notes
    reals = None
    real_feats, floors = {}, {}
    subset = np.sort(np.random.default_rng(seed).choice(ws.n, n, replace=False)) if n < ws.n else None
    if subset is None:
        notes.append(f"noise floor skipped: n = {n} is not below the {ws.n} real images")
    for net in nets:
        if reals is None and ws.find_artifact(STAGE_REAL, real_params(net, R)) is None:
            reals = real_images(ws, R)
        real_feats[net.metric] = real_features(ws, net, R, reals, progress)
        floors[net.metric] = noise_floor(ws, net, R, real_feats[net.metric], subset, seed)

    # The condition classifier, and its MSP on real images at the same resolution for reference.
    head, why = condition_head(head_from or model_dir, ws)
    own_head = head is not None and (head_from is None or Path(head_from).resolve() == model_dir.resolve())
    msp_real, head_net = None, None
    if head is None:
        notes.append(f"MSP skipped: {why}")
    else:
        head_net = next((net for net in nets if net.identity == backbone_net(head.backbone, head.weights,
                                                                             dev).identity), None)
        head_net = head_net or backbone_net(head.backbone, head.weights, dev)
        real_head_feats = real_features(ws, head_net, R, reals, progress)
        msp_real = float(sample_confidence(head, None, features=real_head_feats)[1].mean())

    results = []
    for w in plan:
        key = settings_key(ws, n, seed, w, from_q, sampler, steps, interval)
        label = f"{model_dir.name} w={'-' if w is None else f'{w:g}'}"
        t0 = time.perf_counter()
        conditions = choose_conditions(model, n, None, from_q, uncond=w is None, seed=seed)
        partial = out_dir / ".partial" / f"{key}-{fingerprint[:12]}"
        partial.mkdir(parents=True, exist_ok=True)
        images = generate_resumable(model, n, conditions, w, seed, sampler, steps, batch_size, partial,
                                    interval=interval if w is not None else None,
                                    progress=(lambda d, t, s: progress(d, t, f"{label}: {s}")) if progress else None)
        t_sample = time.perf_counter() - t0
        res = {
            "model": str(model_dir), "model_name": model_dir.name, "model_sha256": fingerprint,
            "condition": (info.get("condition") or {}).get("spec") or "none",
            "n_conditions": int(info.get("n_conditions", 0)), "guidance": w, "n": n, "seed": seed,
            "guidance_interval": list(interval) if interval is not None and w is not None else None,
            "conditions_from": None if w is None else ("q" if from_q else "uniform"),
            "sampler": sampler, "steps": steps, "resolution": R,
            "workspace": ws.name, "workspace_hash": ws.content_hash, "n_real": ws.n,
        }
        gen_feats = {}
        for net in nets:
            gen_feats[net.metric] = extract(net, images, progress, f"{label}: {net.metric} features")
            res[net.metric] = frechet_distance(gen_feats[net.metric], real_feats[net.metric])
            res[f"{net.metric}_floor"] = floors[net.metric]
        res.update(MSP=None, MSP_real=msp_real, agreement=None, msp_classifier=None)
        if head is not None:
            shared = any(head_net is net for net in nets)  # the FD backbone is the labeling's: reuse
            clusters, msp = sample_confidence(head, images, dev, progress,
                                              features=gen_feats[head_net.metric] if shared else None)
            res["MSP"] = float(msp.mean())
            if own_head and w is not None:
                res["agreement"] = float(np.mean(clusters == np.asarray(conditions)))
            res["msp_classifier"] = {"spec": head.spec, "backbone": head.backbone, "artifact": head.artifact,
                                     "model": str(head_from or model_dir)}
        res.update(metrics={net.metric: {**net.identity, "weights_file": net.weights_file} for net in nets},
                   notes=list(notes),
                   seconds=time.perf_counter() - t0, sample_seconds=t_sample, device=str(dev),
                   cedm_version=__version__, created=time.time())
        io.write_json(out_dir / f"{key}.json", res)
        shutil.rmtree(partial, ignore_errors=True)
        results.append(res)
    partial_root = out_dir / ".partial"
    if partial_root.is_dir() and not any(partial_root.iterdir()):
        partial_root.rmdir()
    return {"model": str(model_dir), "results": results, "notes": notes}

"""Measuring probe-guided sampling like any model (cedm.fd): FD_EffNetLite0 against the workspace's real
images, and agreement = the share of samples that the probe labeling's OWN assigner (its k-means centroids or
TEMI head on the labeling backbone's features) puts in the class they were guided toward. Never the probe
that guided them: that would grade the guidance with its own classifier.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cedm import __version__, io
from cedm.errors import CedmError
from cedm.clusters.assign import labeling_head, sample_confidence


def evaluate_probe(model_dir, probe_dir, ws, n: int = 500, seed: int = 0, weights: Sequence[float] = (1.0,),
                   best_of: int = 1, sampler: str = "dpmpp2m", steps: int = 12, batch_size: int = 32,
                   condition: int | None = None, cfg: float = 1.0, interval=None, progress=None, device=None,
                   out_dir=None) -> dict:
    """Generate ``n`` probe-guided samples per weight w (targets drawn from the labeling's q with the per-image
    stream C-EDM conditions use) and measure FD_EffNetLite0 and agreement. Results go to
    ``<out_dir>/probe-<settings>.json`` (default ``<model>/eval``)."""
    from cedm.device import resolve_device
    from cedm.fd import backbone_net, extract, frechet_distance, real_features
    from cedm.features.backbones import OFFLINE_BACKBONE
    from cedm.model.edm import load_model
    from cedm.probes.kind import probe_for
    from cedm.probes.sample import generate_with_probe

    model_dir, probe_dir = Path(model_dir), Path(probe_dir)
    dev = resolve_device(device) if not hasattr(device, "type") else device
    model = load_model(model_dir, dev)
    probe = probe_for(model, probe_dir)
    if probe.info.get("workspace_hash") not in (None, ws.content_hash):
        raise CedmError(f"probe {probe_dir.name} was trained on another workspace than {ws.name!r}")
    net = backbone_net(OFFLINE_BACKBONE, None, dev)
    real = real_features(ws, net, model.resolution, None, progress)
    head, why = labeling_head(ws, probe.info.get("labeling"), probe.info.get("labels_sha"))
    notes = [] if head is not None else [f"agreement skipped: {why}"]
    out_dir = Path(out_dir) if out_dir is not None else model_dir / "eval"
    results = []
    for w in weights:
        t0 = time.perf_counter()
        images, recs = generate_with_probe(model, probe, n, None, w, True, condition, cfg, steps, sampler, seed,
                                           batch_size, best_of, None, interval, progress)
        t_sample = time.perf_counter() - t0
        feats = extract(net, images)
        res = {"model": str(model_dir), "model_name": model_dir.name, "probe": str(probe_dir),
               "labeling": probe.info.get("labeling"), "route": probe.settings.route, "probe_guidance": float(w),
               "best_of": int(best_of), "condition": condition, "cfg": cfg if condition is not None else None,
               "n": int(n), "seed": int(seed), "sampler": sampler, "steps": int(steps),
               "FD_EffNetLite0": frechet_distance(feats, real), "agreement": None, "MSP": None,
               "probe_probability": float(np.mean([r["probe_probability"] for r in recs])),
               "sample_seconds": t_sample, "seconds_per_image": t_sample / n, "device": str(dev),
               "workspace": ws.name, "notes": notes, "cedm_version": __version__, "created": time.time()}
        if head is not None:
            same = head.backbone == OFFLINE_BACKBONE and not head.weights
            clusters, msp = sample_confidence(head, images, dev, features=feats if same else None)
            targets = np.asarray([r["probe_class"] for r in recs])
            res.update(agreement=float(np.mean(clusters == targets)), MSP=float(msp.mean()),
                       agreement_classifier={"spec": head.spec, "artifact": head.artifact})
        key = (f"probe-{probe_dir.name}-{ws.name}-n{n}-seed{seed}-w{w:g}"
               f"-best{best_of}-{sampler}{steps}" + (f"-cond{condition}-cfg{cfg:g}" if condition is not None else ""))
        io.write_json(out_dir / f"{key}.json", res)
        results.append(res)
    return {"model": str(model_dir), "probe": str(probe_dir), "results": results, "notes": notes}

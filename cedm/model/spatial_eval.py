"""Layout fidelity in ``cedm eval`` (seed 003, issue step 4): mean layout IoU over the workspace's own layouts.

``cedm eval MODEL... --layout-iou box|segments:S``: n workspace rows, evenly spaced; their self-annotations
(the cached artifact, computed when missing) are the layouts and their clusters (the model's own labeling)
the conditions. A spatial model samples each image under its row's layout; any other model (image-level or
unconditional) samples with the same cluster and the same seed: its IoU with the same layouts is the
baseline. The samples are self-annotated by the same annotator as the layouts (the workspace's backbone;
segments: its centroids) and compared with cedm.annotate.metrics.layout_iou at the model resolution. The real
images of those rows, brought to the model resolution and annotated the same way, give the ceiling (what the
annotator recovers from a real image at that resolution). The same samples give FD_EffNetLite0 against all
real images (cedm.fd's cached real features).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cedm.errors import CedmError


def layout_rows(ws, n: int) -> np.ndarray:
    """``n`` workspace rows, evenly spaced over the workspace (n <= its size)."""
    n = int(n)
    if not 1 <= n <= ws.n:
        raise CedmError(f"--n must be 1..{ws.n} (the workspace's images) for layout IoU, got {n}")
    return np.unique(np.linspace(0, ws.n - 1, n).round().astype(np.int64))


def layouts_at(kind: str, layouts, n_segments, source_resolution: int, resolution: int):
    """(maps (n, ch, r, r), targets at r): the workspace layouts encoded for a model of resolution r, and what
    the IoU compares the samples' annotations with (the layout as the model sees it)."""
    from cedm.model.spatial import encode_boxes, encode_segments, layout_of_maps

    if kind == "box":
        maps = encode_boxes(np.asarray(layouts), source_resolution, resolution)
    else:
        maps = encode_segments(np.asarray(layouts), int(n_segments), resolution)
    return maps, layout_of_maps(maps)


def _model_clusters(ws, info: dict, rows: np.ndarray) -> np.ndarray | None:
    """The rows' condition indices under the model's own labeling (None for an unconditional model)."""
    from cedm.clusters import labelings

    if not int(info.get("n_conditions", 0)):
        return None
    cond = info.get("condition") or {}
    spec = cond.get("spec")
    if not spec:
        raise CedmError("the model does not record its condition labeling: cannot pick the rows' clusters")
    labels = np.asarray(labelings.resolve(ws, spec, backbone=cond.get("backbone")).labels)[rows]
    if (labels < 0).any() or (labels >= int(info["n_conditions"])).any():
        raise CedmError(f"the workspace's {spec} labels do not fit the model's {info['n_conditions']} conditions")
    return labels


def evaluate_layouts(model_dirs, ws, spatial: str, backbone: str | None = None, n: int = 200, seed: int = 0,
                     guidance: float = 1.0, sampler: str = "heun", steps: int = 18, batch_size: int = 64,
                     fd: bool = True, device=None, progress=None) -> dict:
    """Mean layout IoU (and FD_EffNetLite0 of the same samples) of each model over ``n`` workspace layouts.
    Returns {"results": [one per model, then the real-image ceiling], "notes": [...]}."""
    from cedm.annotate import store
    from cedm.annotate.metrics import layout_iou
    from cedm.device import resolve_device
    from cedm.model.edm import load_model, read_model_info
    from cedm.model.spatial import generate_with_layout
    from cedm.sampling.generate import generate

    kind, S = store.parse_spatial(spatial)
    dirs = [Path(d) for d in model_dirs]
    infos = [read_model_info(d) for d in dirs]
    spatial_infos = [i.get("spatial") for i in infos if i.get("spatial")]
    for d, i in zip(dirs, infos):
        sp = i.get("spatial")
        if sp and (sp["kind"] != kind or (kind == "segments" and int(sp["n_segments"]) != S)):
            raise CedmError(f"model {d.name} takes {sp['kind']}" + (f":{sp['n_segments']}" if sp.get("n_segments")
                                                                    else "") + f" layouts, not {spatial}")
    backbone = backbone or (spatial_infos[0].get("backbone") if spatial_infos else None)
    if not backbone:
        raise CedmError("no spatial model among these: name the annotator with --layout-backbone")
    notes = []
    if not spatial_infos:
        notes.append("no spatial model: every IoU is a baseline")
    if any(sp.get("backbone") != backbone for sp in spatial_infos):
        notes.append(f"annotator {backbone}: a spatial model was trained on another backbone's layouts")
    dev = resolve_device(device) if not hasattr(device, "type") else device
    rows = layout_rows(ws, n)
    n = len(rows)
    layouts = np.asarray(store.workspace_annotations(ws, spatial, backbone, device=dev, progress=progress))[rows]
    annotate = store.load_annotator(ws, spatial, backbone, device=dev)
    step = max(1, int(batch_size))

    metric_net = None
    if fd:
        from cedm.fd import backbone_net
        metric_net = backbone_net(device=dev)

    def fd_of(images, r) -> float | None:
        from cedm.fd import extract, frechet_distance, real_features
        if metric_net is None:
            return None
        feats = real_features(ws, metric_net, r, progress=progress)
        return frechet_distance(extract(metric_net, images), feats)

    results = []
    resolutions = set()
    for d, info in zip(dirs, infos):
        t0 = time.perf_counter()
        model = load_model(d, dev)
        r = int(model.resolution)
        resolutions.add(r)
        maps, targets = layouts_at(kind, layouts, S, ws.resolution, r)
        clusters = _model_clusters(ws, info, rows)
        w = float(guidance) if clusters is not None and float(info.get("p_uncond", 0)) > 0 else 1.0
        if clusters is not None and w != float(guidance):
            notes.append(f"{d.name}: no unconditional branch (p_uncond = 0), sampled at w = 1")
        is_spatial = bool(info.get("spatial"))
        images = np.empty((n, r, r, 3), np.uint8)
        for s in range(0, n, step):
            e = min(n, s + step)
            kw = {"steps": steps, "sampler": sampler, "seed": seed + s, "guidance": w}
            if clusters is None:
                kw["uncond"] = True
            else:
                kw["clusters"] = [int(c) for c in clusters[s:e]]
            if progress:
                kw["progress"] = lambda i, t, desc, s=s, e=e, name=d.name: progress(s * t + i * (e - s), n * t,
                                                                                   f"{name}: {desc}")
            if is_spatial:
                images[s:e] = generate_with_layout(model, maps[s:e].to(dev), e - s, **kw)[0]
            else:
                images[s:e] = generate(model, e - s, batch_size=e - s, **kw)[0]
        iou = layout_iou(targets, annotate(images), kind)
        results.append({"model": str(d), "model_name": d.name, "spatial_model": is_spatial, "layout": spatial,
                        "annotator": backbone, "n": n, "seed": seed, "guidance": None if clusters is None else w,
                        "condition": (info.get("condition") or {}).get("spec") or "none", "resolution": r,
                        "sampler": sampler, "steps": steps, "layout_iou": float(iou.mean()),
                        "layout_iou_sd": float(iou.std()), "FD_EffNetLite0": fd_of(images, r),
                        "seconds": time.perf_counter() - t0, "per_image": [round(float(v), 4) for v in iou]})
    from cedm.fd import real_images
    for r in sorted(resolutions):  # the ceiling: the real images of the rows at the model resolution
        _, targets = layouts_at(kind, layouts, S, ws.resolution, r)
        reals = real_images(ws, r)[rows]
        iou = layout_iou(targets, annotate(reals), kind)
        results.append({"model": None, "model_name": f"real images at {r}px", "spatial_model": False,
                        "layout": spatial, "annotator": backbone, "n": n, "seed": None, "guidance": None,
                        "condition": "(ceiling)", "resolution": r, "sampler": None, "steps": None,
                        "layout_iou": float(iou.mean()), "layout_iou_sd": float(iou.std()), "FD_EffNetLite0": None,
                        "seconds": 0.0, "per_image": [round(float(v), 4) for v in iou]})
    return {"results": results, "notes": notes, "workspace": ws.name, "rows": rows.tolist()}


def format_layout_table(results: list[dict]) -> str:
    cols = ["model", "layout", "w", "n", "layout IoU", "sd", "FD_EffNetLite0", "seconds"]
    rows = [[r["model_name"], r["layout"] + ("" if r["spatial_model"] else " (baseline)" if r["model"] else ""),
             "-" if r["guidance"] is None else f"{r['guidance']:g}", str(r["n"]), f"{r['layout_iou']:.3f}",
             f"{r['layout_iou_sd']:.3f}", "-" if r["FD_EffNetLite0"] is None else f"{r['FD_EffNetLite0']:.2f}",
             f"{r['seconds']:.0f}"] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])

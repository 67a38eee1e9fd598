"""Retrain with conditions (C-EDM) vs adapt afterwards (a probe on the unconditional model), on the demo.

    python bench/probes.py compare --n 500 --out bench/results/probes.json
    python bench/probes.py fewshot --subgroup country-flag --picks 5,10,20 --n 100 --out bench/results/fewshot.json

compare: one table, same seeds (image i: seed i), conditions / probe classes drawn per image from q(c) of the
demo's skmeans:20 labeling (spherical k-means, what demo-kmeans20 was trained on) with the same per-image stream, DPM-Solver++(2M) 12 steps. Rows: C-EDM
(checkpoints/demo-kmeans20) at w = 1, 2; the unconditional model (checkpoints/demo-uncond) unguided; with probe
guidance at several w; best of 4 by the probe; both. FD_EffNetLite0 against all demo images at 32 px;
agreement by the skmeans:20 centroids (never by the probe). Also the time to get each (C-EDM training hours from
its cedm.json; the probe's training seconds) and the sampling seconds per image.

fewshot: k picked images of one Unicode subgroup (seeded) as a row set, a two-class probe, and the share of
samples whose nearest real demo image (EfficientNet-Lite0 features, cosine) is in that subgroup, unguided
(same noise) vs guided.

Each finished row is written to the JSON at once (a long run can be read while it goes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
UNCOND, CEDM_MODEL = ROOT / "checkpoints" / "demo-uncond", ROOT / "checkpoints" / "demo-kmeans20"


def _machine() -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "load_avg": os.getloadavg()[0], "torch": torch.__version__}


def _write(out: Path, data: dict) -> None:
    from cedm import io
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, data)


def compare(args) -> None:
    import torch

    from cedm.clusters.assign import labeling_head, sample_confidence
    from cedm.fd import backbone_net, extract, frechet_distance, real_features
    from cedm.features.backbones import OFFLINE_BACKBONE
    from cedm.model.edm import load_model, read_model_info
    from cedm.probes.probe import ProbeSettings, get_probe
    from cedm.probes.sample import generate_with_probe
    from cedm.sampling.generate import generate
    from cedm.workspace import open_demo

    torch.set_num_threads(args.threads)
    ws = open_demo()
    out = Path(args.out)
    data = {"machine": _machine(), "n": args.n, "seed": args.seed, "sampler": args.sampler, "steps": args.steps,
            "rows": []}
    uncond, cedm = load_model(UNCOND), load_model(CEDM_MODEL)
    t0 = time.perf_counter()
    settings = ProbeSettings(sigma_feature=args.sigma_feature, max_per_class=args.max_per_class)
    probe, pdir, trained = get_probe(ws, uncond, args.labels, settings, model_dir=UNCOND)
    want = read_model_info(CEDM_MODEL)["provenance"]["data"]["labels_sha"]
    if probe.info["labels_sha"] != want:
        raise SystemExit(f"{args.labels} here is not the labeling demo-kmeans20 was trained on")
    data["probe"] = {"folder": str(pdir), "seconds_to_get": probe.info["report"]["seconds"],
                     "report": probe.info["report"], "settings": probe.info["settings"]}
    data["cedm_training_hours"] = read_model_info(CEDM_MODEL)["training"]["elapsed_s"] / 3600
    print(f"probe: {pdir} ({time.perf_counter() - t0:.0f} s now; trained in {probe.info['report']['seconds']:.0f} s)",
          flush=True)
    net = backbone_net(OFFLINE_BACKBONE)
    real = real_features(ws, net, 32)
    head, why = labeling_head(ws, args.labels, probe.info["labels_sha"])
    if head is None:
        raise SystemExit(why)
    kw = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, batch_size=args.batch)
    plan = [("C-EDM", 1.0, 1), ("C-EDM", 2.0, 1), ("uncond", 0.0, 1)]
    plan += [("probe", float(w), 1) for w in args.w.split(",")]
    plan += [("probe", 0.0, 4), ("probe", float(args.both_w), 4)]
    for kind, w, best in plan:
        if args.only and f"{kind}:{w:g}:{best}" not in args.only.split(","):
            continue
        t = time.perf_counter()
        if kind == "C-EDM":
            imgs, recs = generate(cedm, args.n, guidance=w, **kw)
            targets = np.array([r["condition"] for r in recs])
        else:
            imgs, recs = generate_with_probe(uncond, probe, args.n, None, w, best_of=best, **kw)
            targets = np.array([r["probe_class"] for r in recs])
        sec = time.perf_counter() - t
        feats = extract(net, imgs)
        clusters, msp = sample_confidence(head, imgs, features=feats)
        row = {"setting": kind, "model": "demo-kmeans20" if kind == "C-EDM" else "demo-uncond", "w": w,
               "best_of": best, "FD_EffNetLite0": frechet_distance(feats, real),
               "agreement": float(np.mean(clusters == targets)), "MSP": float(msp.mean()),
               "seconds_per_image": sec / args.n, "load_avg": os.getloadavg()[0]}
        if kind != "C-EDM":
            row["probe_probability"] = float(np.mean([r["probe_probability"] for r in recs]))
        data["rows"].append(row)
        _write(out, data)
        print(json.dumps(row), flush=True)


def fewshot(args) -> None:
    import torch

    from cedm.clusters.labelings import save_rows
    from cedm.fd import backbone_net, extract, real_features
    from cedm.features.backbones import OFFLINE_BACKBONE
    from cedm.model.edm import load_model
    from cedm.probes.probe import ProbeSettings, get_probe
    from cedm.probes.sample import generate_with_probe
    from cedm.workspace import DEMO_DIR, open_demo

    torch.set_num_threads(args.threads)
    ws = open_demo()
    emoji = json.loads((DEMO_DIR / "emoji.json").read_text())
    sub = np.array([e["subgroup"] for e in emoji])
    members = np.flatnonzero(sub == args.subgroup)
    if len(members) == 0:
        raise SystemExit(f"no subgroup {args.subgroup!r}")
    uncond = load_model(UNCOND)
    net = backbone_net(OFFLINE_BACKBONE)
    real = real_features(ws, net, 32)
    real_n = real / np.linalg.norm(real, axis=1, keepdims=True)

    def share(imgs):
        f = extract(net, imgs)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        nearest = (f @ real_n.T).argmax(1)
        return float(np.mean(sub[nearest] == args.subgroup))

    out = Path(args.out)
    data = {"machine": _machine(), "subgroup": args.subgroup, "subgroup_size": int(len(members)), "n": args.n,
            "share_in_data": len(members) / ws.n, "rows": []}
    kw = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, batch_size=args.batch)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(members)
    base = None
    for k in [int(v) for v in args.picks.split(",")]:
        name = f"fewshot-{args.subgroup}-{k}"
        save_rows(ws, name, order[:k], note=f"{k} seeded picks of subgroup {args.subgroup}")
        t = time.perf_counter()
        probe, pdir, _ = get_probe(ws, uncond, f"rows:{name}", ProbeSettings(sigma_feature=args.sigma_feature,
                                                                                  max_per_class=args.max_per_class))
        t_probe = time.perf_counter() - t
        if base is None:
            imgs, _ = generate_with_probe(uncond, probe, args.n, None, 0.0, **kw)
            base = share(imgs)
        row = {"picks": k, "probe_seconds": t_probe, "unguided_share": base, "guided": {}}
        for w in [float(v) for v in args.w.split(",")]:
            imgs, recs = generate_with_probe(uncond, probe, args.n, None, w, **kw)
            row["guided"][f"{w:g}"] = {"share": share(imgs),
                                       "probe_probability": float(np.mean([r["probe_probability"] for r in recs]))}
        data["rows"].append(row)
        _write(out, data)
        print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "fewshot"):
        q = sub.add_parser(name)
        q.add_argument("--n", type=int, default=500)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=12)
        q.add_argument("--sampler", default="dpmpp2m")
        q.add_argument("--batch", type=int, default=50)
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--sigma-feature", type=float, default=1.0)
        q.add_argument("--max-per-class", type=int, default=80, help="probe training rows per class")
        q.add_argument("--out", required=True)
    c = sub.choices["compare"]
    c.add_argument("--labels", default="skmeans:20", help="the labeling demo-kmeans20 was trained on")
    c.add_argument("--w", default="1,2,4", help="probe guidance weights")
    c.add_argument("--both-w", default="2", help="probe weight of the guidance + best-of-4 row")
    c.add_argument("--only", default="", help="comma-separated KIND:W:BEST rows to run (e.g. probe:2:1)")
    f = sub.choices["fewshot"]
    f.add_argument("--subgroup", default="country-flag")
    f.add_argument("--picks", default="5,10,20")
    f.add_argument("--w", default="2")
    args = p.parse_args(argv)
    {"compare": compare, "fewshot": fewshot}[args.cmd](args)


if __name__ == "__main__":
    main()

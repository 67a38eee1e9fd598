"""Choosing a model's default guidance interval (Kynkäänniemi et al. 2024) by FD_EffNetLite0.

For each setting of a small grid (full-range guidance, and guidance only for sigma in [lo, hi]), ``--n``
images with the same seeds and the same conditions (drawn from q(c)) are sampled through the inference engine
(DPM-Solver++(2M), 12 steps, w = 2, the engine's dtype) and compared with all real images of the model's
workspace: FD_EffNetLite0 (cedm.fd), MSP and agreement of the condition classifier, and the network rows
per image (guided steps cost 2, the others 1). Prints a table and writes bench/results/guidance_interval.json.

    python bench/guidance_interval.py [--model checkpoints/demo-kmeans20] [--n 500] [--grid "full;0.3,5;..."]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cedm.clusters.assign import condition_head, sample_confidence  # noqa: E402
from cedm.fd import backbone_net, extract, frechet_distance, noise_floor, real_features  # noqa: E402
from cedm.inference import InferenceEngine  # noqa: E402
from cedm.model.edm import read_model_info  # noqa: E402
from cedm.sampling.core import make_settings  # noqa: E402
from cedm.sampling.guidance import parse_interval  # noqa: E402

GRID = "full;0.3,5;1,20;0.2,10;0.1,3"


def rows_per_image(settings) -> int:
    """Network rows per image: 2 at a guided step, 1 elsewhere."""
    g = settings.guidance
    return sum(2 if g.active(s) else 1 for s in settings.sigmas()[:-1])


def sampling_arguments(ap) -> None:
    """The sampling setting both this grid and bench/fd_noise.py measure: model, n, w, steps, dtype, threads."""
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "demo-kmeans20"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--w", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)


def main():
    ap = argparse.ArgumentParser()
    sampling_arguments(ap)
    ap.add_argument("--grid", default=GRID, help="settings separated by ';': 'full' or LO,HI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "guidance_interval.json"))
    args = ap.parse_args()
    from cedm.workspace import open_demo

    torch.set_num_threads(args.threads)
    mdir = Path(args.model)
    info = read_model_info(mdir)
    ws = open_demo()  # the demo models' workspace (checked below)
    if (info.get("provenance") or {}).get("workspace_hash") not in (None, ws.content_hash):
        raise SystemExit("this script evaluates models trained on the shipped demo")
    net = backbone_net()
    R = int(info["resolution"])
    real = real_features(ws, net, R)
    subset = np.sort(np.random.default_rng(args.seed).choice(ws.n, args.n, replace=False))
    floor = noise_floor(ws, net, R, real, subset, args.seed)
    head, why = condition_head(mdir, ws)
    results, prev = [], None
    out = Path(args.out)
    if out.is_file():  # resume: settings already measured with the same n, seed, w and steps
        prev = json.loads(out.read_text())
    done = {r["setting"]: r for r in (prev or {}).get("rows", [])
            if (r["n"], r["seed"], r["w"], r["steps"]) == (args.n, args.seed, args.w, args.steps)}
    with InferenceEngine(device="cpu", threads=args.threads, dtype=args.dtype, max_batch=64) as eng:
        for setting in [s.strip() for s in args.grid.split(";") if s.strip()]:
            if setting in done:
                results.append(done[setting])
                continue
            interval = None if setting == "full" else parse_interval(setting)
            settings = make_settings("dpmpp2m", args.steps, args.w, interval)
            t = time.perf_counter()
            images, recs = eng.generate(mdir, args.n, guidance=args.w, steps=args.steps, sampler="dpmpp2m",
                                        seed=args.seed, guidance_interval=interval or "full")
            secs = time.perf_counter() - t
            feats = extract(net, images)
            row = {"setting": setting, "interval": list(interval) if interval else None, "w": args.w,
                   "steps": args.steps, "n": args.n, "seed": args.seed, "dtype": str(eng.dtype or "fp32"),
                   "FD_EffNetLite0": round(frechet_distance(feats, real), 2), "floor": round(floor, 2),
                   "rows_per_image": rows_per_image(settings), "sample_s": round(secs, 1),
                   "load_avg": os.getloadavg()[0]}
            if head is not None:
                ids, msp = sample_confidence(head, images, features=feats if head.backbone == "efficientnet_lite0"
                                             and head.weights is None else None)
                row.update(MSP=round(float(msp.mean()), 3),
                           agreement=round(float(np.mean(ids == np.array([r["condition"] for r in recs]))), 3))
            results.append(row)
            print(row, flush=True)
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps({"model": mdir.name, "rows": results, "msp_note": why}, indent=2) + "\n")
    keys = ["setting", "FD_EffNetLite0", "MSP", "agreement", "rows_per_image"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |")
    out.write_text(json.dumps({"model": mdir.name, "rows": results, "floor": floor}, indent=2) + "\n")


if __name__ == "__main__":
    main()

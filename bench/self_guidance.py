"""Training cost of online self-guidance (self:K, seed 002) against plain C-EDM training (the peer: the
same loop conditioned on a fixed clustering), through cedm.model.train.train end to end, on the same images.

Both runs: same preset, resolution, batch and number of steps; images/s from the loop's own log (the median
of its logged intervals, the first one dropped: it holds the start-up). The online run also takes the EMA
network's features (up to its block), the head, prototypes and Sinkhorn-Knopp every step, and assigns the
whole dataset at its one checkpoint (reported separately). Prints a table, writes bench/results/self_guidance.json.

    python bench/self_guidance.py [--workspace demo] [--preset small] [--resolution 32] [--steps 40] [--k 20]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cedm.model.self_guidance import SelfGuidanceConfig  # noqa: E402
from cedm.model.train import TrainConfig, train  # noqa: E402
from cedm.workspace import open_workspace  # noqa: E402


def run(images, labels, k, sg, cfg, out):
    t0 = time.perf_counter()
    train(images, labels, k, out, cfg, show_progress=False, self_guidance=sg)
    total = time.perf_counter() - t0
    log = [json.loads(x) for x in (Path(out) / "training" / "log.jsonl").read_text().splitlines()]
    ips = float(np.median([r["img_per_s"] for r in log[1:]] or [log[-1]["img_per_s"]]))
    return ips, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="demo")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = open_workspace(None, args.workspace)
    images = np.asarray(ws.images)
    labels = np.random.default_rng(0).integers(0, args.k, len(images))  # the peer's condition: any fixed labels
    cfg = TrainConfig(preset=args.preset, resolution=args.resolution, batch=args.batch,
                      kimg=args.steps * args.batch / 1000, sample_kimg=0, checkpoint_kimg=1e9, log_every=5)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        plain, plain_total = run(images, labels, args.k, None, cfg, f"{d}/plain")
        sg = SelfGuidanceConfig(k=args.k)
        online, online_total = run(images, None, args.k, sg, cfg, f"{d}/online")
    rows.append({"variant": "plain C-EDM (fixed labels)", "img_per_s": round(plain, 1), "total_s": round(plain_total, 1)})
    rows.append({"variant": f"online self:{args.k} (block {sg.block})", "img_per_s": round(online, 1),
                 "total_s": round(online_total, 1)})
    print(f"{'variant':40s} {'img/s':>8s} {'total s':>8s}")
    for r in rows:
        print(f"{r['variant']:40s} {r['img_per_s']:8.1f} {r['total_s']:8.1f}")
    print(f"online / plain throughput: {online / plain:.2f}")
    result = {"rows": rows, "ratio": online / plain, "args": vars(args), "n_images": len(images),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                          "load_avg": os.getloadavg()}}
    out = Path(__file__).resolve().parent / "results" / "self_guidance.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Training cost of online self-guidance (self:K, seed 002) against plain C-EDM training (the peer: the
same loop conditioned on a fixed clustering), through cedm.model.train.train end to end, on the same images.

Both runs: same preset, resolution, batch and number of steps; images/s from the loop's own log (the median
of its logged intervals, the first one dropped: it holds the start-up). The online run also takes the EMA
network's features (up to its block), the head, prototypes and Sinkhorn-Knopp every step, and assigns the
whole dataset at its one checkpoint (reported separately). Prints a table, writes bench/results/self_guidance.json.

A second measurement times one training step and one SK update alternately in one process (medians), which
a busy shared machine distorts far less than two runs one after the other.

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
from cedm.model.self_guidance import SelfGuidanceConfig
from cedm.model.train import TrainConfig, train
from cedm.workspace import open_workspace


def run(images, labels, k, sg, cfg, out):
    t0 = time.perf_counter()
    train(images, labels, k, out, cfg, show_progress=False, self_guidance=sg)
    total = time.perf_counter() - t0
    log = [json.loads(x) for x in (Path(out) / "training" / "log.jsonl").read_text().splitlines()]
    ips = float(np.median([r["img_per_s"] for r in log[1:]] or [log[-1]["img_per_s"]]))
    return ips, total


def interleaved(images, k, preset, resolution, batch, iters, device):
    """Per-step seconds of one plain C-EDM training step and of the online SK update, timed alternately in one
    process (a busy shared machine slows both alike), medians."""
    from cedm.model.edm import CEDM, copy_model, edm_loss
    from cedm.model.self_guidance import OnlineSelfLabels, feature_channels
    from cedm.model.train import load_batch

    torch.manual_seed(0)
    net = CEDM.from_preset(preset, resolution, k).train()
    ema = copy_model(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    sg = SelfGuidanceConfig(k=k)
    online = OnlineSelfLabels(sg, len(images), feature_channels(preset, resolution, sg.block), 0, device)
    rng = np.random.default_rng(0)
    t_train, t_sk = [], []
    for i in range(iters + 1):
        rows = rng.integers(0, len(images), batch)
        x = load_batch(images, rows, np.zeros(batch, bool), resolution, device)
        lab = torch.from_numpy(rng.integers(0, k + 1, batch))
        t0 = time.perf_counter()
        opt.zero_grad()
        edm_loss(net, x, lab).mean().backward()
        opt.step()
        t1 = time.perf_counter()
        online.step(ema, x, rows, nimg=10**9, total_nimg=10**9)
        t2 = time.perf_counter()
        if i:  # the first iteration holds the start-up
            t_train.append(t1 - t0)
            t_sk.append(t2 - t1)
    return float(np.median(t_train)), float(np.median(t_sk))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="demo")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=15, help="interleaved steps (after one warm-up step)")
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
    print(f"online / plain throughput (whole runs, sequential): {online / plain:.2f}")
    t_train, t_sk = interleaved(images, args.k, args.preset, args.resolution, args.batch, args.iters,
                                torch.device("cpu"))
    step_ratio = t_train / (t_train + t_sk)
    print(f"interleaved, per step of {args.batch}: train {t_train:.3f} s, SK update (EMA features + head + "
          f"Sinkhorn) {t_sk:.3f} s -> {args.batch / t_train:.1f} vs {args.batch / (t_train + t_sk):.1f} img/s "
          f"(online / plain {step_ratio:.2f})")
    result = {"rows": rows, "ratio": online / plain, "interleaved": {
        "train_step_s": t_train, "sk_step_s": t_sk, "plain_img_per_s": args.batch / t_train,
        "online_img_per_s": args.batch / (t_train + t_sk), "ratio": step_ratio}, "args": vars(args), "n_images": len(images),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                          "load_avg": os.getloadavg()}}
    out = Path(__file__).resolve().parent / "results" / "self_guidance.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

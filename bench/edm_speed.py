"""C-EDM speed on this machine: training images/s and guided sampling time, for the size presets.

Reference in the same run: guidance as the official C-EDM code does it (two network calls of batch B per
evaluation) against ours (one call of batch 2B). Prints a table, writes bench/results/edm_speed.json.

    python bench/edm_speed.py [--threads 2] [--resolution 32] [--presets small,tiny]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cedm.model.edm import CEDM, count_parameters, edm_loss, unet_config, _new_unet  # noqa: E402
from cedm.sampling.generate import generate  # noqa: E402
from cedm.sampling.samplers import edm_sigmas, sample_heun  # noqa: E402

VARIANTS = {  # name: (preset, overrides of the diffusers config)
    "small": ("small", {}),
    "small-64-128-128": ("small", {"block_out_channels": (64, 128, 128), "time_embedding_dim": 256}),
    "small-x2": ("small", {"layers_per_block": 2}),
    "tiny": ("tiny", {}),
}


def build(variant, resolution, C):
    preset, over = VARIANTS[variant]
    cfg = {**unet_config(preset, resolution, C), **over}
    return CEDM(_new_unet(cfg), C, info={"p_uncond": 0.1, "preset": preset})


def train_ips(model, resolution, batch, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    lab = torch.randint(0, model.n_conditions + 1, (batch,))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        edm_loss(model, x, lab).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times[1:]))


def two_call_guided(model, labels, w):
    """The official C-EDM way: two network calls of batch B per evaluation (w' = w - 1 in its convention)."""
    none = torch.full_like(labels, model.uncond_index)

    def denoise(x, s):
        d_cond, d_uncond = model(x, s, labels), model(x, s, none)
        return (1 + (w - 1)) * d_cond - (w - 1) * d_uncond

    return denoise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--presets", default="small,small-64-128-128")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    C, R = 10, args.resolution
    rows = []
    for v in args.presets.split(","):
        m = build(v, R, C)
        ips = train_ips(m.train(), R, args.batch, args.train_steps)
        m.eval().requires_grad_(False)
        row = {"variant": v, "params_M": round(count_parameters(m) / 1e6, 2), "train_img_per_s": round(ips, 1)}
        for sampler, steps in (("dpmpp2m", 12), ("heun", 18)):
            t = time.perf_counter()
            generate(m, args.n, guidance=2.0, steps=steps, sampler=sampler, seed=0, batch_size=args.n)
            row[f"{sampler}{steps}_guided_s"] = round(time.perf_counter() - t, 2)
        # reference: two separate calls per evaluation (Heun 18), same noise and labels
        sig = edm_sigmas(18)
        x = torch.randn(args.n, 3, R, R) * sig[0].float()
        lab = torch.randint(0, C, (args.n,))
        t = time.perf_counter()
        with torch.inference_mode():
            sample_heun(two_call_guided(m, lab, 2.0), x, sig)
        row["heun18_guided_two_calls_s"] = round(time.perf_counter() - t, 2)
        rows.append(row)
        print(row, flush=True)
    keys = list(rows[0])
    print("\n" + " | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    out = Path(__file__).resolve().parent / "results" / "edm_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "resolution": R, "batch": args.batch, "n_images": args.n,
                               "load_avg_start": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Real vs generated images for a few clusters of the shipped demo model (the README figure).

Each row is one cluster: real training images of that cluster on the left, C-EDM samples conditioned on it on
the right (same seeds in every row, so only the condition differs), then unconditional-model samples with the
same seeds for comparison in the last row.

    python scripts/demo_grid.py [--model checkpoints/demo-kmeans20] [--uncond checkpoints/demo-uncond] \
        [--clusters 0,3,7,12,16] [--guidance 2] [--out docs/demo_grid.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cedm import workspace as wsp  # noqa: E402
from cedm.clusters import labelings  # noqa: E402
from cedm.model.edm import load_model, read_model_info  # noqa: E402
from cedm.model.train import load_batch  # noqa: E402
from cedm.sampling.generate import generate, image_grid  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "demo-kmeans20"))
    ap.add_argument("--uncond", default=str(ROOT / "checkpoints" / "demo-uncond"))
    ap.add_argument("--clusters", default=None, help="comma-separated cluster ids (default: 6 largest)")
    ap.add_argument("--per-row", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "demo_grid.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    info = read_model_info(args.model)
    cond = info["condition"]
    ws = wsp.open_demo()
    lab = labelings.resolve(ws, cond["spec"], backbone=cond.get("backbone"))
    q = np.asarray(cond["q"])
    clusters = ([int(c) for c in args.clusters.split(",")] if args.clusters
                else [int(c) for c in np.argsort(-q)[:6]])
    model = load_model(args.model)
    R, k = model.resolution, args.per_row
    rng = np.random.default_rng(args.seed)
    rows = []
    for c in clusters:
        members = np.flatnonzero(lab.labels == c)
        pick = np.sort(rng.choice(members, size=min(k, len(members)), replace=False))
        real = load_batch(ws.images, pick, np.zeros(len(pick), bool), R, torch.device("cpu"))
        real = ((real.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        fake, _ = generate(model, k, clusters=c, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                           seed=args.seed, batch_size=k)
        rows.append((f"cluster {c}", real, fake))
    uncond, _ = generate(load_model(args.uncond), k, uncond=True, steps=args.steps, sampler=args.sampler,
                         seed=args.seed, batch_size=k)
    rows.append(("unconditional", np.full_like(uncond, 255), uncond))

    scale, label_w = 2, 110
    tiles = [np.concatenate([image_grid(r, cols=k), np.full((R + 4, 12, 3), 255, np.uint8),
                             image_grid(f, cols=k)], axis=1) for _, r, f in rows]
    body = np.concatenate(tiles, axis=0)
    img = Image.fromarray(body).resize((body.shape[1] * scale, body.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width + label_w, img.height + 24), "white")
    canvas.paste(img, (label_w, 24))
    draw = ImageDraw.Draw(canvas)
    half = (k * (R + 2) + 2) * scale
    draw.text((label_w + 4, 6), "real images of the cluster", fill="black")
    draw.text((label_w + half + 28, 6), f"C-EDM samples (w = {args.guidance:g}, same seeds per row)", fill="black")
    for i, (name, _, _) in enumerate(rows):
        draw.text((6, 24 + i * (R + 4) * scale + (R * scale) // 2 - 6), name, fill="black")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

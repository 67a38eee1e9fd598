"""One layout and what each model makes of it (docs/spatial.md): a demo row's self-box as the layout, the same
seeds for every model; each sample with the layout (red) and its own self-box (blue) drawn over it, captioned
with the IoU. Usage (after bench/spatial_demo.sh train):

    CEDM_HOME=... python bench/spatial_figure.py --row 1200 --out docs/spatial_demo_layout.png
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import torch
    from PIL import Image, ImageDraw

    from cedm.annotate import store
    from cedm.annotate.metrics import layout_iou
    from cedm.annotate.overlay import draw_boxes
    from cedm.model.edm import load_model
    from cedm.model.spatial import (
        encode_boxes,
        generate_with_layout,
        layout_of_maps,
        model_annotator,
    )
    from cedm.model.spatial_eval import _model_clusters
    from cedm.sampling.generate import generate
    from cedm.workspace import REPO_ROOT, open_workspace

    ap = argparse.ArgumentParser()
    ap.add_argument("--row", type=int, default=1200)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--kimg", default="16")
    ap.add_argument("--out", default="docs/spatial_demo_layout.png")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ws = open_workspace(None, "demo")
    box = store.get_boxes(ws, "efficientnet_lite0")[a.row]
    dirs = {"box-spatial": ws.derived_dir("models") / f"box-ft{a.kimg}",
            "image-level": ws.derived_dir("models") / f"img-ft{a.kimg}",
            "unconditional": REPO_ROOT / "checkpoints" / "demo-uncond"}
    rows, names, annotate = [], [], None
    for name, d in dirs.items():
        m = load_model(d, "cpu")
        r = int(m.resolution)
        maps = encode_boxes(box[None], ws.resolution, r)
        target = layout_of_maps(maps)
        cl = _model_clusters(ws, m.info, np.array([a.row]))
        kw = {"steps": 12, "sampler": "dpmpp2m", "seed": 0, "guidance": 2.0 if cl is not None else 1.0}
        if cl is None:
            kw["uncond"] = True
        else:
            kw["clusters"] = int(cl[0])
        if m.spatial_channels:
            annotate = model_annotator(m, d, "cpu")
            images, _ = generate_with_layout(m, maps, a.n, **kw)
        else:
            images, _ = generate(m, a.n, **kw)
        rows.append((images, target))
        names.append(name)
    scale = 4
    out = []
    for name, (images, target) in zip(names, rows):
        got = annotate(images)
        iou = layout_iou(np.repeat(target, len(images), 0), got, "box")
        drawn = draw_boxes(draw_boxes(images, np.repeat(target, len(images), 0)), got, colour=(40, 90, 230))
        tiles = []
        for img, v in zip(drawn, iou):
            t = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
            canvas = Image.new("RGB", (t.width, t.height + 16), "white")
            canvas.paste(t, (0, 16))
            ImageDraw.Draw(canvas).text((2, 2), f"{name} IoU {v:.2f}", fill=(0, 0, 0))
            tiles.append(np.asarray(canvas))
        out.append(np.concatenate(tiles, 1))
    real = draw_boxes(np.asarray(ws.images[a.row])[None], box[None])[0]
    h = out[0].shape[0]
    real = np.asarray(Image.fromarray(real).resize((h - 16, h - 16), Image.NEAREST))
    first = np.full((h, h - 16, 3), 255, np.uint8)
    first[16:] = real
    pad = [np.full((h, h - 16, 3), 255, np.uint8)] * (len(out) - 1)
    grid = np.concatenate([np.concatenate([f, o], 1) for f, o in zip([first] + pad, out)], 0)
    Image.fromarray(grid).save(a.out)
    print(a.out, grid.shape)


if __name__ == "__main__":
    main()

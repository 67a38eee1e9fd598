"""`cedm annotate`: self-boxes or self-segments of a workspace's images (cached), optionally exported."""
from __future__ import annotations

from cedm.commands import add_device, add_workspace

HELP = "self-annotate images from a backbone's patch features: a box or a segment map per image (cached)"


def add_arguments(p) -> None:
    from cedm.annotate.patches import spatial_backbones
    from cedm.features.backbones import DEFAULT_BACKBONE, OFFLINE_BACKBONE

    add_workspace(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--boxes", action="store_true",
                      help="one object box per image (LOST-style seed and expansion on the patch graph)")
    what.add_argument("--segments", type=int, default=None, metavar="S",
                      help="S segment classes (k-means of patch features over the dataset), one map per image")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                   help=f"one of {', '.join(spatial_backbones())}, or denoiser:MODEL[,sigma=S][,block=B] (a cedm "
                        f"model's UNet activation map) (default {DEFAULT_BACKBONE}; {OFFLINE_BACKBONE} needs no "
                        "internet)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="local weights file (safetensors or a plain torch state dict) instead of the hub")
    p.add_argument("--no-refine", action="store_true",
                   help="segments: plain bilinear upsampling of the patch map (default: colour-guided refinement)")
    p.add_argument("--seed", type=int, default=0, help="segments: k-means seed and patch sample (default 0)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write DIR/boxes.csv (path,x0,y0,x1,y1) or DIR/segments/ (one PNG per image)")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 GPU, 32 CPU)")


def run(args) -> int:
    from cedm import io
    from cedm.annotate import export, store
    from cedm.commands.cluster import tqdm_progress
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    spatial = "box" if args.boxes else f"segments:{args.segments}"
    kind, S = store.parse_spatial(spatial)
    kw = {"batch_size": args.batch_size}
    if kind == "segments":
        kw.update(refine=not args.no_refine, seed=args.seed)
    with tqdm_progress() as progress:
        folder = store.annotate(ws, spatial, args.backbone, args.weights, args.device, progress=progress, **kw)
    meta = io.read_json(folder / "meta.json")
    if kind == "box":
        boxes = io.load_npy(folder / "boxes.npy")
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).mean() / ws.resolution ** 2
        print(f"self-boxes ({args.backbone}, {meta['grid'][0]}x{meta['grid'][1]} patches): {len(boxes)} images, "
              f"mean box area {area:.0%} of the image; stored in {folder}")
        if args.export:
            print(f"exported {export.export_boxes(ws.paths, boxes, args.export)}")
    else:
        frac = ", ".join(f"{f:.0%}" for f in meta["pixel_fraction"])
        print(f"self-segments ({args.backbone}, S = {S}, refine {meta['refine']}): {ws.n} maps at "
              f"{ws.resolution}x{ws.resolution}; pixel share per segment {frac}; stored in {folder}")
        if args.export:
            masks = io.load_npy(folder / "masks.npy", mmap=True)
            out = export.export_segments(ws.paths, masks, args.export, S,
                                         {"backbone": args.backbone, "refine": meta["refine"]})
            print(f"exported {ws.n} masks to {out} (pixel value = segment id; index.csv maps paths to files)")
    return 0

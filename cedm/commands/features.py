"""`cedm features`: compute (or read from the cache) one feature vector per image of a workspace."""
from __future__ import annotations

from cedm.commands import add_device, add_workspace

HELP = "extract image features with a pretrained backbone (cached in the workspace, resumable)"


def add_arguments(p) -> None:
    from cedm.features.backbones import DEFAULT_BACKBONE, OFFLINE_BACKBONE, get_spec, list_backbones

    add_workspace(p)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                   help="; ".join(f"{n}: {get_spec(n).summary}" for n in list_backbones())
                   + f" (default {DEFAULT_BACKBONE}; {OFFLINE_BACKBONE} needs no internet); "
                   "denoiser:MODEL: the UNet features of a trained cedm model (with --sigma and --block)")
    p.add_argument("--sigma", type=float, default=None,
                   help="denoiser:MODEL only: noise level the features are taken at (default 0.1)")
    p.add_argument("--block", default=None,
                   help="denoiser:MODEL only: mid, downI or upI, several joined by + (default up0)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="local weights file (safetensors or a plain torch state dict) instead of the hub")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 256 GPU, 32 CPU)")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="also write the raw float32 features to PATH (.npy; row i = the workspace's image i)")


def run(args) -> int:
    from tqdm import tqdm

    from cedm import io
    from cedm.features.extract import FEATURES_FILE, export_features, features_artifact, find_features
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    args.backbone = backbone_arg(args.backbone, args.sigma, args.block)
    cached = find_features(ws, args.backbone, args.weights) is not None
    bar = None

    def progress(done: int, total: int, desc: str) -> None:
        nonlocal bar
        if bar is None or bar.total != total:  # a first use downloads the weights first (bytes), then images
            if bar is not None:
                bar.close()
            in_bytes = desc.startswith("downloading")
            bar = tqdm(total=total, unit="B" if in_bytes else "img", unit_scale=in_bytes, dynamic_ncols=True)
        bar.n = done
        bar.set_description(desc, refresh=False)
        bar.refresh()

    try:
        folder = features_artifact(ws, args.backbone, args.weights, args.device, args.batch_size, progress)
    finally:
        if bar is not None:
            bar.close()
    feats = io.load_npy(folder / FEATURES_FILE, mmap=True)
    meta = io.read_json(folder / "meta.json")
    print(f"features {args.backbone}: shape {feats.shape}, {feats.dtype} (L2-normalised when used), "
          f"stored in {folder / FEATURES_FILE}")
    if cached:
        print("read from the cache (already computed)")
    elif meta.get("images_per_s"):
        print(f"{meta['images_per_s']:,.1f} images/s on {meta['device']} ({meta['autocast']})")
    if args.export:
        path = export_features(ws, args.backbone, args.export, args.weights, device=args.device)
        print(f"exported raw float32 features to {path}")
    return 0


def backbone_arg(backbone: str, sigma: float | None, block: str | None) -> str:
    """--backbone with --sigma/--block folded into a denoiser:MODEL name (the only backbone they apply to)."""
    from cedm.errors import CedmError
    from cedm.features.backbones import canonical_name, get_spec

    if not str(backbone).startswith("denoiser:"):
        if sigma is not None or block is not None:
            raise CedmError("--sigma and --block apply only to a denoiser:MODEL backbone")
        get_spec(backbone)  # an unknown name fails here, listing the known ones
        return backbone
    from cedm.features.denoiser import backbone_name, parse_name
    model, s, blocks = parse_name(backbone)
    return canonical_name(backbone_name(model, s if sigma is None else sigma, block or "+".join(blocks)))

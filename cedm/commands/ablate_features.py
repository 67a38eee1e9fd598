"""`cedm ablate-features`: which noise level and UNet block of a model's own denoiser cluster best (seed 002)."""
from __future__ import annotations

from cedm.commands import add_device, add_workspace

HELP = "k-means NMI/AMI of a model's denoiser features against a labeling, over a grid of sigma and block"


def add_arguments(p) -> None:
    add_workspace(p)
    p.add_argument("--model", required=True, help="a model name (cedm sample --list-models style): demo-uncond, "
                   "or <workspace>/<model>")
    p.add_argument("--sigmas", default="0.1,0.25,0.5,1,2,4", help="comma-separated noise levels")
    p.add_argument("--blocks", default=None, help="comma-separated blocks (mid, downI, upI; default: all)")
    p.add_argument("--against", default="gt", help="the labeling to score against: gt (default) or any "
                   "labeling spec (kmeans:C, temi:C, labels:NAME)")
    p.add_argument("--k", type=int, default=None, help="clusters (default: the labeling's class count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", default="efficientnet_lite0",
                   help="comma-separated backbones scored at the same K for comparison ('' for none)")
    p.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel comparison row")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    add_device(p)


def run(args) -> int:
    from cedm import io
    from cedm.errors import CedmError
    from cedm.features.denoiser import ablate, ablation_table
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        raise CedmError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()] if args.blocks else None
    compare = [b.strip() for b in args.compare.split(",") if b.strip()]
    result = ablate(ws, args.model, sigmas, blocks, against=args.against, k=args.k, seed=args.seed,
                    compare_backbones=compare, raw_pixels=not args.no_pixels, device=args.device,
                    progress=lambda d, n, desc: None)
    print(ablation_table(result))
    b = result["best"]
    print(f"\nbest: sigma {b['sigma']:g}, block {b['block']} (AMI {b['ami']:.3f})")
    if args.json:
        io.write_json(args.json, result)
    return 0

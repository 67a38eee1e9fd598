"""`cedm bound`: the upper cluster bound C_max from TEMI's utilization ratio (or C* with --lower)."""
from __future__ import annotations

from cedm.commands import add_device, add_workspace
from cedm.commands.cluster import add_backbone, add_temi, temi_settings, tqdm_progress

HELP = "find the cluster bound C_max (r_C = C_u/C >= alpha) or, with --lower, C* (TEMI gamma = 1)"


def add_arguments(p) -> None:
    add_workspace(p)
    p.add_argument("--c0", type=int, default=10, help="first C of the doubling search (default 10)")
    p.add_argument("--alpha", type=float, default=0.96, help="utilization threshold (default 0.96)")
    p.add_argument("--lower", action="store_true", help="lower bound C*: TEMI gamma = 1 from a large C")
    p.add_argument("--start", type=int, default=None, help="--lower: starting C (default min(1000, N/2))")
    add_backbone(p)
    add_temi(p)
    add_device(p)


def run(args) -> int:
    from cedm.clusters.bound import lower_bound, upper_bound
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    common = dict(seed=args.seed, backbone=args.backbone, weights=args.weights, device=args.device,
                  **temi_settings(args))
    with tqdm_progress() as progress:
        if args.lower:
            lb = lower_bound(ws, args.start, progress=progress, **common)
            print(f"lower bound: TEMI (gamma = 1) from C = {lb.c_start} uses C* = {lb.c_star} clusters "
                  f"({lb.seconds:.1f} s)")
            return 0
        b = upper_bound(ws, args.c0, args.alpha, progress=progress, **common)
    print("   C   r_C")
    for c, r in b.curve:
        print(f"{c:5d}  {r:.3f}{'  <' if r < b.alpha else ''}")
    if b.c_max is not None and b.complete:
        print(f"C_max = {b.c_max} (largest C with r_C >= {b.alpha}); {len(b.curve)} points, "
              f"{b.n_runs} new TEMI runs, {b.seconds:.1f} s")
    if b.message:
        print(f"note: {b.message}")
    return 0

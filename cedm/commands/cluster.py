"""`cedm cluster`: k-means or TEMI clusters of a workspace's features (cached), with a short summary."""
from __future__ import annotations


from cedm.clusters.kmeans import KMEANS_METRICS
from cedm.clusters.labelings import METHODS
from cedm.commands import add_device, add_workspace
from cedm.errors import CedmError
from cedm.progress import tqdm_progress  # noqa: F401  (commands bound and labels import it from here)

HELP = "cluster a workspace's features with k-means or TEMI"


def add_backbone(p) -> None:
    p.add_argument("--backbone", default=None, help="feature extractor (default: the features default)")
    p.add_argument("--weights", default=None, help="weights file for the backbone (default: its standard weights)")
    p.add_argument("--seed", type=int, default=0)


def add_temi(p) -> None:
    p.add_argument("--epochs", type=int, default=None, help="TEMI epochs (default 200, the paper's)")
    p.add_argument("--heads", type=int, default=None,
                   help="TEMI heads (default: 50 on GPU, the paper's; 8 on CPU, same recipe otherwise)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's TEMI schedule even on CPU (50 heads, 200 epochs, batch 512, no step budget)")


def add_kmeans_metric(p) -> None:
    p.add_argument("--kmeans-metric", choices=KMEANS_METRICS, default=None,
                   help="k-means objective: euclidean on the raw features (default, the paper's) or spherical "
                        "(cosine on L2-normalised features)")


def temi_settings(args) -> dict:
    from cedm.clusters.temi import PAPER_SCHEDULE
    kw = dict(PAPER_SCHEDULE) if getattr(args, "paper", False) else {}
    for k in ("epochs", "heads"):
        if getattr(args, k, None) is not None:
            kw[k] = getattr(args, k)
    return kw


def add_arguments(p) -> None:
    add_workspace(p)
    p.add_argument("--method", choices=METHODS, default="kmeans",
                   help="kmeans (metric from --kmeans-metric), skmeans (= --kmeans-metric spherical) or temi")
    add_kmeans_metric(p)
    p.add_argument("--clusters", "-C", type=int, required=True, help="number of clusters C")
    add_backbone(p)
    add_temi(p)
    p.add_argument("--export", metavar="CSV", default=None, help="write image path, cluster, confidence to CSV")
    add_device(p)


def summary_lines(ws, res) -> list[str]:
    from cedm.clusters import metrics
    s = metrics.size_stats(res.assignments, res.n_clusters)
    secs = res.info.get("seconds")
    lines = [f"{res.method} C={res.n_clusters} on {ws.name!r}: {s['n_used']}/{s['n_clusters']} clusters used "
             f"(r_C = {s['utilization']:.3f}); sizes min {s['min']} / median {s['median']:g} / max {s['max']}"
             + (f"; {secs:.1f} s" if secs is not None else "")]
    gt = ws.ground_truth
    if gt is not None and (gt.labels >= 0).any():
        m = metrics.compare(res.assignments, gt.labels)
        lines.append(f"vs ground truth ({m['n_clusters_b']} classes, {m['n_compared']} images): NMI {m['nmi']:.3f}  "
                     f"AMI {m['ami']:.3f}  ARI {m['ari']:.3f}  {metrics.accuracy_text(m)}")
    return lines


def export_csv(ws, res, path) -> None:
    from cedm.clusters.export import assignments_csv

    assignments_csv(ws, res, path)


def run(args) -> int:
    from cedm.clusters.labelings import cluster_workspace
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    kw = temi_settings(args) if args.method == "temi" else {}
    if args.method != "temi" and (args.epochs or args.heads or args.paper):
        raise CedmError("--epochs, --heads and --paper apply to --method temi only")
    if args.kmeans_metric is not None:
        if args.method == "temi":
            raise CedmError("--kmeans-metric applies to --method kmeans only")
        kw["kmeans_metric"] = args.kmeans_metric
    with tqdm_progress() as progress:
        res = cluster_workspace(ws, args.method, args.clusters, backbone=args.backbone, weights=args.weights,
                                seed=args.seed, device=args.device, progress=progress, **kw)
    print("\n".join(summary_lines(ws, res)))
    if args.export:
        export_csv(ws, res, args.export)
        print(f"wrote {args.export}")
    return 0

"""`cedm labels`: pseudo-labels of a workspace (CLIP zero-shot or the offline ImageNet classifier), saved as a
labeling (``labels:NAME``), optionally compared with a clustering whose clusters then get names."""
from __future__ import annotations

from cedm.commands import add_device, add_workspace
from cedm.errors import CedmError

HELP = "pseudo-label a workspace (CLIP zero-shot or ImageNet classifier) and compare with clusters"
SHOW_LABELS = 15
SHOW_CLUSTERS = 20


def add_arguments(p) -> None:
    add_workspace(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--names", help='comma-separated label names, e.g. "cat,dog,car"')
    src.add_argument("--names-file", metavar="FILE", help="label names, one per line")
    src.add_argument("--from-ground-truth-names", action="store_true",
                     help="the workspace's ground-truth class names as label names (ground truth only names them)")
    src.add_argument("--imagenet", action="store_true",
                     help="ImageNet classifier labels from the offline EfficientNet-Lite0 (no download needed)")
    p.add_argument("--model", default=None, help="open_clip model (default ViT-B-32; the paper used ViT-bigG-14)")
    p.add_argument("--pretrained", default=None, help="open_clip weights tag (default: the model's LAION-2B weights)")
    p.add_argument("--weights", default=None, help="local CLIP weights file (safetensors or plain torch) instead")
    p.add_argument("--save-as", default=None, help="labeling name (default clip-<model>; 'imagenet' for --imagenet)")
    p.add_argument("--compare", metavar="SPEC", default=None,
                   help="compare with kmeans:C, temi:C, gt or labels:NAME and name its clusters")
    p.add_argument("--backbone", default=None, help="features the --compare clusters are computed on")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch for the image tower")
    add_device(p)


def run(args) -> int:
    from cedm import labels
    from cedm.commands.cluster import tqdm_progress
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    if args.imagenet:
        if args.model or args.pretrained or args.weights:
            raise CedmError("--model, --pretrained and --weights apply to CLIP labels, not --imagenet")
        if args.save_as and args.save_as != labels.IMAGENET_NAME:
            raise CedmError(f"ImageNet classifier labels are always saved as {labels.IMAGENET_NAME!r}")
    with tqdm_progress() as progress:
        if args.imagenet:
            lab = labels.imagenet_labels(ws, device=args.device, progress=progress, batch_size=args.batch_size)
            what = "ImageNet classifier labels (EfficientNet-Lite0)"
        else:
            prompt_names = None
            if args.from_ground_truth_names:
                names, prompt_names = labels.ground_truth_names(ws)
            elif args.names_file:
                names = labels.read_names_file(args.names_file)
            else:
                names = labels.check_names(args.names)
            model = args.model or labels.DEFAULT_MODEL
            lab = labels.clip_pseudo_labels(ws, names, model=model, pretrained=args.pretrained, weights=args.weights,
                                            device=args.device, batch_size=args.batch_size, progress=progress,
                                            save_as=args.save_as, prompt_names=prompt_names)
            what = f"CLIP zero-shot labels ({model})"
        counts = labels.label_counts(lab)
        print(f"{what} for {ws.name!r}: {ws.n} images, {len(counts)} of {lab.n_classes} labels used; "
              f"saved as {lab.name}")
        for name, n in counts[:SHOW_LABELS]:
            print(f"  {n:6d}  {name}")
        if len(counts) > SHOW_LABELS:
            print(f"  ... {len(counts) - SHOW_LABELS} more labels")
        if args.compare:
            kw = {"backbone": args.backbone, "device": args.device, "progress": progress}
            from cedm.clusters import metrics
            m = labels.compare_labelings(ws, args.compare, lab.name, **kw)
            print(f"{args.compare} vs {lab.name} ({m['n_compared']} images, {m['n_clusters_a']} vs "
                  f"{m['n_clusters_b']} ids): NMI {m['nmi']:.3f}  AMI {m['ami']:.3f}  ARI {m['ari']:.3f}  "
                  f"{metrics.accuracy_text(m)}")
            named = labels.cluster_names(ws, args.compare, lab.name, top=3, **kw)
            titles = dict(zip(m["a_ids"], m["a_names"] or m["a_ids"]))  # 'cluster 17', or a class name for gt
            for cid in list(named)[:SHOW_CLUSTERS]:
                print("  " + labels.describe(titles.get(cid, cid), named[cid]))
            if len(named) > SHOW_CLUSTERS:
                print(f"  ... {len(named) - SHOW_CLUSTERS} more clusters")
    return 0

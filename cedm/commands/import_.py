"""`cedm import`: bring a folder, archive or array file of images into a new workspace."""
from pathlib import Path

from cedm.commands import add_home
from cedm.dataset.archives import ImportLimits

HELP = "import images (folder, .zip, .tar/.tar.gz, .npy/.npz, IDX, CIFAR tarball) into a new workspace"
_MB = 1 << 20
_DEFAULT = ImportLimits()
_SHOW_SKIPPED = 5


def add_arguments(p) -> None:
    p.add_argument("source", help="folder (searched recursively), .zip, .tar/.tar.gz/.tgz, .npy/.npz of uint8 "
                                  "images, MNIST-style IDX file, or CIFAR-10/100 python tarball")
    p.add_argument("--name", help="workspace name (default: the source's name without suffixes)")
    p.add_argument("--resolution", type=int, default=64, help="square working resolution in pixels (default 64)")
    p.add_argument("--labels", metavar="CSV", help="CSV of path,label kept as ground truth for evaluation only")
    p.add_argument("--split", choices=["all", "train", "test"], default="all",
                   help="which CIFAR batches to import (default all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing workspace of the same name "
                   "(refused when it holds trained models or results, unless --force)")
    p.add_argument("--force", action="store_true", help="with --overwrite: also delete its models and results")
    g = p.add_argument_group("safety limits")
    g.add_argument("--max-total-mb", type=float, default=_DEFAULT.max_total_bytes / _MB,
                   help="largest total uncompressed size read from the source (default %(default).0f)")
    g.add_argument("--max-file-mb", type=float, default=_DEFAULT.max_file_bytes / _MB,
                   help="largest single file or archive member (default %(default).0f)")
    g.add_argument("--max-ratio", type=float, default=_DEFAULT.max_ratio,
                   help="largest compression ratio of a member or compressed tar (default %(default)g)")
    g.add_argument("--max-members", type=int, default=_DEFAULT.max_members,
                   help="most entries in an archive or files in a folder (default %(default)d)")
    g.add_argument("--max-decoded-mb", type=float, default=_DEFAULT.max_decoded_bytes / _MB,
                   help="largest workspace of decoded images, N x R x R x 3 bytes (default %(default).0f)")
    g.add_argument("--max-image-mpx", type=float, default=_DEFAULT.max_image_pixels / 1e6,
                   help="largest image in megapixels, checked before decoding (default %(default)g)")
    add_home(p)


def limits_from_args(args) -> ImportLimits:
    return ImportLimits(max_total_bytes=int(args.max_total_mb * _MB), max_file_bytes=int(args.max_file_mb * _MB),
                        max_ratio=float(args.max_ratio), max_members=int(args.max_members),
                        max_image_pixels=int(args.max_image_mpx * 1e6),
                        max_decoded_bytes=int(args.max_decoded_mb * _MB))


def check_overwrite(home, name: str, force: bool) -> None:
    """--overwrite deletes the old workspace with everything derived from it: refuse unless --force when that
    is more than the images."""
    from cedm import workspace as wsp
    from cedm.errors import CedmError

    root = wsp.resolve_home(home) / "workspaces" / name
    if force or not (root / "manifest.json").is_file():
        return
    models = sorted(p.name for p in (root / "models").glob("*") if p.is_dir() and not p.name.startswith("."))
    results = sorted(p.name for p in (root / "artifacts").glob("*") if p.is_dir() and any(p.iterdir()))
    if models or results:
        what = ([f"{len(models)} trained model(s) ({', '.join(models[:5])}{', ...' if len(models) > 5 else ''})"]
                if models else []) + ([f"its results ({', '.join(results)})"] if results else [])
        raise CedmError(f"--overwrite would delete workspace {name!r} with {' and '.join(what)}; add --force to "
                        "delete them too, or import under another --name")


def run(args) -> int:
    from cedm.dataset.importers import default_name, import_dataset

    if args.overwrite:
        check_overwrite(args.home, args.name or default_name(args.source), args.force)
    ws = import_dataset(args.source, home=args.home, name=args.name, resolution=args.resolution,
                        labels_csv=args.labels, limits=limits_from_args(args), overwrite=args.overwrite,
                        split=args.split)
    rep = ws.import_report
    skipped = rep.get("skipped", [])
    print(f"imported {rep['n_imported']} images from {Path(args.source).name} ({rep['kind']}) into workspace "
          f"{ws.name!r} at {ws.resolution}x{ws.resolution}; {len(skipped)} skipped")
    for s in skipped[:_SHOW_SKIPPED]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(skipped) > _SHOW_SKIPPED:
        print(f"  ... and {len(skipped) - _SHOW_SKIPPED} more (see {ws.root / 'import_report.json'})")
    gt = ws.ground_truth
    if gt is not None:
        known = int((gt.labels >= 0).sum())
        print(f"ground-truth labels: {len(gt.names)} classes for {known} images (kept for evaluation only)")
    print(f"workspace: {ws.root}")
    return 0

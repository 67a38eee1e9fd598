"""`cedm probe`: condition a trained model after training (seed 004): a small classifier on its denoiser's
representations, for a workspace labeling, a named row set or a CSV of picked paths; cached per model,
labeling and settings in the workspace (stage ``probes``)."""
from __future__ import annotations

from pathlib import Path

from cedm.commands import add_device, add_workspace
from cedm.errors import CedmError

HELP = ("train a probe (a classifier on the model's denoiser features) for a labeling, so an unconditional "
        "model can be guided toward its classes: kmeans:K, temi:K, gt, labels:NAME, rows:NAME or a CSV of paths")


def add_arguments(p) -> None:
    from cedm.probes.probe import DEFAULT_ROUTE, ROUTES, ProbeSettings

    d = ProbeSettings()
    add_workspace(p)
    p.add_argument("--model", required=True,
                   help="model folder, or a model name (shipped, e.g. demo-uncond, or one of the workspace's)")
    p.add_argument("--labels", required=True, metavar="SPEC",
                   help="kmeans:K, temi:K, gt, labels:NAME, rows:NAME, or a .csv file of workspace paths "
                        "(those images vs the rest)")
    p.add_argument("--backbone", default=None,
                   help="features for kmeans:K / temi:K (default: the backbone of a clustering already made for "
                        "that spec, else the default backbone)")
    p.add_argument("--route", default=DEFAULT_ROUTE, choices=list(ROUTES),
                   help="x0: the paper's route (features of the x0 estimate re-noised at --sigma-feature; trained "
                        "on clean images; the default); noised: features of the noisy sample at sigma as in training")
    p.add_argument("--sigma-feature", type=float, default=d.sigma_feature,
                   help=f"route x0: noise level the (estimated) clean image is re-noised at (default {d.sigma_feature})")
    p.add_argument("--blocks", default=",".join(d.blocks),
                   help=f"denoiser blocks whose pooled outputs are the features (default {','.join(d.blocks)})")
    p.add_argument("--hidden", type=int, default=d.hidden, help="hidden width (0: a linear probe)")
    p.add_argument("--train-steps", type=int, default=d.train_steps, help="Adam steps (full batch)")
    p.add_argument("--holdout", type=float, default=d.holdout, help="share of each class held out for the report")
    p.add_argument("--repeats", type=int, default=d.repeats, help="noisy copies of each training image")
    p.add_argument("--max-per-class", type=int, default=d.max_per_class, help="rows per class at most")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch", type=int, default=d.batch, help="images per denoiser call")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_device(p)


def resolve_model_dir(name: str, ws=None) -> Path:
    """A model folder, or a model name of the registry (shipped models, then the workspace's)."""
    p = Path(name).expanduser()
    if (p / "cedm.json").is_file():
        return p
    from cedm.model.registry import find_model, list_models

    return find_model(list_models(ws), name).path


def format_report(info: dict) -> str:
    r = info.get("report") or {}
    lines = [f"probe: {info.get('labeling')} on {info.get('settings', {}).get('route')} route, "
             f"{info.get('n_classes')} classes, {r.get('n_train')} training / {r.get('n_heldout')} held-out rows, "
             f"train accuracy {r.get('train_accuracy', float('nan')):.3f}, {r.get('seconds', 0):.0f} s"]
    if r.get("clean"):
        c = r["clean"]
        lines.append(f"  held-out, clean images:            accuracy {c['accuracy']:.3f}  "
                     f"balanced {c['balanced_accuracy']:.3f}")
    for b in r.get("sigma_bins", []):
        lo, hi = b["sigma"]
        lines.append(f"  held-out, sigma in [{lo:g}, {hi:g}):{' ' * max(1, 14 - len(f'{lo:g}{hi:g}'))}"
                     f"accuracy {b['accuracy']:.3f}  balanced {b['balanced_accuracy']:.3f}")
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from cedm.device import resolve_device
    from cedm.model.edm import load_model
    from cedm.probes.probe import ProbeSettings, get_probe
    from cedm.progress import tqdm_progress
    from cedm.workspace import open_workspace

    if args.threads is not None:
        if args.threads < 1:
            raise CedmError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    ws = open_workspace(args.home, args.workspace)
    model_dir = resolve_model_dir(args.model, ws)
    blocks = tuple(b.strip() for b in str(args.blocks).split(",") if b.strip())
    settings = ProbeSettings(route=args.route, sigma_feature=args.sigma_feature, blocks=blocks, hidden=args.hidden,
                             train_steps=args.train_steps, holdout=args.holdout, repeats=args.repeats,
                             max_per_class=args.max_per_class, seed=args.seed, batch=args.batch)
    model = load_model(model_dir, resolve_device(args.device))
    with tqdm_progress("probe") as progress:  # the stages the app's progress panel shows, as tqdm bars
        probe, folder, trained = get_probe(ws, model, args.labels, settings, model_dir=model_dir,
                                           progress=progress, backbone=args.backbone)
    print(format_report(probe.info))
    print(f"{'trained' if trained else 'cached'}: {folder}")
    print(f"sample with: cedm sample {model_dir} --probe {folder} --cluster K --guidance W")
    return 0

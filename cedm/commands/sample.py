"""`cedm sample`: generate images from a trained C-EDM model (PNG files, a grid and samples.jsonl)."""
from __future__ import annotations

from pathlib import Path

from cedm.commands import add_device, add_home
from cedm.device import PRECISIONS
from cedm.errors import CedmError
from cedm.sampling.samplers import SAMPLERS

HELP = "generate images from a trained model, per cluster or from q(c), with classifier-free guidance"


def add_arguments(p) -> None:
    p.add_argument("model", help="model folder (or a model name with --workspace)")
    p.add_argument("--workspace", default=None, help="look the model up in this workspace's models/ folder")
    add_home(p)
    p.add_argument("--n", type=int, default=None, help="number of images (default 64, or one per --clusters entry)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cluster", type=int, default=None, help="condition every image on this cluster")
    which.add_argument("--clusters", default=None, help="comma-separated cluster per image, e.g. 3,3,9")
    which.add_argument("--from-q", action="store_true",
                       help="draw each image's cluster from the training distribution q(c) (the default)")
    which.add_argument("--uniform", action="store_true", help="draw clusters uniformly instead of from q(c)")
    which.add_argument("--uncond", action="store_true", help="no condition (the learned unconditional branch)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="w: 0 unconditional, 1 conditional (default), >1 stronger guidance")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (Heun: 2 x steps - 1 evaluations); default: the official configurations' (18 up to 32 px, 40 from 64 px)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only for noise levels LO <= sigma <= HI (Kynkäänniemi et al. 2024); outside it "
                        "only the conditional half of the batch runs (default: every sigma)")
    p.add_argument("--sampler", default="heun", choices=list(SAMPLERS))
    p.add_argument("--churn", type=float, default=0.0, help="Heun stochasticity S_churn (0: deterministic)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i")
    p.add_argument("--batch", type=int, default=16, help="images per network batch")
    p.add_argument("--best-of", type=int, default=1, metavar="K",
                   help="draw K candidates per image and keep the one the clustering head (TEMI, or k-means "
                        "centroids) most confidently puts in the image's cluster; records its confidence")
    p.add_argument("--probe", default=None, metavar="FOLDER",
                   help="guide toward a probe's classes (cedm probe): --cluster/--clusters then name probe classes "
                        "and --guidance is the probe weight w in D + w sigma^2 grad log p(y | x0_hat); --best-of K "
                        "keeps the candidate the probe finds most probable")
    p.add_argument("--condition", type=int, default=None,
                   help="with --probe on a C-EDM: its own trained condition, guided classifier-free at --cfg")
    p.add_argument("--cfg", type=float, default=1.0, help="with --probe and --condition: the classifier-free weight")
    p.add_argument("--layout", default=None, metavar="LAYOUT",
                   help="spatial models: box coordinates x0,y0,x1,y1 (pixels of the model resolution), a mask PNG "
                        "(pixel value = segment id) or an image whose self-annotation is used (docs/spatial.md)")
    p.add_argument("--guide-on", default="both", choices=["both", "layout", "cluster"],
                   help="with --layout: guide on layout and cluster together (default), on the layout alone, or on "
                        "the cluster within the layout (the last two need a model trained with --p-drop-class)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default=None,
                   help="output folder (default <home>/samples/<model>/<settings>; never the model folder)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all cores; 1 is often faster on a busy machine)")
    p.add_argument("--dtype", default="auto", choices=PRECISIONS,
                   help="network precision (auto: bf16 where the hardware has it natively, CUDA or AMX CPUs, else "
                        "fp32; fp32: the same images, up to float rounding, on any machine)")
    add_device(p)


def _model_dir(args) -> Path:
    p = Path(args.model)
    if (p / "cedm.json").is_file():
        return p
    if args.workspace:
        from cedm.workspace import open_workspace

        d = open_workspace(args.home, args.workspace).derived_dir("models") / args.model
        if (d / "cedm.json").is_file():
            return d
        raise CedmError(f"no model named {args.model!r} in workspace {args.workspace!r}")
    raise CedmError(f"{args.model} is not a model folder (no cedm.json); give a folder or --workspace")


def default_sample_dir(home, model_dir, settings: str) -> Path:
    """``<home>/samples/<model name>/<settings>``: a shipped model's folder may be read-only (and is in git)."""
    from cedm.workspace import default_home

    return Path(home or default_home()).expanduser() / "samples" / Path(model_dir).name / settings


def run(args) -> int:
    from tqdm import tqdm

    from cedm.inference import InferenceEngine
    from cedm.model.edm import steps_for
    from cedm.sampling.generate import save_samples

    model_dir = _model_dir(args)
    clusters = args.cluster
    if args.clusters is not None:
        try:
            clusters = [int(c) for c in args.clusters.split(",") if c.strip()]
        except ValueError:
            raise CedmError(f"--clusters must be comma-separated integers, got {args.clusters!r}") from None
    if args.batch < 1:
        raise CedmError(f"--batch must be at least 1, got {args.batch}")
    n = args.n if args.n is not None else (len(clusters) if isinstance(clusters, list) else 64)
    guidance, interval = args.guidance, args.guidance_interval
    if args.probe is not None:
        from cedm.probes.kind import probe_spec

        if args.uncond:
            raise CedmError("--probe guides toward a probe class: leave out --uncond (guidance 0 is unguided)")
        guidance, interval = probe_spec(args.probe, args.guidance, args.cfg, args.condition, interval), None
    elif args.condition is not None:
        raise CedmError("--condition goes with --probe (without it, use --cluster)")
    with InferenceEngine(device=args.device, threads=args.threads, max_batch=args.batch,
                         dtype=args.dtype) as engine:
        info = engine.model_info(model_dir, ema=not args.raw)
        args.steps = steps_for(model_dir, args.steps)
        mode = ("uncond" if args.uncond or not info.get("n_conditions") else f"c{args.cluster}"
                if args.cluster is not None else "list" if args.clusters else "uniform" if args.uniform else "q")
        best = (f"-best{args.best_of}" if args.best_of > 1 else "") + ("-layout" if args.layout else "")
        if args.probe is not None:
            mode = "probe-" + ("q" if args.cluster is None and not args.clusters else
                               "list" if args.clusters else f"c{args.cluster}")
            mode += f"-cond{args.condition}-cfg{args.cfg:g}" if args.condition is not None else ""
        out = Path(args.out) if args.out else default_sample_dir(
            args.home, model_dir, f"seed{args.seed}-n{n}-{mode}-w{args.guidance:g}-{args.sampler}{args.steps}{best}")
        bar = tqdm(total=args.steps, unit="step", desc="sample", dynamic_ncols=True)

        def progress(step, total):
            bar.total = total
            bar.n = step
            bar.refresh()

        try:
            if args.layout is not None:  # a spatial model under a layout (cedm/model/spatial.py)
                from cedm.model.spatial import sample_with_layout
                if args.best_of > 1:
                    raise CedmError("--best-of is not available with --layout")
                images, records = sample_with_layout(
                    model_dir, args.layout, n, device=args.device, ema=not args.raw, clusters=clusters,
                    from_q=not args.uniform, uncond=args.uncond, guidance=args.guidance,
                    guidance_interval=args.guidance_interval, steps=args.steps, sampler=args.sampler,
                    seed=args.seed, churn=args.churn, batch_size=args.batch, guide_on=args.guide_on,
                    progress=lambda s, t, _d: progress(s, t))
            else:
                images, records = engine.generate(
                    model_dir, n, clusters=clusters, from_q=not args.uniform, uncond=args.uncond,
                    guidance=guidance, guidance_interval=interval, steps=args.steps,
                    sampler=args.sampler, seed=args.seed, churn=args.churn, best_of=args.best_of,
                    progress=progress, ema=not args.raw)
        finally:
            bar.close()
    save_samples(images, records, out, extra={"model": str(model_dir), "ema": not args.raw})
    print(f"{n} images: {out}")
    return 0

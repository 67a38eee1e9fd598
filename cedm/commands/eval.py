"""`cedm eval`: sample quality of trained models against their workspace's real images (see cedm.evaluate)."""
from __future__ import annotations

import math
from pathlib import Path

from cedm.commands import add_device, add_home
from cedm.errors import CedmError
from cedm.progress import tqdm_progress
from cedm.sampling.samplers import SAMPLERS

HELP = ("measure trained models: FD_EffNetLite0 (offline Fréchet distance), MSP confidence, and FID / "
        "FD_DINOv2 when their weights can be had")


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model folders (or model names in --workspace); all get the same seeds")
    p.add_argument("--workspace", default=None,
                   help="workspace with the real images (default: the one each model was trained on)")
    add_home(p)
    p.add_argument("--n", type=int, default=1000, help="generated images per setting (default 1000)")
    p.add_argument("--guidance", default="1",
                   help="comma-separated guidance strengths w, e.g. 0,1,2 (0 unconditional, 1 conditional)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only for noise levels LO <= sigma <= HI (default: every sigma)")
    p.add_argument("--uniform", action="store_true", help="draw clusters uniformly instead of from q(c)")
    p.add_argument("--sampler", default="heun", choices=list(SAMPLERS))
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the per-setting JSON (default <home>/eval/<model name>; never the model folder)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (Heun: 2 x steps - 1 evaluations); default: the official configurations' (18 up to 32 px, 40 from 64 px)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i in every setting and model")
    p.add_argument("--batch", type=int, default=64, help="images per network batch when sampling")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="local pytorch-fid FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for FID")
    p.add_argument("--dinov2-weights", default=None, metavar="PATH",
                   help="local weights of the registry's dinov2_vits14 backbone for FD_DINOv2")
    p.add_argument("--offline-only", action="store_true",
                   help="compute only FD_EffNetLite0 and MSP (no FID / FD_DINOv2 attempt)")
    p.add_argument("--probe", default=None, metavar="FOLDER",
                   help="evaluate probe-guided sampling of the (one) model: --guidance values are probe weights; "
                        "targets drawn from the probe labeling's q; agreement by the labeling's own assigner")
    p.add_argument("--best-of", type=int, default=1, metavar="K",
                   help="with --probe: keep the best of K candidates by the probe's probability")
    p.add_argument("--condition", type=int, default=None, help="with --probe on a C-EDM: its own condition")
    p.add_argument("--cfg", type=float, default=1.0, help="with --probe and --condition: classifier-free weight")
    p.add_argument("--layout-iou", default=None, metavar="box|segments:S",
                   help="layout fidelity (seed 003): mean IoU of each model's samples under N of the workspace's own "
                        "self-annotations (non-spatial models: same clusters and seeds, the baseline) and their "
                        "FD_EffNetLite0; one --guidance value (see docs/spatial.md)")
    p.add_argument("--layout-backbone", default=None, metavar="NAME",
                   help="with --layout-iou: the annotator (default: the spatial model's own)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write all results to this JSON file")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and BLAS (default: all cores; 1 is often faster on a busy machine)")
    add_device(p)


def _parse_guidance(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CedmError(f"--guidance must be comma-separated numbers, e.g. 0,1,2; got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise CedmError(f"--guidance needs numbers >= 0, got {text!r}")
    return values


def _resolve_models(args) -> list[tuple[Path, object]]:
    """(model folder, workspace) for each MODEL argument."""
    from cedm.model.edm import read_model_info
    from cedm.workspace import open_workspace

    fixed = open_workspace(args.home, args.workspace) if args.workspace else None
    out = []
    for name in args.models:
        p = Path(name)
        if not (p / "cedm.json").is_file():
            if fixed is None:
                raise CedmError(f"{name} is not a model folder (no cedm.json); give a folder or --workspace")
            p = fixed.derived_dir("models") / name
            if not (p / "cedm.json").is_file():
                raise CedmError(f"no model named {name!r} in workspace {fixed.name!r}")
        ws = fixed
        if ws is None:
            trained_on = (read_model_info(p).get("provenance") or {}).get("workspace")
            if not trained_on:
                raise CedmError(f"model {p} does not record its workspace: pass --workspace")
            ws = open_workspace(args.home, trained_on)
        out.append((p, ws))
    return out


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(results: list[dict]) -> str:
    """One line per (model, setting): the numbers the model card quotes."""
    metrics = ["FD_EffNetLite0"] + [m for m in ("FID", "FD_DINOv2") if any(m in r for r in results)]
    cols = ["model", "condition", "w", "n"] + metrics + ["MSP", "agree", "seconds"]
    rows = []
    for r in results:
        rows.append([r["model_name"], r["condition"], "-" if r["guidance"] is None else f"{r['guidance']:g}",
                     str(r["n"])] + [_fmt(r.get(m), 2) for m in metrics]
                    + [_fmt(r.get("MSP"), 3), _fmt(r.get("agreement"), 3), f"{r['seconds']:.0f}"])
    if results:
        r0 = results[0]
        floor = [_fmt(r0.get(f"{m}_floor"), 2) for m in metrics]
        rows.append(["real subset", "(noise floor)", "-", str(r0["n"])] + floor
                    + [_fmt(r0.get("MSP_real"), 3), "-", "-"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run(args) -> int:
    from cedm import io
    from cedm.clusters.assign import condition_head
    from cedm.commands.train import _set_threads
    from cedm.evaluate import default_eval_dir, evaluate_model, guidance_plan
    from cedm.fd import DINOV2_SKIPPED, FID_SKIPPED
    from cedm.model.edm import read_model_info, steps_for
    from cedm.sampling.guidance import parse_interval

    guidance = _parse_guidance(args.guidance)
    interval = parse_interval(args.guidance_interval)
    if args.n < 2:
        raise CedmError(f"--n must be at least 2 (a Fréchet distance needs a covariance), got {args.n}")
    if args.threads is not None:
        _set_threads(args.threads)
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    models = _resolve_models(args)
    if args.probe is not None:
        return _run_probe(args, models, guidance)
    if args.layout_iou is not None:
        return _run_layout(args, models, guidance)
    for model_dir, _ in models:  # refuse impossible settings before hours of sampling
        guidance_plan(model_dir, guidance)
    # Unconditional models are scored by the classifier of the first conditioned model that has one.
    head_from = next((m for m, ws in models if condition_head(m, ws)[0] is not None), None)
    results, notes = [], []
    with tqdm_progress("eval") as progress:  # one bar per stage (cedm.progress, as the app shows them)
        for model_dir, ws in models:
            conditioned = read_model_info(model_dir).get("n_conditions", 0) > 0
            out = evaluate_model(model_dir, ws, n=args.n, seed=args.seed, guidance=guidance,
                                 from_q=not args.uniform, sampler=args.sampler,
                                 steps=steps_for(model_dir, args.steps),
                                 batch_size=args.batch, inception_weights=args.inception_weights,
                                 dinov2_weights=args.dinov2_weights, extra_metrics=not args.offline_only,
                                 head_from=None if conditioned else head_from, progress=progress,
                                 device=args.device, guidance_interval=interval,
                                 out_dir=Path(args.out) / model_dir.name if args.out and len(models) > 1 else
                                 args.out or default_eval_dir(model_dir, args.home))
            results += out["results"]
            notes += [m if m in (FID_SKIPPED, DINOV2_SKIPPED) else f"{model_dir.name}: {m}" for m in out["notes"]]
    print(format_table(results))
    for m in dict.fromkeys(notes):
        print(f"note: {m}")
    print("FD_EffNetLite0: Fréchet distance in EfficientNet-Lite0 (ImageNet) pooled features; not FID. "
          "MSP: mean max. softmax probability of the condition classifier; agree: share of samples it puts "
          "in their own cluster. Per-setting JSON: <home>/eval/<model>/ (or --out).")
    if args.json:
        io.write_json(args.json, {"results": results, "notes": list(dict.fromkeys(notes))})
        print(f"results: {args.json}")
    return 0


def _run_probe(args, models, weights) -> int:
    from cedm import io
    from cedm.model.edm import steps_for
    from cedm.probes.evaluate import evaluate_probe

    if len(models) != 1:
        raise CedmError("--probe evaluates one model (the one the probe was trained on)")
    (model_dir, ws), = models
    with tqdm_progress("eval") as progress:
        out = evaluate_probe(model_dir, args.probe, ws, n=args.n, seed=args.seed, weights=weights,
                             best_of=args.best_of, sampler=args.sampler, batch_size=args.batch,
                             steps=steps_for(model_dir, args.steps),
                             condition=args.condition, cfg=args.cfg, progress=progress, device=args.device)
    print("model  labeling  w_probe  best_of  n  FD_EffNetLite0  agree  probe_p  s/img")
    for r in out["results"]:
        print(f"{r['model_name']}  {r['labeling']}  {r['probe_guidance']:g}  {r['best_of']}  {r['n']}  "
              f"{r['FD_EffNetLite0']:.2f}  {_fmt(r['agreement'], 3)}  {r['probe_probability']:.3f}  "
              f"{r['seconds_per_image']:.2f}")
    for m in out["notes"]:
        print(f"note: {m}")
    print("agree: share of samples the labeling's own assigner puts in the class they were guided toward "
          "(not the probe); probe_p: the probe's mean probability of that class.")
    if args.json:
        io.write_json(args.json, out)
    return 0


def _run_layout(args, models, guidance) -> int:
    """--layout-iou: cedm.model.spatial_eval on one workspace (the models' own, or --workspace)."""
    from cedm import io
    from cedm.model.edm import steps_for
    from cedm.model.spatial_eval import evaluate_layouts, format_layout_table

    if len(guidance) != 1:
        raise CedmError("--layout-iou takes one --guidance value")
    if len({ws.content_hash for _, ws in models}) != 1:
        raise CedmError("--layout-iou compares models on one workspace's layouts: pass --workspace")
    with tqdm_progress("layout IoU") as progress:
        out = evaluate_layouts([m for m, _ in models], models[0][1], args.layout_iou, args.layout_backbone,
                               n=args.n, seed=args.seed, guidance=guidance[0], sampler=args.sampler,
                               steps=steps_for(models[0][0], args.steps),
                               batch_size=args.batch, device=args.device, progress=progress)
    print(format_layout_table(out["results"]))
    for m in out["notes"]:
        print(f"note: {m}")
    print("layout IoU: the layout (a row's self-annotation) vs the self-annotation of the image sampled from it, "
          "same annotator, at the model resolution (box IoU; segments: mean IoU over the classes present). "
          "Baseline: a model without layout input, same cluster and seed. Ceiling: the real images of those rows.")
    if args.json:
        io.write_json(args.json, out)
        print(f"results: {args.json}")
    return 0

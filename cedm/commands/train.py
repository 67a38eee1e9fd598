"""`cedm train`: train a cluster-conditioned EDM (C-EDM) on a workspace.

Multi-GPU / multi-machine: launch the same command through torchrun, e.g.
``torchrun --nproc_per_node 4 -m cedm train WORKSPACE ...`` (gloo on CPU, nccl on GPU; rank 0 writes).
"""
from __future__ import annotations

from cedm.commands import add_config_arguments, add_device, add_workspace, config_from_args

HELP = "train a cluster-conditioned diffusion model (C-EDM) on a workspace"


def add_arguments(p) -> None:
    add_workspace(p)
    p.add_argument("--condition", default="none",
                   help="kmeans:C, temi:C, labels:NAME (a labeling of this workspace), self:K (the model clusters "
                        "its own features while it trains; seed 002) or none (unconditional)")
    from cedm.model.train import TrainConfig

    add_config_arguments(p, TrainConfig)  # --preset, --kimg, --batch, --lr, --ema, ... with TrainConfig's defaults
    p.add_argument("--backbone", default=None,
                   help="features the kmeans/temi condition is computed from (default: the features default; "
                        "efficientnet_lite0 works offline)")
    p.add_argument("--self-block", default=None, help="self:K: UNet block the online clusters use (default mid)")
    p.add_argument("--self-sigma", type=float, default=None, help="self:K: feature noise level (default 0.5)")
    p.add_argument("--self-warmup", type=float, default=None,
                   help="self:K: fraction of the run trained unconditionally first (default 0.25)")
    p.add_argument("--spatial", default=None, metavar="box|segments:S",
                   help="also condition on a layout: the workspace's self-box (box) or self-segment map with S "
                        "classes (segments:S), concatenated to the network input (needs --condition; see "
                        "docs/spatial.md)")
    p.add_argument("--spatial-backbone", default=None, metavar="NAME",
                   help="backbone of the self-annotations (default: --backbone, else the features default)")
    p.add_argument("--p-drop-map", type=float, default=0.0,
                   help="spatial: also drop the map alone with this probability (layout-free cluster guidance)")
    p.add_argument("--p-drop-class", type=float, default=0.0,
                   help="spatial: also drop the cluster alone with this probability (cluster-free layout guidance)")
    p.add_argument("--out", default=None, help="model name under <workspace>/models (default <condition>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint of --out")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all cores; 1 is often faster on a busy machine)")
    add_device(p)


def run(args) -> int:
    from cedm.model.edm import read_model_info
    from cedm.model.train import TrainConfig, train_workspace
    from cedm.workspace import open_workspace

    ws = open_workspace(args.home, args.workspace)
    _set_threads(args.threads)
    config = config_from_args(TrainConfig, args, **_p_uncond(args))
    out = train_workspace(ws, args.condition, backbone=args.backbone, name=args.out, preset=config.preset,
                          config=config, resume=args.resume, device=args.device, spatial=args.spatial,
                          spatial_options={"p_drop_map": args.p_drop_map, "p_drop_class": args.p_drop_class,
                                           "backbone": args.spatial_backbone},
                          self_guidance=_self_guidance(args))
    import torch

    if torch.distributed.is_initialized():  # launched by torchrun
        if torch.distributed.get_rank() == 0:
            print(f"model: {out}")
        torch.distributed.destroy_process_group()
    else:
        print(f"model: {out}")
        util = ((read_model_info(out).get("condition") or {}).get("utilization"))
        if util:  # self:K: how many prototypes the model's own clustering uses
            print(f"self-labels: {util['used']} of {util['k']} prototypes used (r = {util['r']:.3f}); "
                  f"labeling self:{util['k']}@{out.name}")
    return 0


def _set_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            from cedm.errors import CedmError

            raise CedmError(f"--threads must be at least 1, got {n}")
        import torch

        torch.set_num_threads(n)


def _p_uncond(args) -> dict:
    """self:K trains with seed 002's label dropout unless --p-uncond is given."""
    from cedm.model.self_guidance import P_DROP, parse_spec
    if args.p_uncond is None and parse_spec(args.condition) is not None:
        return {"p_uncond": P_DROP}
    return {}


def _self_guidance(args) -> dict | None:
    kw = {"block": args.self_block, "sigma": args.self_sigma, "warmup_fraction": args.self_warmup}
    kw = {k: v for k, v in kw.items() if v is not None}
    if kw and not str(args.condition).startswith("self:"):
        from cedm.errors import CedmError
        raise CedmError("--self-block, --self-sigma and --self-warmup apply only to --condition self:K")
    return kw or None

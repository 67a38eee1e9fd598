"""`cedm train`: train a cluster-conditioned EDM (C-EDM) on a workspace.

Multi-GPU / multi-machine: launch the same command through torchrun, e.g.
``torchrun --nproc_per_node 4 -m cedm train WORKSPACE ...`` (gloo on CPU, nccl on GPU; rank 0 writes).
"""
from __future__ import annotations

from cedm.commands import add_device, add_workspace

HELP = "train a cluster-conditioned diffusion model (C-EDM) on a workspace"


def add_arguments(p) -> None:
    add_workspace(p)
    p.add_argument("--condition", default="none",
                   help="kmeans:C, temi:C, labels:NAME (a labeling of this workspace), self:K (the model clusters "
                        "its own features while it trains; seed 002) or none (unconditional)")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "paper"],
                   help="network size: small (CPU demo), paper (DDPM++ CIFAR, ~58M parameters), tiny (smoke tests)")
    p.add_argument("--kimg", type=float, default=1000.0, help="training duration in thousands of images")
    p.add_argument("--batch", type=int, default=64, help="global batch size (all processes together)")
    p.add_argument("--batch-gpu", type=int, default=None, help="per-process micro-batch (gradient accumulation)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (after the ramp-up)")
    p.add_argument("--lr-rampup", type=float, default=None, help="learning-rate ramp-up in kimg (default kimg/10)")
    p.add_argument("--ema", type=float, default=500.0, help="EMA half-life in kimg")
    p.add_argument("--p-uncond", type=float, default=None,
                   help="label dropout for classifier-free guidance (0: no guidance possible at sampling; "
                        "default 0.1, 0.15 for self:K as in seed 002)")
    p.add_argument("--no-xflip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--dropout", type=float, default=None, help="network dropout (default: the preset's)")
    p.add_argument("--augment", type=float, default=0.0, metavar="P",
                   help="EDM's non-leaking augmentation with probability P (paper: 0.12 CIFAR, 0.15 FFHQ; 0 = off): "
                        "flips, scaling, rotation, anisotropy, translation, told to the network as a 9-d condition "
                        "that is zero at sampling")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="max gradient norm (default 1.0; 0 = off, as the official EDM code)")
    p.add_argument("--resolution", type=int, default=None,
                   help="model resolution (default: the workspace's, at most 64); images are resized on the fly")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on a GPU that supports it, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-kimg", type=float, default=50.0, help="checkpoint (and model update) cadence")
    p.add_argument("--sample-kimg", type=float, default=100.0, help="sample grid cadence (0: never)")
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
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from a trained model's weights (a model folder or a model name, e.g. a shipped "
                        "unconditional model); same preset and resolution; fine-tuning converges far faster")
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
    config = TrainConfig(preset=args.preset, resolution=args.resolution, kimg=args.kimg, batch=args.batch,
                         batch_gpu=args.batch_gpu, lr=args.lr, lr_rampup_kimg=args.lr_rampup,
                         ema_halflife_kimg=args.ema, p_uncond=_p_uncond(args), xflip=not args.no_xflip,
                         dropout=args.dropout, seed=args.seed, precision=args.precision,
                         augment=args.augment, grad_clip=args.grad_clip,
                         checkpoint_kimg=args.checkpoint_kimg, sample_kimg=args.sample_kimg,
                         init=args.init)
    out = train_workspace(ws, args.condition, backbone=args.backbone, name=args.out, preset=args.preset, config=config,
                          resume=args.resume, device=args.device, spatial=args.spatial,
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


def _p_uncond(args) -> float:
    if args.p_uncond is not None:
        return args.p_uncond
    from cedm.model.self_guidance import P_DROP, parse_spec
    return P_DROP if parse_spec(args.condition) is not None else 0.1


def _self_guidance(args) -> dict | None:
    kw = {"block": args.self_block, "sigma": args.self_sigma, "warmup_fraction": args.self_warmup}
    kw = {k: v for k, v in kw.items() if v is not None}
    if kw and not str(args.condition).startswith("self:"):
        from cedm.errors import CedmError
        raise CedmError("--self-block, --self-sigma and --self-warmup apply only to --condition self:K")
    return kw or None

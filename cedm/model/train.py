"""Training loop for C-EDM (NVlabs/edm ``training_loop.py`` in spirit): EDM loss, Adam with lr ramp-up, EMA by
half-life in images, label dropout for classifier-free guidance, exact resume, and DDP through torchrun.

Randomness, so that a stopped-and-resumed run equals an uninterrupted one bit for bit (same world size):
- ``batch_rng`` (numpy, identical on every rank) draws the *global* batch: image rows, flips and which labels
  are dropped. Rank r trains on slice r of it, so ranks never overlap (like a DistributedSampler).
- ``noise_gen`` (torch, one per rank, on the training device) draws sigma and the noise.
- network dropout uses the global torch RNG, re-seeded from (seed, step, rank) before every step.
All generator states, the model, its EMA, the optimizer and the step count go into the checkpoint
(safetensors for tensors, JSON for the rest). Checkpoints and the model folder are written by rank 0 only.

Output folder::

    <out>/cedm.json, unet_ema/, unet/        the model (updated at every checkpoint; see cedm.model.edm)
    <out>/training/checkpoint-<step>.safetensors + .json    resumable state (the last few are kept)
    <out>/training/samples-<step>.png       sample grids during training (EMA weights)
    <out>/training/log.jsonl                loss, images/s, learning rate
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cedm import __version__, io
from cedm.clusters.assign import labels_hash
from cedm.device import PRECISIONS
from cedm.errors import CedmError
from cedm.model.edm import CEDM, PRESETS, copy_model, edm_loss, save_model
from cedm.state import optimizer_from_tensors, optimizer_to_tensors, prefixed, unprefixed

_CKPT_RE = re.compile(r"^checkpoint-(\d{9})\.json$")


def _opt(default, help: str, **cli):
    """A config field with its command-line help (``cedm.commands.add_config_arguments`` makes the flag)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Training settings; ``cedm train`` makes one flag per field from these defaults and help texts."""
    preset: str = _opt("small", "network size: small (CPU demo), paper (DDPM++ CIFAR, ~58M parameters), tiny "
                                "(smoke tests)", choices=PRESETS)
    resolution: int | None = _opt(None, "model resolution (default: the workspace's, at most 64); images are "
                                        "resized on the fly")
    kimg: float = _opt(1000.0, "training duration in thousands of images")
    batch: int = _opt(64, "global batch size (all processes together)")
    batch_gpu: int | None = _opt(None, "per-process micro-batch (gradient accumulation; default: none)")
    lr: float = _opt(1e-3, "Adam learning rate (after the ramp-up)")
    lr_rampup_kimg: float | None = _opt(None, "learning-rate ramp-up in kimg (default min(10000, kimg/10))",
                                        flag="--lr-rampup")
    ema_halflife_kimg: float = _opt(500.0, "EMA half-life in kimg", flag="--ema")
    ema_rampup_ratio: float | None = _opt(0.05, "EMA half-life at most this fraction of the images seen so far")
    p_uncond: float = _opt(0.1, "label dropout for classifier-free guidance (0: no guidance possible at "
                                "sampling; self:K uses 0.15 as in seed 002)")
    xflip: bool = _opt(True, "random horizontal flips")
    grad_clip: float = _opt(1.0, "max gradient norm (0 = off, as the official EDM code)")
    augment: float = _opt(0.0, "EDM's non-leaking augmentation with probability P (paper: 0.12 CIFAR, 0.15 FFHQ; "
                               "0 = off): flips, scaling, rotation, anisotropy, translation, told to the network "
                               "as a 9-d condition that is zero at sampling", metavar="P")
    dropout: float | None = _opt(None, "network dropout (default: the preset's)")
    seed: int = _opt(0, "training seed (initialisation and data order)")
    precision: str = _opt("auto", "auto: bf16 autocast on a GPU that supports it, fp32 on CPU",
                          choices=PRECISIONS)
    checkpoint_kimg: float = _opt(50.0, "checkpoint (and model update) cadence in kimg")
    sample_kimg: float | None = _opt(100.0, "sample grid cadence in kimg (0: never)")
    n_sample: int = _opt(16, "images per sample grid")
    keep_checkpoints: int = _opt(2, "checkpoints kept")
    log_every: int = _opt(10, "steps between log lines")
    init: str | None = _opt(None, "start from a trained model's weights (a model folder or a model name, e.g. a "
                                  "shipped unconditional model); same preset and resolution; fine-tuning "
                                  "converges far faster", metavar="MODEL")

    # Fields that must not change when a run is resumed (the schedule and the data stream depend on them).
    FIXED = ("preset", "resolution", "batch", "lr", "lr_rampup_kimg", "ema_halflife_kimg", "ema_rampup_ratio",
             "p_uncond", "xflip", "grad_clip", "dropout", "seed", "precision", "augment")

    def resolved(self, data_resolution: int) -> "TrainConfig":
        c = dataclasses.replace(self)
        if c.preset not in PRESETS:
            raise CedmError(f"unknown preset {c.preset!r}: choose one of {', '.join(PRESETS)}")
        c.resolution = int(c.resolution or min(int(data_resolution), 64))
        if c.lr_rampup_kimg is None:
            c.lr_rampup_kimg = min(10000.0, c.kimg / 10)
        for name, lo in (("kimg", 0), ("batch", 0), ("lr", 0)):
            if not getattr(c, name) > lo:
                raise CedmError(f"{name} must be positive, got {getattr(c, name)}")
        if not 0 <= c.p_uncond < 1:
            raise CedmError(f"p_uncond must be in [0, 1), got {c.p_uncond}")
        if not 0 <= c.augment <= 1:
            raise CedmError(f"augment must be a probability in [0, 1], got {c.augment}")
        if c.precision not in PRECISIONS:
            raise CedmError(f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- distributed helpers ------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def setup_distributed(device=None) -> Dist:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    from cedm.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(0, 1, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev)


# --- data ---------------------------------------------------------------------------------------
def _check_data(images, labels, n_conditions: int):
    if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 3
            and images.shape[1] == images.shape[2] and images.dtype == np.uint8):
        raise CedmError(f"training images must be uint8 (N, R, R, 3), got "
                        f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    if len(images) < 1:
        raise CedmError("no training images")
    if n_conditions < 0:
        raise CedmError(f"n_conditions must be >= 0, got {n_conditions}")
    if labels is None:
        if n_conditions:
            raise CedmError(f"{n_conditions} conditions but no labels given")
        return None
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise CedmError(f"labels must be integers, one per image ({len(images)}), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < -1 or labels.max() >= n_conditions):
        raise CedmError(f"labels must lie in -1..{n_conditions - 1} (-1 = no condition), "
                        f"got {labels.min()}..{labels.max()}")
    return labels


def data_fingerprint(images: np.ndarray, labels: np.ndarray | None) -> dict:
    h = labels_hash(labels) if labels is not None else None
    first = hashlib.sha256(np.ascontiguousarray(images[: min(len(images), 64)]).tobytes()).hexdigest()[:16]
    return {"n": int(len(images)), "shape": list(images.shape[1:]), "labels_sha": h, "head_sha": first}


def empirical_q(labels: np.ndarray | None, n_conditions: int) -> list[float]:
    """q(c): the fraction of (labelled) training images in each condition."""
    if not n_conditions:
        return []
    counts = np.bincount(labels[labels >= 0], minlength=n_conditions).astype(np.float64)
    return (counts / max(counts.sum(), 1)).tolist()


def load_batch(images: np.ndarray, rows: np.ndarray, flips: np.ndarray, resolution: int,
               device: torch.device) -> torch.Tensor:
    """uint8 rows of the memmap -> float (B, 3, r, r) in [-1, 1] on ``device``, flipped, resized."""
    order = np.argsort(rows, kind="stable")  # read the memmap in ascending order
    x = np.empty((len(rows),) + images.shape[1:], dtype=np.uint8)
    x[order] = images[rows[order]]
    x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1
    if flips.any():
        f = torch.from_numpy(flips).to(device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    r = x.shape[-1]
    if r > resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    elif r < resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x


# --- checkpoints --------------------------------------------------------------------------------
def list_checkpoints(train_dir: Path) -> list[Path]:
    if not train_dir.is_dir():
        return []
    return sorted(p for p in train_dir.iterdir() if _CKPT_RE.match(p.name))


def save_checkpoint(train_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int) -> Path:
    """Tensors to safetensors, the rest to JSON; the JSON (written last) marks the checkpoint complete."""
    from safetensors.torch import save_file

    base = train_dir / f"checkpoint-{step:09d}"
    with io.atomic_file(base.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    io.write_json(base.with_suffix(".json"), meta)
    for old in list_checkpoints(train_dir)[:-max(keep, 1)]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return base


def load_checkpoint(json_path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    meta = io.read_json(json_path)
    st = json_path.with_suffix(".safetensors")
    if not st.is_file():
        raise CedmError(f"checkpoint {json_path.name} has no tensor file {st.name}")
    return meta, load_file(str(st))


# --- training -----------------------------------------------------------------------------------
ProgressFn = Callable[[int, int, str], None]


def train(images: np.ndarray, labels: np.ndarray | None, n_conditions: int, out_dir, config: TrainConfig | None = None,
          q: list[float] | None = None, progress: ProgressFn | None = None, resume: bool = False,
          condition: dict | None = None, provenance: dict | None = None, device=None, max_steps: int | None = None,
          show_progress: bool = True, should_stop: Callable[[], bool] | None = None, spatial=None,
          self_guidance=None) -> Path:
    """Train a C-EDM model on uint8 ``images`` (N, R, R, 3) (a memmap is fine: batches are read row by row).

    ``labels``: int per image in 0..C-1, -1 = no condition (trained as unconditional); None when C = 0.
    ``q``: the sampling distribution of conditions saved with the model (default: the empirical one).
    ``condition`` / ``provenance``: JSON-able descriptions stored in the model's cedm.json.
    ``resume``: continue from the newest checkpoint in ``out_dir`` (a fresh start if there is none);
    without it, an ``out_dir`` that already holds a model is refused.
    ``max_steps``: stop (with a checkpoint) after this many steps in this call; a later ``resume`` goes on.
    ``should_stop()``: asked after every step; True stops the same way (a Stop button; single process only).
    ``spatial``: a cedm.model.spatial.SpatialData (per-image layout maps concatenated to the input).
    ``self_guidance``: a cedm.model.self_guidance.SelfGuidanceConfig: the model labels its own images
    (``n_conditions`` = its K, ``labels`` None). Under torchrun every rank calls this; rank 0 writes.
    Returns the model folder.
    """
    config = (config or TrainConfig()).resolved(images.shape[1] if hasattr(images, "shape") else 0)
    labels = _check_data(images, labels, 0 if self_guidance is not None else int(n_conditions))
    C = int(n_conditions)
    out_dir = Path(out_dir)
    train_dir = out_dir / "training"
    dist = setup_distributed(device)
    if config.batch % dist.world:
        raise CedmError(f"batch {config.batch} is not divisible by the number of processes {dist.world}")
    if should_stop is not None and dist.world > 1:
        raise CedmError("should_stop is for single-process training (under torchrun, use max_steps)")
    per_rank = config.batch // dist.world
    micro = int(config.batch_gpu or per_rank)
    if micro <= 0 or per_rank % micro:
        raise CedmError(f"per-process batch {per_rank} is not divisible by batch_gpu {micro}")
    if q is not None and (len(q) != C or min(q, default=0) < 0 or (C and abs(sum(q) - 1) > 1e-4)):
        raise CedmError(f"q(c) must be {C} non-negative numbers summing to 1")
    q = list(map(float, q)) if q is not None else [1 / C] * C if self_guidance is not None else empirical_q(labels, C)

    checkpoints = list_checkpoints(train_dir)
    if not resume and ((out_dir / "cedm.json").exists() or checkpoints):
        raise CedmError(f"{out_dir} already holds a model; resume it (--resume) or choose another output name")
    fingerprint = data_fingerprint(images, labels)
    if spatial is not None:
        from cedm.model.spatial import check_spatial_data
        fingerprint["spatial"] = check_spatial_data(spatial, images, C, augment=config.augment)

    # Model, EMA, optimizer.
    torch.manual_seed(config.seed)  # the initial weights depend on the seed only
    from cedm.model.augment import edm_pipe
    pipe = edm_pipe(config.augment) if config.augment > 0 else None
    if pipe is not None and spatial is not None:  # the layout maps would not follow the warped images
        raise CedmError("--augment cannot be combined with layout (spatial) conditioning yet")
    net = CEDM.from_preset(config.preset, config.resolution, C, dropout=config.dropout,
                           augment_dim=pipe.dim if pipe else 0,
                           spatial_channels=spatial.channels if spatial is not None else 0).to(dist.device).train()
    if config.init and not (resume and checkpoints):  # a resumed run has its own weights
        init_weights(net, config.init)
    ema = copy_model(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    amp_dtype, use_scaler = _precision(config.precision, dist.device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    batch_rng = np.random.default_rng([config.seed, 0xBA7C])
    noise_gen = torch.Generator(device=dist.device).manual_seed(config.seed * 1_000_003 + 7919 * dist.rank + 1)
    step, elapsed_before = 0, 0.0
    online = None
    if self_guidance is not None:  # the online self-labelling hook (its logic lives in its own module)
        from cedm.model.self_guidance import OnlineSelfLabels, feature_channels
        if dist.world > 1:
            raise CedmError("self:K training runs in one process (launch it without torchrun)")
        online = OnlineSelfLabels(self_guidance, len(images), feature_channels(
            config.preset, config.resolution, self_guidance.block), config.seed, dist.device)

    if resume and checkpoints:
        meta, tensors = load_checkpoint(checkpoints[-1])
        _check_resume(meta, config, C, fingerprint, dist.world)
        net.load_checkpoint_state(unprefixed("net", tensors))
        ema.load_checkpoint_state(unprefixed("ema", tensors))
        optimizer_from_tensors(opt, tensors, meta["optimizer_param_groups"])
        batch_rng.bit_generator.state = meta["batch_rng"]
        noise_gen.set_state(tensors[f"rng.noise.{dist.rank}"].to(torch.uint8).cpu())
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        step, elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        if online is not None:
            online.load_state(tensors, meta.get("self_guidance") or {})
        config = dataclasses.replace(TrainConfig(**{k: v for k, v in meta["config"].items()
                                                     if k in TrainConfig.__dataclass_fields__}),
                                     kimg=config.kimg, checkpoint_kimg=config.checkpoint_kimg,
                                     sample_kimg=config.sample_kimg, n_sample=config.n_sample,
                                     keep_checkpoints=config.keep_checkpoints, log_every=config.log_every,
                                     batch_gpu=config.batch_gpu)

    ddp = net
    if dist.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

    total_steps = math.ceil(config.kimg * 1000 / config.batch)
    stop_step = total_steps if max_steps is None else min(total_steps, step + int(max_steps))
    ckpt_every = max(1, round(config.checkpoint_kimg * 1000 / config.batch))
    sample_every = (0 if config.sample_kimg == 0 else
                    max(1, round(config.sample_kimg * 1000 / config.batch)) if config.sample_kimg else None)
    info = {"preset": config.preset, "p_uncond": config.p_uncond if C else 0.0,
            "condition": {**(condition or {}), "n_conditions": C, "q": q},
            "provenance": {**(provenance or {}), "data": fingerprint,
                           **({"init": str(config.init)} if config.init else {})}}
    if spatial is not None:
        info["spatial"] = spatial.info()
    net.info = ema.info = info

    def write_state(done: bool):
        """Checkpoint + model folder; collective (every rank contributes its noise generator state)."""
        states = _gather_generator_states(noise_gen, dist)
        digests = _gather_param_digests(net, dist)
        if not dist.main:
            return
        if len(set(digests)) > 1:  # DDP must keep every replica identical (EDM's check_ddp_consistency)
            raise RuntimeError(f"DDP replicas diverged at step {step}: parameter digests {digests}")
        tensors = {**prefixed("net", net.checkpoint_state()), **prefixed("ema", ema.checkpoint_state())}
        opt_tensors, groups = optimizer_to_tensors(opt)
        tensors.update(opt_tensors)
        tensors.update({f"rng.noise.{r}": s for r, s in enumerate(states)})
        if online is not None:
            tensors.update(online.state_tensors())
            online.on_checkpoint(ema, images, config.resolution, out_dir, info)
        elapsed = elapsed_before + time.time() - t_start
        meta = {"step": step, "nimg": step * config.batch, "config": config.to_dict(), "n_conditions": C,
                "data": fingerprint, "world_size": dist.world, "batch_rng": batch_rng.bit_generator.state,
                "optimizer_param_groups": groups, "scaler": scaler.state_dict() if use_scaler else None,
                "elapsed_s": elapsed, "cedm_version": __version__, "rank_param_digests": digests}
        if online is not None:
            meta["self_guidance"] = online.state_meta()
        save_checkpoint(train_dir, step, tensors, meta, config.keep_checkpoints)
        training = {"kimg_done": step * config.batch / 1000, "kimg_total": config.kimg, "steps": step,
                    "complete": done, "config": config.to_dict(), "world_size": dist.world,
                    "device": dist.device.type, "elapsed_s": round(elapsed, 1), "cedm_version": __version__,
                    "updated": time.time()}
        save_model(out_dir, ema, net, {**info, "training": training})

    def sample_grid():
        if dist.main:
            _save_sample_grid(ema, train_dir / f"samples-{step:09d}.png", config.n_sample)

    bar = None
    if dist.main and show_progress and progress is None:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", desc="train", dynamic_ncols=True)
    t_start, t_log, step_log, start_step = time.time(), time.time(), step, step
    loss_sum = torch.zeros((), device=dist.device)
    loss_n = 0
    if dist.main:
        train_dir.mkdir(parents=True, exist_ok=True)
        if spatial is not None:
            from cedm.model.spatial import save_centroids
            save_centroids(out_dir, spatial)
        io.write_json(train_dir / "config.json", {"config": config.to_dict(), "n_conditions": C, "q": q,
                                                  "world_size": dist.world})
    net_params = list(net.parameters())
    ema_params = list(ema.parameters())
    try:
        while step < stop_step:
            nimg = step * config.batch
            lr = config.lr * (min(nimg / (config.lr_rampup_kimg * 1000), 1.0) if config.lr_rampup_kimg > 0 else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            # The global batch, drawn identically on every rank; this rank takes its slice.
            rows = batch_rng.integers(0, len(images), size=config.batch)
            flips = (batch_rng.random(config.batch) < 0.5) if config.xflip else np.zeros(config.batch, bool)
            drop = batch_rng.random(config.batch) < config.p_uncond
            sl = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            x = load_batch(images, rows[sl], flips[sl], config.resolution, dist.device)
            aug = None
            if pipe is not None:  # seeded by (seed, step, rank): resumes exactly with no state to keep
                aug_gen = torch.Generator(device=dist.device).manual_seed(
                    (config.seed * 1_000_003 + step) * 2003 + dist.rank + 17)
                x, aug = pipe(x, generator=aug_gen)
            lab = np.full(per_rank, C, dtype=np.int64) if labels is None else labels[rows[sl]].copy()
            lab[(lab < 0) | drop[sl]] = C  # no label, or dropped for guidance -> the "no condition" index
            maps = None
            if spatial is not None:  # layout maps, dropped together with the label (and each alone)
                map_off, class_off = spatial.draw_drops(batch_rng, config.batch)
                lab[class_off[sl]] = C
                maps = spatial.maps(rows[sl], flips[sl], config.resolution, dist.device, ~(drop | map_off)[sl])
            lab = torch.from_numpy(lab).to(dist.device)
            cond_ctx = contextlib.nullcontext  # a factory: entered once per micro-batch
            if online is not None:  # self:K: this batch's prototypes (after the warm-up) and the SK update
                own = online.step(ema, x, rows[sl], nimg, total_steps * config.batch)
                if own is not None:
                    lab = torch.where(torch.from_numpy(drop[sl]).to(dist.device), lab, own)
                cond_ctx = online.condition_context(net, nimg, total_steps * config.batch)  # zero c in warm-up
            torch.manual_seed((config.seed * 1_000_003 + step) * 1009 + dist.rank)  # network dropout

            opt.zero_grad(set_to_none=True)
            n_micro = per_rank // micro
            for i in range(n_micro):
                sync = contextlib.nullcontext() if (i == n_micro - 1 or dist.world == 1) else ddp.no_sync()
                with sync, cond_ctx(), torch.autocast(dist.device.type, dtype=amp_dtype,
                                                      enabled=amp_dtype is not None):
                    loss = edm_loss(ddp, x[i * micro:(i + 1) * micro], lab[i * micro:(i + 1) * micro], noise_gen,
                                    augment_labels=None if aug is None else aug[i * micro:(i + 1) * micro],
                                    spatial=None if maps is None else maps[i * micro:(i + 1) * micro])
                    scaler.scale(loss.sum() / per_rank).backward()
                loss_sum += loss.detach().sum()
                loss_n += len(loss)
            scaler.unscale_(opt)
            for p in net_params:  # EDM: never let one bad batch poison the weights
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net_params, config.grad_clip)
            scaler.step(opt)
            scaler.update()

            # EMA with a half-life in images (ramped up early in training, as in EDM).
            ema_nimg = config.ema_halflife_kimg * 1000
            if config.ema_rampup_ratio:
                ema_nimg = min(ema_nimg, nimg * config.ema_rampup_ratio)
            beta = 0.5 ** (config.batch / max(ema_nimg, 1e-8))
            with torch.no_grad():
                for pe, pn in zip(ema_params, net_params):
                    pe.copy_(pn.detach().lerp(pe, beta))
            step += 1

            if step % config.log_every == 0 or step == stop_step:
                stats = torch.stack([loss_sum, torch.tensor(float(loss_n), device=dist.device)])
                if dist.world > 1:
                    torch.distributed.all_reduce(stats)
                now = time.time()
                ips = (step - step_log) * config.batch / max(now - t_log, 1e-9)
                mean_loss = float(stats[0] / max(stats[1], 1))
                t_log, step_log, loss_n = now, step, 0
                loss_sum.zero_()
                if dist.main:
                    line = {"step": step, "kimg": step * config.batch / 1000, "loss": mean_loss, "img_per_s": ips,
                            "lr": lr, "time": now, **(online.last if online is not None else {})}
                    with open(train_dir / "log.jsonl", "a") as f:
                        f.write(json.dumps(line) + "\n")
                    desc = f"loss {mean_loss:.4f}  {ips:.1f} img/s"
                    if bar is not None:
                        bar.set_postfix_str(desc, refresh=False)
                    if progress is not None:
                        progress(step * config.batch, total_steps * config.batch, desc)
            if bar is not None:
                bar.update(1)
            saved = step % ckpt_every == 0 or step == stop_step
            if saved:
                write_state(done=step == total_steps)
            if should_stop is not None and step < stop_step and should_stop():
                if not saved:
                    write_state(done=False)  # stopped by the caller: checkpoint here, so a resume loses nothing
                break
            if sample_every and step % sample_every == 0 and step != total_steps:
                sample_grid()
        if step == total_steps and step > start_step and sample_every != 0:  # None: at the end only; 0: never
            sample_grid()
    finally:
        if bar is not None:
            bar.close()
    dist.barrier()
    return out_dir


def init_weights(net: CEDM, model_dir) -> dict:
    """Start ``net`` from a trained model's (EMA) weights. The networks must have the same architecture
    (preset and resolution); their conditions may differ. Every weight is carried except the class embedding:
    its "no condition" row is carried, and each condition row starts as that row (so a C-EDM made from an
    unconditional model starts out as that model for every cluster); when the condition counts match, the
    whole embedding is carried. A spatial model may start from an image-level one: the input convolution's
    weights of the map channels start at zero, so it starts out as that model whatever the map. Returns
    {"carried": n, "class_rows": "all" | "uncond"[, "zero_input_channels": k]}."""
    from cedm.model.edm import load_model

    src = load_model(model_dir, device="cpu", ema=True)
    def arch(config) -> dict:  # what shapes the network (lists and tuples alike)
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in dict(config).items()
                if not k.startswith("_") and k not in ("num_class_embeds", "dropout")}

    a, b = arch(src.unet.config), arch(net.unet.config)
    extra_in = int(b.get("in_channels", 3)) - int(a.get("in_channels", 3))
    if extra_in > 0 and {**a, "in_channels": b["in_channels"]} == b:
        a["in_channels"] = b["in_channels"]  # a spatial model from an image-level one: its map channels start at 0
    else:
        extra_in = 0
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise CedmError(f"cannot start from {model_dir}: its network differs from this one ({', '.join(diff)}); "
                        f"use its preset ({src.info.get('preset')}) and resolution ({src.resolution})")
    state = src.unet.state_dict()
    own = net.unet.state_dict()
    key = "class_embedding.weight"
    rows = "all"
    if state[key].shape != own[key].shape:
        emb = state[key][src.uncond_index].to(own[key].dtype)
        state[key] = emb.expand_as(own[key]).clone()
        rows = "uncond"
    if extra_in:
        w = torch.zeros_like(own["conv_in.weight"])
        w[:, :w.shape[1] - extra_in] = state["conv_in.weight"]
        state["conv_in.weight"] = w
    net.unet.load_state_dict(state)
    return {"carried": len(state), "class_rows": rows, **({"zero_input_channels": extra_in} if extra_in else {})}


_SPEED: dict = {}


def measure_images_per_s(preset: str, resolution: int, n_conditions: int = 0, batch: int = 32, steps: int = 2,
                         device=None) -> float:
    """Training speed (images/s) of a preset on this machine, measured on random data over ``steps`` steps
    after one warm-up step (seconds on a CPU); remembered per (preset, resolution, batch, device)."""
    from cedm.device import resolve_device

    dev = resolve_device(device)
    key = (preset, int(resolution), int(batch), str(dev))
    if key not in _SPEED:
        torch.manual_seed(0)
        net = CEDM.from_preset(preset, int(resolution), int(n_conditions)).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.rand(int(batch), 3, int(resolution), int(resolution), device=dev) * 2 - 1
        lab = torch.full((int(batch),), net.uncond_index, dtype=torch.long, device=dev)
        t0 = 0.0
        for i in range(steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            edm_loss(net, x, lab).mean().backward()
            opt.step()
        _SPEED[key] = steps * int(batch) / max(time.perf_counter() - t0, 1e-9)
    return _SPEED[key]


def resolve_init(ws, name: str | None) -> str | None:
    """``--init MODEL``: a model folder, or a model name of cedm.model.registry (shipped or in ``ws``)."""
    if not name:
        return None
    if (Path(name) / "cedm.json").is_file():
        return str(Path(name))
    from cedm.model.registry import find_model, list_models

    return str(find_model(list_models(ws), name).path)


def _precision(name: str, device: torch.device):
    """(autocast dtype or None, use GradScaler)."""
    if device.type != "cuda" or name == "fp32":
        if name in ("bf16", "fp16") and device.type != "cuda":
            raise CedmError(f"precision {name} needs a CUDA device; use fp32 (or auto) on {device.type}")
        return None, False
    if name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if name == "bf16" else (torch.float16, True)


def _gather_generator_states(gen: torch.Generator, dist: Dist) -> list[torch.Tensor]:
    state = gen.get_state()
    if dist.world == 1:
        return [state]
    t = state.to(dist.device)
    out = [torch.empty_like(t) for _ in range(dist.world)]
    torch.distributed.all_gather(out, t)
    return [o.cpu() for o in out]


def param_digest(module: torch.nn.Module) -> str:
    """sha256 over all parameters' bytes, in order (equal digests = bitwise-equal weights)."""
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _gather_param_digests(net: torch.nn.Module, dist: Dist) -> list[str]:
    """Every rank hashes its own replica; rank 0 receives all digests."""
    mine = param_digest(net)
    if dist.world == 1:
        return [mine]
    t = torch.frombuffer(bytearray(bytes.fromhex(mine)), dtype=torch.uint8).to(dist.device)
    out = [torch.empty_like(t) for _ in range(dist.world)]
    torch.distributed.all_gather(out, t)
    return [bytes(o.cpu().tolist()).hex() for o in out]


def _check_resume(meta: dict, config: TrainConfig, C: int, fingerprint: dict, world: int) -> None:
    old = meta["config"]
    fields = TrainConfig.__dataclass_fields__  # a field a checkpoint predates had its default then
    changed = [f"{k} ({old.get(k, fields[k].default)} -> {getattr(config, k)})" for k in TrainConfig.FIXED
               if k != "lr_rampup_kimg" and old.get(k, fields[k].default) != getattr(config, k)]
    if meta.get("n_conditions") != C:
        changed.append(f"n_conditions ({meta.get('n_conditions')} -> {C})")
    if meta.get("data") != fingerprint:
        changed.append("training images or labels")
    if int(meta.get("world_size", 1)) != world:
        changed.append(f"number of processes ({meta.get('world_size')} -> {world})")
    if changed:
        raise CedmError("cannot resume: the checkpoint was made with different settings: " + ", ".join(changed)
                        + "; start a new model (another output name) instead")


def _save_sample_grid(ema: CEDM, path: Path, n: int) -> None:
    from cedm.sampling.generate import generate, image_grid

    if n <= 0:
        return
    was_training = ema.training
    guidance = 1.0 if ema.n_conditions else 0.0
    images, _ = generate(ema, n, guidance=guidance, steps=12, sampler="dpmpp2m", seed=0)
    ema.train(was_training)
    from PIL import Image

    with io.atomic_file(path) as tmp:
        Image.fromarray(image_grid(images)).save(tmp, format="PNG")


# --- workspace front end ------------------------------------------------------------------------
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def resolve_condition(ws, spec: str, backbone: str | None = None):
    """(labels or None, n_conditions, q, description) for a condition spec.

    ``none``: an unconditional model. Anything else (``kmeans:C``, ``temi:C``, ``labels:NAME``) is a workspace
    labeling resolved by cedm.clusters.labelings: labels renumbered 0..C-1, -1 = no condition.
    """
    spec = (spec or "none").strip()
    if spec == "none":
        return None, 0, [], {"spec": "none", "source": "none"}
    from cedm.clusters import labelings

    lab = labelings.resolve(ws, spec, backbone=backbone)
    labels = np.asarray(lab.labels, dtype=np.int64)
    q = [float(v) for v in np.asarray(lab.q, dtype=np.float64)]
    C = len(q)
    desc = {"spec": spec, "source": spec.split(":", 1)[0]}
    if spec.split(":", 1)[0] in labelings.METHODS:  # clusters depend on the features they were made from
        desc["backbone"] = labelings.resolve_backbone(backbone)
    for key in ("class_names", "original_ids", "artifact", "params"):
        v = getattr(lab, key, None)
        if v is not None:
            desc[key] = v if not isinstance(v, Path) else str(v)
    meta = getattr(lab, "meta", None) or {}
    if "params" not in desc and meta.get("params"):  # the clustering's cache key: sample confidence finds it
        desc["params"] = meta["params"]
    return labels, C, q, desc


def default_model_name(spec: str, preset: str) -> str:
    return _SAFE_NAME.sub("-", f"{spec}-{preset}").strip("-.") or "model"


def train_workspace(ws, condition_spec: str = "none", out_dir=None, name: str | None = None, preset: str = "small",
                    config: TrainConfig | None = None, resume: bool = False, progress: ProgressFn | None = None,
                    device=None, max_steps: int | None = None, show_progress: bool = True,
                    backbone: str | None = None, should_stop: Callable[[], bool] | None = None,
                    spatial: str | None = None, spatial_options: dict | None = None,
                    self_guidance: dict | None = None, **overrides) -> Path:
    """Train on a workspace's images conditioned on ``condition_spec`` (``none``, ``kmeans:C``, ``temi:C``,
    ``labels:NAME``, or ``self:K``: online self-labelling, settings in ``self_guidance``, a dict of
    SelfGuidanceConfig fields). The model goes to ``out_dir``, default ``<workspace>/models/<name>``
    (name default ``<spec>-<preset>``). ``overrides`` set TrainConfig fields (kimg=..., batch=...).
    ``spatial``: ``box`` or ``segments:S`` adds the workspace's self-annotations as a layout condition
    (cedm.model.spatial; ``spatial_options``: p_drop_map, p_drop_class, weights, pretrained)."""
    from cedm.model.self_guidance import P_DROP, SelfGuidanceConfig, parse_spec
    k_self = parse_spec(condition_spec)
    if k_self is not None and config is None and "p_uncond" not in overrides:
        overrides["p_uncond"] = P_DROP  # seed 002's condition dropout
    config = dataclasses.replace(config or TrainConfig(), preset=preset, **overrides)
    config.init = resolve_init(ws, config.init)
    if out_dir is None:
        name = name or default_model_name(condition_spec + (f"-{spatial}" if spatial else ""), config.preset)
        if _SAFE_NAME.search(name) or name.startswith("."):
            raise CedmError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")
        out_dir = ws.derived_dir("models") / name
    dist = setup_distributed(device)
    # Rank 0 resolves (and may compute and cache) the labeling first; the others then read the cache.
    if not dist.main:
        dist.barrier()
    if k_self is None:
        labels, C, q, desc = resolve_condition(ws, condition_spec, backbone=backbone)
    else:  # self:K: the model labels its own images while it trains (seed 002, online)
        self_guidance = SelfGuidanceConfig(k=k_self, **(self_guidance or {})).check()
        labels, C, q, desc = None, k_self, None, {"spec": f"self:{k_self}", "source": "self"}
    layouts = None
    if spatial:
        from cedm.model.spatial import workspace_spatial
        opts = dict(spatial_options or {})
        layouts = workspace_spatial(ws, spatial, opts.pop("backbone", None) or backbone, device=device, **opts)
    if dist.main:
        dist.barrier()
    provenance = {"workspace": ws.name, "workspace_hash": ws.content_hash, "n_images": ws.n,
                  "workspace_resolution": ws.resolution}
    return train(ws.images, labels, C, out_dir, config, q=q if C else None, progress=progress, resume=resume,
                 condition=desc, provenance=provenance, device=device, max_steps=max_steps,
                 show_progress=show_progress, should_stop=should_stop, spatial=layouts,
                 self_guidance=self_guidance if k_self is not None else None)

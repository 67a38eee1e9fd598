"""C-EDM: EDM preconditioning (Karras et al. 2022, table 1) around a class-conditioned diffusers UNet.

    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)

    c_skip = sd^2 / (sigma^2 + sd^2)       c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)      c_noise = ln(sigma) / 4          (sd = sigma_data = 0.5)

The condition c is a cluster id 0..C-1 fed through the UNet's learned class embedding, which has C + 1
entries: index C is the learned "no condition" that classifier-free guidance needs (it is trained by label
dropout). C = 0 gives a plain unconditional EDM whose only class is that one.

A model is saved as a folder, never as a pickle::

    <model>/cedm.json        EDM settings, resolution, conditions and q(c), training provenance
    <model>/unet_ema/        diffusers save_pretrained (config.json + safetensors): EMA weights, for sampling
    <model>/unet/            the raw training weights
"""
from __future__ import annotations

import copy
import json
import math
import threading
from pathlib import Path

import torch
from torch import nn

from cedm import io
from cedm.errors import CedmError
from cedm.model.info import MODEL_FORMAT, MODEL_FORMAT_VERSION, SIGMA_DATA, ModelInfo

P_MEAN, P_STD = -1.2, 1.2  # training noise levels: ln(sigma) ~ N(P_mean, P_std^2)
PRESETS = ("tiny", "small", "paper")


# --- network presets ----------------------------------------------------------------------------
def paper_dropout(resolution: int) -> float:
    """The official configurations' dropout: 0.13 up to 32x32 (CIFAR-10/100), 0.05 from 64x64 (FFHQ/AFHQ-64)."""
    return 0.13 if int(resolution) <= 32 else 0.05


def default_sampler_steps(resolution: int) -> int:
    """The official configurations' Heun steps: 18 up to 32x32 (35 evaluations), 40 from 64x64 (79)."""
    return 18 if int(resolution) <= 32 else 40


def steps_for(model_dir, steps: int | None = None) -> int:
    """``steps`` when given, else the official configurations' for the model's resolution."""
    return int(steps) if steps is not None else default_sampler_steps(int(read_model_info(model_dir)["resolution"]))


def unet_config(preset: str, resolution: int, n_conditions: int, dropout: float | None = None) -> dict:
    """The diffusers ``UNet2DModel`` config for a named size preset.

    Levels halve the resolution down to 8x8 (32 -> 32,16,8; 64 -> 64,32,16,8).
    - ``paper``: close to EDM's DDPM++ CIFAR network (128 x [2,2,2] channels, 4 res-blocks per level,
      attention at 16x16, dropout 0.13, about 56M parameters at 32x32); at 64x64, 128 x [1,2,2,2] and
      dropout 0.05 as the official FFHQ-64 configuration (C-EDM table 7).
    - ``small``: the CPU demo network: 32 channels at full resolution, 64 below, 1 res-block per level,
      attention only at 8x8 (1.2M parameters at 32x32; measured in bench/edm_speed.py: (64,128,128) was
      2.7x slower to train on a 2-core CPU).
    - ``tiny``: for tests and smoke runs.
    """
    if preset not in PRESETS:
        raise CedmError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    resolution = int(resolution)
    levels = int(round(math.log2(resolution / 8))) + 1 if resolution >= 8 else 0
    if resolution < 8 or 8 * 2 ** (levels - 1) != resolution:
        raise CedmError(f"model resolution must be 8 times a power of two (8, 16, 32, 64, 128...), got {resolution}")
    res_at = [resolution // 2 ** i for i in range(levels)]
    if preset == "paper":
        mult = [2] * levels if levels <= 3 else [1] * (levels - 3) + [2, 2, 2]
        base, channels = 128, [128 * m for m in mult]
        layers, groups, drop = 4, 32, paper_dropout(resolution)
        attn = [r == 16 for r in res_at]
    elif preset == "small":
        base, channels = 32, [32] + [64] * (levels - 1)
        layers, groups, drop = 1, 32, 0.0
        attn = [r == 8 for r in res_at]
    else:  # tiny
        base, channels = 32, [32] * levels
        layers, groups, drop = 1, 8, 0.0
        attn = [r == 8 for r in res_at]
    if not any(attn):
        attn[-1] = True
    return dict(
        sample_size=resolution, in_channels=3, out_channels=3,
        block_out_channels=tuple(channels), layers_per_block=layers,
        time_embedding_dim=4 * base,  # EDM: 4 x model channels (diffusers would use 4 x first level)
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None,  # one head per attention layer, as in DDPM++
        norm_num_groups=groups, resnet_time_scale_shift="scale_shift",  # EDM's adaptive scale/shift
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        dropout=float(drop if dropout is None else dropout),
        num_class_embeds=int(n_conditions) + 1,  # + the learned "no condition" entry
    )


_IMPORT_LOCK = threading.Lock()


def unet_class():
    """diffusers' UNet2DModel, imported under a lock: diffusers resolves its names lazily, and two threads doing
    that first import at once (the app's first-batch thread and a request) can see a half-made module."""
    with _IMPORT_LOCK:
        from diffusers import UNet2DModel
    return UNet2DModel


# diffusers' from_pretrained switches torch's weight initialisers off process-wide while it loads
# (no_init_weights); a network built in another thread at that moment keeps uninitialised weights. Building and
# loading networks therefore take turns.
_BUILD_LOCK = threading.RLock()


def _new_unet(config: dict):
    cls = unet_class()
    with _BUILD_LOCK:
        return cls(**config)


AUGMENT_FILE = "augment_map.safetensors"
AUGMENT_KEY = "map_augment.weight"  # in training checkpoints, next to the UNet's own keys


def _add_extra_embedding(module, inputs, output):
    """Forward hook on the UNet's class embedding: adds the pending augmentation embedding (if any), so it
    reaches every res-block exactly as the time and class embeddings do (diffusers sums them)."""
    extra = getattr(module, "_cedm_extra", None)
    return output if extra is None else output + extra.to(output.dtype)


# --- the preconditioned denoiser ----------------------------------------------------------------
class CEDM(nn.Module):
    """D(x; sigma, c): the EDM-preconditioned denoiser. ``info`` (cedm.model.info.ModelInfo) is saved with it.

    ``augment_dim`` > 0 adds EDM's augmentation conditioning (cedm.model.augment): a bias-free linear map of
    the augmentation vector added to the time + class embedding; a zero (or absent) vector leaves the
    network exactly as without it, which is what sampling uses."""

    def __init__(self, unet, n_conditions: int, sigma_data: float = SIGMA_DATA, info=None,
                 augment_dim: int = 0):
        super().__init__()
        self.unet = unet
        self.n_conditions = int(n_conditions)
        self.sigma_data = float(sigma_data)
        self.info = ModelInfo.from_dict({**dict(info or {}), "n_conditions": self.n_conditions,
                                         "sigma_data": self.sigma_data,
                                         "resolution": int(unet.config.sample_size)})
        self.spatial_channels = int(unet.config.in_channels) - 3  # > 0: a spatial map joins x (model/spatial.py)
        if unet.config.num_class_embeds != self.n_conditions + 1:
            raise CedmError(f"network has {unet.config.num_class_embeds} class entries, expected "
                            f"{self.n_conditions} conditions + 1")
        self.augment_dim = int(augment_dim)
        self.map_augment = None
        if self.augment_dim > 0:
            emb_dim = unet.class_embedding.embedding_dim
            self.map_augment = nn.Linear(self.augment_dim, emb_dim, bias=False)
            unet.class_embedding.register_forward_hook(_add_extra_embedding)

    @classmethod
    def from_preset(cls, preset: str, resolution: int, n_conditions: int, dropout: float | None = None,
                    info: dict | None = None, augment_dim: int = 0, spatial_channels: int = 0) -> "CEDM":
        info = {"preset": preset, **(info or {})}
        config = unet_config(preset, resolution, n_conditions, dropout)
        config["in_channels"] += int(spatial_channels)
        return cls(_new_unet(config), n_conditions, info=info, augment_dim=augment_dim)

    def checkpoint_state(self) -> dict:
        """The trained tensors: the UNet's state dict, plus the augmentation map when there is one."""
        sd = dict(self.unet.state_dict())
        if self.map_augment is not None:
            sd[AUGMENT_KEY] = self.map_augment.weight
        return sd

    def load_checkpoint_state(self, sd: dict) -> None:
        sd = dict(sd)
        aug = sd.pop(AUGMENT_KEY, None)
        self.unet.load_state_dict(sd)
        if self.map_augment is not None:
            if aug is None:
                raise CedmError("the checkpoint has no augmentation map but the model needs one")
            self.map_augment.load_state_dict({"weight": aug})

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def uncond_index(self) -> int:
        """The class index of the learned "no condition"."""
        return self.n_conditions

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None, spatial: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate of x (B,3,R,R) at noise level sigma (scalar or (B,)); labels (B,) in 0..C,
        None = unconditional (index C); ``augment_labels`` (B, augment_dim) only in training (None = zero).
        ``spatial`` (B, spatial_channels, R, R): the layout map of a spatial model, concatenated to the network
        input (None: the all-zero "no map")."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.uncond_index, dtype=torch.long, device=x.device)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sigma ** 2 + sd ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        dtype = self.unet.dtype
        extra = None
        if augment_labels is not None and self.map_augment is not None:
            if augment_labels.shape != (x.shape[0], self.augment_dim):
                raise CedmError(f"augmentation vectors must have shape ({x.shape[0]}, {self.augment_dim}), "
                                f"got {tuple(augment_labels.shape)}")
            extra = self.map_augment(augment_labels.to(self.map_augment.weight.dtype))
        inp = c_in * x
        if self.spatial_channels:
            from cedm.model.spatial import network_input
            inp = network_input(inp, spatial, self.spatial_channels)
        emb = self.unet.class_embedding
        emb._cedm_extra = extra
        try:
            F_x = self.unet(inp.to(dtype), c_noise.to(dtype), class_labels=class_labels.long(),
                            return_dict=False)[0]
        finally:
            emb._cedm_extra = None
        return c_skip * x + c_out * F_x.to(torch.float32)


def edm_loss(model: CEDM, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
             P_mean: float = P_MEAN, P_std: float = P_STD, augment_labels: torch.Tensor | None = None,
             spatial: torch.Tensor | None = None) -> torch.Tensor:
    """EDM training loss: sigma log-normal, weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2.

    ``images`` are in [-1, 1] (already augmented, with their ``augment_labels``, when augmentation is on);
    ``labels`` already carry the dropout to the "no condition" index.
    Returns the per-image loss (B,), averaged over pixels.
    """
    b = images.shape[0]
    rnd = torch.randn((b, 1, 1, 1), generator=generator, device=images.device)
    sigma = (rnd * P_std + P_mean).exp()
    sd = model.sigma_data if not hasattr(model, "module") else model.module.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    noise = torch.randn(images.shape, generator=generator, device=images.device) * sigma
    extra = {} if spatial is None else {"spatial": spatial}  # layout maps of a spatial model (model/spatial.py)
    if augment_labels is not None:
        extra["augment_labels"] = augment_labels
    denoised = model(images + noise, sigma.flatten(), labels, **extra)
    return (weight * (denoised - images) ** 2).mean(dim=(1, 2, 3))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- save / load --------------------------------------------------------------------------------
def save_model(out_dir, ema: CEDM, raw: CEDM | None = None, info: dict | None = None) -> Path:
    """Write ``cedm.json`` + ``unet_ema/`` (+ ``unet/``) into ``out_dir``; each part appears atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub, m in (("unet_ema", ema), ("unet", raw)):
        if m is None:
            continue
        with io.atomic_dir(out_dir / sub) as tmp:
            m.unet.save_pretrained(tmp, safe_serialization=True)
            if m.map_augment is not None:
                from safetensors.torch import save_file
                save_file({"weight": m.map_augment.weight.detach().cpu().contiguous()}, str(tmp / AUGMENT_FILE))
    meta = ModelInfo.from_dict({**dict(ema.info), **dict(info or {})}).updated(
        format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION, sigma_data=ema.sigma_data,
        resolution=ema.resolution, n_conditions=ema.n_conditions,
        **({"augment_dim": ema.augment_dim} if ema.augment_dim else {}))
    io.write_json(out_dir / "cedm.json", meta.to_dict())
    ema.info = meta
    return out_dir


def read_model_info(model_dir) -> ModelInfo:
    p = Path(model_dir) / "cedm.json"
    if not p.is_file():
        raise CedmError(f"{model_dir} is not a cedm model folder (no cedm.json)")
    try:
        info = io.read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CedmError(f"{p} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        fmt = info.get("format") if isinstance(info, dict) else None
        raise CedmError(f"{p} is not a cedm model description (format {fmt!r})")
    try:
        return ModelInfo.from_dict(info)
    except (TypeError, ValueError) as e:
        raise CedmError(f"{p} is not a valid cedm model description: {e}") from None


def load_model(model_dir, device="cpu", ema: bool = True) -> CEDM:
    """Load a saved model folder (EMA weights by default) in eval mode on ``device``."""
    UNet2DModel = unet_class()
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    sub = model_dir / ("unet_ema" if ema else "unet")
    if not (sub / "config.json").is_file():
        raise CedmError(f"{model_dir} has no {sub.name}/ weights")
    try:
        with _BUILD_LOCK:
            unet = UNet2DModel.from_pretrained(sub, use_safetensors=True, local_files_only=True,
                                               low_cpu_mem_usage=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise CedmError(f"cannot load the network in {sub}: {e}") from e
    augment_dim = int(info.get("augment_dim", 0))  # models saved before augmentation existed: 0
    model = CEDM(unet, info["n_conditions"], info.get("sigma_data", SIGMA_DATA), info=info, augment_dim=augment_dim)
    if augment_dim:
        from safetensors.torch import load_file
        try:
            w = load_file(str(sub / AUGMENT_FILE))["weight"]
            model.map_augment.load_state_dict({"weight": w})
        except (OSError, KeyError, RuntimeError) as e:
            raise CedmError(f"cannot load the augmentation conditioning in {sub}: {e}") from e
    return model.to(device).eval().requires_grad_(False)


def copy_model(model: CEDM) -> CEDM:
    return copy.deepcopy(model)

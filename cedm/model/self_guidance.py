"""Online self-guidance (seed 002, sec. 4.2): a C-EDM that labels its own training images while it trains.

``cedm train WS --condition self:K``. Every step, the EMA network's pooled activations at ``block``,
taken at a noise level drawn from a narrow band around ``sigma`` (the paper's time masking) and with a
*zero* class embedding (a forward hook replaces the embedding by zeros: distinct from the learned null,
index K), go through a stop-gradient into a linear head h_phi to ``dim`` dimensions; the L2-normalised
z is scored against K learnable L2-normalised prototypes M. Sinkhorn-Knopp with an equal partition
(cedm.clusters.sinkhorn) turns the scores into targets Q, and

    L_SK = -sum_k Q_k log softmax(z M^T / temperature)_k          (SwAV's form of <P*, -M Z^T>)

trains h_phi and M only (stop-gradient: the UNet never sees L_SK's gradient, so L = L_d + lambda(t) L_SK
splits into two optimisers). lambda(t) = min(nimg / warmup, 1) as in the paper's algorithm 1.
Warm-up (nimg < warmup): the diffusion loss is trained with the zero condition. After it: each image's
condition is the arg-max prototype of its features, dropped to the learned null with ``p_uncond``
(0.15 in the paper). Multi-process training is not supported for this condition.

State (head, prototypes, their Adam state, the feature-noise generator, the last assignment of every
image) goes into the training checkpoint, so resume is bit-exact. At every checkpoint the whole dataset is
assigned with the EMA network (fixed per-image noise at ``sigma``) and saved as ``self_labels.npy`` in the
model folder: the labeling ``self:K@<model>`` (cedm.clusters.labelings), and the model's q(c).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cedm import io
from cedm.clusters.sinkhorn import EPSILON, ITERATIONS, sinkhorn
from cedm.errors import CedmError

LABELS_FILE = "self_labels.npy"
P_DROP = 0.15  # seed 002: the condition is dropped to the learned null with p 0.15


@dataclass
class SelfGuidanceConfig:
    k: int
    block: str = "mid"            # the paper's middle layer (up0 collapsed in short runs: docs/self_guidance.md)
    sigma: float = 0.5            # feature noise level (band centre); the ablation is flat over 0.1-0.5
    sigma_band: float = 1.25      # features at sigma * U(1/band, band) in log space (time masking)
    dim: int = 64                 # head output d
    temperature: float = 0.1
    eps: float = EPSILON
    iters: int = ITERATIONS
    lr: float = 1e-3              # Adam, head and prototypes
    warmup_fraction: float = 0.25  # of the run's images: unconditional (zero condition) warm-up

    def check(self) -> SelfGuidanceConfig:
        if not 2 <= int(self.k) <= 10_000:
            raise CedmError(f"self:K needs 2 <= K <= 10000, got {self.k}")
        if not 0 <= self.warmup_fraction < 1:
            raise CedmError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (self.sigma > 0 and self.sigma_band >= 1):
            raise CedmError("feature sigma must be positive and its band >= 1")
        return self


def parse_spec(spec: str) -> int | None:
    """K of a 'self:K' condition, None for any other spec."""
    method, _, arg = str(spec).partition(":")
    if method != "self":
        return None
    try:
        return int(arg)
    except ValueError:
        raise CedmError(f"bad condition {spec!r}: expected self:K with an integer K") from None


@contextlib.contextmanager
def zero_condition(model):
    """Within the block, ``model``'s class embedding outputs zeros (the zero condition of seed 002)."""
    h = model.unet.class_embedding.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    try:
        yield
    finally:
        h.remove()


class OnlineSelfLabels:
    """The hook the training loop calls; owns h_phi, the prototypes and the assignments."""

    def __init__(self, config: SelfGuidanceConfig, n_images: int, feature_channels: int, seed: int,
                 device: torch.device):
        self.config = config.check()
        self.device = device
        g = torch.Generator().manual_seed(seed * 7919 + 17)
        self.head = torch.nn.Linear(feature_channels, config.dim)
        with torch.no_grad():  # initialised from the seed only (not the global RNG): reproducible
            bound = 1 / math.sqrt(feature_channels)
            self.head.weight.uniform_(-bound, bound, generator=g)
            self.head.bias.uniform_(-bound, bound, generator=g)
        self.head.to(device)
        self.prototypes = torch.nn.Parameter(F.normalize(torch.randn(config.k, config.dim, generator=g), dim=1)
                                             .to(device))
        self.opt = torch.optim.Adam(list(self.head.parameters()) + [self.prototypes], lr=config.lr)
        self.gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 0x5E1F)
        self.assign = np.full(n_images, -1, dtype=np.int64)  # last arg-max of every image seen
        self.last = {}

    # -- every step ------------------------------------------------------------------------------------
    def scores(self, ema, x: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
        from cedm.features.denoiser import pooled_features

        with torch.no_grad():  # stop-gradient: L_SK never reaches the UNet
            v = pooled_features(ema, x, sigma, (self.config.block,), noise,
                                class_labels=torch.zeros(len(x), dtype=torch.long, device=x.device),
                                class_embedding_zero=True)
        z = F.normalize(self.head(v), dim=1)
        return z @ F.normalize(self.prototypes, dim=1).T

    def step(self, ema, x: torch.Tensor, rows: np.ndarray, nimg: int, total_nimg: int) -> torch.Tensor | None:
        """One SK update on this batch; returns the arg-max prototypes (B,), or None during the warm-up."""
        c = self.config
        b = len(x)
        log_band = math.log(c.sigma_band)
        u = torch.rand((b, 1, 1, 1), generator=self.gen, device=x.device) * 2 - 1
        sigma = (math.log(c.sigma) + u * log_band).exp()
        noise = torch.randn(x.shape, generator=self.gen, device=x.device)
        s = self.scores(ema, x, sigma, noise)
        warmup = c.warmup_fraction * total_nimg
        lam = min(nimg / warmup, 1.0) if warmup > 0 else 1.0
        q = sinkhorn(s.detach(), c.eps, c.iters)
        loss = -(q * F.log_softmax(s / c.temperature, dim=1)).sum(1).mean()
        self.opt.zero_grad(set_to_none=True)
        (lam * loss).backward()
        self.opt.step()
        a = s.detach().argmax(1)
        self.assign[rows] = a.cpu().numpy()
        self.last = {"sk_loss": float(loss.detach()), "sk_lambda": lam,
                     "batch_clusters": len(torch.unique(a))}
        return None if nimg < warmup else a

    def condition_context(self, net, nimg: int, total_nimg: int):
        """A context factory: the zero condition for the diffusion loss during the warm-up, nothing after."""
        in_warmup = nimg < self.config.warmup_fraction * total_nimg
        return (lambda: zero_condition(net)) if in_warmup else contextlib.nullcontext

    # -- checkpoints --------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"self.head.{k}": v for k, v in self.head.state_dict().items()}
        t["self.prototypes"] = self.prototypes.detach()
        t["self.rng"] = self.gen.get_state()
        t["self.assign"] = torch.from_numpy(self.assign.copy())
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                t[f"self.optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        return t

    def state_meta(self) -> dict:
        return {"config": asdict(self.config), "optimizer_param_groups": self.opt.state_dict()["param_groups"]}

    def load_state(self, tensors: dict, meta: dict) -> None:
        if meta.get("config") != asdict(self.config):
            raise CedmError("cannot resume: the checkpoint's self-guidance settings differ "
                            f"({meta.get('config')} vs {asdict(self.config)})")
        self.head.load_state_dict({k[len("self.head."):]: v for k, v in tensors.items()
                                   if k.startswith("self.head.")})
        with torch.no_grad():
            self.prototypes.copy_(tensors["self.prototypes"])
        self.gen.set_state(tensors["self.rng"].to(torch.uint8).cpu())
        self.assign = tensors["self.assign"].numpy().astype(np.int64).copy()
        state: dict = {}
        for name, v in tensors.items():
            if name.startswith("self.optim."):
                _, _, pid, k = name.split(".", 3)
                state.setdefault(int(pid), {})[k] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})

    @torch.no_grad()
    def assign_all(self, ema, images: np.ndarray, resolution: int, batch: int = 256) -> np.ndarray:
        """Every image's arg-max prototype under the EMA network (per-image fixed noise at ``sigma``)."""
        from cedm.features.denoiser import image_noise
        from cedm.model.train import load_batch

        out = []
        for s in range(0, len(images), batch):
            rows = np.arange(s, min(s + batch, len(images)))
            x = load_batch(images, rows, np.zeros(len(rows), bool), resolution, self.device)
            out.append(self.scores(ema, x, self.config.sigma, image_noise(x)).argmax(1).cpu().numpy())
        return np.concatenate(out).astype(np.int64)

    def on_checkpoint(self, ema, images, resolution: int, out_dir: Path, info: dict) -> None:
        """Assign the whole dataset, save it next to the model, and update the model's q(c)."""
        labels = self.assign_all(ema, images, resolution)
        out_dir.mkdir(parents=True, exist_ok=True)
        io.save_npy(out_dir / LABELS_FILE, labels)
        counts = np.bincount(labels, minlength=self.config.k).astype(np.float64)
        used = int((counts > 0).sum())
        info["condition"]["q"] = (counts / counts.sum()).tolist()
        info["condition"]["utilization"] = {"used": used, "k": self.config.k, "r": used / self.config.k}
        info["condition"]["self_guidance"] = asdict(self.config)


def feature_channels(preset: str, resolution: int, block: str) -> int:
    from cedm.features.denoiser import block_channels
    from cedm.model.edm import unet_config
    return block_channels(unet_config(preset, resolution, 0), block)

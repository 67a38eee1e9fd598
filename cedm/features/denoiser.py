"""Denoiser features: a trained cedm model's own UNet activations as an image backbone (seed 002, sec. 4.1).

A backbone name ``denoiser:MODEL[,sigma=S][,block=B]`` (one family entry in the backbone registry) gives,
for each image x in [-1, 1] at the model's resolution, the globally average-pooled activations of the
EMA UNet at ``x + sigma * n``, under the model's learned "no condition" (index C; an unconditional model's
only class). ``B`` is ``mid``, ``downI`` or ``upI`` (I = 0 is the outermost level), or several joined by
``+`` (each block's pooled vector is L2-normalised, then they are concatenated, so blocks weigh equally).

Determinism: the noise n of an image comes from a generator seeded with (NOISE_SEED, crc32 of the image's
quantised pixels), so a row's features do not depend on the batch it is in, its position, or the device's
batching; the same image always gets the same noise. The network stops after the last block asked for.

MODEL is a name from the model registry: a shipped model (``demo-uncond``) or ``<workspace>/<model>``: the
workspace being worked on when it is that one (``backbones.workspace_scope``: any home, an app visitor's area),
else the one of that name in the default home ($CEDM_HOME, which ``--home`` sets for a command). The cache
key holds the canonical name (model, sigma, block) and the sha256 of the EMA weights, so a retrained model
never reuses stale features.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cedm.errors import CedmError
from cedm.features.backbones import for_workspace, scoped_workspace

PREFIX = "denoiser"
DEFAULT_SIGMA = 0.1  # docs/self_guidance.md: the best of the demo ablation (with block up0)
DEFAULT_BLOCK = "up0"
NOISE_SEED = 20250217
_BLOCK_RE = re.compile(r"^(mid|down\d+|up\d+)$")


# --- names ---------------------------------------------------------------------------------------
def parse_name(name: str) -> tuple[str, float, tuple[str, ...]]:
    """'denoiser:demo-uncond,sigma=0.5,block=mid+up0' -> ('demo-uncond', 0.5, ('mid', 'up0'))."""
    prefix, _, rest = str(name).partition(":")
    if prefix != PREFIX or not rest:
        raise CedmError(f"bad denoiser backbone {name!r}: expected denoiser:MODEL[,sigma=S][,block=B]")
    model, *opts = rest.split(",")
    sigma, blocks = DEFAULT_SIGMA, (DEFAULT_BLOCK,)
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "sigma":
            try:
                sigma = float(value)
            except ValueError:
                raise CedmError(f"bad sigma {value!r} in {name!r}: expected a number") from None
            if not (np.isfinite(sigma) and sigma > 0):
                raise CedmError(f"sigma must be a positive number, got {value!r} in {name!r}")
        elif key == "block":
            blocks = tuple(b.strip() for b in value.split("+"))
            bad = [b for b in blocks if not _BLOCK_RE.match(b)]
            if bad or not blocks:
                raise CedmError(f"bad block {bad[0] if bad else value!r} in {name!r}: use mid, downI or upI "
                                "(several joined by +)")
        else:
            raise CedmError(f"unknown option {key!r} in {name!r}: use sigma=S and block=B")
    if not model.strip():
        raise CedmError(f"bad denoiser backbone {name!r}: no model name")
    return model.strip(), sigma, blocks


def backbone_name(model: str, sigma: float | None = None, block: str | None = None) -> str:
    """The canonical backbone name (what the cache key holds)."""
    sigma = DEFAULT_SIGMA if sigma is None else float(sigma)
    block = block or DEFAULT_BLOCK
    return f"{PREFIX}:{model},sigma={sigma:g},block={block}"


def model_dir(model: str) -> Path:
    """The folder of a registry model name: shipped first, then '<workspace>/<model>': the workspace of the
    call under way when it is that one (as opened: any home, a visitor's area), else found in the default home."""
    from cedm.model.registry import find_model, list_models

    ws = None
    if "/" in model:
        from cedm.workspace import open_workspace
        ws_name = model.split("/", 1)[0]
        ws = scoped_workspace()
        if ws is None or ws.name != ws_name:
            try:
                ws = open_workspace(None, ws_name)
            except (CedmError, OSError):
                raise CedmError(f"denoiser backbone: no workspace {ws_name!r} for model {model!r}") from None
    return find_model(list_models(ws), model).path


def block_channels(config: dict, block: str) -> int:
    chans = list(config["block_out_channels"])
    if block == "mid":
        return int(chans[-1])
    kind, i = re.match(r"^(down|up)(\d+)$", block).groups()
    i = int(i)
    if i >= len(chans):
        raise CedmError(f"block {block!r} does not exist: this model has {kind}0..{kind}{len(chans) - 1} and mid")
    return int(chans[i] if kind == "down" else list(reversed(chans))[i])


def list_blocks(config: dict) -> list[str]:
    """Every block name of a model, in forward order."""
    n = len(config["block_out_channels"])
    return [f"down{i}" for i in range(n)] + ["mid"] + [f"up{i}" for i in range(n)]


# --- the network -----------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def image_seeds(x: torch.Tensor) -> list[int]:
    """Per-image noise seeds from the quantised pixels of x in [-1, 1] (independent of batching)."""
    q = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return [(NOISE_SEED * 1_000_003 + zlib.crc32(np.ascontiguousarray(img).tobytes())) % (2 ** 63) for img in q]


def image_noise(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like x, one seeded generator per image."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for i, s in enumerate(image_seeds(x)):
        out[i] = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(s))
    return out.to(x.device)


class DenoiserFeatures(nn.Module):
    """x in [-1, 1] (B, 3, R, R) -> (B, D) pooled UNet activations at noise level ``sigma``."""

    def __init__(self, model, sigma: float, blocks: tuple[str, ...]):
        super().__init__()
        self.model, self.sigma, self.blocks = model, float(sigma), tuple(blocks)
        for b in self.blocks:
            block_channels(dict(model.unet.config), b)  # a block the model lacks fails here, clearly

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, class_labels=None,
                pool: bool = True) -> torch.Tensor:
        return pooled_features(self.model, x, self.sigma, self.blocks,
                               image_noise(x) if noise is None else noise, class_labels, pool=pool)


def pooled_features(model, x: torch.Tensor, sigma, blocks: tuple[str, ...], noise: torch.Tensor,
                    class_labels=None, class_embedding_zero: bool = False, pool: bool = True) -> torch.Tensor:
    """Pooled activations of ``blocks`` of the CEDM ``model`` at ``x + sigma * noise`` (stops after the last
    block; sigma a number or one per image). ``class_labels`` None = the learned no-condition; ``class_embedding_zero`` replaces the class
    embedding by zeros (the zero condition of online self-guidance, distinct from the learned null).
    ``pool=False``: the (B, D, h, w) maps instead (several blocks: resized to the first block's grid), the
    spatial output for self-annotations (cedm.annotate)."""
    unet = model.unet
    config = dict(unet.config)
    order = list_blocks(config)
    last = max(order.index(b) for b in blocks)
    got: dict[str, torch.Tensor] = {}
    handles = []

    def grab(name, is_last):
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            got[name] = h.float().mean(dim=(2, 3)) if pool else h.float()
            if is_last:
                raise _Stop
        return hook

    for b in blocks:
        handles.append(_block_module(unet, b).register_forward_hook(grab(b, order.index(b) == last)))
    if class_embedding_zero:
        handles.append(unet.class_embedding.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    try:
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        model(x + sig.view(-1, 1, 1, 1) * noise.to(x.dtype), sig, class_labels)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    parts = [got[b] for b in blocks]
    if len(parts) == 1:
        return parts[0]
    if not pool:
        size = parts[0].shape[-2:]
        parts = [p if p.shape[-2:] == size else torch.nn.functional.interpolate(p, size=size, mode="bilinear")
                 for p in parts]
    return torch.cat([p / p.norm(dim=1, keepdim=True).clamp_min(1e-12) for p in parts], dim=1)


def _block_module(unet, block: str):
    if block == "mid":
        return unet.mid_block
    kind, i = re.match(r"^(down|up)(\d+)$", block).groups()
    return (unet.down_blocks if kind == "down" else unet.up_blocks)[int(i)]


# --- the registry entry ------------------------------------------------------------------------------
def spec_for(name: str):
    """The BackboneSpec of a ``denoiser:...`` name (resolved now: model folder, feature size)."""
    from cedm import io
    from cedm.features.backbones import BackboneSpec, file_sha256

    model, sigma, blocks = parse_name(name)
    folder = model_dir(model)
    cfg_path = folder / "unet_ema" / "config.json"
    weights = folder / "unet_ema" / "diffusion_pytorch_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CedmError(f"model {model!r} has no EMA weights (unet_ema/) to take features from")
    config = io.read_json(cfg_path)
    dim = sum(block_channels(config, b) for b in blocks)
    res = int(config["sample_size"])

    def create():
        from cedm.model.edm import load_model
        return DenoiserFeatures(load_model(folder, device="cpu"), sigma, blocks)

    return BackboneSpec(
        name=backbone_name(model, sigma, "+".join(blocks)),
        summary=f"the UNet of cedm model {model} at sigma {sigma:g}, block {'+'.join(blocks)}, pooled",
        feature_dim=dim, input_size=res, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        weights_source=f"cedm-model:{model}", create=create, embed=lambda net, x: net(x),
        spatial=lambda net, x: net(x, pool=False),  # the block's activation map, for self-annotations
        identity=lambda: f"sha256:{file_sha256(weights)}:noise{NOISE_SEED}",
    )


# --- the ablation (seed 002, fig. 3): which sigma and block cluster best ----------------------------------
@for_workspace
def ablate(ws, model: str, sigmas, blocks=None, against: str = "gt", k: int | None = None, seed: int = 0,
           compare_backbones=("efficientnet_lite0",), raw_pixels: bool = True, device=None,
           progress=None) -> dict:
    """k-means (K clusters) NMI/AMI of denoiser features against the labeling ``against`` over a grid of
    noise levels and blocks, plus the same K-means on other backbones and on raw pixels for comparison.

    One pass of the network per sigma gives every block at once (all blocks concatenated, each
    L2-normalised, and cached like any backbone); each block's slice is then clustered on its own.
    Returns {"rows": [{"features", "sigma", "block", "dim", "nmi", "ami"}, ...], "best": row, ...}.
    """
    from cedm.clusters import labelings
    from cedm.clusters.kmeans import kmeans
    from cedm.clusters.metrics import ami, nmi
    from cedm.features.extract import get_features

    ref = labelings.resolve(ws, against)
    k = int(k or ref.n_classes)
    folder = model_dir(model)
    from cedm import io
    config = io.read_json(folder / "unet_ema" / "config.json")
    all_blocks = list_blocks(config)
    blocks = list(blocks or all_blocks)
    for b in blocks:
        if b not in all_blocks:
            raise CedmError(f"block {b!r} does not exist in model {model!r}: use {', '.join(all_blocks)}")
    sigmas = [float(s) for s in sigmas]
    if not sigmas or min(sigmas) <= 0:
        raise CedmError("give at least one sigma, all positive")
    widths = [block_channels(config, b) for b in all_blocks]
    starts = np.concatenate([[0], np.cumsum(widths)])

    def score(feats) -> dict:
        res = kmeans(feats, k, seed=seed)
        return {"nmi": round(nmi(res.assignments, ref.labels), 4), "ami": round(ami(res.assignments, ref.labels), 4)}

    rows = []
    for si, sigma in enumerate(sigmas):
        name = backbone_name(model, sigma, "+".join(all_blocks))
        feats = get_features(ws, name, device=device, normalized=False, progress=progress)
        for b in blocks:
            i = all_blocks.index(b)
            rows.append({"features": f"denoiser:{model}", "sigma": sigma, "block": b, "dim": widths[i],
                         **score(feats[:, starts[i]:starts[i + 1]])})
    best = max(rows, key=lambda r: r["ami"])
    others = []
    for b in compare_backbones or ():
        feats = get_features(ws, b, device=device, progress=progress)
        others.append({"features": b, "sigma": None, "block": None, "dim": int(feats.shape[1]), **score(feats)})
    if raw_pixels:
        px = raw_pixel_features(ws, int(config["sample_size"]))
        others.append({"features": f"raw pixels {config['sample_size']}px", "sigma": None, "block": None,
                       "dim": int(px.shape[1]), **score(px)})
    return {"workspace": ws.name, "model": model, "against": against, "k": k, "seed": seed, "rows": rows,
            "best": best, "comparison": others}


def raw_pixel_features(ws, resolution: int, batch: int = 512) -> np.ndarray:
    """Images area-resized to ``resolution``, flattened, minus the mean image (so k-means on the sphere sees
    how images differ, not the shared white background)."""
    import torch.nn.functional as F

    out = []
    for s in range(0, ws.n, batch):
        x = torch.from_numpy(np.array(ws.images[s:s + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
        if x.shape[-1] != resolution:
            x = F.interpolate(x, size=(resolution, resolution), mode="area")
        out.append(x.flatten(1).numpy())
    px = np.concatenate(out)
    return px - px.mean(0, keepdims=True)


def ablation_table(result: dict) -> str:
    """A markdown table of an ablate() result (denoiser grid, then the comparison rows)."""
    lines = [f"k-means K = {result['k']} against `{result['against']}` on workspace `{result['workspace']}`",
             "", "| features | sigma | block | dim | NMI | AMI |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"] + result["comparison"]:
        best = " **best**" if r == result["best"] else ""
        sigma = "" if r["sigma"] is None else format(r["sigma"], "g")
        lines.append(f"| {r['features']} | {sigma} | {r['block'] or ''} | {r['dim']} | {r['nmi']:.3f} | "
                     f"{r['ami']:.3f}{best} |")
    return "\n".join(lines)


def workspace_backbones(ws) -> list[str]:
    """denoiser backbones (default sigma and block) of the models trained on ``ws``: its own models, and
    the shipped ones whose provenance is this workspace (the demo's)."""
    from cedm.model.registry import list_models

    if ws is None:
        return []
    out = []
    for e in list_models(ws):
        if e.source == "workspace" or (e.info.get("provenance") or {}).get("workspace") == ws.name:
            out.append(backbone_name(e.name))
    return out

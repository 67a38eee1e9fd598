"""Sample quality of a trained model, measured against the workspace's real images.

Fréchet distance (Heusel et al. 2017) between Gaussians fitted to features of real and generated images:

    FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

The feature space decides the name. With pytorch-fid's Inception pool3 network (the TF FID weights) it is FID;
with DINOv2 it is FD_DINOv2 (Stein et al. 2023 use ViT-L/14, we use the registry's ViT-S/14); with the
offline backbone (EfficientNet-Lite0, ImageNet classifier, pooled 1280-d, not normalised) it is
FD_EffNetLite0. Same formula, different feature spaces: only FID is comparable to published numbers, and
only FD_EffNetLite0 can always be computed here (its weights ship with a package).

Real images are resized to the model resolution exactly as training sees them (cedm.model.train.load_batch:
area when shrinking, bilinear when growing) and quantised to uint8 like generated samples, so both sides go
through the same feature network at the same size. Their features are cached in the workspace (stage
``eval_real``). Every setting and every model uses seeds S .. S+n-1 (cedm.sampling.generate), so numbers
differ only by the model and the setting. For scale, each metric also reports its noise floor: the FD of a
random size-n subset of the real images against all of them.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cedm import hub, io
from cedm.errors import CedmError
from cedm.features.backbones import OFFLINE_BACKBONE

STAGE_REAL = "eval_real"
EVAL_VERSION = 1             # part of the real-feature cache key
DINOV2_BACKBONE = "dinov2_vits14"
METRIC_NAMES = {OFFLINE_BACKBONE: "FD_EffNetLite0", DINOV2_BACKBONE: "FD_DINOv2"}
# pytorch-fid's FID Inception weights (the URL's '-<hex>.' part is the start of the file's sha256, checked)
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_SKIPPED = ("FID skipped: Inception weights unavailable offline; pass --inception-weights PATH or allow "
               "downloads (--allow-downloads)")
DINOV2_SKIPPED = ("FD_DINOv2 skipped: DINOv2 weights unavailable offline; pass --dinov2-weights PATH or allow "
                  "downloads (--allow-downloads)")
Progress = Callable[[int, int, str], None]



# --- Fréchet distance -------------------------------------------------------------------------------
def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise CedmError(f"need at least 2 feature vectors (N, D) for a Fréchet distance, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise CedmError("features contain NaN or infinite values")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2) by pytorch-fid's calculate_frechet_distance."""
    import contextlib
    import io as _io
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    # pytorch-fid prints (and scipy warns) when a covariance is singular, as it is with fewer samples than
    # dimensions; it then regularises with eps on the diagonal, which is the intended behaviour.
    with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(singular|ill-conditioned).*")
        try:
            return float(calculate_frechet_distance(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                                    np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))
        except ValueError as e:  # a large imaginary part of the matrix square root
            raise CedmError(f"Fréchet distance failed numerically: {e}") from None


def frechet_distance(feats_a, feats_b) -> float:
    """FD between Gaussians fitted to two sets of (N, D) features.

    With fewer rows than dimensions (N_a + N_b < D) everything that matters (the centred rows and the mean
    difference) lies in a subspace of dimension N_a + N_b + 1; FD is invariant under rotations, so the features
    are first expressed in an orthonormal basis of that subspace: the same number, from a much smaller matrix
    square root (the 1280-d one takes tens of seconds on a busy CPU)."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1] and len(a) + len(b) < a.shape[1]:
        mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
        basis = np.linalg.qr(np.concatenate([a - mu_a, b - mu_b, (mu_a - mu_b)[None]]).T)[0]  # (D, k)
        a, b = a @ basis, b @ basis
    elif a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        raise CedmError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_stats(*feature_statistics(a), *feature_statistics(b))


# --- feature networks for the metrics ----------------------------------------------------------------
@dataclass
class MetricNet:
    """A feature network for one FD metric: ``fn(uint8 (B, H, W, 3)) -> (B, D)``; ``identity`` keys caches."""
    metric: str
    identity: dict
    fn: Callable[[np.ndarray], np.ndarray]
    batch_size: int = 64
    weights_file: dict | None = None   # the exact weights used (cedm.hub.WeightsFile.record), for the results


def metric_name(backbone: str) -> str:
    return METRIC_NAMES.get(backbone, f"FD_{backbone}")


def backbone_net(backbone: str = OFFLINE_BACKBONE, weights=None, device=None) -> MetricNet:
    """A registry backbone (cedm.features) as a metric network: its own preprocessing, pooled features."""
    from cedm.features.extract import cached_backbone, feature_params

    net = cached_backbone(backbone, weights, device)
    return MetricNet(metric_name(backbone), {"kind": "backbone", **feature_params(backbone, weights)}, net,
                     batch_size=256 if net.device.type == "cuda" else 32,
                     weights_file=getattr(net, "weights_record", None))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the download try
    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def find_inception_weights(download: bool = True, progress: Progress | None = None) -> Path | None:
    """pytorch-fid's FID Inception weights: the torch hub cache (where pytorch-fid keeps them), else downloaded
    when cedm.hub's policy allows it (sha256 prefix checked), else None.

    With downloads off, or the host unreachable within 3 s, nothing is attempted."""
    import torch

    name = INCEPTION_URL.rsplit("/", 1)[1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    if not download or not hub.downloads_allowed() or not _reachable(INCEPTION_URL):
        return None
    cached.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0, 1, f"downloading {name}")
    try:  # the file name carries a sha256 prefix, which download_url_to_file checks
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), hash_prefix=name.rsplit("-", 1)[1].split(".")[0],
                                       progress=progress is None)
    except (OSError, RuntimeError):
        return None
    if progress:
        progress(1, 1, f"downloaded {name}")
    return cached


def inception_net(weights=None, device=None, download: bool = True, progress: Progress | None = None
                  ) -> MetricNet | None:
    """pytorch-fid's ``InceptionV3([3])`` (2048-d pool3, the TF FID network) with weights read safely.

    ``weights``: a local pt_inception file; None: the cache or a download (None is returned when neither
    works). pytorch-fid would torch.load the download with full unpickling; its loader is patched to hand
    over a state dict read with weights_only=True instead."""
    import torch
    from pytorch_fid import inception as fid_inception

    from cedm.device import resolve_device
    from cedm.features.backbones import file_sha256, read_weights_file

    path = Path(weights).expanduser() if weights is not None else find_inception_weights(download, progress)
    if path is None:
        return None
    record = hub.file_record(path) if weights is not None else hub.file_record(path, "url", INCEPTION_URL)
    state = read_weights_file(path)
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *a, **k: state
    try:
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except RuntimeError as e:  # strict load_state_dict: missing/unexpected keys or wrong shapes
        first = str(e).splitlines()[0][:200]
        raise CedmError(f"weights file {str(path)!r} is not pytorch-fid's FID Inception ({first})") from None
    finally:
        fid_inception.load_state_dict_from_url = original
    dev = resolve_device(device) if not hasattr(device, "type") else device
    net = net.eval().requires_grad_(False).to(dev)

    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():  # InceptionV3 resizes to 299 (bilinear) and scales to [-1, 1] itself
            return net(x)[0].flatten(1).float().cpu().numpy()

    ident = {"kind": "pytorch-fid-inception-v3-pool3", "weights": f"sha256:{file_sha256(path)}"}
    return MetricNet("FID", ident, fn, batch_size=200 if dev.type == "cuda" else 16, weights_file=record.record())


def metric_nets(backbone: str = OFFLINE_BACKBONE, backbone_weights=None, inception_weights=None,
                dinov2_weights=None, extra: bool = True, device=None,
                progress: Progress | None = None) -> tuple[list[MetricNet], list[str]]:
    """The FD metrics to compute: the offline backbone always; FID and FD_DINOv2 when their weights can be
    had: a given file (which must load), the cache, or a download cedm.hub's policy allows (shown through
    ``progress``); missing weights only add a note."""
    from cedm.features.backbones import availability

    nets, notes = [backbone_net(backbone, backbone_weights, device)], []
    if not extra:
        return nets, notes
    fid = inception_net(inception_weights, device, progress=progress)
    if fid is None:
        notes.append(FID_SKIPPED)
    else:
        nets.append(fid)
    if backbone != DINOV2_BACKBONE:
        if dinov2_weights is None and availability(DINOV2_BACKBONE)[0] == "off":
            notes.append(DINOV2_SKIPPED)  # not cached, downloads off: nothing is tried
        else:
            try:
                with hub.download_progress(progress):
                    nets.append(backbone_net(DINOV2_BACKBONE, dinov2_weights, device))
            except CedmError:
                if dinov2_weights is not None:
                    raise  # a given file that does not load is an error, not a skip
                notes.append(DINOV2_SKIPPED)
    return nets, notes


def extract(net: MetricNet, images: np.ndarray, progress: Progress | None = None, desc: str = "") -> np.ndarray:
    """(N, D) float32 features of uint8 images, in batches."""
    out, n = [], len(images)
    for s in range(0, n, net.batch_size):
        out.append(np.asarray(net.fn(np.ascontiguousarray(images[s:s + net.batch_size])), dtype=np.float32))
        if progress:
            progress(min(n, s + net.batch_size), n, desc or f"{net.metric} features")
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fd_offline(real_uint8: np.ndarray, fake_uint8: np.ndarray, backbone: str = OFFLINE_BACKBONE, weights=None,
               device=None) -> float:
    """FD_EffNetLite0 (or FD_<backbone>) between two uint8 (N, R, R, 3) image sets of the same resolution:
    pooled features, not normalised, both sides through the same preprocessing. Use real_images(ws, R) to
    bring real images to a model's resolution first."""
    real, fake = np.asarray(real_uint8), np.asarray(fake_uint8)
    for what, a in (("real", real), ("generated", fake)):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
            raise CedmError(f"{what} images must be uint8 (N, H, W, 3), got {a.dtype} {a.shape}")
    if real.shape[1:3] != fake.shape[1:3]:
        raise CedmError(f"real images are {real.shape[1]}x{real.shape[2]} but generated ones "
                        f"{fake.shape[1]}x{fake.shape[2]}: compare at the model resolution")
    net = backbone_net(backbone, weights, device)
    return frechet_distance(extract(net, real), extract(net, fake))


# --- real images -------------------------------------------------------------------------------------
def real_images(ws, resolution: int, chunk: int = 512) -> np.ndarray:
    """All workspace images as training sees them at ``resolution`` (load_batch, no flips), as uint8."""
    import torch

    from cedm.model.train import load_batch
    from cedm.sampling.generate import to_uint8

    n, R = ws.n, int(resolution)
    out = np.empty((n, R, R, 3), dtype=np.uint8)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        x = load_batch(ws.images, rows, np.zeros(len(rows), bool), R, torch.device("cpu"))
        out[s:s + len(rows)] = to_uint8(x)
    return out


def real_params(net: MetricNet, resolution: int) -> dict:
    return {"net": net.identity, "resolution": int(resolution),
            "resize": "as training (area down, bilinear up), uint8", "version": EVAL_VERSION}


def real_features(ws, net: MetricNet, resolution: int, images: np.ndarray | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """Features of all real images at the model resolution, cached in the workspace (stage eval_real)."""
    params = real_params(net, resolution)
    found = ws.find_artifact(STAGE_REAL, params)
    if found is not None:
        return io.load_npy(found / "features.npy")
    images = real_images(ws, resolution) if images is None else images
    feats = extract(net, images, progress, f"{net.metric}: real images at {resolution}px")
    with ws.write_artifact(STAGE_REAL, params, info={"metric": net.metric, "n": len(feats)}) as d:
        io.save_npy(d / "features.npy", feats)
    return feats


_FLOORS: dict[tuple, float] = {}


def noise_floor(ws, net: MetricNet, resolution: int, feats: np.ndarray, subset: np.ndarray | None,
                seed: int) -> float | None:
    """FD of the real ``subset`` (a seeded random size-n draw) against all real images: what a perfect
    generator would score with n samples. Remembered per process (every model of one run shares it)."""
    if subset is None:
        return None
    key = (ws.artifact_key(STAGE_REAL, real_params(net, resolution)), len(subset), seed)
    if key not in _FLOORS:
        _FLOORS[key] = frechet_distance(feats[subset], feats)
    return _FLOORS[key]

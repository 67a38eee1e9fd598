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

Confidence (C-EDM sec. 5): the maximum softmax probability (MSP) of a generated sample under the classifier
of the model's condition labeling (the TEMI head; for k-means a softmax over cosine similarities to the
centroids at TEMI's temperature 0.1), applied to the labeling backbone's features of the sample. For
conditioned models ``agreement`` is the fraction of samples the classifier puts in the cluster they were
generated from.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cedm import __version__, hub, io
from cedm.errors import CedmError
from cedm.features.backbones import OFFLINE_BACKBONE
from cedm.sampling.guidance import parse_interval

STAGE_REAL = "eval_real"
EVAL_VERSION = 1
GENERATE_CHUNK = 256          # generated images saved per resumable chunk
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


def _real_params(net: MetricNet, resolution: int) -> dict:
    return {"net": net.identity, "resolution": int(resolution),
            "resize": "as training (area down, bilinear up), uint8", "version": EVAL_VERSION}


def real_features(ws, net: MetricNet, resolution: int, images: np.ndarray | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """Features of all real images at the model resolution, cached in the workspace (stage eval_real)."""
    params = _real_params(net, resolution)
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
    key = (ws.artifact_key(STAGE_REAL, _real_params(net, resolution)), len(subset), seed)
    if key not in _FLOORS:
        _FLOORS[key] = frechet_distance(feats[subset], feats)
    return _FLOORS[key]


# --- the condition classifier (MSP) ---------------------------------------------------------------------
@dataclass
class ConditionHead:
    """The classifier of a model's condition labeling, mapped to the model's condition ids."""
    spec: str
    method: str                 # 'temi' or 'kmeans'
    backbone: str
    weights: str | None
    model_ids: np.ndarray       # (C_head,) model condition id of each clustering cluster, -1 = not a condition
    head: object = None         # TEMI: a one-head MultiHead
    temperature: float = 0.1
    centroids: np.ndarray | None = None  # k-means: (C, D) unit rows
    artifact: str = ""

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        """(N, C_head) probabilities over the clustering's clusters (cedm.clusters.assign)."""
        from cedm.clusters.assign import Assigner

        return Assigner(self.method, self.head, self.centroids, self.temperature).proba(feats)


def _labels_sha(labels: np.ndarray) -> str:
    """The training fingerprint of condition labels (cedm.model.train.data_fingerprint)."""
    return hashlib.sha256(np.ascontiguousarray(labels.astype(np.int64)).tobytes()).hexdigest()[:16]


def labeling_head(ws, spec: str, labels_sha: str | None) -> tuple[ConditionHead | None, str | None]:
    """The cluster assigner of a kmeans:K / skmeans:K / temi:K labeling of ``ws`` whose compacted labels hash to
    ``labels_sha`` (the ids a C-EDM or a probe was trained on; None: the only cached one), or (None, why).
    The one answer to "which clustering was this trained on", for ``condition_head`` and probes alike."""
    from cedm.clusters.assign import KMEANS_TEMPERATURE, condition_map
    from cedm.clusters.labelings import METHODS, from_clusters, list_clusterings, load_clusters

    method, _, arg = str(spec).partition(":")
    if method not in METHODS:
        return None, f"labeling {spec} has no assigner of its own (it needs a TEMI or k-means labeling)"
    candidates = [c for c in list_clusterings(ws) if c["method"] == method and str(c["n_clusters"]) == arg]
    for c in reversed(candidates):  # newest first
        res = load_clusters(Path(c["artifact"]))
        lab = from_clusters(res, spec).compact()
        if labels_sha is not None and _labels_sha(lab.labels) != labels_sha:
            continue
        if labels_sha is None and len(candidates) > 1:
            return None, f"{len(candidates)} cached {spec} clusterings and no labels hash to choose between them"
        head = ConditionHead(spec=spec, method=method, backbone=c["backbone"] or OFFLINE_BACKBONE,
                             weights=c.get("weights"), model_ids=condition_map(lab.original_ids, res.n_clusters),
                             artifact=str(c["artifact"]))
        if method == "temi":
            from cedm.clusters.temi import load_head
            head.head, cfg = load_head(Path(c["artifact"]) / "head")
            head.temperature = float(cfg.get("temperature", 0.1))
        else:
            from cedm.clusters.result import l2_normalize  # unit rows: Euclidean k-means keeps raw means
            head.centroids, head.temperature = l2_normalize(res.centroids), KMEANS_TEMPERATURE
        return head, None
    return None, (f"the {spec} clustering it was trained on is not cached in workspace {ws.name!r} "
                  f"(run 'cedm cluster' as for training)")


def condition_head(model_dir, ws) -> tuple[ConditionHead | None, str | None]:
    """(head, None), or (None, why not) when the model's condition has no classifier in ``ws``.

    The clustering is the cached one of the condition's method and C whose (compacted) labels are exactly the
    ones the model was trained on (the labels hash in its provenance), so the backbone need not be recorded."""
    from cedm.model.edm import read_model_info

    info = read_model_info(model_dir)
    cond = info.get("condition") or {}
    spec = str(cond.get("spec") or "none")
    if int(info.get("n_conditions", 0)) == 0:
        return None, "unconditional model: no condition classifier"
    from cedm.clusters.labelings import METHODS

    if spec.partition(":")[0] not in METHODS:
        return None, f"condition {spec} has no classifier (MSP needs a TEMI or k-means labeling)"
    return labeling_head(ws, spec, ((info.get("provenance") or {}).get("data") or {}).get("labels_sha"))


def sample_confidence(head: ConditionHead, images: np.ndarray | None, device=None, progress: Progress | None = None,
                      features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, MSP) per image: the predicted condition id (-1: a cluster that is no condition) and the
    maximum softmax probability. ``features``: the head backbone's features of ``images`` if already at hand.
    The one place MSP is computed (cedm.inference can take this over)."""
    if features is None:
        features = extract(backbone_net(head.backbone, head.weights, device), images, progress,
                           f"{head.spec} features")
    probs = head.predict_proba(features)
    return head.model_ids[probs.argmax(1)], probs.max(1).astype(np.float32)


# --- generation, resumable ----------------------------------------------------------------------------
def settings_key(ws, n: int, seed: int, w: float | None, from_q: bool, sampler: str, steps: int,
                 interval: tuple[float, float] | None = None) -> str:
    cond = "uncond" if w is None else f"{'q' if from_q else 'uniform'}-w{w:g}"
    if interval is not None and w is not None:
        cond += f"-gi{interval[0]:g}-{interval[1]:g}"
    return f"{ws.name}-n{n}-seed{seed}-{cond}-{sampler}{steps}"


def model_fingerprint(model_dir) -> str:
    """sha256 of the EMA weights file (what sampling uses)."""
    from cedm.features.backbones import file_sha256

    files = sorted((Path(model_dir) / "unet_ema").glob("*.safetensors"))
    if not files:
        raise CedmError(f"{model_dir} has no unet_ema/*.safetensors weights")
    return file_sha256(files[0])


def generate_resumable(model, n: int, conditions: Sequence[int | None], w: float, seed: int, sampler: str,
                       steps: int, batch_size: int, partial: Path, progress: Progress | None = None,
                       interval: tuple[float, float] | None = None) -> np.ndarray:
    """generate() in chunks of GENERATE_CHUNK images, each saved to ``partial``: a rerun skips finished
    chunks. Seeds are per image (S + i), so chunking does not change any image."""
    from cedm.sampling.generate import generate

    R = model.resolution
    out = np.empty((n, R, R, 3), dtype=np.uint8)
    for start in range(0, n, GENERATE_CHUNK):
        stop = min(n, start + GENERATE_CHUNK)
        f = partial / f"{start:07d}-{stop:07d}.npy"
        if f.is_file():
            chunk = io.load_npy(f)
            if chunk.shape == (stop - start, R, R, 3):
                out[start:stop] = chunk
                continue
        cl = None if conditions[0] is None else list(conditions[start:stop])

        def prog(done, total, desc, start=start):
            if progress:
                progress(start + (stop - start) * done // max(total, 1), n, f"sampling {desc}")

        chunk, _ = generate(model, stop - start, clusters=cl, uncond=cl is None and model.n_conditions > 0,
                            guidance=1.0 if w is None else w, steps=steps, sampler=sampler, seed=seed + start,
                            batch_size=batch_size, progress=prog, guidance_interval=interval)
        io.save_npy(f, chunk)
        out[start:stop] = chunk
    return out


# --- evaluating a model -------------------------------------------------------------------------------
def default_eval_dir(model_dir, home=None) -> Path:
    """Where `cedm eval` writes a model's results: ``<home>/eval/<model name>``."""
    from cedm.workspace import default_home

    return Path(home or default_home()).expanduser() / "eval" / Path(model_dir).name


def guidance_plan(model_dir, guidance: Sequence[float]) -> tuple[list[float | None], list[str]]:
    """The guidance values to run for a model (None = unconditional model, evaluated once) and notes on
    skipped ones. Refuses, before any work, guidance that the model cannot do (check_guidance)."""
    from types import SimpleNamespace

    from cedm.model.edm import read_model_info
    from cedm.sampling.guidance import check_guidance

    info = read_model_info(model_dir)
    values = [float(w) for w in guidance]
    if not values:
        raise CedmError("no guidance values given")
    if any(not np.isfinite(w) or w < 0 for w in values):
        raise CedmError(f"guidance must be a number >= 0, got {', '.join(f'{w:g}' for w in values)}")
    C = int(info.get("n_conditions", 0))
    if C == 0:
        skipped = sorted({w for w in values if w != 1.0})
        notes = [f"unconditional model: guidance w = {', '.join(f'{w:g}' for w in skipped)} skipped "
                 "(evaluated once, without guidance)"] if skipped else []
        return [None], notes
    plan = list(dict.fromkeys(values))
    for w in plan:  # e.g. a model trained with p_uncond = 0 refuses w != 1
        check_guidance(SimpleNamespace(n_conditions=C, info=info), w)
    return plan, []


def evaluate_model(model_dir, ws, n: int = 1000, seed: int = 0, guidance: Sequence[float] = (1.0,),
                   from_q: bool = True, sampler: str = "heun", steps: int = 18, batch_size: int = 64,
                   backbone: str = OFFLINE_BACKBONE, backbone_weights=None, inception_weights=None,
                   dinov2_weights=None, extra_metrics: bool = True, head_from=None,
                   progress: Progress | None = None, device=None, out_dir=None, guidance_interval=None) -> dict:
    """Generate ``n`` samples per guidance value and measure them against all real images of ``ws``.

    Returns {"model", "results": [one dict per setting], "notes"}; each result is also written to
    ``<out_dir>/<settings-key>.json`` (default ``<home>/eval/<model name>``: never the model's folder, which
    may be a read-only shipped checkpoint). ``guidance_interval`` (lo, hi): guide only for sigma in it.
    Results are always recomputed (only finished chunks of samples and the real-image features are reused),
    so a rerun checks the numbers rather than reading them back. ``head_from``: the model folder whose condition classifier scores MSP (default: this
    model; pass a conditioned model for an unconditional one, so that both are scored by one classifier).
    FID / FD_DINOv2 are added when their weights can be had (``extra_metrics``), else noted as skipped.
    """
    from cedm.device import resolve_device
    from cedm.model.edm import load_model, read_model_info
    from cedm.sampling.generate import choose_conditions

    model_dir = Path(model_dir)
    n, seed, steps = int(n), int(seed), int(steps)
    if n < 2:
        raise CedmError(f"need at least 2 samples for a Fréchet distance, got n = {n}")
    info = read_model_info(model_dir)
    prov = info.get("provenance") or {}
    if prov.get("workspace_hash") and prov["workspace_hash"] != ws.content_hash:
        raise CedmError(f"model {model_dir.name} was trained on workspace {prov.get('workspace')!r}, whose "
                        f"images differ from workspace {ws.name!r}: evaluate it against its own workspace")
    plan, notes = guidance_plan(model_dir, guidance)
    dev = resolve_device(device) if not hasattr(device, "type") else device
    model = load_model(model_dir, dev)
    out_dir = Path(out_dir) if out_dir is not None else default_eval_dir(model_dir)
    interval = parse_interval(guidance_interval)
    fingerprint = model_fingerprint(model_dir)
    R = model.resolution

    # Real side: features at the model resolution (cached), their statistics and the noise floor.
    nets, net_notes = metric_nets(backbone, backbone_weights, inception_weights, dinov2_weights,
                                  extra_metrics, dev, progress=progress)
    notes += net_notes
    reals = None
    real_feats, floors = {}, {}
    subset = np.sort(np.random.default_rng(seed).choice(ws.n, n, replace=False)) if n < ws.n else None
    if subset is None:
        notes.append(f"noise floor skipped: n = {n} is not below the {ws.n} real images")
    for net in nets:
        if reals is None and ws.find_artifact(STAGE_REAL, _real_params(net, R)) is None:
            reals = real_images(ws, R)
        real_feats[net.metric] = real_features(ws, net, R, reals, progress)
        floors[net.metric] = noise_floor(ws, net, R, real_feats[net.metric], subset, seed)

    # The condition classifier, and its MSP on real images at the same resolution for reference.
    head, why = condition_head(head_from or model_dir, ws)
    own_head = head is not None and (head_from is None or Path(head_from).resolve() == model_dir.resolve())
    msp_real, head_net = None, None
    if head is None:
        notes.append(f"MSP skipped: {why}")
    else:
        head_net = next((net for net in nets if net.identity == backbone_net(head.backbone, head.weights,
                                                                             dev).identity), None)
        head_net = head_net or backbone_net(head.backbone, head.weights, dev)
        real_head_feats = real_features(ws, head_net, R, reals, progress)
        msp_real = float(sample_confidence(head, None, features=real_head_feats)[1].mean())

    results = []
    for w in plan:
        key = settings_key(ws, n, seed, w, from_q, sampler, steps, interval)
        label = f"{model_dir.name} w={'-' if w is None else f'{w:g}'}"
        t0 = time.perf_counter()
        conditions = choose_conditions(model, n, None, from_q, uncond=w is None, seed=seed)
        partial = out_dir / ".partial" / f"{key}-{fingerprint[:12]}"
        partial.mkdir(parents=True, exist_ok=True)
        images = generate_resumable(model, n, conditions, w, seed, sampler, steps, batch_size, partial,
                                    interval=interval if w is not None else None,
                                    progress=(lambda d, t, s: progress(d, t, f"{label}: {s}")) if progress else None)
        t_sample = time.perf_counter() - t0
        res = {
            "model": str(model_dir), "model_name": model_dir.name, "model_sha256": fingerprint,
            "condition": (info.get("condition") or {}).get("spec") or "none",
            "n_conditions": int(info.get("n_conditions", 0)), "guidance": w, "n": n, "seed": seed,
            "guidance_interval": list(interval) if interval is not None and w is not None else None,
            "conditions_from": None if w is None else ("q" if from_q else "uniform"),
            "sampler": sampler, "steps": steps, "resolution": R,
            "workspace": ws.name, "workspace_hash": ws.content_hash, "n_real": ws.n,
        }
        gen_feats = {}
        for net in nets:
            gen_feats[net.metric] = extract(net, images, progress, f"{label}: {net.metric} features")
            res[net.metric] = frechet_distance(gen_feats[net.metric], real_feats[net.metric])
            res[f"{net.metric}_floor"] = floors[net.metric]
        res.update(MSP=None, MSP_real=msp_real, agreement=None, msp_classifier=None)
        if head is not None:
            shared = any(head_net is net for net in nets)  # the FD backbone is the labeling's: reuse
            clusters, msp = sample_confidence(head, images, dev, progress,
                                              features=gen_feats[head_net.metric] if shared else None)
            res["MSP"] = float(msp.mean())
            if own_head and w is not None:
                res["agreement"] = float(np.mean(clusters == np.asarray(conditions)))
            res["msp_classifier"] = {"spec": head.spec, "backbone": head.backbone, "artifact": head.artifact,
                                     "model": str(head_from or model_dir)}
        res.update(metrics={net.metric: {**net.identity, "weights_file": net.weights_file} for net in nets},
                   notes=list(notes),
                   seconds=time.perf_counter() - t0, sample_seconds=t_sample, device=str(dev),
                   cedm_version=__version__, created=time.time())
        io.write_json(out_dir / f"{key}.json", res)
        shutil.rmtree(partial, ignore_errors=True)
        results.append(res)
    partial_root = out_dir / ".partial"
    if partial_root.is_dir() and not any(partial_root.iterdir()):
        partial_root.rmdir()
    return {"model": str(model_dir), "results": results, "notes": notes}

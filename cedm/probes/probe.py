"""Probes (seed 004): a small classifier p_phi(y | x, sigma) on a trained denoiser's own representations.

Two routes to the classifier's input, both on the features of ``cedm.probes.features``:

- ``x0`` (the paper's, section 4.1): the probe sees the denoiser's features of an image *re-noised at one
  fixed level* ``sigma_feature``: x0 + sigma_feature * eps (eps a noise fixed per probe). It is trained on
  clean training images; during sampling its input is the x0 estimate D(x; sigma) re-noised the same way,
  so p(y | x, sigma) is approximated by p(y | x0_hat(x; sigma)).
- ``noised``: the probe sees the features of the noisy sample itself, x0 + sigma * n with sigma drawn as in
  training (ln sigma ~ N(P_mean, P_std^2)), plus ln(sigma) / 4 as one more input: an ordinary noise-aware
  classifier for classifier guidance (Dhariwal & Nichol 2021), only cheap because it reads the denoiser's
  features.

Held-out accuracy is reported per range of the sampling noise level sigma, for both routes on the input
guidance will actually give them (route x0: features of the re-noised D(x0 + sigma n; sigma)); the default
route is the one that measured better where guidance acts (docs/probes.md).

A probe is saved as ``probe.safetensors`` (classifier weights, feature normalisation, the fixed noise) and
``probe.json`` (settings, classes, accuracy report, model hash) in the workspace artifact stage ``probes``,
keyed by the model's weights hash, the labeling (spec and a hash of its labels) and the settings.
"""
from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cedm import io
from cedm.clusters import assign
from cedm.errors import CedmError
from cedm.probes.features import DEFAULT_BLOCKS, denoiser_features, feature_dim

STAGE_PROBES = "probes"
FEATURES_VERSION = "pooled-l2"  # cedm.features.denoiser.pooled_features (part of the cache key)
PROBE_FORMAT = "cedm-probe"
ROUTES = ("x0", "noised")
DEFAULT_ROUTE = "x0"
# Ranges of the sampling noise level sigma for the held-out report (EDM's schedule spans 0.002 .. 80).
SIGMA_BINS = ((0.002, 0.1), (0.1, 0.5), (0.5, 2.0), (2.0, 10.0), (10.0, 80.0))
_NOISE_STREAM = 0x9B0  # second seed word of the probe's fixed re-noising eps
Progress = Callable[[int, int, str], None]


@dataclass
class ProbeSettings:
    route: str = DEFAULT_ROUTE        # 'x0' (the paper's) or 'noised'
    sigma_feature: float = 1.0        # route x0: the fixed level the (estimated) x0 is re-noised at
    blocks: tuple = DEFAULT_BLOCKS    # denoiser blocks whose pooled outputs are the features
    hidden: int = 256                 # 0: linear; else one hidden layer of this width
    train_steps: int = 400            # full-batch Adam steps
    lr: float = 3e-3
    weight_decay: float = 1e-3
    holdout: float = 0.2              # share of each class held out for the accuracy report
    repeats: int = 2                  # noisy copies of each training image
    max_per_class: int = 600          # rows per class at most (seeded draw): bounds time for big classes
    seed: int = 0
    batch: int = 128                  # images per denoiser call

    def __post_init__(self):
        self.blocks = tuple(self.blocks)
        if self.route not in ROUTES:
            raise CedmError(f"unknown probe route {self.route!r}: use one of {', '.join(ROUTES)}")
        if not (self.sigma_feature > 0 and math.isfinite(self.sigma_feature)):
            raise CedmError(f"sigma_feature must be a positive number, got {self.sigma_feature}")
        for name in ("train_steps", "repeats", "max_per_class", "batch"):
            if int(getattr(self, name)) < 1:
                raise CedmError(f"probe setting {name} must be at least 1, got {getattr(self, name)}")
        if int(self.hidden) < 0:
            raise CedmError(f"hidden width must be >= 0, got {self.hidden}")
        if not 0 <= float(self.holdout) < 1:
            raise CedmError(f"holdout must lie in [0, 1), got {self.holdout}")

    def key(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d.pop("batch")  # only speed
        d["features"] = FEATURES_VERSION
        return d


class ProbeHead(nn.Module):
    """Standardised features (+ ln(sigma)/4 on the noised route) -> [Linear, SiLU] -> Linear -> logits."""

    def __init__(self, dim: int, n_classes: int, hidden: int, noise_input: bool):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.noise_input = bool(noise_input)
        d = dim + int(self.noise_input)
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, n_classes)) if hidden \
            else nn.Linear(d, n_classes)

    def forward(self, feats: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        z = (feats - self.mean) / self.std
        if self.noise_input:
            s = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).reshape(-1, 1).expand(len(z), 1)
            z = torch.cat([z, s.log() / 4], dim=1)
        return self.net(z)


def weights_hash(model) -> str:
    """sha256 (16 hex) of a model's weights: the key that ties a probe to the denoiser it reads."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Probe:
    """A trained probe bound to its denoiser ``model`` (the CEDM whose features it reads)."""

    def __init__(self, model, head: ProbeHead, settings: ProbeSettings, noise: torch.Tensor, info: dict):
        self.model, self.head, self.settings, self.info = model, head, settings, dict(info)
        self.noise = noise  # (3, R, R): the fixed eps of route x0
        self.folder: Path | None = None  # where it is saved (sampling refers to a probe by its folder)
        self.class_names = list(info.get("class_names") or [f"class {i}" for i in range(self.n_classes)])

    @property
    def n_classes(self) -> int:
        return int(self.head.net[-1].out_features if isinstance(self.head.net, nn.Sequential)
                   else self.head.net.out_features)

    @property
    def uses_denoised(self) -> bool:
        """Route x0 reads the x0 estimate D(x; sigma) (so guidance differentiates through the denoiser)."""
        return self.settings.route == "x0"

    def to(self, device):
        self.head.to(device)
        self.noise = self.noise.to(device)
        return self

    def _sigma_feature(self, x):
        return torch.tensor(self.settings.sigma_feature, dtype=torch.float32, device=x.device)

    def features_of_clean(self, x0: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Route x0's features of (estimated) clean images: denoiser features at x0 + sigma_f * eps."""
        eps = self.noise.to(x0.device, x0.dtype).expand_as(x0) if eps is None else eps
        sf = self._sigma_feature(x0)
        return denoiser_features(self.model, x0, sf, self.settings.blocks, eps)

    def logits(self, x: torch.Tensor, sigma, denoised: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) logits of p_phi(y | x, sigma); route x0 uses ``denoised`` (computed when not given)."""
        if self.settings.route == "x0":
            if denoised is None:
                denoised = self.model(x, sigma, None)
            return self.head(self.features_of_clean(denoised))
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        return self.head(denoiser_features(self.model, x, sigma_t, self.settings.blocks), sigma_t)

    def log_prob(self, x: torch.Tensor, sigma, denoised: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self.logits(x, sigma, denoised).float(), dim=1)

    @torch.no_grad()
    def proba_images(self, x0: torch.Tensor, batch: int | None = None) -> np.ndarray:
        """(N, K) probabilities of finished images (float (N, 3, R, R) in [-1, 1]): what rejection uses.
        Route x0 reads them re-noised at sigma_feature; route noised at the schedule's last level 0.002."""
        batch = int(batch or self.settings.batch)
        out = []
        for s in range(0, len(x0), batch):
            xb = x0[s:s + batch].float()
            if self.settings.route == "x0":
                lg = self.head(self.features_of_clean(xb))
            else:
                sig = torch.tensor(0.002, device=xb.device)
                lg = self.head(denoiser_features(self.model, xb, sig, self.settings.blocks), sig)
            out.append(torch.softmax(lg.float(), 1).cpu().numpy())
        return np.concatenate(out)

    def check_model(self, model) -> None:
        want = self.info.get("model_sha")
        if want and weights_hash(model) != want:
            raise CedmError("this probe was trained on another model's denoiser (weights differ): "
                            "train a probe for this model with 'cedm probe'")


# --- data ------------------------------------------------------------------------------------------
def _images(ws_images: np.ndarray, rows: np.ndarray, resolution: int) -> torch.Tensor:
    from cedm.model.train import load_batch

    return load_batch(ws_images, rows, np.zeros(len(rows), bool), resolution, torch.device("cpu"))


def split_rows(labels: np.ndarray, holdout: float, max_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): per class at most ``max_per_class`` rows (seeded), ``holdout`` of each
    class held out (at least one when the class has two or more rows, never all of them)."""
    rng = np.random.default_rng([seed, 0x5717])
    train, held = [], []
    for k in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == k)
        rows = rng.permutation(rows)[:max_per_class]
        n_h = min(len(rows) - 1, max(1, int(round(holdout * len(rows))))) if holdout > 0 and len(rows) >= 2 else 0
        held.append(rows[:n_h])
        train.append(rows[n_h:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held) if held else np.zeros(0, np.int64))


def _batched(fn, n: int, batch: int, progress: Progress | None, desc: str, done: list, total: int):
    out = []
    for s in range(0, n, batch):
        out.append(fn(slice(s, min(n, s + batch))))
        done[0] += min(n, s + batch) - s
        if progress is not None:
            progress(min(done[0], total), total, desc)
    return torch.cat(out) if out else torch.zeros(0)


def _seeded_normal(shape, seed_words) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(seed_words).generate_state(1)[0]))
    return torch.randn(shape, generator=g)


@torch.no_grad()
def _route_inputs(model, settings: ProbeSettings, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                  eps: torch.Tensor, n: torch.Tensor, clean: bool) -> torch.Tensor:
    """Features of a batch as the probe sees them. ``clean``: training input of route x0 (x0 itself re-noised
    with ``eps``); else the input at sampling level ``sigma`` (B,) from noise ``n``."""
    sf = torch.tensor(settings.sigma_feature)
    if settings.route == "x0":
        if not clean:
            x0 = model(x0 + sigma.reshape(-1, 1, 1, 1) * n, sigma, None)
            eps = noise.expand_as(x0)
        return denoiser_features(model, x0, sf, settings.blocks, eps)
    return denoiser_features(model, x0, sigma, settings.blocks, n)


def _fit(head: ProbeHead, feats, sig, y, settings: ProbeSettings, n_classes: int) -> float:
    torch.manual_seed(settings.seed)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, len(y) / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    head.train()
    for _ in range(int(settings.train_steps)):
        opt.zero_grad()
        loss = loss_fn(head(feats, sig), y)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        return float((head(feats, sig).argmax(1) == y).float().mean())


def _accuracy(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    ok = (pred == y).float()
    recalls = [float(ok[y == k].mean()) for k in range(n_classes) if (y == k).any()]
    return {"accuracy": float(ok.mean()), "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "n": int(len(y))}


def train_probe(model, images: np.ndarray, labels: np.ndarray, class_names: list[str] | None = None,
                settings: ProbeSettings | None = None, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None) -> Probe:
    """Train a probe on ``model``'s features of uint8 ``images`` (N, H, W, 3) with ``labels`` (N,) in
    0..K-1 (-1 = unlabelled, skipped). Returns the probe with its held-out report in ``info['report']``."""
    settings = settings or ProbeSettings()
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != len(images):
        raise CedmError(f"need one label per image: {len(labels)} labels for {len(images)} images")
    K = int(labels.max(initial=-1)) + 1
    class_names = list(class_names) if class_names else [f"class {k}" for k in range(K)]
    K = max(K, len(class_names))
    present = np.unique(labels[labels >= 0])
    if len(present) < 2:
        raise CedmError("a probe needs images of at least two classes (e.g. the picked images and the rest)")
    model.eval()
    R = int(model.resolution)
    train_rows, held_rows = split_rows(labels, settings.holdout, settings.max_per_class, settings.seed)
    noise = _seeded_normal((3, R, R), [settings.seed, _NOISE_STREAM])
    P_MEAN, P_STD = _training_noise()
    n_tr, n_he = len(train_rows), len(held_rows)
    total = n_tr * settings.repeats + n_he * len(SIGMA_BINS) + (n_he if settings.route == "x0" else 0)
    done = [0]

    def stop_check():
        if should_stop is not None and should_stop():
            raise CedmError("probe training stopped")

    feats, sigs, ys = [], [], []
    for r in range(settings.repeats):
        rows = train_rows

        def part(sl, r=r, rows=rows):
            stop_check()
            x0 = _images(images, rows[sl], R)
            b = len(x0)
            g = [settings.seed, r, sl.start]
            n = _seeded_normal(x0.shape, g + [1])
            sig = (_seeded_normal((b,), g + [2]) * P_STD + P_MEAN).exp()
            eps = noise.expand_as(x0) if r == 0 else n
            sigs.append(sig)
            return _route_inputs(model, settings, x0, noise, sig, eps, n, clean=True)

        feats.append(_batched(part, n_tr, settings.batch, progress, "probe: denoiser features", done, total))
        ys.append(torch.from_numpy(labels[train_rows]))
    X, y = torch.cat(feats).float(), torch.cat(ys)
    S = torch.cat(sigs).float()
    head = ProbeHead(X.shape[1], K, int(settings.hidden), noise_input=settings.route == "noised")
    head.mean.copy_(X.mean(0))
    head.std.copy_(X.std(0).clamp(min=1e-6))
    train_acc = _fit(head, X, S, y, settings, K)

    # held-out report: per range of the sampling sigma, on the input guidance gives the probe
    report = {"train_accuracy": train_acc, "n_train": int(n_tr), "n_heldout": int(n_he), "sigma_bins": []}
    if n_he:
        y_he = torch.from_numpy(labels[held_rows])
        if settings.route == "x0":
            def clean_part(sl):
                stop_check()
                x0 = _images(images, held_rows[sl], R)
                return _route_inputs(model, settings, x0, noise, None, noise.expand_as(x0), None, clean=True)
            f = _batched(clean_part, n_he, settings.batch, progress, "probe: held-out", done, total)
            with torch.no_grad():
                report["clean"] = _accuracy(head(f).argmax(1), y_he, K)
        for bi, (lo, hi) in enumerate(SIGMA_BINS):
            sig_list = []

            def bin_part(sl, bi=bi, lo=lo, hi=hi, sig_list=sig_list):
                stop_check()
                x0 = _images(images, held_rows[sl], R)
                g = [settings.seed, 1000 + bi, sl.start]
                u = torch.rand((len(x0),), generator=torch.Generator().manual_seed(
                    int(np.random.SeedSequence(g).generate_state(1)[0])))
                sig = (math.log(lo) + u * (math.log(hi) - math.log(lo))).exp()
                sig_list.append(sig)
                return _route_inputs(model, settings, x0, noise, sig, None, _seeded_normal(x0.shape, g + [1]),
                                     clean=False)
            f = _batched(bin_part, n_he, settings.batch, progress, "probe: held-out", done, total)
            with torch.no_grad():
                pred = head(f, torch.cat(sig_list)).argmax(1)
            report["sigma_bins"].append({"sigma": [lo, hi], **_accuracy(pred, y_he, K)})
    report["seconds"] = time.perf_counter() - t0
    counts = np.bincount(labels[labels >= 0], minlength=K).astype(np.float64)
    info = {"format": PROBE_FORMAT, "settings": settings.key(), "class_names": class_names,
            "n_classes": K, "q": (counts / counts.sum()).tolist(), "feature_dim": int(X.shape[1]), "model_sha": weights_hash(model),
            "resolution": R, "report": report}
    head.requires_grad_(False)
    return Probe(model, head, settings, noise, info)


def _training_noise():
    from cedm.model.edm import P_MEAN, P_STD
    return P_MEAN, P_STD


# --- save / load -----------------------------------------------------------------------------------------
def save_probe(probe: Probe, folder) -> Path:
    """``probe.safetensors`` + ``probe.json`` into ``folder`` (each written atomically)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in probe.head.state_dict().items()}
    tensors["noise"] = probe.noise.detach().cpu().contiguous()
    with io.atomic_file(folder / "probe.safetensors") as tmp:
        save_file(tensors, str(tmp))
    io.write_json(folder / "probe.json", probe.info)
    probe.folder = folder
    return folder


def read_probe_info(folder) -> dict:
    folder = Path(folder)
    p = folder / "probe.json"
    if not p.is_file() or not (folder / "probe.safetensors").is_file():
        raise CedmError(f"{folder} is not a probe folder (no probe.json + probe.safetensors)")
    try:
        info = io.read_json(p)
    except (ValueError, UnicodeDecodeError) as e:
        raise CedmError(f"{p} is not valid JSON: {e}") from None
    if info.get("format") != PROBE_FORMAT:
        raise CedmError(f"{p} is not a probe description (format {info.get('format')!r})")
    return info


def load_probe(folder, model, check: bool = True) -> Probe:
    """A saved probe bound to ``model`` (refused when the model's weights are not the ones it was trained on)."""
    from safetensors.torch import load_file

    info = read_probe_info(folder)
    s = dict(info["settings"])
    if s.pop("features", None) != FEATURES_VERSION:
        raise CedmError(f"{folder} was made by another version of the probe features: train it again")
    settings = ProbeSettings(**s)
    try:
        tensors = load_file(str(Path(folder) / "probe.safetensors"))
    except Exception as e:  # a damaged file
        raise CedmError(f"cannot read {Path(folder) / 'probe.safetensors'}: {e}") from None
    dim = int(info["feature_dim"])
    if dim != feature_dim(model, settings.blocks):
        raise CedmError(f"probe reads {dim} features but this model's blocks {list(settings.blocks)} give "
                        f"{feature_dim(model, settings.blocks)}: it belongs to another network")
    head = ProbeHead(dim, int(info["n_classes"]), settings.hidden, settings.route == "noised")
    try:
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    except RuntimeError as e:
        raise CedmError(f"probe weights do not match its description: {str(e).splitlines()[0]}") from None
    probe = Probe(model, head.eval().requires_grad_(False), settings, tensors["noise"], info)
    probe.folder = Path(folder)
    if check:
        probe.check_model(model)
    dev = next(model.parameters()).device
    return probe.to(dev)


# --- workspaces: labelings, caching -------------------------------------------------------------------------
@dataclass
class ProbeLabels:
    spec: str
    labels: np.ndarray
    class_names: list[str]
    default_target: int | None = None   # the class a two-class (picked vs rest) labeling aims at
    meta: dict = field(default_factory=dict)


def probe_labels(ws, spec: str, progress=None, **resolve_kw) -> ProbeLabels:
    """Labels for a probe: any labelings.resolve spec (kmeans:K, temi:K, gt, labels:NAME, rows:NAME), or a
    CSV file of workspace paths (first column; 'path' header optional): those rows vs the rest."""
    from cedm.clusters import labelings

    spec = str(spec).strip()
    p = Path(spec).expanduser()
    if spec.lower().endswith(".csv"):
        if not p.is_file():
            raise CedmError(f"no such CSV file: {spec}")
        try:
            with open(p, newline="", encoding="utf-8") as fh:
                paths = [r[0] for r in csv.reader(fh) if r and r[0].strip()]
        except (UnicodeDecodeError, csv.Error) as e:
            raise CedmError(f"{p.name} is not a readable CSV of paths: {e}") from None
        if paths and paths[0].strip().lower() == "path":
            paths = paths[1:]
        rows = labelings.rows_from_paths(ws, paths)
        if len(rows) == 0:
            raise CedmError(f"{p.name} lists no paths")
        lab = np.zeros(ws.n, dtype=np.int64)
        lab[rows] = 1
        return ProbeLabels(f"csv:{p.stem}", lab, ["rest", p.stem], 1, {"rows": rows.tolist()})
    method, _, arg = spec.partition(":")
    if method in labelings.METHODS and not resolve_kw.get("backbone"):
        # a clustering already made for this spec (e.g. the demo's kmeans:20 on efficientnet_lite0) decides
        # the backbone, rather than the default one
        cached = [c for c in labelings.list_clusterings(ws) if c["method"] == method and str(c["n_clusters"]) == arg]
        if cached:
            resolve_kw = {**resolve_kw, "backbone": cached[-1]["backbone"], "weights": cached[-1].get("weights")}
    lab = labelings.resolve(ws, spec, progress=progress, **resolve_kw)
    names = list(lab.class_names or [f"class {k}" for k in range(lab.n_classes)])
    target = 1 if spec.startswith("rows:") else None
    meta = {"original_ids": lab.original_ids.tolist()} if lab.original_ids is not None else {}
    return ProbeLabels(lab.name, np.asarray(lab.labels, np.int64), names, target, meta)


def probe_params(model, labels: ProbeLabels, settings: ProbeSettings) -> dict:
    return {"model": weights_hash(model), "labeling": labels.spec, "labels_sha": assign.labels_hash(labels.labels),
            "settings": settings.key()}


def find_probe(ws, model, labels: ProbeLabels, settings: ProbeSettings) -> Path | None:
    return ws.find_artifact(STAGE_PROBES, probe_params(model, labels, settings))


def get_probe(ws, model, spec: str, settings: ProbeSettings | None = None, model_dir=None,
              progress: Progress | None = None, should_stop=None, labels: ProbeLabels | None = None,
              **resolve_kw) -> tuple[Probe, Path, bool]:
    """The probe of (model, labeling, settings) in ``ws``: cached, else trained and saved.
    Returns (probe, artifact folder, trained now?)."""
    settings = settings or ProbeSettings()
    labels = labels or probe_labels(ws, spec, **resolve_kw)
    params = probe_params(model, labels, settings)
    found = ws.find_artifact(STAGE_PROBES, params)
    if found is not None:
        return load_probe(found, model, check=False), found, False
    probe = train_probe(model, ws.images, labels.labels, labels.class_names, settings, progress, should_stop)
    probe.info.update(labeling=labels.spec, labels_sha=params["labels_sha"], workspace=ws.name,
                      workspace_hash=ws.content_hash, default_target=labels.default_target,
                      model_dir=str(model_dir) if model_dir else None, labeling_meta=labels.meta)
    info = {k: probe.info[k] for k in ("labeling", "model_dir", "default_target")}
    with ws.write_artifact(STAGE_PROBES, params, info={**info, "report": probe.info["report"]}) as d:
        save_probe(probe, d)
    probe.folder = ws.find_artifact(STAGE_PROBES, params)
    return probe, probe.folder, True


def list_probes(ws) -> list[dict]:
    return [{**m.get("params", {}), "labeling": m.get("labeling"), "model_dir": m.get("model_dir"),
             "report": m.get("report"), "artifact": str(p)} for p, m in ws.list_artifacts(STAGE_PROBES)]

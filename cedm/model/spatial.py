"""Spatially conditioned C-EDM (seed 003, eq. 8): condition = (layout map, cluster).

    D(x; sigma, map, c) = c_skip x + c_out F(concat[c_in x, map]; c_noise, c)

The map is concatenated to the network input in the channel dimension; the cluster c goes through the class
embedding as in every C-EDM model. Encodings at the model resolution r:

- ``box``: one channel, +1 inside the box, -1 outside;
- ``segments:S``: S channels, the one-hot segment map (area-resized, so a pixel may be split between ids).

The all-zero map is "no map": it is what a dropped condition sees. Classifier-free guidance drops both
together (zero map and the null class) with p_uncond; ``p_drop_map`` / ``p_drop_class`` drop each alone as
well. At sampling (:class:`LayoutModel`), rows with the null class get the zero map, so CFG contrasts
(map, c) with (no map, none). A spatial model also needs an image-level condition (C >= 1).

The model folder records ``spatial`` in cedm.json (kind, S, channels, annotator); a segments model keeps its
segment centroids in ``spatial_centroids.npy`` so ``--layout IMAGE`` annotates new images the same way.
Old models (3 input channels) load and sample unchanged.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cedm import io
from cedm.errors import CedmError

CENTROIDS_FILE = "spatial_centroids.npy"


def n_channels(kind: str, n_segments: int | None) -> int:
    return 1 if kind == "box" else int(n_segments)


def network_input(x: torch.Tensor, spatial: torch.Tensor | None, channels: int) -> torch.Tensor:
    """concat[x, map] for the network; None -> the zero "no map"."""
    if spatial is None:
        spatial = x.new_zeros((x.shape[0], channels) + tuple(x.shape[2:]))
    spatial = spatial.to(device=x.device, dtype=x.dtype)
    if spatial.shape[0] == 1 and x.shape[0] > 1:
        spatial = spatial.expand(x.shape[0], -1, -1, -1)
    if tuple(spatial.shape) != (x.shape[0], channels) + tuple(x.shape[2:]):
        raise CedmError(f"layout map of shape {tuple(spatial.shape)} does not fit this model: expected "
                        f"({x.shape[0]}, {channels}, {x.shape[2]}, {x.shape[3]})")
    return torch.cat([x, spatial], dim=1)


# --- encodings ------------------------------------------------------------------------------------------
def encode_boxes(boxes, source_resolution: int, resolution: int) -> torch.Tensor:
    """float (B, 1, r, r): +1 inside each box (pixels of ``source_resolution``), -1 outside."""
    from cedm.annotate.boxes import box_masks

    m = torch.from_numpy(box_masks(boxes, source_resolution, resolution)).float()
    return (2 * m - 1)[:, None]


def encode_segments(ids, n_segments: int, resolution: int) -> torch.Tensor:
    """float (B, S, r, r): the one-hot maps of uint8 (B, H, W) segment ids, area-resized to r."""
    t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if t.ndim == 2:
        t = t[None]
    if t.numel() and int(t.max()) >= n_segments:
        raise CedmError(f"segment id {int(t.max())} in a layout for a model with {n_segments} segments")
    oh = F.one_hot(t, n_segments).permute(0, 3, 1, 2).float()
    if oh.shape[-1] != resolution:
        oh = F.interpolate(oh, size=(resolution, resolution), mode="area" if oh.shape[-1] > resolution else "nearest")
    return oh


def flip_maps(maps: torch.Tensor, flips: np.ndarray) -> torch.Tensor:
    if not flips.any():
        return maps
    f = torch.from_numpy(np.asarray(flips)).to(maps.device)
    return torch.where(f[:, None, None, None], maps.flip(3), maps)


# --- training data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class SpatialData:
    """Per-image layouts for training: ``boxes`` int (N, 4) or ``masks`` uint8 (N, R, R) at the data resolution."""

    kind: str
    data_resolution: int
    boxes: np.ndarray | None = None
    masks: np.ndarray | None = None
    n_segments: int | None = None
    p_drop_map: float = 0.0    # drop the map alone (the class kept), besides dropping both with p_uncond
    p_drop_class: float = 0.0  # drop the class alone (the map kept)
    description: dict = dataclasses.field(default_factory=dict)
    centroids: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in ("box", "segments"):
            raise CedmError(f"unknown spatial kind {self.kind!r}: 'box' or 'segments'")
        if (self.kind == "box") != (self.boxes is not None) or (self.kind == "segments") != (self.masks is not None):
            raise CedmError("box layouts need boxes, segment layouts need masks")
        for name in ("p_drop_map", "p_drop_class"):
            if not 0 <= getattr(self, name) < 1:
                raise CedmError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def channels(self) -> int:
        return n_channels(self.kind, self.n_segments)

    def __len__(self) -> int:
        return len(self.boxes if self.kind == "box" else self.masks)

    def info(self) -> dict:
        return {"kind": self.kind, "n_segments": self.n_segments, "channels": self.channels,
                "p_drop_map": self.p_drop_map, "p_drop_class": self.p_drop_class, **self.description}

    def fingerprint(self) -> str:
        import hashlib
        arr = self.boxes if self.kind == "box" else self.masks
        h = hashlib.sha256(f"{self.kind}:{self.n_segments}:{self.p_drop_map}:{self.p_drop_class}".encode())
        h.update(np.ascontiguousarray(arr[: min(len(arr), 256)]).tobytes())
        return h.hexdigest()[:16]

    def maps(self, rows: np.ndarray, flips: np.ndarray, resolution: int, device, keep: np.ndarray) -> torch.Tensor:
        """(B, channels, r, r) layout maps of these rows, flipped like their images, zero where not ``keep``."""
        if self.kind == "box":
            m = encode_boxes(self.boxes[rows], self.data_resolution, resolution)
        else:
            order = np.argsort(rows, kind="stable")  # read a memmap in ascending order
            ids = np.empty((len(rows),) + self.masks.shape[1:], np.uint8)
            ids[order] = self.masks[rows[order]]
            m = encode_segments(ids, self.n_segments, resolution)
        m = flip_maps(m, flips) * torch.from_numpy(np.asarray(keep, np.float32))[:, None, None, None]
        return m.to(device)

    def draw_drops(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(map dropped alone, class dropped alone), drawn from the training's batch generator."""
        return rng.random(n) < self.p_drop_map, rng.random(n) < self.p_drop_class


def check_spatial_data(spatial: SpatialData, images, n_conditions: int, augment: float = 0.0) -> str:
    """Refuse layouts that do not fit the training data; the fingerprint that a resume must match."""
    if augment:
        raise CedmError("--augment moves and rotates the images but not their layout maps: train a spatial model "
                        "without --augment (flips are applied to both)")
    if not isinstance(spatial, SpatialData):
        raise CedmError(f"spatial must be a SpatialData, got {type(spatial).__name__}")
    if len(spatial) != len(images):
        raise CedmError(f"{len(spatial)} layouts for {len(images)} training images")
    if n_conditions < 1:
        raise CedmError("a spatial model also needs an image-level condition (e.g. --condition kmeans:K): "
                        "classifier-free guidance drops the map together with the cluster")
    if spatial.data_resolution != images.shape[1]:
        raise CedmError(f"layouts are for {spatial.data_resolution}px images, the training images are "
                        f"{images.shape[1]}px")
    return spatial.fingerprint()


def workspace_spatial(ws, spec: str, backbone: str | None = None, weights=None, device=None,
                      p_drop_map: float = 0.0, p_drop_class: float = 0.0, pretrained: bool = True) -> SpatialData:
    """The workspace's self-annotations (computed and cached when missing) as training layouts."""
    from cedm.annotate import store
    from cedm.features.backbones import DEFAULT_BACKBONE

    kind, S = store.parse_spatial(spec)
    backbone = backbone or DEFAULT_BACKBONE
    folder = store.annotate(ws, spec, backbone, weights, device, pretrained)
    meta = io.read_json(folder / "meta.json")
    desc = {"spec": spec, "backbone": backbone, "weights": meta.get("weights"),
            "artifact": meta.get("key"), "refine": meta.get("refine")}
    if kind == "box":
        return SpatialData("box", ws.resolution, boxes=io.load_npy(folder / "boxes.npy").astype(np.int64),
                           p_drop_map=p_drop_map, p_drop_class=p_drop_class, description=desc)
    return SpatialData("segments", ws.resolution, masks=io.load_npy(folder / "masks.npy", mmap=True), n_segments=S,
                       p_drop_map=p_drop_map, p_drop_class=p_drop_class, description=desc,
                       centroids=io.load_npy(folder / "centroids.npy"))


def save_centroids(out_dir, spatial: SpatialData) -> None:
    if spatial.centroids is not None:
        io.save_npy(Path(out_dir) / CENTROIDS_FILE, np.asarray(spatial.centroids, np.float32))


# --- sampling with a layout -------------------------------------------------------------------------------
class LayoutModel(torch.nn.Module):
    """A spatial C-EDM bound to layout maps: rows with a cluster see the map, rows with the null class see
    the zero map, so classifier-free guidance (one batched call of [cond; uncond]) drops both together."""

    def __init__(self, model, maps: torch.Tensor):
        super().__init__()
        if not getattr(model, "spatial_channels", 0):
            raise CedmError("this model was trained without a spatial condition: it takes no layout")
        if maps.ndim != 4 or maps.shape[1] != model.spatial_channels or maps.shape[-1] != model.resolution:
            raise CedmError(f"layout maps of shape {tuple(maps.shape)} do not fit this model (expected "
                            f"(B, {model.spatial_channels}, {model.resolution}, {model.resolution}))")
        self.model = model
        self.register_buffer("maps", maps.float(), persistent=False)
        self.calls: list[torch.Tensor] = []  # what the network was given (for inspection; cleared by callers)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    def forward(self, x, sigma, class_labels=None, map_rows: torch.Tensor | None = None):
        """``map_rows`` (B,) bool: which rows see the map (default: the rows with a cluster)."""
        B = x.shape[0]
        m = self.maps
        if m.shape[0] not in (1, B):
            reps = B // m.shape[0]
            if reps * m.shape[0] != B:
                raise CedmError(f"{m.shape[0]} layouts for a batch of {B} images")
            m = m.repeat(reps, 1, 1, 1)  # the [cond; uncond] halves of a guided call
        m = m.expand(B, -1, -1, -1).to(x.device)
        if map_rows is not None:
            m = m * map_rows.to(device=m.device, dtype=m.dtype)[:, None, None, None]
        elif class_labels is None:
            m = torch.zeros_like(m)
        else:
            m = m * (class_labels != self.model.uncond_index).to(m.dtype)[:, None, None, None]
        return self.model(x, sigma, class_labels, spatial=m)


_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_RE = re.compile(rf"^{_NUM},{_NUM},{_NUM},{_NUM}$")


def model_spatial(model) -> dict:
    sp = (getattr(model, "info", None) or {}).get("spatial")
    if not sp or not getattr(model, "spatial_channels", 0):
        raise CedmError("this model was trained without a spatial condition: it takes no layout "
                        "(train one with --spatial box or --spatial segments:S)")
    return sp


def layout_maps(model, layout, model_dir=None, device=None) -> tuple[torch.Tensor, dict]:
    """(1, channels, r, r) layout map for a spatial model and a description, from ``layout``:
    box coordinates ``"x0,y0,x1,y1"`` (pixels of the model resolution, end exclusive), a mask PNG (pixel value
    = segment id; for a box model its non-zero pixels' bounding box), or any other image (self-annotated with
    the model's own annotator), or an array (int (4,) box, uint8 (H, W) ids, uint8 (H, W, 3) image)."""
    sp = model_spatial(model)
    kind, S, r = sp["kind"], sp.get("n_segments"), int(model.resolution)
    if isinstance(layout, str) and _BOX_RE.match(layout):
        box = [float(v) for v in _BOX_RE.match(layout).groups()]
        return _from_box(kind, box, r), {"layout": "box", "box": box}
    if isinstance(layout, (str, Path)):
        from cedm.annotate.export import read_mask

        p = Path(layout).expanduser()
        if not p.is_file():
            raise CedmError(f"layout {str(layout)!r} is neither box coordinates x0,y0,x1,y1 nor an existing file")
        arr = _read_layout_file(p, S if kind == "segments" else None, read_mask)
        desc = {"layout": "mask" if arr.ndim == 2 else "image", "file": p.name}
    else:
        arr = np.asarray(layout)
        if arr.shape == (4,):
            return _from_box(kind, arr.tolist(), r), {"layout": "box", "box": arr.tolist()}
        desc = {"layout": "mask" if arr.ndim == 2 else "image"}
    if arr.ndim == 3:  # an image: its self-annotation
        arr = annotate_for_model(model, arr, model_dir, device)
        if kind == "box":
            return _from_box(kind, arr.tolist(), r), {**desc, "box": arr.tolist()}
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise CedmError(f"a layout mask must be uint8 (H, W), got {arr.dtype} {arr.shape}")
    if kind == "box":
        ys, xs = np.nonzero(arr)
        if not len(xs):
            raise CedmError("the layout mask is empty: a box model needs non-zero pixels to place the box")
        s = r / arr.shape[1]
        box = [xs.min() * s, ys.min() * r / arr.shape[0], (xs.max() + 1) * s, (ys.max() + 1) * r / arr.shape[0]]
        return _from_box(kind, box, r), {**desc, "box": [round(v, 2) for v in box]}
    if arr.shape[0] != arr.shape[1]:
        raise CedmError(f"a segment layout must be square, got {arr.shape[1]}x{arr.shape[0]}")
    return encode_segments(arr, int(S), r), desc


def _from_box(kind: str, box, r: int) -> torch.Tensor:
    from cedm.annotate.boxes import check_boxes

    if kind != "box":
        raise CedmError("box coordinates are a layout for a box model; this model takes segment maps "
                        "(a mask PNG or an image)")
    b = np.asarray(box, dtype=np.float64)
    if (b < 0).any() or (b[2:] > r).any():
        raise CedmError(f"box {[round(v, 2) for v in b.tolist()]} is outside the model's {r}x{r} image")
    return encode_boxes(check_boxes(b, r), r, r)


def _read_layout_file(p: Path, n_segments, read_mask) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            mode = im.mode
    except (UnidentifiedImageError, OSError):
        raise CedmError(f"layout file {p.name} is not a readable image") from None
    if mode in ("L", "P"):
        return read_mask(p, n_segments)
    from cedm.dataset.imaging import square_resize, to_rgb

    with Image.open(p) as im:
        return square_resize(to_rgb(im), max(8, min(512, *im.size)))


def model_annotator(model, model_dir=None, device=None):
    """The model's own annotator as ``annotate(images uint8 (N, H, W, 3)) -> annotations at the model
    resolution`` (boxes int (N, 4) or segment ids uint8 (N, r, r)): images are square-resized to r first."""
    from PIL import Image

    from cedm.annotate.boxes import BoxAnnotator
    from cedm.annotate.segments import SegmentAnnotator
    from cedm.dataset.imaging import square_resize

    sp = model_spatial(model)
    r = int(model.resolution)
    if sp["kind"] == "box":
        annot = BoxAnnotator(sp["backbone"], device=device)
    else:
        if model_dir is None or not (Path(model_dir) / CENTROIDS_FILE).is_file():
            raise CedmError("this segments model has no spatial_centroids.npy next to it: give a mask PNG instead")
        cent = io.load_npy(Path(model_dir) / CENTROIDS_FILE)
        annot = SegmentAnnotator(cent, sp["backbone"], device=device, refine=sp.get("refine") != "none")

    def annotate(images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise CedmError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        if images.shape[1:3] != (r, r):
            images = np.stack([square_resize(Image.fromarray(im), r) for im in images])
        return annot(images)

    return annotate


def annotate_for_model(model, image: np.ndarray, model_dir=None, device=None) -> np.ndarray:
    """The self-annotation of one uint8 (H, W, 3) image by the model's annotator, at the model resolution."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CedmError(f"expected a uint8 RGB image, got {image.dtype} {image.shape}")
    return model_annotator(model, model_dir, device)(image[None])[0]


def layout_of_maps(maps) -> np.ndarray:
    """What layout_iou compares, from encoded maps (B, ch, r, r): boxes int (B, 4) (the bounding box of the
    positive pixels of a box map) or segment ids uint8 (B, r, r) (the arg-max of a segment map)."""
    m = torch.as_tensor(maps).detach().cpu()
    if m.ndim != 4 or not m.shape[1]:
        raise CedmError(f"layout maps must be (B, channels, r, r), got {tuple(m.shape)}")
    if m.shape[1] > 1:
        return m.argmax(1).numpy().astype(np.uint8)
    out = []
    for one in m[:, 0].numpy() > 0:
        ys, xs = np.nonzero(one)
        if not len(xs):
            raise CedmError("an empty box map has no box")
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(out, np.int64)


def generate_with_layout(model, layout_map: torch.Tensor, n: int, **kw):
    """cedm.sampling.generate.generate under a layout: one map (1, ch, r, r) for every image, or one per image
    (n, ch, r, r; sampled in one batch). Returns (images, records) with the layout noted in each record."""
    from cedm.sampling.generate import generate

    if layout_map.shape[0] not in (1, n):
        raise CedmError(f"{layout_map.shape[0]} layouts for {n} images: give one, or one per image")
    if layout_map.shape[0] == n and n > 1:
        kw["batch_size"] = n
    wrapped = LayoutModel(model, layout_map)
    return generate(wrapped, n, **kw)


def guide_kw(guide_on: str, kw: dict) -> dict:
    """generate()'s keyword arguments for guiding on ``guide_on`` (both, layout or cluster)."""
    if guide_on not in GUIDE_ON:
        raise CedmError(f"guide_on must be one of {', '.join(GUIDE_ON)}, got {guide_on!r}")
    kw = dict(kw)
    if guide_on != "both":
        from cedm.sampling.guidance import Guidance
        kw["guidance"] = Guidance(kw.get("guidance", 1.0), kw.pop("guidance_interval", None), kind=guide_on)
        if guide_on == "layout":  # the cluster is not used: any conditional request will do
            kw.update(clusters=0, uncond=False)
    return kw


def sample_with_layout(model_dir, layout, n: int, device=None, ema: bool = True, guide_on: str = "both", **kw):
    """Load a spatial model folder and sample ``n`` images under ``layout`` (see :func:`layout_maps`);
    ``guide_on``: both (cfg: (map, c) vs (no map, none)), layout ((map, none) vs (no map, none)) or cluster
    ((map, c) vs (map, none)); ``kw`` go to cedm.sampling.generate.generate. Records carry the layout."""
    from cedm.device import resolve_device
    from cedm.model.edm import load_model

    dev = resolve_device(device) if not hasattr(device, "type") else device
    model = load_model(model_dir, device=dev, ema=ema)
    maps, desc = layout_maps(model, layout, model_dir, dev)
    images, records = generate_with_layout(model, maps.to(dev), n, **guide_kw(guide_on, kw))
    extra = {"guide_on": guide_on, **({"condition": None} if guide_on == "layout" else {})}
    return images, [{**r, **desc, **extra} for r in records]


# --- layout fidelity --------------------------------------------------------------------------------------
def layout_fidelity(models: dict, kind: str, layouts, clusters, annotate, n_segments: int | None = None,
                    **generate_kw) -> dict:
    """Mean layout IoU per model: each model samples one image per layout (spatial models under the layout,
    the others with the same cluster and seed: their IoU is the baseline), ``annotate(images)`` self-annotates
    the samples (boxes (N, 4) or id maps (N, r, r), same annotator as the layouts) and
    cedm.annotate.metrics.layout_iou compares. ``layouts``: boxes (N, 4) in pixels of the model resolution or
    uint8 id maps (N, r, r); ``clusters``: one per layout (None: unconditional). Returns
    {name: {"iou": mean, "per_image": [...]}}."""
    from cedm.annotate.metrics import layout_iou
    from cedm.sampling.generate import generate

    layouts = np.asarray(layouts)
    n = len(layouts)
    out = {}
    for name, model in models.items():
        kw = dict(generate_kw, batch_size=n)
        if clusters is None or not model.n_conditions:
            kw["uncond"] = True
        else:
            kw["clusters"] = [int(c) for c in clusters]
        if getattr(model, "spatial_channels", 0):
            r = int(model.resolution)
            maps = (encode_boxes(layouts, r, r) if kind == "box" else encode_segments(layouts, int(n_segments), r))
            images, _ = generate_with_layout(model, maps, n, **kw)
        else:
            images, _ = generate(model, n, **kw)
        iou = layout_iou(layouts, annotate(images), kind)
        out[name] = {"iou": float(np.mean(iou)), "per_image": [round(float(v), 4) for v in iou]}
    return out


COMPARISON = (("image-level", None), ("layout only", "layout"), ("layout + cluster", "both"))


def compare_guidance(model, maps: torch.Tensor, cluster: int, n: int = 4, guidance: float = 2.0, annotate=None,
                     progress=None, **generate_kw) -> list[dict]:
    """The same-noise comparison of a spatial model under one layout map (1, ch, r, r): the same seeds sampled
    with image-level guidance (no layout: the zero map, cluster vs none), layout-only guidance ((map, none) vs
    (no map, none); needs p_drop_class > 0, else left out with a note) and layout + cluster ((map, c) vs
    (no map, none)). ``annotate(images)``: the annotator for the layout IoU of every sample (e.g.
    :func:`model_annotator`; None: no IoU). Returns one row per kind: {"name", "images", "records", "iou"
    (per image, or None), "mean_iou", "note"}."""
    from cedm.annotate.metrics import layout_iou
    from cedm.sampling.generate import generate

    sp = model_spatial(model)
    if maps.ndim != 4 or maps.shape[0] != 1:
        raise CedmError(f"the comparison takes one layout map (1, channels, r, r), got {tuple(maps.shape)}")
    target = layout_of_maps(maps)
    rows = []
    for k, (name, guide_on) in enumerate(COMPARISON):
        step = None
        if progress is not None:
            def step(i, t, d="", k=k, name=name):
                progress(k * t + i, len(COMPARISON) * t, f"{name}: {d}")
        kw = dict(generate_kw, clusters=int(cluster), guidance=float(guidance), progress=step)
        if guide_on == "layout" and float(sp.get("p_drop_class", 0.0)) <= 0:
            rows.append({"name": name, "images": None, "records": [], "iou": None, "mean_iou": None,
                         "note": "needs a model trained with --p-drop-class > 0"})
            continue
        if guide_on is None:
            images, records = generate(model, n, **kw)
        else:
            images, records = generate_with_layout(model, maps, n, **guide_kw(guide_on, kw))
        iou = None
        if annotate is not None:
            iou = [round(float(v), 4) for v in layout_iou(np.repeat(target, n, 0), annotate(images), sp["kind"])]
        records = [{**r, "comparison": name, "guide_on": guide_on or "image-level",
                    **({"condition": None} if guide_on == "layout" else {}),
                    **({"layout_iou": iou[i]} if iou is not None else {})} for i, r in enumerate(records)]
        rows.append({"name": name, "images": images, "records": records, "iou": iou,
                     "mean_iou": None if iou is None else float(np.mean(iou)), "note": ""})
    return rows


# --- guiding on the layout alone, or on the cluster within the layout ---------------------------------------
# Two entries of the sampling core's GUIDANCE registry (cedm.sampling.guidance); they need a LayoutModel (the
# layout bound to the network) and a model trained with --p-drop-class > 0: both use the pair (map, none).
#   layout:  D = D(no map, none) + w (D(map, none) - D(no map, none))
#   cluster: D = D(map, none)    + w (D(map, c)    - D(map, none))
# (the default cfg through a LayoutModel contrasts (map, c) with (no map, none): both together).
def _contrast_check(model, g, conditional: bool) -> None:
    if not isinstance(model, LayoutModel):
        raise CedmError(f"{g.kind} guidance needs a layout (cedm sample --layout)")
    if not conditional and g.kind == "cluster":
        raise CedmError("cluster guidance within a layout needs a cluster")
    if float(model_spatial(model).get("p_drop_class", 0.0)) <= 0 and (g.scale != 1.0 or g.kind == "layout"):
        raise CedmError(f"{g.kind} guidance needs the model's (map, no cluster) branch, but it was trained with "
                        "p_drop_class = 0; train with --p-drop-class > 0 (or guide on both together)")


def _contrast_build(net, labels: torch.Tensor, g):
    none = torch.full_like(labels, net.uncond_index)
    ones = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    w, layout_only = g.scale, g.kind == "layout"
    cond_labels = none if layout_only else labels
    both_labels = torch.cat([cond_labels, none])
    both_rows = torch.cat([ones, ~ones if layout_only else ones])

    def guided(x, sigma):
        if w == 1.0 or not g.active(sigma):
            return net(x, sigma, cond_labels, map_rows=ones)
        d_cond, d_uncond = net(torch.cat([x, x]), sigma, both_labels, map_rows=both_rows).chunk(2)
        return torch.lerp(d_uncond, d_cond, w)

    return guided


def _register_kinds() -> None:
    from cedm.sampling.guidance import GUIDANCE, GuidanceKind, register_guidance

    for kind in ("layout", "cluster"):
        if kind not in GUIDANCE:
            register_guidance(GuidanceKind(kind, build=_contrast_build, check=_contrast_check))


_register_kinds()
GUIDE_ON = ("both", "layout", "cluster")

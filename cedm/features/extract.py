"""Feature extraction: a workspace's images -> one feature vector per image, cached in the workspace.

The images stream from the memory-mapped (N, R, R, 3) uint8 array in batches; a background thread reads
(and on CPU also resizes) the next batch while the network runs on the current one. Results are written
to the workspace's scratch folder in fixed chunks of rows, so an interrupted run resumes at the first
missing chunk and gives exactly what an uninterrupted run gives. When all chunks exist they are assembled
into the artifact ``artifacts/features/<key>/features.npy``, key = hash(dataset, backbone, weights identity,
preprocessing); a repeated call only reads that file.

Storage precision: features are stored as float16. The network itself runs in bfloat16 autocast on GPU and
on CPUs with native bf16 (8-bit mantissa), so float16 (11-bit) keeps everything the computation produced,
halves the disk/memory footprint (the shipped demo commits its features) and, after L2 normalisation,
changes cosine similarities by less than 1e-3. Values that would not fit float16 fall back to float32.
Callers always get float32: L2-normalised rows by default, which is what clustering uses.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from cedm import io
from cedm.cache import LRU
from cedm.errors import CedmError
from cedm.features.backbones import (DEFAULT_BACKBONE, Backbone, build_backbone, for_workspace, get_spec,
                                     weights_identity)

STAGE = "features"
FEATURES_FILE = "features.npy"
CHUNK_ROWS = 2048          # rows per resumable chunk: a few minutes of CPU work at most
FORMAT_VERSION = 1         # bump when the extraction itself changes (invalidates caches)
FLOAT16_MAX = 65000.0
Progress = Callable[[int, int, str], None]


# --- the runtime model -------------------------------------------------------------------------------
def default_batch_size(backbone: Backbone) -> int:
    return 256 if backbone.device.type == "cuda" else 32


# --- the cache -------------------------------------------------------------------------------------
def feature_params(backbone: str = DEFAULT_BACKBONE, weights=None, pretrained: bool = True) -> dict:
    """The cache key of a feature artifact (besides the dataset): backbone, weights identity, preprocessing."""
    spec = get_spec(backbone)
    return {"backbone": spec.name, "weights": weights_identity(spec.name, weights, pretrained),
            "preprocessing": spec.preprocessing, "version": FORMAT_VERSION}


@for_workspace
def find_features(ws, backbone: str = DEFAULT_BACKBONE, weights=None, pretrained: bool = True) -> Path | None:
    """The artifact folder of already computed features, or None (never computes)."""
    return ws.find_artifact(STAGE, feature_params(backbone, weights, pretrained))


def list_features(ws) -> list[dict]:
    """Every feature artifact of the workspace (oldest first): meta.json plus its folder under 'path'."""
    return [{**meta, "path": str(folder)} for folder, meta in ws.list_artifacts(STAGE)]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def get_features(ws, backbone: str = DEFAULT_BACKBONE, weights=None, device=None, batch_size: int | None = None,
                 normalized: bool = True, progress: Progress | None = None, *, pretrained: bool = True,
                 chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """float32 (N, D) features of the workspace's images in row order, computed once and then read from disk.

    ``normalized=True`` returns L2-normalised rows (what clustering uses), else the raw backbone output.
    ``progress(done, total, desc)`` is called after every batch; an interrupted call resumes on the next.
    """
    folder = features_artifact(ws, backbone, weights, device, batch_size, progress,
                               pretrained=pretrained, chunk_rows=chunk_rows)
    raw = io.load_npy(folder / FEATURES_FILE)
    return l2_normalize(raw) if normalized else raw.astype(np.float32)


@for_workspace
def features_artifact(ws, backbone: str = DEFAULT_BACKBONE, weights=None, device=None,
                      batch_size: int | None = None, progress: Progress | None = None, *,
                      pretrained: bool = True, chunk_rows: int = CHUNK_ROWS) -> Path:
    """The artifact folder (features.npy + meta.json) for these parameters, computing it when missing."""
    params = feature_params(backbone, weights, pretrained)
    found = ws.find_artifact(STAGE, params)
    if found is not None:
        return found
    if batch_size is not None and int(batch_size) < 1:
        raise CedmError(f"batch size must be at least 1, got {batch_size}")
    if int(chunk_rows) < 1:
        raise CedmError(f"chunk_rows must be at least 1, got {chunk_rows}")
    from cedm import hub
    with hub.download_progress(progress):  # a first use downloads the weights (when allowed), with progress
        model = cached_backbone(backbone, weights, device, pretrained)  # fails (offline, bad file) before any write
    _compute(ws, model, params, batch_size or default_batch_size(model), int(chunk_rows), progress)
    return ws.find_artifact(STAGE, params)


def export_features(ws, backbone: str = DEFAULT_BACKBONE, path: str | os.PathLike = "features.npy", weights=None,
                    normalized: bool = False, **kw) -> Path:
    """Write float32 (N, D) features (row i = ``ws.paths[i]``) to ``path`` (.npy), computing them if needed."""
    path = Path(path).expanduser()
    if path.suffix != ".npy":
        raise CedmError(f"export path must end in .npy, got {str(path)!r}")
    if path.is_dir():
        raise CedmError(f"export path {str(path)!r} is a folder")
    feats = get_features(ws, backbone, weights, normalized=normalized, **kw)
    io.save_npy(path, feats)
    return path


# --- the extraction loop ------------------------------------------------------------------------------
def _chunk_file(scratch: Path, start: int, stop: int) -> Path:
    return scratch / f"rows-{start:09d}-{stop:09d}.npy"


def _compute(ws, model: Backbone, params: dict, batch_size: int, chunk_rows: int, progress: Progress | None):
    import torch

    n = ws.n
    scratch_params = {**params, "chunk_rows": chunk_rows}
    scratch = ws.scratch_dir(STAGE, scratch_params)
    io.clean_stale_tmp(scratch)
    chunks = [(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    todo = [c for c in chunks if not _chunk_file(scratch, *c).is_file()]
    done = n - sum(e - s for s, e in todo)
    desc = f"features {model.name}"
    if progress:
        progress(done, n, desc + (f" (resuming at {done} of {n})" if done else ""))

    images = ws.images
    on_gpu = model.device.type == "cuda"
    batches = [(cs, ce, s, min(s + batch_size, ce)) for cs, ce in todo for s in range(cs, ce, batch_size)]

    def load(batch):
        cs, ce, s, e = batch
        x = torch.from_numpy(np.array(images[s:e]))  # a writable copy of just these rows of the memmap
        # GPU: pinned uint8 goes over the bus (4x less than float) and is resized there; CPU: resize here,
        # in the background thread, while the main thread runs the network.
        return batch, (x.pin_memory() if on_gpu else model.preprocess(x))

    t0, computed, pending = time.perf_counter(), 0, []
    # closing() stops the reader thread at once when the loop is left by an exception (e.g. Ctrl-C)
    with contextlib.closing(prefetch(map(load, batches), depth=2)) as stream:
        for (cs, ce, s, e), x in stream:
            if on_gpu:
                x = model.preprocess(x)
            pending.append(model.embed(x))
            computed += e - s
            done += e - s
            if e == ce:  # chunk complete: make it durable before going on
                feats = torch.cat(pending).cpu().numpy()
                pending = []
                if not np.isfinite(feats).all():
                    raise CedmError(f"backbone {model.name} produced non-finite features (rows {cs}-{ce}); "
                                    "the weights file is probably broken")
                io.save_npy(_chunk_file(scratch, cs, ce), feats)
            if progress:
                rate = computed / max(time.perf_counter() - t0, 1e-9)
                progress(done, n, f"{desc}: {rate:,.0f} images/s")
    seconds = time.perf_counter() - t0

    # assemble the chunks (one at a time, straight into the artifact file)
    peak = max(float(np.abs(io.load_npy(_chunk_file(scratch, *c), mmap=True)).max()) for c in chunks)
    dtype = np.float16 if peak < FLOAT16_MAX else np.float32
    info = {"backbone": model.name, "weights": model.weights_id,
            "weights_file": getattr(model, "weights_record", None), "n": n, "dim": model.spec.feature_dim,
            "dtype": np.dtype(dtype).name, "device": str(model.device),
            "autocast": str(model.amp_dtype).replace("torch.", "") if model.amp_dtype else "float32",
            "batch_size": batch_size, "seconds": round(seconds, 3),
            "images_per_s": round(computed / seconds, 2) if computed and seconds > 0 else None}
    with ws.write_artifact(STAGE, params, info) as tmp:
        out = np.lib.format.open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=dtype,
                                        shape=(n, model.spec.feature_dim))
        for c in chunks:
            out[c[0]:c[1]] = io.load_npy(_chunk_file(scratch, *c))
        out.flush()
        del out
    ws.clear_scratch(STAGE, scratch_params)


_END = object()


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` produced by a background thread, up to ``depth`` ahead (exceptions are re-raised)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((False, e))

    thread = threading.Thread(target=work, name="cedm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


# --- single query images ------------------------------------------------------------------------------
_MODELS = LRU(2)  # built backbones per (name, weights, device)


def cached_backbone(backbone: str = DEFAULT_BACKBONE, weights=None, device=None,
                    pretrained: bool = True) -> Backbone:
    """build_backbone with the last few models kept in memory (the app extracts, then queries single images)."""
    from cedm.device import resolve_device

    dev = resolve_device(device) if not hasattr(device, "type") else device
    key = (backbone, weights_identity(backbone, weights, pretrained), str(dev))
    return _MODELS.get(key, lambda: build_backbone(backbone, weights, pretrained, dev))


def extract_one(image, backbone: str = DEFAULT_BACKBONE, weights=None, device=None, normalized: bool = True,
                resolution: int | None = None, *, pretrained: bool = True) -> np.ndarray:
    """float32 (D,) features of one query image (PIL image or uint8 array of any size).

    The image is center-cropped and resized to ``resolution`` exactly as an import does (pass the
    workspace's resolution so a query is treated like a dataset image); None keeps its size.
    """
    from PIL import Image

    from cedm.dataset.imaging import square_resize

    if isinstance(image, np.ndarray):
        bad_shape = image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4))
        if image.dtype != np.uint8 or bad_shape:
            raise CedmError(f"expected a uint8 image of shape (H, W), (H, W, 3) or (H, W, 4), "
                            f"got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise CedmError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    if resolution is None:
        resolution = min(image.size)
    arr = square_resize(image, int(resolution))
    f = cached_backbone(backbone, weights, device, pretrained)(arr[None])
    return (l2_normalize(f) if normalized else f)[0]

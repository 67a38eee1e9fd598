"""A 2-D map of a workspace's features: UMAP (umap-learn, cosine metric) of the L2-normalised rows.

Cached as a workspace artifact (stage ``map``) keyed by the features it was made from, so the app draws
a computed map instantly. Above ``max_points`` images the map embeds a seeded random sample of rows
(UMAP's cost and a browser's drawing both grow with the points); ``rows`` says which rows were embedded.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

from cedm import io
from cedm.errors import CedmError
from cedm.features.backbones import DEFAULT_BACKBONE, for_workspace
from cedm.features.extract import FEATURES_FILE, feature_params, features_artifact, l2_normalize

STAGE = "map"
MAX_POINTS = 50_000
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
log = logging.getLogger("cedm.features")


@for_workspace
def map_params(ws, backbone: str = DEFAULT_BACKBONE, weights=None, seed: int = 0,
               max_points: int = MAX_POINTS, pretrained: bool = True) -> dict:
    """The cache key of a map: the features' key, the sample it embeds, and the UMAP settings."""
    if int(max_points) < 2:
        raise CedmError(f"a map needs at least 2 points, got max_points={max_points}")
    return {"features": feature_params(backbone, weights, pretrained), "seed": int(seed),
            "n_points": int(min(ws.n, int(max_points))), "umap": UMAP_SETTINGS}


def map_rows(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """The rows a map embeds: all of them, or a sorted seeded random sample of ``max_points``."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, int(max_points), replace=False)).astype(np.int64)


def find_map(ws, backbone: str = DEFAULT_BACKBONE, weights=None, seed: int = 0,
             max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached map (rows, xy), or None (never computes)."""
    found = ws.find_artifact(STAGE, map_params(ws, backbone, weights, seed, max_points))
    return _load(found) if found is not None else None


def _load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return io.load_npy(folder / "rows.npy"), io.load_npy(folder / "xy.npy")


def map_2d(ws, backbone: str = DEFAULT_BACKBONE, weights=None, seed: int = 0, max_points: int = MAX_POINTS,
           progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 (M,), xy float32 (M, 2)): a UMAP of the workspace's features, computed once.

    M = N, or ``max_points`` rows drawn with ``seed`` when N is larger (logged, and visible in ``rows``).
    Features are computed first if the workspace has none for this backbone (``progress`` reports both)."""
    params = map_params(ws, backbone, weights, seed, max_points)
    found = ws.find_artifact(STAGE, params)
    if found is not None:
        return _load(found)
    folder = features_artifact(ws, backbone, weights, progress=progress)
    rows = map_rows(ws.n, params["n_points"], seed)
    if len(rows) < ws.n:
        log.info("map of %s: embedding a random sample of %d of %d images (seed %d)",
                 ws.name, len(rows), ws.n, seed)
    feats = io.load_npy(folder / FEATURES_FILE, mmap=True)
    x = l2_normalize(np.asarray(feats[rows] if len(rows) < ws.n else feats))
    if progress:
        progress(0, 1, f"map: UMAP of {len(rows):,} points")
    t0 = time.perf_counter()
    xy = _umap(x, seed)
    if progress:
        progress(1, 1, "map done")
    info = {"n": ws.n, "n_points": len(rows), "sampled": len(rows) < ws.n,
            "seconds": round(time.perf_counter() - t0, 3)}
    with ws.write_artifact(STAGE, params, info) as d:
        io.save_npy(d / "rows.npy", rows)
        io.save_npy(d / "xy.npy", xy)
    return rows, xy


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    n = len(x)
    if n <= 3:  # UMAP's spectral layout needs a few points; a trivial layout says the same
        return np.column_stack([np.arange(n), np.zeros(n)]).astype(np.float32)
    import umap

    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": wanted (reproducible)
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, random_state=int(seed),
                            **{**UMAP_SETTINGS, "n_neighbors": min(UMAP_SETTINGS["n_neighbors"], n - 1)})
        xy = reducer.fit_transform(x)
    return np.asarray(xy, dtype=np.float32)

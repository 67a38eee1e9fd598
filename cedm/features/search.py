"""Nearest neighbours of query images among a workspace's images, by cosine similarity of features.

An exact faiss inner-product index over the L2-normalised features (inner product = cosine), built once
per features artifact and kept in memory for the next query (artifacts never change once published).
"""
from __future__ import annotations


import numpy as np

from cedm import io
from cedm.cache import LRU
from cedm.errors import CedmError
from cedm.features.backbones import DEFAULT_BACKBONE
from cedm.features.extract import FEATURES_FILE, features_artifact, l2_normalize

_INDEXES = LRU(2)  # an index holds N x D float32: keep only the last few


def feature_index(ws, backbone: str = DEFAULT_BACKBONE, weights=None, progress=None):
    """The faiss IndexFlatIP of the workspace's normalised features (features computed if missing)."""
    import faiss

    folder = features_artifact(ws, backbone, weights, progress=progress)

    def make():
        x = l2_normalize(io.load_npy(folder / FEATURES_FILE))
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index

    return _INDEXES.get(str(folder.resolve()), make)


def nearest_neighbours(ws, backbone: str = DEFAULT_BACKBONE, query_features=None, k: int = 8, weights=None,
                       progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64, cosine float32) of the k most similar workspace images, most similar first.

    ``query_features`` is one (D,) vector -> results of shape (k,), or (Q, D) -> (Q, k). The queries are
    normalised here, so raw or normalised features both work; k is capped at the number of images."""
    q = np.asarray(query_features, dtype=np.float32)
    single = q.ndim == 1
    q = q[None] if single else q
    if q.ndim != 2 or q.shape[0] == 0:
        raise CedmError(f"query features must have shape (D,) or (Q, D), got {np.shape(query_features)}")
    if not np.isfinite(q).all():
        raise CedmError("query features contain NaN or infinite values")
    if int(k) < 1:
        raise CedmError(f"k must be at least 1, got {k}")
    index = feature_index(ws, backbone, weights, progress)
    if q.shape[1] != index.d:
        raise CedmError(f"query features have {q.shape[1]} dimensions but the {backbone} features of "
                        f"workspace {ws.name!r} have {index.d}")
    sims, rows = index.search(l2_normalize(q), int(min(int(k), index.ntotal)))
    rows, sims = rows.astype(np.int64), np.clip(sims, -1.0, 1.0).astype(np.float32)
    return (rows[0], sims[0]) if single else (rows, sims)


def more_like(ws, rows, backbone: str = DEFAULT_BACKBONE, k: int = 24, weights=None,
              progress=None) -> tuple[np.ndarray, np.ndarray]:
    """"More like these": the k images closest (cosine) to the mean of the given rows' normalised features,
    leaving out the rows themselves. Returns (rows, cosine), most similar first."""
    rows = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
    if len(rows) == 0:
        raise CedmError("select some images first")
    if rows.min() < 0 or rows.max() >= ws.n:
        raise CedmError(f"rows must be in 0..{ws.n - 1}")
    folder = features_artifact(ws, backbone, weights, progress=progress)
    feats = io.load_npy(folder / FEATURES_FILE, mmap=True)
    centre = l2_normalize(np.asarray(feats[rows], dtype=np.float32)).mean(0)
    found, cos = nearest_neighbours(ws, backbone, centre, k=int(k) + len(rows), weights=weights, progress=progress)
    keep = ~np.isin(found, rows)
    return found[keep][:int(k)], cos[keep][:int(k)]

"""The 2-D map (cached UMAP) and nearest-neighbour search of a workspace's features."""
from __future__ import annotations

import numpy as np
import pytest

from cedm import workspace as wsp
from cedm.errors import CedmError
from cedm.features import extract, projection, search
from cedm.features.extract import feature_params

BACKBONE = "efficientnet_lite0"


def _workspace_with_features(home, feats: np.ndarray) -> wsp.Workspace:
    """A workspace whose cached features are ``feats`` (known structure instead of a network's output)."""
    n = len(feats)
    images = np.random.default_rng(1).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    ws = wsp.create_from_array(home, "feats", images)
    with ws.write_artifact(extract.STAGE, feature_params(BACKBONE), {"backbone": BACKBONE}) as d:
        np.save(d / extract.FEATURES_FILE, feats.astype(np.float16))
    return ws


def _blobs(n_per: int = 60, k: int = 3, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


def test_nearest_neighbours_finds_each_row_itself(tmp_path):
    feats, labels = _blobs()
    ws = _workspace_with_features(tmp_path, feats)
    rows, cos = search.nearest_neighbours(ws, BACKBONE, feats[17] * 3.0, k=5)  # scale does not matter
    assert rows.shape == cos.shape == (5,) and rows[0] == 17 and cos[0] == pytest.approx(1.0, abs=1e-3)
    assert (np.diff(cos) <= 1e-6).all() and (labels[rows] == labels[17]).all()
    rows, cos = search.nearest_neighbours(ws, BACKBONE, feats[[3, 150]], k=2)
    assert rows.shape == (2, 2) and rows[0, 0] == 3 and rows[1, 0] == 150
    # brute force agrees
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    expect = np.argsort(-(x @ x[150]))[:2]
    np.testing.assert_array_equal(rows[1], expect)
    assert len(search.nearest_neighbours(ws, BACKBONE, feats[0], k=10_000)[0]) == len(feats)  # k capped
    assert search.feature_index(ws, BACKBONE) is search.feature_index(ws, BACKBONE)  # kept in memory
    with pytest.raises(CedmError, match="dimensions"):
        search.nearest_neighbours(ws, BACKBONE, np.ones(7), k=2)
    with pytest.raises(CedmError, match="NaN"):
        search.nearest_neighbours(ws, BACKBONE, np.full(32, np.nan), k=2)
    with pytest.raises(CedmError, match="at least 1"):
        search.nearest_neighbours(ws, BACKBONE, feats[0], k=0)


def test_map_separates_blobs_is_cached_and_samples_above_the_limit(tmp_path, monkeypatch):
    feats, labels = _blobs()
    ws = _workspace_with_features(tmp_path, feats)
    assert projection.find_map(ws, BACKBONE) is None
    seen = []
    rows, xy = projection.map_2d(ws, BACKBONE, progress=lambda d, t, desc: seen.append(desc))
    assert rows.dtype == np.int64 and xy.dtype == np.float32 and xy.shape == (len(feats), 2)
    np.testing.assert_array_equal(rows, np.arange(len(feats)))
    assert any("UMAP" in s for s in seen)
    # the blobs stay apart in 2-D: every point's nearest map neighbour is from its own blob
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.97
    # cached: no second UMAP
    monkeypatch.setattr(projection, "_umap", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    rows2, xy2 = projection.map_2d(ws, BACKBONE)
    np.testing.assert_array_equal(xy2, xy)
    monkeypatch.undo()
    # above max_points: a sorted, seeded sample of distinct rows, cached under its own key
    rows_s, xy_s = projection.map_2d(ws, BACKBONE, max_points=50, seed=3)
    assert len(rows_s) == 50 == len(set(rows_s.tolist())) and (np.diff(rows_s) > 0).all() and xy_s.shape == (50, 2)
    np.testing.assert_array_equal(rows_s, projection.map_rows(len(feats), 50, seed=3))
    assert projection.find_map(ws, BACKBONE, max_points=50, seed=3)[0].tolist() == rows_s.tolist()
    with pytest.raises(CedmError, match="at least 2"):
        projection.map_2d(ws, BACKBONE, max_points=1)

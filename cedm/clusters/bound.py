"""The cluster bound (C-EDM sec. 3.3 and appendix C.2).

Upper bound: TEMI with gamma = 0.6 pushes towards using every cluster, so the utilization ratio
r_C = C_u / C (C_u = clusters with at least one image) stays near 1 until C exceeds what the data supports.
The paper: double C until r_C < alpha, then a finer grid; C_max = the highest C with r_C >= alpha. Here:

1. doubling C0, 2 C0, ... until r_C < alpha twice in a row (one failing doubling followed by a passing one is
   a dip of a non-monotone r_C, as the official CIFAR-10 curve has at C = 150, and the doubling goes on);
2. a grid of GRID_INTERVALS equal steps between the last passing and the first failing doubling;
3. exact bisection to 1 between the highest robust grid point and the next grid point above it.

The rule that reads C_max off the evaluated points (``c_max_from_curve``): with the points sorted by C,
C_max is the largest C with r_C >= alpha whose three-point window (its lower and upper evaluated
neighbours and itself) has a majority >= alpha. An isolated pass between two failures is noise and is not
C_max; an isolated failure between two passes does not end the range. On a monotone curve this is exactly
the largest C with r_C >= alpha. Cost: about log2(C_max / C0) + GRID_INTERVALS + log2(grid step) runs.

Lower bound: TEMI with gamma = 1 started from a large C collapses onto C* clusters (partial collapse).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cedm import io
from cedm.errors import CedmError

ALPHA = 0.96


@dataclass
class BoundResult:
    c_max: int | None            # largest C with r_C >= alpha (None when even the smallest C fails)
    alpha: float
    curve: list[tuple[int, float]]   # every (C, r_C) the search used, sorted by C
    n_runs: int                  # TEMI runs this call actually trained (cached points cost nothing)
    seconds: float
    complete: bool               # False when r_C never fell below alpha within the dataset size
    message: str = ""
    runs: dict = field(default_factory=dict)   # C -> ClusterResult (or cached artifact) for the app


@dataclass
class LowerBoundResult:
    c_star: int                  # clusters used by TEMI with gamma = 1
    c_start: int
    seconds: float
    result: object = None        # the ClusterResult


GRID_INTERVALS = 4


def c_max_from_curve(curve, alpha: float = ALPHA) -> int | None:
    """The largest C whose r_C >= alpha and whose three-point window (evaluated neighbours below and above)
    is at least two thirds >= alpha; None when no C >= 2 qualifies. ``curve``: (C, r_C) pairs or a dict.
    C = 1 counts as a passing point (one cluster is always used), the lower neighbour of the smallest C."""
    pts = sorted({1: 1.0, **dict(curve)}.items())
    ok = [r >= alpha for _, r in pts]
    best = None
    for i, (c, _) in enumerate(pts):
        window = ok[max(0, i - 1):i + 2]
        if ok[i] and sum(window) * 2 > len(window):
            best = c
    return int(best) if best is not None and best >= 2 else None


def search_upper_bound(utilization: Callable[[int], float], c_limit: int, c0: int = 10, alpha: float = ALPHA,
                       grid: int = GRID_INTERVALS) -> tuple[int | None, dict, bool, str]:
    """Doubling, a grid, then exact bisection on r_C = utilization(C) (module docstring).
    Returns (C_max, {C: r_C}, complete, message)."""
    c_limit = int(c_limit)
    if not 2 <= c0 <= c_limit:
        raise CedmError(f"the starting number of clusters must be between 2 and {c_limit} (the number of "
                        f"images), got {c0}")
    if not 0 < alpha <= 1:
        raise CedmError(f"alpha must be in (0, 1], got {alpha}")
    if int(grid) < 1:
        raise CedmError(f"the grid needs at least 1 interval, got {grid}")
    r: dict[int, float] = {}

    def passes(c: int) -> bool:
        if c not in r:
            r[c] = float(utilization(c))
        return r[c] >= alpha

    # 1. doubling; a failure is confirmed by the next doubling failing too (or the dataset size)
    lo, hi, c = None, None, int(c0)
    while True:
        if passes(c):
            lo, hi = c, None
        elif hi is None:
            hi = c
        else:
            break  # two failures in a row: the range ends at the first of them
        if c >= c_limit:
            break
        c = min(2 * c, c_limit)
    if hi is None:
        return c, r, False, (f"r_C stayed >= {alpha} up to C = {c}, the number of images: there is no "
                             f"bound below the dataset size (C_max >= {c})")
    lo = lo if lo is not None else 1  # already the first C fails: look below it (C = 1 trivially passes)
    # 2. the grid between the last passing and the first failing doubling
    step = max(1, -(-(hi - lo) // int(grid)))
    for g in range(lo + step, hi, step):
        passes(g)
    # 3. exact bisection between the highest robust grid point and the next evaluated C above it
    a = c_max_from_curve(r, alpha) or 1
    b = min([k for k in r if k > a], default=hi)
    while b - a > 1:
        mid = (a + b) // 2
        if passes(mid):
            a = mid
        else:
            b = mid
    c_max = c_max_from_curve(r, alpha)
    if c_max is None or c_max < 2:
        return None, r, True, f"r_C < {alpha} already for C = 2: TEMI does not use even two clusters fully"
    return c_max, r, True, ""


def _source(source, backbone, weights):
    """(features or None, workspace or None, number of rows)."""
    if isinstance(source, np.ndarray):
        return source, None, len(source)
    return None, source, source.n


def upper_bound(source, c0: int = 10, alpha: float = ALPHA, *, seed: int = 0, backbone=None, weights=None,
                grid: int = GRID_INTERVALS, device=None, progress=None, **temi_kw) -> BoundResult:
    """C_max for features (an (N, D) array) or a workspace (TEMI runs cached per C, seed and settings)."""
    from cedm.clusters.temi import mine_neighbors, resolve_settings, temi
    from cedm.device import resolve_device

    temi_kw = {k: v for k, v in temi_kw.items() if v is not None}
    if "gamma" in temi_kw and temi_kw["gamma"] != 0.6:
        raise CedmError("the upper bound is defined with TEMI gamma = 0.6")
    feats, ws, n = _source(source, backbone, weights)
    t0 = time.perf_counter()
    runs, trained = {}, [0]
    if ws is None:
        settings = resolve_settings(resolve_device(device), seed=seed, **temi_kw)
        nbrs = mine_neighbors(feats, settings["knn"], seed=seed, device=resolve_device(device))

    def utilization(c: int) -> float:
        if progress:
            progress(len(runs), len(runs) + 1, f"TEMI with C = {c}")
        if ws is None:
            res = temi(feats, c, neighbors=nbrs, device=device, **settings)
            trained[0] += 1
        else:
            from cedm.clusters.labelings import cluster_workspace, find_clusters
            kw = dict(backbone=backbone, weights=weights, seed=seed, device=device, **temi_kw)
            trained[0] += find_clusters(ws, "temi", c, **kw) is None
            res = cluster_workspace(ws, "temi", c, **kw)
        runs[c] = res
        return res.utilization

    c_max, r, complete, message = search_upper_bound(utilization, n, c0, alpha, grid)
    if ws is not None:  # keep the curve itself (small), so it outlives the clusterings that made it
        _save_curve(ws, STAGE_UPPER, dict(backbone=backbone, weights=weights, seed=seed, device=device, **temi_kw),
                    {"c0": c0, "alpha": alpha, "search": f"doubling+grid{int(grid)}+bisection"},
                    {"curve": sorted(r.items()), "c_max": c_max, "complete": complete})
    if progress:
        progress(len(runs), len(runs), "bound done")
    return BoundResult(c_max=c_max, alpha=alpha, curve=sorted(r.items()), n_runs=trained[0],
                       seconds=time.perf_counter() - t0, complete=complete, message=message, runs=runs)


def lower_bound(source, c_start: int | None = None, *, seed: int = 0, backbone=None, weights=None, device=None,
                progress=None, **temi_kw) -> LowerBoundResult:
    """C*: clusters used by TEMI with gamma = 1 started from c_start (default min(1000, N // 2))."""
    from cedm.clusters.temi import temi

    feats, ws, n = _source(source, backbone, weights)
    c_start = int(c_start or min(1000, n // 2))
    if not 2 <= c_start <= n:
        raise CedmError(f"the starting number of clusters must be between 2 and {n} (the number of images), "
                        f"got {c_start}")
    temi_kw = {k: v for k, v in temi_kw.items() if v is not None}
    temi_kw["gamma"] = 1.0
    t0 = time.perf_counter()
    if ws is None:
        res = temi(feats, c_start, seed=seed, device=device, progress=progress, **temi_kw)
    else:
        from cedm.clusters.labelings import cluster_workspace
        res = cluster_workspace(ws, "temi", c_start, backbone=backbone, weights=weights, seed=seed,
                                device=device, progress=progress, **temi_kw)
        _save_curve(ws, STAGE_LOWER, dict(backbone=backbone, weights=weights, seed=seed, device=device,
                                          **{k: v for k, v in temi_kw.items() if k != "gamma"}),
                    {"c_start": c_start}, {"c_star": res.n_used})
    return LowerBoundResult(c_star=res.n_used, c_start=c_start, seconds=time.perf_counter() - t0, result=res)


STAGE_UPPER, STAGE_LOWER = "bound", "bound_lower"


def _settings_key(ws, backbone=None, weights=None, seed: int = 0, device=None, **temi_kw) -> dict:
    """The TEMI settings a curve belongs to: a gamma = 0.6 clustering's cache key without C."""
    from cedm.clusters.labelings import cluster_params

    ref = cluster_params(ws, "temi", 2, backbone, weights, seed, device, **temi_kw)
    ref.pop("n_clusters")
    return ref


def _save_curve(ws, stage: str, settings: dict, search: dict, result: dict) -> None:
    params = {**_settings_key(ws, **settings), **search}
    with ws.write_artifact(stage, params) as d:
        io.write_json(d / "result.json", result)


def saved_results(ws, stage: str, backbone=None, weights=None, seed: int = 0, device=None, **temi_kw) -> list[dict]:
    """Saved upper-bound (stage 'bound') or lower-bound ('bound_lower') results for these TEMI settings."""
    ref = _settings_key(ws, backbone, weights, seed, device, **temi_kw)
    return [io.read_json(d / "result.json") for d, m in ws.list_artifacts(stage)
            if {k: m["params"].get(k) for k in ref} == ref]


def cached_curve(ws, backbone=None, weights=None, seed: int = 0, device=None, **temi_kw) -> list[tuple[int, float]]:
    """(C, r_C) of every cached gamma = 0.6 TEMI run and saved bound curve with these settings (no training)."""
    from cedm.clusters.labelings import list_clusterings

    ref = _settings_key(ws, backbone, weights, seed, device, **temi_kw)
    out = {}
    for saved in saved_results(ws, STAGE_UPPER, backbone, weights, seed, device, **temi_kw):
        out.update({int(c): float(r) for c, r in saved["curve"]})
    for p in list_clusterings(ws):
        c = p.get("n_clusters")
        if p.get("n_used") is not None and {k: p.get(k) for k in ref} == ref:
            out[int(c)] = p["n_used"] / int(c)
    return sorted(out.items())


def c_max_of(curve: list[tuple[int, float]], alpha: float = ALPHA) -> int | None:
    """C_max from measured points by ``c_max_from_curve``'s rule (None while no C fails)."""
    if not any(r < alpha for _, r in curve):
        return None
    return c_max_from_curve(curve, alpha)


def c_star_of(ws, backbone: str) -> int | None:
    """C* (appendix C.2) when a gamma = 1 TEMI run is cached: the clusters it used (largest start C)."""
    from cedm.clusters.labelings import list_clusterings

    runs = [p for p in list_clusterings(ws) if p.get("method") == "temi" and p.get("backbone") == backbone
            and (p.get("temi") or {}).get("gamma") == 1.0 and p.get("n_used") is not None]
    return int(max(runs, key=lambda p: p["n_clusters"])["n_used"]) if runs else None

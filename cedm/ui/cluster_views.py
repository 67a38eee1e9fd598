"""What the cluster tabs show, computed from library calls: the current clustering, a cluster's paged
gallery, a query image's clusters, and the plotly figures (map, sizes, utilization curve).

A clustering is named by its spec, as in ``cedm.clusters.labelings.resolve``: ``kmeans:50``, ``temi:100``.
Confidence of an image in its cluster: cosine to the k-means centroid, or the TEMI head's maximum
softmax probability (MSP).
"""
from __future__ import annotations

import logging

import numpy as np

from cedm.clusters.bound import ALPHA
from cedm.errors import CedmError

log = logging.getLogger("cedm.ui")

DEFAULT_METHOD, DEFAULT_C = "skmeans", 20  # the shipped demo model conditions on (spherical) skmeans:20
METHODS = {"kmeans": "k-means", "skmeans": "spherical k-means", "temi": "TEMI"}
PAGE_SIZE = 24
MAP_DRAW_LIMIT = 20_000       # points drawn in the browser; more are sampled (seeded) and the map says so


# --- the clustering ------------------------------------------------------------------------------
def spec_of(method: str, n_clusters) -> str:
    if method not in METHODS:
        raise CedmError(f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}")
    try:
        c = int(n_clusters)
    except (TypeError, ValueError):
        raise CedmError(f"the number of clusters must be a whole number, got {n_clusters!r}") from None
    if float(n_clusters) != c:
        raise CedmError(f"the number of clusters must be a whole number, got {n_clusters!r}")
    return f"{method}:{c}"


def parse_spec(spec: str) -> tuple[str, int]:
    method, _, c = str(spec or "").strip().partition(":")
    if method not in METHODS or not c.strip().isdigit():
        raise CedmError(f"bad clustering {spec!r}: expected kmeans:C, skmeans:C or temi:C, e.g. kmeans:50")
    return method, int(c)


def is_saved_labeling(spec) -> bool:
    """``self:K@MODEL``: a labeling a model made of its own images (seed 002, online), browsed like a clustering
    (its map and confidences from the chosen backbone's features)."""
    return str(spec or "").startswith("self:") and "@" in str(spec)


def result_spec(res) -> str:
    """The spec a ClusterResult answers: ``kmeans:50``, or ``self:20@MODEL`` for a model's own labeling."""
    return res.params.get("spec") or f"{res.method}:{res.n_clusters}"


def method_title(method: str) -> str:
    return METHODS.get(method) or ("self-labelled (the model's own prototypes)" if method == "self" else method)


def get_clustering(ws, backbone: str, spec: str, progress=None, compute: bool = True):
    """The ClusterResult for ``spec`` on ``backbone`` features (cached; computed when ``compute``), or None."""
    from cedm.clusters.labelings import cluster_workspace, find_clusters, labeling_clusters

    if is_saved_labeling(spec):
        from cedm.features import find_features

        if not compute and find_features(ws, backbone) is None:
            return None
        return labeling_clusters(ws, spec, backbone=backbone, progress=progress)
    method, c = parse_spec(spec)
    if not compute and find_clusters(ws, method, c, backbone=backbone) is None:
        return None
    return cluster_workspace(ws, method, c, backbone=backbone, progress=progress)


def backbone_choices(ws) -> tuple[list[tuple[str, str]], str]:
    """(label, name) of every backbone, those with cached features first; and the default choice."""
    from cedm.features import OFFLINE_BACKBONE, list_backbones, list_features
    from cedm.features.backbones import availability

    cached = []
    if ws is not None:
        for meta in list_features(ws):
            b = meta.get("backbone") or meta.get("params", {}).get("backbone")
            if (b in list_backbones() or str(b).startswith("denoiser:")) and b not in cached:
                cached.append(b)
    from cedm.features.denoiser import workspace_backbones  # the open workspace's own models (seed 002)
    own = workspace_backbones(ws)
    order = cached + [b for b in list_backbones() + own if b not in cached]

    def words(b: str) -> str:
        """What a click would do: read cached features, run offline, use cached weights, download, or need
        downloads. A workspace model's own features run offline (asking the registry here would look for the
        model in the default home, not in this app's or visitor's home)."""
        return "features ready" if b in cached else "the workspace's own model" if b in own else availability(b)[1]

    labels = [(f"{b} ({words(b)})", b) for b in order]
    return labels, (cached[0] if cached else OFFLINE_BACKBONE)


def latest_clustering(ws, backbone: str) -> str | None:
    """The clustering to show first: the default (the shipped model's condition) when it is cached, else the
    spec of the most recent cached clustering on ``backbone`` (gamma = 1 TEMI runs excluded)."""
    from cedm.clusters.labelings import find_clusters, list_clusterings

    if find_clusters(ws, DEFAULT_METHOD, DEFAULT_C, backbone=backbone) is not None:
        return f"{DEFAULT_METHOD}:{DEFAULT_C}"
    for p in reversed(list_clusterings(ws)):
        if p.get("backbone") == backbone and p.get("weights") is None and p.get("seed") == 0 \
                and (p.get("temi") or {}).get("gamma", 0.6) == 0.6:
            return f"{p['method']}:{p['n_clusters']}"
    return None


def names_source(ws) -> str | None:
    """The labeling that names clusters: the most recently saved one (Labels tab: CLIP or ImageNet labels)."""
    from cedm.clusters.labelings import STAGE_LABELINGS

    saved = ws.list_artifacts(STAGE_LABELINGS)  # oldest first
    return f"labels:{saved[-1][1]['params']['name']}" if saved else None


def cluster_names(ws, res, backbone: str | None = None, label_spec: str | None = None) -> list[str | None] | None:
    """Each cluster's honest name (cedm.labels.cluster_titles): the user's name, or a guess that says where it
    comes from ("ImageNet guess: analog clock 80%") when confident enough; None for clusters without one."""
    from cedm.labels import cluster_titles

    label_spec = label_spec or names_source(ws)
    try:
        found = cluster_titles(ws, result_spec(res), label_spec, backbone=backbone)
    except CedmError as e:  # names are a help, not the point: show the clusters without them
        log.warning("no cluster names from %s: %s", label_spec, e)
        return None
    if not found:
        return None
    return [found.get(c) for c in range(res.n_clusters)]


def cluster_title(c: int, size: int, names) -> str:
    name = names[c] if names and c < len(names) and names[c] else None
    return f"cluster {c}" + (f" · {name}" if name else "") + f" · {size:,} images"


def summary(ws, backbone: str, res, cached: bool) -> dict:
    """The JSON the /cluster endpoint returns: sizes (summing to N), use of clusters, timing."""
    from cedm.clusters import metrics

    s = metrics.size_stats(res.assignments, res.n_clusters)
    out = {"workspace": ws.name, "backbone": backbone, "method": res.method, "n_clusters": res.n_clusters,
           "clustering": result_spec(res), "n_images": ws.n, "n_used": s["n_used"],
           "utilization": round(s["utilization"], 4), "sizes": s["sizes"],
           "sizes_min": s["min"], "sizes_median": s["median"], "sizes_max": s["max"],
           "effective_clusters": round(s["effective"], 2), "from_cache": bool(cached),
           "seconds": round(float(res.info.get("seconds", 0.0)), 3)}
    gt = ws.ground_truth
    if gt is not None and (gt.labels >= 0).any():
        m = metrics.compare(res.assignments, gt.labels)
        out["vs_ground_truth"] = {k: round(float(m[k]), 4) for k in ("nmi", "ami", "ari", "accuracy",
                                                                      "accuracy_hungarian", "accuracy_majority")}
    return out


def summary_markdown(s: dict) -> str:
    from cedm.clusters import metrics
    line = (f"**{method_title(s['method'])}, C = {s['n_clusters']}**" +
            (f" (`{s['clustering']}`), map and confidence" if is_saved_labeling(s["clustering"]) else "") +
            f" on {s['backbone']} features of "
            f"**{s['workspace']}** ({s['n_images']:,} images): {s['n_used']} clusters used "
            f"(r_C = {s['utilization']:.3f}), sizes {s['sizes_min']}–{s['sizes_max']} "
            f"(median {s['sizes_median']:g}) · " +
            ("from the cache" if s["from_cache"] else f"computed in {s['seconds']:.1f} s"))
    gt = s.get("vs_ground_truth")
    if gt:
        line += (f"  \nagreement with the ground truth (evaluation only): AMI {gt['ami']:.3f} · "
                 f"NMI {gt['nmi']:.3f} · ARI {gt['ari']:.3f} · {metrics.accuracy_text(gt)}")
    return line


# --- galleries ------------------------------------------------------------------------------------
def members(res, cluster: int) -> np.ndarray:
    """Rows of a cluster, most confident first (ties by row)."""
    rows = np.flatnonzero(res.assignments == int(cluster))
    return rows[np.lexsort((rows, -res.confidence[rows]))]


def check_cluster(res, cluster) -> int:
    try:
        c = int(cluster)
    except (TypeError, ValueError):
        raise CedmError(f"choose a cluster (a number from 0 to {res.n_clusters - 1})") from None
    if not 0 <= c < res.n_clusters:
        raise CedmError(f"cluster {c} does not exist: this clustering has clusters 0 to {res.n_clusters - 1}")
    return c


def cluster_heading(ws, res, c: int, names=None) -> str:
    """'### cluster 7 · name · 80 images' plus its share of the dataset and mean confidence."""
    rows = res.assignments == c
    n = int(rows.sum())
    mean = f" · mean {confidence_word(res)} {float(res.confidence[rows].mean()):.2f}" if n else ""
    return f"### {cluster_title(c, n, names)}\n{100 * n / max(ws.n, 1):.1f}% of {ws.name}{mean}"


def confidence_word(res) -> str:
    return "centroid cosine" if res.method != "temi" else "MSP"


def cluster_page(ws, res, cluster, page: int = 0, page_size: int = PAGE_SIZE) -> tuple[list, str, int]:
    """One page of a cluster's images sorted by confidence (only these rows are read), its caption line
    and the clamped page number."""
    c = check_cluster(res, cluster)
    rows = members(res, c)
    pages = max(1, -(-len(rows) // page_size))
    page = int(min(max(int(page or 0), 0), pages - 1))
    shown = rows[page * page_size:(page + 1) * page_size]
    images = np.asarray(ws.images[np.sort(shown)]) if len(shown) else []
    pos = {r: k for k, r in enumerate(np.sort(shown))}
    word = confidence_word(res)
    items = [(images[pos[r]], f"{ws.paths[r]} · {word} {res.confidence[r]:.2f}") for r in shown]
    if not len(rows):
        return [], f"cluster {c} is empty (no image was assigned to it)", 0
    info = (f"page {page + 1} of {pages} · images {page * page_size + 1}-{page * page_size + len(shown)} "
            f"of {len(rows):,}, most confident ({word}) first")
    return items, info, page


# --- query images ---------------------------------------------------------------------------------
def cluster_probabilities(res, features: np.ndarray) -> tuple[np.ndarray, str]:
    """(C,) probabilities of a query's clusters and how they were obtained (cedm.clusters.assign)."""
    from cedm.clusters.assign import Assigner

    assigner = Assigner.from_result(res)
    return assigner.proba(np.asarray(features, np.float32).reshape(1, -1))[0], assigner.description


def top_clusters(res, features: np.ndarray, k: int = 3, names=None) -> tuple[list[dict], str]:
    p, how = cluster_probabilities(res, features)
    top = np.argsort(-p, kind="stable")[:k]
    sizes = res.sizes
    return [{"cluster": int(c), "probability": round(float(p[c]), 4), "size": int(sizes[c]),
             "name": (names[c] if names and c < len(names) else None)} for c in top], how


# --- figures --------------------------------------------------------------------------------------
def _palette_index(clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Spread neighbouring ids around the colour wheel (golden-ratio steps), so similar ids differ."""
    return (clusters.astype(np.float64) * 0.6180339887) % 1.0 if n_clusters > 1 else np.zeros(len(clusters))


def draw_rows(rows: np.ndarray, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Positions (into ``rows``) of the map points that are drawn: all, or a seeded sample above ``limit``."""
    limit = MAP_DRAW_LIMIT if limit is None else int(limit)
    if len(rows) <= limit:
        return np.arange(len(rows))
    return np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))


def cluster_colours(n_clusters: int) -> list[str]:
    """One colour per cluster id (Turbo at golden-ratio steps, so neighbouring ids differ)."""
    from plotly.colors import sample_colorscale

    pos = _palette_index(np.arange(max(n_clusters, 1)), max(n_clusters, 1))
    return sample_colorscale("Turbo", [0.05 + 0.9 * float(v) for v in pos])


def map_figure(ws, rows, xy, res=None, selected: int | None = None, point: int | None = None, names=None):
    """Plotly WebGL scatter of the map, one trace per cluster (the legend names them and hides/shows them).

    Each point's customdata is [row, cluster, confidence]: a click selects its cluster, a box or lasso selects
    images, hovering shows the image (see app.PLOT_CLICK_JS)."""
    import plotly.graph_objects as go

    keep = draw_rows(rows)
    r, p = rows[keep], xy[keep]
    paths = np.asarray([ws.paths[i] for i in r.tolist()], dtype=object)
    fig = go.Figure()
    if res is not None:
        cl, conf = res.assignments[r], res.confidence[r]
        custom = np.column_stack([r, cl, np.round(conf, 3)])
        hover = ("row %{customdata[0]}<br>%{text}<br>cluster %{customdata[1]}<br>"
                 f"{confidence_word(res)} " "%{customdata[2]:.2f}<extra></extra>")
        colours = cluster_colours(res.n_clusters)
        dim = selected is not None
        for c in np.argsort(-res.sizes, kind="stable"):  # the legend lists the largest clusters first
            sel = cl == c
            if not sel.any():
                continue
            name = names[c] if names and c < len(names) and names[c] else None
            fig.add_trace(go.Scattergl(
                x=p[sel, 0], y=p[sel, 1], mode="markers", customdata=custom[sel], text=paths[sel].tolist(),
                hovertemplate=hover, name=f"{c}" + (f" · {name}" if name else ""), legendgroup=str(c),
                marker=dict(size=5, color=colours[c], opacity=0.85 if not dim or c == int(selected) else 0.35)))
        if dim:
            sel = cl == int(selected)
            fig.add_trace(go.Scattergl(
                x=p[sel, 0], y=p[sel, 1], mode="markers", customdata=custom[sel], text=paths[sel].tolist(),
                hovertemplate=hover, name=f"cluster {selected}", showlegend=False, legendgroup=str(selected),
                marker=dict(size=8, color="rgba(0,0,0,0)", line=dict(width=1, color="#222"))))
    else:
        fig.add_trace(go.Scattergl(x=p[:, 0], y=p[:, 1], mode="markers", customdata=np.column_stack([r, -np.ones_like(r), np.zeros(len(r))]),
                                   text=paths.tolist(), hovertemplate="row %{customdata[0]}<br>%{text}<extra></extra>",
                                   marker=dict(size=5, color="#5b7db1", opacity=0.7), showlegend=False))
    if point is not None and point in set(r.tolist()):
        k = int(np.flatnonzero(r == int(point))[0])
        fig.add_trace(go.Scattergl(x=[p[k, 0]], y=[p[k, 1]], mode="markers", hoverinfo="skip", showlegend=False,
                                   marker=dict(size=16, symbol="star", color="#ffd400", line=dict(width=1.5, color="#111"))))
    drawn = f"{len(r):,} of {ws.n:,} images (a seeded random sample)" if len(r) < ws.n else f"all {ws.n:,} images"
    fig.update_layout(title=dict(text=f"UMAP of the features · {drawn} · click a point, or lasso/box to select",
                                 font=dict(size=13)),
                      margin=dict(l=10, r=10, t=36, b=10), height=520, dragmode="lasso",
                      plot_bgcolor="#fafafa", hovermode="closest", showlegend=res is not None,
                      legend=dict(title=dict(text="clusters"), itemsizing="constant", font=dict(size=11)))
    # UMAP places small disconnected groups far out: frame the bulk (5th-95th percentile); the
    # autoscale button shows every point
    lo, hi = np.percentile(p, 5, axis=0), np.percentile(p, 95, axis=0)
    pad = 0.2 * np.maximum(hi - lo, 1e-6)
    fig.update_xaxes(visible=False, range=[float(lo[0] - pad[0]), float(hi[0] + pad[0])])
    fig.update_yaxes(visible=False, range=[float(lo[1] - pad[1]), float(hi[1] + pad[1])])
    return fig


def selection_page(ws, res, rows, page: int = 0, page_size: int = PAGE_SIZE) -> tuple[list, str, int]:
    """One page of selected rows, grouped by cluster (largest share first), most confident first within."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return [], "nothing selected", 0
    cl = res.assignments[rows]
    share = np.bincount(cl, minlength=res.n_clusters)
    rows = rows[np.lexsort((rows, -res.confidence[rows], -share[cl]))]
    pages = max(1, -(-len(rows) // page_size))
    page = int(min(max(int(page or 0), 0), pages - 1))
    shown = rows[page * page_size:(page + 1) * page_size]
    order = np.sort(shown)
    images = np.asarray(ws.images[order])
    pos = {r: k for k, r in enumerate(order.tolist())}
    items = [(images[pos[r]], f"{ws.paths[r]} · cluster {int(res.assignments[r])}") for r in shown.tolist()]
    info = (f"selection: page {page + 1} of {pages} · images {page * page_size + 1}-"
            f"{page * page_size + len(shown)} of {len(rows):,}")
    return items, info, page


def selection_counts(res, rows, names=None, top: int = 12) -> str:
    """'**412 images selected** · cluster 3 · name: 200 · cluster 5: 120 · ...' (largest first)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return ""
    counts = np.bincount(res.assignments[rows], minlength=res.n_clusters)
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    parts = [f"cluster {c}" + (f" ({names[c]})" if names and c < len(names) and names[c] else "") +
             f": {int(counts[c]):,}" for c in order[:top]]
    more = f" · and {len(order) - top} more clusters" if len(order) > top else ""
    return f"**{len(rows):,} images selected** in {len(order)} clusters · " + " · ".join(parts) + more


def sizes_figure(res, selected: int | None = None, names=None):
    """Bar chart of cluster sizes, largest first; a click on a bar selects that cluster."""
    import plotly.graph_objects as go

    sizes = res.sizes
    order = np.argsort(-sizes, kind="stable")
    colour = ["#d62728" if selected is not None and int(c) == int(selected) else "#5b7db1" for c in order]
    labels = [cluster_title(int(c), int(sizes[c]), names) for c in order]
    fig = go.Figure(go.Bar(x=np.arange(len(order)), y=sizes[order], marker_color=colour,
                           customdata=order.reshape(-1, 1), text=labels,
                           hovertemplate="%{text}<extra></extra>", textposition="none"))
    fig.update_layout(title=dict(text=f"cluster sizes, largest first ({res.n_used} of {res.n_clusters} used) · "
                                      "click a bar", font=dict(size=13)),
                      margin=dict(l=40, r=10, t=36, b=30), height=300, bargap=0.1,
                      xaxis=dict(title="clusters by size", showticklabels=False), yaxis=dict(title="images"))
    return fig


def curve_range(cs, log: bool) -> list[float]:
    """The x range that shows exactly the computed C values, with a 5% margin (log10 units on a log axis,
    as plotly expects)."""
    lo, hi = float(min(cs)), float(max(cs))
    if log:
        lo, hi = np.log10(lo), np.log10(hi)
    pad = 0.05 * (hi - lo) if hi > lo else (0.1 if log else max(1.0, 0.1 * lo))
    return [lo - pad, hi + pad]


def curve_figure(curve: list[tuple[int, float]], c_max: int | None, c_star: int | None = None,
                 alpha: float = ALPHA):
    """The utilization ratio r_C = C_u / C against C (TEMI, gamma = 0.6), alpha line, C_max and C*.

    The x axis is set from the points (a log axis when they span more than a factor 8). C_max and C* are
    drawn as traces, not as plotly shapes with annotations: on a log axis an annotation's x is read as a
    power of ten, which stretched the axis to 10^95."""
    import plotly.graph_objects as go

    fig = go.Figure()
    xs = [int(c) for c, _ in curve] + ([int(c_star)] if c_star else [])
    wide = bool(xs) and max(xs) / max(min(xs), 1) > 8
    if curve:
        cs, rs = zip(*curve)
        fig.add_trace(go.Scatter(x=cs, y=rs, mode="lines+markers", name="r_C",
                                 hovertemplate="C = %{x}<br>r_C = %{y:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[alpha, alpha], mode="lines", hoverinfo="skip",
                                 line=dict(dash="dash", color="#888"), name=f"alpha = {alpha}"))
        fig.add_annotation(text=f"alpha = {alpha}", x=0.01, xref="paper", y=alpha, yref="y", showarrow=False,
                           yanchor="top", xanchor="left", font=dict(size=11, color="#666"))
    for c, colour, label, dash in ((c_max, "#d62728", "C_max", "solid"), (c_star, "#2ca02c", "C*", "dot")):
        if c is not None:
            fig.add_trace(go.Scatter(x=[c, c], y=[0, 1.02], mode="lines+text", text=["", f"{label} = {c}"],
                                     textposition="top right", hoverinfo="skip", name=label,
                                     line=dict(color=colour, dash=dash)))
    if not curve:
        fig.add_annotation(text="no TEMI runs yet: press Compute bound", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=14, color="#666"))
    xaxis = dict(title="C", type="log" if wide else "linear", visible=bool(curve))
    if xs:
        xaxis["range"] = curve_range(xs, wide)
    fig.update_layout(title=dict(text="utilization ratio r_C = C_u / C of TEMI (gamma = 0.6)", font=dict(size=13)),
                      margin=dict(l=40, r=10, t=36, b=30), height=300, showlegend=False,
                      xaxis=xaxis, yaxis=dict(title="r_C", range=[0, 1.1]))
    return fig

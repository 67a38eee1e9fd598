"""Clusters tab: cluster a workspace (backbone, k-means/TEMI, C), its UMAP map coloured by cluster, a
cluster's gallery sorted by confidence, the cluster sizes and the utilization-ratio curve with C_max.

Public API endpoints: ``/cluster`` (workspace, backbone, method, C -> summary JSON) and ``/cluster_bound``
(workspace, backbone -> C_max and the r_C curve). Drawing, paging and selecting are UI-only.
A click on a map point or a size bar reaches the server through a hidden textbox (see app.PLOT_CLICK_JS):
gr.Plot itself reports no clicks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import gradio as gr
import numpy as np

from cedm import workspace as wsp
from cedm.errors import CedmError
from cedm.ui import cluster_views as cv
from cedm.ui import common
from cedm.ui.common import AppContext, guarded

CLICK_BOX_ID = "cedm-plot-click"     # a clicked point or bar: {plot, data}
SELECT_BOX_ID = "cedm-plot-select"   # a box/lasso selection on the map: {rows}
HOVER_BOX_ID = "cedm-plot-hover"     # the map point under the pointer: {row}
MAX_SELECTION = 100_000


@dataclass
class ClustersTab:
    backbone: gr.Dropdown   # feature backbone of the current clustering
    clustering: gr.Textbox  # the current clustering's spec, e.g. "kmeans:50" (set by the Cluster button)
    on_workspace: Callable  # refreshes the tab for another workspace (wired to the workspace dropdown)
    outputs: list           # what on_workspace fills
    progress: gr.Markdown   # the clustering job's progress component (show_progress_on for on_workspace)
    own: gr.Dropdown        # a self-labelled model's own clusters (self:K@MODEL) to browse
    on_models: Callable     # (workspace) -> ``own`` refreshed, e.g. after the Train tab made a self:K model


@dataclass
class View:
    """Everything the tab shows for one (workspace, backbone, clustering, cluster, point)."""
    spec: str = ""
    status: str = ""
    map: object = None
    sizes: object = None
    curve: object = None
    cluster_choices: list | None = None
    cluster: int | None = None
    cluster_info: str = ""
    gallery: list | None = None
    page_info: str = ""
    page: int = 0
    point_image: object = None
    point_info: str = ""
    point: int | None = None


def build_view(ws, backbone: str, spec: str | None, cluster=None, point=None, page: int = 0, progress=None,
               compute: bool = True, summary: dict | None = None) -> View:
    """Compute what to show (cached parts only when ``compute`` is False: the first screen never waits)."""
    from cedm.features.projection import find_map, map_2d

    v = View(spec=spec or "", curve=_curve(ws, backbone))
    res = cv.get_clustering(ws, backbone, spec, compute=compute) if spec else None
    if res is None:
        v.status = (f"**{ws.name}** ({ws.n:,} images): no clustering yet. Choose a backbone, a method and C, "
                    "then press **Cluster**.")
        found = find_map(ws, backbone)
        v.map = cv.map_figure(ws, *found) if found else None
        return v
    mapped = map_2d(ws, backbone, progress=progress) if compute else find_map(ws, backbone)
    names = cv.cluster_names(ws, res, backbone)
    sizes = res.sizes
    if cluster is None or cluster == "":
        cluster = int(np.argmax(sizes))
    c = cv.check_cluster(res, cluster)
    if point is not None and res.assignments[int(point)] != c:
        point = None  # a point belongs to the cluster shown
    summary = summary or cv.summary(ws, backbone, res, cached=True)
    v.status = cv.summary_markdown(summary)
    v.map = cv.map_figure(ws, *mapped, res=res, selected=c, point=point, names=names) if mapped else None
    v.sizes = cv.sizes_figure(res, selected=c, names=names)
    v.cluster_choices = [(cv.cluster_title(k, int(sizes[k]), names), k) for k in range(res.n_clusters)]
    v.cluster = c
    v.cluster_info = cv.cluster_heading(ws, res, c, names)
    v.gallery, v.page_info, v.page = cv.cluster_page(ws, res, c, page)
    v.point = point
    if point is not None:
        r = int(point)
        v.point_image = np.asarray(ws.images[r])
        v.point_info = (f"**row {r}** · `{ws.paths[r]}`  \ncluster {int(res.assignments[r])} · "
                        f"{cv.confidence_word(res)} {float(res.confidence[r]):.3f}")
    return v


def _curve(ws, backbone: str):
    from cedm.clusters.bound import c_max_of, c_star_of, cached_curve

    curve = cached_curve(ws, backbone=backbone)
    return cv.curve_figure(curve, c_max_of(curve), c_star_of(ws, backbone))


def bound_json(res) -> dict:
    return {"c_max": res.c_max, "alpha": res.alpha, "curve": [[int(c), round(float(r), 4)] for c, r in res.curve],
            "complete": res.complete, "message": res.message, "n_runs": res.n_runs,
            "seconds": round(res.seconds, 2)}


# --- layout and wiring --------------------------------------------------------------------------
def build(ctx: AppContext, workspace: gr.Dropdown) -> ClustersTab:
    demo_ws = ctx.open(wsp.DEMO_NAME, None) if ctx.demo_available else None
    choices, default_backbone = cv.backbone_choices(demo_ws)
    spec = cv.latest_clustering(demo_ws, default_backbone) if demo_ws else None
    first = build_view(demo_ws, default_backbone, spec, compute=False) if demo_ws else View(
        status="Upload images in the Dataset tab to start.")

    status = gr.Markdown(first.status, elem_id="cedm-clusters-status")
    with gr.Row(equal_height=True):
        backbone = gr.Dropdown(choices=choices, value=default_backbone, label="feature backbone", scale=2,
                               info="features are computed once per backbone and cached",
                               allow_custom_value=True)  # API callers name any registered backbone
        method = gr.Radio([(name, m) for m, name in cv.METHODS.items()],
                          value=cv.parse_spec(spec)[0] if spec else cv.DEFAULT_METHOD, label="method", scale=1)
        n_clusters = gr.Number(value=cv.parse_spec(spec)[1] if spec else cv.DEFAULT_C, label="clusters C",
                               precision=0, minimum=2, scale=1)
        with gr.Column(scale=1, min_width=160):
            cluster_btn = gr.Button("Cluster", variant="primary", elem_id="cedm-cluster")
            cancel_btn = gr.Button("Cancel", size="sm")
    own = _own_labelings(demo_ws)
    own_dd = gr.Dropdown(choices=own, value=None, visible=bool(own), elem_id="cedm-own-clusters",
                         label="or browse a model's own clusters (self:K@MODEL: the prototypes a self-labelled "
                               "model assigned to each image while it trained)")
    cluster_progress = common.progress_panel("clustering")
    clustering = gr.Textbox(first.spec, label="current clustering", interactive=False, visible="hidden",
                            elem_id="cedm-clustering")
    with gr.Row(equal_height=True):
        search = gr.Textbox(label="search", placeholder="file names, cluster names, labels (Enter)", scale=3,
                            elem_id="cedm-search", max_lines=1)
        search_btn = gr.Button("Search", size="sm", scale=0, min_width=90)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            map_plot = gr.Plot(first.map, label="map", elem_id="cedm-map", show_label=False)
        with gr.Column(scale=1, min_width=220):
            point_image = gr.Image(first.point_image, label="selected point", interactive=False, height=200,
                                   elem_id="cedm-point-image", buttons=[])
            point_info = gr.Markdown(first.point_info or "Click a point on the map to see its image.",
                                     elem_id="cedm-point-info")
    with gr.Row(equal_height=True):
        cluster_dd = gr.Dropdown(choices=first.cluster_choices or [], value=first.cluster, label="cluster",
                                 info="or click a point on the map or a bar below", scale=2,
                                 elem_id="cedm-cluster-select")
        cluster_info = gr.Markdown(first.cluster_info, elem_id="cedm-cluster-info")
        with gr.Column(scale=1, min_width=200):
            new_name = gr.Textbox(label="rename this cluster", placeholder="a name (empty: remove yours)",
                                  max_lines=1, elem_id="cedm-rename")
            rename_btn = gr.Button("Rename", size="sm", elem_id="cedm-rename-go")
    selection_info = gr.Markdown(elem_id="cedm-selection-info")
    with gr.Row(equal_height=True, visible=False) as selection_row:
        set_name = gr.Textbox(label="save the selection as a named set (rows:NAME)", placeholder="e.g. flags",
                              max_lines=1, scale=2, elem_id="cedm-selection-name")
        save_sel_btn = gr.Button("Save set", size="sm", scale=0, min_width=100, elem_id="cedm-selection-save")
        export_sel_btn = gr.Button("Export CSV", size="sm", scale=0, min_width=100, elem_id="cedm-selection-export")
        more_btn = gr.Button("More like these", size="sm", scale=0, min_width=130, elem_id="cedm-selection-more")
        clear_sel_btn = gr.Button("Clear selection", size="sm", scale=0, min_width=130)
    selection_file = gr.File(label="selection", interactive=False, visible=False, elem_id="cedm-selection-file")
    selection = gr.State(None)  # selected rows (a list), or None: the gallery then shows the cluster
    page = gr.State(first.page)
    point = gr.State(first.point)
    with gr.Row():
        prev_btn = gr.Button("< previous", size="sm", scale=0, min_width=120)
        page_info = gr.Markdown(first.page_info, elem_id="cedm-cluster-page-info")
        next_btn = gr.Button("next >", size="sm", scale=0, min_width=120, elem_id="cedm-cluster-next")
    gallery = gr.Gallery(first.gallery or [], columns=8, height=450, object_fit="contain", format="png",
                         label="cluster images, most confident first", elem_id="cedm-cluster-gallery",
                         allow_preview=True)
    with gr.Row(equal_height=False):
        sizes_plot = gr.Plot(first.sizes, elem_id="cedm-sizes", show_label=False)
        with gr.Column():
            curve_plot = gr.Plot(first.curve, elem_id="cedm-curve", show_label=False)
            with gr.Row():
                bound_btn = gr.Button("Compute bound (C_max)", size="sm", elem_id="cedm-bound")
                bound_cancel = gr.Button("Cancel", size="sm")
            bound_progress = common.progress_panel("bound")
            gr.Markdown("C_max: the largest C at which TEMI (gamma = 0.6) still uses at least alpha = 0.96 of its "
                        "clusters; found by doubling C, then bisecting (several TEMI runs, each cached).")
    with gr.Accordion("Summary (as the /cluster endpoint returns it)", open=False):
        summary_json = gr.JSON(label="summary", elem_id="cedm-cluster-summary", max_height=240)
        bound_out = gr.JSON(label="bound", max_height=200)
    click_box = gr.Textbox(visible="hidden", elem_id=CLICK_BOX_ID)
    select_box = gr.Textbox(visible="hidden", elem_id=SELECT_BOX_ID)
    hover_box = gr.Textbox(visible="hidden", elem_id=HOVER_BOX_ID)

    view_outputs = [clustering, status, map_plot, sizes_plot, curve_plot, cluster_dd, cluster_info, gallery,
                    page_info, page, point_image, point_info, point, selection, selection_info, selection_row]

    def render(v: View) -> tuple:
        """The whole view; a new view drops the selection (the gallery shows the cluster again)."""
        return (v.spec, v.status, v.map, v.sizes, v.curve,
                gr.Dropdown(choices=v.cluster_choices or [], value=v.cluster), v.cluster_info, v.gallery or [],
                v.page_info, v.page, v.point_image, v.point_info or "Click a point on the map to see its image.",
                v.point, None, "", gr.Row(visible=False))

    # --- handlers -------------------------------------------------------------------------------
    @guarded
    def cluster(workspace_name: str, backbone_name: str, method_name: str, c, request: gr.Request,
                progress=gr.Progress()) -> dict:
        """Cluster a workspace's features (k-means or TEMI, C clusters); cached. Returns sizes and agreement."""
        from cedm.clusters.labelings import find_clusters
        from cedm.features import features_artifact

        t0 = time.perf_counter()
        ws = ctx.open(workspace_name, request)
        backbone_name = backbone_name or cv.backbone_choices(ws)[1]
        method_name, c = cv.parse_spec(cv.spec_of(method_name, c))
        report = common.progress_callback(progress, ctx.sessions, request, job="clustering")
        report(0, 1, "starting")
        cached = find_clusters(ws, method_name, c, backbone=backbone_name) is not None
        if not cached:
            features_artifact(ws, backbone_name, progress=report)  # with progress; fails early when offline
        res = cv.get_clustering(ws, backbone_name, f"{method_name}:{c}", progress=report)
        out = cv.summary(ws, backbone_name, res, cached)
        if not cached:  # the whole wait (features too), not only the clustering step
            out["seconds"] = round(time.perf_counter() - t0, 3)
        return out

    @guarded
    def show_clustering(workspace_name: str, backbone_name: str, summary: dict, request: gr.Request,
                        progress=gr.Progress()):
        ws = ctx.open(workspace_name, request)
        report = common.progress_callback(progress, ctx.sessions, request, job="clustering")
        v = build_view(ws, backbone_name, summary["clustering"], progress=report, summary=summary)
        return render(v)

    @guarded
    def show_own(workspace_name: str, backbone_name: str, spec: str, request: gr.Request, progress=gr.Progress()):
        """A self:K@MODEL labeling in the map, sizes and galleries (the backbone's features give its map and
        each image's cosine to its cluster's mean feature)."""
        if not spec:
            return tuple(gr.skip() for _ in view_outputs)
        ws = ctx.open(workspace_name, request)
        report = common.progress_callback(progress, ctx.sessions, request, job="clustering")
        return render(build_view(ws, backbone_name or cv.backbone_choices(ws)[1], spec, progress=report))

    @guarded
    def select_cluster(workspace_name, backbone_name, spec, c, request: gr.Request):
        return render(build_view(ctx.open(workspace_name, request), backbone_name, spec, cluster=c))

    @guarded
    def plot_click(value: str, workspace_name, backbone_name, spec, request: gr.Request):
        try:
            click = json.loads(value or "{}")
            data = [int(float(x)) for x in click.get("data", [])[:2]]
        except (ValueError, TypeError, AttributeError):
            raise CedmError("could not read the clicked point") from None
        if not data or not spec:
            raise gr.Error("nothing to select here yet: cluster first", print_exception=False)
        ws = ctx.open(workspace_name, request)
        if click.get("plot") == "cedm-map" and len(data) >= 2 and data[1] >= 0:
            row = data[0]
            if not 0 <= row < ws.n:
                raise CedmError(f"row {row} is not in this workspace")
            return render(build_view(ws, backbone_name, spec, cluster=data[1], point=row))
        return render(build_view(ws, backbone_name, spec, cluster=data[0]))

    def pager(delta: int):
        @guarded
        def turn(workspace_name, backbone_name, spec, c, current, rows, request: gr.Request):
            ws = ctx.open(workspace_name, request)
            res = cv.get_clustering(ws, backbone_name, spec, compute=False)
            if res is None:
                raise CedmError("this clustering is not computed: press Cluster first")
            if rows:
                return cv.selection_page(ws, res, rows, int(current or 0) + delta)
            return cv.cluster_page(ws, res, c, int(current or 0) + delta)
        return turn

    # --- selection: lasso/box on the map, search, "more like these" --------------------------------
    def current(workspace_name, backbone_name, spec, request):
        ws = ctx.open(workspace_name, request)
        res = cv.get_clustering(ws, backbone_name, spec, compute=False) if spec else None
        if res is None:
            raise CedmError("nothing to select yet: cluster first")
        return ws, res

    def show_selection(ws, res, backbone_name, rows, note: str = ""):
        rows = sorted({int(r) for r in rows})
        if not rows:
            return None, gr.skip(), gr.skip(), gr.skip(), "", gr.Row(visible=False)
        names = cv.cluster_names(ws, res, backbone_name)
        items, info, page_no = cv.selection_page(ws, res, rows, 0)
        text = cv.selection_counts(res, rows, names) + (f"  \n{note}" if note else "")
        return rows, items, info, page_no, text, gr.Row(visible=True)

    selection_outputs = [selection, gallery, page_info, page, selection_info, selection_row]

    @guarded
    def on_select(value: str, workspace_name, backbone_name, spec, request: gr.Request):
        try:
            rows = [int(r) for r in json.loads(value or "{}").get("rows", [])][:MAX_SELECTION]
        except (ValueError, TypeError, AttributeError):
            raise CedmError("could not read the selection") from None
        ws, res = current(workspace_name, backbone_name, spec, request)
        if any(not 0 <= r < ws.n for r in rows):
            raise CedmError("the selection holds rows that are not in this workspace")
        return show_selection(ws, res, backbone_name, rows)

    @guarded
    def on_search(text: str, workspace_name, backbone_name, spec, request: gr.Request):
        from cedm.labels import cluster_titles, search_rows

        ws, res = current(workspace_name, backbone_name, spec, request)
        label_spec = cv.names_source(ws)
        titles = cluster_titles(ws, spec, label_spec, backbone=backbone_name)
        rows = search_rows(ws, text, res.assignments, titles, label_spec)
        if not len(rows):
            gr.Info(f"nothing matches {text!r}")
        return show_selection(ws, res, backbone_name, rows.tolist(), f"search: {text!r}")

    @guarded
    def more_like_these(rows, workspace_name, backbone_name, spec, request: gr.Request):
        from cedm.features.search import more_like

        ws, res = current(workspace_name, backbone_name, spec, request)
        found, _ = more_like(ws, rows or [], backbone=backbone_name, k=cv.PAGE_SIZE)
        return show_selection(ws, res, backbone_name, found.tolist(),
                              f"the {len(found)} images most like the {len(rows or [])} selected "
                              "(cosine to their mean feature)")

    @guarded
    def save_selection(name: str, rows, workspace_name, request: gr.Request):
        from cedm.clusters.labelings import save_rows

        if not rows:
            raise CedmError("select some images first (lasso or box on the map, or search)")
        save_rows(ctx.open(workspace_name, request), (name or "").strip(), rows, note="selected in the app")
        gr.Info(f"saved {len(rows):,} images as rows:{name.strip()}")

    @guarded
    def export_selection(rows, workspace_name, backbone_name, spec, request: gr.Request):
        from cedm.clusters.export import assignments_csv
        from cedm.ui.export_tab import export_dir

        if not rows:
            raise CedmError("select some images first (lasso or box on the map, or search)")
        ws, res = current(workspace_name, backbone_name, spec, request)
        names = {c: n for c, n in enumerate(cv.cluster_names(ws, res, backbone_name) or []) if n}
        path = export_dir(ctx, request) / f"{ws.name}-selection-{len(rows)}.csv"
        assignments_csv(ws, res, path, rows=rows, names=names or None)
        return gr.File(str(path), visible=True)

    @guarded
    def on_hover(value: str, workspace_name, backbone_name, spec, request: gr.Request):
        try:
            row = int(json.loads(value or "{}")["row"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return gr.Image(), gr.Markdown()
        ws = ctx.open(workspace_name, request)
        if not 0 <= row < ws.n:
            return gr.Image(), gr.Markdown()
        res = cv.get_clustering(ws, backbone_name, spec, compute=False) if spec else None
        text = f"**row {row}** · `{ws.paths[row]}`"
        if res is not None:
            text += (f"  \ncluster {int(res.assignments[row])} · {cv.confidence_word(res)} "
                     f"{float(res.confidence[row]):.3f}")
        return np.asarray(ws.images[row]), text

    @guarded
    def rename(name: str, workspace_name, backbone_name, spec, c, request: gr.Request):
        from cedm.labels import rename_cluster

        ws = ctx.open(workspace_name, request)
        if not spec or c is None:
            raise CedmError("choose a cluster first")
        rename_cluster(ws, spec, int(c), name, backbone=backbone_name)
        return render(build_view(ws, backbone_name, spec, cluster=c, compute=False)) + ("",)

    @guarded
    def on_workspace(workspace_name: str, request: gr.Request):
        if not workspace_name:
            return (gr.Dropdown(choices=[], value=None),) + render(View(status="Upload images to start.")) + \
                (gr.Dropdown(choices=[], value=None, visible=False),)
        ws = ctx.open(workspace_name, request)
        labels, default = cv.backbone_choices(ws)
        spec = cv.latest_clustering(ws, default)
        own = _own_labelings(ws)
        return (gr.Dropdown(choices=labels, value=default),) + render(build_view(ws, default, spec, compute=False)) + \
            (gr.Dropdown(choices=own, value=None, visible=bool(own)),)

    @guarded
    def cluster_bound(workspace_name: str, backbone_name: str, request: gr.Request, progress=gr.Progress()) -> dict:
        """C_max of a workspace: TEMI (gamma = 0.6) utilization ratio r_C, doubling C until r_C < 0.96, then bisecting."""
        from cedm.clusters.bound import upper_bound

        ws = ctx.open(workspace_name, request)
        report = common.progress_callback(progress, ctx.sessions, request, job="bound")
        report(0, 1, "starting")
        return bound_json(upper_bound(ws, backbone=backbone_name, progress=report))

    @guarded
    def show_bound(workspace_name: str, backbone_name: str, request: gr.Request):
        return _curve(ctx.open(workspace_name, request), backbone_name)

    @guarded
    def cancel(request: gr.Request):
        ctx.sessions.request_cancel(request.session_hash)
        gr.Info("cancelling the running step")

    # --- wiring: public endpoints first step of each chain (.success runs from the browser) -------
    cluster_btn.click(cluster, [workspace, backbone, method, n_clusters], [summary_json], api_name="cluster",
                      concurrency_limit=2, show_progress_on=[cluster_progress]
                      ).success(show_clustering, [workspace, backbone, summary_json], view_outputs,
                                api_visibility="private", show_progress_on=[cluster_progress])
    bound_btn.click(cluster_bound, [workspace, backbone], [bound_out], api_name="cluster_bound", concurrency_limit=1,
                    show_progress_on=[bound_progress]
                    ).success(show_bound, [workspace, backbone], [curve_plot], api_visibility="private",
                              show_progress="hidden"
                              ).success(lambda r: f"C_max = {r['c_max']} · {r['n_runs']} TEMI runs · {r['seconds']:g} s"
                                        if r.get("c_max") else (r.get("message") or "done"),
                                        [bound_out], [bound_progress], api_visibility="private",
                                        show_progress="hidden")
    quiet = dict(api_visibility="private", concurrency_limit=8, show_progress="hidden")
    select_box.change(on_select, [select_box, workspace, backbone, clustering], selection_outputs, **quiet)
    hover_box.change(on_hover, [hover_box, workspace, backbone, clustering], [point_image, point_info], **quiet)
    for trigger in (search.submit, search_btn.click):
        trigger(on_search, [search, workspace, backbone, clustering], selection_outputs,
                **{**quiet, "show_progress": "minimal"})
    more_btn.click(more_like_these, [selection, workspace, backbone, clustering], selection_outputs,
                   **{**quiet, "show_progress": "minimal"})
    clear_sel_btn.click(lambda: (None, "", gr.Row(visible=False)), None, [selection, selection_info, selection_row],
                        **quiet).then(pager(0), [workspace, backbone, clustering, cluster_dd, page, selection],
                                      [gallery, page_info, page], **quiet)
    save_sel_btn.click(save_selection, [set_name, selection, workspace], None, **quiet)
    export_sel_btn.click(export_selection, [selection, workspace, backbone, clustering], [selection_file], **quiet)
    rename_btn.click(rename, [new_name, workspace, backbone, clustering, cluster_dd], view_outputs + [new_name],
                     **quiet)
    for btn in (cancel_btn, bound_cancel):
        btn.click(cancel, None, None, api_visibility="private", concurrency_limit=None)
    own_dd.input(show_own, [workspace, backbone, own_dd], view_outputs, api_visibility="private", concurrency_limit=2,
                 show_progress_on=[cluster_progress])
    cluster_dd.input(select_cluster, [workspace, backbone, clustering, cluster_dd], view_outputs,
                     api_visibility="private", concurrency_limit=8, show_progress_on=[cluster_progress])
    click_box.change(plot_click, [click_box, workspace, backbone, clustering], view_outputs,
                     api_visibility="private", concurrency_limit=8, show_progress_on=[cluster_progress])
    prev_btn.click(pager(-1), [workspace, backbone, clustering, cluster_dd, page, selection],
                   [gallery, page_info, page], api_visibility="private", concurrency_limit=8)
    next_btn.click(pager(+1), [workspace, backbone, clustering, cluster_dd, page, selection],
                   [gallery, page_info, page], api_visibility="private", concurrency_limit=8)
    def on_models(workspace_name: str, request: gr.Request):
        try:
            own = _own_labelings(ctx.open(workspace_name, request))
        except CedmError:
            own = []
        return gr.Dropdown(choices=own, visible=bool(own))

    return ClustersTab(backbone=backbone, clustering=clustering, on_workspace=on_workspace,
                       outputs=[backbone] + view_outputs + [own_dd], progress=cluster_progress, own=own_dd,
                       on_models=on_models)


def _own_labelings(ws) -> list[str]:
    """The workspace's self:K@MODEL labelings (none for no workspace, or when they cannot be listed)."""
    from cedm.clusters.labelings import self_label_specs

    if ws is None:
        return []
    try:
        return self_label_specs(ws)
    except CedmError:
        return []


# gr.Plot reports no plotly events: this forwards them to hidden textboxes whose change events reach the
# server. A click on a map point or a size bar (its customdata) selects the cluster; a box or lasso selection
# on the map sends its rows; hovering a map point (after the pointer rests 120 ms) shows its image.
# Re-attached whenever a plot is redrawn with a fresh event emitter.
PLOT_EVENTS_JS = """
() => {
  const box = (id) => document.querySelector('#' + id + ' textarea, #' + id + ' input');
  const send = (id, obj) => {
    const el = box(id);
    if (!el) return;
    el.value = JSON.stringify({...obj, t: Date.now()});
    el.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const row = (p) => {
    const cd = p && p.customdata;  // a row of a 2-D array arrives as a typed array
    return (cd !== null && typeof cd === 'object' && 'length' in cd) ? Array.from(cd) : [cd];
  };
  let hoverTimer = null, lastHover = null;
  const hook = () => {
    for (const id of ['cedm-map', 'cedm-sizes']) {
      const gd = document.querySelector('#' + id + ' .js-plotly-plot');
      if (!gd || !gd.on || gd._cedmHooked === gd._ev) continue;
      gd._cedmHooked = gd._ev;
      gd.on('plotly_click', (ev) => {
        const p = ev && ev.points && ev.points[0];
        if (!p || p.customdata === undefined) return;
        send('%(click)s', {plot: id, data: row(p)});
      });
      if (id !== 'cedm-map') continue;
      gd.on('plotly_selected', (ev) => {
        const rows = new Set();
        for (const p of (ev && ev.points) || []) {
          const d = row(p);
          if (d[0] !== undefined && d[0] !== null) rows.add(Number(d[0]));
        }
        if (ev) send('%(select)s', {rows: Array.from(rows)});
      });
      gd.on('plotly_deselect', () => send('%(select)s', {rows: []}));
      gd.on('plotly_hover', (ev) => {
        const p = ev && ev.points && ev.points[0];
        if (!p || p.customdata === undefined) return;
        const r = Number(row(p)[0]);
        clearTimeout(hoverTimer);
        hoverTimer = setTimeout(() => { if (r !== lastHover) { lastHover = r; send('%(hover)s', {row: r}); } }, 120);
      });
    }
  };
  setInterval(hook, 400);
}
""" % {"click": CLICK_BOX_ID, "select": SELECT_BOX_ID, "hover": HOVER_BOX_ID}

"""The app's page (one module per tab) and its launch settings.

Visitors get private workspaces in ``<home>/sessions/`` (cedm.ui.sessions), removed when their page
closes; the shipped demo stays read-only. Only that area and ``assets/`` are served as files.
"""
from __future__ import annotations

import logging

import gradio as gr

from cedm import workspace as wsp
from cedm.ui import (clusters_tab, dataset_tab, export_tab, generate_tab, labels_tab, probe_tab, query_tab,
                     train_tab)
from cedm.ui.common import MAX_FILE_SIZE, AppContext
from cedm.ui.sessions import DEFAULT_MAX_AGE_S, Sessions

# gradio's own temporary files (uploads, gallery images): checked hourly, removed after 2 hours
_CACHE_CLEANUP = (3600, 7200)


def build_app(home=None, session_max_age_s: float = DEFAULT_MAX_AGE_S, model_dirs=None) -> gr.Blocks:
    """The app. ``model_dirs``: folders of shipped models (default ``<repo>/checkpoints``; each subfolder with a
    cedm.json is one); models trained in the open workspace are listed too."""
    home = wsp.resolve_home(home)
    ctx = AppContext(home=home, sessions=Sessions(home, max_age_s=session_max_age_s))
    ctx.sessions.sweep()
    with gr.Blocks(title="cedm", analytics_enabled=False, delete_cache=_CACHE_CLEANUP) as demo:
        condition = gr.State(None)  # the cluster to generate from, set by the Query tab (generation_condition)
        gr.Markdown("# cedm: label-free conditional image generation\n"
                    "Bring unlabeled images, find their clusters, and generate new images per cluster.")
        # the app opens on the Clusters tab: the demo's map and a cluster gallery are the first screen
        with gr.Tabs(selected="clusters") as tabs:
            with gr.Tab("Dataset", id="dataset"):
                data = dataset_tab.build(ctx)
            with gr.Tab("Clusters", id="clusters"):
                clusters = clusters_tab.build(ctx, data.workspace)
            with gr.Tab("Query", id="query"):
                query_tab.build(ctx, data.workspace, clusters.backbone, clusters.clustering, condition)
            with gr.Tab("Train", id="train"):
                train = train_tab.build(ctx, data.workspace, clusters.clustering, clusters.backbone)
            with gr.Tab("Generate", id="generate"):
                gen = generate_tab.build(ctx, data.workspace, condition, shipped_dirs=model_dirs)
            with gr.Tab("Adapt", id="adapt"):  # "more like these": a probe on a trained model (seed 004)
                probe_load = probe_tab.build(ctx, data.workspace, shipped_dirs=model_dirs)
            with gr.Tab("Labels", id="labels"):
                labels_load = labels_tab.build(ctx, data.workspace, clusters)
            with gr.Tab("Export", id="export"):
                export_tab.build(ctx, data.workspace, clusters.backbone, clusters.clustering)
        demo.load(data.on_load, None, [data.workspace], api_visibility="private")
        demo.load(*labels_load, api_visibility="private")
        demo.load(probe_load[0], [data.workspace], probe_load[1], api_visibility="private")
        demo.load(gen.on_model, [gen.model, data.workspace], gen.init_outputs, api_visibility="private")
        demo.load(gen.on_open, [gen.model, data.workspace], gen.open_outputs, api_visibility="private")
        # "Generate from this cluster" (Query tab) opens the Generate tab with that cluster as the condition
        condition.change(lambda v: gr.Tabs(selected="generate") if generation_condition(v) else gr.Tabs(),
                         [condition], [tabs], api_visibility="private")
        # a model trained in the Train tab joins the Generate tab's list, selected
        train.trained.change(gen.on_workspace, [data.workspace, train.trained], [gen.model], api_visibility="private")
        demo.load(train.on_workspace, [data.workspace, train.resolution], [train.resolution], api_visibility="private")
        data.workspace.change(clusters.on_workspace, [data.workspace], clusters.outputs, api_visibility="private",
                              concurrency_limit=8)

        def end_session(request: gr.Request) -> None:  # tab closed or reloaded: drop its uploads
            ctx.sessions.end(request.session_hash)

        demo.unload(end_session)
    demo.cedm_context = ctx  # for launch_options and tests
    return demo


def generation_condition(value: dict | None) -> dict | None:
    """Hook for the Generate tab: the condition the Query tab's "generate from this cluster" stored in the
    shared ``condition`` gr.State, checked: {'workspace', 'backbone', 'clustering' (e.g. 'kmeans:50'),
    'cluster' (an id of that clustering)}, or None when nothing was chosen. The Generate tab takes that
    state as an input and resolves the labeling with cedm.clusters.labelings.resolve(ws, clustering)."""
    if not value:
        return None
    try:
        cond = {"workspace": str(value["workspace"]), "backbone": str(value["backbone"]),
                "clustering": str(value["clustering"]), "cluster": int(value["cluster"])}
    except (KeyError, TypeError, ValueError):
        return None
    return cond


# gr.Plot reports no clicks: this forwards plotly's click on a map point or a size bar (its customdata)
# to a hidden textbox, whose change event selects the cluster on the server. Re-attached whenever a plot
# is redrawn with a fresh event emitter.
PLOT_CLICK_JS = """
() => {
  const box = () => document.querySelector('#%(box)s textarea, #%(box)s input');
  const hook = () => {
    for (const id of ['cedm-map', 'cedm-sizes']) {
      const gd = document.querySelector('#' + id + ' .js-plotly-plot');
      if (!gd || !gd.on || gd._cedmHooked === gd._ev) continue;
      gd._cedmHooked = gd._ev;
      gd.on('plotly_click', (ev) => {
        const p = ev && ev.points && ev.points[0];
        const el = box();
        if (!p || p.customdata === undefined || !el) return;
        const cd = p.customdata;  // a row of a 2-D array arrives as a typed array
        const data = (cd !== null && typeof cd === 'object' && 'length' in cd) ? Array.from(cd) : [cd];
        el.value = JSON.stringify({plot: id, data: data, t: Date.now()});
        el.dispatchEvent(new Event('input', {bubbles: true}));
      });
    }
  };
  setInterval(hook, 400);
}
""" % {"box": clusters_tab.CLICK_BOX_ID}


def launch_options(demo: gr.Blocks) -> dict:
    """Keyword arguments for ``demo.launch``: serve only the visitor area and assets, cap upload sizes."""
    ctx: AppContext = demo.cedm_context
    ctx.sessions.root.mkdir(parents=True, exist_ok=True)
    return dict(allowed_paths=[str(ctx.sessions.root), str(wsp.REPO_ROOT / "assets")],
                max_file_size=MAX_FILE_SIZE, show_error=True, footer_links=["api", "gradio"], js=PLOT_CLICK_JS)


def serve(host: str = "127.0.0.1", port: int = 7860, home=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    demo = build_app(home)
    demo.queue().launch(server_name=host, server_port=port, **launch_options(demo))

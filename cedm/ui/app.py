"""The app's page (one module per tab) and its launch settings.

Two modes (cedm.ui.sessions): *local* (default) shares the home with the command line and keeps everything;
*public* (``public=True``, or ``SPACE_ID`` set) gives each visitor a private, temporary area with budgets.
In both, a closed tab or a client's cancel stops that session's work (engine requests, clustering, training).
Only ``assets/`` is an allowed path: results reach the browser as component outputs (copied to gradio's
cache), never by a path into a home.
"""
from __future__ import annotations

import json
import logging

import gradio as gr

from cedm import workspace as wsp
from cedm.ui import clusters_tab, dataset_tab, export_tab, generate_tab, labels_tab, layout_tab, models_tab, \
    probe_tab, query_tab, settings, train_tab
from cedm.ui.common import MAX_FILE_SIZE, AppContext, generation_condition
from cedm.ui.sessions import DEFAULT_MAX_AGE_S, LocalArea, Sessions, is_public

log = logging.getLogger("cedm.ui")

# gradio's own temporary files (uploads, gallery images): checked hourly, removed after 2 hours
_CACHE_CLEANUP = (3600, 7200)


def build_app(home=None, session_max_age_s: float = DEFAULT_MAX_AGE_S, model_dirs=None, public: bool | None = None,
              **area_kw) -> gr.Blocks:
    """The app. ``model_dirs``: folders of shipped models (default ``<repo>/checkpoints``; each subfolder with a
    cedm.json is one); models trained in the open workspace are listed too. ``public``: per-visitor areas
    (default: only on Hugging Face Spaces); ``area_kw``: budgets of cedm.ui.sessions.Sessions."""
    home = wsp.resolve_home(home)
    areas = (Sessions(home, max_age_s=session_max_age_s, **area_kw) if is_public(public) else LocalArea(home))
    areas.add_cancel_hook(_cancel_engine_requests)
    ctx = AppContext(home=home, sessions=areas)
    ctx.sessions.sweep()  # a restarted app removes what killed builds left behind
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
                layout = layout_tab.build_generate(ctx, data.workspace, gen)
            with gr.Tab("Layouts", id="layouts"):  # self-boxes / self-segments over the images (seed 003)
                annotations = layout_tab.build_annotations(ctx, data.workspace)
            with gr.Tab("Adapt", id="adapt") as adapt:  # "more like these": a probe on a trained model (seed 004)
                probe_load = probe_tab.build(ctx, data.workspace, shipped_dirs=model_dirs)
            # a selection saved in the Clusters tab (or a clustering made there) is offered when the tab opens
            adapt.select(probe_load[2], [data.workspace] + probe_load[1], probe_load[1], api_visibility="private",
                         show_progress="hidden")
            with gr.Tab("Labels", id="labels"):
                labels_load = labels_tab.build(ctx, data.workspace, clusters)
            with gr.Tab("Export", id="export"):
                export_tab.build(ctx, data.workspace, clusters.backbone, clusters.clustering)
            with gr.Tab("Models", id="models"):
                models = models_tab.build(ctx, data.workspace, shipped_dirs=model_dirs)
        # which backbones work now; the downloads switch only in local mode (a public server keeps its policy)
        settings.build(ctx, data.workspace, clusters.backbone, local=not ctx.sessions.public)
        demo.load(data.on_load, None, [data.workspace], api_visibility="private")
        demo.load(*labels_load, api_visibility="private")
        demo.load(probe_load[0], [data.workspace], probe_load[1], api_visibility="private")
        demo.load(gen.on_model, [gen.model, data.workspace], gen.init_outputs, api_visibility="private")
        demo.load(gen.on_open, [gen.model, data.workspace], gen.open_outputs, api_visibility="private")
        demo.load(layout.on_model, layout.inputs, layout.outputs, api_visibility="private", show_progress="hidden")
        demo.load(annotations.refresh, annotations.refresh_inputs, annotations.refresh_outputs,
                  api_visibility="private", show_progress="hidden")
        annotations.picked.change(layout.take_row, [annotations.picked], [layout.source, layout.row],
                                  api_visibility="private", show_progress="hidden")
        # "Generate from this cluster" (Query tab) opens the Generate tab with that cluster as the condition
        condition.change(lambda v: gr.Tabs(selected="generate") if generation_condition(v) else gr.Tabs(),
                         [condition], [tabs], api_visibility="private")
        # a model trained in the Train tab joins the Generate tab's list, selected
        train.trained.change(gen.on_workspace, [data.workspace, train.trained], [gen.model], api_visibility="private")
        # (no spinners: these refresh lists while a job's own progress shows elsewhere)
        models.uploaded.change(gen.on_workspace, [data.workspace, models.uploaded], [gen.model], api_visibility="private",
                               show_progress="hidden")
        train.trained.change(models.on_workspace, [data.workspace], [models.model], api_visibility="private",
                             show_progress="hidden")
        train.trained.change(clusters.on_models, [data.workspace], [clusters.own], api_visibility="private",
                             show_progress="hidden")  # a self:K model's own clusters can be browsed
        demo.load(models.on_workspace, [data.workspace], [models.model], api_visibility="private",
                  show_progress="hidden")
        demo.load(train.on_workspace, [data.workspace, train.resolution], [train.resolution], api_visibility="private")
        data.workspace.change(clusters.on_workspace, [data.workspace], clusters.outputs, api_visibility="private",
                              concurrency_limit=8, show_progress_on=[clusters.progress])

        def end_session(request: gr.Request) -> None:  # tab closed or reloaded: stop its work (public: drop it)
            ctx.sessions.end(request.session_hash)

        demo.unload(end_session)
    demo.cedm_context = ctx  # for launch_options and tests
    return demo


# plotly events (click, box/lasso selection, hover) reach the server through hidden textboxes
PLOT_CLICK_JS = clusters_tab.PLOT_EVENTS_JS


def _cancel_engine_requests(owner: str) -> None:
    """Cancel hook: the session's sampling requests stop at their next step (only if an engine is running)."""
    from cedm.inference import engine as eng

    if eng._ENGINE is not None and not eng._ENGINE._closed:
        n = eng._ENGINE.cancel_owner(owner)
        if n:
            log.info("cancelled %d sampling request(s) of a closed or cancelled session", n)


class CancelWatcher:
    """ASGI middleware: a client's ``job.cancel()`` (POST .../cancel with its session hash) stops that session's
    work before gradio cancels the event (gradio alone only abandons the task; its thread would run on)."""

    def __init__(self, app, on_cancel):
        self.app, self.on_cancel = app, on_cancel

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/cancel"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False) and msg.get("type") == "http.request"
        body = b"".join(chunks)
        try:
            session = json.loads(body or b"{}").get("session_hash")
            if isinstance(session, str) and session:
                self.on_cancel(session)
        except Exception:  # a malformed cancel is gradio's to answer
            log.debug("unreadable cancel request", exc_info=True)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def launch_options(demo: gr.Blocks) -> dict:
    """Keyword arguments for ``demo.launch``: serve only ``assets/`` by path, cap upload sizes, let a client's
    cancel stop its work."""
    from starlette.middleware import Middleware

    ctx: AppContext = demo.cedm_context
    return dict(allowed_paths=[str(wsp.REPO_ROOT / "assets")], max_file_size=MAX_FILE_SIZE, show_error=True,
                footer_links=["api", "gradio"], js=PLOT_CLICK_JS,
                app_kwargs={"middleware": [Middleware(CancelWatcher, on_cancel=ctx.sessions.cancel_work)]})


def serve(host: str = "127.0.0.1", port: int = 7860, home=None, public: bool | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    demo = build_app(home, public=public)
    ctx: AppContext = demo.cedm_context
    log.info("%s mode: %s", "public" if ctx.sessions.public else "local",
             "per-visitor temporary areas" if ctx.sessions.public else f"workspaces in {ctx.home} (shared with the CLI)")
    demo.queue().launch(server_name=host, server_port=port, **launch_options(demo))

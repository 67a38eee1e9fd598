"""The app's page (one module per tab) and its launch settings.

Visitors get private workspaces in ``<home>/sessions/`` (cedm.ui.sessions), removed when their page
closes; the shipped demo stays read-only. Only that area and ``assets/`` are served as files.
"""
from __future__ import annotations

import logging

import gradio as gr

from cedm import workspace as wsp
from cedm.ui import dataset_tab
from cedm.ui.common import MAX_FILE_SIZE, AppContext
from cedm.ui.sessions import DEFAULT_MAX_AGE_S, Sessions

# gradio's own temporary files (uploads, gallery images): checked hourly, removed after 2 hours
_CACHE_CLEANUP = (3600, 7200)


def build_app(home=None, session_max_age_s: float = DEFAULT_MAX_AGE_S) -> gr.Blocks:
    home = wsp.resolve_home(home)
    ctx = AppContext(home=home, sessions=Sessions(home, max_age_s=session_max_age_s))
    ctx.sessions.sweep()
    with gr.Blocks(title="cedm", analytics_enabled=False, delete_cache=_CACHE_CLEANUP) as demo:
        gr.Markdown("# cedm: label-free conditional image generation\n"
                    "Bring unlabeled images, find their clusters, and generate new images per cluster.")
        with gr.Tab("Dataset"):
            data = dataset_tab.build(ctx)
        demo.load(data.on_load, None, [data.workspace], api_visibility="private")

        def end_session(request: gr.Request) -> None:  # tab closed or reloaded: drop its uploads
            ctx.sessions.end(request.session_hash)

        demo.unload(end_session)
    demo.cedm_context = ctx  # for launch_options and tests
    return demo


def launch_options(demo: gr.Blocks) -> dict:
    """Keyword arguments for ``demo.launch``: serve only the visitor area and assets, cap upload sizes."""
    ctx: AppContext = demo.cedm_context
    ctx.sessions.root.mkdir(parents=True, exist_ok=True)
    return dict(allowed_paths=[str(ctx.sessions.root), str(wsp.REPO_ROOT / "assets")],
                max_file_size=MAX_FILE_SIZE, show_error=True, footer_links=["api", "gradio"])


def serve(host: str = "127.0.0.1", port: int = 7860, home=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    demo = build_app(home)
    demo.queue().launch(server_name=host, server_port=port, **launch_options(demo))

"""Layout of the app and its launch settings."""
from __future__ import annotations

import gradio as gr

from cedm import workspace as wsp


def _dataset_summary(ws: wsp.Workspace) -> str:
    m = ws.manifest
    gt = "yes" if ws.ground_truth is not None else "no"
    return (f"**{ws.name}**: {ws.n} images at {ws.resolution}x{ws.resolution}, source `{m.get('source')}`, "
            f"ground truth for evaluation: {gt}")


def build_app(home=None) -> gr.Blocks:
    home = wsp.resolve_home(home)
    ws = wsp.open_demo(home)
    with gr.Blocks(title="cedm", analytics_enabled=False) as demo:
        gr.Markdown("# cedm: label-free conditional image generation")
        with gr.Tab("Dataset"):
            summary = gr.Markdown(_dataset_summary(ws))
            gallery = gr.Gallery(value=[ws.images[i] for i in range(min(48, ws.n))], columns=12,
                                 label="first images", height=360)
    return demo


def serve(host: str = "127.0.0.1", port: int = 7860, home=None) -> None:
    demo = build_app(home)
    demo.queue().launch(server_name=host, server_port=port, show_error=True)

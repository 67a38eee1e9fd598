"""Settings: model downloads. Says which backbones work now (offline, cached, downloadable, or needing downloads
switched on) and, in local mode, has the one switch (cedm.hub.set_allow_downloads) as a checkbox. On a public
Space visitors see the status only (downloads are on there; nothing is fetched until someone picks a model)."""
from __future__ import annotations

import gradio as gr

from cedm import hub

# Images per second on a 2-core CPU at 224 px, for time estimates: DINO ViT-B/16 measured (REFERENCE.md), the
# others scaled from it by forward FLOPs (ViT-S/14 ~5.5, ViT-B/32 ~4.4, EfficientNet-Lite0 ~0.4 vs 17.6 GFLOPs)
CPU_IMAGES_PER_S = {"dino_vitb16": 3.0, "dinov2_vits14": 10.0, "clip_vitb32": 12.0, "efficientnet_lite0": 60.0}


def status_markdown(n_images: int | None = None) -> str:
    """The policy and one line per backbone; with ``n_images``, a CPU time estimate for its features."""
    from cedm.features.backbones import availability, get_spec, list_backbones

    policy = hub.download_policy()
    lines = [(f"**Model downloads: {'on' if policy.allowed else 'off'}** ({policy.reason}). "
              "Weights come from the Hugging Face hub into its standard cache, only for the models named here.")]
    for name in list_backbones():
        if name.startswith("clip:"):
            continue  # CLIP towers registered on the fly for labels
        words = availability(name)[1]
        est = ""
        if n_images and name in CPU_IMAGES_PER_S:
            est = f"; features for {n_images:,} images take about {_minutes(n_images / CPU_IMAGES_PER_S[name])} on CPU"
        lines.append(f"- `{name}`: {words}{est} ({get_spec(name).summary})")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 60 else f"{max(1, round(seconds))} s"


def build(ctx, workspace: gr.Dropdown, backbone: gr.Dropdown, local: bool | None = None) -> gr.Markdown:
    """The settings accordion; ``local`` (default: not on a Space) shows the downloads switch, which also
    relabels the Clusters tab's ``backbone`` choices (cached / downloads on first use / downloads off)."""
    from cedm.ui import cluster_views as cv

    local = (not hub.on_space()) if local is None else local

    def open_ws(workspace_name, request):
        try:
            return ctx.open(workspace_name, request)
        except Exception:  # no workspace yet (or gone): the status without estimates
            return None

    with gr.Accordion("Settings: model downloads", open=False):
        info = gr.Markdown(status_markdown(), elem_id="cedm-downloads-status")
        if local:
            toggle = gr.Checkbox(value=hub.downloads_allowed(), label="Allow model downloads",
                                 info="DINO, DINOv2, CLIP and Inception weights from the Hugging Face hub",
                                 interactive=not hub.hub_offline(), elem_id="cedm-allow-downloads")

            def switch(allowed: bool, workspace_name, current, request: gr.Request):
                hub.set_allow_downloads(bool(allowed))
                ws = open_ws(workspace_name, request)
                choices = cv.backbone_choices(ws)[0]
                return status_markdown(ws.n if ws else None), gr.Dropdown(choices=choices, value=current)

            toggle.change(switch, [toggle, workspace, backbone], [info, backbone], api_visibility="private")

    def refresh(workspace_name, request: gr.Request):  # time estimates for the open workspace's size
        ws = open_ws(workspace_name, request)
        return status_markdown(ws.n if ws else None)

    workspace.change(refresh, [workspace], [info], api_visibility="private")
    return info

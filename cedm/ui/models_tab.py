"""Models tab: download a model as a zip (loadable by ``cedm sample`` and by another installation's app) and
upload such a zip into the open workspace (cedm.model.package validates it: JSON + safetensors only).

Public API endpoints: ``/download_model`` (workspace, model) -> zip file; ``/upload_model`` (workspace, zip,
name) -> summary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from cedm.errors import CedmError
from cedm.model.registry import find_model, list_models
from cedm.ui.common import AppContext, guarded


@dataclass
class ModelsTab:
    uploaded: gr.State      # registry name of the model uploaded last (the Generate tab selects it)
    on_workspace: Callable  # (workspace) -> the model dropdown
    model: gr.Dropdown


def build(ctx: AppContext, workspace: gr.Dropdown, shipped_dirs=None) -> ModelsTab:
    from cedm.model import package

    gr.Markdown("Download a model as a zip: unzipped it is an ordinary model folder (`cedm sample FOLDER`), and "
                "the app of another installation takes it here. Upload such a zip to use the model with the open "
                "workspace (only cedm.json, config.json and .safetensors weights are accepted).")
    with gr.Row(equal_height=False):
        with gr.Column():
            model = gr.Dropdown(choices=[], value=None, label="model", elem_id="cedm-models-model",
                                allow_custom_value=True)
            download = gr.Button("Download as zip", elem_id="cedm-models-download")
            zip_out = gr.File(label="model zip", interactive=False, elem_id="cedm-models-zip")
        with gr.Column():
            zip_in = gr.File(file_count="single", type="filepath", file_types=[".zip"], label="model zip to upload",
                             elem_id="cedm-models-upload")
            name = gr.Textbox(label="model name (optional)", placeholder="from the zip's folder")
            upload = gr.Button("Upload model", variant="primary", elem_id="cedm-models-go")
            status = gr.Markdown(elem_id="cedm-models-status")
    uploaded = gr.State(None)

    def entries(workspace_name, request):
        return list_models(ctx.open(workspace_name, request) if workspace_name else None, shipped_dirs=shipped_dirs)

    @guarded
    def download_model(workspace_name: str, model_name: str, request: gr.Request):
        """A zip of a model's folder (cedm.json + safetensors weights)."""
        entry = find_model(entries(workspace_name, request), model_name)
        out = ctx.downloads(request) / f"{entry.path.name}.zip"
        return str(package.pack_model(entry.path, out))

    @guarded
    def upload_model(workspace_name: str, zip_file, model_name: str, request: gr.Request):
        """Install a model zip into the workspace's models; returns its registry name and conditions."""
        if not zip_file:
            raise CedmError("choose a model .zip to upload")
        ws = ctx.open(workspace_name, request)
        path = Path(str(zip_file))
        try:
            with ctx.sessions.heavy("import", getattr(request, "session_hash", None)) as budget:
                if budget is not None and path.stat().st_size > budget:
                    raise CedmError(f"the model zip is {path.stat().st_size / 2**20:,.0f} MB; at most "
                                    f"{budget / 2**20:,.0f} MB here")
                folder = package.install_model_zip(path, ws.derived_dir("models"), model_name)
        finally:
            from cedm.ui.dataset_tab import _remove_uploads

            _remove_uploads([path])
        entry = find_model(list_models(ws, shipped_dirs=[]), f"{ws.name}/{folder.name}")
        return {"model": entry.name, "condition": entry.condition_spec, "n_conditions": entry.n_conditions,
                "resolution": entry.info.get("resolution")}

    def on_workspace(workspace_name, request: gr.Request):
        try:
            found = entries(workspace_name, request)
        except CedmError:
            return gr.Dropdown(choices=[])
        return gr.Dropdown(choices=[(e.describe(), e.name) for e in found], value=found[0].name if found else None)

    def show(summary: dict, workspace_name, request: gr.Request):
        return (f"Uploaded **{summary['model']}** ({summary['condition']}, {summary['resolution']} px): it is in "
                "the Generate tab.", summary["model"], on_workspace(workspace_name, request))

    download.click(download_model, [workspace, model], [zip_out], api_name="download_model", concurrency_limit=4)
    summary = gr.JSON(visible=False)
    upload.click(upload_model, [workspace, zip_in, name], [summary], api_name="upload_model", concurrency_limit=2
                 ).success(show, [summary, workspace], [status, uploaded, model], api_visibility="private")
    workspace.change(on_workspace, [workspace], [model], api_visibility="private", show_progress="hidden")
    return ModelsTab(uploaded=uploaded, on_workspace=on_workspace, model=model)

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
from cedm.progress import format_seconds
from cedm.ui import common
from cedm.ui.common import AppContext, guarded

EVAL_N = (20, 1000, 200)  # samples per evaluation in the app: min, max, default (the CLI does 50k-style runs)
EVAL_SAMPLER, EVAL_STEPS = "dpmpp2m", 12  # the app's sampler (cedm eval defaults to the paper's Heun 18)


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
    with gr.Accordion("Evaluate the model on the open workspace (FD_EffNetLite0)", open=False):
        gr.Markdown("Samples the model and measures them against all images of the workspace it was trained on: "
                    "Fréchet distance in EfficientNet-Lite0 features (offline; not FID), with the noise floor of "
                    "as many real images, and for a conditioned model the confidence (MSP) and agreement of its "
                    "clusters. Larger runs: `cedm eval` on the command line.")
        with gr.Row(equal_height=True):
            eval_n = gr.Slider(*EVAL_N[:2], value=EVAL_N[2], step=10, label="samples", elem_id="cedm-eval-n")
            eval_w = gr.Number(2.0, minimum=0, label="guidance w (conditioned models)", elem_id="cedm-eval-w")
            eval_btn = gr.Button("Evaluate", variant="primary", elem_id="cedm-eval-go")
            eval_cancel = gr.Button("Cancel", size="sm", elem_id="cedm-eval-cancel")
        eval_panel = common.progress_panel("eval")
        eval_out = gr.Markdown(elem_id="cedm-eval-result")
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

    @guarded
    def evaluate(workspace_name: str, model_name: str, n, w, request: gr.Request, progress=gr.Progress()):
        """FD_EffNetLite0 (and MSP, agreement) of ``n`` samples of a model against the workspace's images."""
        from cedm.evaluate import default_eval_dir, evaluate_model

        ws = ctx.open(workspace_name, request)
        entry = find_model(entries(workspace_name, request), model_name)
        try:
            n, w = int(n), float(w)
        except (TypeError, ValueError):
            raise CedmError("samples and guidance must be numbers") from None
        if not EVAL_N[0] <= n <= EVAL_N[1]:
            raise CedmError(f"samples: {EVAL_N[0]} to {EVAL_N[1]} in the app (more with cedm eval)")
        report = common.progress_callback(progress, ctx.sessions, request, job="eval")  # Cancel stops it
        report(0, None, "eval: preparing")
        out = evaluate_model(entry.path, ws, n=n, guidance=(w,), sampler=EVAL_SAMPLER, steps=EVAL_STEPS,
                             extra_metrics=False, progress=report,
                             out_dir=default_eval_dir(entry.path, ctx.visitor_home(request)))
        return eval_markdown(out), f"evaluated in {format_seconds(report.elapsed_s())}"

    @guarded
    def cancel_eval(request: gr.Request):
        ctx.sessions.request_cancel(request.session_hash)
        gr.Info("cancelling the evaluation (finished chunks of samples are kept for the next run)")

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
    eval_btn.click(lambda: ("", "Starting the evaluation ..."), None, [eval_out, eval_panel], queue=False,
                   api_visibility="private", show_progress="hidden")  # the previous result goes at once
    ran = eval_btn.click(evaluate, [workspace, model, eval_n, eval_w], [eval_out, eval_panel],
                         api_visibility="private", concurrency_limit=1, show_progress_on=[eval_panel])
    ran.failure(lambda: "The evaluation stopped (cancelled, or an error: its message says why).", None,
                [eval_panel], api_visibility="private", show_progress="hidden")
    eval_cancel.click(cancel_eval, None, None, api_visibility="private", concurrency_limit=None)
    return ModelsTab(uploaded=uploaded, on_workspace=on_workspace, model=model)


def eval_markdown(out: dict) -> str:
    """The evaluation's results as a table (one row per guidance value) and its notes."""
    def num(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    lines = ["| model | guidance | n | FD_EffNetLite0 | noise floor | MSP (real images) | agreement | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        w = "-" if r["guidance"] is None else f"{r['guidance']:g}"
        lines.append(f"| {r['model_name']} | {w} | {r['n']} | {num(r.get('FD_EffNetLite0'), '.1f')} "
                     f"| {num(r.get('FD_EffNetLite0_floor'), '.1f')} | {num(r.get('MSP'))} ({num(r.get('MSP_real'))}) "
                     f"| {num(r.get('agreement'))} | {r['seconds']:.0f} |")
    notes = list(dict.fromkeys(out.get("notes") or []))
    return "\n".join(lines + ([""] + [f"- {m}" for m in notes] if notes else []))

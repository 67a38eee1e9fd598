"""Train tab: train (or continue) a C-EDM on the open workspace, conditioned on a clustering of it.

The condition defaults to the Clusters tab's current clustering (e.g. ``kmeans:20`` on its backbone); ``none``
trains an unconditional model. The app allows short budgets (at most MAX_KIMG_CPU thousand images on a CPU):
longer runs belong to the command line, whose exact command the tab shows. One training at a time per app
process (it takes the CPU). Stop ends the run at the next step with a checkpoint; Train with the same name
continues it. The model then appears in the Generate tab (cedm.model.registry lists workspace models).

Public API endpoint: ``/train`` (workspace, condition, backbone, preset, resolution, kimg, name) -> summary.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from cedm.errors import CedmError
from cedm.ui.common import AppContext, guarded

PRESETS_CPU = ["tiny", "small"]
PRESETS_GPU = ["tiny", "small", "paper"]
RESOLUTIONS = [16, 32, 64]
MAX_KIMG_CPU = 100.0     # small preset at ~80 img/s on 2 cores: about 20 minutes
MAX_KIMG_GPU = 2000.0
DEFAULT_KIMG = 10.0
BATCH, LR = 32, 1e-3     # the shipped demo models' settings (checkpoints/README.md)

_TRAINING = threading.Lock()  # one training per process: it uses every core the app has


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def check_request(preset: str, resolution, kimg, ws_resolution: int) -> tuple[str, int, float]:
    """Validated (preset, resolution, kimg) for the app's limits."""
    presets = PRESETS_GPU if _on_gpu() else PRESETS_CPU
    if preset not in presets:
        raise CedmError(f"preset {preset!r} is not available here; choose one of {', '.join(presets)}")
    try:
        resolution, kimg = int(resolution), float(kimg)
    except (TypeError, ValueError):
        raise CedmError("resolution and kimg must be numbers") from None
    if resolution not in RESOLUTIONS:
        raise CedmError(f"resolution must be one of {RESOLUTIONS}")
    if resolution > ws_resolution:
        raise CedmError(f"resolution {resolution} is above the workspace's images ({ws_resolution} px)")
    limit = MAX_KIMG_GPU if _on_gpu() else MAX_KIMG_CPU
    if not 0 < kimg <= limit:
        raise CedmError(f"kimg must be above 0 and at most {limit:g} in the app; train longer from the command "
                        f"line (the command is shown below)")
    return preset, resolution, kimg


def cli_command(ws_name: str, condition: str, backbone: str | None, preset: str, resolution: int, kimg: float,
                name: str) -> str:
    """The command line that continues (or repeats) this training for a longer budget."""
    parts = ["cedm", "train", ws_name, "--condition", condition]
    from cedm.clusters.labelings import METHODS

    if backbone and condition.split(":", 1)[0] in METHODS:  # clusters depend on the features they came from
        parts += ["--backbone", backbone]
    parts += ["--preset", preset, "--resolution", str(resolution), "--batch", str(BATCH), "--lr", f"{LR:g}",
              "--kimg", f"{kimg:g}", "--out", name, "--resume"]
    return " ".join(parts)


def build(ctx: AppContext, workspace: gr.State, clustering: gr.Textbox, backbone: gr.Dropdown):
    gr.Markdown("Train a diffusion model on the open workspace, conditioned on a clustering of it "
                "(`kmeans:C`, `temi:C`, `labels:NAME`), `self:K` (self-labelled, online: the model clusters its "
                "own features while it trains) or `none` (unconditional). The app trains short runs; "
                "Stop keeps a checkpoint, and Train with the same name continues. Trained models appear in "
                "the Generate tab.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            condition = gr.Textbox(value="kmeans:20", label="condition (follows the Clusters tab)",
                                   elem_id="cedm-train-condition")
            with gr.Row():
                preset = gr.Dropdown(PRESETS_GPU if _on_gpu() else PRESETS_CPU, value="small", label="network",
                                     min_width=100, elem_id="cedm-train-preset")
                resolution = gr.Dropdown(RESOLUTIONS, value=32, label="resolution (px)", min_width=100,
                                         elem_id="cedm-train-resolution")
            kimg = gr.Number(DEFAULT_KIMG, minimum=0.032, label="budget: thousands of training images (kimg)",
                             elem_id="cedm-train-kimg")
            name = gr.Textbox("", label="model name (empty: from the condition and network)",
                              elem_id="cedm-train-name")
            self_btn = gr.Button("self-labelled (online): self:20", size="sm", elem_id="cedm-train-self")
            with gr.Row():
                go = gr.Button("Train (or continue)", variant="primary", elem_id="cedm-train-go")
                stop = gr.Button("Stop", variant="stop", elem_id="cedm-train-stop")
        with gr.Column(scale=2, min_width=400):
            status = gr.Markdown(elem_id="cedm-train-status")
            grid = gr.Image(label="samples of the trained model (at the end of a run)", type="numpy", format="png",
                            interactive=False, elem_id="cedm-train-samples", height=300)
            with gr.Accordion("Summary (as the /train endpoint returns it)", open=False):
                summary = gr.JSON(label="summary", max_height=260)
    trained = gr.State(None)  # the trained model's registry name, for the Generate tab

    @guarded
    def train(workspace_name: str, condition_spec: str, backbone_name: str, preset_name: str, res, budget,
              model_name: str, request: gr.Request, progress=gr.Progress()):
        """Train (or continue) a model on the workspace; returns a summary of where the run stands."""
        from cedm.model.train import default_model_name, train_workspace

        ws = ctx.open(workspace_name, request)
        condition_spec = (condition_spec or "none").strip()
        preset_name, res, budget = check_request(preset_name, res, budget, ws.resolution)
        model_name = (model_name or "").strip() or default_model_name(condition_spec, f"{preset_name}{res}")
        session = getattr(request, "session_hash", None)
        if not _TRAINING.acquire(blocking=False):
            raise CedmError("another training is running in this app; try again when it has finished "
                            "(or train from the command line)")
        try:
            ctx.sessions.start_step(session)
            t0 = time.time()

            def report(done: int, total: int, desc: str = "") -> None:
                progress(done / max(total, 1), desc=f"training {model_name}: {done / 1000:g} of {total / 1000:g} kimg, "
                                                    f"{desc}")

            out = train_workspace(
                ws, condition_spec, name=model_name, preset=preset_name, resume=True, progress=report,
                show_progress=False, backbone=backbone_name or None,
                should_stop=lambda: ctx.sessions.is_cancelled(session),
                kimg=budget, resolution=res, batch=BATCH, lr=LR, lr_rampup_kimg=min(5.0, budget / 10),
                checkpoint_kimg=max(2.0, budget / 5), sample_kimg=None)
        finally:
            _TRAINING.release()
        info = json.loads((out / "cedm.json").read_text())
        t = info.get("training", {})
        samples = sorted((out / "training").glob("samples-*.png"))
        return {"model": f"{ws.name}/{out.name}", "condition": condition_spec, "n_conditions": info["n_conditions"],
                "kimg_done": t.get("kimg_done"), "kimg_total": t.get("kimg_total"), "complete": t.get("complete"),
                "seconds_this_call": round(time.time() - t0, 1), "training_seconds": t.get("elapsed_s"),
                "samples": samples[-1].name if samples else None,
                "command_line": cli_command(ws.name, condition_spec, backbone_name, preset_name, res,
                                            max(budget * 10, 200.0), out.name)}

    @guarded
    def show(workspace_name: str, result: dict, request: gr.Request):
        ws = ctx.open(workspace_name, request)
        folder = ws.derived_dir("models") / result["model"].split("/", 1)[1]
        samples = folder / "training" / result["samples"] if result.get("samples") else None
        state = "complete" if result["complete"] else "stopped (Train continues it)"
        text = (f"**{result['model']}**: {result['kimg_done']:g} of {result['kimg_total']:g} kimg, {state}; "
                f"{result['seconds_this_call']:g} s in this run. Open the **Generate** tab to sample it.\n\n"
                f"A longer run from the command line (continues this one):\n\n`{result['command_line']}`")
        return text, (_enlarged(samples) if samples is not None and samples.is_file() else None), result["model"]

    def on_workspace(workspace_name: str, current, request: gr.Request):
        """Resolutions up to the workspace's images; 32 px (the demo models') when the images allow it."""
        try:
            top = ctx.open(workspace_name, request).resolution
        except CedmError:
            return gr.Dropdown()
        choices = [r for r in RESOLUTIONS if r <= top] or [min(RESOLUTIONS)]
        value = current if current in choices else (32 if 32 in choices else choices[-1])
        return gr.Dropdown(choices=choices, value=value)

    def cancel(request: gr.Request):
        ctx.sessions.request_cancel(request.session_hash)
        gr.Info("stopping the training at the next step (a checkpoint is kept)")

    go.click(train, [workspace, condition, backbone, preset, resolution, kimg, name], [summary], api_name="train",
             concurrency_limit=2).success(show, [workspace, summary], [status, grid, trained],
                                          api_visibility="private")
    stop.click(cancel, None, None, api_visibility="private", concurrency_limit=None)
    clustering.change(lambda spec: spec or gr.update(), [clustering], [condition], api_visibility="private")
    self_btn.click(lambda: "self:20", None, [condition], api_visibility="private")
    workspace.change(on_workspace, [workspace, resolution], [resolution], api_visibility="private")
    return TrainTab(trained=trained, on_workspace=on_workspace, resolution=resolution)


def _enlarged(path, width: int = 512):
    """The sample grid scaled up by whole pixels (a 4x4 grid of 16 px images is 64 px wide)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        k = max(1, width // im.width)
        return np.asarray(im.resize((im.width * k, im.height * k), Image.NEAREST))


@dataclass
class TrainTab:
    trained: gr.State       # the registry name of the model trained last (the Generate tab selects it)
    on_workspace: Callable  # (workspace, resolution) -> the resolution dropdown for that workspace
    resolution: gr.Dropdown

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
from cedm.model.edm import PRESETS
from cedm.progress import format_seconds
from cedm.ui import common
from cedm.ui.common import AppContext, guarded

PRESETS_GPU = list(PRESETS)
PRESETS_CPU = [p for p in PRESETS if p != "paper"]  # the paper network trains for days on a CPU
RESOLUTIONS = [16, 32, 64]
MAX_KIMG_CPU = 100.0     # small preset at ~80 img/s on 2 cores: about 20 minutes
MAX_KIMG_GPU = 2000.0
DEFAULT_KIMG = 10.0
BATCH, LR = 32, 1e-3     # the shipped demo models' settings (checkpoints/README.md)

_TRAINING = threading.Lock()  # one training per process: it uses every core the app has
SHIPPED_INIT = "demo-uncond"  # "start from the shipped unconditional model" (small preset, 32 px)
LIVE_S = 2.0                  # the live view (kimg, loss, newest sample grid) refreshes this often
GRIDS_PER_RUN = 5             # sample grids written (and shown) during a run
EXPECT = ("Short runs from scratch give colour blobs first: shapes need tens of kimg (the shipped demo models "
          "trained 300 kimg). Starting from the shipped unconditional model gets there far sooner.")


def init_model(ws) -> "object | None":
    """The shipped unconditional model's registry entry, when it is shipped."""
    from cedm.model.registry import list_models

    return next((e for e in list_models(ws) if e.name == SHIPPED_INIT), None)


def estimate(preset: str, resolution, kimg, n_conditions: int = 0) -> str:
    """'about 3 min (55 images/s measured here)' for a training budget; measured once per preset/resolution."""
    from cedm.model.train import measure_images_per_s

    try:
        resolution, kimg = int(resolution), float(kimg)
    except (TypeError, ValueError):
        return ""
    ips = measure_images_per_s(preset, resolution, n_conditions, batch=BATCH, steps=1)  # about a second
    return (f"Estimated time: about {format_seconds(kimg * 1000 / ips)} for {kimg:g} kimg "
            f"({ips:,.0f} images/s measured here for the {preset} network at {resolution} px).")


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
            init = gr.Checkbox(False, label="start from the shipped unconditional model (small, 32 px: fine-tunes "
                                            "far faster than from scratch)", elem_id="cedm-train-init")
            eta = gr.Markdown(elem_id="cedm-train-eta")
            with gr.Row():
                go = gr.Button("Train (or continue)", variant="primary", elem_id="cedm-train-go")
                stop = gr.Button("Stop", variant="stop", elem_id="cedm-train-stop")
        with gr.Column(scale=2, min_width=400):
            panel = common.progress_panel("training")
            status = gr.Markdown(EXPECT, elem_id="cedm-train-status")
            grid = gr.Image(label="samples of the model so far (EMA weights)", type="numpy", format="png",
                            interactive=False, elem_id="cedm-train-samples", height=300)
            with gr.Accordion("Summary (as the /train endpoint returns it)", open=False):
                summary = gr.JSON(label="summary", max_height=260)
    trained = gr.State(None)  # the trained model's registry name, for the Generate tab
    timer = gr.Timer(LIVE_S, active=False)

    @guarded
    def train(workspace_name: str, condition_spec: str, backbone_name: str, preset_name: str, res, budget,
              model_name: str, from_shipped: bool = False, request: gr.Request = None, progress=gr.Progress()):
        """Train (or continue) a model on the workspace; returns a summary of where the run stands.
        ``from_shipped``: start from the shipped unconditional model (its preset and resolution)."""
        from cedm.model.train import default_model_name, train_workspace

        ws = ctx.open(workspace_name, request)
        condition_spec = (condition_spec or "none").strip()
        init_entry = None
        if from_shipped:
            init_entry = init_model(ws)
            if init_entry is None:
                raise CedmError("the shipped unconditional model is not installed here: train from scratch")
            preset_name, res = init_entry.info.get("preset", preset_name), init_entry.info.get("resolution", res)
        preset_name, res, budget = check_request(preset_name, res, budget, ws.resolution)
        model_name = (model_name or "").strip() or default_model_name(condition_spec, f"{preset_name}{res}")
        session = getattr(request, "session_hash", None)
        if not _TRAINING.acquire(blocking=False):
            raise CedmError("another training is running in this app; try again when it has finished "
                            "(or train from the command line)")
        try:
            t0 = time.time()
            live = common.progress_callback(progress, ctx.sessions, request, job="training", cancellable=False)
            live.extra = {"model": model_name, "folder": ws.derived_dir("models") / model_name}
            live(0, 1, f"training {model_name}: starting")

            def report(done: int, total: int, desc: str = "") -> None:
                loss = desc.split()[1] if desc.startswith("loss ") else None
                live.extra.update(kimg=done / 1000, kimg_total=total / 1000, loss=loss)
                live(done, total, f"training {model_name}: {done / 1000:g} of {total / 1000:g} kimg, {desc}")

            out = train_workspace(
                ws, condition_spec, name=model_name, preset=preset_name, resume=True, progress=report,
                show_progress=False, backbone=backbone_name or None,
                should_stop=lambda: ctx.sessions.is_cancelled(session),
                kimg=budget, resolution=res, batch=BATCH, lr=LR, lr_rampup_kimg=min(5.0, budget / 10),
                checkpoint_kimg=max(2.0, budget / 5), sample_kimg=budget / GRIDS_PER_RUN,
                init=str(init_entry.path) if init_entry is not None else None)
            live.finished = True
        finally:
            _TRAINING.release()
        info = json.loads((out / "cedm.json").read_text())
        t = info.get("training", {})
        samples = sorted((out / "training").glob("samples-*.png"))
        return {"model": f"{ws.name}/{out.name}", "condition": condition_spec, "n_conditions": info["n_conditions"],
                "kimg_done": t.get("kimg_done"), "kimg_total": t.get("kimg_total"), "complete": t.get("complete"),
                "seconds_this_call": round(time.time() - t0, 1), "training_seconds": t.get("elapsed_s"),
                "samples": samples[-1].name if samples else None,
                "init": init_entry.name if init_entry is not None else None,
                "command_line": cli_command(ws.name, condition_spec, backbone_name, preset_name, res,
                                            max(budget * 10, 200.0), out.name) + ctx.sessions.cli_home()}

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

    def start():
        """Answer the click at once: the previous run's result goes, the live view starts."""
        return "Starting the training ...", None, gr.Timer(active=True)

    def live_view(request: gr.Request):
        """kimg, loss, ETA and the newest sample grid of this visitor's running training."""
        p = common.LIVE.get((getattr(request, "session_hash", None), "training"))
        if p is None:
            return gr.skip(), gr.skip()
        e = p.extra
        if "kimg" not in e:
            return f"**{e.get('model')}**: preparing (labels, first batch) ...", gr.skip()
        eta = p.eta_s()
        text = (f"**{e['model']}**: {e['kimg']:.2f} of {e['kimg_total']:g} kimg" +
                (f" · loss {e['loss']}" if e.get("loss") else "") +
                (f" · about {format_seconds(eta)} left" if eta is not None else "") + f"  \n{EXPECT}")
        grids = sorted((e["folder"] / "training").glob("samples-*.png")) if e.get("folder") else []
        return text, (_enlarged(grids[-1]) if grids else gr.skip())

    @guarded
    def on_settings(preset_name, res, budget, from_shipped, request: gr.Request):
        if from_shipped:
            entry = init_model(None)
            if entry is None:
                return "The shipped unconditional model is not installed here."
            preset_name, res = entry.info.get("preset", preset_name), entry.info.get("resolution", res)
        return estimate(preset_name, res, budget)

    go.click(start, None, [status, grid, timer], api_visibility="private", show_progress="hidden", queue=False)
    run = go.click(train, [workspace, condition, backbone, preset, resolution, kimg, name, init], [summary],
                   api_name="train", concurrency_limit=2, show_progress_on=[panel])
    run.then(lambda: gr.Timer(active=False), None, [timer], api_visibility="private", show_progress="hidden")
    run.success(show, [workspace, summary], [status, grid, trained], api_visibility="private",
                show_progress="hidden")
    run.failure(lambda: "**The training stopped with an error** (the message says why); its last checkpoint is "
                "kept and Train continues it.", None, [status], api_visibility="private", show_progress="hidden")
    timer.tick(live_view, None, [status, grid], api_visibility="private", show_progress="hidden",
               concurrency_limit=None)
    for c in (preset, resolution, kimg, init):
        c.change(on_settings, [preset, resolution, kimg, init], [eta], api_visibility="private",
                 show_progress="hidden", trigger_mode="always_last")
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

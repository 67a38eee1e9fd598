"""Adapt tab ("More like these"): condition a trained model after training with a probe (cedm.probes).

Pick a clustering of the open workspace, a saved row set, or a few images by row number (saved as a row set:
picked vs the rest); the probe is trained on the spot (with progress; cached per model, labeling and settings)
and the model is sampled toward one of its classes through the inference engine, next to the same noise
unguided. Captions say how each image was steered: "probe-guided" (a condition added after training) as
opposed to "classifier-free" (a condition the model was trained with, the Generate tab).

Public API endpoint: none (the tab's events are private).
"""
from __future__ import annotations

import threading

import gradio as gr

from cedm.errors import CedmError
from cedm.model.registry import ModelEntry, find_model, list_models
from cedm.progress import format_seconds
from cedm.ui import common
from cedm.ui.common import AppContext, guarded, progress_callback
from cedm.ui.sessions import session_owner

CLUSTERING, ROWSET, PICKS = "a clustering", "a saved row set", "images I pick (row numbers)"
SOURCES = [CLUSTERING, ROWSET, PICKS]
MAX_IMAGES = 8
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def training_copy(entry: ModelEntry):
    """A private copy of the model for probe training (the engine's copy belongs to its worker thread)."""
    from cedm.model.edm import load_model

    key = (str(entry.path), (entry.path / "cedm.json").stat().st_mtime_ns)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(entry.path)
        return _MODELS[key]


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(v) for v in str(text or "").replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise CedmError("picked images: give row numbers separated by commas, e.g. 12, 40, 77") from None
    if not rows:
        raise CedmError("pick at least one image (row numbers, e.g. from the Clusters or Query tab)")
    return rows


def spec_of(ws, source: str, clustering: str, rowset: str, picks: str, picks_name: str) -> str:
    """The labeling spec a probe is trained on; picked rows are saved as a row set first."""
    from cedm.clusters import labelings

    if source == CLUSTERING:
        if not clustering:
            raise CedmError("choose a clustering (make one in the Clusters tab)")
        return str(clustering)
    if source == ROWSET:
        if not rowset:
            raise CedmError("choose a saved row set")
        return f"rows:{rowset}"
    if source == PICKS:
        name = (picks_name or "picks").strip()
        labelings.save_rows(ws, name, parse_rows(picks), note="picked in the Adapt tab")
        return f"rows:{name}"
    raise CedmError(f"unknown source {source!r}")


def report_markdown(info: dict) -> str:
    r = info.get("report") or {}
    lines = [f"**Probe** on `{info.get('labeling')}` · {info.get('n_classes')} classes · route "
             f"{info.get('settings', {}).get('route')} · trained in {r.get('seconds', 0):.0f} s on "
             f"{r.get('n_train')} images ({r.get('n_heldout')} held out)", "",
             "| held-out at sigma | accuracy | balanced |", "|---|---|---|"]
    if r.get("clean"):
        lines.append(f"| clean | {r['clean']['accuracy']:.2f} | {r['clean']['balanced_accuracy']:.2f} |")
    for b in r.get("sigma_bins", []):
        lines.append(f"| {b['sigma'][0]:g}-{b['sigma'][1]:g} | {b['accuracy']:.2f} | {b['balanced_accuracy']:.2f} |")
    return "\n".join(lines)


def caption(rec: dict) -> str:
    how = ("unguided" if not rec.get("guidance") else
           f"probe-guided w {rec['guidance']:g} → {rec.get('probe_class_name')}")
    if rec.get("confidence") is not None:
        how += f" · p {rec['confidence']:.2f}"
    return f"{how} · seed {rec['seed']}"


def build(ctx: AppContext, workspace: gr.Dropdown, shipped_dirs=None):
    from cedm.inference import get_engine

    probe_state = gr.State(None)  # the probe folder of this visitor's last trained probe
    gr.Markdown("**More like these / adapt a model**: make any clustering, saved selection or a few picked images "
                "a condition of an already trained model (e.g. the unconditional one), without retraining: a small "
                "classifier on the model's own denoiser features (a *probe*) guides its sampling. "
                "*Probe-guided* = a condition added after training; *classifier-free* (Generate tab) = a condition "
                "the model was trained with.")
    entries = list_models(None, shipped_dirs=shipped_dirs)
    default = next((e for e in entries if e.n_conditions == 0), entries[0] if entries else None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(choices=[(e.describe(), e.name) for e in entries],
                                value=default.name if default else None, label="model", elem_id="cedm-probe-model",
                                allow_custom_value=True)
            source = gr.Radio(SOURCES, value=CLUSTERING, label="condition from", elem_id="cedm-probe-source")
            clustering = gr.Dropdown(choices=[], label="clustering", allow_custom_value=True,
                                     elem_id="cedm-probe-clustering")
            rowset = gr.Dropdown(choices=[], label="row set", elem_id="cedm-probe-rowset")
            with gr.Row():
                picks = gr.Textbox(label="picked rows", placeholder="12, 40, 77, 301, 999", elem_id="cedm-probe-picks")
                picks_name = gr.Textbox(value="picks", label="save picks as", min_width=100)
            with gr.Row():
                train = gr.Button("Train probe (cached)", variant="primary", elem_id="cedm-probe-train", scale=3)
                cancel_btn = gr.Button("Cancel", size="sm", elem_id="cedm-probe-cancel", scale=1, min_width=80)
            report = gr.Markdown(elem_id="cedm-probe-report")
            target = gr.Dropdown(choices=[], label="generate toward class", elem_id="cedm-probe-class")
            w = gr.Slider(0, 8, value=2.0, step=0.5, label="probe guidance w", elem_id="cedm-probe-w")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="seed", min_width=80)
                n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images")
                best_of = gr.Slider(1, 4, value=1, step=1, label="best of k (by the probe)")
            go = gr.Button("Generate: unguided vs probe-guided (same noise)", elem_id="cedm-probe-go")
        with gr.Column(scale=2, min_width=400):
            panel = common.progress_panel("probe")  # probe training and sampling: stage, percent, ETA
            gallery = gr.Gallery(columns=MAX_IMAGES // 2, height=460, object_fit="contain", format="png",
                                 label="top: unguided · bottom: probe-guided (same seeds)", elem_id="cedm-probe-gallery")
            with gr.Accordion("Records", open=False):
                records = gr.JSON(label="records", max_height=260)

    def entry_of(name, workspace_name, request) -> ModelEntry:
        ws = ctx.open(workspace_name, request) if workspace_name else None
        return find_model(list_models(ws, shipped_dirs=shipped_dirs), name)

    def choices(workspace_name, request) -> tuple[list[str], list[str]]:
        """The open workspace's clusterings (specs, and self:K@MODEL: a self-labelled model's own) and row sets."""
        from cedm.clusters import labelings

        ws = ctx.open(workspace_name, request)
        specs = list(dict.fromkeys(f"{c['method']}:{c['n_clusters']}" for c in labelings.list_clusterings(ws)))
        return specs + labelings.self_label_specs(ws), labelings.list_row_sets(ws)

    def keep(options: list[str], current) -> gr.Dropdown:
        return gr.Dropdown(choices=options, value=current if current in options else (options[0] if options else None))

    @guarded
    def on_workspace(workspace_name, request: gr.Request):
        specs, sets = choices(workspace_name, request)
        return keep(specs, None), keep(sets, None)

    @guarded
    def refresh(workspace_name, clustering_, rowset_, request: gr.Request):
        """The tab opened: clusterings and row sets made meanwhile (e.g. a selection saved in the Clusters tab)
        join the choices; the current choices stay."""
        specs, sets = choices(workspace_name, request)
        return keep(specs, clustering_), keep(sets, rowset_)

    @guarded
    def train_probe(model_name, workspace_name, source_, clustering_, rowset_, picks_, picks_name_,
                    request: gr.Request, progress=gr.Progress()):
        from cedm.probes.probe import ProbeSettings, get_probe

        ws = ctx.open(workspace_name, request)
        entry = entry_of(model_name, workspace_name, request)
        spec = spec_of(ws, source_, clustering_, rowset_, picks_, picks_name_)
        session = getattr(request, "session_hash", None)
        report_fn = progress_callback(progress, ctx.sessions, request, job="probe", cancellable=False)
        report_fn(0, None, "probe: labels")
        probe, folder, trained = get_probe(ws, training_copy(entry), spec, ProbeSettings(), model_dir=entry.path,
                                           progress=report_fn, should_stop=lambda: ctx.sessions.is_cancelled(session))
        classes = [(name, k) for k, name in enumerate(probe.class_names)]
        default_t = probe.info.get("default_target")
        done = (f"probe trained in {format_seconds(report_fn.elapsed_s())}" if trained else
                "probe found in the cache (trained before with these settings)")
        sets = choices(workspace_name, request)[1]  # picked rows were just saved as a set: offer it from now on
        return (str(folder), report_markdown(probe.info),
                gr.Dropdown(choices=classes, value=default_t if default_t is not None else 0), done,
                keep(sets, spec.split(":", 1)[1] if spec.startswith("rows:") else rowset_))

    @guarded
    def generate(model_name, workspace_name, folder, target_, w_, seed_, n_, best_, request: gr.Request,
                 progress=gr.Progress()):
        from cedm.probes.kind import probe_spec

        if not folder:
            raise CedmError("train a probe first")
        entry = entry_of(model_name, workspace_name, request)
        n_, seed_, best_ = int(n_), int(seed_), int(best_)
        if not 1 <= n_ <= MAX_IMAGES or seed_ < 0 or not 1 <= best_ <= 4:
            raise CedmError(f"images 1..{MAX_IMAGES}, seed >= 0, best of 1..4")
        if target_ is None:
            raise CedmError("choose the class to generate toward")
        engine = get_engine()
        report_fn = progress_callback(progress, ctx.sessions, request, job="sampling", cancellable=False)
        boxes = [[0, 1], [0, 1]]

        def track(box):
            def f(step, total):
                box[0], box[1] = int(step), max(int(total), 1)
            return f

        session = getattr(request, "session_hash", None)
        owner = session_owner(session) if session else None  # a closed tab or a cancel stops these requests
        tickets = [engine.submit(entry.path, n_, clusters=int(target_), guidance=probe_spec(folder, w),
                                 seed=seed_, best_of=b, progress=track(box), owner=owner)
                   for w, b, box in ((0.0, 1, boxes[0]), (float(w_), best_, boxes[1]))]
        try:
            results = []
            for t in tickets:
                while True:
                    try:
                        results.append(t.result(timeout=0.2))
                        break
                    except TimeoutError:
                        report_fn(sum(b[0] for b in boxes), sum(b[1] for b in boxes), "sampling")
        except BaseException:
            for t in tickets:
                t.cancel()
            raise
        report_fn.finished = True
        items, recs = [], []
        for images, rs in results:
            for img, r in zip(images, rs):
                r = {**r, "model": entry.name}
                items.append((img, caption(r)))
                recs.append(r)
        done = f"{len(items)} images sampled in {format_seconds(report_fn.elapsed_s())}"
        return gr.Gallery(value=items, columns=n_), recs, done

    def cancel(request: gr.Request):
        """Stop this visitor's probe training (at its next batch) and sampling requests (at their next step)."""
        ctx.sessions.cancel_work(request.session_hash)
        gr.Info("cancelling the running step")

    # A new run answers at once: the previous result goes (the first event is unqueued and instant).
    train.click(lambda: (None, "", gr.Dropdown(choices=[], value=None), None, None, "Starting the probe ..."),
                None, [probe_state, report, target, gallery, records, panel], api_visibility="private",
                queue=False, show_progress="hidden")
    trained = train.click(train_probe, [model, workspace, source, clustering, rowset, picks, picks_name],
                          [probe_state, report, target, panel, rowset], api_visibility="private",
                          concurrency_limit=1, show_progress_on=[panel])
    go.click(lambda: (None, None, "Starting the sampling ..."), None, [gallery, records, panel],
             api_visibility="private", queue=False, show_progress="hidden")
    sampled = go.click(generate, [model, workspace, probe_state, target, w, seed, n, best_of],
                       [gallery, records, panel], api_visibility="private", concurrency_limit=4,
                       show_progress_on=[panel])
    for event, what in ((trained, "probe training"), (sampled, "sampling")):
        event.failure(lambda what=what: f"The {what} stopped (cancelled, or an error: its message says why).",
                      None, [panel], api_visibility="private", show_progress="hidden")
    cancel_btn.click(cancel, None, None, api_visibility="private", concurrency_limit=None)
    workspace.change(on_workspace, [workspace], [clustering, rowset], api_visibility="private")
    return on_workspace, [clustering, rowset], refresh

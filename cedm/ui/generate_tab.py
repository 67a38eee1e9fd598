"""Generate tab: sample a trained model (shipped or trained in the workspace) through the inference engine.

Condition: a chosen cluster, the Query tab's cluster (the shared ``condition`` state), drawn from q(c), or none.
Guidance w (0 = unconditional, 1 = conditional) needs the model's "no condition" branch (p_uncond > 0).
Two comparisons share seeds: the same noise unconditional vs conditioned (C-EDM paper fig. 8) and a guidance
sweep (one seed, several w). Each image's caption: its condition and the confidence (MSP) of the condition's
labeling on it (engine.confidence).

Public API endpoint: ``/generate`` (model, condition, cluster, guidance, steps, sampler, seed, n, workspace)
-> (gallery, records).
"""
from __future__ import annotations

import logging
import re
import threading

import gradio as gr

from cedm.errors import CedmError
from cedm.inference import INTERACTIVE_DEFAULTS
from cedm.model.info import default_guidance_interval
from cedm.model.registry import ModelEntry, find_model, guidance_note, list_models
from cedm.sampling import samplers
from cedm.sampling.guidance import parse_interval
from cedm.ui import cluster_views as cv
from cedm.ui.common import AppContext, generation_condition, guarded
from cedm.ui.sessions import session_owner

log = logging.getLogger("cedm.ui")

CLUSTER, QUERY, FROM_Q, NONE = "a cluster", "the query image's cluster", "drawn from q(c)", "none (unconditional)"
CONDITIONS = [CLUSTER, QUERY, FROM_Q, NONE]
SAMPLERS = sorted(samplers.SAMPLERS, key=lambda s: s != INTERACTIVE_DEFAULTS["sampler"])  # the registry, ours first
MAX_IMAGES = 16
DEFAULT_GUIDANCE = 2.0
SWEEP = (0.0, 1.0, 2.0, 4.0, 6.0)
SAME_NOISE_MAX = 6  # images per row of the same-noise comparison (8 overflowed the gallery)
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1 - MAX_IMAGES  # image i uses seed + i
POLL_S = 0.2


def require_both_branches(entry: ModelEntry, what: str) -> None:
    """Comparisons across guidance need a conditional model trained with label dropout (p_uncond > 0)."""
    if entry.n_conditions == 0 or entry.p_uncond <= 0:
        raise CedmError(f"{what} needs a conditional model with an unconditional branch: {guidance_note(entry)}")


def condition_index(entry: ModelEntry, cluster: int) -> int:
    """The model's condition index of a cluster id of its clustering (empty clusters were renumbered away)."""
    ids = (entry.info.get("condition") or {}).get("original_ids")
    if ids is None:
        if not 0 <= cluster < entry.n_conditions:
            raise CedmError(f"cluster {cluster} does not exist: this model has clusters 0..{entry.n_conditions - 1}")
        return cluster
    if cluster not in ids:
        raise CedmError(f"cluster {cluster} has no condition in this model (it was empty at training)")
    return ids.index(cluster)


def query_condition(entry: ModelEntry, value: dict | None) -> int:
    """The Query tab's cluster as a condition index of this model; it must be the model's own clustering."""
    cond = generation_condition(value)
    if cond is None:
        raise CedmError("no query cluster yet: query an image in the Query tab and click 'Generate from this cluster'")
    spec = entry.condition_spec
    backbone = (entry.info.get("condition") or {}).get("backbone")
    if cond["clustering"] != spec or (backbone and cond["backbone"] != backbone):
        raise CedmError(f"the query's cluster is of {cond['clustering']} on {cond['backbone']}, but model "
                        f"{entry.name} is conditioned on {spec}" + (f" on {backbone}" if backbone else "") +
                        ": choose that clustering in the Clusters tab and query again")
    return condition_index(entry, cond["cluster"])


def request_of(entry: ModelEntry, mode: str, cluster, guidance, query_value=None) -> dict:
    """engine.submit's condition arguments for a condition mode; refuses guidance the model cannot do."""
    if mode not in CONDITIONS:
        raise CedmError(f"unknown condition {mode!r}; choose one of: {', '.join(CONDITIONS)}")
    guidance = _number(1.0 if guidance is None else guidance, "guidance w", 0.0, MAX_GUIDANCE)
    if entry.n_conditions == 0 or mode == NONE:
        return {"uncond": True, "clusters": None, "guidance": 1.0}
    note = guidance_note(entry)
    if note and guidance != 1.0:
        raise CedmError(f"guidance {guidance:g} is not possible: {note}")
    if mode == CLUSTER:
        if cluster is None or cluster == "":
            raise CedmError("choose a cluster")
        return {"clusters": condition_index(entry, cluster_id(cluster)), "guidance": guidance}
    if mode == QUERY:
        return {"clusters": query_condition(entry, query_value), "guidance": guidance}
    return {"clusters": None, "from_q": True, "guidance": guidance}


def interval_of(text):
    """The guidance-interval box: blank = the model's default (None), 'full' = every noise level, or 'LO, HI'
    (brackets allowed), checked by cedm.sampling.guidance.parse_interval."""
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    return parse_interval(text.strip("[]() ")) or "full"


def interval_hint(entry: ModelEntry) -> str:
    """What a blank interval box means for this model."""
    iv = default_guidance_interval(entry.info)
    return "blank: this model's default, " + ("every noise level" if iv is None else f"sigma in [{iv[0]:g}, {iv[1]:g}]")


def cluster_id(value) -> int:
    """A cluster id from the API: a whole number, or the dropdown's label ('cluster 3 · name · q 5%')."""
    m = re.match(r"^\s*(?:cluster\s+)?(\d{1,9})(?:\.0*)?(?:\s*·.*)?\s*$", str(value))
    if not m:
        raise CedmError(f"cluster must be a cluster id (a whole number such as 3), got {str(value)[:40]!r}")
    return int(m.group(1))


def _number(value, what: str, lo: float, hi: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CedmError(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not lo <= x <= hi:  # also refuses nan
        raise CedmError(f"{what} must be between {lo:g} and {hi:g}, got {x:g}")
    return x


_FIRST: dict = {}
_FIRST_LOCK = threading.Lock()
FIRST_N = 8


def first_batch(engine, entry: ModelEntry) -> list:
    """The batch shown when the page opens: FIRST_N images drawn from q(c) at the default guidance (seeds
    0..FIRST_N-1, the tab's default sampler and steps), computed once per model and kept in memory, so every
    visitor sees generated images at once; Generate with condition 'drawn from q(c)' and the default settings
    reproduces it exactly."""
    key = (str(entry.path), (entry.path / "cedm.json").stat().st_mtime_ns)
    with _FIRST_LOCK:
        if key not in _FIRST:
            w = DEFAULT_GUIDANCE if guidance_note(entry) is None else 1.0
            cond = request_of(entry, FROM_Q if entry.n_conditions else NONE, None, w)
            images, recs = engine.generate(str(entry.path), FIRST_N, seed=0, **INTERACTIVE_DEFAULTS, **cond)
            _FIRST[key] = captioned(engine, entry, images, recs)
        return _FIRST[key]


def guarded_first(entry: ModelEntry) -> None:
    from cedm.inference import get_engine

    try:
        first_batch(get_engine(), entry)
    except Exception:
        log.exception("first batch of %s failed", entry.name)


def caption(record: dict, conf, short: bool = False) -> str:
    """Short enough to show whole under a thumbnail: 'cluster 7 · w 2 · 0.83' (the seed and the rest are in
    the records); ``short`` for narrow grids: 'c7 · w 2 · 0.83'."""
    c = record.get("condition")
    parts = [("uncond." if short else "unconditional") if c is None else (f"c{c}" if short else f"cluster {c}")]
    if record.get("guidance") is not None and c is not None:
        parts.append(f"w {record['guidance']:g}")
    if conf is not None:
        parts.append(f"{conf:.2f}")
    return " · ".join(parts)


def captioned(engine, entry: ModelEntry, images, recs, short: bool = False) -> tuple[list, list]:
    """Gallery items (image, caption) and records with the model name and each image's confidence."""
    conf = confidences(engine, entry, images)
    recs = [{**r, "model": entry.name, "confidence": c} for r, c in zip(recs, conf)]
    return [(img, caption(r, c, short)) for img, r, c in zip(images, recs, conf)], recs


def confidences(engine, entry: ModelEntry, images) -> list:
    """MSP of the model's condition labeling per image, or Nones where it cannot be had (no clustering here)."""
    if entry.n_conditions == 0:
        return [None] * len(images)
    try:
        found = engine.confidence(entry.path, images)
    except CedmError as e:
        log.info("no sample confidence for %s: %s", entry.name, e)
        return [None] * len(images)
    return [None] * len(images) if found is None else [float(v) for v in found[1]]


class Runs:
    """The tickets each visitor is waiting on, so that Cancel stops exactly theirs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tickets: dict[str, list] = {}

    def add(self, session: str, ticket) -> None:
        with self._lock:
            self._tickets.setdefault(session, []).append(ticket)

    def discard(self, session: str, ticket) -> None:
        with self._lock:
            if ticket in self._tickets.get(session, []):
                self._tickets[session].remove(ticket)

    def cancel(self, session: str) -> int:
        with self._lock:
            tickets = self._tickets.pop(session, [])
        return sum(bool(t.cancel()) for t in tickets)


def submit(engine, entry: ModelEntry, n: int, seed: int, steps: int, sampler: str, steps_box: list, **cond):
    """engine.submit with a progress callback that only records the step (the UI thread reports it)."""
    def track(step, total):
        steps_box[0], steps_box[1] = int(step), max(int(total), 1)
    return engine.submit(entry.path, n=n, seed=seed, steps=steps, sampler=sampler, progress=track, **cond)


def check_numbers(steps, seed, n) -> tuple[int, int, int]:
    try:
        steps, seed, n = int(steps), int(seed), int(n)
    except (TypeError, ValueError):
        raise CedmError("steps, seed and number of images must be whole numbers") from None
    if not 1 <= n <= MAX_IMAGES:
        raise CedmError(f"number of images must be 1..{MAX_IMAGES}, got {n}")
    if not 1 <= steps <= 200:
        raise CedmError(f"steps must be 1..200, got {steps}")
    if not 0 <= seed <= MAX_SEED:
        raise CedmError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    return steps, seed, n


def run_jobs(engine, entry: ModelEntry, jobs: list[dict], steps: int, sampler: str, runs: Runs, session: str,
             progress=None) -> list[tuple]:
    """Submit every job ({n, seed, **condition}) at once (the engine merges what it can), wait for all."""
    if sampler not in SAMPLERS:
        raise CedmError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    boxes = [[0, steps] for _ in jobs]
    tickets = []
    try:
        for job, box in zip(jobs, boxes):
            tickets.append(submit(engine, entry, steps=steps, sampler=sampler, steps_box=box,
                                  owner=session_owner(session), **job))
    except BaseException:
        for t in tickets:
            t.cancel()
        raise
    for t in tickets:
        runs.add(session, t)
    try:
        out = []
        for t in tickets:
            while True:
                try:
                    out.append(t.result(timeout=POLL_S))
                    break
                except TimeoutError:
                    if progress is not None:
                        progress((sum(b[0] for b in boxes), sum(b[1] for b in boxes)), desc="sampling")
        return out
    except BaseException:
        for t in tickets:
            t.cancel()
        raise
    finally:
        for t in tickets:
            runs.discard(session, t)


def build(ctx: AppContext, workspace: gr.Dropdown, condition: gr.State, shipped_dirs=None) -> "GenerateTab":
    from cedm.inference import get_engine

    runs = Runs()

    def models_for(workspace_name, request) -> list[ModelEntry]:
        ws = None
        if workspace_name:
            try:
                ws = ctx.open(workspace_name, request)
            except CedmError:
                ws = None
        return list_models(ws, shipped_dirs=shipped_dirs)

    first = list_models(None, shipped_dirs=shipped_dirs)
    if first:  # start the first batch now, in the background, so it is ready when the first page opens
        threading.Thread(target=guarded_first, args=(first[0],), daemon=True, name="cedm-first-batch").start()
    gr.Markdown("Sample new images from a trained model. Guidance w: 0 = unconditional, 1 = conditional, "
                "larger = more typical of the cluster (less varied).")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(choices=[(e.describe(), e.name) for e in first],
                                value=first[0].name if first else None, label="model", elem_id="cedm-gen-model",
                                allow_custom_value=True)  # workspace models join per visitor; names are checked
            mode = gr.Radio(CONDITIONS, value=CLUSTER, label="condition", elem_id="cedm-gen-condition")
            cluster = gr.Dropdown(choices=[], value=None, label="cluster", elem_id="cedm-gen-cluster",
                                  allow_custom_value=True)
            query_note = gr.Markdown(elem_id="cedm-gen-query-note")
            guidance = gr.Slider(0, 6, value=DEFAULT_GUIDANCE, step=0.25, label="guidance w",
                                 elem_id="cedm-gen-guidance")
            guidance_info = gr.Markdown(elem_id="cedm-gen-guidance-note")
            with gr.Accordion("Guidance interval", open=False):
                interval = gr.Textbox(label="guide only for sigma in [lo, hi]", placeholder="e.g. 0.3, 5 or full",
                                      info=interval_hint(first[0]) if first else None, elem_id="cedm-gen-interval")
            with gr.Row():
                sampler = gr.Dropdown(SAMPLERS, value=INTERACTIVE_DEFAULTS["sampler"], label="sampler",
                                      min_width=100)
                steps = gr.Number(INTERACTIVE_DEFAULTS["steps"], precision=0, minimum=1, maximum=200, label="steps", min_width=80)
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="seed", min_width=80)
                n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="images")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="cedm-gen-go")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cedm-gen-cancel")
            with gr.Row():
                same_noise = gr.Button("Same noise: unconditional vs conditioned", elem_id="cedm-gen-same-noise")
                sweep = gr.Button("Guidance sweep (one seed)", elem_id="cedm-gen-sweep")
        with gr.Column(scale=2, min_width=400):
            gallery = gr.Gallery(columns=4, height=460, object_fit="contain", format="png", label="generated",
                                 elem_id="cedm-gen-gallery")
            with gr.Accordion("Records (as the /generate endpoint returns them)", open=False):
                records = gr.JSON(label="records", max_height=260)

    def entry_of(model_name, workspace_name, request) -> ModelEntry:
        return find_model(models_for(workspace_name, request), model_name)

    def session_of(request) -> str:
        return getattr(request, "session_hash", None) or "api"

    @guarded
    def generate(model: str, condition: str, cluster, guidance: float, steps: int, sampler: str, seed: int,
                 n: int, workspace: str, query_value, interval: str | None = None, request: gr.Request = None,
                 progress=gr.Progress()):
        """Sample n images (seeds seed..seed+n-1) under a condition and guidance w, guiding only for sigma in
        ``interval`` ('LO, HI'; 'full'; blank: the model's default); returns (gallery, records)."""
        entry = entry_of(model, workspace, request)
        steps, seed, n = check_numbers(steps, seed, n)
        cond = dict(request_of(entry, condition, cluster, guidance, query_value),
                    guidance_interval=interval_of(interval))
        engine = get_engine()
        (images, recs), = run_jobs(engine, entry, [dict(n=n, seed=seed, **cond)], steps, sampler, runs,
                                   session_of(request), progress)
        return captioned(engine, entry, images, recs)  # a plain list: what API callers get

    @guarded
    def compare_same_noise(model_name, condition_mode, cluster_id, guidance_w, n_steps, sampler_name, seed_value,
                           n_images, workspace_name, query_value, interval, request: gr.Request,
                           progress=gr.Progress()):
        entry = entry_of(model_name, workspace_name, request)
        require_both_branches(entry, "this comparison")
        n_steps, seed_value, n_images = check_numbers(n_steps, seed_value, n_images)
        n_images = min(n_images, SAME_NOISE_MAX)  # one row each, every column visible with its caption
        cond = dict(request_of(entry, CLUSTER if condition_mode in (NONE, FROM_Q) else condition_mode, cluster_id,
                               guidance_w, query_value), guidance_interval=interval_of(interval))
        engine = get_engine()
        jobs = [dict(n=n_images, seed=seed_value, uncond=True), dict(n=n_images, seed=seed_value, **cond)]
        results = run_jobs(engine, entry, jobs, n_steps, sampler_name, runs, session_of(request), progress)
        items, all_recs = [], []
        for images, recs in results:
            its, rs = captioned(engine, entry, images, recs, short=n_images > 4)
            items, all_recs = items + its, all_recs + rs
        return gr.Gallery(value=items, columns=n_images), all_recs

    @guarded
    def guidance_sweep(model_name, condition_mode, cluster_id, guidance_w, n_steps, sampler_name, seed_value,
                       n_images, workspace_name, query_value, interval, request: gr.Request, progress=gr.Progress()):
        entry = entry_of(model_name, workspace_name, request)
        require_both_branches(entry, "a guidance sweep")
        n_steps, seed_value, _ = check_numbers(n_steps, seed_value, 1)
        mode_ = CLUSTER if condition_mode in (NONE, FROM_Q) else condition_mode
        jobs = []
        for w in SWEEP:
            cond = request_of(entry, mode_, cluster_id, w, query_value)
            jobs.append(dict(n=1, seed=seed_value, guidance_interval=interval_of(interval), **cond))
        engine = get_engine()
        results = run_jobs(engine, entry, jobs, n_steps, sampler_name, runs, session_of(request), progress)
        items, all_recs = [], []
        for images, recs in results:
            its, rs = captioned(engine, entry, images[:1], recs[:1], short=True)
            items, all_recs = items + its, all_recs + rs
        return gr.Gallery(value=items, columns=len(SWEEP)), all_recs

    def stop(request: gr.Request):
        k = runs.cancel(session_of(request))
        gr.Info("cancelled" if k else "nothing to cancel")

    def cluster_choices(entry: ModelEntry, workspace_name, request) -> list:
        """The model's conditions, titled with names and sizes when its clustering is in this workspace."""
        ids = (entry.info.get("condition") or {}).get("original_ids") or list(range(entry.n_conditions))
        q = (entry.info.get("condition") or {}).get("q") or []
        names = None
        backbone = (entry.info.get("condition") or {}).get("backbone")
        try:
            ws = ctx.open(workspace_name, request)
            res = cv.get_clustering(ws, backbone, entry.condition_spec, compute=False) if backbone else None
            names = cv.cluster_names(ws, res, backbone) if res is not None else None
        except CedmError:
            names = None
        out = []
        for k, c in enumerate(ids):
            name = names[c] if names and c < len(names) and names[c] else None
            share = f" · q {q[k]:.1%}" if k < len(q) else ""
            out.append((f"cluster {c}" + (f" · {name}" if name else "") + share, int(c)))
        return out

    @guarded
    def on_model(model_name, workspace_name, request: gr.Request):
        entry = entry_of(model_name, workspace_name, request)
        note = guidance_note(entry)
        choices = cluster_choices(entry, workspace_name, request) if entry.n_conditions else []
        w = 1.0 if note and entry.n_conditions else (DEFAULT_GUIDANCE if not note else 0.0)
        return (gr.Dropdown(choices=choices, value=choices[0][1] if choices else None,
                            interactive=bool(choices)),
                gr.Radio(value=CLUSTER if entry.n_conditions else NONE, interactive=bool(entry.n_conditions)),
                gr.Slider(value=w, interactive=note is None),
                f"_{note}_" if note else "", gr.Textbox(info=interval_hint(entry)))

    @guarded
    def on_workspace(workspace_name, current, request: gr.Request):
        entries = models_for(workspace_name, request)
        names = [e.name for e in entries]
        return gr.Dropdown(choices=[(e.describe(), e.name) for e in entries],
                           value=current if current in names else (names[0] if names else None))

    def on_query(value):
        cond = generation_condition(value)
        if cond is None:
            return gr.Radio(), ""
        return gr.Radio(value=QUERY), (f"query cluster: {cond['cluster']} of {cond['clustering']} on "
                                       f"{cond['backbone']} ({cond['workspace']})")

    @guarded
    def generate_for_query(value, model_name, guidance_w, n_steps, sampler_name, seed_value, n_images, workspace_name,
                           interval, request: gr.Request, progress=gr.Progress()):
        """"Generate from this cluster" (Query tab): sample the query's cluster with the selected model when it
        is conditioned on that clustering, else with the first model that is."""
        cond = generation_condition(value)
        if cond is None:
            return gr.skip(), gr.skip(), gr.skip()
        entries = models_for(workspace_name, request)
        backbone_of = lambda e: (e.info.get("condition") or {}).get("backbone")  # noqa: E731
        fits = [e for e in entries if e.condition_spec == cond["clustering"]
                and backbone_of(e) in (None, cond["backbone"])]
        if not fits:
            raise CedmError(f"no model here is conditioned on {cond['clustering']} ({cond['backbone']}): train one "
                            "in the Train tab, or choose that model's clustering in the Clusters tab and query again")
        entry = next((e for e in fits if e.name == model_name), fits[0])
        steps_, seed_, n_ = check_numbers(n_steps, seed_value, n_images)
        w = float(guidance_w) if guidance_note(entry) is None else 1.0
        c = dict(request_of(entry, QUERY, None, w, value), guidance_interval=interval_of(interval))
        engine = get_engine()
        (images, recs), = run_jobs(engine, entry, [dict(n=n_, seed=seed_, **c)], steps_, sampler_name, runs,
                                   session_of(request), progress)
        items, recs = captioned(engine, entry, images, recs)
        return items, recs, (f"query cluster: {cond['cluster']} of {cond['clustering']} on {cond['backbone']} "
                             f"({cond['workspace']}) · generated by **{entry.name}**")

    def on_open(model_name, workspace_name, request: gr.Request):
        """Page load: the first batch of the selected model (computed once, then served from memory)."""
        try:
            return first_batch(get_engine(), entry_of(model_name, workspace_name, request))
        except Exception:  # the page must open even if the model cannot sample; Generate shows the reason
            log.exception("first batch failed")
            return [], None

    inputs = [model, mode, cluster, guidance, steps, sampler, seed, n, workspace, condition, interval]
    go.click(generate, inputs, [gallery, records], api_name="generate", concurrency_limit=4)
    # back to 4 columns after a same-noise grid (a browser-side update, so /generate stays a plain gallery)
    go.click(lambda: gr.Gallery(columns=4), None, gallery, api_visibility="private", show_progress="hidden",
             queue=False)
    same_noise.click(compare_same_noise, inputs, [gallery, records], api_visibility="private", concurrency_limit=4)
    sweep.click(guidance_sweep, inputs, [gallery, records], api_visibility="private", concurrency_limit=4)
    cancel.click(stop, None, None, api_visibility="private", concurrency_limit=None)
    model.change(on_model, [model, workspace], [cluster, mode, guidance, guidance_info, interval],
                 api_visibility="private", show_progress="hidden")
    workspace.change(on_workspace, [workspace, model], [model], api_visibility="private", show_progress="hidden")
    condition.change(on_query, [condition], [mode, query_note], api_visibility="private", show_progress="hidden"
                     ).then(generate_for_query,
                            [condition, model, guidance, steps, sampler, seed, n, workspace, interval],
                            [gallery, records, query_note], api_visibility="private", concurrency_limit=4,
                            show_progress_on=[gallery])
    tab = GenerateTab(on_model=on_model, model=model, init_outputs=[cluster, mode, guidance, guidance_info, interval],
                      on_open=on_open, open_outputs=[gallery, records], on_workspace=on_workspace)
    tab.controls = dict(cluster=cluster, guidance=guidance, steps=steps, sampler=sampler, seed=seed, n=n)  # layout_tab
    tab.entry_of = entry_of
    return tab


class GenerateTab:
    def __init__(self, on_model, model, init_outputs, on_open, open_outputs, on_workspace):
        self.on_model, self.model, self.init_outputs = on_model, model, init_outputs
        self.on_open, self.open_outputs = on_open, open_outputs
        self.on_workspace = on_workspace  # (workspace, model name to select) -> the refreshed model dropdown

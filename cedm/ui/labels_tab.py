"""Labels tab: pseudo-labels (CLIP zero-shot over names the user gives or the ground-truth names; offline, the
ImageNet classifier), how the current clustering agrees with them (NMI, AMI, ARI, accuracy; and with the
ground truth when there is one), a contingency heatmap and cluster names, which the other tabs then show.

Public API endpoint: ``/compare`` (workspace, backbone, clustering, labels) -> {metrics, vs_ground_truth,
names: ["cluster 17: face-smiling 64%, ..."], ...}.
"""
from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from cedm.errors import CedmError
from cedm.ui import common
from cedm.ui.common import AppContext, guarded

log = logging.getLogger("cedm.ui")

OFFLINE_CLIP = ("⚠️ CLIP is not available on this server: its weights are not installed here and the server does "
                "not download them. Press **ImageNet classifier labels (offline)** below instead: it names the "
                "clusters with an ImageNet classifier that ships with cedm.")
HEATMAP_ROWS = 40   # clusters shown (largest first)
HEATMAP_COLS = 25   # labels shown (most common first)
METRICS = ("nmi", "ami", "ari", "accuracy", "accuracy_hungarian", "accuracy_majority")


def _metrics(found: dict) -> dict:
    return {k: round(float(found[k]), 4) for k in METRICS} | {"n_compared": found["n_compared"]}


def run_compare(ws, backbone: str, clustering: str, labels: str, progress=None) -> dict:
    """The clustering vs a labeling (and vs ground truth when the workspace has one), with cluster names."""
    from cedm.labels import cluster_names, compare_labelings, describe

    if not clustering:
        raise CedmError("no clustering chosen: cluster the workspace first (Clusters tab) or name one, e.g. kmeans:20")
    if not labels:
        raise CedmError("no labeling chosen: make labels first (CLIP or ImageNet classifier labels)")
    kw = {"backbone": backbone or None, "progress": progress}
    found = compare_labelings(ws, clustering, labels, **kw)
    vs_gt = None
    if ws.ground_truth is not None and labels != "gt":
        vs_gt = _metrics(compare_labelings(ws, clustering, "gt", **kw))
    named = cluster_names(ws, clustering, labels, top=3, backbone=backbone or None)
    return {"workspace": ws.name, "backbone": backbone, "clustering": clustering, "labels": labels,
            "metrics": _metrics(found), "vs_ground_truth": vs_gt,
            "names": [describe(c, named[c]) for c in sorted(named)],
            "contingency": {"table": np.asarray(found["contingency"]).tolist(), "clusters": found["a_ids"],
                            "labels": found["b_names"] or [str(i) for i in found["b_ids"]]}}


def heatmap(result: dict):
    """Clusters (largest first, at most HEATMAP_ROWS) x labels (most common, at most HEATMAP_COLS): the share of
    each cluster's images per label, so rows of any size read alike."""
    import plotly.graph_objects as go

    table = np.asarray(result["contingency"]["table"], dtype=np.float64)
    if table.size == 0:
        return go.Figure()
    rows = np.argsort(-table.sum(1), kind="stable")[:HEATMAP_ROWS]
    cols = np.argsort(-table.sum(0), kind="stable")[:HEATMAP_COLS]
    share = table[rows] / np.maximum(table[rows].sum(1, keepdims=True), 1)
    share = share[:, cols]
    names = [str(result["contingency"]["labels"][j]).split(",")[0][:24] for j in cols]
    ids = [f"cluster {result['contingency']['clusters'][i]}" for i in rows]
    fig = go.Figure(go.Heatmap(z=share, x=names, y=ids, colorscale="Viridis", zmin=0, zmax=1,
                               colorbar={"title": "share"},
                               hovertemplate="%{y} · %{x}: %{z:.0%}<extra></extra>"))
    shown = f"{len(rows)} of {table.shape[0]} clusters × {len(cols)} of {table.shape[1]} labels"
    fig.update_layout(title=f"{result['clustering']} vs {result['labels']} ({shown})", height=max(320, 18 * len(rows) + 160),
                      margin={"l": 90, "r": 20, "t": 50, "b": 110}, yaxis={"autorange": "reversed"})
    return fig


def metrics_markdown(r: dict) -> str:
    from cedm.clusters import metrics
    m = r["metrics"]
    lines = [f"**{r['clustering']} vs {r['labels']}** ({m['n_compared']:,} images): NMI {m['nmi']:.3f} · "
             f"AMI {m['ami']:.3f} · ARI {m['ari']:.3f} · {metrics.accuracy_text(m)}"]
    if r.get("vs_ground_truth"):
        g = r["vs_ground_truth"]
        lines.append(f"**{r['clustering']} vs ground truth**: NMI {g['nmi']:.3f} · AMI {g['ami']:.3f} · "
                     f"ARI {g['ari']:.3f} · {metrics.accuracy_text(g)}")
    return "  \n".join(lines)


def labeling_choices(ws) -> list[str]:
    from cedm.clusters.labelings import list_labelings

    return [f"labels:{n}" for n in list_labelings(ws)] + (["gt"] if ws.ground_truth is not None else [])


def build(ctx: AppContext, workspace: gr.Dropdown, clusters) -> tuple:
    """The tab; returns (refresh, inputs, outputs) for the page's load event (the saved labelings)."""
    gr.Markdown("Name the clusters: label every image with CLIP over names you give (or the dataset's "
                "ground-truth names), or offline with the ImageNet classifier; then see how the clustering "
                "agrees with those labels. The other tabs show the names of the latest labels.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            names = gr.Textbox(label="label names (comma-separated)", placeholder="cat, dog, car, ...",
                               elem_id="cedm-labels-names")
            use_gt = gr.Checkbox(False, label="use the ground-truth names", elem_id="cedm-labels-use-gt")
            clip_btn = gr.Button("CLIP pseudo-labels", variant="primary", elem_id="cedm-labels-clip")
            clip_note = gr.Markdown(elem_id="cedm-labels-clip-note")
            imagenet_btn = gr.Button("ImageNet classifier labels (offline)", elem_id="cedm-labels-imagenet")
            labeling = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="labels to compare with",
                                   elem_id="cedm-labels-labeling")
            compare_btn = gr.Button("Compare with the current clustering", elem_id="cedm-labels-compare")
        with gr.Column(scale=2, min_width=400):
            panel = common.progress_panel("labels")
            summary = gr.Markdown(elem_id="cedm-labels-metrics")
            plot = gr.Plot(label="contingency (share of each cluster's images per label)",
                           elem_id="cedm-labels-heatmap")
            cluster_names = gr.Textbox(label="cluster names", lines=8, max_lines=16, elem_id="cedm-labels-cluster-names")
            with gr.Accordion("Result (as the /compare endpoint returns it)", open=False):
                result = gr.JSON(label="result", max_height=260)

    @guarded
    def compare(workspace_name: str, backbone_name: str, spec: str, labels: str, request: gr.Request,
                progress=gr.Progress()) -> dict:
        """Agreement (NMI, AMI, ARI, accuracy) of a clustering with a labeling (labels:NAME or gt), its
        contingency table and each cluster's top-3 label names."""
        ws = ctx.open(workspace_name, request)
        return run_compare(ws, backbone_name, spec, labels,
                           progress=common.progress_callback(progress, ctx.sessions, request, job="labels"))

    def show(r: dict | None):
        if not r:
            return gr.skip(), gr.skip(), gr.skip()
        return metrics_markdown(r), heatmap(r), "\n".join(r["names"])

    @guarded
    def compare_made(workspace_name, backbone_name, spec, labels, request: gr.Request, progress=gr.Progress()):
        """After new labels: compare them with the clustering when both exist (else leave the result)."""
        if not labels or not spec:
            return None
        return compare(workspace_name, backbone_name, spec, labels, request, progress)

    @guarded
    def refresh_choices(workspace_name: str, current, request: gr.Request):
        ws = ctx.open(workspace_name, request)
        choices = labeling_choices(ws)
        value = current if current in choices else (choices[0] if choices else None)
        has_gt = ws.ground_truth is not None and bool(ws.ground_truth.names)
        return gr.Dropdown(choices=choices, value=value), gr.Checkbox(interactive=has_gt, value=False)

    @guarded
    def make_clip(workspace_name: str, text: str, gt: bool, request: gr.Request, progress=gr.Progress()):
        from cedm.labels import clip_pseudo_labels, ground_truth_names

        ws = ctx.open(workspace_name, request)
        if gt:
            label_names, prompt_names = ground_truth_names(ws)
        else:
            label_names = [s.strip() for s in (text or "").split(",") if s.strip()]
            if len(label_names) < 2:
                raise CedmError("give at least two label names, comma-separated (or use the ground-truth names)")
            prompt_names = None
        report = common.progress_callback(progress, ctx.sessions, request, job="labels")
        report(0, 1, "CLIP: loading the model")
        try:
            lab = clip_pseudo_labels(ws, label_names, prompt_names=prompt_names, progress=report)
        except CedmError as e:  # offline: say what to do here, in the app (the CLI's flags mean nothing here)
            log.info("CLIP labels failed: %s", e)
            return gr.Dropdown(), OFFLINE_CLIP, gr.Button(variant="primary")
        return (gr.Dropdown(choices=labeling_choices(ws), value=lab.name),
                f"saved as {lab.name}", gr.Button())

    @guarded
    def make_imagenet(workspace_name: str, request: gr.Request, progress=gr.Progress()):
        from cedm.labels import imagenet_labels

        ws = ctx.open(workspace_name, request)
        report = common.progress_callback(progress, ctx.sessions, request, job="labels")
        report(0, 1, "ImageNet classifier: starting")
        lab = imagenet_labels(ws, progress=report)
        return gr.Dropdown(choices=labeling_choices(ws), value=lab.name), f"saved as {lab.name}"

    compare_inputs = [workspace, clusters.backbone, clusters.clustering, labeling]
    quiet = dict(api_visibility="private", show_progress="hidden")
    compare_btn.click(compare, compare_inputs, [result], api_name="compare", concurrency_limit=4,
                      show_progress_on=[panel]
                      ).success(show, [result], [summary, plot, cluster_names], **quiet)
    # new labels name the clusters: compare at once (no second click) and redraw the Clusters tab's titles
    for btn, fn, inputs in ((clip_btn, make_clip, [workspace, names, use_gt]), (imagenet_btn, make_imagenet, [workspace])):
        made = btn.click(fn, inputs, [labeling, clip_note] + ([imagenet_btn] if fn is make_clip else []),
                         api_visibility="private", concurrency_limit=2, show_progress_on=[panel])
        made.success(compare_made, compare_inputs, [result], api_visibility="private", show_progress_on=[panel]
                     ).success(show, [result], [summary, plot, cluster_names], **quiet)
        made.success(clusters.on_workspace, [workspace], clusters.outputs, **quiet)
    workspace.change(refresh_choices, [workspace, labeling], [labeling, use_gt], api_visibility="private")
    return refresh_choices, [workspace, labeling], [labeling, use_gt]

"""Query tab: an uploaded or pasted image -> its top-3 clusters with probabilities, its nearest neighbours in
the workspace (faiss, cosine of features) and its cluster's gallery; "generate from this cluster" hands
the cluster to the Generate tab through the shared condition state (common.generation_condition).

Public API endpoint: ``/query`` (image, workspace, backbone, clustering -> {top3, neighbours: [{row, file,
cosine, cluster}], ...}).
"""
from __future__ import annotations

import numpy as np
import gradio as gr

from cedm.errors import CedmError
from cedm.features.backbones import for_workspace
from cedm.ui import cluster_views as cv
from cedm.ui import common
from cedm.ui.common import AppContext, generation_condition, guarded

N_NEIGHBOURS = 8


@for_workspace
def run_query(ws, backbone: str, spec: str, image, progress=None) -> dict:
    """The query's clusters and neighbours, from library calls (features, cluster head/centroids, faiss)."""
    from cedm.features import extract_one
    from cedm.features.search import nearest_neighbours

    if image is None:
        raise CedmError("upload or paste an image first")
    if not spec:
        raise CedmError("no clustering chosen: cluster the workspace first (Clusters tab) or name one, e.g. kmeans:50")
    res = cv.get_clustering(ws, backbone, spec, progress=progress)
    feat = extract_one(image, backbone, resolution=ws.resolution, normalized=False)  # raw: TEMI heads' input
    top, how = cv.top_clusters(res, feat, k=3, names=cv.cluster_names(ws, res, backbone))
    rows, cos = nearest_neighbours(ws, backbone, feat, k=N_NEIGHBOURS, progress=progress)
    # "file", not "path": gradio_client downloads any dict with a "path" key as a file
    return {"workspace": ws.name, "backbone": backbone, "clustering": f"{res.method}:{res.n_clusters}",
            "probabilities": how, "top3": top,
            "neighbours": [{"row": int(r), "file": ws.paths[int(r)], "cosine": round(float(c), 4),
                            "cluster": int(res.assignments[int(r)])} for r, c in zip(rows, cos)]}


def build(ctx: AppContext, workspace: gr.Dropdown, backbone: gr.Dropdown, clustering: gr.Textbox,
          condition: gr.State) -> None:
    gr.Markdown("Upload or paste an image: cedm finds its clusters in the current clustering (chosen in the "
                "Clusters tab) and the most similar images of the workspace.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            image = gr.Image(type="pil", image_mode=None, sources=["upload", "clipboard"], label="query image",
                             height=260, elem_id="cedm-query-image")
            query_btn = gr.Button("Find clusters and neighbours", variant="primary", elem_id="cedm-query")
        with gr.Column(scale=1, min_width=260):
            top3 = gr.Label(num_top_classes=3, label="clusters (top 3)", elem_id="cedm-query-top3")
            how = gr.Markdown(elem_id="cedm-query-how")
            generate_btn = gr.Button("Generate from this cluster", elem_id="cedm-query-generate", interactive=False)
            generate_note = gr.Markdown(elem_id="cedm-query-generate-note")
    neighbours = gr.Gallery(columns=8, height=190, object_fit="contain", format="png",
                            label=f"{N_NEIGHBOURS} nearest neighbours (cosine of features)",
                            elem_id="cedm-query-neighbours")
    cluster_info = gr.Markdown(elem_id="cedm-query-cluster-info")
    cluster_gallery = gr.Gallery(columns=8, height=430, object_fit="contain", format="png",
                                 label="its cluster, most confident first", elem_id="cedm-query-cluster")
    with gr.Accordion("Result (as the /query endpoint returns it)", open=False):
        result = gr.JSON(label="result", max_height=260)
    query_cluster = gr.State(None)

    @guarded
    def query(img, workspace_name: str, backbone_name: str, spec: str, request: gr.Request,
              progress=gr.Progress()) -> dict:
        """Top-3 clusters (with probabilities) and nearest neighbours (row, path, cosine) of a query image."""
        ws = ctx.open(workspace_name, request)
        return run_query(ws, backbone_name or cv.backbone_choices(ws)[1], spec, img,
                         progress=common.progress_callback(progress, ctx.sessions, request))

    @guarded
    def show_result(r: dict, request: gr.Request):
        ws = ctx.open(r["workspace"], request)
        res = cv.get_clustering(ws, r["backbone"], r["clustering"], compute=False)
        if res is None:
            raise CedmError("the clustering of this result is gone; query again")
        labels = {cv.cluster_title(t["cluster"], t["size"], [None] * t["cluster"] + [t["name"]]): t["probability"]
                  for t in r["top3"]}
        rows = [n["row"] for n in r["neighbours"]]
        images = np.asarray(ws.images[np.sort(rows)])
        pos = {row: k for k, row in enumerate(np.sort(rows))}
        near = [(images[pos[n["row"]]], f"{n['file']} · cosine {n['cosine']:.3f} · cluster {n['cluster']}")
                for n in r["neighbours"]]
        best = r["top3"][0]
        items, info, _ = cv.cluster_page(ws, res, best["cluster"], 0)
        condition_value = {"workspace": r["workspace"], "backbone": r["backbone"],
                           "clustering": r["clustering"], "cluster": best["cluster"]}
        return (labels, f"probabilities: {r['probabilities']} · clustering {r['clustering']} on {r['backbone']}",
                near, f"{cv.cluster_heading(ws, res, best['cluster'], cv.cluster_names(ws, res, r['backbone']))}  \n{info}",
                items, condition_value, gr.Button(interactive=True))

    @guarded
    def use_for_generation(value: dict | None):
        cond = generation_condition(value)
        if cond is None:
            raise CedmError("query an image first")
        return cond, (f"Cluster {cond['cluster']} of {cond['clustering']} ({cond['workspace']}) is set as the "
                      "condition for generation.")

    query_btn.click(query, [image, workspace, backbone, clustering], [result], api_name="query", concurrency_limit=4
                    ).success(show_result, [result], [top3, how, neighbours, cluster_info, cluster_gallery,
                                                     query_cluster, generate_btn], api_visibility="private")
    generate_btn.click(use_for_generation, [query_cluster], [condition, generate_note], api_visibility="private")

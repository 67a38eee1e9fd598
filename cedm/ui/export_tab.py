"""Export tab: the current clustering's assignments (path, cluster, confidence) as CSV and JSON, and one
cluster's images as a zip of PNG files named by their source paths. Files are written to the visitor's
own area (removed with the session) and offered for download.

Public API endpoints: ``/export_assignments`` and ``/export_cluster``.
"""
from __future__ import annotations

import io as _io
import re
import zipfile
from pathlib import Path, PurePosixPath

import gradio as gr
import numpy as np
from PIL import Image

from cedm import io
from cedm.ui import cluster_views as cv
from cedm.ui.common import AppContext, guarded

MAX_ZIP_IMAGES = 10_000  # a cluster's zip holds at most this many images (the most confident ones)
_CHUNK = 256


def export_dir(ctx: AppContext, request) -> Path:
    return ctx.downloads(request)  # outside the home: served only as this output, never by its path


def _stem(ws, backbone: str, res) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{ws.name}-{backbone}-{res.method}-{res.n_clusters}")


def write_assignments(ws, backbone: str, res, folder: Path) -> tuple[Path, Path]:
    """<stem>.csv (path,cluster,confidence[,name]; one row per image) and <stem>.json (the same plus what it
    is, and the clusters' names: the user's renames and confident guesses)."""
    from cedm.clusters.export import assignments_csv

    stem = _stem(ws, backbone, res)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    names = {c: n for c, n in enumerate(cv.cluster_names(ws, res, backbone) or []) if n}
    assignments_csv(ws, res, csv_path, names=names or None)
    rows = [{"path": p, "cluster": int(c), "confidence": round(float(f), 6)}
            for p, c, f in zip(ws.paths, res.assignments.tolist(), res.confidence.tolist())]
    io.write_json(json_path, {"workspace": ws.name, "backbone": backbone,
                              "clustering": f"{res.method}:{res.n_clusters}",
                              "confidence": cv.confidence_word(res), "n_images": ws.n,
                              "cluster_names": {str(c): n for c, n in sorted(names.items())},
                              "assignments": rows})
    return csv_path, json_path


def _entry_name(path: str, row: int, taken: set[str]) -> str:
    """The image's source path with a .png suffix, made safe for a zip (no absolute or parent parts)."""
    parts = [p for p in PurePosixPath(str(path).replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    name = str(PurePosixPath(*parts).with_suffix(".png")) if parts else f"{row:06d}.png"
    if name in taken:  # two sources mapped to one name (e.g. a.jpg and a.webp): keep both
        name = name[:-4] + f"-row{row}.png"
    taken.add(name)
    return name


def write_cluster_zip(ws, backbone: str, res, cluster, folder: Path) -> tuple[Path, int, int]:
    """A zip of one cluster's images (most confident first, at most MAX_ZIP_IMAGES), read in chunks.
    Returns (path, images written, cluster size)."""
    c = cv.check_cluster(res, cluster)
    rows = cv.members(res, c)
    kept = rows[:MAX_ZIP_IMAGES]
    path = folder / f"{_stem(ws, backbone, res)}-cluster{c}.zip"
    taken: set[str] = set()
    with io.atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:  # PNG is compressed
        for s in range(0, len(kept), _CHUNK):
            chunk = kept[s:s + _CHUNK]
            order = np.argsort(chunk)
            images = np.asarray(ws.images[chunk[order]])  # sorted rows: one pass over the memory map
            at = np.argsort(order)  # chunk[k] is images[at[k]]
            for k in range(len(chunk)):  # most confident first
                buf = _io.BytesIO()
                Image.fromarray(images[at[k]]).save(buf, "PNG")
                z.writestr(_entry_name(ws.paths[int(chunk[k])], int(chunk[k]), taken), buf.getvalue())
    return path, len(kept), len(rows)


def build(ctx: AppContext, workspace: gr.Dropdown, backbone: gr.Dropdown, clustering: gr.Textbox) -> None:
    gr.Markdown("Download the current clustering (chosen in the Clusters tab): one row per image with its "
                "source path, cluster and confidence (k-means: cosine to the centroid; TEMI: maximum softmax "
                "probability), or one cluster's images as PNG files.")
    with gr.Row(equal_height=False):
        with gr.Column():
            assign_btn = gr.Button("Export assignments (CSV + JSON)", variant="primary", elem_id="cedm-export-assign")
            assign_files = gr.File(label="assignments", file_count="multiple", interactive=False,
                                   elem_id="cedm-export-files")
        with gr.Column():
            cluster_no = gr.Number(value=0, precision=0, minimum=0, label="cluster")
            zip_btn = gr.Button("Export this cluster's images (zip)", elem_id="cedm-export-zip")
            zip_file = gr.File(label="cluster images", interactive=False, elem_id="cedm-export-zipfile")
    status = gr.Markdown(elem_id="cedm-export-status")

    def _open(workspace_name, backbone_name, spec, request):
        ws = ctx.open(workspace_name, request)
        backbone_name = backbone_name or cv.backbone_choices(ws)[1]
        return ws, backbone_name, cv.get_clustering(ws, backbone_name, spec or f"{cv.DEFAULT_METHOD}:{cv.DEFAULT_C}")

    @guarded
    def export_assignments(workspace_name: str, backbone_name: str, spec: str, request: gr.Request) -> list[str]:
        """The clustering's assignments as CSV and JSON files (path, cluster, confidence per image)."""
        ws, b, res = _open(workspace_name, backbone_name, spec, request)
        return [str(p) for p in write_assignments(ws, b, res, export_dir(ctx, request))]

    @guarded
    def export_cluster(workspace_name: str, backbone_name: str, spec: str, cluster, request: gr.Request) -> str:
        """One cluster's images as a zip of PNG files named by their source paths."""
        ws, b, res = _open(workspace_name, backbone_name, spec, request)
        path, n, size = write_cluster_zip(ws, b, res, cluster, export_dir(ctx, request))
        if n < size:
            gr.Warning(f"the zip holds the {n:,} most confident of the cluster's {size:,} images")
        return str(path)

    assign_btn.click(export_assignments, [workspace, backbone, clustering], [assign_files],
                     api_name="export_assignments", concurrency_limit=4
                     ).success(lambda s: f"Exported the assignments of {s or 'the clustering'}.", [clustering], [status],
                               api_visibility="private")
    zip_btn.click(export_cluster, [workspace, backbone, clustering, cluster_no], [zip_file], api_name="export_cluster",
                  concurrency_limit=2
                  ).success(lambda c, s: f"Exported the images of cluster {int(c)} of {s}.", [cluster_no, clustering],
                            [status], api_visibility="private")

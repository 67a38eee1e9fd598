"""Dataset tab: pick a workspace (the demo or your uploads), see its summary and a paged gallery, upload
images as a new workspace with its import report, delete your workspaces.

Public API endpoints: ``/import_dataset`` and ``/delete_workspace``. Paging and display are UI-only.
"""
from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr
import numpy as np

from cedm import io
from cedm import workspace as wsp
from cedm.dataset.archives import ImportLimits
from cedm.errors import CedmError
from cedm.ui import common
from cedm.ui.common import AppContext, guarded

PAGE_SIZE = 48
RESOLUTIONS = [32, 64]
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".npz", ".npy", ".gz")
_REPORT_ROWS_SHOWN = 1000


@dataclass
class DatasetTab:
    workspace: gr.Dropdown  # the selected workspace; later tabs take it as an input
    on_load: Callable  # fills the visitor's workspace list when a page opens (outputs: [workspace])


# --- what the handlers show ---------------------------------------------------------------------
def summary_markdown(ws: wsp.Workspace) -> str:
    gt = ws.ground_truth
    gt_text = f"yes ({len(gt.names)} classes, used for evaluation only)" if gt is not None else "no"
    origin = "shipped demo, read-only" if ws.read_only else "your workspace"
    return (f"### {ws.name} ({origin})\n"
            f"**{ws.n:,} images** at {ws.resolution}x{ws.resolution} px · ground-truth labels: {gt_text} · "
            f"source: `{ws.manifest.get('source', '?')}`")


def report_json(ws: wsp.Workspace) -> dict:
    rep = ws.import_report
    # "file", not "path": gradio_client takes any dict with a "path" key for a file to download
    skipped = [{"file": str(s.get("path", "")), "reason": str(s.get("reason", ""))} for s in rep.get("skipped", [])]
    return {"workspace": ws.name, "n_images": ws.n, "resolution": ws.resolution,
            "n_found": rep.get("n_found", ws.n), "n_imported": rep.get("n_imported", ws.n),
            "n_skipped": len(skipped), "skipped": skipped}


def skipped_table(ws: wsp.Workspace) -> list[list[str]]:
    return [[str(s.get("path", "")), str(s.get("reason", ""))]
            for s in ws.import_report.get("skipped", [])[:_REPORT_ROWS_SHOWN]]


def n_pages(ws: wsp.Workspace) -> int:
    return max(1, -(-ws.n // PAGE_SIZE))


def gallery_page(ws: wsp.Workspace, page: int) -> tuple[list, str, int]:
    """One page of images (never the whole dataset), its caption line and the clamped page number."""
    page = int(min(max(int(page or 0), 0), n_pages(ws) - 1))
    start, stop = page * PAGE_SIZE, min((page + 1) * PAGE_SIZE, ws.n)
    images = np.asarray(ws.images[start:stop])  # reads only these rows of the memory map
    gt = ws.ground_truth
    items = []
    for k, i in enumerate(range(start, stop)):
        caption = ws.paths[i]
        if gt is not None and gt.labels[i] >= 0:
            caption = f"{gt.names[gt.labels[i]]} · {caption}"
        items.append((images[k], caption))
    info = f"page {page + 1} of {n_pages(ws)} · images {start + 1}-{stop} of {ws.n:,}"
    return items, info, page


# --- uploads ------------------------------------------------------------------------------------
def _default_name(files: list[Path]) -> str:
    if len(files) == 1:
        stem = files[0].name
        for suf in _ARCHIVE_SUFFIXES + tuple(_IMAGE_SUFFIXES):
            if stem.lower().endswith(suf):
                stem = stem[: -len(suf)]
                break
    else:
        stem = "images"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:48]
    return stem or "upload"


def _unique_name(base: str, taken: list[str]) -> str:
    name, k = base, 2
    while name in taken or name == wsp.DEMO_NAME:
        name, k = f"{base}-{k}", k + 1
    return name


def _check_upload(files: list[Path]) -> None:
    if not files:
        raise CedmError("choose a .zip or .tar.gz archive, or several image files, to upload")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CedmError(f"the uploaded file {missing[0]} is no longer on the server; upload it again")
    if len(files) > common.MAX_UPLOAD_FILES:
        raise CedmError(f"{len(files)} files uploaded; at most {common.MAX_UPLOAD_FILES} at once "
                        "(pack more images into a .zip or .tar.gz)")
    total = sum(f.stat().st_size for f in files)
    if total > common.MAX_UPLOAD_BYTES:
        raise CedmError(f"the upload is {total / 2**20:.0f} MB; at most {common.MAX_UPLOAD_BYTES // 2**20} MB")


def _stage_files(files: list[Path], visitor_home: Path) -> Path:
    """Copy several uploaded files into one folder (in the visitor's area) that the importer reads."""
    staging = visitor_home / "uploads" / io.tmp_name("upload", uuid.uuid4().hex[:12])
    staging.mkdir(parents=True)
    for f in files:
        target = staging / f.name
        k = 2
        while target.exists():  # the same file name uploaded twice: keep both
            target = staging / f"{f.stem}-{k}{f.suffix}"
            k += 1
        shutil.copyfile(f, target)
    return staging


def import_upload(ctx: AppContext, files, name: str, resolution, labels_csv, request: gr.Request,
                  progress: gr.Progress | None) -> dict:
    """Import an upload into a new workspace in the visitor's area; returns the import report."""
    from cedm.dataset import importers

    paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in (files or [])]
    try:
        return _import_paths(ctx, importers, paths, name, resolution, labels_csv, request, progress)
    except BaseException:  # refused or broken: the uploaded copies go at once (gradio's cache keeps them hours)
        _remove_uploads(paths + ([Path(str(labels_csv))] if labels_csv else []))
        raise


def _remove_uploads(paths: list[Path]) -> None:
    from gradio.utils import get_upload_folder, is_in_or_equal

    for p in paths:
        if is_in_or_equal(p, get_upload_folder()) and p.is_file():  # only gradio's copies, never a local file
            p.unlink(missing_ok=True)
            try:
                p.parent.rmdir()  # gradio keeps each upload in a folder of its own
            except OSError:
                pass


def _import_paths(ctx: AppContext, importers, paths: list[Path], name: str, resolution, labels_csv,
                  request: gr.Request, progress) -> dict:
    _check_upload(paths)
    home = ctx.visitor_home(request)
    taken = wsp.list_workspaces(home, include_demo=False)
    if len(taken) >= common.MAX_WORKSPACES_PER_SESSION:
        raise CedmError(f"you already have {len(taken)} workspaces; delete one before uploading another")
    name = (name or "").strip()
    if name:
        wsp.check_name(name)
        if name in taken:
            raise CedmError(f"you already have a workspace named {name!r}; choose another name")
    else:
        name = _unique_name(_default_name(paths), taken)
    resolution = _resolution(resolution)
    single = len(paths) == 1 and paths[0].suffix.lower() not in _IMAGE_SUFFIXES
    with ctx.sessions.heavy("import", getattr(request, "session_hash", None)) as budget:
        source = paths[0] if single else _stage_files(paths, home)
        limits = ImportLimits() if budget is None else ImportLimits(max_decoded_bytes=budget)
        try:
            ws = importers.import_dataset(
                str(source), home=home, name=name, resolution=resolution,
                labels_csv=str(labels_csv) if labels_csv else None, limits=limits,
                progress=common.progress_callback(progress, ctx.sessions, request))
        except CedmError as e:
            msg = str(e) if single else str(e).replace(source.name, "your upload")
            if len(paths) == 1 and "usable image" in msg and "skipped" not in msg:
                msg += f"; {_lone_file_reason(paths[0])}"
            raise CedmError(msg) from None
        finally:
            if not single:
                shutil.rmtree(source, ignore_errors=True)
    return report_json(ws)


def _lone_file_reason(path: Path) -> str:
    """Why a single uploaded file gave no dataset: it is not a readable image, or one image is too few."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoder error is the reason shown
        return f"{path.name} is not a readable image ({type(e).__name__}: {str(e)[:80]})"
    return "one image file is not a dataset: upload several images, or a .zip or .tar.gz of them"


def _resolution(value) -> int:
    try:
        r = int(value or 64)
    except (TypeError, ValueError):
        raise CedmError(f"resolution must be one of {RESOLUTIONS}, got {value!r}") from None
    if r not in RESOLUTIONS:
        raise CedmError(f"resolution must be one of {RESOLUTIONS}, got {value!r}")
    return r


# --- layout and wiring --------------------------------------------------------------------------
def build(ctx: AppContext) -> DatasetTab:
    demo_ws = ctx.open(wsp.DEMO_NAME, None) if ctx.demo_available else None
    with gr.Row():
        workspace = gr.Dropdown(choices=[wsp.DEMO_NAME] if demo_ws else [],
                                value=wsp.DEMO_NAME if demo_ws else None, label="workspace",
                                info="the shipped demo or one of your uploads", scale=3,
                                allow_custom_value=True)  # API callers name their own workspaces
        delete_btn = gr.Button("Delete this workspace", variant="secondary", scale=1, size="sm",
                               interactive=demo_ws is None)  # the demo cannot be deleted
    status = gr.Markdown(elem_id="cedm-status")
    summary = gr.Markdown(summary_markdown(demo_ws) if demo_ws else
                          "No demo workspace is installed: upload images to start.")
    first = gallery_page(demo_ws, 0) if demo_ws else ([], "", 0)
    page = gr.State(first[2])
    with gr.Row():
        prev_btn = gr.Button("< previous", size="sm", scale=0, min_width=120)
        page_info = gr.Markdown(first[1], elem_id="cedm-page-info")
        next_btn = gr.Button("next >", size="sm", scale=0, min_width=120)
    gallery = gr.Gallery(value=first[0], columns=8, fit_columns=False, height=460, object_fit="contain", format="png",
                         label="images", elem_id="cedm-dataset-gallery", allow_preview=True)

    with gr.Accordion("Upload images as a new workspace", open=demo_ws is None):
        gr.Markdown(f"A .zip or .tar.gz archive (folders are searched; a `labels.csv` of path,label rows inside "
                    f"is used as ground truth), a .npz/.npy array, or several image files. Up to "
                    f"{common.MAX_UPLOAD_BYTES // 2**20} MB per upload; an archive may hold any number of "
                    f"images, loose files at most {common.MAX_UPLOAD_FILES:,} at once. "
                    + ("Your uploads are private to this page and removed when you close it." if ctx.sessions.public
                       else f"Workspaces are kept in `{ctx.home}` and shared with the `cedm` command line."))
        with gr.Row():
            files = gr.File(file_count="multiple", type="filepath", label="archive or images",
                            elem_id="cedm-upload", scale=3)
            with gr.Column(scale=2):
                name = gr.Textbox(label="workspace name (optional)", placeholder="from the file name")
                resolution = gr.Radio(RESOLUTIONS, value=64, label="stored resolution (px)")
                labels_csv = gr.File(file_count="single", type="filepath", file_types=[".csv"],
                                     label="labels CSV (optional: path,label; for evaluation only)")
        with gr.Row():
            import_btn = gr.Button("Import", variant="primary", elem_id="cedm-import")
            cancel_btn = gr.Button("Cancel", size="sm")
    with gr.Accordion("Import report", open=False) as report_box:
        report = gr.JSON(report_json(demo_ws) if demo_ws else None, label="report", elem_id="cedm-report",
                         max_height=260)
        skipped = gr.Dataframe(skipped_table(demo_ws) if demo_ws else None, headers=["skipped file", "reason"], datatype=["str", "str"],
                               label="skipped files", interactive=False, elem_id="cedm-skipped")

    # --- handlers (UI-only ones private; import and delete are public API endpoints) -------------
    @guarded
    def show_workspace(ws_name: str, request: gr.Request):
        if not ws_name:
            return "Upload images to start.", None, [], [], "", 0, gr.Button(interactive=False)
        ws = ctx.open(ws_name, request)
        items, info, p = gallery_page(ws, 0)
        return (summary_markdown(ws), report_json(ws), skipped_table(ws), items, info, p,
                gr.Button(interactive=not ws.read_only))

    def pager(delta: int):
        @guarded
        def turn(ws_name: str, current: int, request: gr.Request):
            ws = ctx.open(ws_name, request)
            return gallery_page(ws, int(current or 0) + delta)
        return turn

    @guarded
    def import_dataset(files: list[str], name: str, resolution: int, labels_csv: str | None,
                       request: gr.Request, progress=gr.Progress()):
        """Import a .zip/.tar.gz (or several images) into a new private workspace; returns its import report."""
        return import_upload(ctx, files, name, resolution, labels_csv, request, progress)

    @guarded
    def open_imported(rep: dict, request: gr.Request):
        status_text = (f"Imported {rep['n_imported']:,} of {rep['n_found']:,} files into **{rep['workspace']}**"
                       + (f" ({rep['n_skipped']:,} skipped, listed in the import report)." if rep["n_skipped"] else "."))
        return (gr.Dropdown(choices=ctx.choices(request), value=rep["workspace"]), status_text,
                gr.Accordion(open=True))

    @guarded
    def delete_workspace(ws_name: str, request: gr.Request):
        """Delete one of your workspaces (the shipped demo cannot be deleted)."""
        if ws_name == wsp.DEMO_NAME:
            raise CedmError("the shipped demo workspace is read-only and cannot be deleted")
        wsp.check_name(ws_name or "")
        wsp.delete_workspace(ctx.visitor_home(request), ws_name)
        return f"Deleted workspace **{ws_name}**."

    @guarded
    def refresh_choices(request: gr.Request):
        choices = ctx.choices(request)
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None)

    @guarded
    def cancel(request: gr.Request):
        ctx.sessions.request_cancel(request.session_hash)
        gr.Info("cancelling the running step")

    @guarded
    def on_load(request: gr.Request):
        ctx.sessions.opened_page(request.session_hash)
        ctx.sessions.sweep()
        return gr.Dropdown(choices=ctx.choices(request))

    shown = [summary, report, skipped, gallery, page_info, page, delete_btn]
    workspace.change(show_workspace, [workspace], shown, api_visibility="private", concurrency_limit=8)
    prev_btn.click(pager(-1), [workspace, page], [gallery, page_info, page], api_visibility="private",
                   concurrency_limit=8)
    next_btn.click(pager(+1), [workspace, page], [gallery, page_info, page], api_visibility="private",
                   concurrency_limit=8)
    # API callers get only the first step of each chain (.success runs from the browser)
    import_btn.click(import_dataset, [files, name, resolution, labels_csv], [report],
                     api_name="import_dataset", concurrency_limit=2
                     ).success(open_imported, [report], [workspace, status, report_box], api_visibility="private")
    delete_btn.click(delete_workspace, [workspace], [status], api_name="delete_workspace"
                     ).success(refresh_choices, None, [workspace], api_visibility="private")
    cancel_btn.click(cancel, None, None, api_visibility="private", concurrency_limit=None)
    return DatasetTab(workspace=workspace, on_load=on_load)

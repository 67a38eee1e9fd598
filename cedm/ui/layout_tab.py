"""Self-annotations and layouts in the app (seed 003; docs/spatial.md).

- ``build_annotations``: the Layouts tab. The workspace's cached self-boxes / self-segments drawn over its images
  (a page at a time) and over a query image; where none are cached, the CLI command and a button that computes
  them (with progress). Clicking an image makes its layout the Generate tab's layout.
- ``build_generate``: the group of the Generate tab shown only for a spatial model. The layout comes from a box
  (four sliders), a workspace image or an uploaded image (its self-annotation by the model's own annotator), a
  mask PNG (pixel = segment id) or segments painted in the model's S colours; the same-noise comparison of
  image-level, layout-only and layout + cluster guidance shows each sample's layout IoU.

Thin: the layouts, the sampling, the annotations and the IoU are cedm.model.spatial and cedm.annotate calls.
"""
from __future__ import annotations

import gradio as gr
import numpy as np

from cedm.errors import CedmError
from cedm.ui import common
from cedm.ui import spatial_views as views
from cedm.ui.common import AppContext, guarded

BOX, ROW, UPLOAD, MASK, PAINT = ("a box (sliders)", "a workspace image (its self-annotation)",
                                 "an uploaded image (its self-annotation)", "a mask PNG (pixel = segment id)",
                                 "painted segments")
SOURCES = [BOX, ROW, UPLOAD, MASK, PAINT]
NONE = "none"
MAX_COMPARE = 6  # images per row of the comparison
CANVAS = 256     # painting canvas (pixels); the painted map is resized to the model resolution
PREVIEW = 128


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _blank_canvas(n_segments: int) -> dict:
    from cedm.annotate.overlay import segment_palette

    bg = np.empty((CANVAS, CANVAS, 3), np.uint8)
    bg[:] = segment_palette(n_segments)[0]
    return {"background": bg, "layers": [], "composite": bg}


# --- the Layouts tab --------------------------------------------------------------------------------------
def build_annotations(ctx: AppContext, workspace: gr.Dropdown) -> "AnnotationsTab":
    from cedm.annotate.patches import spatial_backbones

    gr.Markdown("Self-annotations (seed 003): a box per image (LOST-style, from a backbone's patch features) or "
                "S segment classes (k-means of patch features over the workspace). A spatial model is trained on "
                "them and generates from a layout (Generate tab). Click an image to use its layout there.")
    backbones = spatial_backbones()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            shown = gr.Radio([NONE], value=NONE, label="show self-annotations", elem_id="cedm-annot-show")
            hint = gr.Markdown(elem_id="cedm-annot-hint")
            with gr.Accordion("Compute self-annotations", open=False):
                backbone = gr.Dropdown(backbones, value="efficientnet_lite0" if "efficientnet_lite0" in backbones
                                       else (backbones[0] if backbones else None), label="backbone",
                                       elem_id="cedm-annot-backbone")
                kind = gr.Radio(["boxes", "segments"], value="boxes", label="what", elem_id="cedm-annot-kind")
                n_segments = gr.Number(8, precision=0, minimum=2, maximum=64, label="segments S")
                compute = gr.Button("Compute", elem_id="cedm-annot-compute")
            progress_box = common.progress_panel("annotate")
            page = gr.Number(1, precision=0, minimum=1, label="page", elem_id="cedm-annot-page")
            page_info = gr.Markdown(elem_id="cedm-annot-page-info")
            query = gr.Image(type="pil", sources=["upload", "clipboard"], label="query image", height=200,
                             elem_id="cedm-annot-query")
            query_shown = gr.Image(label="query with its self-annotation", interactive=False, height=200,
                                   elem_id="cedm-annot-query-overlay")
        with gr.Column(scale=2, min_width=400):
            gallery = gr.Gallery(columns=6, height=520, object_fit="contain", format="png", label="images",
                                 elem_id="cedm-annot-gallery")
    rows_state = gr.State([])
    picked = gr.State(None)  # a workspace row whose layout the Generate tab takes

    def choices(ws) -> list:
        return [(NONE, NONE)] + views.annotation_choices(ws)

    @guarded
    def refresh(workspace_name, value, request: gr.Request):
        ws = ctx.open(workspace_name, request)
        ch = choices(ws)
        keep = value if value in [v for _, v in ch] else (ch[1][1] if len(ch) > 1 else NONE)
        note = "" if len(ch) > 1 else ("No self-annotations in this workspace yet: compute them below, or run "
                                       + views.missing_hint(ws, "box", "efficientnet_lite0") + ".")
        return gr.Radio(choices=ch, value=keep), note

    @guarded
    def show_page(workspace_name, value, page_no, request: gr.Request):
        ws = ctx.open(workspace_name, request)
        rows, info = views.page_rows(ws, page_no)
        if value in (None, "", NONE):
            images = np.asarray(ws.images[rows[0]:rows[-1] + 1]) if len(rows) else []
            items = [(img, ws.paths[int(r)]) for img, r in zip(images, rows)]
        else:
            items = views.overlay_items(ws, rows, value)
        return items, info, rows.tolist()

    @guarded
    def show_query(workspace_name, value, image, request: gr.Request):
        if image is None or value in (None, "", NONE):
            return None
        return views.query_overlay(ctx.open(workspace_name, request), image, value)

    @guarded
    def run_compute(workspace_name, backbone_name, what, S, request: gr.Request, progress=gr.Progress()):
        from cedm.annotate import store
        from cedm.annotate.patches import check_spatial

        ws = ctx.open(workspace_name, request)
        spec = "box" if what == "boxes" else f"segments:{int(S or 0)}"
        store.parse_spatial(spec)
        store.annotate(ws, spec, backbone_name,
                       progress=common.progress_callback(progress, ctx.sessions, request, "annotate"))
        value = f"{spec}@{check_spatial(backbone_name)}"
        ch = choices(ws)
        value = value if value in [v for _, v in ch] else ch[-1][1]
        return gr.Radio(choices=ch, value=value), f"{spec} with {backbone_name}: done."

    def pick(rows, evt: gr.SelectData):
        if evt is None or evt.index is None or not rows:
            return gr.skip()
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        return int(rows[int(i)]) if 0 <= int(i) < len(rows) else gr.skip()

    workspace.change(refresh, [workspace, shown], [shown, hint], api_visibility="private", show_progress="hidden")
    for ev in (shown.change, page.submit):
        ev(show_page, [workspace, shown, page], [gallery, page_info, rows_state], api_visibility="private")
    shown.change(show_query, [workspace, shown, query], [query_shown], api_visibility="private")
    query.change(show_query, [workspace, shown, query], [query_shown], api_visibility="private")
    compute.click(run_compute, [workspace, backbone, kind, n_segments], [shown, hint], api_visibility="private",
                  concurrency_limit=2, show_progress_on=[progress_box])
    gallery.select(pick, [rows_state], [picked], api_visibility="private")
    return AnnotationsTab(refresh=refresh, refresh_inputs=[workspace, shown], refresh_outputs=[shown, hint],
                          picked=picked)


class AnnotationsTab:
    def __init__(self, refresh, refresh_inputs, refresh_outputs, picked):
        self.refresh, self.refresh_inputs, self.refresh_outputs = refresh, refresh_inputs, refresh_outputs
        self.picked = picked  # gr.State: the workspace row clicked in the gallery


# --- the Generate tab's layout group ----------------------------------------------------------------------
def build_generate(ctx: AppContext, workspace: gr.Dropdown, gen) -> "LayoutGroup":
    """The layout group under the Generate tab's controls (``gen``: its GenerateTab), shown for spatial models."""
    c = gen.controls
    with gr.Group(visible=False, elem_id="cedm-layout") as group:
        gr.Markdown("### Generate from a layout\nThis model is spatial: it takes a layout (where things go) as "
                    "well as a cluster. The guidance w and the cluster above apply.", elem_id="cedm-layout-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                source = gr.Radio(SOURCES, value=BOX, label="layout from", elem_id="cedm-layout-source")
                with gr.Column(visible=True) as box_col:
                    with gr.Row():
                        x0 = gr.Slider(0, 64, value=0, step=1, label="x0", elem_id="cedm-layout-x0")
                        y0 = gr.Slider(0, 64, value=0, step=1, label="y0", elem_id="cedm-layout-y0")
                    with gr.Row():
                        x1 = gr.Slider(0, 64, value=32, step=1, label="x1", elem_id="cedm-layout-x1")
                        y1 = gr.Slider(0, 64, value=32, step=1, label="y1", elem_id="cedm-layout-y1")
                row = gr.Number(0, precision=0, minimum=0, label="workspace image row (or click one in the "
                                "Layouts tab)", elem_id="cedm-layout-row", visible=False)
                upload = gr.Image(type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                  label="image", height=160, elem_id="cedm-layout-image", visible=False)
                mask = gr.File(file_types=[".png"], type="filepath", label="mask PNG (pixel value = segment id)",
                               elem_id="cedm-layout-mask", visible=False)
                paint = gr.ImageEditor(type="numpy", format="png", image_mode="RGB", sources=[], layers=False,
                                       canvas_size=(CANVAS, CANVAS), fixed_canvas=True, transforms=[],
                                       brush=gr.Brush(colors=["#000000"], color_mode="fixed"),
                                       label="paint segments (colour = segment id; colour 0 = background)",
                                       visible=False, elem_id="cedm-layout-paint")
                n_compare = gr.Slider(1, MAX_COMPARE, value=4, step=1, label="images per row",
                                      elem_id="cedm-layout-n")
                show = gr.Button("Show the layout", elem_id="cedm-layout-show")
                compare = gr.Button("Same noise: image-level vs layout only vs layout + cluster", variant="primary",
                                    elem_id="cedm-layout-compare")
            with gr.Column(scale=2, min_width=400):
                preview = gr.Image(label="layout", interactive=False, height=160, elem_id="cedm-layout-preview")
                gallery = gr.Gallery(columns=4, height=460, object_fit="contain", format="png",
                                     label="rows: image-level · layout only · layout + cluster (same seeds)",
                                     elem_id="cedm-layout-gallery")
                summary = gr.Markdown(elem_id="cedm-layout-summary")
                with gr.Accordion("Records", open=False):
                    records = gr.JSON(label="records", max_height=260)

    entry_of = gen.entry_of  # (model name, workspace name, request) -> ModelEntry

    def loaded(entry):
        from cedm.inference import get_engine

        engine = get_engine()
        return engine.model(entry.path), engine.device

    def layout_input(model, src, bx0, by0, bx1, by1, row_no, image, mask_path, painted, workspace_name, request):
        """What cedm.model.spatial.layout_maps takes, from the chosen source."""
        from cedm.annotate.overlay import ids_from_colours

        if src == BOX:
            return ",".join(str(int(v)) for v in (bx0, by0, bx1, by1))
        if src == ROW:
            ws = ctx.open(workspace_name, request)
            r = int(row_no or 0)
            if not 0 <= r < ws.n:
                raise CedmError(f"row must lie in 0..{ws.n - 1}")
            return np.asarray(ws.images[r])
        if src == UPLOAD:
            if image is None:
                raise CedmError("upload or paste an image first")
            return np.asarray(image, np.uint8)[..., :3]
        if src == MASK:
            if not mask_path:
                raise CedmError("upload a mask PNG first")
            return str(mask_path)
        if src == PAINT:
            pic = (painted or {}).get("composite") if isinstance(painted, dict) else None
            if pic is None:
                raise CedmError("paint a layout first")
            sp = model.info.get("spatial") or {}
            if sp.get("kind") != "segments":
                raise CedmError("painted segments are a layout for a segments model; use a box for this model")
            ids = ids_from_colours(pic, int(sp["n_segments"]))
            if not ids.any():
                raise CedmError("the painted layout is all background (colour 0): paint segments with the brush")
            return ids
        raise CedmError(f"unknown layout source {src!r}")

    def maps_of(model_name, workspace_name, src, bx0, by0, bx1, by1, row_no, image, mask_path, painted, request):
        from cedm.model.spatial import layout_maps

        entry = entry_of(model_name, workspace_name, request)
        model, device = loaded(entry)
        layout = layout_input(model, src, bx0, by0, bx1, by1, row_no, image, mask_path, painted, workspace_name,
                              request)
        maps, desc = layout_maps(model, layout, entry.path, device)
        return entry, model, device, maps, desc

    @guarded
    def on_model(model_name, workspace_name, request: gr.Request):
        entry = entry_of(model_name, workspace_name, request)
        sp = entry.info.get("spatial") or {}
        r = int(entry.info.get("resolution") or 64)
        seg = sp.get("kind") == "segments"
        sl = [gr.Slider(maximum=r, value=v) for v in (r // 4, r // 4, 3 * r // 4, 3 * r // 4)]
        if seg:
            from cedm.annotate.overlay import segment_palette
            S = int(sp["n_segments"])
            pal = [_hex(c) for c in segment_palette(S)]
            paint_upd = gr.ImageEditor(value=_blank_canvas(S),
                                       brush=gr.Brush(colors=pal, default_color=pal[1 % S], color_mode="fixed"))
        else:
            paint_upd = gr.ImageEditor()
        return (gr.Group(visible=bool(sp)), *sl, paint_upd)

    @guarded
    def show_layout(model_name, workspace_name, src, bx0, by0, bx1, by1, row_no, image, mask_path, painted,
                    request: gr.Request):
        *_, maps, desc = maps_of(model_name, workspace_name, src, bx0, by0, bx1, by1, row_no, image, mask_path,
                                 painted, request)
        return views.layout_picture(maps, size=PREVIEW), desc

    @guarded
    def run_compare(model_name, workspace_name, src, bx0, by0, bx1, by1, row_no, image, mask_path, painted,
                    cluster, guidance, steps, sampler, seed, n_images, request: gr.Request, progress=gr.Progress()):
        from cedm.model.spatial import compare_guidance, model_annotator
        from cedm.ui.generate_tab import check_numbers, cluster_id, condition_index

        entry, model, device, maps, desc = maps_of(model_name, workspace_name, src, bx0, by0, bx1, by1, row_no,
                                                   image, mask_path, painted, request)
        steps, seed, n = check_numbers(steps, seed, n_images)
        n = min(n, MAX_COMPARE)
        if cluster is None or cluster == "":
            raise CedmError("choose a cluster")
        c = condition_index(entry, cluster_id(cluster))
        guidance = float(guidance if guidance is not None else 1.0)
        rows = compare_guidance(model, maps.to(device), c, n, guidance,
                                annotate=model_annotator(model, entry.path, device),
                                progress=common.progress_callback(progress, ctx.sessions, request),
                                steps=steps, sampler=sampler, seed=seed)
        items, table, cols = views.comparison_items(rows)
        recs = [{**r, **desc, "model": entry.name} for row in rows for r in row["records"]]
        return (gr.Gallery(value=items, columns=cols), table, recs, views.layout_picture(maps, size=PREVIEW))

    def on_source(src):
        """Only the chosen source's inputs are shown."""
        return tuple(gr.update(visible=src == k) for k in (BOX, ROW, UPLOAD, MASK, PAINT))

    source.change(on_source, [source], [box_col, row, upload, mask, paint], api_visibility="private",
                  show_progress="hidden", queue=False)
    inputs = [gen.model, workspace, source, x0, y0, x1, y1, row, upload, mask, paint]
    show.click(show_layout, inputs, [preview, records], api_visibility="private")
    compare.click(run_compare, inputs + [c["cluster"], c["guidance"], c["steps"], c["sampler"], c["seed"], n_compare],
                  [gallery, summary, records, preview], api_visibility="private", concurrency_limit=4)
    outputs = [group, x0, y0, x1, y1, paint]
    gen.model.change(on_model, [gen.model, workspace], outputs, api_visibility="private", show_progress="hidden")
    return LayoutGroup(on_model=on_model, inputs=[gen.model, workspace], outputs=outputs, source=source, row=row)


class LayoutGroup:
    def __init__(self, on_model, inputs, outputs, source, row):
        self.on_model, self.inputs, self.outputs = on_model, inputs, outputs
        self.source, self.row = source, row

    def take_row(self, row):
        """A row clicked in the Layouts tab becomes the layout source."""
        if row is None:
            return gr.skip(), gr.skip()
        return gr.Radio(value=ROW), int(row)

"""Self-annotations (seed 003): LOST-style boxes, patch-k-means segments, the workspace cache, export, metrics."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from cedm.annotate import export, store
from cedm.annotate.boxes import box_masks, check_boxes, lost_box, patch_box_to_pixels
from cedm.annotate.metrics import box_iou, layout_iou, segment_miou
from cedm.annotate.patches import check_spatial, spatial_backbones
from cedm.annotate.segments import fit_segments, segment_maps, segment_scores
from cedm.cli import main
from cedm.errors import CedmError
from cedm.workspace import create_from_array

torch.set_num_threads(1)


def _square_features(h, w, box, d=24, seed=0, noise=0.1):
    """Non-negative (ReLU-like) patch features: background vector b, object vector o inside ``box``."""
    rng = np.random.default_rng(seed)
    b, o = np.abs(rng.normal(size=d)), np.abs(rng.normal(size=d))
    f = b + noise * np.abs(rng.normal(size=(h, w, d)))
    r0, c0, r1, c1 = box
    f[r0:r1, c0:c1] = o + noise * np.abs(rng.normal(size=(r1 - r0, c1 - c0, d)))
    return f


# --- boxes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [(3, 5, 8, 11), (0, 0, 4, 4), (10, 2, 14, 13), (6, 6, 9, 9)])
def test_lost_box_finds_the_object_in_structured_patch_features(box):
    pb = lost_box(_square_features(14, 14, box, seed=sum(box), noise=0.05))
    assert pb.box == box
    assert box[0] <= pb.seed[0] < box[2] and box[1] <= pb.seed[1] < box[3]
    assert pb.mask.sum() == (box[2] - box[0]) * (box[3] - box[1])


def test_lost_box_needs_the_centring_for_non_negative_features():
    """Uncentred non-negative features correlate positively everywhere: every patch has the same degree."""
    f = _square_features(10, 10, (2, 2, 5, 5))
    assert (f.reshape(100, -1) @ f.reshape(100, -1).T > 0).all()  # what LOST's raw graph would see
    assert lost_box(f).box == (2, 2, 5, 5)


def test_lost_box_featureless_and_bad_inputs():
    assert lost_box(np.ones((5, 6, 3))).box == (0, 0, 5, 6)
    with pytest.raises(CedmError, match=r"\(h, w, D\) patch map"):
        lost_box(np.ones((5, 6)))
    with pytest.raises(CedmError, match="finite"):
        lost_box(np.full((2, 2, 3), np.nan))
    with pytest.raises(CedmError, match="k_patches"):
        lost_box(np.ones((2, 2, 3)), k_patches=0)


def test_box_coordinates_and_masks():
    assert patch_box_to_pixels((1, 2, 3, 7), (7, 7), 70) == (20, 10, 70, 30)
    m = box_masks([[2, 4, 6, 8]], 8)
    assert m.shape == (1, 8, 8) and m.sum() == 4 * 4 and m[0, 4, 2] == 1 and m[0, 3, 2] == 0 and m[0, 4, 6] == 0
    half = box_masks([[2, 4, 6, 8]], 8, out_resolution=4)  # scaled with the image
    assert half[0].tolist() == [[0] * 4, [0] * 4, [0, 1, 1, 0], [0, 1, 1, 0]]
    for bad in ([[0, 0, 0, 4]], [[0, 0, 9, 4]], [[-1, 0, 2, 2]], [[0, 0, 1]]):
        with pytest.raises(CedmError, match="box"):
            check_boxes(bad, 8)


# --- segments ----------------------------------------------------------------------------------------
def _two_textures(n=6, h=8, w=8, d=16, seed=0):
    rng = np.random.default_rng(seed)
    ta, tb = rng.normal(size=d), rng.normal(size=d)
    truth = np.zeros((n, h, w), int)
    for i in range(n):  # a random rectangle of texture b on texture a
        r0, c0 = rng.integers(0, h // 2, 2)
        truth[i, r0:r0 + rng.integers(2, h // 2 + 1), c0:c0 + rng.integers(2, w // 2 + 1)] = 1
    feats = np.where(truth[..., None] == 1, tb, ta) + 0.3 * rng.normal(size=(n, h, w, d))
    return feats.astype(np.float32), truth


def test_segments_recover_two_textures():
    feats, truth = _two_textures()
    centroids = fit_segments(feats.reshape(-1, feats.shape[-1]), 2, seed=0)
    pred = segment_scores(feats, centroids).argmax(1)
    agree = (pred == truth).mean()
    assert max(agree, 1 - agree) == 1.0  # the same partition up to the naming of the two segments
    with pytest.raises(CedmError, match="from 2 to 255"):
        fit_segments(feats.reshape(-1, 16), 1)
    with pytest.raises(CedmError, match="another backbone"):
        segment_scores(feats, np.ones((2, 5)))


def test_colour_guided_refinement_follows_the_image_edge():
    """A 4x4 patch map on 32 pixels; the colour edge is at x = 13, not on the 8-pixel patch grid."""
    R, edge = 32, 13
    img = np.zeros((1, R, R, 3), np.uint8)
    img[:, :, edge:] = 255
    truth = np.zeros((R, R), int)
    truth[:, edge:] = 1
    ta, tb = np.eye(2)
    patch_right = (np.arange(4) * 8 + 4) >= edge  # a patch takes the texture under its centre
    maps = np.where(patch_right[None, :, None], tb, ta).repeat(4, 0)[None].astype(np.float32)
    plain = segment_maps(maps, np.eye(2), img, R, refine=False)[0]
    refined = segment_maps(maps, np.eye(2), img, R, refine=True)[0]
    err_plain, err_refined = (plain != truth).mean(), (refined != truth).mean()
    assert err_refined < err_plain / 2, (err_plain, err_refined)


# --- metrics -----------------------------------------------------------------------------------------
def test_layout_metrics_analytic():
    assert box_iou([[0, 0, 4, 4]], [[2, 0, 6, 4]])[0] == pytest.approx(8 / 24)
    assert box_iou([[0, 0, 2, 2]], [[4, 4, 6, 6]])[0] == 0
    a = np.array([[0, 0, 1, 1]])
    b = np.array([[0, 1, 1, 1]])
    assert segment_miou(a, b)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert layout_iou(a[None], a[None], "segments")[0] == 1.0
    with pytest.raises(CedmError, match="unknown layout kind"):
        layout_iou(a, a, "blob")


# --- export ------------------------------------------------------------------------------------------
def test_mask_names_are_safe_and_unique():
    assert export.mask_filename("cats/tabby.jpg") == "cats/tabby.png"
    assert export.mask_filename("../../etc/passwd") == "etc/passwd.png"
    assert export.mask_filename("/abs\\dir/x:y?.jpeg") == "abs/dir/x_y_.png"
    assert export.mask_filename("..") == "image.png"
    assert export.mask_filenames(["a/x.jpg", "a/x.png", "A/X.gif"]) == ["a/x.png", "a/x-1.png", "A/X-2.png"]


def test_mask_and_box_files_bad_inputs(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(CedmError, match="8-bit grey PNG"):
        export.read_mask(tmp_path / "rgb.png")
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(CedmError, match="only 3 segments"):
        export.read_mask(tmp_path / "m.png", n_segments=3)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(CedmError, match="not a readable image"):
        export.read_mask(tmp_path / "junk.png")
    (tmp_path / "b.csv").write_text("file,a,b,c,d\nx,1,2,3,4\n")
    with pytest.raises(CedmError, match="header path,x0,y0,x1,y1"):
        export.read_boxes_csv(tmp_path / "b.csv")
    (tmp_path / "b.csv").write_text("path,x0,y0,x1,y1\nx,1,2,3,four\n")
    with pytest.raises(CedmError, match="line 2"):
        export.read_boxes_csv(tmp_path / "b.csv")


# --- the workspace path, end to end -----------------------------------------------------------------------
def _squares(n=8, R=64, seed=0):
    """Textured coloured squares at random places on white; their true boxes."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, R, R, 3), 255, np.uint8)
    boxes = []
    for i in range(n):
        s = int(rng.integers(R // 4, R // 2))
        x, y = (int(v) for v in rng.integers(0, R - s, 2))
        patch = rng.integers(0, 200, 3) + rng.integers(-40, 40, (s, s, 3))
        imgs[i, y:y + s, x:x + s] = np.clip(patch, 0, 255)
        boxes.append([x, y, x + s, y + s])
    return imgs, np.array(boxes)


@pytest.fixture
def squares_ws(home):
    imgs, boxes = _squares()
    paths = [f"set/{i:02d}.jpg" for i in range(len(imgs) - 2)] + ["../up.png", "set/00.png"]
    return create_from_array(home, "squares", imgs, paths=paths), boxes


def test_annotate_boxes_end_to_end_with_the_offline_backbone(squares_ws, home, tmp_path, capsys):
    ws, truth = squares_ws
    out = tmp_path / "out"
    argv = ["annotate", "squares", "--boxes", "--backbone", "efficientnet_lite0", "--device", "cpu",
            "--export", str(out)]
    assert main(argv) == 0
    boxes = store.get_boxes(ws, "efficientnet_lite0", device="cpu")
    assert boxes.shape == (ws.n, 4)
    # pretrained ImageNet features on a 7x7 map: the box is coarse but finds the square
    iou = box_iou(boxes, truth)
    assert iou.mean() > 0.25, iou
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx >= truth[:, 0] - 4) & (cx <= truth[:, 2] + 4) & (cy >= truth[:, 1] - 4) & (cy <= truth[:, 3] + 4)
    assert inside.mean() >= 0.75
    paths, read = export.read_boxes_csv(out / "boxes.csv")
    assert paths == ws.paths and np.array_equal(read, boxes)
    assert main(argv[:-2]) == 0  # a repeated request is served from the cache
    assert len(ws.list_artifacts(store.BOX_STAGE)) == 1
    assert "self-boxes" in capsys.readouterr().out


def test_annotate_segments_end_to_end_and_export_round_trip(squares_ws, home, tmp_path):
    ws, _ = squares_ws
    out = tmp_path / "out"
    assert main(["annotate", "squares", "--segments", "2", "--backbone", "efficientnet_lite0",
                 "--device", "cpu", "--export", str(out)]) == 0
    masks = store.get_segments(ws, 2, "efficientnet_lite0", device="cpu")
    assert masks.shape == (ws.n, ws.resolution, ws.resolution) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    with open(out / "segments" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ws.paths
    names = [r["mask"] for r in rows]
    assert "up.png" in names and "set/00.png" in names and "set/00-7.png" in names  # safe and unique
    for i, r in enumerate(rows):
        target = (out / "segments" / r["mask"]).resolve()
        assert target.is_relative_to((out / "segments").resolve())
        assert np.array_equal(export.read_mask(target, n_segments=2), masks[i])
    # the annotator for new images gives what the workspace got (same centroids, same refinement)
    annot = store.load_annotator(ws, "segments:2", "efficientnet_lite0", device="cpu")
    assert np.array_equal(annot(np.array(ws.images[:3])), masks[:3])


def test_annotate_bad_inputs_leave_nothing_behind(squares_ws, home, capsys):
    ws, _ = squares_ws
    assert main(["annotate", "squares", "--segments", "1", "--backbone", "efficientnet_lite0"]) == 2
    assert "from 2 to 255" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other
        main(["annotate", "squares", "--boxes", "--segments", "3"])
    assert main(["annotate", "nope", "--boxes", "--backbone", "efficientnet_lite0"]) == 2
    assert "no workspace named 'nope'" in capsys.readouterr().err
    assert not ws.list_artifacts(store.BOX_STAGE) and not ws.list_artifacts(store.SEGMENT_STAGE)
    with pytest.raises(CedmError, match="no spatial"):
        check_spatial("clip_vitb32")
    assert "efficientnet_lite0" in spatial_backbones() and "clip_vitb32" not in spatial_backbones()
    for bad in ("blob", "segments:x", "segments:1"):
        with pytest.raises(CedmError):
            store.parse_spatial(bad)


# --- overlays --------------------------------------------------------------------------------------------
def test_overlays_draw_boxes_and_blend_segments():
    from cedm.annotate.overlay import BOX_COLOUR, blend_segments, colour_segments, draw_boxes, segment_palette

    img = np.full((1, 8, 8, 3), 255, np.uint8)
    out = draw_boxes(img, [[2, 2, 6, 6]], width=1)
    assert (out[0, 2, 2:6] == BOX_COLOUR).all() and (out[0, 5, 2:6] == BOX_COLOUR).all()
    assert (out[0, 3:5, 3:5] == 255).all() and (out[0, 0] == 255).all() and (img == 255).all()  # a copy
    pal = segment_palette(5)
    assert len({tuple(c) for c in pal}) == 5
    m = np.zeros((1, 8, 8), np.uint8)
    m[0, :, 4:] = 1
    assert (colour_segments(m, 2)[0, 0, 5] == pal[1]).all()
    half = blend_segments(img, m, 2, alpha=0.5)
    assert np.allclose(half[0, 0, 0], np.round((255 + pal[0].astype(float)) / 2))
    with pytest.raises(CedmError, match="segment id 1"):
        colour_segments(m, 1)
    with pytest.raises(CedmError, match="2 boxes for 1 images"):
        draw_boxes(img, [[0, 0, 2, 2], [0, 0, 2, 2]])


def test_ui_overlay_views(squares_ws):
    from cedm.ui import spatial_views as views

    ws, _ = squares_ws
    with pytest.raises(CedmError, match="cedm annotate squares --boxes --backbone efficientnet_lite0"):
        views.overlay_items(ws, [0], "box@efficientnet_lite0")
    boxes = store.get_boxes(ws, "efficientnet_lite0", device="cpu")
    assert views.annotation_choices(ws) == [("box (efficientnet_lite0)", "box@efficientnet_lite0")]
    items = views.overlay_items(ws, [3, 1], "box@efficientnet_lite0")
    assert [c for _, c in items] == [f"{ws.paths[3]} · box {boxes[3].tolist()}",
                                     f"{ws.paths[1]} · box {boxes[1].tolist()}"]
    assert not np.array_equal(items[0][0], ws.images[3])
    shown = views.query_overlay(ws, np.array(ws.images[3]), "box@efficientnet_lite0")
    assert np.array_equal(shown, items[0][0])  # a query is annotated exactly like a workspace image
    with pytest.raises(CedmError, match="rows must lie"):
        views.overlay_items(ws, [99], "box@efficientnet_lite0")
    pic = views.layout_picture(torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]]]), size=4)
    assert pic.shape == (4, 4, 3) and (pic[:2, :2] == 255).all() and (pic[2:, 2:] == 96).all()


def test_denoiser_backbone_gives_spatial_maps_for_self_annotations(home):
    """A cedm model's own UNet (denoiser:MODEL, seed 002) as the spatial backbone: its block's activation map."""
    from cedm.features import get_spec
    from cedm.model.edm import CEDM, save_model

    imgs, _ = _squares(n=6, R=16)
    ws = create_from_array(home, "dn", imgs)
    torch.manual_seed(0)
    save_model(ws.derived_dir("models") / "tiny", CEDM.from_preset("tiny", 16, 0).eval())
    name = "denoiser:dn/tiny,sigma=0.5,block=up1+mid"
    assert check_spatial(name) == get_spec(name).name
    boxes = store.get_boxes(ws, name, device="cpu")
    assert boxes.shape == (6, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    meta = store.list_annotations(ws)[0]
    assert meta["spatial"] == "box" and meta["backbone"] == get_spec(name).name
    masks = store.get_segments(ws, 2, name, device="cpu")
    assert masks.shape == (6, 16, 16)
    assert main(["annotate", "dn", "--boxes", "--backbone", "denoiser:dn/nope"]) == 2

"""Spatially conditioned C-EDM (seed 003, eq. 8): layout maps at the input, CFG with the spatial null, layouts."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cedm.cli import main
from cedm.errors import CedmError
from cedm.model.edm import load_model
from cedm.model.spatial import (
    LayoutModel,
    SpatialData,
    encode_boxes,
    encode_segments,
    generate_with_layout,
    layout_maps,
)
from cedm.model.train import TrainConfig, train
from cedm.sampling.generate import generate
from cedm.sampling.guidance import guided_denoiser

torch.set_num_threads(1)


def _squares(n=256, R=8, s=3, seed=0):
    """Black s x s squares at random places on white; their boxes."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, R, R, 3), 255, np.uint8)
    boxes = []
    for i in range(n):
        x, y = (int(v) for v in rng.integers(0, R - s + 1, 2))
        imgs[i, y:y + s, x:x + s] = 0
        boxes.append([x, y, x + s, y + s])
    return imgs, np.array(boxes)


def _cfg(steps, batch=16):
    return TrainConfig(preset="tiny", kimg=steps * batch / 1000, batch=batch, lr=2e-3, p_uncond=0.2, sample_kimg=0,
                       checkpoint_kimg=1000, ema_halflife_kimg=0.5)


def _dark_inside(images, box):
    d = 255 - images.astype(np.float64).mean(-1)
    x0, y0, x1, y1 = box
    return d[:, y0:y1, x0:x1].sum((1, 2)) / np.maximum(d.sum((1, 2)), 1e-9)


def _dark_box(images):
    """An exact annotator for dark squares on white: the dark pixels' bounding box."""
    out = []
    for im in images:
        ys, xs = np.nonzero(im.mean(-1) < 128)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 8, 8])
    return np.array(out)


def _spy_on(model) -> list:
    """Record (labels, map) of every network call of ``model``."""
    seen = []
    real = model.forward

    def spy(x, sigma, class_labels=None, spatial=None):
        seen.append((class_labels.clone(), spatial.clone()))
        return real(x, sigma, class_labels, spatial=spatial)

    model.forward = spy
    return seen


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A box-conditioned and an image-level model, same data, same budget (40 steps of 16 on 8x8 images)."""
    out = tmp_path_factory.mktemp("spatial")
    imgs, boxes = _squares()
    labels = np.zeros(len(imgs), np.int64)
    sp = train(imgs, labels, 1, out / "box", _cfg(40), spatial=SpatialData("box", 8, boxes=boxes, p_drop_class=0.2),
               show_progress=False, device="cpu")
    im = train(imgs, labels, 1, out / "image", _cfg(40), show_progress=False, device="cpu")
    return sp, im


def test_spatial_model_puts_the_square_in_the_given_box(trained):
    sp_dir, im_dir = trained
    sp, im = load_model(sp_dir), load_model(im_dir)
    assert sp.spatial_channels == 1 and im.spatial_channels == 0
    info = json.loads((sp_dir / "cedm.json").read_text())
    assert info["spatial"]["kind"] == "box" and info["spatial"]["channels"] == 1
    for box in ((0, 0, 4, 4), (4, 4, 8, 8)):
        maps, desc = layout_maps(sp, ",".join(map(str, box)))
        a, _ = generate_with_layout(sp, maps, 12, clusters=0, guidance=1.0, steps=8, sampler="dpmpp2m")
        b, _ = generate(im, 12, clusters=0, guidance=1.0, steps=8, sampler="dpmpp2m")
        inside_sp, inside_im = _dark_inside(a, box).mean(), _dark_inside(b, box).mean()
        # a quarter of the image: an image-level model puts about a quarter of its square there
        assert inside_sp > 0.5 and inside_sp > inside_im + 0.2, (box, inside_sp, inside_im)
        assert desc == {"layout": "box", "box": [float(v) for v in box]}


def test_cfg_drops_map_and_cluster_together(trained):
    sp = load_model(trained[0])
    maps = encode_boxes([[0, 0, 4, 4]], 8, 8)
    real = sp.forward
    seen = _spy_on(sp)
    wrapped = LayoutModel(sp, maps)
    x = torch.randn(2, 3, 8, 8)
    labels = torch.zeros(2, dtype=torch.long)
    w = 2.5
    out = guided_denoiser(wrapped, labels, w, force_batched=True)(x, torch.tensor(1.0))
    (lab, m), = seen
    assert lab.tolist() == [0, 0, 1, 1]
    assert torch.equal(m[:2], maps.expand(2, -1, -1, -1)) and not m[2:].any()  # the null sees no map
    sp.forward = real
    d_c = sp(x, torch.tensor(1.0), labels, spatial=maps.expand(2, -1, -1, -1))
    d_u = sp(x, torch.tensor(1.0), torch.ones(2, dtype=torch.long), spatial=torch.zeros(2, 1, 8, 8))
    assert torch.allclose(out, d_u + w * (d_c - d_u), atol=1e-5)
    assert torch.allclose(sp(x, torch.tensor(1.0), labels), sp(x, torch.tensor(1.0), labels,
                                                               spatial=torch.zeros(2, 1, 8, 8)))


def test_training_drops_the_map_with_the_label():
    data = SpatialData("segments", 4, masks=np.array([[[0, 1], [1, 2]]], np.uint8).repeat(2, 0).repeat(2, 1)
                       .repeat(2, 2), n_segments=3)
    m = data.maps(np.array([0, 1]), np.array([False, True]), 4, "cpu", keep=np.array([True, False]))
    assert m.shape == (2, 3, 4, 4) and not m[1].any()
    assert torch.equal(m[0].argmax(0), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 2, 2], [1, 1, 2, 2]]))
    assert torch.equal(encode_segments(np.array([[0, 1], [1, 1]], np.uint8), 2, 1)[0, :, 0, 0],
                       torch.tensor([0.25, 0.75]))
    with pytest.raises(CedmError, match="p_drop_map"):
        SpatialData("box", 8, boxes=np.zeros((1, 4)), p_drop_map=1.0)
    imgs, boxes = _squares(4)
    with pytest.raises(CedmError, match="image-level condition"):
        train(imgs, None, 0, "/nonexistent", _cfg(1), spatial=SpatialData("box", 8, boxes=boxes))
    with pytest.raises(CedmError, match="3 layouts for 4"):
        train(imgs, np.zeros(4, np.int64), 1, "/nonexistent", _cfg(1), spatial=SpatialData("box", 8, boxes=boxes[:3]))


def test_layouts_from_masks_and_bad_layouts(trained, tmp_path):
    sp, im = load_model(trained[0]), load_model(trained[1])
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, 0:8] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    maps, desc = layout_maps(sp, str(tmp_path / "m.png"))  # a box model takes a mask's bounding box
    assert desc["box"] == [0, 4, 4, 8] and torch.equal(maps, encode_boxes([[0, 4, 4, 8]], 8, 8))
    with pytest.raises(CedmError, match="without a spatial condition"):
        layout_maps(im, "0,0,4,4")
    with pytest.raises(CedmError, match="outside the model's 8x8"):
        layout_maps(sp, "0,0,9,4")
    with pytest.raises(CedmError, match="x0 < x1"):
        layout_maps(sp, "4,0,4,4")
    with pytest.raises(CedmError, match="neither box coordinates"):
        layout_maps(sp, "1,2,3")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(CedmError, match="empty"):
        layout_maps(sp, str(tmp_path / "empty.png"))
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(CedmError, match="not a readable image"):
        layout_maps(sp, str(tmp_path / "junk.png"))
    with pytest.raises(CedmError, match="do not fit"):
        LayoutModel(sp, torch.zeros(1, 2, 8, 8))


def test_sample_cli_takes_a_layout(trained, tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", str(trained[0]), "--layout", "4,4,8,8", "--n", "4", "--cluster", "0", "--steps", "6",
                 "--sampler", "dpmpp2m", "--device", "cpu", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["box"] == [4.0, 4.0, 8.0, 8.0] for r in recs)
    assert main(["sample", str(trained[1]), "--layout", "4,4,8,8", "--n", "2", "--device", "cpu",
                 "--out", str(tmp_path / "x")]) == 2  # an image-level model takes no layout


# a few seconds of `cedm train` on a tiny workspace: two k-means clusters of the offline backbone's features
TINY_TRAIN = ["--condition", "kmeans:2", "--backbone", "efficientnet_lite0", "--preset", "tiny", "--kimg", "0.008",
              "--batch", "4", "--sample-kimg", "0", "--device", "cpu"]


def _squares_workspace(home, name: str, n: int, seed: int) -> np.ndarray:
    """A workspace of n 16 px white images, each with one 7 px square of a random dark colour at a random place."""
    from cedm.workspace import create_from_array

    rng = np.random.default_rng(seed)
    imgs = np.full((n, 16, 16, 3), 255, np.uint8)
    for i in range(n):
        x, y = rng.integers(0, 9, 2)
        imgs[i, y:y + 7, x:x + 7] = rng.integers(0, 200, 3)
    create_from_array(home, name, imgs)
    return imgs


def test_workspace_train_and_sample_with_self_annotations(home, tmp_path):
    """cedm train --spatial on a workspace's own self-annotations, then cedm sample --layout with an image (its
    self-annotation, by the model's annotator) and with a mask PNG; the config records the spatial kind."""
    imgs = _squares_workspace(home, "sq", 8, seed=1)
    Image.fromarray(imgs[0]).save(tmp_path / "query.png")
    common = TINY_TRAIN
    for spatial, channels in (("box", 1), ("segments:2", 2)):
        assert main(["train", "sq", "--spatial", spatial, *common]) == 0
        model_dir = home / "workspaces" / "sq" / "models" / f"kmeans-2-{spatial.replace(':', '-')}-tiny"
        info = json.loads((model_dir / "cedm.json").read_text())
        assert info["spatial"]["kind"] == spatial.split(":")[0] and info["spatial"]["channels"] == channels
        assert info["spatial"]["backbone"] == "efficientnet_lite0"
        assert load_model(model_dir).spatial_channels == channels
        assert (model_dir / "spatial_centroids.npy").is_file() == (channels == 2)
        out = tmp_path / spatial.replace(":", "-")
        assert main(["sample", str(model_dir), "--layout", str(tmp_path / "query.png"), "--n", "2", "--steps", "3",
                     "--sampler", "dpmpp2m", "--device", "cpu", "--out", str(out)]) == 0
        rec = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
        assert rec["layout"] == "image"
    Image.fromarray(np.eye(16, dtype=np.uint8)).save(tmp_path / "mask.png")
    assert main(["sample", str(model_dir), "--layout", str(tmp_path / "mask.png"), "--n", "1", "--steps", "3",
                 "--device", "cpu", "--out", str(tmp_path / "m")]) == 0
    Image.fromarray(np.full((16, 16), 5, np.uint8)).save(tmp_path / "bad.png")
    assert main(["sample", str(model_dir), "--layout", str(tmp_path / "bad.png"), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "b")]) == 2  # segment id 5 of a 2-segment model


def test_layout_fidelity_ranks_the_spatial_model_first(trained):
    from cedm.model.spatial import layout_fidelity

    _, boxes = _squares(8, seed=5)
    models = {"spatial": load_model(trained[0]), "image": load_model(trained[1])}
    res = layout_fidelity(models, "box", boxes, [0] * 8, _dark_box, steps=8, sampler="dpmpp2m", seed=0)
    assert len(res["spatial"]["per_image"]) == 8
    assert res["spatial"]["iou"] > res["image"]["iou"] + 0.15, res


def test_spatial_refuses_geometric_augmentation():
    imgs, boxes = _squares(4)
    cfg = _cfg(1)
    cfg.augment = 0.12
    with pytest.raises(CedmError, match="without --augment"):
        train(imgs, np.zeros(4, np.int64), 1, "/nonexistent", cfg, spatial=SpatialData("box", 8, boxes=boxes))


def test_guidance_on_the_layout_alone_or_the_cluster_within_it(trained, tmp_path):
    from cedm.model.spatial import sample_with_layout

    sp = load_model(trained[0])
    maps = encode_boxes([[0, 0, 4, 4]], 8, 8)
    real = sp.forward
    seen = _spy_on(sp)
    wrapped = LayoutModel(sp, maps)
    x, labels = torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)
    from cedm.sampling.guidance import Guidance
    for kind, want_labels, want_map in (("layout", [1, 1, 1, 1], [1, 1, 0, 0]),
                                        ("cluster", [0, 0, 1, 1], [1, 1, 1, 1])):
        seen.clear()
        guided_denoiser(wrapped, labels, Guidance(2.0, kind=kind))(x, torch.tensor(1.0))
        (lab, m), = seen
        assert lab.tolist() == want_labels and [bool(v.any()) for v in m] == [bool(v) for v in want_map]
    sp.forward = real
    images, recs = sample_with_layout(trained[0], "0,0,4,4", 8, guide_on="layout", guidance=2.0, steps=8,
                                      sampler="dpmpp2m")
    assert recs[0]["guide_on"] == "layout" and recs[0]["condition"] is None
    assert _dark_inside(images, (0, 0, 4, 4)).mean() > 0.5
    no_branch = load_model(trained[0])
    no_branch.info["spatial"]["p_drop_class"] = 0.0
    with pytest.raises(CedmError, match="p_drop_class = 0"):
        generate_with_layout(no_branch, maps, 1, clusters=0, guidance=Guidance(2.0, kind="layout"), steps=2)
    with pytest.raises(CedmError, match="needs a layout"):
        generate(sp, 1, clusters=0, guidance=Guidance(2.0, kind="layout"), steps=2)


def test_a_spatial_model_starts_from_an_image_level_one(trained, tmp_path):
    """--init of a spatial model from an image-level model of the same preset: every weight carried, the map's
    input channels start at zero, so the new model denoises exactly like the old one whatever the layout."""
    from cedm.model.edm import CEDM
    from cedm.model.train import init_weights

    src = load_model(trained[1])
    net = CEDM.from_preset("tiny", 8, 1, spatial_channels=3).eval()
    found = init_weights(net, trained[1])
    assert found["zero_input_channels"] == 3 and found["class_rows"] == "all"
    w = net.unet.conv_in.weight
    assert not w[:, 3:].any() and torch.equal(w[:, :3], src.unet.conv_in.weight)
    x, sigma, labels = torch.randn(2, 3, 8, 8), torch.tensor(0.7), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        want = src(x, sigma, labels)
        for maps in (None, torch.randn(2, 3, 8, 8)):
            assert torch.allclose(net(x, sigma, labels, spatial=maps), want, atol=1e-5)
    with pytest.raises(CedmError, match="network differs"):  # fewer input channels than the source: refused
        init_weights(CEDM.from_preset("tiny", 8, 1), trained[0])


def test_eval_reports_layout_iou_over_the_workspace_layouts(home, tmp_path):
    """cedm eval --layout-iou: a spatial model and an image-level baseline sampled under the same workspace
    self-boxes; the real images of those rows, annotated the same way at the same resolution, give IoU 1."""
    _squares_workspace(home, "ev", 10, seed=2)
    common = TINY_TRAIN
    assert main(["train", "ev", *common, "--spatial", "box", "--p-drop-class", "0.2", "--out", "box"]) == 0
    assert main(["train", "ev", *common, "--out", "img"]) == 0
    out = tmp_path / "layout.json"
    assert main(["eval", "box", "img", "--workspace", "ev", "--layout-iou", "box", "--n", "4", "--steps", "2",
                 "--sampler", "euler", "--guidance", "2", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rows"] == [0, 3, 6, 9]
    box, img, real = res["results"]
    assert (box["model_name"], box["spatial_model"], img["model_name"], img["spatial_model"]) == \
        ("box", True, "img", False)
    for r in (box, img):
        assert len(r["per_image"]) == 4 and 0 <= r["layout_iou"] <= 1 and r["FD_EffNetLite0"] > 0
        assert r["guidance"] == 2 and r["annotator"] == "efficientnet_lite0"
    assert real["layout_iou"] == 1.0 and real["per_image"] == [1.0] * 4  # same annotator, same images
    # refused: a layout kind the spatial model does not take; several guidance values
    assert main(["eval", "box", "--workspace", "ev", "--layout-iou", "segments:2", "--n", "2",
                 "--device", "cpu"]) == 2
    assert main(["eval", "box", "--workspace", "ev", "--layout-iou", "box", "--guidance", "1,2", "--n", "2",
                 "--device", "cpu"]) == 2
    assert main(["eval", "img", "--workspace", "ev", "--layout-iou", "box", "--n", "2", "--device", "cpu"]) == 2
    # segments: the workspace's own centroids annotate the samples; the real images again give mIoU 1
    assert main(["train", "ev", *common, "--spatial", "segments:2", "--out", "seg"]) == 0
    assert main(["eval", "seg", "--workspace", "ev", "--layout-iou", "segments:2", "--n", "2", "--steps", "2",
                 "--sampler", "euler", "--device", "cpu", "--json", str(out)]) == 0
    seg, real = json.loads(out.read_text())["results"]
    assert seg["spatial_model"] and seg["layout"] == "segments:2" and 0 <= seg["layout_iou"] <= 1
    assert real["per_image"] == [1.0, 1.0]


def test_same_noise_comparison_of_the_three_guidance_kinds(trained):
    """compare_guidance: the rows image-level / layout only / layout + cluster share seeds; the layout rows put
    the square in the box far more than the image-level row (exact annotator: the dark pixels' bounding box)."""
    from cedm.model.spatial import COMPARISON, compare_guidance, layout_of_maps

    sp = load_model(trained[0])
    maps = encode_boxes([[4, 4, 8, 8]], 8, 8)
    assert layout_of_maps(maps).tolist() == [[4, 4, 8, 8]]
    calls = []
    rows = compare_guidance(sp, maps, 0, n=8, guidance=2.0, annotate=_dark_box, steps=6, sampler="dpmpp2m", seed=3,
                            progress=lambda d, t, desc: calls.append((d, t)))
    assert [r["name"] for r in rows] == [name for name, _ in COMPARISON]
    assert all(len(r["iou"]) == 8 and r["images"].shape == (8, 8, 8, 3) for r in rows)
    assert [r["records"][0]["seed"] for r in rows] == [3, 3, 3]
    assert rows[1]["records"][0]["condition"] is None and rows[2]["records"][0]["condition"] == 0
    image_level, layout_only, both = (_dark_inside(r["images"], (4, 4, 8, 8)).mean() for r in rows)
    assert min(layout_only, both) > image_level + 0.2, (image_level, layout_only, both)
    assert calls[-1][0] == calls[-1][1]  # progress reaches the end of the three rows
    no_branch = load_model(trained[0])
    no_branch.info["spatial"]["p_drop_class"] = 0.0
    rows = compare_guidance(no_branch, maps, 0, n=2, guidance=2.0, steps=2, sampler="euler")
    assert rows[1]["images"] is None and "p-drop-class" in rows[1]["note"] and rows[2]["iou"] is None
    with pytest.raises(CedmError, match="one layout map"):
        compare_guidance(sp, maps.repeat(2, 1, 1, 1), 0, n=2, steps=2)


def test_painted_colours_become_segment_ids():
    from cedm.annotate.overlay import colour_segments, ids_from_colours

    ids = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    pic = colour_segments(ids, 3)[0].astype(np.int16)
    noisy = np.clip(pic + np.random.default_rng(0).integers(-12, 13, pic.shape), 0, 255).astype(np.uint8)
    assert np.array_equal(ids_from_colours(noisy, 3), ids)
    rgba = np.concatenate([pic.astype(np.uint8), np.full(ids.shape + (1,), 255, np.uint8)], -1)
    rgba[0, 1, 3] = 0  # transparent: background
    assert ids_from_colours(rgba, 3)[0, 1] == 0
    with pytest.raises(CedmError, match="painted layout"):
        ids_from_colours(np.zeros((3, 3)), 3)

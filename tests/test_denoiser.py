"""Denoiser features (seed 002): a cedm model's own UNet as a backbone, cached, deterministic, used downstream."""
import numpy as np
import pytest
import torch

from cedm.cli import main
from cedm.errors import CedmError
from cedm.features import denoiser as dn
from cedm.features import extract_one, find_features, get_features, get_spec
from cedm.model.edm import CEDM, load_model, save_model
from cedm.workspace import create_from_array

torch.set_num_threads(1)


def blob_images(n, seed=0, size=16):
    """Two visibly different groups: a red disc (0) or a blue square (1) on grey, random place and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.full((n, size, size, 3), 200, np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        cy, cx = rng.uniform(5, size - 5, 2)
        r = rng.uniform(3, 5)
        if labels[i] == 0:
            images[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = [220, 30, 30]
        else:
            images[i][(abs(yy - cy) < r) & (abs(xx - cx) < r)] = [30, 30, 220]
    return images, labels


@pytest.fixture
def ws(home):
    images, labels = blob_images(24)
    w = create_from_array(home, "blobs", images, labels=[f"g{i}" for i in labels], label_names=["g0", "g1"])
    torch.manual_seed(0)
    save_model(w.derived_dir("models") / "tiny", CEDM.from_preset("tiny", 16, 0).eval())
    torch.manual_seed(1)
    save_model(w.derived_dir("models") / "tinyc", CEDM.from_preset("tiny", 16, 3).eval())  # a C-EDM
    return w


NAME = "denoiser:blobs/tiny,sigma=0.5,block=mid"
REORDERED = "denoiser:blobs/tiny,block=mid,sigma=.5"  # the same backbone, written otherwise


def test_names_parse_and_canonicalise(ws):
    assert dn.parse_name("denoiser:blobs/tiny,sigma=2,block=mid+up0") == ("blobs/tiny", 2.0, ("mid", "up0"))
    spec = get_spec("denoiser:blobs/tiny")  # defaults filled in: one cache key for equal settings
    assert spec.name == dn.backbone_name("blobs/tiny") == (
        f"denoiser:blobs/tiny,sigma={dn.DEFAULT_SIGMA:g},block={dn.DEFAULT_BLOCK}")
    assert spec.feature_dim == 32 and spec.input_size == 16  # tiny preset: 32 channels at every level
    assert get_spec("denoiser:blobs/tiny,block=down0+mid").feature_dim == 64
    for bad, msg in (("denoiser:blobs/tiny,sigma=-1", "positive"), ("denoiser:blobs/tiny,block=side", "bad block"),
                     ("denoiser:blobs/tiny,block=up7", "does not exist"), ("denoiser:blobs/nope", "unknown model"),
                     ("denoiser:blobs/tiny,temp=3", "unknown option"), ("denoiser:", "expected")):
        with pytest.raises(CedmError, match=msg):
            get_spec(bad)


def test_features_are_deterministic_cached_batch_independent_and_depend_on_sigma(ws):
    a = get_features(ws, NAME, batch_size=5, normalized=False)
    assert a.shape == (24, 32) and np.isfinite(a).all()
    folder = find_features(ws, NAME)
    assert folder is not None
    meta = (folder / "meta.json").read_text()
    assert "sha256:" in meta  # the key holds the model's weights hash
    b = get_features(ws, NAME, batch_size=24, normalized=False)  # cache hit: same file
    np.testing.assert_array_equal(a, b)
    # recomputed with another batching (a fresh artifact in a fresh home would be the same): per-image seeds
    net = dn.DenoiserFeatures(load_model(dn.model_dir("blobs/tiny")), 0.5, ("mid",))
    x = torch.from_numpy(np.array(ws.images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        full = net(x)
        parts = torch.cat([net(x[:7]), net(x[7:])])
    torch.testing.assert_close(full, parts, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a, full.numpy(), atol=2e-2, rtol=1e-2)  # the artifact stores float16
    c = get_features(ws, "denoiser:blobs/tiny,sigma=4,block=mid", normalized=False)
    assert np.abs(a - c).max() > 1e-2  # another noise level, other features (and another cache entry)
    assert find_features(ws, "denoiser:blobs/tiny,sigma=4,block=mid") != folder
    # a query image gets the same features as the same image in the workspace (same per-image noise)
    q = extract_one(ws.images[3], NAME, normalized=False, resolution=16)
    np.testing.assert_allclose(q, a[3], atol=2e-2, rtol=1e-2)


def test_retrained_model_never_reuses_stale_features(ws):
    a = get_features(ws, NAME, normalized=False)
    torch.manual_seed(5)
    save_model(ws.derived_dir("models") / "tiny", CEDM.from_preset("tiny", 16, 0).eval())  # new weights
    b = get_features(ws, NAME, normalized=False)
    assert np.abs(a - b).max() > 1e-3


def test_conditional_model_uses_its_no_condition_label(ws):
    net = dn.DenoiserFeatures(load_model(dn.model_dir("blobs/tinyc")), 0.5, ("mid",))
    seen = {}
    net.model.unet.register_forward_pre_hook(lambda m, a, kw: seen.update(c=kw["class_labels"]), with_kwargs=True)
    with torch.no_grad():
        net(torch.zeros(2, 3, 16, 16))
    assert seen["c"].tolist() == [3, 3]


def test_downstream_commands_accept_denoiser_features(ws, tmp_path, capsys):
    assert main(["features", "blobs", "--backbone", "denoiser:blobs/tiny", "--sigma", "0.5", "--block", "mid",
                 "--export", str(tmp_path / "f.npy")]) == 0
    assert "shape (24, 32)" in capsys.readouterr().out
    assert np.load(tmp_path / "f.npy").shape == (24, 32)
    assert main(["cluster", "blobs", "--backbone", NAME, "--method", "kmeans", "--clusters", "2"]) == 0
    from cedm.labels import compare_labelings
    m = compare_labelings(ws, "kmeans:2", "gt", backbone=REORDERED)
    assert m["n_compared"] == 24 and 0 <= m["nmi"] <= 1
    from cedm.clusters import labelings
    lab = labelings.resolve(ws, "kmeans:2", backbone=REORDERED)  # same clustering as the full name
    assert lab.labels.shape == (24,)
    assert labelings.find_clusters(ws, "kmeans", 2, backbone=NAME) is not None
    from cedm.features import search
    rows, sims = search.nearest_neighbours(ws, NAME, get_features(ws, NAME)[5], k=3)
    assert rows[0] == 5 and sims[0] > 0.999
    assert main(["features", "blobs", "--backbone", "efficientnet_lite0", "--sigma", "1"]) == 2
    assert "apply only to a denoiser" in capsys.readouterr().err


def test_training_conditions_on_denoiser_clusters(ws):
    from cedm.model.train import resolve_condition
    labels, C, _q, desc = resolve_condition(ws, "kmeans:2", backbone=REORDERED)
    assert C == 2 and labels.shape == (24,) and desc["backbone"] == NAME


def test_ablation_scores_a_grid(ws, capsys):
    res = dn.ablate(ws, "blobs/tiny", [0.2, 2.0], ["mid", "up1"], against="gt", compare_backbones=())
    assert res["k"] == 2 and len(res["rows"]) == 4
    assert all(0 <= r["nmi"] <= 1 and -1 <= r["ami"] <= 1 for r in res["rows"])
    assert res["best"]["ami"] == max(r["ami"] for r in res["rows"])
    pixels = res["comparison"][0]
    assert pixels["features"].startswith("raw pixels") and pixels["ami"] > 0.5  # red discs vs blue squares
    assert "| features |" in dn.ablation_table(res)
    with pytest.raises(CedmError, match="does not exist"):
        dn.ablate(ws, "blobs/tiny", [1.0], ["up9"])


def test_app_backbone_list_offers_the_workspace_models(ws):
    from cedm.ui import cluster_views as cv
    names = [name for _, name in cv.backbone_choices(ws)[0]]
    assert dn.backbone_name("blobs/tiny") in names and dn.backbone_name("blobs/tinyc") in names
    assert dn.workspace_backbones(None) == []


def test_offline_self_guidance_finetunes_a_model_on_its_own_clusters(ws):
    """seed 002 4.1: cedm train WS --condition kmeans:K --backbone denoiser:M --init M."""
    from cedm.model.train import TrainConfig, train_workspace
    cfg = TrainConfig(kimg=0.032, batch=16, sample_kimg=0, init="blobs/tiny", lr=1e-9, lr_rampup_kimg=0)
    out = train_workspace(ws, "kmeans:2", name="offline", preset="tiny", backbone="denoiser:blobs/tiny",
                          config=cfg, show_progress=False)
    model, src = load_model(out, ema=False), load_model(dn.model_dir("blobs/tiny"))
    assert model.n_conditions == 2
    cond = model.info["condition"]
    assert cond["backbone"] == dn.backbone_name("blobs/tiny") and cond["spec"] == "kmeans:2"
    torch.testing.assert_close(model.unet.conv_in.weight, src.unet.conv_in.weight, atol=1e-6, rtol=0)


def test_a_workspace_model_resolves_in_the_workspace_as_opened(ws, home, tmp_path):
    """denoiser:WS/MODEL finds the model in the workspace being worked on (another home, a visitor's area), not
    only in the default home; a `--home` command resolves it in that home; an annotator keeps its scope."""
    import os

    from cedm.annotate.store import load_annotator
    from cedm.features.backbones import workspace_scope
    from cedm.workspace import Workspace

    other = tmp_path / "other-home"
    images, _ = blob_images(12, seed=3)
    w2 = create_from_array(other, "elsewhere", images)
    torch.manual_seed(2)
    save_model(w2.derived_dir("models") / "tiny", CEDM.from_preset("tiny", 16, 0).eval())
    name = "denoiser:elsewhere/tiny,sigma=0.5,block=mid"
    with pytest.raises(CedmError, match="no workspace 'elsewhere'"):
        get_spec(name)  # outside any workspace call: the default home has no such workspace
    feats = get_features(w2, name)
    assert feats.shape == (12, 32) and find_features(w2, name) is not None
    with workspace_scope(w2):
        assert np.allclose(extract_one(images[4], name, normalized=False), get_features(w2, name, normalized=False)[4],
                           atol=1e-3)
    annot = load_annotator(w2, "box", name)
    assert annot(images[:2]).shape == (2, 4)  # used after the call that made it
    # a command with --home resolves the name in that home; $CEDM_HOME is restored afterwards
    assert main(["features", "elsewhere", "--home", str(other), "--backbone", name]) == 0
    assert os.environ["CEDM_HOME"] == str(home)
    # a read-only view of `blobs` writing into a visitor's area: its models live in the area's overlay
    area = tmp_path / "area" / "overlays" / "blobs"
    view = Workspace(ws.root, read_only=True, overlay=area)
    torch.manual_seed(3)
    save_model(view.derived_dir("models") / "mine", CEDM.from_preset("tiny", 16, 0).eval())
    with pytest.raises(CedmError, match="unknown model 'blobs/mine'"):
        get_spec("denoiser:blobs/mine")  # the default home's `blobs` has no such model
    assert get_features(view, "denoiser:blobs/mine").shape == (24, 32)
    assert list(area.rglob("features.npy"))  # computed for the view, kept in the visitor's area

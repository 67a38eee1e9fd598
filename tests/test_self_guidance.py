"""Online self-guidance (seed 002, 4.2): self:K training uses its clusters, finds the groups, resumes exactly."""
import numpy as np
import pytest
import torch

from cedm.clusters import labelings
from cedm.clusters.metrics import hungarian_accuracy
from cedm.errors import CedmError
from cedm.model.edm import load_model
from cedm.model.train import (
    TrainConfig,
    list_checkpoints,
    param_digest,
    train_workspace,
)
from cedm.workspace import create_from_array
from tests.test_edm import blobs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ws(home):
    images, labels = blobs(64)
    return create_from_array(home, "two", images, labels=[f"g{i}" for i in labels], label_names=["g0", "g1"])


def cfg(**kw):
    base = {"preset": "tiny", "kimg": 1.6, "batch": 16, "sample_kimg": 0, "checkpoint_kimg": 1000, "log_every": 10,
            "p_uncond": 0.15, "lr": 2e-3}
    return TrainConfig(**{**base, **kw})


SG = {"warmup_fraction": 0.3, "lr": 1e-2, "sigma": 0.5}


def test_online_self_labels_use_both_clusters_and_find_the_groups(ws):
    out = train_workspace(ws, "self:2", name="self2", config=cfg(), show_progress=False, self_guidance=SG)
    model = load_model(out)
    assert model.n_conditions == 2 and model.info["condition"]["spec"] == "self:2"
    util = model.info["condition"]["utilization"]
    assert util["used"] == 2 and util["r"] == 1.0
    lab = labelings.resolve(ws, "self:2@self2")
    assert lab.labels.shape == (64,) and set(lab.labels.tolist()) == {0, 1}
    acc = hungarian_accuracy(lab.labels, ws.ground_truth.labels)
    assert acc > 0.8, acc  # chance is 0.5
    q = model.info["condition"]["q"]
    assert abs(sum(q) - 1) < 1e-6 and min(q) > 0.2  # equal partition keeps both prototypes in use
    log = (out / "training" / "log.jsonl").read_text()
    assert "sk_loss" in log and "batch_clusters" in log
    from cedm.cli import main  # a self:K model samples per cluster like any C-EDM
    assert main(["sample", "self2", "--workspace", "two", "--cluster", "1", "--n", "2", "--steps", "2",
                 "--out", str(out.parent / "s")]) == 0


def test_resume_is_bit_exact_with_the_sinkhorn_state(ws):
    kw = {"config": cfg(kimg=0.64), "show_progress": False, "self_guidance": SG}
    full = train_workspace(ws, "self:2", name="full", **kw)
    part = train_workspace(ws, "self:2", name="part", max_steps=7, **kw)  # stops in the warm-up; resumes across its end
    assert len(list_checkpoints(part / "training")) == 1
    part = train_workspace(ws, "self:2", name="part", resume=True, **kw)
    a, b = load_model(full), load_model(part)
    assert param_digest(a) == param_digest(b)
    np.testing.assert_array_equal(np.load(full / "self_labels.npy"), np.load(part / "self_labels.npy"))
    from safetensors.torch import load_file
    ta = load_file(str(list_checkpoints(full / "training")[-1].with_suffix(".safetensors")))
    tb = load_file(str(list_checkpoints(part / "training")[-1].with_suffix(".safetensors")))
    for k in ("self.prototypes", "self.head.weight", "self.assign", "self.rng"):
        assert torch.equal(ta[k], tb[k]), k
    with pytest.raises(CedmError, match="self-guidance settings"):
        train_workspace(ws, "self:2", name="part", resume=True, config=cfg(kimg=0.96), show_progress=False,
                        self_guidance={**SG, "dim": 32})


def test_bad_self_specs(ws):
    with pytest.raises(CedmError, match="integer K"):
        train_workspace(ws, "self:two", name="x", config=cfg(), show_progress=False)
    with pytest.raises(CedmError, match="2 <= K"):
        train_workspace(ws, "self:1", name="x", config=cfg(), show_progress=False)
    with pytest.raises(CedmError, match="no trained model|unknown model"):
        labelings.resolve(ws, "self:2@nope")


def test_the_clusters_tab_browses_a_models_own_clusters(home):
    """A self:K model of the demo (its saved per-image prototypes: the Unicode group of each emoji folded onto
    prototypes 0-2, prototype 3 unused) is offered by the Clusters tab and shown like a clustering: sizes,
    r_C = 3/4, galleries of its members, a map coloured by prototype, confidence = cosine to the prototype's
    mean feature."""
    from cedm.model.edm import CEDM, save_model
    from cedm.model.self_guidance import LABELS_FILE
    from cedm.ui import cluster_views as cv
    from cedm.ui.clusters_tab import _own_labelings, build_view
    from cedm.workspace import open_demo

    ws = open_demo(home)
    backbone = "efficientnet_lite0"  # the demo ships its features and map
    gt = ws.ground_truth.labels
    own = np.where(gt >= 0, gt % 3, 0).astype(np.int64)
    folder = ws.derived_dir("models") / "own4"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model(folder, CEDM.from_preset("tiny", 16, 4, info={"condition": {"spec": "self:4",
                                                                                "q": [0.25] * 4}}))
    assert _own_labelings(ws) == []  # a self:K model without saved assignments is not offered
    np.save(folder / LABELS_FILE, own)
    assert _own_labelings(ws) == ["self:4@own4"]

    res = cv.get_clustering(ws, backbone, "self:4@own4", compute=False)
    assert res.n_clusters == 4 and res.n_used == 3 and res.sizes.tolist() == np.bincount(own, minlength=4).tolist()
    feats = labelings.workspace_features(ws, backbone)
    mean = feats[own == 1].mean(0)
    row = int(np.flatnonzero(own == 1)[0])
    assert abs(res.confidence[row] - feats[row] @ mean / np.linalg.norm(mean)) < 1e-4

    v = build_view(ws, backbone, "self:4@own4", cluster=1, compute=False)
    assert v.spec == "self:4@own4" and "3 clusters used (r_C = 0.750)" in v.status and "self:4@own4" in v.status
    assert [c for _, c in v.cluster_choices] == [0, 1, 2, 3] and v.cluster == 1
    shown = [p.split(" · ")[0] for _, p in v.gallery]
    assert len(shown) == cv.PAGE_SIZE and all(own[ws.paths.index(p)] == 1 for p in shown)
    traces = [t for t in v.map.data if t.showlegend is not False]
    assert sorted(t.name for t in traces) == ["0", "1", "2"]  # one per used prototype
    assert sum(len(t.x) for t in traces) == ws.n
    assert int(np.argmax(v.sizes.data[0].y)) == 0 and v.sizes.data[0].y[0] == res.sizes.max()
    with pytest.raises(CedmError, match="not a self:3 model"):
        cv.get_clustering(ws, backbone, "self:3@own4")


def test_backbone_choices_list_a_workspace_model_outside_the_default_home(tmp_path, monkeypatch):
    """A model trained on a workspace of another home (a visitor's area, ``cedm serve --home``) is offered as a
    denoiser backbone without looking it up in the default home (that look-up failed and broke the tab)."""
    from cedm.model.edm import CEDM, save_model
    from cedm.ui import cluster_views as cv

    images, _ = blobs(8)
    ws = create_from_array(tmp_path / "area", "mine", images)
    monkeypatch.setenv("CEDM_HOME", str(tmp_path / "elsewhere"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model(ws.derived_dir("models") / "m", CEDM.from_preset("tiny", 16, 0))
    labels, default = cv.backbone_choices(ws)
    own = [(label, name) for label, name in labels if name.startswith("denoiser:mine/m,")]
    assert len(own) == 1 and own[0][0] == f"{own[0][1]} (the workspace's own model)" and default

"""Pseudo-labels: CLIP zero-shot (tiny random-init open_clip model + its real tokenizer), the offline ImageNet
classifier labels on real photos, comparison numbers and cluster names on hand-computed cases, the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cedm import labels
from cedm.cli import main
from cedm.clusters.labelings import list_labelings, resolve, save_labeling
from cedm.dataset.imaging import square_resize
from cedm.errors import CedmError
from cedm.features import backbones
from cedm.workspace import create_from_array

torch.set_num_threads(1)
TINY = "cedm-tiny-clip"
CAT_FAMILY = range(281, 288)  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    """A small CLIP architecture in open_clip's config registry (the standard text tower shape, so the real
    BPE tokenizer and its 49,408-token vocabulary are used)."""
    import open_clip

    d = tmp_path_factory.mktemp("clip_cfg")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Backbones registered on the fly for CLIP towers stay inside each test."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))


@pytest.fixture
def ws(home, tiny_images):
    return create_from_array(home, "tiny", tiny_images, labels=["face-smiling", "cat"] * 5)


NAMES = ["cat", "dog", "red car", "face smiling"]


# --- the prompt ensemble and the zero-shot rule --------------------------------------------------------
def test_prompt_ensemble_is_mean_of_normalised_prompts_renormalised():
    net, tok = labels.load_clip(TINY, device="cpu", random_init=True)
    got = labels.text_embeddings(net, tok, NAMES).numpy()
    assert got.shape == (4, 16) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)

    with torch.no_grad():
        for k, name in enumerate(NAMES):
            raw = [net.encode_text(tok([p.format(name)]))[0].numpy() for p in labels.PROMPTS]
            assert len(raw) == 5 and "a blurry photo of a {}." in labels.PROMPTS
            unit = [r / np.linalg.norm(r) for r in raw]
            want = np.mean(unit, axis=0)
            want /= np.linalg.norm(want)
            assert np.allclose(got[k], want, atol=1e-5)
            # the normalisation before averaging matters: raw prompt embeddings differ in length
            naive = np.mean(raw, axis=0)
            assert not np.allclose(got[k], naive / np.linalg.norm(naive), atol=1e-5)


def test_zero_shot_probs_hand_case():
    text = np.eye(3, dtype=np.float32)
    image = np.array([[2.0, 0, 0], [0, 0.6, 0.8]], dtype=np.float32)  # first row is normalised inside
    p = labels.zero_shot_probs(image, text, logit_scale=10.0)
    e = np.exp([[10, 0, 0], [0, 6, 8]])
    assert np.allclose(p, e / e.sum(1, keepdims=True), atol=1e-6)
    with pytest.raises(CedmError, match="do not match"):
        labels.zero_shot_probs(np.ones((2, 4)), text)


def test_argmax_picks_the_label_whose_text_embedding_is_closest(ws, monkeypatch):
    net, tok = labels.load_clip(TINY, device="cpu", random_init=True)
    text = labels.text_embeddings(net, tok, NAMES).numpy()
    scale = float(net.logit_scale.exp())
    target = np.array([3, 0, 1, 2, 2, 1, 0, 3, 1, 0])
    rng = np.random.default_rng(0)
    image = text[target] + 0.05 * rng.standard_normal((ws.n, 16)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)

    import cedm.features
    monkeypatch.setattr(cedm.features, "get_features", lambda *a, **k: image)  # stands in for encode_image
    lab = labels.clip_pseudo_labels(ws, NAMES, model=TINY, _random_init=True)
    assert np.array_equal(lab.labels, target)
    logits = scale * image @ text.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(lab.probs, want / want.sum(1, keepdims=True), atol=1e-5)


# --- the whole CLIP path on a workspace ---------------------------------------------------------------
def test_clip_pseudo_labels_shapes_cache_and_training_condition(ws, monkeypatch):
    lab = labels.clip_pseudo_labels(ws, NAMES, model=TINY, device="cpu", _random_init=True)
    assert lab.name == f"labels:clip-{TINY}" and lab.class_names == NAMES
    assert lab.labels.shape == (10,) and lab.probs.shape == (10, 4) and lab.probs.dtype == np.float32
    assert np.allclose(lab.probs.sum(1), 1, atol=1e-5) and np.array_equal(lab.labels, lab.probs.argmax(1))
    assert lab.meta["weights"] == "random-init:seed0" and lab.meta["prompts"] == list(labels.PROMPTS)
    assert f"clip-{TINY}" in list_labelings(ws)

    # same names, model and weights: read back without building the model
    with monkeypatch.context() as mp:
        mp.setattr(labels, "load_clip", lambda *a, **k: pytest.fail("recomputed a cached labeling"))
        again = labels.clip_pseudo_labels(ws, NAMES, model=TINY, _random_init=True)
    assert np.array_equal(again.probs, lab.probs)
    other = labels.clip_pseudo_labels(ws, NAMES[:2], model=TINY, _random_init=True, save_as="two")
    assert other.probs.shape == (10, 2) and other.name == "labels:two"

    # a labeling like any other: C-EDM can be conditioned on it
    from cedm.model.train import resolve_condition
    res = resolve(ws, f"labels:clip-{TINY}")
    cond, C, q, desc = resolve_condition(ws, f"labels:clip-{TINY}")
    assert C == len(np.unique(lab.labels)) == len(res.class_names)
    assert np.array_equal(res.original_ids[cond], lab.labels) and np.isclose(sum(q), 1)


def test_weights_file_for_both_towers(ws, tmp_path):
    from safetensors.torch import save_file

    net, tok = labels.load_clip(TINY, device="cpu", random_init=True)
    sd = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v).contiguous()
          for k, v in net.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(sd, str(path))
    mine, _ = labels.load_clip(TINY, weights=path, device="cpu")
    assert all(torch.equal(mine.state_dict()[k], sd[k]) for k in sd)
    lab = labels.clip_pseudo_labels(ws, NAMES, model=TINY, weights=path, device="cpu")
    assert lab.meta["weights"].startswith("sha256:") and lab.meta["backbone"] == f"clip:{TINY}"
    # the image tower came from the file as well (registered as a backbone with the model's preprocessing)
    from cedm.features import get_features
    spec = backbones.get_spec(f"clip:{TINY}")
    assert spec.input_size == 32 and spec.mean == backbones.OPENAI_CLIP_MEAN and spec.feature_dim == 16
    from_file, random = get_features(ws, spec.name, weights=path), get_features(ws, spec.name, pretrained=False)
    assert from_file.shape == (10, 16) and not np.allclose(from_file, random, atol=1e-2)

    bad = tmp_path / "half.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("transformer.")}, str(bad))
    with pytest.raises(CedmError, match="does not fit"):
        labels.load_clip(TINY, weights=bad, device="cpu")


def test_offline_message_names_imagenet_and_weights(ws, home, monkeypatch, capsys):
    import huggingface_hub.constants

    from cedm import hub
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf"))  # an empty cache
    monkeypatch.setenv("CEDM_ALLOW_DOWNLOADS", "0")  # restored afterwards, though --allow-downloads sets it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CedmError) as e:
        labels.clip_pseudo_labels(ws, NAMES)  # ViT-B-32 LAION-2B from the hub
    msg = str(e.value)
    assert "downloads are off" in msg and "--allow-downloads" in msg
    assert "--imagenet" in msg and "--weights" in msg and "ViT-B-32" in msg
    assert "\n" not in msg and msg.count(". ") == 0  # one sentence
    assert not (ws.root / "artifacts").exists() and not (ws.root / "scratch").exists()

    monkeypatch.delenv("HF_HUB_OFFLINE")  # downloads allowed, the hub unreachable: noticed by the quick probe
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    assert main(["--allow-downloads", "labels", "tiny", "--names", "cat,dog", "--home", str(home),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cedm labels: error: the open_clip ViT-B-32 (laion2b_s34b_b79k) weights could not be "
                          "downloaded (cannot reach the model hub at https://huggingface.co)") and "--imagenet" in err
    assert not (ws.root / "artifacts").exists()


def test_bad_names(ws, tmp_path):
    with pytest.raises(CedmError, match="at least 2"):
        labels.check_names(" cat , ")
    with pytest.raises(CedmError, match="repeated: cat"):
        labels.check_names(["cat", "dog", "cat"])
    f = tmp_path / "names.txt"
    f.write_text("# animals\ncat\n\n dog \n", encoding="utf-8")
    assert labels.read_names_file(f) == ["cat", "dog"]
    with pytest.raises(CedmError, match="does not exist"):
        labels.read_names_file(tmp_path / "missing.txt")
    assert labels.ground_truth_names(ws) == (["cat", "face-smiling"], ["cat", "face smiling"])
    with pytest.raises(CedmError, match="unknown open_clip model"):
        labels.clip_pseudo_labels(ws, NAMES, model="ViT-Q-99", _random_init=True)
    with pytest.raises(CedmError, match="no weights 'nope'"):
        labels.clip_pseudo_labels(ws, NAMES, pretrained="nope")


# --- ImageNet classifier labels (real offline weights) ------------------------------------------------
def test_imagenet_labels_on_real_photos(home):
    skdata = pytest.importorskip("skimage.data")
    photos = [square_resize(Image.fromarray(p), 96) for p in (skdata.chelsea(), skdata.coffee())]
    ws = create_from_array(home, "photos", np.stack(photos + [p[:, ::-1] for p in photos]))
    lab = labels.imagenet_labels(ws, device="cpu")
    assert lab.name == "labels:imagenet" and len(lab.class_names) == 1000
    names = [lab.class_names[i] for i in lab.labels]
    assert lab.labels[0] in CAT_FAMILY and lab.labels[2] in CAT_FAMILY, names
    assert names[1].split(",")[0] in ("espresso", "cup", "coffee mug"), names
    ids, probs = labels.imagenet_top5(ws)
    assert ids.shape == probs.shape == (4, 5) and np.array_equal(ids[:, 0], lab.labels)
    assert np.all(np.diff(probs.astype(np.float32), axis=1) <= 0) and np.all(probs.sum(1) <= 1.001)

    # the head on cached features is the classifier itself
    from cedm.features import load_imagenet_classifier
    direct = load_imagenet_classifier(device="cpu").predict_proba(ws.images)
    assert np.array_equal(direct.argmax(1), lab.labels)
    assert np.allclose(np.take_along_axis(direct, ids.astype(np.int64), 1), probs, atol=2e-2)
    assert resolve(ws, "labels:imagenet").n_classes == len(np.unique(lab.labels))  # only used classes


# --- comparison and cluster names on hand-computed cases ------------------------------------------------
def test_compare_labelings_hand_computed(ws):
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, 0])
    b = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, -1])  # rows 8, 9 lack a label in one of them: ignored
    save_labeling(ws, "a", a, ["A0", "A1"])
    save_labeling(ws, "b", b, ["B0", "B1"])
    m = labels.compare_labelings(ws, "labels:a", "labels:b")
    assert m["contingency"].tolist() == [[3, 1], [0, 4]] and m["n_compared"] == 8
    assert m["a_names"] == ["A0", "A1"] and m["a_sizes"] == [4, 4] and m["b_sizes"] == [3, 5]
    # NMI = I(a;b) / mean(H(a), H(b)) with p(a) = (1/2, 1/2), p(b) = (3/8, 5/8)
    mi = 3 / 8 * math.log(2) + 1 / 8 * math.log(2 / 5) + 1 / 2 * math.log(8 / 5)
    ha, hb = math.log(2), -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8))
    assert m["nmi"] == pytest.approx(mi / ((ha + hb) / 2), abs=1e-9)
    # ARI from pair counts: sum C(n_ij,2) = 9, rows 12, columns 13, C(8,2) = 28
    expected = 12 * 13 / 28
    assert m["ari"] == pytest.approx((9 - expected) / (12.5 - expected), abs=1e-9)
    assert m["accuracy"] == pytest.approx(7 / 8) and 0 < m["ami"] < m["nmi"]

    save_labeling(ws, "same", np.where(a >= 0, 1 - a, -1), ["x", "y"])  # a with its ids swapped
    s = labels.compare_labelings(ws, "labels:a", "labels:same")
    assert s["nmi"] == pytest.approx(1) and s["ami"] == pytest.approx(1) and s["ari"] == pytest.approx(1)
    assert s["accuracy"] == 1 and s["contingency"].tolist() == [[0, 5], [4, 0]]
    gt = labels.compare_labelings(ws, "gt", "gt")
    assert gt["accuracy"] == 1 and gt["b_names"] == ["cat", "face-smiling"]


def test_cluster_names_shares(ws):
    clusters = np.array([5, 5, 5, 5, 7, 7, 7, 7, 5, 7])
    lab = np.array([0, 0, 0, 1, 2, 2, 1, -1, 0, -1])  # cluster 5: cat x4, dog; cluster 7: car x2, dog
    save_labeling(ws, "clu", clusters, [f"cluster {i}" for i in range(8)])
    save_labeling(ws, "lab", lab, ["cat", "dog", "car"])
    named = labels.cluster_names(ws, "labels:clu", "labels:lab")
    assert list(named) == [5, 7]  # original cluster ids, not the compacted 0, 1
    assert named[5] == [("cat", pytest.approx(0.8)), ("dog", pytest.approx(0.2))]
    assert named[7] == [("car", pytest.approx(2 / 3)), ("dog", pytest.approx(1 / 3))]
    assert labels.describe(5, named[5]) == "cluster 5: cat 80%, dog 20%"
    assert labels.cluster_names(ws, "labels:clu", "labels:lab", top=1)[7] == [("car", pytest.approx(2 / 3))]
    # ImageNet names are shown by their first synonym; a cluster without labelled images says so
    assert labels.describe(3, [("tabby, tabby cat", 0.5)]) == "cluster 3: tabby 50%"
    assert labels.top_labels([0, 1], [0, -1], ["a"])[1] == []


def test_honest_cluster_titles_renames_and_search(ws):
    """A guessed name says where it comes from and shows only above the threshold; a user's name wins, is kept
    in the workspace and is removed by an empty name; search finds file names, cluster names and labels."""
    clusters = np.array([5, 5, 5, 5, 7, 7, 7, 7, 5, 7])
    lab = np.array([0, 0, 0, 1, 2, 2, 0, 1, 0, 3])  # cluster 5: cat 80%; cluster 7: car 40% (below 50%)
    save_labeling(ws, "clu", clusters, [f"cluster {i}" for i in range(8)])
    save_labeling(ws, "lab", lab, ["cat", "dog", "car", "bus"], params={"kind": "clip"})
    assert labels.label_source(ws, "labels:lab") == "CLIP guess"
    assert labels.label_source(ws, "gt") == "ground truth"
    titles = labels.cluster_titles(ws, "labels:clu", "labels:lab")
    assert titles == {5: "CLIP guess: cat 80%"}  # cluster 7 has no confident name: shown by its id
    assert labels.cluster_titles(ws, "labels:clu", "labels:lab", threshold=0.3)[7] == "CLIP guess: car 40%"
    assert labels.rename_cluster(ws, "labels:clu", 7, "  vehicles  ") == {7: "vehicles"}
    assert labels.cluster_titles(ws, "labels:clu", "labels:lab") == {5: "CLIP guess: cat 80%", 7: "vehicles"}
    assert labels.cluster_renames(ws, "labels:clu") == {7: "vehicles"}  # stored, read back
    with pytest.raises(CedmError, match="not a cluster"):
        labels.rename_cluster(ws, "labels:clu", 6, "nothing here")
    with pytest.raises(CedmError, match="60 characters"):
        labels.rename_cluster(ws, "labels:clu", 5, "x" * 61)
    # search: cluster names and labels (clusters resolve to their original ids 5 and 7)
    assign = clusters
    found = labels.search_rows(ws, "VEHIC", assign, labels.cluster_titles(ws, "labels:clu"))
    assert found.tolist() == np.flatnonzero(clusters == 7).tolist()
    assert labels.search_rows(ws, "dog", assign, {}, "labels:lab").tolist() == np.flatnonzero(lab == 1).tolist()
    assert labels.search_rows(ws, ws.paths[3], assign).tolist() == [3]
    with pytest.raises(CedmError, match="type something"):
        labels.search_rows(ws, "  ")
    assert labels.rename_cluster(ws, "labels:clu", 7, "") == {}  # an empty name gives the guess back


# --- command line ----------------------------------------------------------------------------------------
def test_cli(ws, home, tmp_path, capsys):
    from safetensors.torch import save_file

    net, _ = labels.load_clip(TINY, device="cpu", random_init=True)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    save_labeling(ws, "clu", np.arange(10) % 3, ["cluster 0", "cluster 1", "cluster 2"])
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES), encoding="utf-8")
    base = ["labels", "tiny", "--home", str(home), "--device", "cpu"]

    assert main(base + ["--names-file", str(names), "--model", TINY, "--weights", str(path),
                        "--compare", "labels:clu"]) == 0
    out = capsys.readouterr().out
    assert f"CLIP zero-shot labels ({TINY}) for 'tiny': 10 images" in out and f"labels:clip-{TINY}" in out
    assert f"labels:clu vs labels:clip-{TINY} (10 images" in out and "NMI" in out and "AMI" in out
    assert "cluster 0: " in out and "cluster 2: " in out and "%" in out

    assert main(base + ["--from-ground-truth-names", "--model", TINY, "--weights", str(path),
                        "--save-as", "gtnames", "--compare", "gt"]) == 0
    out = capsys.readouterr().out
    assert "saved as labels:gtnames" in out and "face-smiling: " in out  # gt classes titled by their names

    assert main(base + ["--imagenet", "--model", TINY]) == 2
    assert "apply to CLIP labels" in capsys.readouterr().err
    assert main(base + ["--names", "cat"]) == 2
    assert "at least 2 label names" in capsys.readouterr().err


def test_image_towers_come_from_the_feature_registry():
    # the default model is the registry's clip_vitb32 (features shared with `cedm features`)
    assert labels.image_backbone("ViT-B-32", "laion2b_s34b_b79k") == "clip_vitb32"
    name = labels.image_backbone("ViT-L-14", "laion2b_s32b_b82k")
    spec = backbones.get_spec(name)
    assert name == "clip:ViT-L-14:laion2b_s32b_b82k" and spec.feature_dim == 768 and spec.input_size == 224
    assert spec.weights_source == "open_clip:ViT-L-14/laion2b_s32b_b82k" and spec.interpolation == "bicubic"
    assert labels.resolve_tag("ViT-bigG-14", None) == "laion2b_s39b_b160k"  # the paper's ViT-G/14

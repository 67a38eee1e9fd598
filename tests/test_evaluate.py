"""cedm.evaluate, cedm.fd and `cedm eval`: Fréchet distances, the optional FID / FD_DINOv2 paths, MSP and the CLI."""
import json
import socket

import numpy as np
import pytest
import torch

from cedm import evaluate as ev
from cedm import fd
from cedm.clusters import assign
from cedm.errors import CedmError


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Matrix square roots on a shared 2-core machine run far faster on one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def colour_groups(n_per=12, size=32, seed=0):
    """Two visibly different groups: warm and cool, with texture noise (uint8 (2n, size, size, 3))."""
    rng = np.random.default_rng(seed)
    out = []
    for centre in ((210, 80, 60), (60, 110, 210)):
        base = np.array(centre)[None, None, None] + rng.normal(0, 15, size=(n_per, 1, 1, 3))
        out.append(np.clip(base + rng.normal(0, 25, size=(n_per, size, size, 3)), 0, 255).astype(np.uint8))
    return np.concatenate(out)


# --- Fréchet distance ------------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, -1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert fd.frechet_distance_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(exact, rel=1e-10)

    rng = np.random.default_rng(0)
    a = mu1 + rng.normal(size=(50_000, 3)) * np.sqrt(s1)
    b = mu2 + rng.normal(size=(50_000, 3)) * np.sqrt(s2)
    assert fd.frechet_distance(a, b) == pytest.approx(exact, rel=0.02)
    assert abs(fd.frechet_distance(a, a)) < 1e-8
    assert fd.frechet_distance(b, a) == pytest.approx(fd.frechet_distance(a, b), rel=1e-9)


def test_few_samples_in_high_dimension_match_pytorch_fid():
    """Fewer rows than dimensions: the subspace shortcut gives pytorch-fid's number on the full covariances."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 300))
    b = rng.normal(size=(30, 300)) * 1.3 + 0.2
    full = fd.frechet_distance_stats(*fd.feature_statistics(a), *fd.feature_statistics(b))
    assert fd.frechet_distance(a, b) == pytest.approx(full, rel=1e-5)


def test_frechet_distance_bad_input():
    with pytest.raises(CedmError, match="at least 2"):
        fd.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(CedmError, match="dimension"):
        fd.frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(CedmError, match="NaN"):
        fd.frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))


def test_fd_offline_is_zero_for_a_set_and_grows_with_a_colour_shift():
    images = colour_groups(6, 16)
    shifted = np.clip(images.astype(int) + np.array([70, -50, 40]), 0, 255).astype(np.uint8)
    same = fd.fd_offline(images, images)
    moved = fd.fd_offline(images, shifted)
    assert abs(same) < 1e-3 * moved and moved > 1.0
    with pytest.raises(CedmError, match="model resolution"):
        fd.fd_offline(images, colour_groups(6, 32))


# --- the optional metrics --------------------------------------------------------------------------------
def _forbid_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("no network access may be attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_fid_and_dinov2_are_skipped_offline_without_trying(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached Inception weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_network(monkeypatch)
    nets, notes = fd.metric_nets()
    assert [n.metric for n in nets] == ["FD_EffNetLite0"]
    assert notes == [fd.FID_SKIPPED, fd.DINOV2_SKIPPED]
    assert "--inception-weights PATH" in notes[0]


def test_fid_skipped_when_github_is_unreachable(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("CEDM_ALLOW_DOWNLOADS", "1")
    for v in ("CEDM_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    probes = []

    def unreachable(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    assert fd.find_inception_weights() is None
    assert probes == [(("github.com", 443), 3.0)]


def _random_fid_inception_state(path):
    """A randomly initialised network with the layout of pytorch-fid's FID Inception (fid_inception_v3)."""
    from pytorch_fid import inception as fi

    net = fi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fi.FIDInceptionE_1(1280)
    net.Mixed_7c = fi.FIDInceptionE_2(2048)
    torch.save(net.state_dict(), path)


def test_inception_weights_file_loads_without_network(monkeypatch, tmp_path):
    from pytorch_fid import inception as fi

    original = fi.load_state_dict_from_url
    _forbid_network(monkeypatch)
    path = tmp_path / "pt_inception.pth"
    _random_fid_inception_state(path)
    net = fd.inception_net(path, device="cpu")
    assert net.metric == "FID" and net.identity["weights"].startswith("sha256:")
    feats = net.fn(colour_groups(1, 16)[:2])
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert fi.load_state_dict_from_url is original  # the loader patch was undone

    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CedmError, match="not pytorch-fid's FID Inception"):
        fd.inception_net(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CedmError, match="neither safetensors nor"):
        fd.inception_net(tmp_path / "junk.pth")


# --- models on a tiny workspace ------------------------------------------------------------------------
TEMI = dict(backbone="efficientnet_lite0", heads=1, epochs=3, batch_size=8, knn=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 32px two-colour workspace, its TEMI and k-means clusterings, and 16px tiny models (1 step each):
    conditioned on temi:2, unconditional, and conditioned without label dropout."""
    from cedm.clusters import labelings
    from cedm.model.train import TrainConfig, train
    from cedm.workspace import create_from_array

    home = tmp_path_factory.mktemp("home")
    ws = create_from_array(home, "evalws", colour_groups(12, 32))
    lab = labelings.resolve(ws, "temi:2", **TEMI)
    labelings.cluster_workspace(ws, "kmeans", 2, backbone="efficientnet_lite0")
    prov = {"workspace": ws.name, "workspace_hash": ws.content_hash, "n_images": ws.n}
    models = {}
    for name, C, p_uncond in (("cond", lab.n_classes, 0.2), ("uncond", 0, 0.0), ("noguide", lab.n_classes, 0.0)):
        cfg = TrainConfig(preset="tiny", resolution=16, kimg=0.008, batch=8, sample_kimg=0, p_uncond=p_uncond)
        models[name] = train(ws.images, lab.labels if C else None, C, home / "models" / name, cfg,
                             condition={"spec": "temi:2", "source": "temi", "original_ids": lab.original_ids}
                             if C else {"spec": "none"}, provenance=prov, show_progress=False)
    return home, ws, models


def test_condition_head_recovers_the_clustering(setup):
    """The classifier found for a model is the clustering it was trained on: on the workspace's own images
    it gives back their cluster (k-means through the centroid softmax, TEMI through its head)."""
    from cedm.clusters import labelings

    home, ws, models = setup
    head, why = assign.condition_head(models["cond"], ws)
    assert why is None and head.method == "temi" and head.backbone == "efficientnet_lite0"
    clusters, msp = assign.sample_confidence(head, np.asarray(ws.images))
    truth = labelings.resolve(ws, "temi:2", **TEMI).labels
    assert np.mean(clusters == truth) >= 0.9
    assert np.all((msp > 0) & (msp <= 1))

    km = labelings.resolve(ws, "kmeans:2", backbone="efficientnet_lite0")
    info = json.loads((models["cond"] / "cedm.json").read_text())
    info["condition"]["spec"] = "kmeans:2"
    info["provenance"]["data"]["labels_sha"] = assign.labels_hash(km.labels)
    fake = home / "kmeans-model"
    fake.mkdir()
    (fake / "cedm.json").write_text(json.dumps(info))
    head, why = assign.condition_head(fake, ws)
    assert why is None and head.method == "kmeans"
    clusters, msp = assign.sample_confidence(head, np.asarray(ws.images))
    assert np.mean(clusters == km.labels) >= 0.9

    info["provenance"]["data"]["labels_sha"] = "0" * 16  # trained on labels no cached clustering has
    (fake / "cedm.json").write_text(json.dumps(info))
    head, why = assign.condition_head(fake, ws)
    assert head is None and "not cached" in why
    assert assign.condition_head(models["uncond"], ws)[0] is None


def test_evaluate_model_writes_all_fields(setup):
    home, ws, models = setup
    out = ev.evaluate_model(models["cond"], ws, n=6, guidance=(1, 2), steps=2, sampler="heun", batch_size=4,
                            extra_metrics=False)
    assert [r["guidance"] for r in out["results"]] == [1.0, 2.0]
    for r in out["results"]:
        f = ev.default_eval_dir(models["cond"]) / f"evalws-n6-seed0-q-w{r['guidance']:g}-heun2.json"
        assert not (models["cond"] / "eval").exists()  # never into the model folder
        assert json.loads(f.read_text()) == json.loads(json.dumps(r))
        assert r["FD_EffNetLite0"] > 0 and r["FD_EffNetLite0_floor"] > 0
        assert 0 < r["MSP"] <= 1 and 0 < r["MSP_real"] <= 1 and 0 <= r["agreement"] <= 1
        assert r["msp_classifier"]["spec"] == "temi:2" and r["resolution"] == 16 and r["n_real"] == 24
        assert r["metrics"]["FD_EffNetLite0"]["backbone"] == "efficientnet_lite0"
        assert r["seconds"] > 0 and len(r["model_sha256"]) == 64
    assert out["results"][0]["FD_EffNetLite0"] != out["results"][1]["FD_EffNetLite0"]
    assert not (models["cond"] / "eval" / ".partial").exists()
    assert ws.list_artifacts(fd.STAGE_REAL)  # real features cached in the workspace

    # the unconditional model: one setting, same seeds, scored by the conditioned model's classifier
    out = ev.evaluate_model(models["uncond"], ws, n=6, guidance=(0, 1, 2), steps=2, batch_size=6,
                            extra_metrics=False, head_from=models["cond"])
    (r,) = out["results"]
    assert r["guidance"] is None and r["agreement"] is None and 0 < r["MSP"] <= 1
    assert any("guidance w = 0, 2 skipped" in m for m in out["notes"])

    with pytest.raises(CedmError, match="p_uncond = 0"):  # refused before any sampling
        ev.evaluate_model(models["noguide"], ws, n=6, guidance=(1, 2), steps=2)
    assert not (models["noguide"] / "eval").exists()


def test_generation_resumes_from_saved_chunks(setup, tmp_path):
    from cedm.model.edm import load_model

    _, _, models = setup
    model = load_model(models["cond"])
    marker = np.full((3, 16, 16, 3), 7, dtype=np.uint8)  # a finished chunk is read, not regenerated
    np.save(tmp_path / "0000000-0000003.npy", marker)
    images = ev.generate_resumable(model, 3, [0, 1, 0], 1.0, 0, "euler", 2, 4, tmp_path)
    assert (images == 7).all()


def test_cli_eval(setup, tmp_path, capsys):
    from cedm.cli import main

    home, ws, models = setup
    out = tmp_path / "all.json"
    assert main(["eval", str(models["cond"]), str(models["uncond"]), "--home", str(home), "--n", "4",
                 "--steps", "2", "--sampler", "euler", "--offline-only", "--json", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header[:5] == ["model", "condition", "w", "n", "FD_EffNetLite0"] and "MSP" in header
    assert "cond " in text and "uncond" in text and "noise floor" in text and "not FID" in text
    results = json.loads(out.read_text())["results"]
    assert [r["model_name"] for r in results] == ["cond", "uncond"]
    assert results[1]["msp_classifier"]["model"] == str(models["cond"])

    assert main(["eval", str(models["cond"]), "--guidance", "1,x"]) == 2
    assert main(["eval", str(models["noguide"]), "--home", str(home), "--guidance", "0,1"]) == 2
    assert "p_uncond = 0" in capsys.readouterr().err

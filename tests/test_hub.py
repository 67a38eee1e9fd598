"""Model downloads: the policy switch, and the real download path (hf_hub_download into the HF cache, strict load,
features and labels through the CLI and the app) against a local hub on 127.0.0.1 (tests/local_hub.py), then the
same offline from the cache; with downloads not allowed nothing reaches the network."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cedm import hub, io
from cedm.cli import main
from cedm.errors import CedmError
from cedm.features import backbones
from cedm.workspace import create_from_array
from tests import local_hub
from tests.browser_util import client, make_zip, running_app  # (its import sets env defaults: do it up front)
from tests.local_hub import DINOV2_REPO, TINY_CLIP, TINY_CLIP_REPO, TINY_CLIP_TAG, LocalHub

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 6


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Backbones registered on the fly (CLIP towers for labels) stay inside each test."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))


# --- the policy ------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    import huggingface_hub.constants

    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", hub.ALLOW_ENV, "SPACE_ID"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def test_policy_offline_by_default_one_switch_on_spaces_and_hf_offline_wins(clean_env):
    mp = clean_env
    assert hub.download_policy() == hub.DownloadPolicy(False, "offline by default")
    mp.setenv("SPACE_ID", "someone/cedm")
    assert hub.download_policy() == hub.DownloadPolicy(True, "running on a Hugging Face Space")
    mp.setenv(hub.ALLOW_ENV, "0")  # explicit beats the Space default
    assert not hub.downloads_allowed()
    mp.delenv("SPACE_ID")
    hub.set_allow_downloads(True)  # the CLI flag and the app's toggle
    assert hub.download_policy() == hub.DownloadPolicy(True, f"{hub.ALLOW_ENV}=1")
    mp.setenv("HF_HUB_OFFLINE", "1")  # the hub library would refuse anyway: reported as off
    assert hub.download_policy() == hub.DownloadPolicy(False, "HF_HUB_OFFLINE is set")
    mp.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # set when huggingface_hub was imported
    assert not hub.downloads_allowed()


def test_cli_flag_sets_the_switch_before_and_after_the_subcommand(clean_env, home):
    from cedm.cli import build_parser

    clean_env.setenv(hub.ALLOW_ENV, "0")  # restored afterwards
    p = build_parser()
    assert p.parse_args(["--allow-downloads", "workspaces", "list"]).allow_downloads
    assert p.parse_args(["serve", "--allow-downloads"]).allow_downloads
    assert not p.parse_args(["serve"]).allow_downloads
    assert main(["workspaces", "list", "--home", str(home)]) == 0 and not hub.downloads_allowed()
    assert main(["workspaces", "list", "--home", str(home), "--allow-downloads"]) == 0 and hub.downloads_allowed()


def test_availability_and_telemetry_off(clean_env, tmp_path):
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert backbones.availability("efficientnet_lite0")[0] == "offline"
    assert backbones.availability("dino_vitb16") == ("off", "needs downloading 343 MB; downloads are off")
    clean_env.setenv(hub.ALLOW_ENV, "1")
    assert backbones.availability("dinov2_vits14") == ("downloadable", "downloads 88 MB on first use")
    snap = tmp_path / "hf" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("c" * 40)
    assert backbones.availability("dinov2_vits14")[0] == "cached"
    # the hub repos the registry names (the paper's DINO, DINOv2, the default CLIP)
    assert backbones.get_spec("dino_vitb16").hub_ref()[0] == "timm/vit_base_patch16_224.dino"
    assert backbones.get_spec("dinov2_vits14").hub_ref()[0] == DINOV2_REPO
    assert backbones.get_spec("clip_vitb32").hub_ref()[0] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    # the paper's CLIP is one flag away (--model ViT-bigG-14): its LAION-2B weights on the hub, its own tower
    from cedm import labels
    tag = labels.resolve_tag("ViT-bigG-14", None)
    tower = labels.image_backbone("ViT-bigG-14", tag)
    assert tag == "laion2b_s39b_b160k" and backbones.get_spec(tower).feature_dim == 1280
    assert backbones.get_spec(tower).hub_ref() == ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", backbones.CLIP_FILES)
    # telemetry and analytics off (defaults set when cedm.hub is imported, before the libraries are)
    import importlib
    clean_env.delenv("HF_HUB_DISABLE_TELEMETRY")
    clean_env.delenv("GRADIO_ANALYTICS_ENABLED")
    importlib.reload(hub)
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


# --- the local hub -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    local_hub.register_tiny_clip(tmp / "clip_cfg")
    files = local_hub.make_weights(tmp / "weights")
    srv = LocalHub()
    sha = {"dinov2": srv.add_file(DINOV2_REPO, "model.safetensors", files["dinov2"]),
           "clip": srv.add_file(TINY_CLIP_REPO, "open_clip_model.safetensors", files["clip"])}
    srv.renamed["cedm-test/old-name"] = TINY_CLIP_REPO
    srv.start()
    yield SimpleNamespace(hub=srv, files=files, sha=sha, cfg=tmp / "clip_cfg")
    srv.close()
    local_hub.unregister_tiny_clip()


def _images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N_IMAGES, 32, 32, 3), dtype=np.uint8)


def _record(repo, srv, sha, filename):
    return {"source": "hf-hub", "repo": repo, "revision": srv.repos[repo]["commit"], "filename": filename,
            "sha256": sha}


def test_nothing_touches_the_network_when_downloads_are_off(served, clean_env, home, tmp_path, capsys):
    """Downloads not allowed: every route to the weights (features, labels, metrics, the app's start-up) stops
    before the network, and the server sees no request."""
    from cedm import fd as ev
    from cedm import labels

    mp = clean_env
    mp.setenv("HF_ENDPOINT", served.hub.url)
    mp.setenv("HF_HOME", str(tmp_path / "hf"))
    mp.setenv("TORCH_HOME", str(tmp_path / "torch"))
    mp.setattr(ev, "INCEPTION_URL", f"{served.hub.url}/cdn/pt_inception-x-00000000.pth")
    before = len(served.hub.seen())
    create_from_array(home, "tiny", _images())
    assert main(["features", "tiny", "--backbone", "dinov2_vits14", "--home", str(home), "--device", "cpu"]) == 2
    assert "downloads are off (offline by default): allow them with --allow-downloads" in capsys.readouterr().err
    assert main(["labels", "tiny", "--names", "cat,dog", "--model", TINY_CLIP, "--pretrained", TINY_CLIP_TAG,
                 "--home", str(home), "--device", "cpu"]) == 2
    assert "downloads are off" in capsys.readouterr().err
    with pytest.raises(hub.DownloadsOff):
        hub.hub_file(TINY_CLIP_REPO, ("open_clip_model.safetensors",))
    nets, notes = ev.metric_nets(device="cpu")
    assert [n.metric for n in nets] == ["FD_EffNetLite0"] and notes == [ev.FID_SKIPPED, ev.DINOV2_SKIPPED]
    with pytest.raises(CedmError, match="downloads are off"):
        labels.load_clip(TINY_CLIP, TINY_CLIP_TAG, device="cpu")
    # a Space allows downloads, and its start-up still fetches nothing
    mp.setenv("SPACE_ID", "someone/cedm")
    with running_app(tmp_path / "app"):
        pass
    assert served.hub.seen()[before:] == []
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").glob("models--*"))


@pytest.mark.slow  # one subprocess and an app: about 25 s on an idle 2-core machine
def test_real_download_path_cli_then_offline_then_the_app(served, clean_env, home, tmp_path):
    srv, mp = served.hub, clean_env
    hf_home = tmp_path / "hf"
    ws = create_from_array(home, "tiny", _images())
    start = len(srv.seen())

    # 1. the command line in a fresh process, configured only by the environment (HF_ENDPOINT is read at import)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", hub.ALLOW_ENV, "SPACE_ID")}
    env.update(HF_ENDPOINT=srv.url, HF_HOME=str(hf_home), CEDM_HOME=str(home), PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    cmd = [sys.executable, str(ROOT / "tests" / "local_hub.py"), str(tmp_path / "cfg"), "--",
           "--allow-downloads", "features", "tiny", "--backbone", "dinov2_vits14", "--device", "cpu", "--",
           "labels", "tiny", "--names", "cat,dog", "--model", TINY_CLIP, "--pretrained", TINY_CLIP_TAG,
           "--device", "cpu", "--allow-downloads"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "features dinov2_vits14: shape (6, 384)" in out.stdout and "CLIP zero-shot labels" in out.stdout
    got = srv.seen()[start:]
    # the hub was asked for the two named files only: metadata (HEAD resolve), then the bytes from the "CDN"
    assert got == [("HEAD", f"/{DINOV2_REPO}/resolve/main/model.safetensors"), ("GET", f"/cdn/{served.sha['dinov2']}"),
                   ("HEAD", f"/{TINY_CLIP_REPO}/resolve/main/open_clip_model.safetensors"),
                   ("GET", f"/cdn/{served.sha['clip']}")]
    # the standard HF cache layout: refs/main -> commit, snapshots/<commit>/<file> -> blobs/<sha256>
    repo_dir = hf_home / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m"
    commit = srv.repos[DINOV2_REPO]["commit"]
    assert (repo_dir / "refs" / "main").read_text() == commit
    cached = repo_dir / "snapshots" / commit / "model.safetensors"
    assert cached.resolve() == (repo_dir / "blobs" / served.sha["dinov2"]).resolve()
    assert cached.read_bytes() == served.files["dinov2"].read_bytes()

    # the artifact records the exact weights, and its features are those of the served weights (strict load)
    from cedm.features.extract import find_features, l2_normalize
    folder = find_features(ws, "dinov2_vits14")
    meta = io.read_json(folder / "meta.json")
    assert meta["weights_file"] == _record(DINOV2_REPO, srv, served.sha["dinov2"], "model.safetensors")
    feats = l2_normalize(io.load_npy(folder / "features.npy"))
    ref = backbones.build_backbone("dinov2_vits14", weights=served.files["dinov2"], device="cpu")(ws.images[:])
    np.testing.assert_allclose(feats, l2_normalize(ref), atol=2e-2)
    rand = backbones.build_backbone("dinov2_vits14", pretrained=False, device="cpu")(ws.images[:])
    assert not np.allclose(feats, l2_normalize(rand), atol=2e-2)  # not the fixed-seed random init
    from cedm.clusters.labelings import STAGE_LABELINGS
    lab_meta = io.read_json(ws.find_artifact(STAGE_LABELINGS, {"name": f"clip-{TINY_CLIP}"}) / "meta.json")
    assert lab_meta["details"]["weights_file"] == _record(TINY_CLIP_REPO, srv, served.sha["clip"],
                                                          "open_clip_model.safetensors")

    # 2. offline from the cache (in this process): a new workspace must load the weights again; no request
    mp.setenv("HF_ENDPOINT", srv.url)
    mp.setenv("HF_HOME", str(hf_home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    before = len(srv.seen())
    ws2 = create_from_array(home, "tiny2", _images())
    assert main(["features", "tiny2", "--backbone", "dinov2_vits14", "--home", str(home), "--device", "cpu"]) == 0
    assert main(["labels", "tiny2", "--names", "cat,dog", "--model", TINY_CLIP, "--pretrained", TINY_CLIP_TAG,
                 "--home", str(home), "--device", "cpu"]) == 0
    assert srv.seen()[before:] == []
    meta2 = io.read_json(find_features(ws2, "dinov2_vits14") / "meta.json")
    assert meta2["weights_file"] == meta["weights_file"]
    np.testing.assert_allclose(l2_normalize(io.load_npy(find_features(ws2, "dinov2_vits14") / "features.npy")),
                               feats, atol=2e-3)
    from cedm.clusters.labelings import load_labeling
    assert (load_labeling(ws2, f"clip-{TINY_CLIP}").labels == load_labeling(ws, f"clip-{TINY_CLIP}").labels).all()

    # a renamed repo: the hub's relative redirect is followed to the new name
    mp.delenv("HF_HUB_OFFLINE")
    mp.setenv(hub.ALLOW_ENV, "1")
    mp.setenv("HF_HOME", str(tmp_path / "hf-renamed"))
    wf = hub.hub_file("cedm-test/old-name", ("missing.safetensors", "open_clip_model.safetensors"))
    assert wf.sha256 == served.sha["clip"] and wf.revision == srv.repos[TINY_CLIP_REPO]["commit"]

    # 3. the app with a fresh cache: /cluster downloads DINOv2 and clusters; CLIP labels show download progress
    mp.setenv("HF_HOME", str(tmp_path / "hf-app"))
    from cedm.cache import LRU

    from cedm import labels
    from cedm.features import extract
    mp.setattr(extract, "_MODELS", LRU(2))  # no network built in memory earlier: load from the hub again
    mp.setattr(labels, "DEFAULT_MODEL", TINY_CLIP)
    mp.setitem(labels.DEFAULT_TAGS, TINY_CLIP, TINY_CLIP_TAG)
    before = len(srv.seen())
    with running_app(tmp_path / "app") as (url, demo, _):
        from gradio_client import handle_file
        c = client(url)
        rep = c.predict([handle_file(str(make_zip(tmp_path / "pics.zip", n_images=N_IMAGES, junk=False)))], "",
                        32, None, api_name="/import_dataset")
        s = c.predict(rep["workspace"], "dinov2_vits14", "kmeans", 2, api_name="/cluster")
        assert s["n_images"] == N_IMAGES and sum(s["sizes"]) == N_IMAGES and not s["from_cache"]
        make_clip = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "make_clip")
        calls = []
        out = make_clip(rep["workspace"], "cat, dog", False, SimpleNamespace(session_hash=c.session_hash),
                        lambda value, desc=None: calls.append((value, desc)))
        assert out[1] == f"saved as labels:clip-{TINY_CLIP}", out[1]
        size = served.files["clip"].stat().st_size
        assert any(value == (size, size) and f"downloading {TINY_CLIP_REPO}/open_clip_model.safetensors" in desc
                   for value, desc in calls), calls
        from cedm.ui.settings import status_markdown
        assert "`dinov2_vits14`: weights cached" in status_markdown()
        # a public server keeps its policy: no switch; in local mode the switch turns downloads off and relabels
        # the Clusters tab's backbones
        assert not [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "switch"]
        import gradio as gr

        from cedm.ui import settings
        visitor_ws = demo.cedm_context.open(rep["workspace"], SimpleNamespace(session_hash=c.session_hash))
        with gr.Blocks() as local_page:
            settings.build(SimpleNamespace(open=lambda name, request: visitor_ws), gr.Dropdown(), gr.Dropdown(),
                           local=True)
        switch = next(f.fn for f in local_page.fns.values() if getattr(f.fn, "__name__", "") == "switch")
        status, dropdown = switch(False, rep["workspace"], "dinov2_vits14", None)
        assert status.startswith("**Model downloads: off**") and not hub.downloads_allowed()
        assert f"features for {N_IMAGES} images take about" in status
        labels_now = {v: lab for lab, v in dropdown.choices}
        assert labels_now["dinov2_vits14"] == "dinov2_vits14 (features ready)"
        assert labels_now["dino_vitb16"] == "dino_vitb16 (needs downloading 343 MB; downloads are off)"
        switch(True, rep["workspace"], "dinov2_vits14", None)
        assert hub.downloads_allowed()
    assert [p for _, p in srv.seen()[before:]] == [
        f"/{DINOV2_REPO}/resolve/main/model.safetensors", f"/cdn/{served.sha['dinov2']}",
        f"/{TINY_CLIP_REPO}/resolve/main/open_clip_model.safetensors", f"/cdn/{served.sha['clip']}"]


def test_fid_inception_and_dinov2_download_when_allowed(served, clean_env, tmp_path):
    """FID's Inception (pytorch-fid's release file; its sha256 prefix in the name is checked) and FD_DINOv2's
    weights come through the same policy, and the metric records name the exact files."""
    import hashlib

    from cedm import fd as ev
    from tests.test_evaluate import _random_fid_inception_state

    src = tmp_path / "inception.pth"
    _random_fid_inception_state(src)
    name = f"pt_inception-test-{hashlib.sha256(src.read_bytes()).hexdigest()[:8]}.pth"
    served.hub.static[name] = src
    mp = clean_env
    mp.setattr(ev, "INCEPTION_URL", f"{served.hub.url}/files/{name}")
    mp.setenv("TORCH_HOME", str(tmp_path / "torch"))
    mp.setenv("HF_ENDPOINT", served.hub.url)
    mp.setenv("HF_HOME", str(tmp_path / "hf"))
    mp.setenv(hub.ALLOW_ENV, "1")
    from cedm.cache import LRU

    from cedm.features import extract
    mp.setattr(extract, "_MODELS", LRU(2))
    before, calls = len(served.hub.seen()), []
    nets, notes = ev.metric_nets(device="cpu", progress=lambda d, t, desc: calls.append(desc))
    assert [n.metric for n in nets] == ["FD_EffNetLite0", "FID", "FD_DINOv2"] and notes == []
    fid, dino = nets[1], nets[2]
    assert fid.weights_file == {"source": "url", "repo": ev.INCEPTION_URL, "revision": None, "filename": name,
                                "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    assert dino.weights_file == _record(DINOV2_REPO, served.hub, served.sha["dinov2"], "model.safetensors")
    assert fid.fn(_images()).shape == (N_IMAGES, 2048)
    assert f"downloading {name}" in calls and f"downloading {DINOV2_REPO}/model.safetensors" in calls
    assert [p for _, p in served.hub.seen()[before:]] == [f"/files/{name}",
                                                          f"/{DINOV2_REPO}/resolve/main/model.safetensors",
                                                          f"/cdn/{served.sha['dinov2']}"]
    # a file whose content does not match the hash in its name is refused (nothing kept)
    served.hub.static["pt_inception-bad-00000000.pth"] = src
    mp.setattr(ev, "INCEPTION_URL", f"{served.hub.url}/files/pt_inception-bad-00000000.pth")
    assert ev.find_inception_weights() is None
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-bad-00000000.pth").exists()


@pytest.mark.slow  # a ViT-B/16 (172 MB in float16) through the local hub: about 15 s
def test_the_papers_dino_vitb16_downloads_and_loads_strictly(served, clean_env, home, tmp_path):
    """The registry's default backbone end to end: timm's vit_base_patch16_224.dino repo, model.safetensors."""
    from cedm.cache import LRU

    from safetensors.torch import save_file

    from cedm.features import extract, get_features
    from cedm.features.extract import find_features, l2_normalize

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = backbones.get_spec("dino_vitb16").create()
    path = tmp_path / "model.safetensors"  # float16 keeps the file small; the strict load casts to float32
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(path))
    repo = backbones.get_spec("dino_vitb16").hub_ref()[0]
    sha = served.hub.add_file(repo, "model.safetensors", path)
    mp = clean_env
    mp.setenv("HF_ENDPOINT", served.hub.url)
    mp.setenv("HF_HOME", str(tmp_path / "hf"))
    mp.setenv(hub.ALLOW_ENV, "1")
    mp.setattr(extract, "_MODELS", LRU(2))
    ws = create_from_array(home, "tiny", _images())
    feats = get_features(ws, "dino_vitb16", device="cpu")
    meta = io.read_json(find_features(ws, "dino_vitb16") / "meta.json")
    assert meta["weights"] == "hf-hub:timm/vit_base_patch16_224.dino"  # the cache key: the hub id
    assert meta["weights_file"] == _record(repo, served.hub, sha, "model.safetensors")
    ref = backbones.build_backbone("dino_vitb16", weights=path, device="cpu")(ws.images[:])
    np.testing.assert_allclose(feats, l2_normalize(ref), atol=2e-2)

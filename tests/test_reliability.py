"""Never lose a user's work (issue 13): local mode shares the home with the CLI and keeps everything; builds are
owned, so cleanup never removes a live one; cancellation reaches the work; public mode is read-only on the demo,
budgeted and swept; bad API values get clear messages. docs/reliability.md names these tests."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.browser_util import client, make_tiny_models, make_zip, png_bytes, running_app, session_workspaces

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 120  # upper bound of a condition wait (never a timed assertion: a busy machine just waits longer)


def wait_for(cond, what: str, timeout: float = WAIT_S, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _app_error(fn, *args, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "Traceback" not in msg and "Something went wrong" not in msg
    return msg


def _cli(*args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CEDM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cedm", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def tmp_path_factory_home(home: Path) -> Path:
    """Another $CEDM_HOME than ``home``: the command must find the workspace through its own --home."""
    return home.parent / "elsewhere"


def _images(n=6, r=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, r, r, 3), dtype=np.uint8)


# --- 1. local mode: one home for the app and the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs_tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def local_app(tmp_path_factory, model_dirs_tiny):
    with running_app(tmp_path_factory.mktemp("local"), public=False, model_dirs=[model_dirs_tiny]) as served:
        yield served


def test_local_mode_shares_the_home_with_the_cli_and_keeps_uploads(local_app, tmp_path):
    from gradio_client import handle_file

    from cedm import workspace as wsp
    from cedm.ui.app import build_app

    url, demo, home = local_app
    ctx = demo.cedm_context
    assert not ctx.sessions.public
    wsp.create_from_array(home, "from-cli", _images())  # as `cedm import` would
    assert "from-cli" in ctx.choices(SimpleNamespace(session_hash="any-page"))
    c = client(url)
    rep = c.predict([handle_file(str(make_zip(tmp_path / "holiday.zip")))], "", 32, None, api_name="/import_dataset")
    assert rep["workspace"] == "holiday" and (home / "workspaces" / "holiday" / "manifest.json").is_file()
    assert session_workspaces(home) == []  # not in a temporary visitor area
    listed = _cli("workspaces", "list", home=home)
    assert listed.returncode == 0 and "holiday\t6 images" in listed.stdout and "from-cli" in listed.stdout
    ctx.sessions.end(c.session_hash)  # the page closes: nothing is deleted
    assert (home / "workspaces" / "holiday" / "manifest.json").is_file()
    again = build_app(home, public=False)  # a server restart on the same home
    assert {"holiday", "from-cli"} <= set(again.cedm_context.choices(SimpleNamespace(session_hash="new-page")))
    assert "Deleted" in client(url).predict("from-cli", api_name="/delete_workspace")  # any page may manage them
    assert "from-cli" not in wsp.list_workspaces(home)


def test_public_mode_is_automatic_on_spaces(tmp_path, monkeypatch):
    from cedm.ui.app import build_app
    from cedm.ui.sessions import is_public

    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not is_public() and is_public(True)
    monkeypatch.setenv("SPACE_ID", "someone/cedm")
    assert is_public() and not is_public(False)
    assert build_app(tmp_path / "home").cedm_context.sessions.public


# --- 2. builds are owned: cleanup removes only dead ones ------------------------------------------------------
def _gated_import(home, name, source, gate: threading.Event, started: threading.Event, out: dict):
    from cedm.dataset.importers import import_dataset

    def progress(done, total, desc=""):
        started.set()
        assert gate.wait(WAIT_S), "gate never opened"

    try:
        out[name] = import_dataset(str(source), home=home, name=name, resolution=16, progress=progress)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        out[name] = e


def test_listing_and_a_second_import_during_an_import_leave_it_alone(tmp_path):
    """Two imports run at once while `cedm workspaces list` (another process) and the app's cleanup run: both
    imports finish (today's cleanup deleted the first one's build folder: FileNotFoundError)."""
    from cedm import workspace as wsp

    home = tmp_path / "home"
    src = make_zip(tmp_path / "a.zip", n_images=6, junk=False)
    gate, out, threads, starts = threading.Event(), {}, [], []
    for name in ("first", "second"):
        started = threading.Event()
        t = threading.Thread(target=_gated_import, args=(home, name, src, gate, started, out))
        t.start()
        threads.append(t)
        starts.append(started)
    try:
        for s in starts:
            assert s.wait(WAIT_S)
        building = list((home / "workspaces").glob(".tmp-*"))
        assert len(building) == 2
        listed = _cli("workspaces", "list", home=home)
        assert listed.returncode == 0, listed.stderr
        assert wsp.list_workspaces(home, include_demo=False) == []
        wsp.clean_dead_builds(home)  # what a (re)started app runs
        assert sorted(building) == sorted((home / "workspaces").glob(".tmp-*"))
    finally:
        gate.set()
        for t in threads:
            t.join(WAIT_S)
    assert {k: type(v).__name__ for k, v in out.items()} == {"first": "Workspace", "second": "Workspace"}
    assert wsp.list_workspaces(home, include_demo=False) == ["first", "second"]
    assert wsp.open_workspace(home, "first").n == 6


def test_a_restarted_app_removes_dead_builds_only(tmp_path):
    from cedm import io
    from cedm.ui.app import build_app

    home = tmp_path / "home"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tag = f"{socket.gethostname().replace('@', '_')[:64]}@{int(dead.stdout)}@1"
    area = home / "sessions" / "ab"
    places = [home / "workspaces", area / "workspaces", area / "uploads", home / "overlays" / "demo-x" / "artifacts" / "clusters"]
    live = io.tmp_name("live")  # this process: alive
    for p in places:
        (p / f".tmp-crashed-1234@{dead_tag}").mkdir(parents=True)
        (p / ".tmp-legacy-abcd1234").mkdir()  # an older cedm's leftover: no owner
        (p / live).mkdir()
    build_app(home, public=False)
    for p in places:
        assert [q.name for q in p.iterdir()] == [live], p


# --- 3. cancellation reaches the work -------------------------------------------------------------------------
@pytest.fixture
def slow_net(monkeypatch):
    """Each network call takes a little longer, so that a 200-step request is surely still running when it is
    cancelled (no timing is asserted)."""
    from cedm.inference import engine as eng

    real = eng.FastNet.__call__

    def slow(self, *a, **k):
        time.sleep(0.05)
        return real(self, *a, **k)

    monkeypatch.setattr(eng.FastNet, "__call__", slow)


def test_cancel_owner_stops_only_that_owners_requests(model_dirs_tiny, slow_net):
    from cedm.inference.engine import Cancelled, InferenceEngine

    steps_seen = []
    with InferenceEngine(device="cpu", threads=1, dtype="fp32") as engine:
        a = engine.submit(model_dirs_tiny / "tiny-c4", n=2, steps=200, sampler="euler", owner="session:a",
                          progress=lambda s, t: steps_seen.append(s))
        wait_for(lambda: steps_seen, "the first sampler step")
        queued = engine.submit(model_dirs_tiny / "tiny-c4", n=1, steps=200, sampler="heun", owner="session:a")
        b = engine.submit(model_dirs_tiny / "tiny-uncond", n=1, steps=2, sampler="euler", owner="session:b")
        assert engine.cancel_owner("session:a") == 2
        for t in (a, queued):
            with pytest.raises(Cancelled):
                t.result(WAIT_S)
        assert max(steps_seen) < 200  # stopped at a step, not run to the end
        assert b.result(WAIT_S)[0].shape == (1, 16, 16, 3)
        assert engine.cancel_owner("session:a") == 0


def _engine_counts():
    from cedm.inference import engine as eng

    e = eng._ENGINE
    return (e.stats["cancelled"], e.stats["completed"]) if e is not None else (0, 0)


def test_a_clients_cancel_stops_its_sampling(local_app, slow_net):
    """gradio_client's job.cancel() reaches the engine: the request ends cancelled, not completed (today it ran
    to the end, blocking everyone after it)."""
    url, demo, _ = local_app
    from cedm.inference import get_engine

    get_engine()
    c = client(url)
    before = _engine_counts()
    job = c.submit(model="tiny-c4", condition="a cluster", cluster=1, guidance=1.0, steps=200, sampler="euler",
                   seed=0, n=4, api_name="/generate")
    wait_for(lambda: get_engine()._pending or any(not t.done() for t in list(get_engine()._tickets)),
             "the request to reach the engine")
    wait_for(lambda: any(t.owner for t in list(get_engine()._tickets)), "an owned ticket")
    job.cancel()
    wait_for(lambda: sum(_engine_counts()) > sum(before), "the request to end")
    cancelled, completed = _engine_counts()
    assert (cancelled - before[0], completed - before[1]) == (1, 0)


def test_ending_a_session_cancels_its_requests_and_steps(local_app, model_dirs_tiny, slow_net):
    from cedm.inference import get_engine

    _, demo, _ = local_app
    ctx = demo.cedm_context
    engine = get_engine()
    model = model_dirs_tiny / "tiny-c4"
    mine = engine.submit(model, n=1, steps=200, sampler="euler", owner=ctx.sessions.owner("tab-1"))
    other = engine.submit(model, n=1, steps=3, sampler="euler", owner=ctx.sessions.owner("tab-2"))
    ctx.sessions.start_step("tab-1")
    ctx.sessions.end("tab-1")  # Blocks.unload: the tab closed
    from cedm.inference.engine import Cancelled

    with pytest.raises(Cancelled):
        mine.result(WAIT_S)
    assert other.result(WAIT_S)[0].shape[0] == 1
    assert ctx.sessions.is_cancelled("tab-1") and not ctx.sessions.is_cancelled("tab-2")


# --- 4. public mode: read-only demo overlay, budgets, sweeps --------------------------------------------------
def test_public_budgets_refuse_with_a_clear_message(tmp_path):
    from cedm.dataset.archives import ImportLimits
    from cedm.dataset.importers import import_dataset
    from cedm.errors import CedmError
    from cedm.ui.sessions import Sessions

    src = make_zip(tmp_path / "pics.zip", n_images=6, junk=False)
    # decoded bytes of one import: 6 images at 16 px = 4,608 bytes
    with pytest.raises(CedmError, match="decoded"):
        import_dataset(str(src), home=tmp_path / "h", name="x", resolution=16, limits=ImportLimits(max_decoded_bytes=4000))
    assert not (tmp_path / "h" / "workspaces" / "x").exists()
    s = Sessions(tmp_path / "home", import_budget=10_000, session_budget=50_000, disk_budget=200_000,
                 max_heavy={"import": 1, "training": 1})
    with s.heavy("import", "alice") as budget:
        assert budget == 10_000
        with pytest.raises(CedmError, match="busy"):
            with s.heavy("import", "bob"):
                pass
    (s.home_for("alice") / "big.bin").write_bytes(b"x" * 60_000)
    with pytest.raises(CedmError, match="delete one"):
        with s.heavy("import", "alice"):
            pass
    # the disk budget for all visitors: the least recently used idle area is evicted to make room
    old, new = s.home_for("old"), s.home_for("new")
    (old / "f").write_bytes(b"x" * 90_000)
    (new / "f").write_bytes(b"x" * 40_000)
    t = time.time()
    os.utime(old, (t - 100, t - 100))
    with s.heavy("import", "carol") as budget:
        assert budget == 10_000
    assert not old.exists() and new.exists() and s.home_for("alice").exists()


def test_public_api_areas_are_swept_within_minutes_pages_are_kept(tmp_path):
    from cedm.ui.sessions import Sessions

    s = Sessions(tmp_path, max_age_s=6 * 3600, api_max_age_s=600)
    api, page = s.home_for("api-client"), s.home_for("browser")
    s.opened_page("browser")
    t = time.time() - 900
    for d in (api, page):
        os.utime(d, (t, t))
    assert s.sweep() == [api.name] and page.exists()


def test_public_upload_budget_through_the_app(tmp_path):
    from gradio_client import handle_file

    with running_app(tmp_path, import_budget=3000) as (url, demo, home):
        msg = _app_error(client(url).predict, [handle_file(str(make_zip(tmp_path / "z.zip", junk=False)))], "", 32,
                         None, api_name="/import_dataset")
        assert "decoded" in msg and "limit" in msg and str(home) not in msg and "/tmp" not in msg
        assert session_workspaces(home) == []


# --- 5. bad API values, refused uploads, --overwrite ----------------------------------------------------------
def test_bad_generate_values_get_clear_messages(local_app):
    url, _, _ = local_app
    c = client(url)
    base = dict(model="tiny-c4", condition="a cluster", cluster=1, guidance=1.0, steps=2, sampler="euler", seed=0,
                n=1, api_name="/generate")
    _, rec = c.predict(**{**base, "cluster": "cluster 2 · q 30.0%"})  # the dropdown's label works as the id
    assert rec[0]["condition"] == 2
    assert "cluster must be a cluster id" in _app_error(c.predict, **{**base, "cluster": "banana"})
    assert "seed must be between 0 and" in _app_error(c.predict, **{**base, "seed": 2**70})
    assert "greater than maximum" in _app_error(c.predict, **{**base, "guidance": 1e9})  # gradio's slider check
    assert "cluster 7 does not exist" in _app_error(c.predict, **{**base, "cluster": 7})
    assert "greater than maximum" in _app_error(c.predict, **{**base, "n": 10**6})


def test_a_lone_unusable_upload_says_why_and_leaves_no_temp_file(local_app, tmp_path):
    from gradio.utils import get_upload_folder
    from gradio_client import handle_file

    url, _, home = local_app
    c = client(url)
    (tmp_path / "only.png").write_bytes(png_bytes((200, 10, 10)))
    msg = _app_error(c.predict, [handle_file(str(tmp_path / "only.png"))], "", 32, None, api_name="/import_dataset")
    assert "at least 2" in msg and "one image file is not a dataset" in msg
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    msg = _app_error(c.predict, [handle_file(str(tmp_path / "broken.png"))], "", 32, None, api_name="/import_dataset")
    assert "broken.png is not a readable image" in msg and ".tmp" not in msg  # the reason is named
    bad = tmp_path / "refused-unique-name.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "no images")
    _app_error(c.predict, [handle_file(str(bad))], "", 32, None, api_name="/import_dataset")
    assert not list(Path(get_upload_folder()).rglob("refused-unique-name.zip"))  # removed at once
    assert not list(Path(get_upload_folder()).rglob("broken.png"))
    assert "not in the list of choices" in _app_error(c.predict, [handle_file(str(make_zip(tmp_path / "r.zip")))],
                                                     "", 31, None, api_name="/import_dataset")


def test_import_overwrite_refuses_to_delete_models_without_force(tmp_path):
    from cedm import workspace as wsp
    from cedm.model.edm import CEDM, save_model

    home = tmp_path / "home"
    src = make_zip(tmp_path / "pics.zip", n_images=4, junk=False)
    assert _cli("import", str(src), "--name", "pics", "--resolution", "16", home=home).returncode == 0
    ws = wsp.open_workspace(home, "pics")
    save_model(ws.derived_dir("models") / "my-model", CEDM.from_preset("tiny", 16, 2))
    r = _cli("import", str(src), "--name", "pics", "--resolution", "16", "--overwrite", home=home)
    assert r.returncode == 2 and "my-model" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    assert (ws.root / "models" / "my-model" / "cedm.json").is_file()
    r = _cli("import", str(src), "--name", "pics", "--resolution", "16", "--overwrite", "--force", home=home)
    assert r.returncode == 0 and not (ws.root / "models" / "my-model").exists()


# --- 6. a model travels as a zip ------------------------------------------------------------------------------
def _zip_of(path: Path, entries: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for k, v in entries.items():
            z.writestr(k, v)
    return path


def test_model_zip_round_trip_and_hostile_zips(model_dirs_tiny, tmp_path):
    import torch

    from cedm.errors import CedmError
    from cedm.model.edm import load_model
    from cedm.model.package import install_model_zip, pack_model

    src = model_dirs_tiny / "tiny-c4"
    z = pack_model(src, tmp_path / "tiny.zip")
    with zipfile.ZipFile(z) as f:
        assert sorted(f.namelist()) == ["tiny-c4/cedm.json", "tiny-c4/unet_ema/config.json",
                                        "tiny-c4/unet_ema/diffusion_pytorch_model.safetensors"]
    got = install_model_zip(z, tmp_path / "models")
    assert got == tmp_path / "models" / "tiny-c4"
    a, b = load_model(src), load_model(got)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(CedmError, match="already exists"):
        install_model_zip(z, tmp_path / "models")
    assert install_model_zip(z, tmp_path / "models", name="copy").name == "copy"

    good = {n: zipfile.ZipFile(z).read(n) for n in zipfile.ZipFile(z).namelist()}
    cfg = good["tiny-c4/unet_ema/config.json"]
    hostile = {
        "pickle": ({**good, "tiny-c4/unet_ema/model.bin": b"\x80\x04evil"}, "never pickles"),
        "traversal": ({"../evil/cedm.json": b"{}"}, "one folder"),
        "two models": ({**good, "other/cedm.json": b"{}"}, "one folder"),
        "no weights": ({"m/cedm.json": good["tiny-c4/cedm.json"], "m/unet_ema/config.json": cfg}, "lacks"),
        "fake weights": ({**good, "tiny-c4/unet_ema/diffusion_pytorch_model.safetensors": b"\xff" * 64},
                         "not a safetensors"),
        "not json": ({**good, "tiny-c4/cedm.json": b"\x00\x01"}, "not valid JSON"),
    }
    for what, (entries, msg) in hostile.items():
        with pytest.raises(CedmError, match=msg):
            install_model_zip(_zip_of(tmp_path / f"{what}.zip", entries), tmp_path / "hostile")
        assert not (tmp_path / "hostile").exists() or [p.name for p in (tmp_path / "hostile").iterdir()] == [], what
    with pytest.raises(CedmError, match="invalid model name"):
        install_model_zip(z, tmp_path / "hostile", name="../up")
    with pytest.raises(CedmError, match="not a zip"):
        install_model_zip(tmp_path / "tiny.zip.missing", tmp_path / "hostile")


def test_download_a_model_sample_it_with_the_cli_and_upload_it_elsewhere(model_dirs_tiny, tmp_path):
    from gradio_client import handle_file

    with running_app(tmp_path / "pub", model_dirs=[model_dirs_tiny]) as (url, demo, home):
        alice, bob = client(url), client(url)
        z = Path(alice.predict("demo", "tiny-c4", api_name="/download_model"))
        assert z.name == "tiny-c4.zip"
        folder = tmp_path / "unzipped"
        zipfile.ZipFile(z).extractall(folder)
        r = _cli("sample", str(folder / "tiny-c4"), "--n", "2", "--cluster", "1", "--steps", "2", "--sampler", "euler",
                 "--out", str(tmp_path / "samples"), "--threads", "1", home=tmp_path / "cli-home")
        assert r.returncode == 0, r.stderr
        assert len(list((tmp_path / "samples").glob("*.png"))) >= 2
        s = bob.predict("demo", handle_file(str(z)), "mine", api_name="/upload_model")
        assert s["model"].endswith("/mine") and s["n_conditions"] == 4
        _, rec = bob.predict(model=s["model"], condition="a cluster", cluster=2, guidance=1.0, steps=2,
                             sampler="euler", seed=0, n=1, workspace="demo", api_name="/generate")
        assert rec[0]["condition"] == 2
        # public mode: it went into bob's own area; alice does not have it
        assert "unknown model" in _app_error(alice.predict, model=s["model"], condition="a cluster", cluster=2,
                                             guidance=1.0, steps=2, sampler="euler", seed=0, n=1, workspace="demo",
                                             api_name="/generate")
        assert "never pickles" in _app_error(
            bob.predict, "demo", handle_file(str(_zip_of(tmp_path / "evil.zip", {"m/cedm.json": b"{}",
                                                                                  "m/x.pkl": b"\x80"}))), "",
            api_name="/upload_model")


def test_local_training_of_a_cli_workspace_is_an_ordinary_model_and_a_cancel_keeps_its_checkpoint(local_app):
    """In local mode the Train endpoint trains a CLI-made workspace into its own models/ (what `cedm sample
    --workspace` and `cedm train --resume` use); a client's cancel stops the run at a step with a checkpoint
    (today it trained on to the end), and Train continues it."""
    import json as _json

    from cedm import workspace as wsp
    from cedm.ui import train_tab

    url, _, home = local_app
    wsp.create_from_array(home, "cli-train", _images(n=40, seed=3))
    c = client(url)
    job = c.submit("cli-train", "none", "", "tiny", 16, 20.0, "long-run", api_name="/train")
    folder = home / "workspaces" / "cli-train" / "models" / "long-run"
    wait_for(lambda: train_tab._TRAINING.locked() and (folder / "training").is_dir(), "the training to start")
    job.cancel()
    wait_for(lambda: not train_tab._TRAINING.locked() and (folder / "cedm.json").is_file(), "the training to stop")
    t = _json.loads((folder / "cedm.json").read_text())["training"]
    assert not t["complete"] and 0 < t["kimg_done"] < 20.0
    done = t["kimg_done"]
    s = c.predict("cli-train", "none", "", "tiny", 16, done + 0.064, "long-run", api_name="/train")
    assert s["complete"] and s["kimg_done"] == pytest.approx(done + 0.064) and s["model"] == "cli-train/long-run"
    # the Train tab's command names this app's home, so it finds the workspace and continues the model verbatim
    cmd = shlex.split(s["command_line"])
    assert cmd[:3] == ["cedm", "train", "cli-train"] and cmd[-2:] == ["--home", str(home)] and "--resume" in cmd
    assert _cli("workspaces", "show", "cli-train", "--home", cmd[-1], home=tmp_path_factory_home(home)).returncode == 0
    r = _cli("sample", "long-run", "--workspace", "cli-train", "--n", "1", "--steps", "2", "--sampler", "euler",
             "--uncond", "--out", str(home.parent / "s"), "--threads", "1", home=home)
    assert r.returncode == 0, r.stderr


def test_public_demo_overlay_is_read_only_to_visitors(tmp_path, monkeypatch):
    """What the server computed for the demo (the shared overlay) is read by every visitor; what a visitor computes
    goes to their own area, unseen by others (today both went into one shared, writable overlay)."""
    from cedm import workspace as wsp
    from cedm.ui.sessions import Sessions
    from tests.browser_util import make_stand_in_demo

    monkeypatch.setattr(wsp, "DEMO_DIR", make_stand_in_demo(tmp_path / "demo-src"))
    home = tmp_path / "home"
    with wsp.open_demo(home).write_artifact("clusters", {"k": "server"}) as d:  # e.g. precomputed by `cedm cluster`
        (d / "x.json").write_text("{}")
    s = Sessions(home)
    alice, bob = s.open_demo("alice"), s.open_demo("bob")
    assert alice.find_artifact("clusters", {"k": "server"}) and bob.find_artifact("clusters", {"k": "server"})
    with alice.write_artifact("clusters", {"k": "alice"}) as d:
        (d / "x.json").write_text("{}")
    found = alice.find_artifact("clusters", {"k": "alice"})
    assert found is not None and found.is_relative_to(s.home_for("alice"))
    assert bob.find_artifact("clusters", {"k": "alice"}) is None
    assert wsp.open_demo(home).find_artifact("clusters", {"k": "alice"}) is None  # the shared overlay is untouched
    assert alice.derived_dir("models").is_relative_to(s.home_for("alice"))
    np.testing.assert_array_equal(alice.images, bob.images)

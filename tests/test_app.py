"""The app in-process, driven through its public API with gradio_client, plus its per-visitor areas."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import zipfile

import numpy as np
import pytest

from tests.browser_util import COLOURS, DEMO_CLASSES, DEMO_N, client, make_stand_in_demo, make_zip, png_bytes, \
    running_app, session_workspaces

HAS_IMPORTER = importlib.util.find_spec("cedm.dataset.importers") is not None
needs_importer = pytest.mark.skipif(not HAS_IMPORTER, reason="cedm.dataset.importers is not in this tree yet")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as served:
        yield served


def _app_error(fn, *args, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "Traceback" not in msg and 'File "' not in msg
    return msg


def test_only_working_actions_are_public(app):
    url, _, _ = app
    api = client(url).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/import_dataset", "/delete_workspace"}
    assert api["unnamed_endpoints"] == {}


@needs_importer
def test_import_zip_through_the_api(app, tmp_path):
    url, _, home = app
    from gradio_client import handle_file

    from cedm import workspace as wsp

    c = client(url)  # held: a client's workspaces live as long as its session
    rep = c.predict([handle_file(str(make_zip(tmp_path / "holiday.zip")))], "", 32, None,
                    api_name="/import_dataset")
    assert rep["workspace"] == "holiday"
    assert rep["n_imported"] == rep["n_images"] == 6 and rep["resolution"] == 32
    assert rep["n_skipped"] == 2 and rep["n_found"] == 8
    assert {s["file"].rsplit("/", 1)[-1] for s in rep["skipped"]} == {"notes.txt", "broken.png"}
    assert all(s["reason"] for s in rep["skipped"])
    # the images really are in a workspace in this visitor's own area (not the shared home)
    roots = [p for p in session_workspaces(home) if p.name == "holiday"]
    assert len(roots) == 1 and not (home / "workspaces" / "holiday").exists()
    ws = wsp.Workspace(roots[0])
    assert ws.images.shape == (6, 32, 32, 3)
    means = ws.images.reshape(6, -1, 3).mean(1)
    expect = np.array([COLOURS[int(p.rsplit("img", 1)[1][0])] for p in ws.paths], float)
    np.testing.assert_allclose(means, expect, atol=2)


@needs_importer
def test_several_image_files_become_one_workspace(app, tmp_path):
    url, _, home = app
    from gradio_client import handle_file

    files = []
    for i in range(3):
        (tmp_path / f"shot{i}.png").write_bytes(png_bytes(COLOURS[i]))
        files.append(handle_file(str(tmp_path / f"shot{i}.png")))
    c = client(url)
    rep = c.predict(files, "my-shots", 64, None, api_name="/import_dataset")
    assert (rep["workspace"], rep["n_images"], rep["resolution"], rep["n_skipped"]) == ("my-shots", 3, 64, 0)
    # the staging copies are gone, only the workspace is left
    area = [p for p in session_workspaces(home) if p.name == "my-shots"][0].parent.parent
    assert list(area.glob("uploads/*")) == []


@needs_importer
def test_bad_upload_gives_a_readable_error_and_leaves_nothing(app, tmp_path):
    url, _, home = app
    from gradio_client import handle_file

    bad = tmp_path / "nothing.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "no images in here")
        z.writestr("fake.png", b"not a png")
    c = client(url)
    msg = _app_error(c.predict, [handle_file(str(bad))], "", 64, None, api_name="/import_dataset")
    assert not msg.startswith("Something went wrong")  # a CedmError naming the problem, not a crash
    assert not [p for p in session_workspaces(home) if p.name == "nothing"]
    assert not list((home / "sessions").glob("*/workspaces/.tmp-*"))  # no half-built workspace left
    assert "choose" in _app_error(c.predict, [], "", 64, None, api_name="/import_dataset")


@needs_importer
def test_visitors_do_not_see_each_other(app, tmp_path):
    url, _, home = app
    from gradio_client import handle_file

    alice, bob = client(url), client(url)
    rep = alice.predict([handle_file(str(make_zip(tmp_path / "private.zip", junk=False)))], "secret", 32, None,
                        api_name="/import_dataset")
    assert rep["workspace"] == "secret"
    assert "no workspace named 'secret'" in _app_error(bob.predict, "secret", api_name="/delete_workspace")
    # bob may use the same name for his own upload
    assert bob.predict([handle_file(str(make_zip(tmp_path / "b.zip", junk=False)))], "secret", 32, None,
                       api_name="/import_dataset")["workspace"] == "secret"
    assert len([p for p in session_workspaces(home) if p.name == "secret"]) == 2
    assert "Deleted" in alice.predict("secret", api_name="/delete_workspace")
    assert len([p for p in session_workspaces(home) if p.name == "secret"]) == 1
    assert "already have a workspace named" in _app_error(
        bob.predict, [handle_file(str(tmp_path / "b.zip"))], "secret", 32, None, api_name="/import_dataset")


def test_demo_cannot_be_deleted(app):
    url, _, _ = app
    assert "read-only" in _app_error(client(url).predict, "demo", api_name="/delete_workspace")


@needs_importer
def test_workspace_limit_per_visitor(app, tmp_path, monkeypatch):
    url, _, _ = app
    from gradio_client import handle_file

    from cedm.ui import common

    monkeypatch.setattr(common, "MAX_WORKSPACES_PER_SESSION", 1)
    c, z = client(url), handle_file(str(make_zip(tmp_path / "a.zip", junk=False)))
    c.predict([z], "first", 32, None, api_name="/import_dataset")
    assert "delete one" in _app_error(c.predict, [z], "second", 32, None, api_name="/import_dataset")


def test_missing_library_part_is_reported_not_crashed(app, tmp_path, monkeypatch):
    url, _, _ = app
    from gradio_client import handle_file

    monkeypatch.setitem(sys.modules, "cedm.dataset.importers", None)  # as if the module were absent
    msg = _app_error(client(url).predict, [handle_file(str(make_zip(tmp_path / "a.zip")))], "", 32, None,
                     api_name="/import_dataset")
    assert "not available yet" in msg


# --- pieces used by the handlers ----------------------------------------------------------------
def test_gallery_pages_never_load_more_than_a_page(tmp_path):
    from cedm import workspace as wsp
    from cedm.ui.dataset_tab import PAGE_SIZE, gallery_page, n_pages

    ws = wsp.Workspace(make_stand_in_demo(tmp_path))
    assert n_pages(ws) == -(-DEMO_N // PAGE_SIZE) == 3
    items, info, page = gallery_page(ws, 1)
    assert page == 1 and len(items) == PAGE_SIZE and "images 49-96 of 100" in info
    np.testing.assert_array_equal(items[0][0], ws.images[PAGE_SIZE])
    assert items[0][1].startswith(DEMO_CLASSES[PAGE_SIZE % 3]) and ws.paths[PAGE_SIZE] in items[0][1]
    items, info, page = gallery_page(ws, 99)  # past the end: the last page
    assert page == 2 and len(items) == DEMO_N - 2 * PAGE_SIZE and "page 3 of 3" in info
    assert gallery_page(ws, -5)[2] == 0


def test_session_areas_are_private_and_cleaned(tmp_path):
    from cedm.ui.sessions import Sessions

    s = Sessions(tmp_path, max_age_s=60)
    a, b = s.home_for("alice"), s.home_for("../../etc")
    assert a != b and a.parent == b.parent == tmp_path / "sessions"  # digests: no path from the client
    (a / "workspaces").mkdir()
    s.end("alice")
    assert not a.exists() and s.is_cancelled("alice")
    s.start_step("alice")
    assert not s.is_cancelled("alice")
    old = time.time() - 3600
    os.utime(b, (old, old))
    fresh = s.home_for("carol")
    assert s.sweep() == [b.name] and not b.exists() and fresh.exists()


def test_only_the_visitor_area_and_assets_are_served(app):
    url, demo, home = app
    import httpx

    outside = home / "workspaces-secret.txt"
    outside.write_text("private")
    inside = demo.cedm_context.sessions.root / "served.txt"
    inside.write_text("ok")
    assert httpx.get(f"{url}gradio_api/file={inside}").text == "ok"
    assert httpx.get(f"{url}gradio_api/file={outside}").status_code == 403
    assert httpx.get(f"{url}gradio_api/file=/etc/passwd").status_code == 403


def test_cancel_stops_a_running_step(tmp_path):
    from types import SimpleNamespace

    from cedm.errors import CedmError
    from cedm.ui.common import progress_callback
    from cedm.ui.sessions import Sessions

    seen, s, req = [], Sessions(tmp_path), SimpleNamespace(session_hash="abc")
    report = progress_callback(lambda p, desc=None: seen.append((p, desc)), s, req)
    report(1, 4, "importing")
    s.request_cancel("abc")
    with pytest.raises(CedmError, match="cancelled"):
        report(2, 4, "importing")
    assert seen == [((1, 4), "importing")]
    progress_callback(None, s, req)(3, 4)  # a new step starts uncancelled


def test_app_starts_without_a_demo(tmp_path, monkeypatch):
    from cedm import workspace as wsp
    from cedm.ui.app import build_app

    monkeypatch.setattr(wsp, "DEMO_DIR", tmp_path / "no-demo")
    demo = build_app(tmp_path / "home")
    assert demo.cedm_context.choices(None) == []

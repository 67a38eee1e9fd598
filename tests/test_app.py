"""The app in-process, driven through its public API with gradio_client, plus its per-visitor areas."""
from __future__ import annotations

import os
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from tests.browser_util import COLOURS, DEMO_CLASSES, DEMO_N, client, demo_tree_snapshot, make_stand_in_demo, \
    make_tiny_models, make_zip, png_bytes, running_app, session_workspaces


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
    assert set(api["named_endpoints"]) == {"/import_dataset", "/delete_workspace", "/cluster", "/cluster_bound",
                                           "/query", "/export_assignments", "/export_cluster", "/train", "/generate",
                                           "/compare", "/download_model", "/upload_model"}
    assert api["unnamed_endpoints"] == {}


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


def test_workspace_limit_per_visitor(app, tmp_path, monkeypatch):
    url, _, _ = app
    from gradio_client import handle_file

    from cedm.ui import common

    monkeypatch.setattr(common, "MAX_WORKSPACES_PER_SESSION", 1)
    c, z = client(url), handle_file(str(make_zip(tmp_path / "a.zip", junk=False)))
    c.predict([z], "first", 32, None, api_name="/import_dataset")
    assert "delete one" in _app_error(c.predict, [z], "second", 32, None, api_name="/import_dataset")


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


def test_no_home_file_is_served_by_path_only_assets_and_outputs(app, tmp_path):
    """The file route serves assets/ and component outputs (gradio's cache), never a path into the home: not
    the sessions folder, not a visitor's workspace even when its path is known."""
    url, demo, home = app
    import httpx
    from gradio_client import handle_file

    from cedm import workspace as wsp

    outside = home / "workspaces-secret.txt"
    outside.write_text("private")
    inside = demo.cedm_context.sessions.root / "served.txt"
    inside.write_text("private too")
    c = client(url)
    c.predict([handle_file(str(make_zip(tmp_path / "mine.zip", junk=False)))], "mine", 32, None,
              api_name="/import_dataset")
    images = [p for p in session_workspaces(home) if p.name == "mine"][0] / "images.npy"
    for p in (inside, outside, images, images.parent / "paths.json", "/etc/passwd"):
        assert httpx.get(f"{url}gradio_api/file={p}").status_code == 403, p
    asset = wsp.REPO_ROOT / "assets" / "demo" / "manifest.json"
    assert httpx.get(f"{url}gradio_api/file={asset}").status_code == 200


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
    assert len(seen) == 1 and seen[0][0] == (1, 4) and seen[0][1].startswith("importing")  # gr.Progress draws the %
    progress_callback(None, s, req)(3, 4)  # a new step starts uncancelled


def test_app_starts_without_a_demo(tmp_path, monkeypatch):
    from cedm import workspace as wsp
    from cedm.ui.app import build_app

    monkeypatch.setattr(wsp, "DEMO_DIR", tmp_path / "no-demo")
    demo = build_app(tmp_path / "home")
    assert demo.cedm_context.choices(None) == []


def test_train_endpoint_trains_continues_and_lists_the_model(app):
    """The Train tab's endpoint on the stand-in demo (16 px, 3 ground-truth classes): a short conditional run,
    then the same name with a larger budget continues it; bad settings and a busy app are refused."""
    import json as _json

    from cedm.model.registry import list_models
    from cedm.ui import train_tab

    url, demo, home = app
    c = client(url)
    s = c.predict("demo", "gt", "", "tiny", 16, 0.064, "gt-tiny", api_name="/train")
    ctx = demo.cedm_context
    ws = ctx.open("demo", SimpleNamespace(session_hash=c.session_hash))
    assert s["model"] == f"{ws.name}/gt-tiny" and s["n_conditions"] == 3 and s["complete"] and s["kimg_done"] == 0.064
    assert "--resume" in s["command_line"] and "--out gt-tiny" in s["command_line"]
    folder = ws.derived_dir("models") / "gt-tiny"
    # public mode: the read-only demo's overlay for this visitor is in their own area, not the shared one
    assert folder.is_relative_to(ctx.sessions.home_for(c.session_hash)) and folder.is_dir()
    assert not (home / "overlays").exists() or not list((home / "overlays").glob("*/models/gt-tiny"))
    assert [e.name for e in list_models(ws, shipped_dirs=[]) if e.source == "workspace"] == [s["model"]]
    other = ctx.open("demo", SimpleNamespace(session_hash="someone-else"))
    assert [e for e in list_models(other, shipped_dirs=[]) if e.source == "workspace"] == []
    s2 = c.predict("demo", "gt", "", "tiny", 16, 0.128, "gt-tiny", api_name="/train")
    assert s2["complete"] and s2["kimg_done"] == 0.128
    steps = [_json.loads(line)["step"] for line in (folder / "training" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4  # continued from step 2, not restarted
    assert "at most 100" in _app_error(c.predict, "demo", "gt", "", "tiny", 16, 5000, "", api_name="/train")
    assert "above the workspace" in _app_error(c.predict, "demo", "gt", "", "tiny", 32, 1, "", api_name="/train")
    assert "paper" in _app_error(c.predict, "demo", "gt", "", "paper", 16, 1, "", api_name="/train")
    assert "invalid model name" in _app_error(c.predict, "demo", "gt", "", "tiny", 16, 1, "../up", api_name="/train")
    # "start from the shipped unconditional model" takes its network (32 px), which these 16 px images lack
    if train_tab.init_model(None) is not None:
        assert "above the workspace" in _app_error(c.predict, "demo", "gt", "", "tiny", 16, 1, "", True,
                                                   api_name="/train")
    assert "no workspace named" in _app_error(c.predict, "someone-else", "gt", "", "tiny", 16, 1, "", api_name="/train")
    with train_tab._TRAINING:  # someone else is training
        assert "another training" in _app_error(c.predict, "demo", "none", "", "tiny", 16, 0.032, "",
                                                api_name="/train")


# --- clusters, query and export on the shipped demo (features, map and k-means C=50 are precomputed) ---
OFFLINE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    before = demo_tree_snapshot()
    with running_app(tmp_path_factory.mktemp("demo-app"), real_demo=True) as served:
        yield served
    assert demo_tree_snapshot() == before  # everything computed went to the overlay in the home


@pytest.fixture(scope="module")
def demo_ws(demo_app):
    return demo_app[1].cedm_context.open("demo", None)


def _clustering(ws, spec="kmeans:50"):
    from cedm.ui.cluster_views import get_clustering

    return get_clustering(ws, OFFLINE, spec, compute=False)


def test_cluster_endpoint_returns_real_sizes(demo_app, demo_ws):
    url, _, _ = demo_app
    c = client(url)
    s = c.predict("demo", OFFLINE, "kmeans", 50, api_name="/cluster")
    res = _clustering(demo_ws)
    assert s["from_cache"] and s["clustering"] == "kmeans:50" and s["n_images"] == demo_ws.n == 3391
    assert len(s["sizes"]) == 50 and sum(s["sizes"]) == demo_ws.n
    assert s["sizes"] == np.bincount(res.assignments, minlength=50).tolist()
    assert s["n_used"] == sum(x > 0 for x in s["sizes"]) and 0 < s["vs_ground_truth"]["ami"] < 1
    # a new C is computed (into the overlay, not the shipped demo), then served from the cache
    s3 = c.predict("demo", OFFLINE, "kmeans", 3, api_name="/cluster")
    assert not s3["from_cache"] and len(s3["sizes"]) == 3 and sum(s3["sizes"]) == demo_ws.n
    assert c.predict("demo", OFFLINE, "kmeans", 3, api_name="/cluster")["from_cache"]


def test_cluster_endpoint_rejects_bad_input(demo_app):
    url, _, _ = demo_app
    c = client(url)
    msg = _app_error(c.predict, "demo", OFFLINE, "kmeans", 1, api_name="/cluster")
    assert "minimum value 2" in msg or "at least 2" in msg
    assert "at most 3391" in _app_error(c.predict, "demo", OFFLINE, "kmeans", 5000, api_name="/cluster")
    assert "kmeans" in _app_error(c.predict, "demo", OFFLINE, "spectral", 5, api_name="/cluster")  # not a choice
    assert "unknown backbone" in _app_error(c.predict, "demo", "nope", "kmeans", 5, api_name="/cluster")
    # weights that cannot be had offline: one sentence that offers the offline backbone
    msg = _app_error(c.predict, "demo", "dino_vitb16", "kmeans", 5, api_name="/cluster")
    assert OFFLINE in msg and not msg.startswith("Something went wrong")


def test_query_with_a_demo_image_finds_itself_and_its_cluster(demo_app, demo_ws, tmp_path):
    url, _, _ = demo_app
    from gradio_client import handle_file
    from PIL import Image

    res = _clustering(demo_ws)
    c = client(url)
    for row in (123, 2500):
        Image.fromarray(np.asarray(demo_ws.images[row])).save(tmp_path / f"q{row}.png")
        r = c.predict(handle_file(str(tmp_path / f"q{row}.png")), "demo", OFFLINE, "kmeans:50", api_name="/query")
        first = r["neighbours"][0]
        assert first["row"] == row and first["file"] == demo_ws.paths[row] and first["cosine"] > 0.99
        assert len(r["neighbours"]) == 8
        cos = [n["cosine"] for n in r["neighbours"]]
        assert cos == sorted(cos, reverse=True) and cos[1] < first["cosine"]
        top = r["top3"]
        assert len(top) == 3 and top[0]["cluster"] == int(res.assignments[row]) == first["cluster"]
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert "centroid cosine" in r["probabilities"]


def test_query_bad_input_is_readable(demo_app, tmp_path):
    url, _, _ = demo_app
    from gradio_client import handle_file

    c = client(url)
    (tmp_path / "q.png").write_bytes(png_bytes(COLOURS[0]))
    assert "upload or paste" in _app_error(c.predict, None, "demo", OFFLINE, "kmeans:50", api_name="/query")
    assert "bad clustering" in _app_error(c.predict, handle_file(str(tmp_path / "q.png")), "demo", OFFLINE, "k:3",
                                          api_name="/query")


def test_export_assignments_and_a_cluster_zip(demo_app, demo_ws, tmp_path):
    url, _, home = demo_app
    import csv
    import io
    import json

    from PIL import Image

    res = _clustering(demo_ws)
    c = client(url)
    csv_path, json_path = c.predict("demo", OFFLINE, "kmeans:50", api_name="/export_assignments")
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert len(rows) == demo_ws.n
    assert [r["path"] for r in rows] == demo_ws.paths
    assert [int(r["cluster"]) for r in rows] == res.assignments.tolist()
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], res.confidence, atol=1e-5)
    doc = json.load(open(json_path))
    assert doc["clustering"] == "kmeans:50" and len(doc["assignments"]) == demo_ws.n
    assert doc["assignments"][7] == {"path": demo_ws.paths[7], "cluster": int(res.assignments[7]),
                                     "confidence": pytest.approx(float(res.confidence[7]), abs=1e-6)}
    # the files were written to a fresh downloads folder of this visitor, outside every home (never served by
    # its path: only as this output, copied into gradio's cache)
    downloads = demo_app[1].cedm_context.sessions._downloads
    assert list(downloads.glob("*/*/demo-efficientnet_lite0-kmeans-50.csv"))
    assert not list(home.rglob("demo-efficientnet_lite0-kmeans-50.csv"))
    # a renamed cluster is exported with its name (CSV column, JSON map)
    from cedm.labels import rename_cluster
    from cedm.ui.export_tab import write_assignments

    named = int(res.assignments[7])
    rename_cluster(demo_ws, "kmeans:50", named, "my favourites", backbone=OFFLINE)
    try:
        csv_path, json_path = write_assignments(demo_ws, OFFLINE, res, tmp_path)
    finally:
        rename_cluster(demo_ws, "kmeans:50", named, "", backbone=OFFLINE)
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert rows[7]["name"] == "my favourites"
    assert json.load(open(json_path))["cluster_names"][str(named)] == "my favourites"

    cluster = int(np.argmax(res.sizes))
    zpath = c.predict("demo", OFFLINE, "kmeans:50", cluster, api_name="/export_cluster")
    members = np.flatnonzero(res.assignments == cluster)
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        assert sorted(names) == sorted(demo_ws.paths[r].rsplit(".", 1)[0] + ".png" for r in members)
        r = int(members[0])
        img = np.asarray(Image.open(io.BytesIO(z.read(demo_ws.paths[r].rsplit(".", 1)[0] + ".png"))))
        np.testing.assert_array_equal(img, demo_ws.images[r])
    assert "does not exist" in _app_error(c.predict, "demo", OFFLINE, "kmeans:50", 50, api_name="/export_cluster")


def test_zip_entry_names_are_safe():
    from cedm.ui.export_tab import _entry_name

    taken: set[str] = set()
    assert _entry_name("pics/a.jpg", 0, taken) == "pics/a.png"
    assert _entry_name("pics/a.webp", 1, taken) == "pics/a-row1.png"  # same name: both kept
    assert _entry_name("../../etc/passwd", 2, taken) == "etc/passwd.png"
    assert _entry_name("/abs/b.png", 3, taken) == "abs/b.png"
    assert _entry_name("..", 4, taken) == "000004.png"


def test_cluster_gallery_is_paged_and_sorted_by_confidence(demo_ws):
    from cedm.ui import cluster_views as cv

    res = _clustering(demo_ws)
    c = int(np.argmax(res.sizes))
    size = int(res.sizes[c])
    items, info, page = cv.cluster_page(demo_ws, res, c, 0)
    assert len(items) == cv.PAGE_SIZE and page == 0 and f"of {size:,}" in info
    rows = cv.members(res, c)
    conf = res.confidence[rows]
    assert (np.diff(conf) <= 0).all() and len(rows) == size and (res.assignments[rows] == c).all()
    np.testing.assert_array_equal(items[0][0], demo_ws.images[rows[0]])
    last = -(-size // cv.PAGE_SIZE) - 1
    items, info, page = cv.cluster_page(demo_ws, res, c, 999)
    assert page == last and len(items) == size - last * cv.PAGE_SIZE


def test_query_probabilities_of_kmeans_are_a_softmax_of_centroid_cosine(demo_ws):
    from cedm.ui import cluster_views as cv

    res = _clustering(demo_ws)
    c = res.centroids / np.linalg.norm(res.centroids, axis=1, keepdims=True)  # Euclidean k-means: raw means
    x = c[3] + 0.01 * c[5]
    p, how = cv.cluster_probabilities(res, x)
    cos = c @ (x / np.linalg.norm(x))
    from cedm.clusters.assign import KMEANS_TEMPERATURE
    expect = np.exp((cos - cos.max()) / KMEANS_TEMPERATURE)
    np.testing.assert_allclose(p, expect / expect.sum(), rtol=1e-4)
    assert int(np.argmax(p)) == 3 and "0.1" in how


def test_map_figure_draws_a_stated_sample_above_the_limit(demo_ws, monkeypatch):
    from cedm.features.projection import find_map
    from cedm.ui import cluster_views as cv

    rows, xy = find_map(demo_ws, OFFLINE)
    assert len(rows) == demo_ws.n  # the shipped demo's map is precomputed
    res = _clustering(demo_ws)
    fig = cv.map_figure(demo_ws, rows, xy, res, selected=4, point=int(np.flatnonzero(res.assignments == 4)[0]))
    clusters = [t for t in fig.data if t.showlegend is not False]  # one legend entry per used cluster
    assert sum(len(t.x) for t in clusters) == demo_ws.n and len(clusters) == res.n_used
    for t in clusters:  # each trace holds exactly its cluster's points
        assert set(t.customdata[:, 1].astype(int)) == {int(t.name.split(" ")[0])}
        assert len(t.x) == res.sizes[int(t.name.split(" ")[0])]
    assert len(fig.data[-2].x) == res.sizes[4] and len(fig.data[-1].x) == 1  # outline of 4, the point's star
    assert "all 3,391 images" in fig.layout.title.text and fig.layout.showlegend
    monkeypatch.setattr(cv, "MAP_DRAW_LIMIT", 1000)
    fig = cv.map_figure(demo_ws, rows, xy, res)
    assert sum(len(t.x) for t in fig.data) == 1000 and "1,000 of 3,391 images" in fig.layout.title.text
    for t in fig.data:
        drawn = t.customdata[:, 0].astype(int)
        np.testing.assert_allclose(t.x, xy[drawn, 0])  # each point keeps its own row


def test_selection_library_parts(demo_ws, tmp_path):
    """What the map selection uses: its page and counts, "more like these", the CSV with names."""
    import csv

    from cedm.clusters.export import assignments_csv
    from cedm.errors import CedmError
    from cedm.features.search import more_like
    from cedm.ui import cluster_views as cv

    res = _clustering(demo_ws)
    rows = np.flatnonzero(res.assignments == 4)[:5].tolist() + [int(np.flatnonzero(res.assignments == 2)[0])]
    items, info, page = cv.selection_page(demo_ws, res, rows)
    assert len(items) == 6 and page == 0 and "of 6" in info
    assert items[0][1].endswith("cluster 4")  # the selection's largest cluster first
    text = cv.selection_counts(res, rows)
    assert text.startswith("**6 images selected** in 2 clusters") and "cluster 4: 5" in text and "cluster 2: 1" in text
    found, cos = more_like(demo_ws, rows, backbone=OFFLINE, k=10)
    assert len(found) == 10 and not set(found.tolist()) & set(rows) and np.all(np.diff(cos) <= 1e-6)
    path = tmp_path / "sel.csv"
    assert assignments_csv(demo_ws, res, path, rows=rows, names={4: "clocks, mostly"}) == 6
    got = list(csv.reader(path.open()))
    assert got[0] == ["path", "cluster", "confidence", "name"] and len(got) == 7
    assert got[1][0] == demo_ws.paths[rows[0]] and got[1][1] == "4" and got[1][3] == "clocks, mostly"
    assert got[-1][3] == ""  # a cluster without a name
    with pytest.raises(CedmError, match="rows must be"):
        assignments_csv(demo_ws, res, path, rows=[demo_ws.n])
    with pytest.raises(CedmError, match="select some"):
        more_like(demo_ws, [], backbone=OFFLINE)


def test_bound_curve_helpers():
    from cedm.clusters.bound import c_max_of
    from cedm.ui.cluster_views import curve_figure

    curve = [(10, 1.0), (20, 1.0), (40, 0.9), (30, 0.97), (35, 0.95)]
    assert c_max_of(curve) == 30
    assert c_max_of([(10, 1.0), (20, 0.99)]) is None  # no failing C yet: no bound
    fig = curve_figure(sorted(curve), 30, c_star=12)
    texts = [t for tr in fig.data for t in (tr.text or ()) if t]
    assert any("C_max = 30" in t for t in texts) and any("C* = 12" in t for t in texts)


def _x_range_in_c(fig) -> tuple[float, float]:
    lo, hi = fig.layout.xaxis.range
    return (10 ** lo, 10 ** hi) if fig.layout.xaxis.type == "log" else (lo, hi)


@pytest.mark.parametrize("curve, c_max", [
    # an upload: doubling from 10 to 640, then bisection (the axis once read 1 ... 10^91)
    ([(10, 1.0), (20, 1.0), (40, 1.0), (80, 0.99), (160, 0.97), (320, 0.93), (240, 0.95), (200, 0.96),
      (220, 0.955), (640, 0.8)], 200),
    ([(10, 1.0), (20, 0.98), (40, 0.97)], None),  # a short curve: a linear axis
    ([(16, 1.0)], None),  # one point
])
def test_bound_curve_axis_covers_exactly_the_points(curve, c_max):
    from cedm.ui.cluster_views import curve_figure

    fig = curve_figure(sorted(curve), c_max)
    assert_axis_covers_exactly(fig, [c for c, _ in curve])


def assert_axis_covers_exactly(fig, cs) -> None:
    lo, hi = _x_range_in_c(fig)
    assert lo < min(cs) and hi > max(cs)  # every point is inside
    if len(cs) > 1:  # and the range is the points' span plus a small margin, nothing more
        span = np.log10(max(cs) / min(cs)) if fig.layout.xaxis.type == "log" else max(cs) - min(cs)
        out = (np.log10(min(cs) / lo), np.log10(hi / max(cs))) if fig.layout.xaxis.type == "log" else \
            (min(cs) - lo, hi - max(cs))
        assert max(out) <= 0.06 * span
    assert all(a.xref == "paper" for a in fig.layout.annotations)  # none placed in (log) data units


def test_bound_curve_axis_of_the_demo(demo_ws):
    from cedm.clusters.bound import c_max_of, cached_curve
    from cedm.ui.cluster_views import curve_figure

    curve = cached_curve(demo_ws, backbone=OFFLINE)
    if not curve:
        pytest.skip("the demo has no cached bound curve")
    assert_axis_covers_exactly(curve_figure(curve, c_max_of(curve)), [c for c, _ in curve])


def test_generation_condition_hook():
    from cedm.ui.app import generation_condition

    assert generation_condition(None) is None and generation_condition({"workspace": "demo"}) is None
    assert generation_condition({"workspace": "demo", "backbone": OFFLINE, "clustering": "kmeans:50",
                                 "cluster": "7"}) == {"workspace": "demo", "backbone": OFFLINE,
                                                      "clustering": "kmeans:50", "cluster": 7}


# --- generate (tiny random-init models) and labels -------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("shipped"))


@pytest.fixture(scope="module")
def gen_app(tmp_path_factory, model_dirs):
    # the shipped demo, like demo_app: both patch where "demo" lives while they run side by side
    with running_app(tmp_path_factory.mktemp("gen-app"), real_demo=True, model_dirs=[model_dirs]) as served:
        yield served


def _gallery_pixels(gallery) -> list[np.ndarray]:
    from PIL import Image

    paths = [item["image"]["path"] if isinstance(item["image"], dict) else item["image"] for item in gallery]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_model_registry_lists_shipped_then_workspace_models(model_dirs, tmp_path):
    from cedm import workspace as wsp
    from cedm.errors import CedmError
    from cedm.model.edm import CEDM, save_model
    from cedm.model.registry import find_model, list_models

    ws = wsp.create_from_array(tmp_path, "mine", np.zeros((4, 16, 16, 3), np.uint8))
    save_model(ws.derived_dir("models") / "kmeans-2", CEDM.from_preset("tiny", 16, 2))
    names = [e.name for e in list_models(ws, shipped_dirs=[model_dirs])]
    assert names == ["tiny-c4", "tiny-nodrop", "tiny-uncond", "mine/kmeans-2"]  # the broken folder is left out
    assert find_model(list_models(None, shipped_dirs=[model_dirs]), "tiny-c4").n_conditions == 4
    with pytest.raises(CedmError, match="unknown model"):
        find_model(list_models(None, shipped_dirs=[model_dirs]), "../etc")


def test_generate_endpoint_returns_conditioned_deterministic_images(gen_app):
    url, _, _ = gen_app
    c = client(url)
    args = dict(model="tiny-c4", condition="a cluster", guidance=2.0, steps=3, sampler="dpmpp2m", seed=5, n=3,
                api_name="/generate")
    gallery, records = c.predict(cluster=2, **args)
    assert len(gallery) == 3 and len(records) == 3
    assert [r["condition"] for r in records] == [2, 2, 2]
    assert [r["seed"] for r in records] == [5, 6, 7] and {r["guidance"] for r in records} == {2.0}
    assert all(r["model"] == "tiny-c4" and r["steps"] == 3 for r in records)
    assert all(item["caption"].startswith("cluster 2 · w 2") for item in gallery)
    first = _gallery_pixels(gallery)
    assert first[0].shape == (16, 16, 3)
    again, _ = c.predict(cluster=2, **args)  # same request: the very same images
    assert all(np.array_equal(a, b) for a, b in zip(first, _gallery_pixels(again)))
    other, other_records = c.predict(cluster=1, **args)  # same seeds, other cluster: same starting noise
    assert [r["seed"] for r in other_records] == [5, 6, 7] and [r["condition"] for r in other_records] == [1] * 3
    # the guidance slider changes the result (w = 0 is the unconditional branch)
    uncond, _ = c.predict(cluster=2, **{**args, "guidance": 0.0})
    assert not all(np.array_equal(a, b) for a, b in zip(first, _gallery_pixels(uncond)))


def test_generate_guidance_interval(gen_app):
    """The Generate tab's interval box: guidance only for sigma in [lo, hi] changes the images (the other steps run
    the conditional branch alone); blank = the model's default (here every sigma, like 'full'); bad input is a
    clear error."""
    url, _, _ = gen_app
    c = client(url)
    args = dict(model="tiny-c4", condition="a cluster", cluster=2, guidance=3.0, steps=4, sampler="dpmpp2m", seed=3,
                n=2, api_name="/generate")
    full, full_rec = c.predict(**args)  # no interval given: the model's default
    same, _ = c.predict(**args, interval="full")
    assert all(np.array_equal(a, b) for a, b in zip(_gallery_pixels(full), _gallery_pixels(same)))
    assert all("guidance_interval" not in r for r in full_rec)
    part, rec = c.predict(**args, interval="[1, 50]")
    assert all(r["guidance_interval"] == [1.0, 50.0] for r in rec)
    assert not all(np.array_equal(a, b) for a, b in zip(_gallery_pixels(full), _gallery_pixels(part)))
    again, _ = c.predict(**args, interval=" 1,50 ")
    assert all(np.array_equal(a, b) for a, b in zip(_gallery_pixels(part), _gallery_pixels(again)))
    assert "needs LO below HI" in _app_error(c.predict, **args, interval="5, 1")
    assert "two noise levels" in _app_error(c.predict, **args, interval="high")


def test_interval_box_reads_blank_as_the_models_default(model_dirs):
    from cedm.model.registry import find_model, list_models
    from cedm.ui.generate_tab import interval_hint, interval_of

    entry = find_model(list_models(None, shipped_dirs=[model_dirs]), "tiny-c4")
    assert interval_hint(entry).endswith("every noise level")
    entry.info.sampling["guidance_interval"] = [0.3, 5.0]  # as a model card's default would set it
    assert interval_hint(entry).endswith("sigma in [0.3, 5]")
    assert interval_of("  ") is None and interval_of("full") == "full" and interval_of("0, inf") == "full"
    assert interval_of("(0.3, 5)") == (0.3, 5.0)


def test_generate_other_conditions(gen_app):
    url, _, _ = gen_app
    c = client(url)
    common = dict(cluster=None, guidance=1.0, steps=2, sampler="euler", seed=0, n=6, api_name="/generate")
    _, rec = c.predict(model="tiny-c4", condition="drawn from q(c)", **common)
    assert all(r["condition"] in range(4) for r in rec)
    _, rec = c.predict(model="tiny-c4", condition="none (unconditional)", **common)
    assert all(r["condition"] is None for r in rec)
    gallery, rec = c.predict(model="tiny-uncond", condition="a cluster", **{**common, "n": 2})
    assert len(gallery) == 2 and all(r["condition"] is None for r in rec)


def test_generate_refuses_what_the_model_cannot_do(gen_app):
    url, _, _ = gen_app
    c = client(url)
    base = dict(model="tiny-nodrop", condition="a cluster", cluster=0, guidance=2.0, steps=2, sampler="dpmpp2m",
                seed=0, n=1, api_name="/generate")
    msg = _app_error(c.predict, **base)
    assert "p_uncond = 0" in msg and "guidance 1" in msg
    _, rec = c.predict(**{**base, "guidance": 1.0})  # plain conditional works
    assert rec[0]["condition"] == 0
    assert "does not exist" in _app_error(c.predict, **{**base, "guidance": 1.0, "cluster": 9})
    assert "unknown model" in _app_error(c.predict, **{**base, "model": "/etc"})
    assert "16" in _app_error(c.predict, **{**base, "guidance": 1.0, "n": 40})
    assert "query" in _app_error(c.predict, **{**base, "model": "tiny-c4", "condition": "the query image's cluster"})


def test_query_condition_must_match_the_models_clustering(model_dirs):
    from cedm.errors import CedmError
    from cedm.model.registry import find_model, list_models
    from cedm.ui.generate_tab import QUERY, request_of

    entry = find_model(list_models(None, shipped_dirs=[model_dirs]), "tiny-c4")
    ok = {"workspace": "demo", "backbone": OFFLINE, "clustering": "kmeans:4", "cluster": 3}
    assert request_of(entry, QUERY, None, 2.0, ok) == {"clusters": 3, "guidance": 2.0}
    with pytest.raises(CedmError, match="conditioned on kmeans:4"):
        request_of(entry, QUERY, None, 2.0, {**ok, "clustering": "kmeans:50"})
    entry.info["condition"]["original_ids"] = [0, 2, 3, 5]  # an empty cluster 1 was renumbered away
    assert request_of(entry, QUERY, None, 1.0, {**ok, "cluster": 5})["clusters"] == 3
    with pytest.raises(CedmError, match="empty"):
        request_of(entry, QUERY, None, 1.0, {**ok, "cluster": 1})


def test_compare_endpoint_on_the_demo(demo_app):
    url, _, _ = demo_app
    r = client(url).predict("demo", OFFLINE, "kmeans:20", "labels:imagenet", api_name="/compare")
    for part in (r["metrics"], r["vs_ground_truth"]):
        assert 0 <= part["nmi"] <= 1 and 0 <= part["ami"] <= 1 and 0 <= part["accuracy"] <= 1
        assert -1 <= part["ari"] <= 1
    assert r["metrics"]["nmi"] > 0.05  # clusters of a real classifier's features share information with it
    assert len(r["names"]) == 20 and r["names"][0].startswith("cluster 0: ") and "%" in r["names"][0]
    table = np.asarray(r["contingency"]["table"])
    assert table.shape == (20, len(r["contingency"]["labels"])) and table.sum() == r["metrics"]["n_compared"]
    assert "no labeling named" in _app_error(client(url).predict, "demo", OFFLINE, "kmeans:20", "labels:nope",
                                              api_name="/compare")


def test_contingency_heatmap_is_limited_to_a_readable_size():
    from cedm.ui.labels_tab import HEATMAP_COLS, HEATMAP_ROWS, heatmap

    rng = np.random.default_rng(0)
    table = rng.integers(0, 9, (60, 80))
    fig = heatmap({"clustering": "kmeans:60", "labels": "labels:x",
                   "contingency": {"table": table.tolist(), "clusters": list(range(60)),
                                   "labels": [f"l{j}" for j in range(80)]}})
    z = np.asarray(fig.data[0].z)
    assert z.shape == (HEATMAP_ROWS, HEATMAP_COLS)
    np.testing.assert_allclose(z.sum(1) <= 1 + 1e-9, True)
    assert fig.data[0].y[0] == f"cluster {int(np.argmax(table.sum(1)))}"  # largest cluster first


def test_first_batch_of_the_shipped_model_is_ready_and_reproducible(demo_app):
    from cedm.inference import get_engine
    from cedm.model.registry import find_model, list_models
    from cedm.ui.generate_tab import DEFAULT_GUIDANCE, FIRST_N, FROM_Q, first_batch

    url, _, _ = demo_app
    entry = find_model(list_models(None), "demo-kmeans20")
    assert list_models(None)[0].name == "demo-kmeans20"  # the app opens with the shipped C-EDM selected
    items, recs = first_batch(get_engine(), entry)
    assert len(items) == FIRST_N and {r["guidance"] for r in recs} == {DEFAULT_GUIDANCE}
    gallery, records = client(url).predict(model="demo-kmeans20", condition=FROM_Q, cluster=None,
                                           guidance=DEFAULT_GUIDANCE, steps=12, sampler="dpmpp2m", seed=0,
                                           n=FIRST_N, api_name="/generate")
    assert [r["condition"] for r in records] == [r["condition"] for r in recs]
    np.testing.assert_array_equal(np.stack(_gallery_pixels(gallery)), np.stack([img for img, _ in items]))

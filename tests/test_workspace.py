import json
import os

import numpy as np
import pytest

from cedm import io
from cedm import workspace as wsp
from cedm.errors import CedmError


def test_create_open_list_delete(home, tiny_images):
    labels = ["a", "b"] * 5
    ws = wsp.create_from_array(home, "tiny", tiny_images, labels=labels)
    assert ws.n == 10 and ws.resolution == 16
    assert isinstance(ws.images, np.memmap) or ws.images.base is not None  # memory-mapped
    np.testing.assert_array_equal(ws.images, tiny_images)
    assert ws.paths == [f"{i:06d}.png" for i in range(10)]
    assert ws.ground_truth.names == ["a", "b"]
    assert list(ws.ground_truth.labels[:4]) == [0, 1, 0, 1]
    assert "tiny" in wsp.list_workspaces(home)
    again = wsp.open_workspace(home, "tiny")
    assert again.content_hash == ws.content_hash
    with pytest.raises(CedmError, match="already exists"):
        wsp.create_from_array(home, "tiny", tiny_images)
    wsp.delete_workspace(home, "tiny")
    assert "tiny" not in wsp.list_workspaces(home, include_demo=False)
    with pytest.raises(CedmError, match="no workspace named"):
        wsp.open_workspace(home, "tiny")


def test_content_hash_depends_on_pixels_and_paths(home, tiny_images):
    a = wsp.create_from_array(home, "a", tiny_images)
    other = tiny_images.copy()
    other[3, 0, 0, 0] ^= 1
    b = wsp.create_from_array(home, "b", other)
    c = wsp.create_from_array(home, "c", tiny_images, paths=[f"x{i}.png" for i in range(10)])
    assert len({a.content_hash, b.content_hash, c.content_hash}) == 3


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "demo", "x" * 65])
def test_bad_names_rejected(home, tiny_images, name):
    with pytest.raises(CedmError):
        wsp.create_from_array(home, name, tiny_images)
    assert not list((home).rglob("manifest.json"))


def test_too_few_images_leaves_nothing(home, tiny_images):
    with pytest.raises(CedmError, match="at least 2"):
        wsp.create_from_array(home, "one", tiny_images[:1])
    assert wsp.list_workspaces(home, include_demo=False) == []
    assert not any((home / "workspaces").iterdir())


def test_failed_build_leaves_no_workspace(home, tiny_images):
    with pytest.raises(RuntimeError):
        with wsp.WorkspaceBuilder(home, "broken", 16, 10) as b:
            b.add(tiny_images[0], "0.png")
            raise RuntimeError("disk on fire")
    assert not (home / "workspaces" / "broken").exists()
    assert not any((home / "workspaces").iterdir())


def test_artifact_cache_keys(home, tiny_images):
    ws = wsp.create_from_array(home, "t", tiny_images)
    params = {"backbone": "x", "size": 224}
    assert ws.find_artifact("features", params) is None
    with ws.write_artifact("features", params) as d:
        io.save_npy(d / "f.npy", np.ones(3))
    hit = ws.find_artifact("features", params)
    assert hit is not None and (hit / "f.npy").is_file()
    assert json.loads((hit / "meta.json").read_text())["params"] == params
    assert ws.find_artifact("features", {**params, "size": 256}) is None  # changed parameter misses
    assert ws.find_artifact("clusters", params) is None  # other stage misses
    assert [m["params"] for _, m in ws.list_artifacts("features")] == [params]


def test_interrupted_artifact_write_keeps_previous(home, tiny_images):
    ws = wsp.create_from_array(home, "t", tiny_images)
    params = {"k": 1}
    with ws.write_artifact("stage", params) as d:
        (d / "v.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with ws.write_artifact("stage", params) as d:
            (d / "v.txt").write_text("new, half written")
            raise KeyboardInterrupt
    assert (ws.find_artifact("stage", params) / "v.txt").read_text() == "old"
    assert not [p for p in (d.parent).iterdir() if p.name.startswith(io.TMP_PREFIX)]


def test_atomic_file_interrupted_keeps_previous(tmp_path):
    p = tmp_path / "x.json"
    io.write_json(p, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_file(p) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise KeyboardInterrupt
    assert io.read_json(p) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CEDM_HOME", str(tmp_path / "h"))
    assert wsp.default_home() == tmp_path / "h"
    monkeypatch.delenv("CEDM_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert wsp.default_home() == tmp_path / "x" / "cedm"


def test_read_only_workspace_writes_to_overlay(home, tiny_images, tmp_path):
    src = wsp.create_from_array(home, "src", tiny_images)
    ro = wsp.Workspace(src.root, read_only=True, overlay=tmp_path / "ov")
    with ro.write_artifact("s", {"a": 1}) as d:
        (d / "x").write_text("1")
    assert not (src.root / "artifacts").exists()
    assert ro.find_artifact("s", {"a": 1}).is_relative_to(tmp_path / "ov")


def test_builder_with_fewer_rows_than_capacity(home, tiny_images):
    with wsp.WorkspaceBuilder(home, "short", 16, capacity=10) as b:
        for i in range(7):
            b.add(tiny_images[i], f"{i}.png")
        b.finish("test", {"skipped": [{"path": "x", "reason": "corrupt"}] * 3})
    ws = wsp.open_workspace(home, "short")
    assert ws.images.shape == (7, 16, 16, 3)
    np.testing.assert_array_equal(ws.images, tiny_images[:7])

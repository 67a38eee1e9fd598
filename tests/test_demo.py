"""The shipped demo workspace (assets/demo) and the pure parts of scripts/build_demo.py."""
import importlib.util
import io as _io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cedm import workspace as wsp
from cedm.errors import CedmError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo"


def _load_build_demo():
    spec = importlib.util.spec_from_file_location("build_demo", ROOT / "scripts" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bd = _load_build_demo()


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# --- the shipped demo ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emoji_rows():
    return json.loads((DEMO / "emoji.json").read_text(encoding="utf-8"))


def test_demo_opens_read_only_with_overlay(home):
    ws = wsp.open_demo(home)
    assert ws.read_only and ws.name == "demo"
    assert ws.overlay.is_relative_to(home)
    assert ws.manifest["source"] == "npm:@lobehub/fluent-emoji-3d@1.1.0 + debian:unicode-data"
    assert 3300 <= ws.n <= 3500
    assert ws.images.shape == (ws.n, 64, 64, 3) and ws.images.dtype == np.uint8
    assert not ws.images.flags.writeable
    assert wsp.open_workspace(home, "demo").content_hash == ws.content_hash
    assert "demo" in wsp.list_workspaces(home)


def test_demo_stored_compressed_with_hash_of_content(home):
    assert not (DEMO / "images.npy").exists()
    with zipfile.ZipFile(DEMO / "images.npz") as z:
        assert [i.filename for i in z.infolist()] == ["images.npy"]
        assert z.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    ws = wsp.open_demo(home)
    assert wsp.content_hash(ws.images, ws.paths) == ws.manifest["content_hash"]
    total = sum(p.stat().st_size for p in DEMO.iterdir())
    assert total < 40 * 2**20


def test_demo_rows_sorted_unique_and_described(home, emoji_rows):
    ws = wsp.open_demo(home)
    assert ws.paths == sorted(ws.paths) and len(set(ws.paths)) == ws.n == len(ws.paths)
    assert [r["path"] for r in emoji_rows] == ws.paths
    assert all(p.endswith(".webp") and "/" not in p for p in ws.paths)
    report = ws.import_report
    assert report["n_found"] == report["n_imported"] == ws.n and report["skipped"] == []


def test_demo_ground_truth_is_unicode_subgroups(home, emoji_rows):
    ws = wsp.open_demo(home)
    gt = ws.ground_truth
    assert 90 <= len(gt.names) <= 100 and gt.names == sorted(gt.names)
    assert len(gt.labels) == ws.n and gt.labels.min() >= -1 and gt.labels.max() < len(gt.names)
    assert (gt.labels >= 0).mean() > 0.95
    assert len(set(gt.labels[gt.labels >= 0].tolist())) == len(gt.names)  # every name is used
    for row, lab in zip(emoji_rows, gt.labels):  # ground truth and emoji.json agree row by row
        assert row["subgroup"] == (gt.names[lab] if lab >= 0 else None)
    assert len({r["group"] for r in emoji_rows if r["group"]}) == 9


@pytest.mark.parametrize("path, name, subgroup", [
    ("1f600.webp", "grinning face", "face-smiling"),
    ("1f44b.webp", "waving hand", "hand-fingers-open"),
    ("1f415.webp", "dog", "animal-mammal"),
    ("1f34e.webp", "red apple", "food-fruit"),
    ("1f1ef-1f1f5.webp", "flag: Japan", "country-flag"),
    ("0023-fe0f-20e3.webp", "keycap: #", "keycap"),
    ("1f3f4-e0067_e0062_e0065_e006e_e0067.webp", "flag: England", "subdivision-flag"),
])
def test_demo_known_emoji(home, emoji_rows, path, name, subgroup):
    ws = wsp.open_demo(home)
    i = ws.paths.index(path)
    gt = ws.ground_truth
    assert gt.names[gt.labels[i]] == subgroup
    assert emoji_rows[i]["name"] == name


def test_demo_images_composited_on_white(home):
    im = wsp.open_demo(home).images
    corners = np.stack([im[:, 0, 0], im[:, 0, -1], im[:, -1, 0], im[:, -1, -1]], axis=1)
    assert (corners.min(axis=(1, 2)) >= 240).mean() > 0.95  # transparent surround became white
    assert im[:, 24:40, 24:40].mean() < 200  # and the emoji itself is there, not a blank page


def test_demo_writes_go_to_overlay(home):
    before = _tree(DEMO)
    ws = wsp.open_demo(home)
    with ws.write_artifact("features", {"model": "test"}) as d:
        np.save(d / "x.npy", np.zeros(3))
    found = ws.find_artifact("features", {"model": "test"})
    assert found is not None and found.is_relative_to(home / "overlays")
    assert ws.scratch_dir("cluster", {"k": 2}).is_relative_to(home)
    assert ws.derived_dir("models").is_relative_to(home)
    assert wsp.open_demo(home).find_artifact("features", {"model": "test"}) == found
    assert _tree(DEMO) == before
    with pytest.raises(CedmError):
        wsp.delete_workspace(home, "demo")


def test_demo_ships_its_full_bound_search(home):
    """The shipped utilization curve is the whole search with the faithful CPU schedule (doubling, a grid,
    bisection), and its C_max follows from the shipped points by the documented rule."""
    from cedm.clusters.bound import c_max_of, cached_curve, saved_results

    ws = wsp.open_workspace(None, "demo")
    saved = saved_results(ws, "bound", backbone="efficientnet_lite0")
    assert [(r["c_max"], r["complete"]) for r in saved] == [(63, True)]
    curve = cached_curve(ws, backbone="efficientnet_lite0")
    assert {10, 20, 40, 50, 60, 62, 63, 64, 65, 70, 80, 160} <= {c for c, _ in curve}
    assert c_max_of(curve) == 63


def test_demo_attribution():
    text = (DEMO / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needle in ("Microsoft", "MIT License", "@lobehub/fluent-emoji-3d@1.1.0", "Unicode License", "Emoji 15.0"):
        assert needle in text


# --- build_demo helpers (no network) ------------------------------------------------------------
EMOJI_TEST = """\
# emoji-test.txt
# Version: 15.0

# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face

# subgroup: face-affection
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face

# group: Symbols

# subgroup: keycap
0023 FE0F 20E3                                         ; fully-qualified     # #️⃣ E0.6 keycap: #
0023 20E3                                              ; unqualified         # #⃣ E0.6 keycap: #

# subgroup: other-symbol
00A9 FE0F                                              ; fully-qualified     # ©️ E0.6 copyright

# group: Flags

# subgroup: subdivision-flag
1F3F4 E0067 E0062 E0065 E006E E0067 E007F              ; fully-qualified     # 🏴 E5.0 flag: England

# Status Counts
# fully-qualified : 5
"""


def test_parse_emoji_test():
    table = bd.parse_emoji_test(EMOJI_TEST)
    assert len(table) == 5  # unqualified spellings fold into their fully-qualified entry
    smile = table[(0x263A,)]
    assert (smile.name, smile.group, smile.subgroup, smile.status) == \
        ("smiling face", "Smileys & Emotion", "face-affection", "fully-qualified")
    assert smile.codepoints == (0x263A, 0xFE0F)
    assert table[(0x23, 0x20E3)].name == "keycap: #"
    assert bd.emoji_test_version(EMOJI_TEST) == "Emoji 15.0"


def test_parse_emoji_test_rejects_data_outside_a_subgroup():
    with pytest.raises(ValueError, match="line 1"):
        bd.parse_emoji_test("1F600 ; fully-qualified # 😀 E1.0 grinning face\n")


@pytest.mark.parametrize("filename, expected", [
    ("1f600.webp", (0x1F600,)),
    ("1F600.webp", (0x1F600,)),
    ("23-fe0f-20e3.webp", (0x23, 0xFE0F, 0x20E3)),
    ("0023-FE0F-20E3.webp", (0x23, 0xFE0F, 0x20E3)),
    ("1f3f4-e0067_e0062_e0065_e006e_e0067.webp", (0x1F3F4, 0xE0067, 0xE0062, 0xE0065, 0xE006E, 0xE0067)),
])
def test_file_codepoints(filename, expected):
    assert bd.file_codepoints(filename) == expected


def test_file_codepoints_rejects_other_names():
    with pytest.raises(ValueError, match="readme"):
        bd.file_codepoints("readme.webp")


@pytest.mark.parametrize("filename, name", [
    ("1f600.webp", "grinning face"),
    ("263a.webp", "smiling face"),                 # no fe0f in the file name
    ("263a-fe0f.webp", "smiling face"),
    ("00a9-fe0f.webp", "copyright"),
    ("a9-fe0f.webp", "copyright"),                 # unpadded hex
    ("23-fe0f-20e3.webp", "keycap: #"),
    ("0023-20e3.webp", "keycap: #"),
    ("1f3f4-e0067_e0062_e0065_e006e_e0067.webp", "flag: England"),  # file omits the CANCEL TAG
    ("1f601.webp", None),
    ("1f3f4.webp", None),
])
def test_lookup(filename, name):
    info = bd.lookup(bd.parse_emoji_test(EMOJI_TEST), filename)
    assert (info.name if info else None) == name


def test_npz_is_deterministic_and_readable(tmp_path, tiny_images):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    bd.save_npz_deterministic(a, tiny_images)
    bd.save_npz_deterministic(b, tiny_images)
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["images"], tiny_images)


def _webp(color) -> bytes:
    """A 256x256 RGBA webp: transparent, with an opaque square in the middle."""
    img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (128, 128), color + (255,)), (64, 64))
    buf = _io.BytesIO()
    img.save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def _fake_package(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/assets/{name}")
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    return path


def test_build_end_to_end_offline(tmp_path, home, monkeypatch):
    tgz = _fake_package(tmp_path / "pkg.tgz", {
        "1f600.webp": _webp((250, 200, 0)), "a9-fe0f.webp": _webp((200, 0, 0)),
        "263a.webp": _webp((0, 0, 200)), "1f601.webp": _webp((0, 150, 0)),
    })
    monkeypatch.setattr(bd, "NPM_INTEGRITY", bd.npm_integrity(tgz.read_bytes()))
    test_txt = tmp_path / "emoji-test.txt"
    test_txt.write_text(EMOJI_TEST, encoding="utf-8")
    out = tmp_path / "assets" / "demo"

    summary = bd.build(out, tgz, test_txt)
    assert summary["n_images"] == 4 and summary["n_labelled"] == 3 and summary["unlabelled"] == ["1f601.webp"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no temporary leftovers
    ws = wsp.Workspace(out, read_only=True, overlay=home / "ov")
    assert ws.paths == ["1f600.webp", "1f601.webp", "263a.webp", "a9-fe0f.webp"]
    assert ws.images.shape == (4, 64, 64, 3)
    gt = ws.ground_truth
    assert gt.names == ["face-affection", "face-smiling", "other-symbol"]
    assert [gt.names[i] if i >= 0 else None for i in gt.labels] == \
        ["face-smiling", None, "face-affection", "other-symbol"]
    assert (ws.images[:, 0, 0] == 255).all()                        # transparent -> white
    np.testing.assert_allclose(ws.images[0, 32, 32], (250, 200, 0), atol=2)  # the opaque square
    assert wsp.content_hash(ws.images, ws.paths) == ws.content_hash == summary["content_hash"]

    first = {p.name: p.read_bytes() for p in out.iterdir()}
    bd.build(out, tgz, test_txt)  # a rebuild is byte-identical (creation time kept, fixed zip times)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_build_rejects_changed_package_and_keeps_previous(tmp_path):
    tgz = _fake_package(tmp_path / "pkg.tgz", {"1f600.webp": _webp((1, 2, 3)), "1f601.webp": _webp((4, 5, 6))})
    test_txt = tmp_path / "emoji-test.txt"
    test_txt.write_text(EMOJI_TEST, encoding="utf-8")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(CedmError, match="integrity"):
        bd.build(out, tgz, test_txt)
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    with pytest.raises(CedmError, match="unicode-data"):
        bd.build(out, tgz, tmp_path / "missing.txt")


def test_build_names_an_undecodable_image(tmp_path, monkeypatch):
    tgz = _fake_package(tmp_path / "pkg.tgz", {"1f600.webp": _webp((1, 2, 3)), "1f601.webp": b"RIFF-not-webp"})
    monkeypatch.setattr(bd, "NPM_INTEGRITY", bd.npm_integrity(tgz.read_bytes()))
    test_txt = tmp_path / "emoji-test.txt"
    test_txt.write_text(EMOJI_TEST, encoding="utf-8")
    with pytest.raises(CedmError, match="1f601.webp"):
        bd.build(tmp_path / "demo", tgz, test_txt)
    assert not (tmp_path / "demo").exists()

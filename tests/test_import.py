"""Import from every source format, safely: crafted malicious archives, corrupt files, limits, atomicity."""
import gzip
import hashlib
import io
import os
import pickle
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cedm.cli import main
from cedm.dataset import importers
from cedm.dataset.archives import ImportLimits, member_path, MemberError
from cedm.dataset.imaging import square_resize
from cedm.dataset.importers import default_name, import_dataset
from cedm.dataset.safe_pickle import UnsafePickle, load_data_pickle
from cedm.errors import CedmError

R = 8
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- building synthetic sources -----------------------------------------------------------------
def solid(color, size=(12, 10), mode="RGB"):
    return Image.new(mode, size, color)


def png_bytes(color=RED, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    solid(color, size).save(buf, "PNG")
    return buf.getvalue()


def make_folder(root: Path) -> Path:
    """Nested folder: PNG, JPEG, WebP, GIF, a PNG with a misleading suffix, and a text file."""
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    solid(RED).save(root / "a" / "red.png")
    solid(GREEN).save(root / "b" / "green.jpg", quality=98)
    solid(BLUE).save(root / "b" / "deep" / "blue.webp", lossless=True)
    solid(WHITE).convert("P").save(root / "white.gif")
    (root / "b" / "disguised.dat").write_bytes(png_bytes(RED))  # detected by content, not suffix
    (root / "notes.txt").write_text("not an image")
    return root


EXPECTED_FOLDER = ["a/red.png", "b/deep/blue.webp", "b/disguised.dat", "b/green.jpg", "white.gif"]
EXPECTED_COLORS = [RED, BLUE, RED, GREEN, WHITE]


def zip_of(folder: Path, dest: Path, order=None) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in (order(files) if order else files):
            zf.write(p, p.relative_to(folder).as_posix())
    return dest


def tar_of(folder: Path, dest: Path, mode="w:gz") -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with tarfile.open(dest, mode) as tf:
        for p in reversed(files):  # archive order differs from row order on purpose
            tf.add(p, "./" + p.relative_to(folder).as_posix())
    return dest


def tar_with(dest: Path, entries, mode="w:gz") -> Path:
    """entries: (TarInfo, bytes or None)."""
    with tarfile.open(dest, mode) as tf:
        for ti, data in entries:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return dest


def good_members():
    return [("ok1.png", png_bytes(RED)), ("ok2.png", png_bytes(GREEN))]


def zip_with(dest: Path, entries, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(dest, "w", compression) as zf:
        for name, data in entries:
            if isinstance(name, zipfile.ZipInfo):
                zf.writestr(name, data)
            else:
                zf.writestr(name, data)
    return dest


def tree_hash(p: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        if f.is_file():
            h.update(f.read_bytes())
            h.update(str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()


def workspaces_left(home: Path) -> list[str]:
    d = home / "workspaces"
    return sorted(os.listdir(d)) if d.is_dir() else []


def imp(src, home, name="ds", **kw):
    return import_dataset(src, home=home, name=name, resolution=kw.pop("resolution", R), **kw)


def reasons(ws) -> dict:
    return {s["path"]: s["reason"] for s in ws.import_report["skipped"]}


def assert_color(img, color, tol=12):
    assert np.abs(img.astype(int) - np.array(color)).max() <= tol, (img[0, 0], color)


# --- every source format ------------------------------------------------------------------------
def test_folder_recursive_sorted_by_content(tmp_path, home):
    src = make_folder(tmp_path / "src")
    ws = imp(src, home)
    assert ws.paths == EXPECTED_FOLDER
    assert ws.images.shape == (5, R, R, 3) and ws.images.dtype == np.uint8
    for img, c in zip(ws.images, EXPECTED_COLORS):
        assert_color(img, c)
    rep = ws.import_report
    assert rep["n_found"] == 6 and rep["n_imported"] == 5 and rep["kind"] == "folder"
    assert reasons(ws) == {"notes.txt": "not an image (content not recognised)"}
    assert rep["limits"]["max_ratio"] == 200 and ws.manifest["n_images"] == 5 and ws.ground_truth is None


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"])
def test_archives_give_the_same_rows_as_the_folder(tmp_path, home, kind):
    src = make_folder(tmp_path / "src")
    ref = imp(src, home, name="ref")
    arch = tmp_path / f"src.{kind}"
    if kind == "zip":
        zip_of(src, arch, order=lambda fs: fs[::-1])
    else:
        tar_of(src, arch, mode={"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[kind])
    ws = imp(arch, home, name="arch")
    assert ws.paths == EXPECTED_FOLDER
    np.testing.assert_array_equal(ws.images, ref.images)
    assert ws.content_hash == ref.content_hash
    assert reasons(ws) == {"notes.txt": "not an image (content not recognised)"}
    assert not list((home / "workspaces" / "arch").glob("staging*"))  # the out-of-order staging is gone


def test_npz_with_labels_in_file_order(tmp_path, home):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (7, R, R, 3), dtype=np.uint8)
    y = np.array([3, 1, 10, 2, 3, 1, 10])
    np.savez_compressed(tmp_path / "d.npz", images=x, labels=y)
    ws = imp(tmp_path / "d.npz", home)
    np.testing.assert_array_equal(ws.images, x)  # same size: stored exactly, in file order
    assert ws.paths == [f"{i:06d}" for i in range(7)]
    gt = ws.ground_truth
    assert gt.names == ["1", "2", "3", "10"]  # numeric order
    assert [gt.names[i] for i in gt.labels] == [str(v) for v in y]


def test_npz_first_array_and_x_y_keys(tmp_path, home):
    x = np.zeros((3, 5, 5), np.uint8)
    np.savez(tmp_path / "a.npz", x)
    assert imp(tmp_path / "a.npz", home, name="a").n == 3
    np.savez(tmp_path / "b.npz", y=np.array([0, 1, 0]), x=np.full((3, 5, 5), 9, np.uint8))
    ws = imp(tmp_path / "b.npz", home, name="b")
    assert (ws.images == 9).all() and list(ws.ground_truth.labels) == [0, 1, 0]


def test_npy_grayscale(tmp_path, home):
    x = np.stack([np.full((6, 6), v, np.uint8) for v in (0, 100, 255)])
    np.save(tmp_path / "g.npy", x)
    ws = imp(tmp_path / "g.npy", home)
    assert ws.images.shape == (3, R, R, 3)
    for img, v in zip(ws.images, (0, 100, 255)):
        assert (np.abs(img.astype(int) - v) <= 1).all()


def write_idx(path: Path, arr: np.ndarray):
    blob = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_with_labels(tmp_path, home, gz):
    x = np.zeros((4, 10, 10), np.uint8)
    for i in range(4):
        x[i, :, : 2 + 2 * i] = 255  # a white bar of growing width
    y = np.array([7, 0, 7, 1], np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", y)
    ws = imp(tmp_path / f"train-images-idx3-ubyte{sfx}", home)
    assert ws.import_report["kind"] == "idx" and ws.n == 4
    means = ws.images.mean(axis=(1, 2, 3))
    assert list(np.argsort(means)) == [0, 1, 2, 3]
    assert [ws.ground_truth.names[i] for i in ws.ground_truth.labels] == ["7", "0", "7", "1"]


def py2_cifar_pickle(d: dict) -> bytes:
    """A protocol-2 pickle exactly as Python 2's cPickle wrote the CIFAR batches (str = BINSTRING)."""
    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def array(a: np.ndarray) -> bytes:
        return (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R("
                + i(1) + b"(" + b"".join(i(n) for n in a.shape) + b"t"
                + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1)
                + i(0) + b"tb\x89" + s(a.tobytes()) + b"tb")

    out = b"\x80\x02}("
    for k, v in d.items():
        out += s(k.encode())
        if isinstance(v, np.ndarray):
            out += array(v)
        else:
            out += b"](" + b"".join(i(x) if isinstance(x, int) else s(x) for x in v) + b"e"
    return out + b"u."


def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n HWC images and their CIFAR (N, 3072) channel-major rows."""
    hwc = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return hwc, hwc.transpose(0, 3, 1, 2).reshape(n, 3072).copy()


def make_cifar10(path: Path, protocol2_py3: bool = False):
    names = ["airplane", "automobile", "bird"]
    imgs, entries = {}, []
    # archive order as in the real tarball: not sorted, metadata after some batches
    for batch, n, seed in (("data_batch_2", 3, 2), ("test_batch", 2, 3), ("data_batch_1", 4, 1)):
        hwc, rows = cifar_rows(n, seed)
        labels = [(k + seed) % 3 for k in range(n)]
        imgs[batch] = (hwc, labels)
        d = {"batch_label": [b"x"], "labels": labels, "data": rows, "filenames": [b"f%d.png" % k for k in range(n)]}
        if protocol2_py3:
            d = {k.encode(): v for k, v in d.items()}
            blob = pickle.dumps(d, protocol=2)
        else:
            blob = py2_cifar_pickle(d)
        entries.append((f"cifar-10-batches-py/{batch}", blob))
    entries.append(("cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [n.encode() for n in names],
                                                                      b"num_vis": 3072}, protocol=2)))
    entries.append(("cifar-10-batches-py/readme.html", b"<html></html>"))
    tar_with(path, [(tarfile.TarInfo(n), b) for n, b in entries])
    return imgs, names


@pytest.mark.parametrize("py3", [False, True])
def test_cifar10_tarball(tmp_path, home, py3):
    imgs, names = make_cifar10(tmp_path / "cifar-10-python.tar.gz", protocol2_py3=py3)
    ws = import_dataset(tmp_path / "cifar-10-python.tar.gz", home=home, resolution=32)
    assert ws.name == "cifar-10-python" and ws.import_report["kind"] == "cifar10"
    order = ["data_batch_1", "data_batch_2", "test_batch"]
    assert ws.paths == [f"{b}/{i:05d}" for b in order for i in range(len(imgs[b][1]))]
    np.testing.assert_array_equal(ws.images, np.concatenate([imgs[b][0] for b in order]))
    assert ws.ground_truth.names == names
    assert [ws.ground_truth.names[i] for i in ws.ground_truth.labels] == \
        [names[lab] for b in order for lab in imgs[b][1]]
    assert reasons(ws) == {"cifar-10-batches-py/readme.html": "not a CIFAR batch for this split"}
    assert ws.import_report["n_found"] == 9


def test_cifar_split(tmp_path, home):
    make_cifar10(tmp_path / "c.tar.gz")
    ws = import_dataset(tmp_path / "c.tar.gz", home=home, name="train", resolution=16, split="train")
    assert ws.n == 7 and all(p.startswith("data_batch_") for p in ws.paths) and ws.resolution == 16
    ws = import_dataset(tmp_path / "c.tar.gz", home=home, name="test", resolution=16, split="test")
    assert ws.paths == ["test_batch/00000", "test_batch/00001"]


def test_cifar100_fine_labels(tmp_path, home):
    hwc, rows = cifar_rows(5, 0)
    train = {"data": rows, "fine_labels": [4, 0, 4, 2, 1], "coarse_labels": [0] * 5, "filenames": [b"a"] * 5}
    hwc_t, rows_t = cifar_rows(2, 9)
    test = {"data": rows_t, "fine_labels": [3, 3], "coarse_labels": [0, 0], "filenames": [b"b"] * 2}
    meta = {"fine_label_names": ["apple", "bee", "cup", "dolphin", "elephant"], "coarse_label_names": ["x"]}
    tar_with(tmp_path / "cifar-100-python.tar.gz", [
        (tarfile.TarInfo("cifar-100-python/test"), pickle.dumps(test)),  # default protocol (5)
        (tarfile.TarInfo("cifar-100-python/meta"), pickle.dumps(meta)),
        (tarfile.TarInfo("cifar-100-python/train"), pickle.dumps(train)),
    ])
    ws = import_dataset(tmp_path / "cifar-100-python.tar.gz", home=home, name="c100", resolution=32)
    assert ws.import_report["kind"] == "cifar100"
    np.testing.assert_array_equal(ws.images, np.concatenate([hwc, hwc_t]))
    assert [ws.ground_truth.names[i] for i in ws.ground_truth.labels] == \
        ["elephant", "apple", "elephant", "cup", "bee", "dolphin", "dolphin"]


def test_malicious_cifar_pickle_is_never_executed(tmp_path, home):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _, rows = cifar_rows(3, 0)
    good = pickle.dumps({b"data": rows, b"labels": [0, 1, 2]}, protocol=2)
    tar_with(tmp_path / "c.tar.gz", [(tarfile.TarInfo("cifar-10-batches-py/data_batch_1"), pickle.dumps({"data": Evil()}, protocol=2)),
                                     (tarfile.TarInfo("cifar-10-batches-py/data_batch_2"), good)])
    ws = imp(tmp_path / "c.tar.gz", home)
    assert not marker.exists()
    assert ws.n == 3 and "posix.system" in reasons(ws)["cifar-10-batches-py/data_batch_1"]


@pytest.mark.parametrize("payload", [
    pickle.dumps({"data": eval}, protocol=2),  # builtins.eval
    pickle.dumps(np.array([{"a": 1}], dtype=object)),  # an object array can hide anything
    b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.",
    b"\x80\x02(X\x01\x00\x00\x00xo.",  # OBJ opcode
    b"\x80\x02}",  # no STOP
])
def test_safe_pickle_refuses(payload):
    with pytest.raises(UnsafePickle):
        load_data_pickle(payload)


def test_safe_pickle_reads_data_like_pickle():
    d = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "x": [1, -2, 2**70, b"s", "t", None, True, 1.5],
         "big": np.arange(3, dtype=">i4"), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "t": (1, (2,))}
    for proto in (2, 3, 4, 5):
        got = load_data_pickle(pickle.dumps(d, protocol=proto))
        assert got.keys() == d.keys() and got["x"] == d["x"] and got["t"] == d["t"]
        for k in (b"data", "big", "f"):
            np.testing.assert_array_equal(got[k], d[k])


def test_labels_csv_kept_as_ground_truth(tmp_path, home):
    src = make_folder(tmp_path / "src")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na/red.png,warm\n./b/green.jpg,cool\nb\\deep\\blue.webp,cool\nmissing.png,warm\n")
    ws = imp(src, home, labels_csv=csv)
    gt = ws.ground_truth
    got = {p: (gt.names[i] if i >= 0 else None) for p, i in zip(ws.paths, gt.labels)}
    assert got == {"a/red.png": "warm", "b/deep/blue.webp": "cool", "b/disguised.dat": None,
                   "b/green.jpg": "cool", "white.gif": None}
    assert ws.import_report["labels"]["matched"] == 3
    # the same CSV applies to the zip of the folder
    ws2 = imp(zip_of(src, tmp_path / "s.zip"), home, name="z", labels_csv=csv)
    np.testing.assert_array_equal(ws2.ground_truth.labels, gt.labels)


def test_labels_csv_inside_a_zip_is_the_ground_truth(tmp_path, home):
    """A labels.csv (path,label) inside an upload is used as the ground truth (paths relative to its folder),
    not skipped as "not an image"."""
    src = make_folder(tmp_path / "src")
    (src / "labels.csv").write_text("path,label\na/red.png,warm\nb/green.jpg,cool\n")
    ws = imp(zip_of(src, tmp_path / "s.zip"), home)
    got = {p: (ws.ground_truth.names[i] if i >= 0 else None) for p, i in zip(ws.paths, ws.ground_truth.labels)}
    assert got["a/red.png"] == "warm" and got["b/green.jpg"] == "cool" and got["white.gif"] is None
    assert "labels.csv" not in ws.paths and "labels.csv" not in reasons(ws)
    assert ws.import_report["labels"] == {"csv": "labels.csv", "rows": 2, "matched": 2}
    # one folder down (a zip of a folder): paths are relative to the CSV's own folder
    nested = tmp_path / "nested"
    nested.mkdir()
    (src / "labels.csv").rename(src / "b" / "labels.csv")
    (src / "b" / "labels.csv").write_text("green.jpg,cool\ndeep/blue.webp,cool\n")
    ws2 = imp(zip_of(src, tmp_path / "n.zip"), home, name="n")
    gt2 = ws2.ground_truth
    assert {p for p, i in zip(ws2.paths, gt2.labels) if i >= 0} == {"b/green.jpg", "b/deep/blue.webp"}


def test_idx_folder_as_distributed_imports_with_labels(tmp_path, home):
    """The four Fashion-MNIST files in one folder (train and t10k, images and labels, gzipped)."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (5, 28, 28), np.uint8), rng.integers(0, 256, (3, 28, 28), np.uint8)
    y_train, y_test = np.array([0, 9, 3, 3, 1], np.uint8), np.array([2, 0, 9], np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    ws = imp(folder, home, resolution=28)
    assert ws.n == 8 and ws.import_report["kind"] == "idx"
    assert ws.paths[:3] == ["t10k/000000", "t10k/000001", "t10k/000002"] and ws.paths[3] == "train/000000"
    got = [ws.ground_truth.names[i] for i in ws.ground_truth.labels]
    assert got == [str(v) for v in list(y_test) + list(y_train)]
    np.testing.assert_array_equal(ws.images[3][..., 0], x_train[0])  # grey at the same size: unchanged


@pytest.mark.parametrize("text", ["a/red.png\n", "a/red.png,x\na/red.png,y\n", "path,label\n"])
def test_bad_labels_csv(tmp_path, home, text):
    src = make_folder(tmp_path / "src")
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(CedmError):
        imp(src, home, labels_csv=tmp_path / "l.csv")
    assert workspaces_left(home) == []


# --- image modes ---------------------------------------------------------------------------------
def test_modes_exif_16bit_cmyk_la_palette(tmp_path, home):
    src = tmp_path / "modes"
    src.mkdir()
    # EXIF orientation 6 (rotate 90 clockwise): the left half (red) must end up on top
    im = Image.new("RGB", (20, 10), BLUE)
    im.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(src / "1_exif.jpg", exif=exif, quality=98)
    a16 = np.zeros((8, 8), np.uint16)
    a16[:, 4:] = 65535
    Image.fromarray(a16).save(src / "2_16bit.png")
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # = red
    cmyk.save(src / "3_cmyk.tif")
    la = Image.new("LA", (8, 8), (0, 255))
    la.paste((0, 0), (0, 0, 8, 4))  # top half fully transparent -> white
    la.save(src / "4_la.png")
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(0, (0, 0, 8, 4))
    p.save(src / "5_p.gif", transparency=0)  # index 0 transparent
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.save(src / "6_rgba.png")
    ws = imp(src, home)
    ex, b16, cm, la_, pal, rgba_ = ws.images
    assert_color(ex[0, R - 1], RED, 40) and assert_color(ex[R - 1, 0], BLUE, 40)  # rotated: red on top
    assert ex[0, R - 1, 0] > 200 and ex[0, R - 1, 2] < 60
    assert (b16[:, 0] < 5).all() and (b16[:, -1] > 250).all()
    assert_color(cm, RED, 2)
    assert_color(la_[0], WHITE, 2) and assert_color(la_[-1], (0, 0, 0), 2)
    assert_color(pal[0], WHITE, 2) and assert_color(pal[-1], GREEN, 2)
    assert_color(rgba_, WHITE, 2)


@pytest.mark.parametrize("shape", [(28, 28), (9, 30), (40, 17, 3), (5, 5, 1), (12, 7, 4), (8, 8, 3), (100, 90)])
def test_array_fast_path_equals_square_resize(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ref = square_resize(Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a), R)
    np.testing.assert_array_equal(importers.array_to_rgb(a, R), ref)


# --- bad input ---------------------------------------------------------------------------------
def test_member_path_rules():
    assert member_path("./a//b/./c.png") == "a/b/c.png"
    for bad, why in [("../x.png", "traversal"), ("a/../../x", "traversal"), ("a\\..\\x", "traversal"),
                     ("/etc/passwd", "absolute"), ("C:/x.png", "absolute"), ("\\\\srv\\x", "absolute"),
                     ("a\x00b", "control")]:
        with pytest.raises(MemberError, match=why):
            member_path(bad)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_traversal_absolute_symlink_nested_duplicate(tmp_path, home):
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    inner = zip_with(tmp_path / "inner.zip", good_members()).read_bytes()
    (tmp_path / "in").mkdir()
    z = zip_with(tmp_path / "in" / "evil.zip", good_members() + [
        ("../escape.png", png_bytes()), ("a/../../escape2.png", png_bytes()), ("/abs.png", png_bytes()),
        (link, "/etc/passwd"), ("inner.zip", inner), ("sneaky.png", inner),
        ("ok1.png", png_bytes(BLUE)),
    ])
    before = tree_hash(z.parent)
    ws = imp(z, home)
    assert ws.paths == ["ok1.png", "ok2.png"]
    assert_color(ws.images[0], RED)  # the first of two duplicate names wins; the second is reported
    r = ws.import_report["skipped"]
    why = {s["path"]: s["reason"] for s in r}
    assert "traversal" in why["../escape.png"] and "traversal" in why["a/../../escape2.png"]
    assert "absolute" in why["/abs.png"] and "symbolic link" in why["link.png"]
    assert "nested archive" in why["inner.zip"] and "nested archive" in why["sneaky.png"]
    assert any("duplicate" in s["reason"] for s in r)
    assert not (tmp_path.parent / "escape.png").exists() and not Path("/abs.png").exists()
    assert tree_hash(z.parent) == before  # nothing written next to the source


def test_tar_links_devices_traversal(tmp_path, home):
    def ti(name, kind=tarfile.REGTYPE, target=""):
        t = tarfile.TarInfo(name)
        t.type, t.linkname = kind, target
        return t

    t = tar_with(tmp_path / "evil.tar", [(ti(n), d) for n, d in good_members()] + [
        (ti("../up.png"), png_bytes()), (ti("/abs.png"), png_bytes()),
        (ti("sym.png", tarfile.SYMTYPE, "/etc/passwd"), None), (ti("hard.png", tarfile.LNKTYPE, "ok1.png"), None),
        (ti("fifo", tarfile.FIFOTYPE), None), (ti("dev", tarfile.CHRTYPE), None),
        (ti("nested.tar.gz"), gzip.compress(b"x" * 600)),
    ], mode="w")
    ws = imp(t, home)
    assert ws.paths == ["ok1.png", "ok2.png"]
    why = reasons(ws)
    assert "traversal" in why["../up.png"] and "absolute" in why["/abs.png"]
    assert why["sym.png"] == "symbolic link" and why["hard.png"] == "hard link"
    assert why["fifo"] == why["dev"] == "device or fifo" and "nested archive" in why["nested.tar.gz"]


def test_zip_bomb_member_skipped_by_ratio(tmp_path, home):
    z = zip_with(tmp_path / "bomb.zip", good_members() + [("bomb.png", b"\0" * (3 << 20))])
    ws = imp(z, home)
    assert ws.n == 2 and "compression ratio" in reasons(ws)["bomb.png"]


def test_zip_lying_header_caught_while_reading(tmp_path, home):
    z = zip_with(tmp_path / "lie.zip", good_members() + [("liar.png", b"\0" * (8 << 20))])
    data = bytearray(z.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the last central-directory entry is liar.png
    struct.pack_into("<I", data, cd + 24, 1000)  # declare 1000 bytes uncompressed: the ratio looks harmless
    z.write_bytes(bytes(data))
    ws = imp(z, home)
    assert ws.n == 2 and "does not match its header" in reasons(ws)["liar.png"]


def test_targz_bomb_refused_whole(tmp_path, home):
    t = tar_with(tmp_path / "bomb.tar.gz", [(tarfile.TarInfo(n), d) for n, d in good_members()]
                 + [(tarfile.TarInfo("zeros.bin"), b"\0" * (16 << 20))])
    with pytest.raises(CedmError, match="compression ratio"):
        imp(t, home)
    assert workspaces_left(home) == []


def test_total_size_and_member_count_limits(tmp_path, home):
    z = zip_with(tmp_path / "many.zip", [(f"{i}.png", png_bytes()) for i in range(10)])
    with pytest.raises(CedmError, match="more than 5 entries"):
        imp(z, home, limits=ImportLimits(max_members=5))
    with pytest.raises(CedmError, match="declares"):
        imp(z, home, limits=ImportLimits(max_total_bytes=500))
    t = tar_of(make_folder(tmp_path / "src"), tmp_path / "s.tar.gz")
    with pytest.raises(CedmError, match="more than"):
        imp(t, home, limits=ImportLimits(max_total_bytes=300))
    with pytest.raises(CedmError, match="more than 3 entries"):
        imp(tmp_path / "src", home, limits=ImportLimits(max_members=3))
    assert workspaces_left(home) == []
    with pytest.raises(CedmError, match="only 0 usable"):  # every member is over the per-file limit
        imp(z, home, limits=ImportLimits(max_file_bytes=60))
    assert workspaces_left(home) == []


def test_per_file_limit(tmp_path, home):
    big = png_bytes(size=(300, 300))
    z = zip_with(tmp_path / "f.zip", good_members() + [("big.png", big)], compression=zipfile.ZIP_STORED)
    ws = imp(z, home, limits=ImportLimits(max_file_bytes=len(big) - 1))
    assert "per-file limit" in reasons(ws)["big.png"] and ws.n == 2


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels (the data is tiny)."""
    data = bytearray(png_bytes(RED, (1, 1)))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_pixel_bombs_corrupt_and_non_images_skipped(tmp_path, home):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in good_members():
        (src / name).write_bytes(data)
    (src / "huge.png").write_bytes(huge_png(30000, 30000))  # 900 Mpx: over PIL's own hard limit too
    (src / "large.png").write_bytes(huge_png(9000, 9000))  # 81 Mpx: over our 64 Mpx default only
    (src / "truncated.png").write_bytes(png_bytes(size=(64, 64))[:60])
    (src / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (src / "empty.png").write_bytes(b"")
    (src / "data.csv").write_text("a,b\n1,2\n")
    (src / "arr.bin").write_bytes(b"\x93NUMPY" + b"\0" * 100)
    ws = imp(src, home)
    why = reasons(ws)
    assert ws.paths == ["ok1.png", "ok2.png"]
    assert "pixels" in why["huge.png"] and "81 megapixels" in why["large.png"]
    assert why["truncated.png"].startswith("corrupt image") and why["garbage.jpg"].startswith(("corrupt", "not an"))
    assert why["data.csv"] == why["empty.png"] == "not an image (content not recognised)"
    assert "numpy" in why["arr.bin"]
    solid(BLUE, (20, 20)).save(src / "mid.png")
    small = imp(src, home, name="small", limits=ImportLimits(max_image_pixels=300))  # 12x10 passes, 20x20 not
    assert small.paths == ["ok1.png", "ok2.png"] and "400 px, over the 300 px limit" in reasons(small)["mid.png"]


def test_truncated_targz_imports_what_precedes_the_damage(tmp_path, home):
    t = tar_with(tmp_path / "t.tar.gz", [(tarfile.TarInfo(f"{i}.png"), png_bytes(size=(64, 64))) for i in range(4)]
                 + [(tarfile.TarInfo("z.bin"), os.urandom(200_000))])
    t.write_bytes(t.read_bytes()[:-60_000])
    ws = imp(t, home)
    assert ws.paths == [f"{i}.png" for i in range(4)]
    assert "corrupt or truncated" in reasons(ws)["t.tar.gz"]


@pytest.mark.parametrize("make", [
    lambda p: np.save(p / "f.npy", np.zeros((3, 4, 4), np.float32)),
    lambda p: np.save(p / "f.npy", np.zeros((3, 4, 4, 7), np.uint8)),
    lambda p: np.save(p / "f.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True),
    lambda p: np.savez(p / "f.npz", images=np.array([{"a": 1}] * 3, dtype=object)),
    lambda p: np.savez_compressed(p / "f.npz", images=np.zeros((4096, 32, 32), np.uint8)),  # ratio bomb
    lambda p: (p / "f.bin").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 10**6, 28, 28) + b"\0" * 100),
    lambda p: np.savez(p / "f.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([1, 2])),
    lambda p: Image.new("RGB", (5, 5)).save(p / "f.png"),
    lambda p: (p / "f.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\0" * 50),
])
def test_unusable_sources_are_clear_errors(tmp_path, home, make):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    (f,) = list(src.iterdir())
    with pytest.raises(CedmError):
        imp(f, home, limits=ImportLimits(ratio_min_bytes=1 << 16))
    assert workspaces_left(home) == []


def test_fewer_than_two_images_and_failures_leave_nothing(tmp_path, home, monkeypatch):
    src = tmp_path / "one"
    src.mkdir()
    solid(RED).save(src / "only.png")
    (src / "x.txt").write_text("x")
    with pytest.raises(CedmError, match="only 1 usable image"):
        imp(src, home)
    assert workspaces_left(home) == []
    with pytest.raises(CedmError, match="no such file"):
        imp(tmp_path / "missing", home)
    # a crash halfway through decoding leaves no workspace and no temporary folder
    big = make_folder(tmp_path / "src")
    calls = {"n": 0}
    real = importers.decode_image

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(importers, "decode_image", flaky)
    with pytest.raises(RuntimeError):
        imp(big, home)
    assert workspaces_left(home) == []


def test_source_never_modified_and_existing_workspace(tmp_path, home):
    src = make_folder(tmp_path / "src")
    z = zip_of(src, tmp_path / "s.zip")
    t = tar_of(src, tmp_path / "s.tar.gz")
    before = [tree_hash(p) for p in (src, z, t)]
    imp(src, home, name="a")
    imp(z, home, name="b")
    imp(t, home, name="c")
    assert [tree_hash(p) for p in (src, z, t)] == before
    with pytest.raises(CedmError, match="already exists"):
        imp(src, home, name="a")
    ws = imp(src, home, name="a", resolution=16, overwrite=True)
    assert ws.resolution == 16 and workspaces_left(home) == ["a", "b", "c"]


def test_progress_callback_and_determinism(tmp_path, home):
    src = make_folder(tmp_path / "src")
    seen = []
    a = imp(src, home, name="a", progress=lambda d, t, desc: seen.append((d, t)))
    b = imp(src, home, name="b")
    assert seen[-1] == (6, 6) and all(t == 6 for _, t in seen)  # 6 candidates, 5 images
    assert a.content_hash == b.content_hash


def test_default_name():
    assert default_name("/x/cifar-10-python.tar.gz") == "cifar-10-python"
    assert default_name("/x/train-images-idx3-ubyte.gz") == "train-images-idx3-ubyte"
    assert default_name("/x/My Photos (2024)") == "My-Photos-2024"
    assert default_name("/x/demo.zip") == "demo-import"


# --- command line -------------------------------------------------------------------------------
def test_cli_subprocess(tmp_path):
    src = make_folder(tmp_path / "src")
    env = {**os.environ, "CEDM_HOME": str(tmp_path / "h")}
    r = subprocess.run([sys.executable, "-m", "cedm", "import", str(src), "--name", "pics", "--resolution", "8"],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    assert "imported 5 images" in r.stdout and "1 skipped" in r.stdout and "notes.txt" in r.stdout
    assert (tmp_path / "h" / "workspaces" / "pics" / "manifest.json").is_file()


def test_cli_in_process(tmp_path, home, capsys):
    src = make_folder(tmp_path / "src")
    (tmp_path / "l.csv").write_text("a/red.png,warm\n")
    assert main(["import", str(src), "--home", str(home), "--resolution", "8", "--labels", str(tmp_path / "l.csv")]) == 0
    out = capsys.readouterr().out
    assert "into workspace 'src'" in out and "1 classes for 1 images" in out
    assert main(["import", str(src), "--home", str(home), "--name", "m", "--max-members", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--max-members" in err
    assert main(["import", str(tmp_path / "nope"), "--home", str(home)]) == 2
    assert main(["import", str(src), "--home", str(home), "--name", "bad/name"]) == 2
    assert main(["import", str(src), "--home", str(home), "--name", "r", "--max-ratio", "0"]) == 2
    assert workspaces_left(home) == ["src"]

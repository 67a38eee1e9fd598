"""Import a dataset into a new workspace: a folder, .zip, .tar(.gz), .npy/.npz, IDX (MNIST) or CIFAR tarball.

Two passes: list what the source holds (so the workspace's image array can be allocated at its final
size), then decode one image at a time straight into that memory-mapped array. Rows are in a
deterministic order: sorted relative paths for folders and archives, file order for arrays. Anything that
cannot be used is skipped and listed with its reason in the import report; labels found in the source
(or given as a CSV of path,label) are kept as ground truth for evaluation only.
"""
from __future__ import annotations

import csv
import io
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from cedm.dataset import archives
from cedm.dataset.archives import ImportLimits, Member, MemberError, sniff_archive
from cedm.dataset.imaging import square_resize
from cedm.dataset.safe_pickle import UnsafePickle, load_data_pickle
from cedm.errors import CedmError
from cedm.workspace import DEMO_NAME, Workspace, WorkspaceBuilder, open_workspace

# Formats decoded by Pillow alone (EPS, for example, would run Ghostscript on user data: not listed).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO", "QOI", "AVIF",
                 "JPEG2000", "PCX", "SGI", "SUN")
Image.init()  # register every plugin so the allow-list can be checked against them
IMAGE_FORMATS = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
_CIFAR10_TRAIN = re.compile(r"^data_batch_(\d+)$")
_CIFAR_BYTES = 32 * 32 * 3
Progress = Callable[[int, int, str], None]


# --- small helpers ------------------------------------------------------------------------------
def default_name(source: str | Path) -> str:
    """A workspace name from the source's file or folder name, without archive suffixes."""
    stem = Path(source).resolve().name
    for suffix in (".gz", ".bz2", ".xz", ".tgz", ".tar", ".zip", ".npz", ".npy"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
    if stem.lower().endswith(".tar"):
        stem = stem[:-4]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64] or "dataset"
    return "demo-import" if name == DEMO_NAME else name


class _Progress:
    """tqdm on a terminal when no callback is given; else ``fn(done, total, desc)`` about every 1%."""

    def __init__(self, progress: Progress | None, total: int, desc: str):
        self.fn, self.total, self.desc, self.done = progress, total, desc, 0
        self.step = max(1, total // 100)
        self.bar = None
        if progress is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.fn is not None and (self.done % self.step == 0 or self.done >= self.total):
            self.fn(self.done, self.total, self.desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _norm_path(p: str) -> str:
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """``path,label`` rows (an optional header row ``path,label``) -> {relative path: label}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CedmError(f"cannot read labels CSV {path}: {e}") from None
    return parse_labels_csv(text, path)


def parse_labels_csv(text: str, path: str | Path = "labels.csv", base: str = "") -> dict[str, str]:
    """``path,label`` rows of a CSV text -> {path: label}; paths are taken relative to folder ``base``."""
    path = Path(path)
    out: dict[str, str] = {}
    for i, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if i == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise CedmError(f"{path.name} line {i}: expected 'path,label', got {','.join(row)!r}")
        p, label = _norm_path(row[0]), row[1].strip()
        p = f"{base.rstrip('/')}/{p}" if base else p
        if out.get(p, label) != label:
            raise CedmError(f"{path.name} line {i}: {p!r} has two different labels")
        out[p] = label
    if not out:
        raise CedmError(f"{path.name} has no path,label rows")
    return out


def label_order(labels) -> list[str]:
    """Distinct labels, numerically when all are integers (so '10' follows '9'), else alphabetically."""
    names = {lab for lab in labels if lab is not None}
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def decode_image(src: bytes | bytearray | Path, resolution: int, limits: ImportLimits) -> np.ndarray:
    """Decode one image file (bytes or a path) to uint8 (R, R, 3); raises MemberError with the reason."""
    if isinstance(src, Path):
        with open(src, "rb") as f:
            head = f.read(512)
        fp = src
    else:
        head, fp = src[:512], io.BytesIO(src)
    kind = sniff_archive(head)
    if kind:
        raise MemberError(f"nested archive ({kind}; not opened: extract it and import it separately)")
    if head.startswith(b"\x93NUMPY"):
        raise MemberError("numpy array file (import it on its own)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with Image.open(fp, formats=IMAGE_FORMATS) as img:
                w, h = img.size  # from the header: nothing decoded yet
                if w * h > limits.max_image_pixels:
                    raise MemberError(f"{w}x{h} is {_pixels(w * h)}, over the {_pixels(limits.max_image_pixels)} "
                                      "limit (possible decompression bomb)")
                if w * h == 0:
                    raise MemberError("empty image")
                return square_resize(img, resolution)
    except MemberError:
        raise
    except Image.DecompressionBombError as e:
        raise MemberError(f"too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise MemberError("not an image (content not recognised)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted data means: skip this file
        raise MemberError(f"corrupt image ({type(e).__name__}: {e})") from None


def _pixels(n: int) -> str:
    return f"{n / 1e6:,.0f} megapixels" if n >= 10**6 else f"{n} px"


def array_to_rgb(a: np.ndarray, resolution: int) -> np.ndarray:
    """One uint8 image (H, W), (H, W, 1|3|4) -> (R, R, 3), pixel for pixel what ``square_resize`` gives.

    Arrays carry no EXIF and gray or RGB needs no conversion, so crop and resize directly (gray in one
    channel, then repeated): the same filter on the same pixels, about twice as fast for MNIST-like data.
    """
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] != 3:  # RGBA: composite onto white like any image file
        return square_resize(Image.fromarray(np.ascontiguousarray(a)), resolution)
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    a = a[top:top + s, left:left + s]
    if s != resolution:
        img = Image.fromarray(np.ascontiguousarray(a))
        a = np.asarray(img.resize((resolution, resolution), Image.LANCZOS,
                                  reducing_gap=3.0 if s > 2 * resolution else None))
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else np.ascontiguousarray(a)


# --- row writing --------------------------------------------------------------------------------
class _Sink:
    """Writes rows into the builder in row order. A compressed tar can only be read in archive order, so
    its rows are staged by final position in a memory map inside the workspace's temporary folder first."""

    def __init__(self, builder: WorkspaceBuilder, capacity: int, ordered: bool):
        self.b, self.ordered = builder, ordered
        if not ordered:
            r = builder.resolution
            self.file = builder.tmp / "staging.npy"
            self.stage = np.lib.format.open_memmap(self.file, mode="w+", dtype=np.uint8, shape=(capacity, r, r, 3))
            self.rows: list[tuple[str, object] | None] = [None] * capacity

    def put(self, slot: int, image: np.ndarray, path: str, label) -> None:
        if self.ordered:
            self.b.add(image, path, label)
        else:
            self.stage[slot] = image
            self.rows[slot] = (path, label)

    def close(self, label_fn: Callable = lambda x: x) -> None:
        if self.ordered:
            return
        for slot, row in enumerate(self.rows):
            if row is not None:
                self.b.add(np.asarray(self.stage[slot]), row[0], label_fn(row[1]))
        del self.stage
        self.file.unlink()


@dataclass
class _Plan:
    """What the first pass found: enough to allocate the workspace and run the second pass."""

    kind: str
    capacity: int
    n_found: int
    skipped: list
    fill: Callable  # fill(sink, progress) -> (label_fn, label_names): decodes every row into the sink
    ordered: bool = True


# --- image collections: folders and archives ----------------------------------------------------
LABELS_CSV = "labels.csv"


def _labels_member(src: archives.Source, members: list[Member]) -> tuple[list[Member], dict | None, str | None]:
    """A ``labels.csv`` (path,label) inside a folder or archive (the shallowest one): read as the ground truth,
    its paths relative to its own folder. Returns (the other members, {path: label} or None, its path)."""
    found = sorted((m for m in members if m.path.rsplit("/", 1)[-1].lower() == LABELS_CSV),
                   key=lambda m: (m.path.count("/"), m.path))
    if not found or not src.random_access:
        return members, None, None
    m = found[0]
    for _, data in src.read([m]):
        if isinstance(data, MemberError):
            raise CedmError(f"{m.path}: {data}")
        raw = data.read_bytes() if isinstance(data, Path) else bytes(data)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CedmError(f"{m.path} is not UTF-8 text") from None
        base = m.path.rsplit("/", 1)[0] if "/" in m.path else ""
        return [x for x in members if x is not m], parse_labels_csv(text, m.path, base), m.path
    return members, None, None


def idx_image_files(folder: Path) -> list[Path]:
    """IDX images files in a folder as distributed (train-images-idx3-ubyte[.gz], t10k-images-...)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and "idx3" in p.name and "images" in p.name)


def _plan_idx_folder(folder: Path, files: list[Path], limits: ImportLimits, resolution: int,
                     csv_labels: dict[str, str] | None) -> _Plan:
    """Every IDX images file of the folder (train, then test), each with its labels file as ground truth."""
    parts, labels, paths = [], [], []
    for f in files:
        images = _check_image_array(_read_idx(f, limits), f.name)
        if parts and images.shape[1:] != parts[0].shape[1:]:
            raise CedmError(f"{f.name}: images of shape {images.shape[1:]}, but {files[0].name} has "
                            f"{parts[0].shape[1:]}")
        lab_file = idx_labels_file(f)
        y = _check_labels(_read_idx(lab_file, limits), len(images), lab_file.name) if lab_file else None
        stem = f.name.split("-images")[0]
        parts.append(images)
        labels += y if y is not None else [None] * len(images)
        paths += [f"{stem}/{i:06d}" for i in range(len(images))]
    has_labels = any(lab is not None for lab in labels)
    return _plan_arrays("idx", np.concatenate(parts), labels if has_labels else None, resolution, csv_labels,
                        paths=paths)


def _plan_collection(src: archives.Source, kind: str, members: list[Member], skipped: list, resolution: int,
                     limits: ImportLimits, csv_labels: dict[str, str] | None) -> _Plan:
    slot = {m.index: k for k, m in enumerate(members)}

    def fill(sink: _Sink, bar: _Progress):
        seen = set()
        for m, data in src.read(members):
            if isinstance(data, MemberError):
                skipped.append({"path": m.path, "reason": str(data)})
            else:
                try:
                    label = csv_labels.get(m.path) if csv_labels else None
                    sink.put(slot[m.index], decode_image(data, resolution, limits), m.path, label)
                    seen.add(label)
                except MemberError as e:
                    skipped.append({"path": m.path, "reason": str(e)})
            bar.advance()
        return (lambda x: x), label_order(seen)

    return _Plan(kind, len(members), src.n_entries, skipped, fill, ordered=src.random_access)


# --- arrays: npy, npz, IDX ----------------------------------------------------------------------
def _check_image_array(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype != np.uint8:
        raise CedmError(f"{what}: expected uint8 images, got dtype {a.dtype}")
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[3] in (1, 3, 4))) or min(a.shape) == 0:
        raise CedmError(f"{what}: expected images of shape (N, H, W) or (N, H, W, 3), got {a.shape}")
    return a


def _check_labels(y: np.ndarray | None, n: int, what: str) -> list[str] | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise CedmError(f"{what}: labels must be {n} integers, got {y.dtype} {y.shape}")
    return [str(int(v)) for v in y]


def _plan_arrays(kind: str, images: np.ndarray, labels: list[str] | None, resolution: int,
                 csv_labels: dict[str, str] | None, skipped: list | None = None,
                 paths: list[str] | None = None) -> _Plan:
    n = len(images)
    paths = paths or [f"{i:06d}" for i in range(n)]
    if csv_labels:
        labels = [csv_labels.get(p) for p in paths]

    def fill(sink: _Sink, bar: _Progress):
        for i in range(n):
            sink.put(i, array_to_rgb(images[i], resolution), paths[i], labels[i] if labels else None)
            bar.advance()
        return (lambda x: x), (label_order(labels) if labels else None)

    return _Plan(kind, n, n, skipped or [], fill)


def _load_npy(path: Path, limits: ImportLimits) -> np.ndarray:
    if path.stat().st_size > limits.max_total_bytes:
        raise CedmError(f"{path.name} is larger than the {limits.max_total_bytes >> 20} MB limit (--max-total-mb)")
    try:  # memory-mapped: nothing is read until a row is used; never unpickles
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CedmError(f"{path.name} is not a readable .npy array of images ({e})") from None


def _load_npz(path: Path, limits: ImportLimits) -> tuple[np.ndarray, np.ndarray | None]:
    """Images from key 'images' or 'x' (else the first array); labels from 'labels' or 'y' if present."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CedmError(f"{path.name} is not a readable .npz file ({e})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_members:
            raise CedmError(f"{path.name} holds more than {limits.max_members} arrays")
        by_key = {}
        for info in infos:
            try:
                archives.member_path(info.filename)
            except MemberError as e:
                raise CedmError(f"{path.name}: unsafe member name {info.filename!r} ({e})") from None
            if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise CedmError(f"{path.name}: {info.filename} has compression ratio over {limits.max_ratio:g} "
                                "(possible decompression bomb; raise --max-ratio if expected)")
            by_key[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = info
        if sum(i.file_size for i in infos) > limits.max_total_bytes:
            raise CedmError(f"{path.name} decompresses to more than {limits.max_total_bytes >> 20} MB (--max-total-mb)")
        if not by_key:
            raise CedmError(f"{path.name} holds no arrays")
        key = next((k for k in ("images", "x", "X") if k in by_key), next(iter(by_key)))
        images = _read_npz_array(zf, by_key[key], path.name)
        label_key = next((k for k in ("labels", "y", "Y") if k in by_key and k != key), None)
        labels = _read_npz_array(zf, by_key[label_key], path.name) if label_key else None
    return images, labels


def _read_npz_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> np.ndarray:
    """An array from an .npz member; its header's shape is checked against the member size before allocating
    (zipfile itself never returns more than the declared size, and fails the CRC if the data says otherwise)."""
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            shape, _fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        if dtype.hasobject:
            raise CedmError(f"{what}: {info.filename} holds Python objects; only numeric arrays are read")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
            raise CedmError(f"{what}: {info.filename} declares shape {shape} but holds only {info.file_size} bytes")
        with zf.open(info) as f:
            return fmt.read_array(f, allow_pickle=False)
    except CedmError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CedmError(f"{what}: cannot read {info.filename} ({e})") from None


def _read_idx(path: Path, limits: ImportLimits) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped): magic 0x0000 08 <ndim>, big-endian sizes, raw bytes."""
    with archives.open_decompressed(path, limits) as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
            raise CedmError(f"{path.name} is not an IDX file of unsigned bytes")
        dims = struct.unpack(f">{head[3]}I", f.read(4 * head[3]))
        count = int(np.prod(dims, dtype=np.int64))
        if count > limits.max_total_bytes:
            raise CedmError(f"{path.name} declares {count >> 20} MB of data, over the limit (--max-total-mb)")
        data = bytearray()  # in chunks: a header may claim far more than the file holds
        try:
            while len(data) < count:
                chunk = f.read(min(1 << 20, count - len(data)))
                if not chunk:
                    break
                data += chunk
        except (EOFError, OSError, archives.ArchiveLimitError) as e:
            raise CedmError(f"{path.name}: {e}") from None
    if len(data) != count:
        raise CedmError(f"{path.name} is truncated: {len(data)} of {count} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def idx_labels_file(images_file: Path) -> Path | None:
    """The labels file next to an IDX images file (train-images-idx3-ubyte.gz -> train-labels-idx1-ubyte.gz)."""
    name = images_file.name.replace("images", "labels").replace("idx3", "idx1")
    base = name[:-3] if name.endswith(".gz") else name
    for cand in (name, base, base + ".gz"):
        p = images_file.with_name(cand)
        if cand != images_file.name and p.is_file():
            return p
    return None


# --- CIFAR python tarballs ----------------------------------------------------------------------
def cifar_batches(members: list[Member]) -> dict | None:
    """Recognise CIFAR-10 (data_batch_N, test_batch, batches.meta) or CIFAR-100 (train, test, meta)."""
    base = {m.path.rsplit("/", 1)[-1]: m for m in members}
    train10 = sorted((m for b, m in base.items() if _CIFAR10_TRAIN.match(b)),
                     key=lambda m: int(_CIFAR10_TRAIN.match(m.path.rsplit("/", 1)[-1]).group(1)))
    if train10 or "test_batch" in base:
        return {"variant": "cifar10", "train": train10, "test": [base["test_batch"]] if "test_batch" in base else [],
                "meta": base.get("batches.meta"), "labels_key": "labels", "names_key": "label_names"}
    if "meta" in base and ("train" in base or "test" in base):
        return {"variant": "cifar100", "train": [base["train"]] if "train" in base else [],
                "test": [base["test"]] if "test" in base else [], "meta": base["meta"],
                "labels_key": "fine_labels", "names_key": "fine_label_names"}
    return None


def _text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)


def _plan_cifar(src: archives.TarSource, members: list[Member], skipped: list, cif: dict, split: str,
                resolution: int, csv_labels: dict[str, str] | None) -> _Plan:
    batches = (cif["train"] if split in ("all", "train") else []) + (cif["test"] if split in ("all", "test") else [])
    if not batches:
        raise CedmError(f"{src.path.name} has no {split} batches")
    used = {m.index for m in batches} | ({cif["meta"].index} if cif["meta"] else set())
    for m in members:
        if m.index not in used:
            skipped.append({"path": m.path, "reason": "not a CIFAR batch for this split"})
    offsets, capacity = {}, 0
    for m in batches:  # each image takes 3072 bytes of the pickle, so size // 3072 bounds its rows
        offsets[m.index] = capacity
        capacity += m.size // _CIFAR_BYTES
    plan = _Plan(cif["variant"], capacity, 0, skipped, fill=None, ordered=False)  # n_found: counted in fill

    def fill(sink: _Sink, bar: _Progress):
        names: list[str] = []
        seen: set[str] = set()
        for m, data in src.read([m for m in members if m.index in used]):
            if isinstance(data, MemberError):
                skipped.append({"path": m.path, "reason": str(data)})
                continue
            try:
                d = load_data_pickle(data)
                if not isinstance(d, dict):
                    raise UnsafePickle("it does not hold a dict")
                d = {_text(k): v for k, v in d.items()}
            except UnsafePickle as e:
                skipped.append({"path": m.path, "reason": f"unsafe or malformed pickle: {e}"})
                continue
            if cif["meta"] is not None and m.index == cif["meta"].index:
                names = [_text(x) for x in d.get(cif["names_key"]) or d.get("label_names") or []]
                continue
            try:
                x = np.asarray(d["data"])
                if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != _CIFAR_BYTES:
                    raise ValueError(f"data must be uint8 (N, 3072), got {x.dtype} {x.shape}")
                if len(x) > m.size // _CIFAR_BYTES:
                    raise ValueError("more rows than the batch can hold")
                y = d.get(cif["labels_key"], d.get("labels"))
                y = _check_labels(np.asarray(y), len(x), m.path) if y is not None else None
            except (KeyError, ValueError, CedmError) as e:
                skipped.append({"path": m.path, "reason": f"not a CIFAR batch ({e})"})
                continue
            batch = m.path.rsplit("/", 1)[-1]
            x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are stored channel-major
            plan.n_found += len(x)
            for i in range(len(x)):
                path = f"{batch}/{i:05d}"
                label = csv_labels.get(path) if csv_labels else (y[i] if y else None)
                seen.add(label)
                sink.put(offsets[m.index] + i, array_to_rgb(x[i], resolution), path, label)
                bar.advance()
        if csv_labels or not names or len(set(names)) != len(names):  # labels used as they are
            return (lambda lab: lab), label_order(seen)

        def label_fn(lab):
            return names[int(lab)] if lab is not None and 0 <= int(lab) < len(names) else lab

        extra = label_order({label_fn(lab) for lab in seen} - set(names) - {None})
        return label_fn, names + extra

    plan.fill = fill
    return plan


# --- the entry point ----------------------------------------------------------------------------
def detect_kind(path: Path, limits: ImportLimits) -> str:
    """folder, zip, npz, npy, idx or tar (CIFAR is recognised inside a tar)."""
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise CedmError(f"no such file or folder: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    fmt = sniff_archive(head)
    low = path.name.lower()
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if fmt == "zip":
        if low.endswith(".npz"):
            return "npz"
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    if head[:3] == b"\x00\x00\x08":
        return "idx"
    if fmt in ("gzip", "bzip2", "xz"):
        try:
            with archives.open_decompressed(path, limits) as f:
                inner = f.read(512)
        except (EOFError, OSError, archives.ArchiveLimitError, ValueError) as e:
            raise CedmError(f"{path.name}: cannot decompress ({e})") from None
        if inner[:3] == b"\x00\x00\x08":
            return "idx"
        if sniff_archive(inner) == "tar" or (len(inner) == 512 and _is_tar_header(inner)):
            return "tar"
        raise CedmError(f"{path.name}: a compressed file that is neither a tar archive nor IDX data")
    if fmt == "tar" or (len(head) == 512 and _is_tar_header(head)):
        return "tar"
    if fmt:
        raise CedmError(f"{path.name}: {fmt} archives are not supported (use zip or tar)")
    try:
        with Image.open(path, formats=IMAGE_FORMATS):
            raise CedmError(f"{path.name} is a single image: put the images in a folder and import the folder")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        pass
    raise CedmError(f"cannot import {path.name}: not a folder, zip, tar(.gz), .npy/.npz, IDX or CIFAR tarball")


def _is_tar_header(block: bytes) -> bool:
    """An old-style (v7) tar header: its checksum field matches the block's byte sum."""
    try:
        stored = int(block[148:156].split(b"\x00", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def import_dataset(source, home=None, name: str | None = None, resolution: int = 64,
                   labels_csv: str | Path | None = None, limits: ImportLimits | None = None,
                   overwrite: bool = False, progress: Progress | None = None, split: str = "all") -> Workspace:
    """Import ``source`` into a new workspace ``name`` at ``resolution``; the report is ``ws.import_report``.

    ``split`` selects CIFAR batches ('train', 'test' or 'all'). Raises CedmError (leaving nothing behind)
    when the source cannot be used or yields fewer than 2 images.
    """
    path = Path(source).expanduser()
    limits = limits or ImportLimits()
    if split not in ("all", "train", "test"):
        raise CedmError(f"split must be 'all', 'train' or 'test', got {split!r}")
    # Checks name, resolution and that the workspace does not exist yet, before reading anything.
    builder = WorkspaceBuilder(home, name or default_name(path), resolution, capacity=0, overwrite=overwrite,
                               max_bytes=limits.max_decoded_bytes)
    kind = detect_kind(path, limits)
    csv_labels = read_labels_csv(labels_csv) if labels_csv else None
    src = None
    try:
        if kind == "folder" and idx_image_files(path):  # IDX files as distributed (e.g. Fashion-MNIST)
            plan = _plan_idx_folder(path, idx_image_files(path), limits, resolution, csv_labels)
        elif kind in ("folder", "zip", "tar"):
            src = {"folder": archives.FolderSource, "zip": archives.ZipSource, "tar": archives.TarSource}[kind](path, limits)
            members, skipped = src.scan()  # first pass: list and check every entry
            if csv_labels is None:  # a labels.csv inside: the ground truth, as --labels would give
                members, csv_labels, labels_csv = _labels_member(src, members)
            cif = cifar_batches(members) if kind == "tar" else None
            if cif:
                plan = _plan_cifar(src, members, skipped, cif, split, resolution, csv_labels)
            else:
                plan = _plan_collection(src, kind, members, skipped, resolution, limits, csv_labels)
        elif kind == "npy":
            images = _check_image_array(_load_npy(path, limits), path.name)
            plan = _plan_arrays(kind, images, None, resolution, csv_labels)
        elif kind == "npz":
            images, y = _load_npz(path, limits)
            images = _check_image_array(images, path.name)
            plan = _plan_arrays(kind, images, _check_labels(y, len(images), path.name), resolution, csv_labels)
        else:  # idx
            images = _check_image_array(_read_idx(path, limits), path.name)
            lab_file = idx_labels_file(path)
            y = _read_idx(lab_file, limits) if lab_file else None
            plan = _plan_arrays(kind, images, _check_labels(y, len(images), lab_file.name if lab_file else ""),
                                resolution, csv_labels)
        return _build(builder, plan, path, resolution, limits, csv_labels, labels_csv, progress)
    finally:
        if src is not None:
            src.close()


def _build(builder: WorkspaceBuilder, plan: _Plan, path: Path, resolution: int, limits: ImportLimits,
           csv_labels, labels_csv, progress) -> Workspace:
    def report() -> dict:
        skipped = sorted(plan.skipped, key=lambda s: (str(s["path"]), s["reason"]))
        rep = {"source": str(path.resolve()), "kind": plan.kind, "resolution": resolution,
               "n_found": plan.n_found, "n_imported": len(builder.paths), "skipped": skipped,
               "limits": limits.as_dict()}
        if csv_labels:
            matched = sum(1 for lab in builder.labels if lab is not None)
            rep["labels"] = {"csv": str(labels_csv), "rows": len(csv_labels), "matched": matched}
        return rep

    if plan.capacity < 2:
        raise CedmError(f"only {plan.capacity} usable image(s) found in {path}; at least 2 are needed"
                        + _skip_hint(plan.skipped))
    builder.capacity = plan.capacity
    bar = _Progress(progress, plan.capacity, f"import {path.name}")
    try:
        with builder as b:
            sink = _Sink(b, plan.capacity, plan.ordered)
            label_fn, label_names = plan.fill(sink, bar)
            sink.close(label_fn)
            b.finish(str(path.resolve()), report(), label_names)
    finally:
        bar.close()
    return open_workspace(builder.home, builder.name)


def _skip_hint(skipped: list) -> str:
    if not skipped:
        return ""
    s = skipped[0]
    return f" ({len(skipped)} skipped, e.g. {s['path']}: {s['reason']})"

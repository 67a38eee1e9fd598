"""Self-annotations out of (and layouts into) cedm: one PNG mask per image and a box CSV.

    <dir>/boxes.csv                   path,x0,y0,x1,y1   (pixels of the workspace images, end exclusive)
    <dir>/segments/<source path>.png  8-bit grey PNG, pixel value = segment id (one per image)
    <dir>/segments/index.csv          path,mask          (source path -> PNG, relative to segments/)
    <dir>/segments/segments.json      number of segments, resolution, backbone

A mask is named after its image's source path with the extension replaced by ``.png``; the name is made safe
(no absolute paths, no ``..``, no control or reserved characters), and a name already taken gets ``-<row>``.
Everything appears atomically: ``segments/`` as a whole, ``boxes.csv`` as a file.
"""
from __future__ import annotations

import csv
import io as _io
import re
from pathlib import Path, PurePosixPath

import numpy as np

from cedm import io
from cedm.errors import CedmError

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\]')
BOX_HEADER = ["path", "x0", "y0", "x1", "y1"]


def mask_filename(source_path: str) -> str:
    """A safe relative POSIX name ``dir/name.png`` for the mask of the image at ``source_path``."""
    parts = []
    for part in re.split(r"[/\\]+", str(source_path)):
        part = _UNSAFE.sub("_", part).strip().lstrip(".")
        if part and part not in (".", ".."):
            parts.append(part[:200])
    if not parts:
        parts = ["image"]
    stem = PurePosixPath(parts[-1]).stem or "image"
    parts[-1] = stem + ".png"
    return "/".join(parts)


def mask_filenames(paths: list[str]) -> list[str]:
    """Unique safe names for every row (case-insensitively unique, for case-insensitive file systems)."""
    seen: set[str] = set()
    out = []
    for i, p in enumerate(paths):
        name = mask_filename(p)
        if name.lower() in seen:
            name = f"{name[:-4]}-{i}.png"
        seen.add(name.lower())
        out.append(name)
    return out


def _out_dir(out_dir) -> Path:
    d = Path(out_dir).expanduser()
    if d.exists() and not d.is_dir():
        raise CedmError(f"export folder {str(d)!r} is a file")
    d.mkdir(parents=True, exist_ok=True)
    return d


def boxes_csv(paths: list[str], boxes) -> str:
    b = np.asarray(boxes)
    if b.shape != (len(paths), 4):
        raise CedmError(f"need one box per image: {len(paths)} paths, boxes of shape {b.shape}")
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(BOX_HEADER)
    for p, row in zip(paths, b.tolist()):
        w.writerow([p, *map(int, row)])
    return buf.getvalue()


def export_boxes(paths: list[str], boxes, out_dir) -> Path:
    path = _out_dir(out_dir) / "boxes.csv"
    io.write_text(path, boxes_csv(paths, boxes))
    return path


def read_boxes_csv(path) -> tuple[list[str], np.ndarray]:
    """(paths, int (N, 4) boxes) from a box CSV written by :func:`export_boxes`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CedmError(f"box file {str(p)!r} does not exist")
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CedmError(f"{p.name} is not a UTF-8 CSV file ({e})") from None
    if not rows or [c.strip() for c in rows[0]] != BOX_HEADER:
        raise CedmError(f"{p.name} must start with the header {','.join(BOX_HEADER)}")
    paths, boxes = [], []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 5:
            raise CedmError(f"{p.name} line {i}: expected 5 fields, got {len(row)}")
        try:
            boxes.append([int(v) for v in row[1:]])
        except ValueError:
            raise CedmError(f"{p.name} line {i}: box coordinates must be integers") from None
        paths.append(row[0])
    return paths, np.asarray(boxes, np.int64).reshape(-1, 4)


def export_segments(paths: list[str], masks, out_dir, n_segments: int, info: dict | None = None) -> Path:
    """Write one grey PNG per image (pixel = segment id) plus index.csv into ``<out_dir>/segments``."""
    from PIL import Image

    masks = np.asarray(masks) if not isinstance(masks, np.memmap) else masks
    if masks.ndim != 3 or len(masks) != len(paths) or masks.dtype != np.uint8:
        raise CedmError(f"need one uint8 (R, R) mask per image: {len(paths)} paths, masks {masks.dtype} "
                        f"{masks.shape}")
    names = mask_filenames(paths)
    final = _out_dir(out_dir) / "segments"
    with io.atomic_dir(final) as tmp:
        for name, m in zip(names, masks):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(m), mode="L").save(target, format="PNG")
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "mask"])
        w.writerows(zip(paths, names))
        (tmp / "index.csv").write_text(buf.getvalue(), encoding="utf-8")
        io.write_json(tmp / "segments.json", {"n_segments": int(n_segments), "n_images": len(paths),
                                              "resolution": int(masks.shape[1]), **(info or {})})
    return final


def read_mask(path, n_segments: int | None = None) -> np.ndarray:
    """uint8 (H, W) segment ids from a mask PNG (8-bit grey or palette; ids below ``n_segments``)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise CedmError(f"mask file {str(p)!r} does not exist")
    try:
        with Image.open(p) as im:
            if im.format != "PNG":
                raise CedmError(f"{p.name} is not a PNG file")
            if im.mode not in ("L", "P"):
                raise CedmError(f"{p.name} is a {im.mode} image; a mask is an 8-bit grey PNG whose pixel values "
                                "are segment ids")
            if im.width * im.height > 4096 * 4096:
                raise CedmError(f"{p.name} is too large for a mask ({im.width}x{im.height})")
            m = np.array(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise CedmError(f"{p.name} is not a readable image ({type(e).__name__})") from None
    if n_segments is not None and m.size and int(m.max()) >= int(n_segments):
        raise CedmError(f"{p.name} has segment id {int(m.max())}, but there are only {n_segments} segments "
                        f"(0..{int(n_segments) - 1})")
    return m

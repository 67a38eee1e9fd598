"""Workspaces: one folder per dataset holding the images and everything derived from them.

Layout (see docs/architecture.md)::

    <home>/workspaces/<name>/
        manifest.json        source, counts, resolution, content hash, cedm version, created time
        images.npy           uint8 (N, R, R, 3), memory-mapped (shipped read-only demos may use images.npz)
        paths.json           row i -> relative source path (rows are in this deterministic order)
        ground_truth.json    optional {"names": [...], "labels": [...]} for evaluation only
        import_report.json   counts and skipped files with reasons
        artifacts/<stage>/<key>/   derived results; key = hash(dataset hash, stage, parameters)
        scratch/<stage>/<key>/     partial work of an interrupted stage, resumed by the next run

Every file is written atomically (cedm.io) and an artifact folder appears under its key only once it is
complete, so a repeated request is served from disk and a changed parameter never returns a stale result.
A read-only workspace (the shipped demo) writes new artifacts into an overlay folder under the home.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cedm import __version__, io
from cedm.errors import CedmError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "assets" / "demo"
DEMO_NAME = "demo"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HASH_CHUNK_ROWS = 1024


def default_home() -> Path:
    """``$CEDM_HOME``, else the per-user data folder (``$XDG_DATA_HOME/cedm`` or ``~/.local/share/cedm``)."""
    env = os.environ.get("CEDM_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cedm"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    return Path(home).expanduser() if home else default_home()


def params_key(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=io._json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroundTruth:
    names: list[str]
    labels: np.ndarray  # int64 per row, -1 where unknown


class Workspace:
    """An opened workspace folder. Cheap to construct; images are memory-mapped on first use."""

    def __init__(self, root: str | os.PathLike, read_only: bool = False, overlay: Path | None = None,
                 shared_overlays: Iterable[Path] = ()):
        """``overlay``: where a read-only workspace writes; ``shared_overlays``: more folders whose artifacts
        are read (never written), e.g. the server's demo overlay under a visitor's own one in public mode."""
        self.root = Path(root)
        if not (self.root / "manifest.json").is_file():
            raise CedmError(f"{self.root.name} is not a cedm workspace (no manifest.json)")
        self.read_only = read_only
        self.overlay = Path(overlay) if overlay else None
        self.shared_overlays = [Path(p) for p in shared_overlays]
        if read_only and self.overlay is None:
            raise CedmError("a read-only workspace needs an overlay folder for new artifacts")
        self.manifest: dict = io.read_json(self.root / "manifest.json")

    # --- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def n(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    def __repr__(self) -> str:
        return f"Workspace({self.name!r}, n={self.n}, resolution={self.resolution}, root={str(self.root)!r})"

    # --- rows -----------------------------------------------------------------------------------
    @cached_property
    def images(self) -> np.ndarray:
        """uint8 (N, R, R, 3); a read-only memory map when stored as .npy."""
        npy = self.root / "images.npy"
        if npy.is_file():
            return io.load_npy(npy, mmap=True)
        with np.load(self.root / "images.npz", allow_pickle=False) as z:
            arr = z["images"]
        arr.setflags(write=False)
        return arr

    @cached_property
    def paths(self) -> list[str]:
        return io.read_json(self.root / "paths.json")

    @cached_property
    def ground_truth(self) -> GroundTruth | None:
        p = self.root / "ground_truth.json"
        if not p.is_file():
            return None
        d = io.read_json(p)
        return GroundTruth(names=list(d["names"]), labels=np.asarray(d["labels"], dtype=np.int64))

    @property
    def import_report(self) -> dict:
        p = self.root / "import_report.json"
        return io.read_json(p) if p.is_file() else {}

    # --- artifacts ------------------------------------------------------------------------------
    def artifact_key(self, stage: str, params: dict) -> str:
        return params_key({"dataset": self.content_hash, "stage": stage, "params": params})

    def _artifact_roots(self) -> list[Path]:
        roots = [self.root / "artifacts"] + [p / "artifacts" for p in self.shared_overlays]
        if self.overlay is not None:
            roots.append(self.overlay / "artifacts")
        return roots

    def _writable_root(self) -> Path:
        return self.overlay if self.read_only else self.root

    def find_artifact(self, stage: str, params: dict) -> Path | None:
        """The complete artifact folder for (stage, params), or None."""
        key = self.artifact_key(stage, params)
        for r in self._artifact_roots():
            d = r / stage / key
            if (d / "meta.json").is_file():
                return d
        return None

    @contextlib.contextmanager
    def write_artifact(self, stage: str, params: dict, info: dict | None = None) -> Iterator[Path]:
        """Yield a temporary folder to fill; it becomes the artifact (with meta.json) only on success."""
        key = self.artifact_key(stage, params)
        final = self._writable_root() / "artifacts" / stage / key
        with io.atomic_dir(final) as tmp:
            yield tmp
            meta = {"stage": stage, "params": params, "key": key, "dataset": self.content_hash,
                    "created": time.time(), "cedm_version": __version__, **(info or {})}
            io.write_json(tmp / "meta.json", meta)

    def list_artifacts(self, stage: str) -> list[tuple[Path, dict]]:
        """All complete artifacts of a stage, oldest first, as (folder, meta)."""
        out = []
        for r in self._artifact_roots():
            d = r / stage
            if not d.is_dir():
                continue
            for sub in d.iterdir():
                m = sub / "meta.json"
                if m.is_file() and not sub.name.startswith(io.TMP_PREFIX):
                    out.append((sub, io.read_json(m)))
        return sorted(out, key=lambda t: t[1].get("created", 0))

    def scratch_dir(self, stage: str, params: dict) -> Path:
        """A folder for partial work of (stage, params) that survives interruption (for resuming)."""
        d = self._writable_root() / "scratch" / stage / self.artifact_key(stage, params)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clear_scratch(self, stage: str, params: dict) -> None:
        d = self._writable_root() / "scratch" / stage / self.artifact_key(stage, params)
        shutil.rmtree(d, ignore_errors=True)

    def derived_dir(self, kind: str) -> Path:
        """A writable folder for user-named outputs (e.g. 'models', 'samples')."""
        d = self._writable_root() / kind
        d.mkdir(parents=True, exist_ok=True)
        return d


# --- creating workspaces ------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CedmError(f"invalid workspace name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    if name == DEMO_NAME:
        raise CedmError(f"the name {DEMO_NAME!r} is reserved for the shipped demo workspace")
    return name


class WorkspaceBuilder:
    """Builds a new workspace in a temporary folder, row by row, and publishes it atomically.

    Images go straight into a memory-mapped .npy of the final shape, so an import never holds more
    than one copy of the dataset (and not even one in memory). Use as a context manager: if anything
    fails, nothing is left behind.
    """

    def __init__(self, home: str | os.PathLike | None, name: str, resolution: int, capacity: int,
                 overwrite: bool = False, max_bytes: int | None = None):
        self.home = resolve_home(home)
        self.name = check_name(name)
        if not 8 <= int(resolution) <= 1024:
            raise CedmError(f"resolution must be between 8 and 1024, got {resolution}")
        self.resolution = int(resolution)
        self.capacity = int(capacity)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.final = self.home / "workspaces" / self.name
        if self.final.exists() and not overwrite:
            raise CedmError(f"workspace {self.name!r} already exists in {self.final.parent} "
                            "(choose another --name or delete it first)")
        self.paths: list[str] = []
        self.labels: list[str | None] = []
        self._tmp_ctx = None
        self.tmp: Path | None = None
        self._images = None

    def __enter__(self) -> "WorkspaceBuilder":
        size = max(self.capacity, 1) * self.resolution ** 2 * 3
        if self.max_bytes is not None and size > self.max_bytes:
            raise CedmError(f"{self.capacity:,} images at {self.resolution}x{self.resolution} would take "
                            f"{size / 2**20:,.0f} MB decoded; the limit here is {self.max_bytes / 2**20:,.0f} MB "
                            "(import fewer images or a lower resolution)")
        self._tmp_ctx = io.atomic_dir(self.final)
        self.tmp = self._tmp_ctx.__enter__()
        shape = (max(self.capacity, 1), self.resolution, self.resolution, 3)
        self._images = np.lib.format.open_memmap(self.tmp / "images.npy", mode="w+", dtype=np.uint8,
                                                 shape=shape)
        return self

    def add(self, image: np.ndarray, path: str, label: str | None = None) -> None:
        i = len(self.paths)
        if i >= self.capacity:
            raise CedmError("more images than announced capacity")
        if image.shape != (self.resolution, self.resolution, 3) or image.dtype != np.uint8:
            raise ValueError(f"image {path} has shape {image.shape} {image.dtype}")
        self._images[i] = image
        self.paths.append(path)
        self.labels.append(label)

    def finish(self, source: str, report: dict, label_names: list[str] | None = None) -> None:
        """Record manifest, paths, labels and report. Called inside the ``with`` block."""
        n = len(self.paths)
        if n < 2:
            raise CedmError(f"only {n} usable image(s) found in {source}; at least 2 are needed"
                            + _skipped_hint(report))
        self._images.flush()
        if n < self.capacity:  # some inputs were skipped: shrink by copying in chunks (disk, not memory)
            full, self._images = self._images, None
            small = np.lib.format.open_memmap(self.tmp / "images.tmp.npy", mode="w+", dtype=np.uint8,
                                              shape=(n,) + full.shape[1:])
            for s in range(0, n, _HASH_CHUNK_ROWS):
                small[s:s + _HASH_CHUNK_ROWS] = full[s:min(s + _HASH_CHUNK_ROWS, n)]
            small.flush()
            del full, small
            os.replace(self.tmp / "images.tmp.npy", self.tmp / "images.npy")
        else:
            self._images = None
        images = io.load_npy(self.tmp / "images.npy", mmap=True)
        digest = content_hash(images, self.paths)
        del images
        io.write_json(self.tmp / "paths.json", self.paths)
        has_gt = any(lab is not None for lab in self.labels)
        if has_gt:
            names = list(label_names) if label_names else sorted({lab for lab in self.labels if lab is not None})
            index = {nm: i for i, nm in enumerate(names)}
            ids = [index[lab] if lab is not None else -1 for lab in self.labels]
            io.write_json(self.tmp / "ground_truth.json", {"names": names, "labels": ids})
        io.write_json(self.tmp / "import_report.json", report)
        io.write_json(self.tmp / "manifest.json", {
            "name": self.name, "source": source, "n_images": n, "resolution": self.resolution,
            "content_hash": digest, "cedm_version": __version__, "created": time.time(),
            "has_ground_truth": has_gt, "n_skipped": len(report.get("skipped", [])),
        })

    def __exit__(self, exc_type, exc, tb):
        self._images = None
        ok = exc_type is None and (self.tmp / "manifest.json").is_file()
        if exc_type is None and not ok:
            exc = CedmError("workspace build did not call finish()")
        return self._tmp_ctx.__exit__(*((None, None, None) if ok else (type(exc), exc, exc.__traceback__)))


def _skipped_hint(report: dict) -> str:
    skipped = report.get("skipped", [])
    if not skipped:
        return ""
    first = skipped[0]
    return f" ({len(skipped)} skipped, e.g. {first.get('path')}: {first.get('reason')})"


def content_hash(images: np.ndarray, paths: Iterable[str]) -> str:
    """sha256 over the image bytes (in chunks) and the row paths: the dataset's identity."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    for s in range(0, len(images), _HASH_CHUNK_ROWS):
        h.update(np.ascontiguousarray(images[s:s + _HASH_CHUNK_ROWS]).tobytes())
    h.update("\n".join(paths).encode("utf-8"))
    return h.hexdigest()


def create_from_array(home, name: str, images: np.ndarray, paths: list[str] | None = None,
                      labels: list[str | None] | None = None, label_names: list[str] | None = None,
                      source: str = "array", report: dict | None = None, overwrite: bool = False) -> Workspace:
    """Make a workspace from uint8 (N, R, R, 3) images already at the working resolution."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3 or images.dtype != np.uint8:
        raise CedmError(f"expected uint8 images of shape (N, R, R, 3), got {images.dtype} {images.shape}")
    n = len(images)
    paths = paths or [f"{i:06d}.png" for i in range(n)]
    labels = labels or [None] * n
    with WorkspaceBuilder(home, name, images.shape[1], n, overwrite=overwrite) as b:
        for i in range(n):
            b.add(images[i], paths[i], labels[i])
        b.finish(source, report or {"n_found": n, "n_imported": n, "skipped": []}, label_names)
    return open_workspace(home, name)


# --- listing, opening, deleting -----------------------------------------------------------------
def list_workspaces(home=None, include_demo: bool = True) -> list[str]:
    root = resolve_home(home) / "workspaces"
    names = []
    if include_demo and (DEMO_DIR / "manifest.json").is_file():
        names.append(DEMO_NAME)
    if root.is_dir():
        io.clean_stale_tmp(root)  # only builds whose process is gone: a running import is left alone
        names += sorted(p.name for p in root.iterdir()
                        if not p.name.startswith(io.TMP_PREFIX) and (p / "manifest.json").is_file())
    return names


def clean_dead_builds(home) -> list[str]:
    """Remove what killed processes left under ``home``: half-built workspaces, artifacts, models, uploads,
    in the shared home, the overlays and every visitor area. Builds of running processes stay.
    Returns the removed entries (relative to home)."""
    home = resolve_home(home)
    if not home.is_dir():
        return []
    removed: list[str] = []

    def clean(folder: Path) -> None:
        removed.extend(str((folder / n).relative_to(home)) for n in io.clean_stale_tmp(folder))

    def clean_workspace_tree(ws_root: Path) -> None:
        for sub in ("artifacts", "scratch"):
            for stage in _subdirs(ws_root / sub):
                clean(stage)
        clean(ws_root / "models")
        for model in _subdirs(ws_root / "models"):
            clean(model)

    homes = [home] + _subdirs(home / "sessions")
    for h in homes:
        for folder in (h / "workspaces", h / "uploads", h / "overlays", h / "downloads"):
            clean(folder)
        for ws_root in _subdirs(h / "workspaces") + _subdirs(h / "overlays"):
            clean_workspace_tree(ws_root)
    clean(home / "sessions")
    return removed


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(io.TMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def open_demo(home=None) -> Workspace:
    """The shipped demo, read-only; anything computed for it goes to ``<home>/overlays/demo-<hash>``."""
    if not (DEMO_DIR / "manifest.json").is_file():
        raise CedmError(f"the demo workspace is missing from {DEMO_DIR}; run scripts/build_demo.py")
    h = io.read_json(DEMO_DIR / "manifest.json")["content_hash"][:12]
    return Workspace(DEMO_DIR, read_only=True, overlay=resolve_home(home) / "overlays" / f"demo-{h}")


def open_workspace(home=None, name_or_path: str | os.PathLike = DEMO_NAME) -> Workspace:
    """Open by name (in ``<home>/workspaces``), ``'demo'``, or by a folder path."""
    if str(name_or_path) == DEMO_NAME:
        return open_demo(home)
    p = Path(name_or_path)
    if (p / "manifest.json").is_file() and (os.sep in str(name_or_path) or p.is_absolute()):
        return Workspace(p)
    d = resolve_home(home) / "workspaces" / str(name_or_path)
    if not (d / "manifest.json").is_file():
        known = ", ".join(list_workspaces(home)) or "none"
        raise CedmError(f"no workspace named {str(name_or_path)!r} (known: {known})")
    return Workspace(d)


def delete_workspace(home, name: str) -> None:
    if name == DEMO_NAME:
        raise CedmError("the shipped demo workspace cannot be deleted")
    check_name(name)
    d = resolve_home(home) / "workspaces" / name
    if not (d / "manifest.json").is_file():
        raise CedmError(f"no workspace named {name!r}")
    trash = d.with_name(io.tmp_name(f"deleted-{name}"))
    os.replace(d, trash)  # disappears atomically; the slow removal happens afterwards
    shutil.rmtree(trash, ignore_errors=True)

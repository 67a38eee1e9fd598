"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed process leaves at most a ``.tmp-*`` file or folder behind, never a half-written file under
its final name, so a later run can never mistake a partial artifact for a complete one. Every temporary name
carries its owner (``@host@pid@process start``): cleanup removes only leftovers whose owner is gone, never
the build of a process that is still running (another import, a listing during an import).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

TMP_PREFIX = ".tmp-"
FOREIGN_HOST_STALE_S = 24 * 3600  # a leftover of another machine (shared home) is removed after a day


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (guards against a reused pid); '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


_HOST = socket.gethostname().replace("@", "_")[:64] or "host"


def owner_tag() -> str:
    """``host@pid@start`` of this process: who a temporary file or folder belongs to."""
    pid = os.getpid()
    return f"{_HOST}@{pid}@{_process_start(pid)}"


def tmp_name(name: str, tag: str | None = None) -> str:
    """A temporary sibling name for ``name`` owned by this process."""
    return f"{TMP_PREFIX}{name}-{tag or uuid.uuid4().hex[:8]}@{owner_tag()}"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(tmp_name(path.name))


def owner_alive(path: Path, now: float | None = None) -> bool:
    """Whether the process that made temporary ``path`` is still running (see ``tmp_name``).

    Same machine: its pid exists with the same start time. Another machine: assumed alive for a day. A name
    without an owner (made by an older cedm) has no live owner."""
    parts = path.name.rsplit("@", 3)
    if len(parts) != 4:
        return False
    _, host, pid, start = parts
    if host != _HOST:
        try:
            age = (time.time() if now is None else now) - path.lstat().st_mtime
        except FileNotFoundError:
            return False
        return age < FOREIGN_HOST_STALE_S
    try:
        pid_i = int(pid)
        os.kill(pid_i, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    except ValueError:
        return False
    return not start or _process_start(pid_i) == start


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path, mmap: bool = False) -> np.ndarray:
    """Load an .npy written by cedm; never unpickles."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` (an existing one is swapped out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``, swapping out an existing ``dst`` with two renames."""
    if dst.exists():
        old = _tmp_sibling(dst)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def clean_stale_tmp(folder: Path) -> list[str]:
    """Remove leftovers of killed writers (``.tmp-*`` whose owner process is gone) directly inside ``folder``;
    a live writer's temporary file or folder is left alone. Returns the removed names."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in entries:
        if p.name.startswith(TMP_PREFIX) and not owner_alive(p):
            try:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, hashed once per process (the (size, mtime) part of the memo key notices a replaced file)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)

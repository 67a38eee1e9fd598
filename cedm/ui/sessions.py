"""Per-visitor areas: each browser session (or gradio_client) gets its own cedm home for its uploads.

    <home>/sessions/<digest of the session hash>/workspaces/<name>/

The folder name is a digest, so a session hash sent by a client can never name a path outside the area,
and one visitor cannot list or open another's workspaces. An area is removed when its session ends
(the page is closed or reloaded: ``Blocks.unload``) and, for clients that never say goodbye, once it has
not been used for ``max_age_s``. The shipped demo is never in here; it stays read-only.
"""
from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

from cedm import workspace as wsp
from cedm.errors import CedmError

DEFAULT_MAX_AGE_S = 6 * 3600


class Sessions:
    def __init__(self, home: Path, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.root = Path(home) / "sessions"
        self.max_age_s = float(max_age_s)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_hash: str | None) -> str:
        if not session_hash:
            raise CedmError("this action needs a browser or client session (no session id was sent)")
        return hashlib.sha256(session_hash.encode("utf-8")).hexdigest()[:32]

    def home_for(self, session_hash: str | None, create: bool = True) -> Path:
        """The visitor's own cedm home; touching it marks the session as active for the age sweep."""
        d = self.root / self._key(session_hash)
        if create:
            d.mkdir(parents=True, exist_ok=True)
        if d.exists():
            d.touch()
        return d

    def workspaces(self, session_hash: str | None) -> list[str]:
        """Names of the visitor's workspaces (never the demo, never anyone else's)."""
        d = self.root / self._key(session_hash)
        return wsp.list_workspaces(d, include_demo=False) if d.is_dir() else []

    def end(self, session_hash: str | None) -> None:
        """The session is over: stop its running work and remove everything it uploaded."""
        if not session_hash:
            return
        key = self._key(session_hash)
        with self._lock:
            self._cancelled.add(key)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove areas unused for longer than ``max_age_s``; returns the removed folder names."""
        if not self.root.is_dir():
            return []
        now = time.time() if now is None else now
        removed = []
        for d in self.root.iterdir():
            try:
                idle = now - d.stat().st_mtime
            except FileNotFoundError:
                continue
            if d.is_dir() and idle > self.max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed

    # --- cancelling long steps: the step's progress callback asks, and stops with a CedmError ----
    def request_cancel(self, session_hash: str | None) -> None:
        with self._lock:
            self._cancelled.add(self._key(session_hash))

    def start_step(self, session_hash: str | None) -> None:
        with self._lock:
            self._cancelled.discard(self._key(session_hash))

    def is_cancelled(self, session_hash: str | None) -> bool:
        with self._lock:
            return self._key(session_hash) in self._cancelled

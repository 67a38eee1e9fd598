"""Where the app keeps a visitor's work: two modes, one flag.

*Local* (the default for ``python app.py`` / ``cedm serve``): :class:`LocalArea`. The app and the command line
share one home; workspaces, clusterings and models persist across page reloads and server restarts, a
workspace made with ``cedm import`` shows in the app and the other way round. Closing a tab only stops its
running work.

*Public* (``--public``, automatic on Hugging Face Spaces where ``SPACE_ID`` is set): :class:`Sessions`. Each
browser session (or gradio_client) gets its own area, a cedm home of its own::

    <home>/sessions/<digest of the session hash>/workspaces/<name>/
    <home>/sessions/<digest>/overlays/demo-<hash>/     what this visitor computed or trained on the demo

The folder name is a digest, so a session hash sent by a client can never name a path outside the area, and
one visitor cannot list or open another's workspaces. The shipped demo is read-only; what the server computed
for it (``<home>/overlays``) is read by everyone and written by no visitor. An area is removed when its page
closes (``Blocks.unload``), after ``max_age_s`` unused, and, for API clients that never opened a page, after
``api_max_age_s`` unused. Budgets bound the decoded bytes of one import and of one area, the disk of all
areas together (least recently used areas are evicted first) and the imports/trainings running at once.

Both modes share cancellation: a step's progress callback asks ``is_cancelled``; ``end`` and ``cancel_work``
(a tab closed, a client's ``job.cancel()``) also run the cancel hooks (the inference engine's tickets).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from cedm import workspace as wsp
from cedm.errors import CedmError

DEFAULT_MAX_AGE_S = 6 * 3600
API_MAX_AGE_S = 10 * 60               # areas of clients that never opened a page
MB = 1 << 20
IMPORT_BUDGET = 600 * MB              # decoded bytes of one import (50k images at 64 px)
SESSION_BUDGET = 1024 * MB            # everything one visitor's area holds
DISK_BUDGET = 20 * 1024 * MB          # all visitor areas together; least recently used evicted first
MAX_HEAVY = {"import": 2, "training": 1}  # jobs of a kind running at once on a public server


def is_public(public: bool | None = None) -> bool:
    """``public`` when given, else public exactly when running on Hugging Face Spaces (``SPACE_ID`` is set)."""
    return bool(os.environ.get("SPACE_ID")) if public is None else bool(public)


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def session_owner(session_hash: str | None) -> str:
    """The tag a session's engine requests carry (``engine.submit(owner=...)``, ``engine.cancel_owner``)."""
    return "session:" + hashlib.sha256((session_hash or "api").encode("utf-8")).hexdigest()[:32]


class _Areas:
    """What both modes share: per-session cancellation flags, cancel hooks, a private downloads folder."""

    public = False

    def __init__(self, home: Path):
        self.home = Path(home)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[str], object]] = []
        # files handed to the browser are written here (then copied into gradio's cache and served from there);
        # never under the home, so no workspace folder needs to be an allowed path
        self._downloads = Path(tempfile.gettempdir()) / f"cedm-downloads-{secrets.token_hex(8)}"

    @staticmethod
    def _key(session_hash: str | None) -> str:
        if not session_hash:
            raise CedmError("this action needs a browser or client session (no session id was sent)")
        return hashlib.sha256(session_hash.encode("utf-8")).hexdigest()[:32]

    owner = staticmethod(session_owner)

    def add_cancel_hook(self, fn: Callable[[str], object]) -> None:
        """``fn(owner)`` runs whenever a session's work is cancelled (e.g. ``engine.cancel_owner``)."""
        self._hooks.append(fn)

    def downloads(self, session_hash: str | None) -> Path:
        """A fresh folder for one download of this session (unguessable name, outside every home)."""
        d = self._downloads / self._key(session_hash or "api") / secrets.token_hex(8)
        d.mkdir(parents=True)
        return d

    # --- cancelling long steps: the step's progress callback asks, and stops with a CedmError ----
    def request_cancel(self, session_hash: str | None) -> None:
        with self._lock:
            self._cancelled.add(self._key(session_hash))

    def cancel_work(self, session_hash: str | None) -> None:
        """Stop everything this session runs: its steps (import, clustering, training) and engine requests."""
        if not session_hash:
            return
        self.request_cancel(session_hash)
        for fn in list(self._hooks):
            fn(self.owner(session_hash))

    def start_step(self, session_hash: str | None) -> None:
        with self._lock:
            self._cancelled.discard(self._key(session_hash))

    def is_cancelled(self, session_hash: str | None) -> bool:
        with self._lock:
            return self._key(session_hash) in self._cancelled

    def end(self, session_hash: str | None) -> None:
        """The page closed or reloaded: stop its running work."""
        self.cancel_work(session_hash)

    def opened_page(self, session_hash: str | None) -> None:
        """A browser page with this session loaded."""

    @contextlib.contextmanager
    def heavy(self, kind: str, session_hash: str | None, need_bytes: int = 0) -> Iterator[int | None]:
        """Around an import or a training; yields the decoded-bytes budget of an import (None: no limit)."""
        yield None

    def cli_home(self) -> str:
        """Public mode: a visitor's area is not a home the visitor's own command line has."""
        return ""

    def close(self) -> None:
        shutil.rmtree(self._downloads, ignore_errors=True)


class LocalArea(_Areas):
    """Local mode: one shared home for the app and the command line; nothing is removed when a page closes."""

    public = False

    def __init__(self, home: Path, **_):
        super().__init__(home)
        self.root = self.home / "workspaces"

    def home_for(self, session_hash: str | None, create: bool = True) -> Path:
        return self.home

    def workspaces(self, session_hash: str | None) -> list[str]:
        return wsp.list_workspaces(self.home, include_demo=False)

    def open_demo(self, session_hash: str | None) -> wsp.Workspace:
        return wsp.open_demo(self.home)

    def cli_home(self) -> str:
        """What a command line shown in the app adds so that it finds the app's workspaces verbatim."""
        return "" if self.home == wsp.default_home() else f" --home {shlex.quote(str(self.home))}"

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove only what killed processes left behind (never a workspace)."""
        return wsp.clean_dead_builds(self.home)


class Sessions(_Areas):
    """Public mode: a private, temporary area per visitor, with budgets."""

    public = True

    def __init__(self, home: Path, max_age_s: float = DEFAULT_MAX_AGE_S, api_max_age_s: float = API_MAX_AGE_S,
                 import_budget: int = IMPORT_BUDGET, session_budget: int = SESSION_BUDGET,
                 disk_budget: int = DISK_BUDGET, max_heavy: dict | None = None):
        super().__init__(home)
        self.root = self.home / "sessions"
        self.max_age_s, self.api_max_age_s = float(max_age_s), float(api_max_age_s)
        self.import_budget, self.session_budget, self.disk_budget = import_budget, session_budget, disk_budget
        self.max_heavy = dict(MAX_HEAVY if max_heavy is None else max_heavy)
        self._pages: set[str] = set()      # sessions with a browser page (kept max_age_s, not api_max_age_s)
        self._running: dict[str, int] = {}  # kind -> jobs running
        self._busy: dict[str, int] = {}     # area key -> jobs running in it (never evicted meanwhile)
        self._demo_images = None

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

    def open_demo(self, session_hash: str | None) -> wsp.Workspace:
        """The demo, read-only: reads the server's overlay, writes (clusterings, models) into the visitor's."""
        shared = wsp.open_demo(self.home)
        area = self.home_for(session_hash or "api")
        ws = wsp.Workspace(shared.root, read_only=True, overlay=area / "overlays" / shared.overlay.name,
                           shared_overlays=[shared.overlay])
        if self._demo_images is not None and self._demo_images[0] == shared.root:
            ws.__dict__["images"] = self._demo_images[1]  # decoded once per server, not per visitor
        else:
            self._demo_images = (shared.root, ws.images)
        return ws

    def opened_page(self, session_hash: str | None) -> None:
        if session_hash:
            with self._lock:
                self._pages.add(self._key(session_hash))

    def end(self, session_hash: str | None) -> None:
        """The session is over: stop its running work and remove everything it uploaded."""
        if not session_hash:
            return
        self.cancel_work(session_hash)
        key = self._key(session_hash)
        with self._lock:
            self._pages.discard(key)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove areas unused for longer than ``max_age_s`` (``api_max_age_s`` for sessions without a page)
        and leftovers of killed builds; returns the removed area folder names."""
        wsp.clean_dead_builds(self.home)
        if not self.root.is_dir():
            return []
        now = time.time() if now is None else now
        removed = []
        for d in self.root.iterdir():
            try:
                idle = now - d.stat().st_mtime
            except FileNotFoundError:
                continue
            with self._lock:
                limit = self.max_age_s if d.name in self._pages else min(self.max_age_s, self.api_max_age_s)
                busy = self._busy.get(d.name, 0) > 0
            if d.is_dir() and idle > limit and not busy:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed

    # --- budgets ---------------------------------------------------------------------------------
    def _evict_for(self, need: int, keep: str) -> None:
        """Make room for ``need`` more bytes among all areas: remove the least recently used idle areas."""
        areas = []
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if d.is_dir():
                try:
                    areas.append((d.stat().st_mtime, d, folder_bytes(d)))
                except FileNotFoundError:
                    continue
        total = sum(a[2] for a in areas)
        for _, d, size in sorted(areas, key=lambda a: a[0]):
            if total + need <= self.disk_budget:
                return
            with self._lock:
                busy = self._busy.get(d.name, 0) > 0
            if d.name == keep or busy:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= size
        if total + need > self.disk_budget:
            raise CedmError("the server's disk for visitors is full right now; try again later, or run cedm on "
                            "your own machine (pip install, then python app.py)")

    @contextlib.contextmanager
    def heavy(self, kind: str, session_hash: str | None, need_bytes: int = 0) -> Iterator[int | None]:
        """One import or training: refused when ``max_heavy[kind]`` run already; for an import, yields the
        decoded bytes it may write (the import budget, bounded by what is left of this area's budget and of
        the disk budget after evicting least recently used areas)."""
        key = self._key(session_hash)
        area = self.home_for(session_hash)
        with self._lock:
            if self._running.get(kind, 0) >= self.max_heavy.get(kind, 1):
                raise CedmError(f"the server is busy: {self._running[kind]} {kind}(s) running at once is the "
                                "limit here; try again in a minute")
            self._running[kind] = self._running.get(kind, 0) + 1
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            left = self.session_budget - folder_bytes(area)
            if left <= 0:
                raise CedmError(f"your workspaces use all of the {self.session_budget / MB:,.0f} MB a visitor may "
                                "use; delete one first")
            budget = min(self.import_budget, left) if kind == "import" else None
            self._evict_for(budget if budget is not None else need_bytes, keep=key)
            yield budget
        finally:
            with self._lock:
                self._running[kind] -= 1
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]

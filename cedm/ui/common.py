"""What every tab shares: the app context (home, demo, visitor areas), error display and progress."""
from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr

from cedm import workspace as wsp
from cedm.errors import CedmError
from cedm.progress import Progress
from cedm.ui.sessions import LocalArea, Sessions

log = logging.getLogger("cedm.ui")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not a line per loaded library in the app log

# Limits for visitors (a public Space): per uploaded file, files per upload, workspaces per visitor.
MAX_FILE_SIZE = "200mb"
MAX_UPLOAD_FILES = 2000
MAX_UPLOAD_BYTES = 500 * 1024 * 1024
MAX_WORKSPACES_PER_SESSION = 5


@dataclass
class AppContext:
    home: Path
    sessions: Sessions | LocalArea  # public mode: per-visitor areas; local mode: the shared home
    _demo: wsp.Workspace | None = None  # opened once: read-only, and its images may be a compressed .npz

    @property
    def demo_available(self) -> bool:
        return (wsp.DEMO_DIR / "manifest.json").is_file()

    def choices(self, request: gr.Request | None) -> list[str]:
        """Workspaces this visitor may open: the shipped demo, then their own uploads."""
        own = self.sessions.workspaces(_session(request)) if request is not None else []
        return ([wsp.DEMO_NAME] if self.demo_available else []) + own

    def open(self, name: str | None, request: gr.Request | None) -> wsp.Workspace:
        """Open the demo (read-only) or one of this visitor's workspaces; never anyone else's."""
        if not name:
            raise CedmError("no workspace selected: upload images to make one")
        if name == wsp.DEMO_NAME:
            if self.sessions.public:  # the visitor's demo clusterings and models go in their own area
                return self.sessions.open_demo(_session(request))
            if self._demo is None or self._demo.root != wsp.DEMO_DIR:
                self._demo = wsp.open_demo(self.home)
            return self._demo
        wsp.check_name(name)  # a plain name, never a path
        return wsp.open_workspace(self.sessions.home_for(_session(request)), name)

    def visitor_home(self, request: gr.Request | None) -> Path:
        return self.sessions.home_for(_session(request))

    def downloads(self, request: gr.Request | None) -> Path:
        """A fresh folder for a file the visitor downloads (outside every home; see sessions.py)."""
        return self.sessions.downloads(_session(request))


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def hide_paths(text: str) -> str:
    """A message without server paths: the home, the temp folder, the repository and any other absolute path
    shortened to its last component."""
    import re

    return re.sub(r"(?<![\w.:/])/(?:[^\s/'\"`:,;()]+/)+([^\s/'\"`:,;()]*)", r"\1", text)


def guarded(fn: Callable) -> Callable:
    """Show every failure as a readable message in the UI (and to API clients), never a stack trace."""

    @functools.wraps(fn)  # keeps the signature, so gradio still injects gr.Request / gr.Progress
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CedmError as e:
            raise gr.Error(html.escape(hide_paths(str(e)), quote=False), print_exception=False) from None
        except Exception as e:  # a bug, not the user's fault: keep the trace in the server log only
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(html.escape(f"Something went wrong ({type(e).__name__}: {hide_paths(str(e))}). "
                                       "The details are in the server log.", quote=False), print_exception=False) from None

    return inner


# the newest Progress of each (visitor, job): what a job's live view (e.g. the Train tab's timer) reads
LIVE: dict[tuple[str, str], Progress] = {}


def progress_panel(job: str, value: str = "") -> gr.Markdown:
    """A job's one progress component: the long event shows its stage, percent and ETA here
    (``show_progress_on``), never as a bar over every output."""
    return gr.Markdown(value, elem_id=f"cedm-progress-{job}", elem_classes=["cedm-progress"], min_height=36)


def progress_callback(progress: gr.Progress | None, sessions: Sessions, request: gr.Request | None,
                      job: str = "", cancellable: bool = True) -> Progress:
    """Adapt the library's ``fn(done, total, desc)`` to gr.Progress: the line shows stage, percent and ETA
    (cedm.progress.Progress); a Cancel click stops the step (unless the job stops itself: ``cancellable``
    False, e.g. training, which checks should_stop and keeps a checkpoint)."""
    session = _session(request)
    if session:
        sessions.start_step(session)

    def sink(p: Progress) -> None:
        if cancellable and session and sessions.is_cancelled(session):
            raise CedmError("cancelled")
        if progress is not None:
            progress((p.done, p.total) if p.total else None, desc=p.line(percent=False))

    found = Progress(job, sink)
    if session and job:
        LIVE[(session, job)] = found
    return found


def generation_condition(value: dict | None) -> dict | None:
    """The condition the Query tab's "generate from this cluster" stored in the shared ``condition`` gr.State,
    checked: {'workspace', 'backbone', 'clustering' (e.g. 'kmeans:50'), 'cluster' (an id of that clustering)},
    or None when nothing was chosen. The Generate tab resolves the labeling with labelings.resolve."""
    if not value:
        return None
    try:
        cond = {"workspace": str(value["workspace"]), "backbone": str(value["backbone"]),
                "clustering": str(value["clustering"]), "cluster": int(value["cluster"])}
    except (KeyError, TypeError, ValueError):
        return None
    return cond

"""Progress of a long job as the person waiting for it needs it: the stage it is in, how far (percent) and how
long until it is done (ETA). One place for both front ends: the CLI draws it with tqdm (``tqdm_progress``),
the app shows ``Progress.line()`` in the job's progress component (cedm.ui.common).

Library functions report through a plain callback ``progress(done, total, desc)``; ``desc`` names the stage
("features: 1,200 images/s", "TEMI epochs", "map: UMAP of 3,391 points"). A ``Progress`` is such a callback:
it keeps the stage, the numbers and the stage's start time, and passes itself to a sink.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

ProgressFn = Callable[[int, "int | None", str], None]


def stage_of(desc: str) -> str:
    """The stage a description names: the text before its first ':' ("features: 900 images/s" -> "features")."""
    return str(desc or "").split(":", 1)[0].strip()


def format_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Progress:
    """One job's progress; call it as ``progress(done, total, desc)``. A new stage (or a total that changes,
    or a count that goes back) restarts the stage clock the ETA is measured from. ``extra`` holds what a job
    adds (training: kimg, loss, the newest sample grid)."""

    def __init__(self, job: str, sink: Callable[["Progress"], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.job, self.sink, self.clock = job, sink, clock
        self.stage, self.desc = "", ""
        self.done, self.total = 0, None
        self.started = self.stage_started = clock()
        self.extra: dict = {}
        self.finished = False

    def __call__(self, done: int, total: int | None = None, desc: str = "") -> None:
        stage = stage_of(desc)
        total = int(total) if total else None
        if stage != self.stage or total != self.total or int(done) < self.done:
            self.stage_started, self.stage = self.clock(), stage
        self.done, self.total, self.desc = int(done), total, str(desc or "")
        if self.sink is not None:
            self.sink(self)

    @property
    def fraction(self) -> float | None:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else None

    def eta_s(self) -> float | None:
        """Seconds left in this stage at the rate measured since it started; None before the first step."""
        f = self.fraction
        if f is None or f <= 0 or f >= 1:
            return None
        return (self.clock() - self.stage_started) * (1 - f) / f

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def line(self, percent: bool = True) -> str:
        """'clustering · features: 1,200 images/s · 40% · about 12 s left' (``percent`` False: without the
        percent, for a display that draws it itself)."""
        parts = [t for t in (self.job, self.desc) if t]
        if percent and self.fraction is not None:
            parts.append(f"{100 * self.fraction:.0f}%")
        eta = self.eta_s()
        parts.append(f"about {format_seconds(eta)} left" if eta is not None else
                     f"{format_seconds(self.elapsed_s())} so far")
        return " · ".join(parts)

    def finish(self, desc: str = "done") -> None:
        self.finished = True
        self(self.total or 1, self.total or 1, desc)


@contextlib.contextmanager
def tqdm_progress(job: str = ""):
    """A ``progress(done, total, desc)`` callback for the command line: one tqdm bar per stage, on stderr."""
    from tqdm import tqdm

    bar = None

    def draw(p: Progress) -> None:
        nonlocal bar
        label = p.stage or job
        if bar is None or bar.total != p.total or bar.desc != label:
            if bar is not None:
                bar.close()
            bar = tqdm(total=p.total, desc=label, leave=False, dynamic_ncols=True)
        bar.n = p.done
        rest = p.desc[len(p.stage):].lstrip(": ")
        if rest:
            bar.set_postfix_str(rest, refresh=False)
        bar.refresh()

    try:
        yield Progress(job, draw)
    finally:
        if bar is not None:
            bar.close()

"""cedm.progress: the one progress primitive (stage, percent, ETA) behind the CLI's tqdm and the app."""
from __future__ import annotations

import pytest

from cedm.progress import Progress, format_seconds, stage_of, tqdm_progress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_stage_percent_and_eta_from_a_fake_clock():
    clock, lines = Clock(), []
    p = Progress("clustering", lambda pr: lines.append(pr.line()), clock=clock)
    p(0, 100, "features: starting")
    assert p.stage == "features" and p.fraction == 0 and p.eta_s() is None
    clock.t += 10
    p(25, 100, "features: 250 images/s")
    assert p.eta_s() == pytest.approx(30)  # 25% in 10 s: 30 s to go
    assert lines[-1] == "clustering · features: 250 images/s · 25% · about 30 s left"
    clock.t += 5
    p(0, 20, "TEMI epochs")  # a new stage restarts the clock the ETA is measured from
    clock.t += 2
    p(10, 20, "TEMI epochs")
    assert p.eta_s() == pytest.approx(2)
    p(1, None, "map: UMAP of 3,391 points")  # no total: no percent, the time so far instead
    assert p.fraction is None and "so far" in p.line() and "%" not in p.line()


def test_helpers():
    assert stage_of("features: 12 images/s") == "features" and stage_of("") == ""
    assert format_seconds(5) == "5 s" and format_seconds(125) == "2 min 05 s" and format_seconds(7260) == "2 h 01 min"


def test_tqdm_progress_draws_a_bar_per_stage(capsys):
    with tqdm_progress("bound") as report:
        report(1, 4, "TEMI with C = 10")
        report(2, 4, "TEMI with C = 20")
        report(1, 1, "bound done")
    err = capsys.readouterr().err
    assert "TEMI with C = 10" in err and "bound done" in err

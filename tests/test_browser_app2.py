"""The Adapt tab ("more like these") in real headless Chromium: picked images or a saved selection become a
two-class probe of a trained model, its training shows in the tab's one progress component before the result,
and guided samples appear next to the same noise unguided (issue 14).

Runs on its own stand-in demo and tiny models (16 px), whatever ran before it: its app sets the demo for as long
as it serves (running_app), and it runs in local mode, so that a row set saved into the demo's overlay (what
the Clusters tab's "save selection" does) is the one the page sees.
"""
from __future__ import annotations

import importlib.util
import re
import time

import pytest

from tests.browser_util import ARTIFACTS, CHROMIUM, make_tiny_models, running_app
from tests.test_browser import _open_tab, _progress_before, _seen, _watch, browser_page  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]
PANEL, REPORT, GALLERY = "#cedm-progress-probe", "#cedm-probe-report", "#cedm-probe-gallery"
REDS = [0, 3, 6, 9, 12]  # the stand-in demo's rows are red, green, blue in turn


@pytest.fixture(scope="module")
def adapt_app(tmp_path_factory):
    models = make_tiny_models(tmp_path_factory.mktemp("shipped"))
    with running_app(tmp_path_factory.mktemp("adapt-app"), public=False, model_dirs=[models]) as served:
        yield served


@pytest.fixture
def slow_probe(monkeypatch):
    """A busy machine: each batch of denoiser features takes a while, so that the probe's training lasts
    long enough to be watched (on a quiet one the tiny probe trains in under a second)."""
    from cedm.probes import probe

    batched = probe._batched

    def slow(fn, *args):
        return batched(lambda sl: (time.sleep(0.4), fn(sl))[1], *args)

    monkeypatch.setattr(probe, "_batched", slow)


def _open_adapt(page, url: str) -> None:
    page.goto(url)
    _open_tab(page, "Adapt")
    page.locator("#cedm-probe-train").wait_for()
    # the tab's model list holds the tiny shipped models; the unconditional one is chosen
    page.wait_for_function(
        "() => (document.querySelector('#cedm-probe-model input') || {}).value?.startsWith('tiny-uncond')")


def _choose(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _run_watched(page, button: str, panel: str, result: str, words: str, done: str) -> list[dict]:
    """Click ``button`` and wait for ``done`` in ``result``; the job's progress line (``words``) showed in
    ``panel`` before that, and no other component had a progress bar meanwhile. Returns the snapshots."""
    _watch(page, panel, result)
    page.locator(button).click()
    page.locator(result, has_text=done).wait_for(timeout=240_000)
    seen = _seen(page)
    assert _progress_before(seen, words, done), seen[-5:]
    assert max(s["elsewhere"] for s in seen if done not in s["result"]) == 0, seen[-5:]
    return seen


def _captions(page) -> list[str]:
    return page.evaluate(f"() => [...document.querySelectorAll('{GALLERY} .caption-label')].map(c => c.innerText)")


def test_more_like_these_from_picked_images(adapt_app, browser_page, slow_probe):
    """Five picked images -> saved as a row set -> a two-class probe, its progress in the tab's progress
    component before the report (no progress bar over anything else) -> guided samples toward the picks, each
    next to the same seed unguided."""
    url, _, _ = adapt_app
    page, errors = browser_page
    _open_adapt(page, url)
    page.get_by_label("images I pick (row numbers)").check()
    page.locator("#cedm-probe-picks textarea, #cedm-probe-picks input").first.fill(", ".join(map(str, REDS)))
    name = page.get_by_label("save picks as")
    name.fill("reds")
    _run_watched(page, "#cedm-probe-train", PANEL, REPORT, "probe", "rows:reds")
    page.locator(PANEL, has_text="probe trained in").wait_for()
    # the picks are offered as a saved row set from now on, and they are the class to generate toward
    assert page.locator("#cedm-probe-rowset input").input_value() == "reds"
    assert page.locator("#cedm-probe-class input").input_value() == "reds"

    page.locator("#cedm-probe-go").click()
    page.wait_for_function(f"() => [...document.querySelectorAll('{GALLERY} img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 8", timeout=240_000)
    caps = _captions(page)
    unguided = [c for c in caps if c.startswith("unguided")]
    guided = [c for c in caps if c.startswith("probe-guided w 2 → reds")]
    assert len(unguided) == len(guided) == 4, caps
    seeds = lambda cs: sorted(re.search(r"seed (\d+)", c).group(1) for c in cs)  # noqa: E731
    assert seeds(unguided) == seeds(guided) == ["0", "1", "2", "3"]  # the same noise, with and without
    page.locator(PANEL, has_text="8 images sampled in").wait_for()
    page.screenshot(path=str(ARTIFACTS / "adapt_picks.png"), full_page=True)
    assert errors == []


def test_more_like_these_from_a_saved_selection_clears_the_last_result(adapt_app, browser_page, slow_probe):
    """A selection saved meanwhile (as the Clusters tab saves one) is offered when the tab opens; training its
    probe first clears the previous probe's report and samples, then shows its own."""
    from cedm import workspace as wsp
    from cedm.clusters.labelings import save_rows

    url, _, home = adapt_app
    page, errors = browser_page
    _open_adapt(page, url)
    # a first probe (picks), with samples, so that there is a result to clear
    page.get_by_label("images I pick (row numbers)").check()
    page.locator("#cedm-probe-picks textarea, #cedm-probe-picks input").first.fill("1, 4, 7, 10")
    page.get_by_label("save picks as").fill("greens")
    page.locator("#cedm-probe-train").click()
    page.locator(REPORT, has_text="rows:greens").wait_for(timeout=240_000)
    page.locator("#cedm-probe-go").click()
    page.wait_for_function(f"() => document.querySelectorAll('{GALLERY} img').length === 8", timeout=240_000)

    save_rows(wsp.open_demo(home), "favourites", [2, 5, 8, 11, 14], note="saved in the Clusters tab")
    _open_tab(page, "Dataset")
    _open_tab(page, "Adapt")  # opening the tab refreshes its choices
    page.get_by_label("a saved row set").check()
    page.wait_for_function("() => document.querySelector('#cedm-probe-rowset input') !== null")
    _choose(page, "#cedm-probe-rowset", "favourites")
    seen = _run_watched(page, "#cedm-probe-train", PANEL, REPORT, "probe", "rows:favourites")
    first_new = next(i for i, s in enumerate(seen) if "favourites" in s["result"])
    assert any(s["result"].strip() == "" for s in seen[:first_new]), seen[:3]  # the old report went at once
    assert page.evaluate(f"() => document.querySelectorAll('{GALLERY} img').length") == 0  # old samples gone
    assert page.locator("#cedm-probe-class input").input_value() == "favourites"
    page.screenshot(path=str(ARTIFACTS / "adapt_rowset.png"), full_page=True)
    assert errors == []


def _set_slider(page, elem: str, value: str) -> None:
    """Type a slider's value and wait until the slider itself holds it (under load the typed value was once
    not taken before the click that used it: the run sampled the default 200): type it again then."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f"{elem} input[type=number]")
    check = f"() => document.querySelector('{elem} input[type=range]').value === '{value}'"
    for _ in range(3):
        box.fill(value)
        box.press("Enter")
        try:
            page.wait_for_function(check, timeout=15_000)
            return
        except PlaywrightTimeout:
            print(f"{elem} did not take {value}: typing it again")
    page.wait_for_function(check)


def test_evaluation_shows_its_progress_then_the_table(adapt_app, browser_page):
    """Models tab -> Evaluate: real-image features, sampling and sample features show their stages in the
    evaluation's progress component before the FD table arrives; nothing else gets a progress bar."""
    url, _, _ = adapt_app
    page, errors = browser_page
    page.goto(url)
    _open_tab(page, "Models")
    page.wait_for_function(
        "() => (document.querySelector('#cedm-models-model input') || {}).value?.startsWith('tiny-c4')")
    page.get_by_text("Evaluate the model on the open workspace").click()
    _set_slider(page, "#cedm-eval-n", "20")
    _run_watched(page, "#cedm-eval-go", "#cedm-progress-eval", "#cedm-eval-result", "eval", "FD_EffNetLite0")
    row = page.locator("#cedm-eval-result tr", has_text="tiny-c4").inner_text()
    assert re.search(r"tiny-c4\s+2\s+20\s+\d+\.\d", row), row  # guidance 2, 20 samples, an FD
    page.locator("#cedm-progress-eval", has_text="evaluated in").wait_for()
    assert errors == []

"""Layouts in the app, in real headless Chromium (seed 003): a box drawn with the sliders of the Generate tab
reaches the sampler of a spatial model, and the same-noise comparison shows its rows with each sample's layout
IoU; the Layouts tab computes self-boxes and draws them over the images, and a clicked image becomes the layout.
"""
from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from tests.browser_util import ARTIFACTS, CHROMIUM, running_app
from tests.test_browser import browser_page  # noqa: F401  (the Chromium page fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]


def make_spatial_models(root):
    """A random-init 16 px box C-EDM (2 clusters, p_uncond and p_drop_class > 0, annotator efficientnet_lite0)
    and an image-level one: the layout group must show for the first only."""
    import torch

    from cedm.model.edm import CEDM, save_model

    cond = {"spec": "kmeans:2", "q": [0.5, 0.5]}
    spatial = {"kind": "box", "n_segments": None, "channels": 1, "p_drop_map": 0.0, "p_drop_class": 0.2,
               "backbone": "efficientnet_lite0", "spec": "box"}
    segments = {**spatial, "kind": "segments", "n_segments": 3, "channels": 3, "spec": "segments:3"}
    for i, (name, channels, sp) in enumerate((("tiny-box", 1, spatial), ("tiny-image", 0, None),
                                              ("tiny-seg", 3, segments))):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            info = {"p_uncond": 0.2, "condition": cond, **({"spatial": sp} if sp else {})}
            m = CEDM.from_preset("tiny", 16, 2, info=info, spatial_channels=channels)
        save_model(root / name, m)
    return root


@pytest.fixture(scope="module")
def spatial_app(tmp_path_factory):
    models = make_spatial_models(tmp_path_factory.mktemp("spatial-models"))
    with running_app(tmp_path_factory.mktemp("spatial-app"), model_dirs=[models], public=False) as served:
        yield served


@pytest.fixture
def page_(browser_page):  # noqa: F811  (test_browser's Chromium page, its generous default wait)
    return browser_page


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _wait_loaded(page) -> None:
    """The page's load events are done (the layout group's sliders got the 16 px models' range), so that none
    of them lands after the test's own changes."""
    page.wait_for_function("() => document.querySelector('#cedm-layout-x1 input[type=range]')?.max === '16'")
    page.wait_for_function(
        "() => (document.querySelector('#cedm-gen-cluster input') || {}).value?.startsWith('cluster')")


def _choose_model(page, name: str) -> None:
    page.locator("#cedm-gen-model input").click()
    page.get_by_role("option", name=re.compile(name)).click()


def _generate_tab(page, url: str, model: str) -> None:
    """The Generate tab, loaded, with ``model`` chosen."""
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    _wait_loaded(page)
    _choose_model(page, model)


def test_a_drawn_box_reaches_the_sampler_and_the_comparison_shows_ious(spatial_app, page_, monkeypatch):
    from cedm.model import spatial

    seen = []  # the layout of every sampler call under a layout
    real = spatial.generate_with_layout

    def spy(model, layout_map, n, **kw):
        seen.append(spatial.layout_of_maps(layout_map).tolist())
        return real(model, layout_map, n, **kw)

    monkeypatch.setattr(spatial, "generate_with_layout", spy)
    url, _, _ = spatial_app
    page, errors = page_
    _generate_tab(page, url, "tiny-image")
    page.locator("#cedm-layout-compare").wait_for(state="hidden")  # an image-level model takes no layout
    _choose_model(page, "tiny-box")
    page.locator("#cedm-layout-compare").wait_for()  # the layout group shows for a spatial model
    # the sliders span the model's 16 px; the model change set them to the middle quarter
    page.wait_for_function("() => document.querySelector('#cedm-layout-x1 input[type=number]').value === '12'")
    for elem, v in (("cedm-layout-x0", 2), ("cedm-layout-y0", 3), ("cedm-layout-x1", 10), ("cedm-layout-y1", 12)):
        _set_slider(page, elem, v)
    _set_slider(page, "cedm-layout-n", 2)
    page.locator("#cedm-layout-compare").click()
    # three rows of two: image-level, layout only, layout + cluster, each with its IoU
    page.wait_for_function("() => document.querySelectorAll('#cedm-layout-gallery img').length === 6")
    page.wait_for_function("""() => [...document.querySelectorAll('#cedm-layout-gallery img')]
                                     .every(i => i.complete && i.naturalWidth > 0)""")
    summary = page.locator("#cedm-layout-summary")
    for name in ("image-level", "layout only", "layout + cluster"):
        summary.locator("td", has_text=name).first.wait_for()
    text = summary.inner_text()
    ious = [float(v) for v in re.findall(r"\b[01]\.\d{3}\b", text)]
    assert len(ious) == 3 and all(0 <= v <= 1 for v in ious), text
    page.locator("#cedm-layout-gallery", has_text=re.compile(r"layout \+ cluster · IoU \d\.\d\d")).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "generate_layout.png"), full_page=True)
    # the drawn box reached the sampler: both layout rows were sampled under exactly that box
    assert seen == [[[2, 3, 10, 12]], [[2, 3, 10, 12]]], seen
    assert errors == []


def test_layouts_tab_computes_and_draws_self_boxes_and_a_click_sets_the_layout(spatial_app, page_):
    url, _, home = spatial_app
    page, errors = page_
    page.goto(url)
    page.get_by_role("tab", name="Layouts").click()
    # none cached yet: the hint gives the command, the button computes them with progress
    page.locator("#cedm-annot-hint", has_text="cedm annotate").wait_for()
    page.get_by_text("Compute self-annotations").click()
    page.locator("#cedm-annot-compute").click()
    page.locator("#cedm-annot-hint", has_text="box with efficientnet_lite0: done").wait_for()
    page.locator("#cedm-annot-gallery", has_text=re.compile(r"box \[\d+, \d+, \d+, \d+\]")).first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('#cedm-annot-gallery img').length === 24")
    page.locator("#cedm-annot-page-info", has_text="page 1 of 5").wait_for()
    # the overlay is drawn: a gallery image differs from the plain workspace image
    from cedm import workspace as wsp
    from cedm.annotate import store

    ws = wsp.open_workspace(home, "demo")
    boxes = store.get_boxes(ws, "efficientnet_lite0")
    page.locator("#cedm-annot-gallery", has_text=f"box {boxes[0].tolist()}").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "layouts_tab.png"), full_page=True)
    # clicking image 3 makes it the Generate tab's layout
    page.locator("#cedm-annot-gallery .thumbnail-item").nth(3).click()
    page.get_by_role("tab", name="Generate").click()
    _choose_model(page, "tiny-box")
    page.locator("#cedm-layout-compare").wait_for()
    page.wait_for_function("() => document.querySelector('#cedm-layout-row input').value === '3'")
    assert page.locator("#cedm-layout-row").is_visible() and not page.locator("#cedm-layout-x0").is_visible()
    assert errors == []
    assert np.asarray(boxes).shape == (ws.n, 4)


def test_an_uploaded_mask_reaches_the_layout_of_a_segments_model(spatial_app, page_, monkeypatch, tmp_path):
    from PIL import Image

    from cedm.model import spatial

    seen = []
    real = spatial.layout_maps

    def spy(model, layout, *a, **kw):
        maps, desc = real(model, layout, *a, **kw)
        seen.append(maps.argmax(1)[0].numpy())
        return maps, desc

    monkeypatch.setattr(spatial, "layout_maps", spy)
    ids = np.zeros((16, 16), np.uint8)
    ids[:, 8:] = 1
    ids[12:] = 2
    Image.fromarray(ids).save(tmp_path / "layout.png")
    url, _, _ = spatial_app
    page, errors = page_
    _generate_tab(page, url, "tiny-seg")
    page.locator("#cedm-layout-compare").wait_for()
    page.get_by_label("a mask PNG (pixel = segment id)").check()
    page.locator("#cedm-layout-mask input[type=file]").set_input_files(str(tmp_path / "layout.png"))
    page.locator("#cedm-layout-mask", has_text="layout").first.wait_for()
    page.locator("#cedm-layout-show").click()
    page.locator("#cedm-layout-preview img").wait_for()
    assert len(seen) == 1 and np.array_equal(seen[0], ids)
    assert errors == []

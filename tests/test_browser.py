"""The app in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Installs nothing: scripts/test.sh installs chromium; without it these tests are skipped.
Screenshots are kept under test-artifacts/.
"""
from __future__ import annotations

import importlib.util
import re
import time

import pytest

from tests.browser_util import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DEMO_N, make_zip, running_app, \
    session_workspaces

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]
TIMEOUT_MS = 60_000  # generous: CI machines may be busy


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as served:
        yield served


@pytest.fixture
def browser_page(tmp_path):
    """A fresh Chromium profile and page; collects uncaught page errors and console errors."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                    headless=True, args=CHROMIUM_ARGS,
                                                    viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        try:
            yield page, errors
        finally:
            ctx.close()


def _gallery_images(page):
    return page.locator("#cedm-dataset-gallery img")


def test_page_shows_the_demo_and_pages_through_it(app, browser_page):
    url, _, _ = app
    page, errors = browser_page
    page.goto(url)
    page.get_by_text(f"{DEMO_N} images").first.wait_for()
    gallery = _gallery_images(page)
    gallery.nth(47).wait_for()
    assert gallery.count() == 48
    # every thumbnail really decodes (not a broken image)
    page.wait_for_function("() => [...document.querySelectorAll('#cedm-dataset-gallery img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.get_by_role("button", name="Delete this workspace").is_disabled()
    page.screenshot(path=str(ARTIFACTS / "dataset_demo.png"), full_page=True)
    page.get_by_role("button", name="next >").click()
    page.locator("#cedm-page-info", has_text="page 2 of 3").wait_for()
    page.get_by_role("button", name="next >").click()
    page.locator("#cedm-page-info", has_text="page 3 of 3").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#cedm-dataset-gallery img').length === 4")
    assert errors == []


@pytest.mark.skipif(importlib.util.find_spec("cedm.dataset.importers") is None,
                    reason="cedm.dataset.importers is not in this tree yet")
def test_upload_a_zip_shows_the_report_and_the_new_workspace(app, browser_page, tmp_path):
    url, _, home = app
    page, errors = browser_page
    page.goto(url)
    _gallery_images(page).first.wait_for()
    page.get_by_text("Upload images as a new workspace").click()
    page.locator("#cedm-upload input[type=file]").set_input_files(str(make_zip(tmp_path / "holiday.zip")))
    page.locator("#cedm-upload", has_text="holiday.zip").wait_for()
    page.locator("#cedm-import").click()
    page.locator("#cedm-status", has_text=re.compile(r"Imported 6 of 8 files into holiday")).wait_for()
    page.get_by_text("6 images").first.wait_for()  # the summary of the new workspace
    page.wait_for_function("() => document.querySelectorAll('#cedm-dataset-gallery img').length === 6")
    page.locator("#cedm-skipped", has_text="notes.txt").wait_for()
    page.locator("#cedm-skipped", has_text="broken.png").wait_for()
    assert page.get_by_role("button", name="Delete this workspace").is_enabled()
    page.screenshot(path=str(ARTIFACTS / "dataset_after_import.png"), full_page=True)
    assert [p.name for p in session_workspaces(home)] == ["holiday"]
    assert errors == []
    page.close()  # the visitor leaves: their upload is removed (the server sees the page's stream end)
    for _ in range(300):
        if not session_workspaces(home):
            break
        time.sleep(0.1)
    assert session_workspaces(home) == []

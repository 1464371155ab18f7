"""End to end: the README's own `make lab`, a real JupyterLab, headless Chromium driven by Playwright.

Opens lesson 00 (the student notebook `make lab` prepares), runs every cell, moves the Δy slider of
the offset explorer and checks that the figure changed. Skipped, with the reason shown, only when
Chromium is not installed (``.ci/run`` installs Debian's chromium, or fails); Playwright is a test dependency: if
it does not import, the test fails.

Time limits only catch a hang: each is many times what its step takes (measured on a shared, loaded 2-core VM:
JupyterLab up in 9 s, the browser part 27 s in all), so a slow CI machine does not fail the test.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.request

import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The limit, in seconds, of one browser step: it only catches a hang (see the module docstring). The JupyterLab
#: server is the fixture ``lab`` of tests/conftest.py.
STEP_S = 480
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def _kernel_state(url: str, token: str, notebook: str) -> str:
    """Execution state of the kernel of ``notebook``'s session, from the server's REST API ("" if none yet)."""
    try:
        with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.loads(r.read())
    except OSError:
        return ""
    for s in sessions:
        if str(s.get("path", "")).endswith(notebook):
            return str((s.get("kernel") or {}).get("execution_state", ""))
    return ""


def _wait_for_idle_kernel(url: str, token: str, notebook: str, timeout: float = STEP_S) -> None:
    deadline = time.monotonic() + timeout
    while _kernel_state(url, token, notebook) != "idle":
        if time.monotonic() > deadline:
            pytest.fail(f"the kernel of {notebook} was not idle after {timeout:.0f} s "
                        f"(state {_kernel_state(url, token, notebook)!r})")
        time.sleep(1)


@contextlib.contextmanager
def run_all_in_browser(lab, notebook: str):
    """Open the student notebook ``notebook`` (the one `make lab` prepares) in headless Chromium, run every cell and
    yield ``(page, figure)``: the page, and its first explorer figure, visible, once the server reports the kernel
    idle. A run request sent while the kernel was still connecting can be lost: then all cells are run once more.
    Playwright is a test dependency: if it does not import, the test fails. The browser is closed afterwards."""
    try:
        from playwright import sync_api
    except ImportError as exc:  # a test dependency (pip install -e ".[test]"): a broken install, not a skip
        pytest.fail(f"playwright does not import ({exc}); it is in the test extra: pip install -e '.[test]'")
    url, token = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_S * 1000)
            page.goto(f"{url}/lab/tree/student/{notebook}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            _wait_for_idle_kernel(url, token, notebook)  # the server's word, not the page's indicator
            figure = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) img.dcn-figure").first  # in this tab only
            for attempt in (1, 2):
                page.get_by_role("menuitem", name="Run").click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                try:
                    figure.wait_for(state="attached", timeout=STEP_S * 1000 // 2 * attempt)  # cells render lazily
                    break
                except sync_api.TimeoutError:
                    if attempt == 2:
                        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                        pytest.fail(f"no explorer figure after running all cells twice; kernel: "
                                    f"{_kernel_state(url, token, notebook)}; outputs: {outputs[-5:]!r}")
            _wait_for_idle_kernel(url, token, notebook)  # every cell has run, the last ones too
            figure.scroll_into_view_if_needed()
            figure.wait_for(state="visible")
            yield page, figure
        finally:
            browser.close()


def assert_no_traceback(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    assert errors.count() == 0, "a cell printed a traceback"


def test_lesson00_explorer_updates_in_a_real_browser(lab):
    with run_all_in_browser(lab, "00_tour.ipynb") as (page, figure):
        before_src, before_png = figure.get_attribute("src"), figure.screenshot()
        slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="Δy")).first
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(15):
            handle.press("ArrowRight")
        page.wait_for_function(
            "([src]) => { const i = document.querySelector('img.dcn-figure'); return i && i.src !== src; }",
            arg=[before_src],
        )
        readout = slider.locator(".widget-readout").first.inner_text()
        assert float(readout) > 0.5, f"the Δy slider did not move (readout {readout!r})"
        page.wait_for_timeout(500)
        assert figure.screenshot() != before_png, "the figure's pixels did not change after moving the slider"
        assert_no_traceback(page)

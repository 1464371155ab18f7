"""End to end: lesson 08's support explorer in a real JupyterLab and headless Chromium.

The same set-up as lesson 00's test (tests/test_e2e_browser.py, whose fixture and helpers this file imports: the
README's own `make lab`, Debian's Chromium driven by Playwright): open the student notebook of lesson 08, run
every cell, move the "node x" slider of the SupportExplorer and check that the figure changed, its pixels too,
and that no cell printed a traceback.

Time limits only catch a hang (the module docstring of tests/test_e2e_browser.py says how they were chosen); lesson
08 runs for about a minute in fast mode on the course's loaded 2-core machine, well inside them.
"""
from __future__ import annotations

import pytest

from test_e2e_browser import CHROMIUM, _kernel_state, _wait_for_idle_kernel

NOTEBOOK = "08_spatial_support.ipynb"
#: Generous limits, in seconds, that only catch a hang.
STEP_S = 480

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def test_lesson08_support_explorer_updates_in_a_real_browser(lab):
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
            page.goto(f"{url}/lab/tree/student/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            _wait_for_idle_kernel(url, token, NOTEBOOK, timeout=STEP_S)
            figure = page.locator("img.dcn-figure").first
            for attempt in (1, 2):  # a run request sent while the kernel was still connecting can be lost
                page.get_by_role("menuitem", name="Run").click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                try:
                    figure.wait_for(state="attached", timeout=STEP_S * 1000 // 2 * attempt)  # cells render lazily
                    break
                except sync_api.TimeoutError:
                    if attempt == 2:
                        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                        pytest.fail(f"no explorer figure after running all cells twice; kernel: "
                                    f"{_kernel_state(url, token, NOTEBOOK)}; outputs: {outputs[-5:]!r}")
            _wait_for_idle_kernel(url, token, NOTEBOOK, timeout=STEP_S)  # every cell has run, the last ones too
            figure.scroll_into_view_if_needed()
            figure.wait_for(state="visible")
            before_src, before_png = figure.get_attribute("src"), figure.screenshot()
            slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="node x")).first
            start = int(slider.locator(".widget-readout").first.inner_text())
            handle = slider.locator(".noUi-handle").first
            step = -1 if start >= 3 else 1  # three steps towards the middle of the 24-unit grid
            handle.focus()
            for _ in range(3):
                handle.press("ArrowLeft" if step < 0 else "ArrowRight")
            page.wait_for_function(
                "([src]) => { const i = document.querySelector('img.dcn-figure'); return i && i.src !== src; }",
                arg=[before_src],
            )
            moved = int(slider.locator(".widget-readout").first.inner_text())
            assert moved == start + 3 * step, f"the node x slider did not move by 3 (from {start} to {moved})"
            page.wait_for_timeout(500)
            assert figure.screenshot() != before_png, "the figure's pixels did not change after moving the slider"
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                  has_text="Traceback")
            assert errors.count() == 0, "a cell printed a traceback"
        finally:
            browser.close()

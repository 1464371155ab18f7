"""End to end: lesson 08's support explorer in a real JupyterLab and headless Chromium.

The same set-up as lesson 00's test (tests/test_e2e_browser.py, whose helpers this file imports, and the session's JupyterLab of tests/conftest.py: the
README's own `make lab`, Debian's Chromium driven by Playwright): open the student notebook of lesson 08, run
every cell, move the "node x" slider of the SupportExplorer and check that the figure changed, its pixels too,
and that no cell printed a traceback.

Time limits only catch a hang (the module docstring of tests/test_e2e_browser.py says how they were chosen); lesson
08 runs for about a minute in fast mode on the course's loaded 2-core machine, well inside them.
"""
from __future__ import annotations

import pytest

from test_e2e_browser import CHROMIUM, assert_no_traceback, run_all_in_browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def test_lesson08_support_explorer_updates_in_a_real_browser(lab):
    with run_all_in_browser(lab, "08_spatial_support.ipynb") as (page, figure):
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
        assert_no_traceback(page)

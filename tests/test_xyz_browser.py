"""The X/Y/Z plot section of the page, in headless Chromium against a live
server: a 2x2 plot makes a grid with legends and four gallery jobs; a bad value
shows at its axis; axe finds nothing serious in the open section."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from browser_helpers import axe_problems

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _fetch_json(page, url: str):
    return page.evaluate("(u) => fetch(u).then(r => r.json())", url)


def test_a_2x2_plot_from_the_page(serve, page):
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.fill("#prompt", "a red fox")
    for name, value in (("width", 64), ("height", 64), ("steps", 1), ("seed", 7)):
        page.fill(f"#{name}", str(value))
    page.click("#xyz-section > summary")
    # A bad value first: the message shows at the Y axis, nothing is queued.
    page.select_option("#xyz-x-type", "Steps")
    page.fill("#xyz-x-values", "1, 2")
    page.select_option("#xyz-y-type", "CFG Scale")
    page.fill("#xyz-y-values", "5, seven")
    page.click("#xyz-run")
    page.wait_for_selector("#xyz-y-error:visible")
    assert "seven" in page.inner_text("#xyz-y-error")
    assert page.get_attribute("#xyz-y-values", "aria-invalid") == "true"
    assert _fetch_json(page, "/api/jobs")["jobs"] == []

    page.fill("#xyz-y-values", "5, 7")
    assert not page.is_visible("#xyz-y-error")
    page.click("#xyz-run")
    page.wait_for_selector("#xyz-grid-link:visible", timeout=180_000)
    page.wait_for_function("() => document.querySelector('#xyz-grid').naturalWidth > 0")
    assert "4 of 4 cells" in page.inner_text("#xyz-status")
    src = page.get_attribute("#xyz-grid", "src")
    png = page.evaluate("(u) => fetch(u).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))", src)
    grid = Image.open(io.BytesIO(bytes(png))).convert("RGB")
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
    top = np.asarray(grid.crop((pad_left, 0, grid.width, grid.height - 128)).convert("L"))
    assert (top < 128).sum() > 20  # the X legends
    jobs = _fetch_json(page, "/api/jobs?limit=10")["jobs"]
    cells = [job for job in jobs if "index" in (job["params"].get("group") or {})]
    assert len(jobs) == 5 and all(job["state"] == "done" for job in jobs)
    assert sorted((c["params"]["steps"], c["params"]["guidance_scale"]) for c in cells) == [
        (1, 5.0), (1, 7.0), (2, 5.0), (2, 7.0)]
    assert all("Steps: " in c["images"][0]["infotext"] for c in cells)


@pytest.mark.parametrize("scheme_page", ["light", "dark"], indirect=True)
def test_the_plot_section_passes_axe(serve, scheme_page):
    server = serve()
    scheme_page.goto(server.url + "/")
    scheme_page.wait_for_selector("#model-status[data-state=ready]")
    scheme_page.click("#xyz-section > summary")
    scheme_page.fill("#xyz-x-values", "1, x")
    scheme_page.select_option("#xyz-x-type", "Steps")
    scheme_page.fill("#prompt", "a fox")
    scheme_page.click("#xyz-run")
    scheme_page.wait_for_selector("#xyz-x-error:visible")
    assert axe_problems(scheme_page, "xyz plot") == []

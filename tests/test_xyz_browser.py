"""The X/Y/Z plot section of the page, in headless Chromium against a live
server: a 2x2 plot makes a grid with legends and four gallery jobs; a bad value
shows at its axis; axe finds nothing serious in the open section; the same at a
phone's 390x844, light and dark."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from browser_helpers import TIMEOUT_MS, axe_problems, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _fetch_json(page, url: str):
    return page.evaluate("(u) => fetch(u).then(r => r.json())", url)


def _bad_plot(page, url: str, press) -> None:
    """Open the page, fill the form's settings, open the plot section and ask for a 2x2 plot whose
    second Y value is not a number; ``press`` is how the user presses (click, or tap on a phone)."""
    page.goto(url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.fill("#prompt", "a red fox")
    for name, value in (("width", 64), ("height", 64), ("steps", 1), ("seed", 7)):
        page.fill(f"#{name}", str(value))
    press("#xyz-section > summary")
    page.select_option("#xyz-x-type", "Steps")
    page.fill("#xyz-x-values", "1, 2")
    page.select_option("#xyz-y-type", "CFG Scale")
    page.fill("#xyz-y-values", "5, seven")
    press("#xyz-run")
    page.wait_for_selector("#xyz-y-error:visible")


def test_a_2x2_plot_from_the_page(serve, page):
    server = serve()
    # A bad value first: the message shows at the Y axis, nothing is queued.
    _bad_plot(page, server.url, page.click)
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


def _grid_from_page(page) -> Image.Image:
    src = page.get_attribute("#xyz-grid", "src")
    png = page.evaluate("(u) => fetch(u).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))", src)
    return Image.open(io.BytesIO(bytes(png))).convert("RGB")


OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"


def test_a_2x2_plot_on_a_phone_light_and_dark(serve, browser, tmp_path):
    """A phone's 390x844 with touch: the section fits the width (no sideways scroll), a 2x2 plot
    queued from it ends in a grid with legends shown within the screen and four cell jobs plus the
    grid in the gallery; axe finds nothing serious in light or dark, with an error shown and done."""
    server = serve()
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="light", is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    violations = watch_csp(context, page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    problems: list[str] = []

    def axe_both(where: str) -> None:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.locator("#xyz-section").screenshot(path=str(tmp_path / f"phone-{where}-{scheme}.png"))
            problems.extend(axe_problems(page, f"phone {scheme} {where}"))
        page.emulate_media(color_scheme="light")

    try:
        _bad_plot(page, server.url, page.tap)
        assert page.evaluate(OVERFLOW) <= 0
        for axis in ("x", "y", "z"):  # each axis's type and values within the screen, one under the other
            for part in ("type", "values"):
                left, right = page.evaluate(f"() => {{ const r = document.getElementById('xyz-{axis}-{part}')"
                                            ".getBoundingClientRect(); return [r.left, r.right]; }")
                assert 0 <= left < right <= 390, (axis, part, left, right)
        axe_both("error")

        page.fill("#xyz-y-values", "5, 7")
        page.tap("#xyz-run")
        page.wait_for_selector("#xyz-grid-link:visible", timeout=180_000)
        page.wait_for_function("() => document.querySelector('#xyz-grid').naturalWidth > 0")
        assert "4 of 4 cells" in page.inner_text("#xyz-status")
        grid = _grid_from_page(page)
        pad_left = 64 * 3 // 4
        assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
        top = np.asarray(grid.crop((pad_left, 0, grid.width, grid.height - 128)).convert("L"))
        left = np.asarray(grid.crop((0, grid.height - 128, pad_left, grid.height)).convert("L"))
        assert (top < 128).sum() > 20 and (left < 128).sum() > 20  # the X and Y legends
        shown = page.evaluate("() => { const r = document.getElementById('xyz-grid').getBoundingClientRect();"
                              " return [r.left, r.right, r.width]; }")
        # within the screen, at the section's width: a 176 px grid's legends are too small to read on a phone
        assert 0 <= shown[0] and shown[1] <= 390 and shown[2] >= 300
        page.locator("#xyz-grid").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "phone-grid.png"))
        assert page.evaluate(OVERFLOW) <= 0
        axe_both("done")

        jobs = _fetch_json(page, "/api/jobs?state=done&limit=10")["jobs"]
        cells = [job for job in jobs if "index" in (job["params"].get("group") or {})]
        assert len(jobs) == 5 and len(cells) == 4
        assert sorted((c["params"]["steps"], c["params"]["guidance_scale"]) for c in cells) == [
            (1, 5.0), (1, 7.0), (2, 5.0), (2, 7.0)]
        page.goto(server.url + "/gallery")
        page.wait_for_selector("article.tile")
        shown_jobs = page.eval_on_selector_all("article.tile[data-job]", "tiles => tiles.map(t => t.dataset.job)")
        assert {job["id"] for job in jobs} <= set(shown_jobs)
        assert page.evaluate(OVERFLOW) <= 0
        assert not problems, "\n".join(problems)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"

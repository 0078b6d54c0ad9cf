"""The Extras page and the Upscale action in a real Chromium against a real
demo-model server (fixtures of test_browser.py), issue #24: an uploaded image
processed on /extras lands in the gallery and stays after a reload, with its
infotext; a gallery card's Upscale queues a job (no blob: URL) and its Extras
link opens the page on that image."""
from __future__ import annotations

import pytest

from browser_helpers import submit
from helpers import gradient, tile_action

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_upload_on_extras_then_the_result_is_in_the_gallery_after_a_reload(serve, page, shots, tmp_path):  # noqa: F811
    server = serve()
    gradient(40, 30).save(tmp_path / "source.png")
    page.goto(server.url + "/extras")
    assert page.get_attribute("#nav-extras", "aria-current") == "page"
    page.set_input_files("#extras-image", str(tmp_path / "source.png"))
    page.wait_for_function("() => document.getElementById('extras-source-image').naturalWidth === 40")
    page.select_option("#upscaler_1", "Lanczos")
    page.fill("#upscaling_resize", "2")
    page.click("#extras-submit")
    page.wait_for_selector("#extras-job[data-state=done]")
    page.wait_for_function("() => document.querySelector('#extras-result img').naturalWidth === 80")
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in page.text_content("#extras-infotext")
    src = page.get_attribute("#extras-result img", "src")
    assert src.startswith("/images/")  # a gallery image, not a blob: URL
    page.screenshot(path=str(shots / "extras.png"), full_page=True)
    page.goto(server.url + "/gallery")
    page.reload()
    tile = page.locator(f"article.tile:has(img[src='{src}'])")
    assert "Postprocess upscaler: Lanczos" in tile.locator("pre.infotext").text_content()
    assert "80×60 · Extras" in tile.locator(".meta").first.text_content()


def test_upscale_on_a_gallery_card_queues_a_job_and_extras_opens_the_page(serve, page):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    submit(page, "a lighthouse", width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=done]")
    page.goto(server.url + "/gallery")
    tile = page.locator("article.tile").first
    tile_action(tile, "Upscale ×2").click()
    page.wait_for_function("() => { const i = document.querySelector('.upscaled img'); return i && i.naturalWidth === 128; }")
    assert page.get_attribute(".upscaled img", "src").startswith("/images/")
    assert "(in the gallery)" in page.text_content(".upscale-status")
    page.reload()
    assert page.locator("article.tile").count() == 2  # the upscaled copy is a gallery image of its own
    tile_action(page.locator("article.tile").last, "Extras").click()
    page.wait_for_function("() => document.getElementById('extras-source-image').naturalWidth === 64")
    assert page.input_value("#sd-prompt") == "a lighthouse"
    page.check("#sd-upscale")
    page.fill("#sd-overlap", "16")
    page.fill("#sd-steps", "2")
    page.click("#extras-submit")
    page.wait_for_selector("#extras-job[data-state=done]")
    page.wait_for_function("() => document.querySelector('#extras-result img').naturalWidth === 128")
    assert "SD upscale overlap: 16" in page.text_content("#extras-infotext")

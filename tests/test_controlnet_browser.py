"""The ControlNet section of the generate page (static/controlnet.js) in a real headless Chromium
against a live demo server (fixtures of test_browser.py; nothing faked): a control image dropped
on the unit, the canny map previewed through /controlnet/detect, a job with ``demo-controlnet``
whose PNG records the unit, the gallery's "Send to ControlNet" and Reuse restoring the unit."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageDraw

from app.engine.metadata import parse_infotext, read_parameters
from browser_helpers import CHROMIUM, submit

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def edges_png() -> bytes:
    """A white square on black: canny finds its outline."""
    image = Image.new("RGB", (96, 96), "black")
    ImageDraw.Draw(image).rectangle((24, 24, 72, 72), fill="white")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def drop_file(page, selector: str, name: str, data: bytes) -> None:  # noqa: F811
    """Drop a file on ``selector`` as a user dragging it from their file manager."""
    page.evaluate("""([selector, name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        const target = document.querySelector(selector);
        target.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        target.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", [selector, name, base64.b64encode(data).decode("ascii")])


def results_png(page, server) -> bytes:  # noqa: F811
    src = page.get_attribute("#results img", "src")
    return page.request.get(src if src.startswith("http") else server.url + src).body()


def test_drop_preview_generate_and_reuse_a_controlnet_unit(serve, page):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#controlnet-section > summary")
    # The lists come from the extension's routes: canny among the modules, the demo's ControlNet picked.
    page.wait_for_selector("#cn0_module option[value=canny]", state="attached")
    assert page.input_value("#cn0_model") == "demo-controlnet"

    drop_file(page, "#cn0_drop", "square.png", edges_png())
    page.wait_for_function("() => document.getElementById('cn0_thumb').naturalWidth === 96")
    assert page.is_checked("#cn0_enabled")
    assert page.input_value("#prompt") == ""  # the drop was the control image, not a PNG's settings

    page.select_option("#cn0_module", "canny")
    assert page.is_visible("#cn0_threshold_a") and page.is_visible("#cn0_threshold_b")
    assert page.text_content("label[for=cn0_threshold_a]") == "Low Threshold"
    page.fill("#cn0_processor_res", "96")
    page.click("#cn0_preview")
    page.wait_for_function("() => document.getElementById('cn0_map').naturalWidth > 0")
    shown = Image.open(io.BytesIO(base64.b64decode(page.get_attribute("#cn0_map", "src").split(",", 1)[1])))
    array = shown.convert("L")
    assert shown.size == (96, 96)
    assert max(array.getpixel((x, 48)) for x in range(20, 29)) == 255  # the outline
    assert array.getpixel((48, 48)) == 0 and array.getpixel((5, 5)) == 0  # not the inside, nor outside
    assert page.get_attribute("#cn0_map_download", "href").startswith("data:image/png;base64,")

    page.fill("#cn0_weight", "0.7")
    page.fill("#cn0_guidance_end", "0.8")
    page.select_option("#cn0_control_mode", "My prompt is more important")
    submit(page, "a box", width=64, height=64, steps=3, seed=5)
    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0", timeout=240_000)
    made = results_png(page, server)
    info = parse_infotext(read_parameters(Image.open(io.BytesIO(made))))
    unit = info["ControlNet 0"]
    assert "Module: canny" in unit and "Model: demo-controlnet" in unit and "Weight: 0.7" in unit
    assert "Guidance End: 0.8" in unit and "Control Mode: My prompt is more important" in unit
    assert "canny, demo-controlnet, weight 0.7" in page.text_content("#job-params")
    # "Send to ControlNet" on the result: the picture becomes unit 0's control image.
    page.click("#results .send-controlnet")
    page.wait_for_function("() => document.getElementById('cn0_thumb').naturalWidth === 64")

    # Reuse from the gallery puts the unit back (not the image: it is not in the settings).
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    assert not page.is_checked("#cn0_enabled")
    page.goto(server.url + "/gallery")
    page.click("article.tile a:has-text('Reuse settings')")
    page.wait_for_function("() => document.getElementById('cn0_module').value === 'canny'")
    assert page.is_checked("#cn0_enabled") and page.is_visible("#cn0_weight")
    assert page.input_value("#cn0_model") == "demo-controlnet"
    assert page.input_value("#cn0_weight") == "0.7" and page.input_value("#cn0_guidance_end") == "0.8"
    assert page.input_value("#cn0_control_mode") == "My prompt is more important"
    assert "add the control image again" in page.text_content("#cn0_status")

    # The gallery's "Send to ControlNet": the picture is unit 0's control image; Generate takes it.
    page.goto(server.url + "/gallery")
    page.click("article.tile a:has-text('Send to ControlNet')")
    page.wait_for_function("() => document.getElementById('cn0_thumb').naturalWidth === 64")
    assert page.is_checked("#cn0_enabled")
    body = page.evaluate("() => { const b = {}; window.T2I.controlnet.read(b); return b; }")
    assert body["controlnet"][0]["image"].startswith("data:image/png;base64,")
    assert body["controlnet"][0]["model"] == "demo-controlnet"

    # A PNG made here dropped on the form (png-info) brings the unit back too.
    page.select_option("#cn0_module", "none")
    page.fill("#cn0_weight", "1")
    drop_file(page, "#prompt", "made.png", made)
    page.wait_for_function("() => document.getElementById('cn0_module').value === 'canny'")
    assert page.input_value("#cn0_weight") == "0.7" and page.input_value("#prompt") == "a box"


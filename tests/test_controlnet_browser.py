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
from browser_helpers import CHROMIUM, sent_job_body, submit
from helpers import tile_action

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
    # The extension's UI labels, its API names as values (a client's "softedge_hed" is module "hed").
    assert page.locator("#cn0_module option[value=hed]").text_content() == "softedge_hed"

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
    tile_action(page.locator("article.tile").first, "Reuse settings").click()
    page.wait_for_function("() => document.getElementById('cn0_module').value === 'canny'")
    assert page.is_checked("#cn0_enabled") and page.is_visible("#cn0_weight")
    assert page.input_value("#cn0_model") == "demo-controlnet"
    assert page.input_value("#cn0_weight") == "0.7" and page.input_value("#cn0_guidance_end") == "0.8"
    assert page.input_value("#cn0_control_mode") == "My prompt is more important"
    assert "add the control image again" in page.text_content("#cn0_status")

    # The gallery's "Send to ControlNet": the picture is unit 0's control image; Generate takes it.
    page.goto(server.url + "/gallery")
    tile_action(page.locator("article.tile").first, "Send to ControlNet").click()
    page.wait_for_function("() => document.getElementById('cn0_thumb').naturalWidth === 64")
    assert page.is_checked("#cn0_enabled")
    page.fill("#prompt", "a kettle")
    body = sent_job_body(page, lambda: page.click("#generate"), stop=True)
    assert body["controlnet"][0]["image"].startswith("data:image/png;base64,")
    assert body["controlnet"][0]["model"] == "demo-controlnet"

    # A PNG made here dropped on the form (png-info) brings the unit back too.
    page.select_option("#cn0_module", "none")
    page.fill("#cn0_weight", "1")
    drop_file(page, "#prompt", "made.png", made)
    page.wait_for_function("() => document.getElementById('cn0_module').value === 'canny'")
    assert page.input_value("#cn0_weight") == "0.7" and page.input_value("#prompt") == "a box"



def data_url_image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")


def canvas_pixel(page, x: int, y: int) -> int:  # noqa: F811
    return page.evaluate("""([x, y]) => document.getElementById('cn0_canvas').getContext('2d')
        .getImageData(x, y, 1, 1).data[0]""", [x, y])


def stroke(page, selector: str, start: tuple[float, float], end: tuple[float, float]) -> None:  # noqa: F811
    """Drag the mouse across ``selector`` from ``start`` to ``end`` (fractions of its box)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=12)
    page.mouse.up()


def test_edit_a_previewed_map_and_generate_with_it(serve, page):  # noqa: F811
    """Issue #25: a preprocessor's map edited with the mask painter's brush becomes the unit's control
    image, sent with module "none"; the painter passes axe in both colour schemes."""
    axe_problems = pytest.importorskip("test_accessibility").axe_problems
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#controlnet-section > summary")
    page.wait_for_selector("#cn0_module option[value=canny]", state="attached")
    drop_file(page, "#cn0_drop", "square.png", edges_png())
    page.wait_for_function("() => document.getElementById('cn0_thumb').naturalWidth === 96")
    page.select_option("#cn0_module", "canny")
    page.fill("#cn0_processor_res", "96")
    page.click("#cn0_preview")
    page.wait_for_function("() => document.getElementById('cn0_map').naturalWidth > 0")
    canny = data_url_image(page.get_attribute("#cn0_map", "src"))
    column = range(44, 53)  # around x = 48, where the stroke goes down the square's middle
    assert max(canny.getpixel((x, 48)) for x in column) == 0  # inside the outline: nothing
    top = next(y for y in range(20, 29) if canny.getpixel((48, y)) == 255)  # the outline's top edge
    assert canny.getpixel((30, top)) == 255

    page.click("#cn0_edit")
    assert page.is_visible("#cn0_canvas") and not page.is_visible("#cn0_map")
    assert page.evaluate("document.activeElement.id") == "cn0_brush"
    assert page.evaluate("() => { const c = document.getElementById('cn0_canvas'); return [c.width, c.height]; }") == [96, 96]
    assert canvas_pixel(page, 48, top) == 255  # the map itself, to paint on
    for _ in range(4):  # the brush size from the keyboard: 8 -> 16 screen pixels
        page.keyboard.press("ArrowRight")
    assert page.text_content("#cn0_brush_value") == "16"

    stroke(page, "#cn0_canvas", (0.5, 0.1), (0.5, 0.9))  # white, top to bottom through the square
    assert max(canvas_pixel(page, x, 48) for x in column) == 255
    # A black stroke over the outline's top edge, then Undo: the edge is back.
    page.check("#cn0_black")
    stroke(page, "#cn0_canvas", (0.1, (top + 0.5) / 96), (0.9, (top + 0.5) / 96))
    assert canvas_pixel(page, 30, top) == 0
    page.click("#cn0_undo")
    assert canvas_pixel(page, 30, top) == 255 and max(canvas_pixel(page, x, 48) for x in column) == 255
    page.check("#cn0_white")

    problems: list[str] = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        problems += axe_problems(page, f"map editor ({scheme})")
    page.emulate_media(color_scheme="light")
    assert not problems, "\n".join(problems)

    page.click("#cn0_use")
    assert page.is_hidden("#cn0_editor") and page.is_visible("#cn0_map")
    assert page.evaluate("document.activeElement.id") == "cn0_edit"
    assert page.input_value("#cn0_module") == "none" and page.is_checked("#cn0_enabled")
    assert page.is_hidden("#cn0_threshold_a")  # none has no sliders
    edited_url = page.get_attribute("#cn0_map", "src")
    assert page.get_attribute("#cn0_thumb", "src") == edited_url
    assert page.get_attribute("#cn0_map_download", "href") == edited_url  # the edited map downloads too
    assert "edited map" in page.text_content("#cn0_status")

    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/jobs")) as sent:
        submit(page, "a box", width=64, height=64, steps=3, seed=5)
    unit = sent.value.post_data_json["controlnet"][0]
    assert unit["module"] == "none" and unit["model"] == "demo-controlnet"
    assert "threshold_a" not in unit and "processor_res" not in unit
    image = data_url_image(unit["image"])
    assert image.size == (96, 96)
    assert max(image.getpixel((x, 48)) for x in column) == 255  # the stroke: white where canny had nothing
    assert image.getpixel((30, top)) == 255 and image.getpixel((5, 5)) == 0  # the rest is canny's map
    job_id = sent.value.response().json()["job"]["id"]

    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0", timeout=240_000)
    stored = page.request.get(f"{server.url}/api/jobs/{job_id}").json()["job"]["params"]["controlnet"][0]
    assert stored["module"] == "none" and stored["model"] == "demo-controlnet"
    info = parse_infotext(read_parameters(Image.open(io.BytesIO(results_png(page, server)))))
    assert "Module: none" in info["ControlNet 0"] and "Model: demo-controlnet" in info["ControlNet 0"]

    # Reuse from the gallery: the unit comes back with module none.
    page.goto(server.url + "/")
    page.goto(server.url + "/gallery")
    tile_action(page.locator("article.tile").first, "Reuse settings").click()
    page.wait_for_function("() => document.getElementById('cn0_enabled').checked")
    assert page.input_value("#cn0_module") == "none"
    assert page.input_value("#cn0_model") == "demo-controlnet"

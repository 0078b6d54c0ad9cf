"""The page's issue #12 modes in a real Chromium against a real demo-model
server (fixtures of test_browser.py): painting an inpainting mask with a mouse
and with a finger, hires fix and variation seeds from the form, and what each
result offers (the lightbox, Send to img2img, Upscale), on the generate page and
in the gallery. Kept lean: the images are 64 px and the jobs a few steps."""
from __future__ import annotations

import io
import re

import pytest

from browser_helpers import TIMEOUT_MS, paste_png, shown_job, submit, wait_for_next_job
from helpers import tile_action

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RESULT_LOADED = ("(n) => document.querySelectorAll('#results img').length === n && "
                 "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")


def init_png(path, size=64):
    """A busy picture (a gradient with stripes), so that a repainted area shows."""
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([((x * 4) % 256, (y * 4) % 256, 255 * ((x // 8 + y // 8) % 2)) for y in range(size) for x in range(size)])
    image.save(path)
    return image


def png_at(page, url: str):  # noqa: F811
    from PIL import Image

    response = page.request.get(url)
    assert response.status == 200, url
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def choose_init_image(page, path) -> None:  # noqa: F811
    page.set_input_files("#init_image", str(path))
    page.wait_for_function("() => document.getElementById('mask-canvas').width > 0")


def painted_pixels(page) -> int:  # noqa: F811
    return page.evaluate("""() => { const c = document.getElementById('mask-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 127) n++; return n; }""")


def test_paint_a_mask_with_the_mouse_and_inpaint_only_there(serve, page, tmp_path, shots):  # noqa: F811
    init = init_png(tmp_path / "init.png")
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    assert page.is_hidden("#init-tools")  # the painter belongs to an init image
    choose_init_image(page, tmp_path / "init.png")
    page.click("#mask-section > summary")
    # A horizontal stroke across the middle (image rows 27..37), as a user drags the mouse; the
    # painter shows the 64 px image larger, and the brush size is in screen pixels.
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()  # where it is in the viewport, as the mouse sees it
    scale = box["width"] / 64
    assert scale >= 1 and abs(box["height"] - box["width"]) < 1, box
    page.eval_on_selector("#mask-brush", "(b, px) => { b.value = px; b.dispatchEvent(new Event('input')); }",
                          round(10 * scale))
    page.mouse.move(box["x"] + 4 * scale, box["y"] + 32 * scale)
    page.mouse.down()
    for x in range(8, 61, 4):
        page.mouse.move(box["x"] + x * scale, box["y"] + 32 * scale)
    page.mouse.up()
    assert "of the image is repainted" in page.text_content("#mask-state")
    page.screenshot(path=str(shots / "mask-painter.png"), full_page=True)

    page.fill("#mask_blur", "0")
    page.select_option("#inpainting_fill", "2")  # latent noise: the stroke cannot come back as the original
    page.fill("#prompt", "a red band")
    page.fill("#steps", "4")
    page.fill("#strength", "1")
    page.click("#generate")
    page.wait_for_function(RESULT_LOADED, arg=1)
    params = shown_job(page)["params"]
    assert params["has_mask"] and params["mask_blur"] == 0 and params["inpainting_fill"] == 2

    out = png_at(page, server.url + page.get_attribute("#results img", "src"))
    assert out.size == init.size
    # Far from the stroke (rows 27..37) every pixel is the init image's; on it, they changed.
    for y in [*range(0, 20), *range(45, 64)]:
        for x in range(64):
            assert out.getpixel((x, y)) == init.getpixel((x, y)), (x, y)
    changed = sum(out.getpixel((x, 32)) != init.getpixel((x, 32)) for x in range(8, 56))
    assert changed > 24, changed

    # Keyboard: invert makes the unpainted rest the mask, clear removes it (the next job is plain img2img).
    before = painted_pixels(page)
    page.focus("#mask-invert")
    page.keyboard.press("Enter")
    assert painted_pixels(page) == 64 * 64 - before
    page.focus("#mask-clear")
    page.keyboard.press("Enter")
    assert painted_pixels(page) == 0 and page.text_content("#mask-state").startswith("No mask")
    page.click("#mask-all")
    assert painted_pixels(page) == 64 * 64

    # Outpainting 16 px to the left (it replaces the mask): a wider image with the init image on its right.
    page.click("#outpaint-section > summary")
    page.fill("#outpaint", "16")
    for side in ("right", "up", "down"):
        page.uncheck(f"#outpaint-{side}")
    inpainted = page.get_attribute("#job", "data-job")
    page.click("#generate")
    params = wait_for_next_job(page, inpainted)["params"]
    assert params["outpaint"] == 16
    assert params["outpaint_directions"] == "left" and not params["has_mask"]
    page.wait_for_function(RESULT_LOADED, arg=1)
    out = png_at(page, server.url + page.get_attribute("#results img", "src"))
    assert out.size == (80, 64)


PHONE = {"width": 390, "height": 844}


def test_a_finger_paints_the_mask_on_a_phone_and_nothing_overflows(serve, browser, tmp_path):  # noqa: F811
    init_png(tmp_path / "init.png", size=256)
    server = serve()
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        choose_init_image(page, tmp_path / "init.png")
        page.click("#mask-section > summary")
        page.locator("#mask-canvas").scroll_into_view_if_needed()
        page.evaluate("""() => { window.__pointerTypes = [];
            document.getElementById('mask-canvas').addEventListener('pointermove',
              e => window.__pointerTypes.push(e.pointerType)); }""")
        box = page.locator("#mask-canvas").bounding_box()
        scroll = page.evaluate("window.scrollY")
        # Real touch input through the browser (CDP), not synthetic DOM events: a page that let the
        # browser scroll on a finger drag would get pointercancel and paint nothing.
        cdp = context.new_cdp_session(page)
        y = box["y"] + box["height"] / 2
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": box["x"] + 10, "y": y}]})
        for step in range(1, 11):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
                {"x": box["x"] + 10 + step * (box["width"] - 20) / 10, "y": y + step * 3}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_function("() => document.getElementById('mask-state').textContent.includes('repainted')")
        assert "touch" in page.evaluate("window.__pointerTypes")
        assert painted_pixels(page) > 1000
        assert page.evaluate("window.scrollY") == scroll  # the drag painted; it did not scroll the page
        assert page.evaluate("getComputedStyle(document.getElementById('mask-canvas')).touchAction") == "none"
        # The painter, its options and the outpaint box fit the phone's width.
        page.click("#outpaint-section > summary")
        page.click("#hires-section > summary")
        page.click("#variation-section > summary")
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    finally:
        context.close()
    assert not errors, errors


def test_results_open_in_a_lightbox_upscale_and_go_to_img2img(serve, page, shots):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    submit(page, "two tiles", width=64, height=64, steps=2, num_images=2, seed=77)
    page.wait_for_function(RESULT_LOADED, arg=2)
    first_job = shown_job(page)

    # The lightbox: the image full size with its settings; arrows step through the batch; Esc closes.
    page.click("#results figure:nth-child(1) a.open-lightbox")
    page.wait_for_selector("#lightbox[open]")
    assert page.evaluate("document.activeElement.id") == "lightbox-close"
    assert "Seed: 77" in page.text_content("#lightbox-info")
    assert "(1 of 2)" in page.text_content("#lightbox-title")
    page.screenshot(path=str(shots / "lightbox.png"))
    page.keyboard.press("ArrowRight")
    assert "(2 of 2)" in page.text_content("#lightbox-title")
    assert "Seed: 78" in page.text_content("#lightbox-info")
    assert page.get_attribute("#lightbox-image", "src") == first_job["images"][1]["url"]
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    assert page.evaluate("document.activeElement === document.querySelector('#results figure a.open-lightbox')")

    # Upscale: a bigger copy under the image, with a download link.
    page.click("#results figure:nth-child(1) button.upscale")
    page.wait_for_function("() => { const i = document.querySelector('#results figure .upscaled img');"
                           " return i && i.naturalWidth > 0; }")
    assert page.eval_on_selector("#results figure .upscaled img", "i => [i.naturalWidth, i.naturalHeight]") == [128, 128]
    assert "Upscaled to 128×128" in page.text_content("#results figure .upscale-status")
    assert page.get_attribute("#results figure .upscaled a", "download").endswith("-x2.png")

    # Send to img2img: the result is the init image; the next job starts from it.
    page.click("#results figure:nth-child(2) button.send-img2img")
    page.wait_for_function("() => document.getElementById('init-thumb').naturalWidth === 64")
    assert page.is_visible("#init-preview") and page.is_enabled("#strength")
    assert page.evaluate("document.getElementById('init_image').files.length") == 1
    assert page.evaluate("document.activeElement.id") == "strength"
    page.fill("#strength", "0.5")
    page.click("#generate")
    assert wait_for_next_job(page, first_job["id"])["params"]["has_init_image"] is True

    # The gallery: the same lightbox, Upscale, and Send to img2img carried over to the form page.
    page.goto(server.url + "/gallery")
    page.wait_for_selector("#gallery img")
    link = page.locator(f"[data-job='{first_job['id']}'] a.tile-image").first
    link.click()
    page.wait_for_selector("#lightbox[open]")
    assert "Steps: 2" in page.text_content("#lightbox-info")
    page.click("#lightbox-close")
    page.wait_for_selector("#lightbox", state="hidden")
    assert page.evaluate("document.activeElement.classList.contains('tile-image')")
    tile = page.locator(f"[data-job='{first_job['id']}']").first
    tile_action(tile, "Upscale ×2").click()
    tile.locator(".upscaled img").wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('.upscaled img')].some(i => i.naturalWidth === 128)")
    tile_action(tile, "Send to img2img").click()
    page.wait_for_selector("#model-status")
    page.wait_for_function("() => document.getElementById('init-thumb').naturalWidth === 64")
    assert page.is_visible("#init-preview") and "/?" not in page.url


def test_hires_fix_and_variation_seed_fields_reach_the_job(serve, page):  # noqa: F811
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#hires-section > summary")
    page.check("#enable_hr")
    page.fill("#hr_scale", "2")
    page.select_option("#hr_upscaler", "Lanczos")
    page.fill("#hr_second_pass_steps", "2")
    page.fill("#hr_strength", "0.6")
    page.click("#variation-section > summary")
    page.fill("#subseed", "123")
    page.fill("#subseed_strength", "0.5")
    submit(page, "bigger", width=64, height=64, steps=2, seed=5)
    page.wait_for_function(RESULT_LOADED, arg=1)
    assert page.eval_on_selector("#results img", "i => [i.naturalWidth, i.naturalHeight]") == [128, 128]
    job = shown_job(page)
    p = job["params"]
    assert (p["enable_hr"], p["hr_scale"], p["hr_upscaler"], p["hr_second_pass_steps"], p["strength"]) == (
        True, 2, "Lanczos", 2, 0.6)
    assert (p["subseed"], p["subseed_strength"]) == (123, 0.5)
    assert "Hires upscaler: Lanczos" in job["images"][0]["infotext"]

    # The PNG read back (PNG Info) fills the new fields too, from A1111's infotext names.
    page.uncheck("#enable_hr")
    page.select_option("#hr_upscaler", "Latent")
    for field in ("#hr_scale", "#hr_second_pass_steps", "#hr_strength", "#subseed", "#subseed_strength", "#width"):
        page.fill(field, "")
    paste_png(page, job["images"][0]["url"])
    page.wait_for_function("() => document.getElementById('form-note').textContent.startsWith('Settings read')")
    assert page.is_checked("#enable_hr")
    assert [page.input_value(f) for f in ("#hr_scale", "#hr_upscaler", "#hr_second_pass_steps", "#hr_strength",
                                          "#subseed", "#subseed_strength")] == ["2", "Lanczos", "2", "0.6", "123", "0.5"]
    assert page.input_value("#width") == "64"  # the first pass's size, as A1111 writes it


def test_a_cancelled_job_shows_its_partial_image(serve, page):  # noqa: F811
    """The partial-image contract: a cancelled job's JSON with ``partial: true`` has
    ``images`` shaped as a done job's, and the page shows them labelled as partial.
    (The same server's width limit shows an Upscale that fails, with the server's reason.)"""
    server = serve(MAX_WIDTH=96)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    submit(page, "quick", width=64, height=64, steps=2)
    page.wait_for_function(RESULT_LOADED, arg=1)
    page.click("#results button.upscale")
    page.wait_for_function("() => document.querySelector('#results .upscale-status.bad')")
    assert "makes a 128x128 image" in page.text_content("#results .upscale-status")
    assert page.is_enabled("#results button.upscale") and page.query_selector("#results .upscaled img") is None
    submit(page, "slow", width=64, height=64, steps=60)
    page.wait_for_function("() => document.getElementById('job').dataset.state === 'running' && "
                           "Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 2")
    page.click("#cancel")
    page.wait_for_selector("#job[data-state=cancelled]")
    job = page.request.get(f"{server.url}/api/jobs/{page.get_attribute('#job', 'data-job')}?wait=30").json()["job"]
    assert job["partial"] is True and re.fullmatch(r"cancelled after step \d+ of 60", job["error"])
    page.wait_for_function(RESULT_LOADED, arg=len(job["images"]))
    assert page.text_content("#results .partial-label") == "partial, " + job["error"]
    assert page.text_content("#job-state").startswith("Cancelled: partial")
    assert page.get_attribute("#results img", "alt").startswith("Partial image 1")


def test_sampler_schedule_type_and_sampler_settings_reach_the_job_and_come_back(serve, page):  # noqa: F811
    """A1111's two lists and its sampler settings (issue #21): the job runs what the form says, the
    infotext names it as A1111 does, and a PNG read back (PNG Info) sets every one of them again."""
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.select_option("#scheduler", "Euler a")
    page.select_option("#schedule_type", "Karras")
    page.click("#sampler-section > summary")
    page.fill("#eta", "0.5")
    page.select_option("#randn_source", "CPU")
    page.fill("#eta_noise_seed_delta", "31337")
    submit(page, "a [fox:cat:1] in snow", width=64, height=64, steps=3, seed=7)
    page.wait_for_function(RESULT_LOADED, arg=1)
    job = shown_job(page)
    p = job["params"]
    assert (p["scheduler"], p["eta"], p["randn_source"], p["eta_noise_seed_delta"]) == ("Euler a Karras", 0.5, "CPU",
                                                                                          31337)
    text = job["images"][0]["infotext"]
    assert "Sampler: Euler a, Schedule type: Karras" in text and "Eta: 0.5" in text and "RNG: CPU" in text
    assert "ENSD: 31337" in text

    page.select_option("#scheduler", "DDIM")
    page.select_option("#schedule_type", "Automatic")
    page.fill("#eta", "")
    page.select_option("#randn_source", "GPU")
    page.fill("#eta_noise_seed_delta", "0")
    paste_png(page, job["images"][0]["url"])
    page.wait_for_function("() => document.getElementById('form-note').textContent.startsWith('Settings read')")
    assert [page.input_value(f) for f in ("#scheduler", "#schedule_type", "#eta", "#randn_source",
                                          "#eta_noise_seed_delta", "#prompt")] == [
        "Euler a", "Karras", "0.5", "CPU", "31337", "a [fox:cat:1] in snow"]

"""The generate page as a newcomer meets it (issue #27), in a real Chromium at a laptop's
1366x900 and a phone's 390x844, light and dark: the prompts and a large Generate first and
always in view, errors at their field, hires fix off (with its reason) while an init image is
set, and the model picker's Refresh with the header following a switch. axe-core checks each
state with the WCAG 2.2 AA rules (target size) added."""
from __future__ import annotations

import shutil

import pytest

from browser_helpers import TIMEOUT_MS, axe_problems, submit, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SIZES = {"desktop": DESKTOP, "phone": PHONE}

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """checkpoints/sd-a and sd-b: demo models (seeds 1 and 2) as diffusers folders."""
    from app.models.demo import save_demo_model

    checkpoints = tmp_path_factory.mktemp("layout") / "checkpoints"
    save_demo_model(checkpoints / "sd-a", seed=1)
    save_demo_model(checkpoints / "sd-b", seed=2)
    return {"checkpoints": checkpoints}


BOX = "sel => { const r = document.querySelector(sel).getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right]; }"


def open_page(browser, size: str, scheme: str):
    """A context at ``size`` in ``scheme`` (a phone with touch), and the JS/CSP errors seen on it."""
    phone = size == "phone"
    context = browser.new_context(viewport=SIZES[size], color_scheme=scheme, is_mobile=phone, has_touch=phone,
                                  device_scale_factor=2 if phone else 1)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems = watch_csp(context, page)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.scheme = scheme
    return context, page, problems


def in_view(page, selector: str, size: str) -> bool:
    top, bottom, left, right = page.evaluate(BOX, selector)
    return 0 <= top < bottom <= SIZES[size]["height"] and 0 <= left < right <= SIZES[size]["width"]


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_generate_is_in_view_at_the_top_and_stays_there(serve, browser, shots, size):
    server = serve()
    problems: list[str] = []
    for scheme in ("light", "dark"):
        context, page, errors = open_page(browser, size, scheme)
        try:
            page.goto(server.url + "/")
            page.wait_for_selector("#model-status[data-state=ready]")
            # Without scrolling: the prompts, then a large Generate with its shortcut, then the model picker.
            assert in_view(page, "#generate", size), page.evaluate(BOX, "#generate")
            assert page.evaluate(BOX, "#generate")[1] - page.evaluate(BOX, "#generate")[0] >= 44  # a large target
            order = page.evaluate("""() => ['prompt', 'negative_prompt', 'generate', 'sd-model', 'drop-hint', 'width']
                .map(id => document.getElementById(id).getBoundingClientRect().top)""")
            assert order == sorted(order), order
            keys = page.text_content("#generate-keys")
            assert "Ctrl" in keys and "Enter" in keys and page.is_visible("#generate-keys")
            assert page.get_attribute("#generate", "aria-keyshortcuts") == "Control+Enter Meta+Enter"
            page.screenshot(path=str(shots / f"layout-{size}-{scheme}-top.png"))
            problems += axe_problems(page, f"{size} {scheme} top")
            # Scrolled through the settings to the end of the form: Generate is still on screen.
            page.evaluate("window.scrollTo(0, document.getElementById('generate-form').getBoundingClientRect().bottom"
                          " + window.scrollY - 200)")
            assert page.evaluate("window.scrollY") > 300
            assert in_view(page, "#generate", size), page.evaluate(BOX, "#generate")
            page.screenshot(path=str(shots / f"layout-{size}-{scheme}-scrolled.png"))
            # A field focused under the sticky bar is scrolled clear of it (WCAG 2.4.11).
            page.focus("#seed")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.keyboard.press("Shift+Tab")  # back to Tiling, above the screen: the browser scrolls to it
            assert page.evaluate("document.activeElement.id") == "tiling"
            bar = page.evaluate(BOX, "#prompt-bar" if size == "desktop" else ".generate-bar")
            focused = page.evaluate("() => document.activeElement.getBoundingClientRect().top")
            assert bar[1] - 1 <= focused < SIZES[size]["height"], (focused, bar)
            # Pressing Generate from down there queues the job and shows it.
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            submit(page, "from the bottom", width=64, height=64, steps=2)
            page.wait_for_selector("#job[data-state=done]")
            problems += axe_problems(page, f"{size} {scheme} done")
        finally:
            context.close()
        assert not errors, errors
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_form_error_is_shown_at_its_field(serve, browser, shots, size):
    server = serve()
    context, page, errors = open_page(browser, size, "light")
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        submit(page, "too many steps", width=64, height=64, steps=1000)
        message = page.wait_for_selector("#steps-error:visible")
        text = message.text_content()
        assert "steps" in text and "1000" in text
        # Next to the outlined field: in its box, right under the input; named by it; the focus is there.
        assert page.evaluate("document.getElementById('steps-error').closest('.field').contains("
                             "document.getElementById('steps'))")
        steps, below = page.evaluate(BOX, "#steps"), page.evaluate(BOX, "#steps-error")
        assert 0 <= below[0] - steps[1] < 16, (steps, below)
        assert in_view(page, "#steps-error", size) and in_view(page, "#steps", size)
        assert page.get_attribute("#steps", "aria-invalid") == "true"
        assert "steps-error" in page.get_attribute("#steps", "aria-describedby").split()
        assert page.get_attribute("#steps", "aria-errormessage") == "steps-error"
        assert page.evaluate("document.activeElement.id") == "steps"
        assert page.evaluate("getComputedStyle(document.getElementById('steps')).borderColor") == \
            page.evaluate("getComputedStyle(document.getElementById('steps-error')).color")
        page.screenshot(path=str(shots / f"layout-{size}-field-error.png"))
        problems = axe_problems(page, f"{size} field error")
        # Fixing the field takes the message away.
        page.fill("#steps", "2")
        assert page.query_selector("#steps-error") is None
        assert page.get_attribute("#steps", "aria-invalid") is None
        # A field in a closed section: the section opens, the message is beside the field.
        page.click("#hires-section > summary")
        page.check("#enable_hr")
        page.fill("#hr_scale", "99")
        page.click("#hires-section > summary")  # closed again
        page.click("#generate")
        page.wait_for_selector("#hr_scale-error:visible")
        assert page.evaluate("document.getElementById('hires-section').open")
        assert page.evaluate("document.activeElement.id") == "hr_scale"
        assert "99" in page.text_content("#hr_scale-error")
        problems += axe_problems(page, f"{size} hires field error")
        assert not problems, "\n".join(problems)
    finally:
        context.close()
    assert not errors, errors


def test_hires_fix_is_off_with_its_reason_while_an_init_image_is_set(serve, browser, shots, tmp_path):
    import base64
    import io

    from PIL import Image

    Image.new("RGB", (64, 64), (30, 120, 200)).save(tmp_path / "init.png")
    server = serve()
    # Why: the server refuses hires fix with an init image (A1111's img2img has no hires pass).
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PNG")
    answer = server_post(server, {"prompt": "x", "steps": 2, "enable_hr": True,
                                  "init_image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()})
    assert answer.status_code == 400 and answer.json()["field"] == "enable_hr"
    problems: list[str] = []
    for scheme in ("light", "dark"):
        context, page, errors = open_page(browser, "desktop", scheme)
        try:
            page.goto(server.url + "/")
            page.wait_for_selector("#model-status[data-state=ready]")
            page.click("#hires-section > summary")
            page.check("#enable_hr")
            assert page.is_enabled("#enable_hr") and page.is_hidden("#hires-off")
            page.set_input_files("#init_image", str(tmp_path / "init.png"))
            page.wait_for_selector("#init-preview:visible")
            # Off, with the reason shown in the section and in its (closed or open) summary.
            for field in ("#enable_hr", "#hr_scale", "#hr_upscaler", "#hr_strength"):
                assert page.is_disabled(field), field
            assert page.is_visible("#hires-off") and "init image" in page.text_content("#hires-off")
            assert "off while an init image is set" in page.text_content("#hires-section > summary")
            assert page.get_attribute("#enable_hr", "aria-describedby") == "hires-off"
            page.screenshot(path=str(shots / f"layout-hires-off-{scheme}.png"), full_page=True)
            problems += axe_problems(page, f"hires off {scheme}")
            # The job runs as img2img and says nothing of hires fix.
            submit(page, "an img2img job", steps=2)
            page.wait_for_selector("#job[data-state=done]")
            job_id = page.get_attribute("#queue-list li[data-job]", "data-job")
            params = page.request.get(f"{server.url}/api/jobs/{job_id}").json()["job"]["params"]
            assert params["has_init_image"] and not params.get("enable_hr")
            # The image removed: hires fix is back, still ticked.
            page.click("#clear-init")
            assert page.is_enabled("#enable_hr") and page.is_checked("#enable_hr") and page.is_enabled("#hr_scale")
            assert page.is_hidden("#hires-off")
            assert "without an init image" in page.text_content("#hires-section > summary")
            assert page.get_attribute("#enable_hr", "aria-describedby") is None
        finally:
            context.close()
        assert not errors, errors
    assert not problems, "\n".join(problems)


def server_post(server, body: dict):
    import requests

    return requests.post(server.url + "/api/jobs", json=body, timeout=60)


def test_refresh_lists_a_new_checkpoint_and_the_header_follows_a_switch(serve, browser, model_dirs, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(model_dirs["checkpoints"] / "sd-a", folder / "sd-a")
    server = serve(CHECKPOINT_DIR=str(folder), PREVIEW_EVERY=0, ENGINE=None)
    problems: list[str] = []
    context, page, errors = open_page(browser, "desktop", "dark")
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        options = "() => [...document.querySelectorAll('#sd-model option')].map(o => o.value)"
        assert "sd-b" not in page.evaluate(options)
        shutil.copytree(model_dirs["checkpoints"] / "sd-b", folder / "sd-b")  # dropped into the folder
        page.click("#sd-refresh")
        page.wait_for_function(f"() => ({options})().includes('sd-b')")
        page.locator("#model-switch-note", has_text="1 new").wait_for()
        assert page.evaluate(options).count("sd-a") == 1
        problems += axe_problems(page, "refreshed")
        # Switched: the header names the loaded model as soon as the picker says it is ready,
        # not at the header's next slow poll (10 s).
        page.select_option("#sd-model", "sd-b")
        page.locator("#model-switch-note", has_text="Ready: sd-b.").wait_for(timeout=120_000)
        page.locator("#model-name", has_text="sd-b").wait_for(timeout=3_000)
        assert page.get_attribute("#model-status", "data-state") == "ready"
        problems += axe_problems(page, "switched")
    finally:
        context.close()
    assert not errors, errors
    assert not problems, "\n".join(problems)

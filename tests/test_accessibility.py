"""WCAG 2.2 AA in a real browser: axe-core (the copy bundled with
axe-playwright-python) checks every page and its main states in the light and
the dark colour scheme; keyboard-only use is driven with real key presses."""
from __future__ import annotations

import pytest

from browser_helpers import TIMEOUT_MS, axe_problems, serve_people, submit
from helpers import tile_action

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("axe_playwright_python.sync_playwright", reason="pip install axe-playwright-python")

def test_every_page_and_state_passes_axe(serve, scheme_page, shots):  # noqa: F811
    page, problems = scheme_page, []
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    problems += axe_problems(page, "form", shots)
    # A form error, a finished job, a cancelled job, a failed job: each state's colours.
    submit(page, "too many steps", width=64, height=64, steps=1000)
    page.wait_for_selector("#form-error:visible")
    problems += axe_problems(page, "form error", shots)
    submit(page, "a lighthouse", width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=done]")
    page.wait_for_function("() => document.querySelector('#results img').naturalWidth > 0")
    problems += axe_problems(page, "done", shots)
    submit(page, "a slow one", width=256, height=256, steps=100)
    page.wait_for_selector("#job[data-state=running]")
    problems += axe_problems(page, "running", shots)
    page.click("#cancel")
    page.wait_for_selector("#job[data-state=cancelled]")
    problems += axe_problems(page, "cancelled", shots)
    page.goto(server.url + "/gallery")
    page.wait_for_selector("#gallery img")
    problems += axe_problems(page, "gallery", shots)
    # The Extras page (issue #24) on a gallery image, with its SD upscale options and a finished job.
    tile_action(page.locator("article.tile").first, "Extras").click()
    page.wait_for_function("() => document.getElementById('extras-source-image').naturalWidth > 0")
    page.select_option("#resize_mode", "1")
    page.check("#sd-upscale")
    problems += axe_problems(page, "extras", shots)
    page.uncheck("#sd-upscale")
    page.select_option("#resize_mode", "0")
    page.click("#extras-submit")
    page.wait_for_selector("#extras-job[data-state=done]")
    problems += axe_problems(page, "extras done", shots)
    page.goto(server.url + "/no-such-page")
    page.wait_for_selector("#error-message")
    problems += axe_problems(page, "error page", shots)
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)


def test_the_people_page_passes_axe(serve, scheme_page, shots):  # noqa: F811
    """ACCESS = "people": the owner's /admin page empty, with a new link shown, and after a revoke."""
    page, problems = scheme_page, []
    server = serve_people(serve, page)
    page.goto(server.url + "/admin")
    page.wait_for_selector("#no-people")
    problems += axe_problems(page, "people empty", shots)
    page.fill("#person-name", "Alice")
    page.click("#add-person-button")
    page.wait_for_selector("#new-link-url")
    problems += axe_problems(page, "people new link", shots)
    page.click("#people button.revoke")
    page.wait_for_selector("#people .person-access:has-text('revoked')")
    problems += axe_problems(page, "people revoked", shots)
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)


def test_inpaint_hires_and_lightbox_states_pass_axe(serve, scheme_page, shots, tmp_path):  # noqa: F811
    """Issue #12's states: the mask painter and outpaint box open over an init image,
    hires fix and variation seed open, an upscaled result, the lightbox open."""
    from PIL import Image

    page, problems = scheme_page, []
    Image.new("RGB", (64, 64), (30, 120, 200)).save(tmp_path / "init.png")
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.set_input_files("#init_image", str(tmp_path / "init.png"))
    page.wait_for_function("() => document.getElementById('mask-canvas').width > 0")
    page.click("#mask-section > summary")
    page.click("#outpaint-section > summary")
    page.click("#mask-all")
    page.click("#mask-eraser")  # pressed: its colours too
    problems += axe_problems(page, "mask painter", shots)
    page.click("#clear-init")
    page.click("#hires-section > summary")
    page.click("#variation-section > summary")
    page.click("#sampler-section > summary")
    page.check("#enable_hr")
    problems += axe_problems(page, "hires and sampler settings open", shots)
    page.uncheck("#enable_hr")
    submit(page, "two tiles", width=64, height=64, steps=2, num_images=2)
    page.wait_for_function("() => document.querySelectorAll('#results img').length === 2")
    page.click("#results figure button.upscale")
    page.wait_for_selector("#results .upscaled img")
    page.click("#results figure a.open-lightbox")
    page.wait_for_selector("#lightbox[open]")
    problems += axe_problems(page, "lightbox", shots)
    page.keyboard.press("Escape")
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)


def test_controlnet_section_passes_axe(serve, scheme_page, shots, tmp_path):  # noqa: F811
    """Issue #25's section open: a unit with its control image and previewed canny map, the second unit added."""
    from PIL import Image

    page, problems = scheme_page, []
    Image.new("RGB", (64, 64), (30, 120, 200)).save(tmp_path / "control.png")
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#controlnet-section > summary")
    page.wait_for_selector("#cn0_module option[value=canny]", state="attached")
    page.set_input_files("#cn0_image", str(tmp_path / "control.png"))
    page.select_option("#cn0_module", "canny")
    page.click("#cn0_preview")
    page.wait_for_function("() => document.getElementById('cn0_map').naturalWidth > 0")
    page.click("#cn-add")
    problems += axe_problems(page, "controlnet", shots)
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)


def test_login_and_failed_model_pages_pass_axe(serve, scheme_page, tmp_path):  # noqa: F811
    page, problems = scheme_page, []
    server = serve(PASSWORD="open sesame")
    page.goto(server.url + "/login")
    problems += axe_problems(page, "login")
    page.fill("#password", "wrong")
    page.click("#login")
    page.wait_for_selector("#login-error")
    problems += axe_problems(page, "login error")
    broken = serve(MODEL=str(tmp_path / "missing" / "model.safetensors"), ENGINE=None)
    page.goto(broken.url + "/")
    page.wait_for_selector("#model-failed:visible")
    problems += axe_problems(page, "model failed")
    assert not problems, f"{page.scheme} scheme:\n" + "\n".join(problems)


def test_keyboard_only_reaches_every_control_and_submits_with_ctrl_enter(serve, scheme_page):  # noqa: F811
    page = scheme_page
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    # Tab from the top of the page: every control of the form gets the focus, with a visible ring.
    reached, rings = [], {}
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => { const e = document.activeElement; const s = getComputedStyle(e);
            return [e.id || e.textContent.trim(), s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2]; }""")
        reached.append(focused[0])
        rings[focused[0]] = focused[1]
    controls = ["history-toggle", "prompt", "negative_prompt", "width", "height", "16:9", "swap-size", "steps",
                "guidance_scale", "scheduler", "num_images", "tiling", "seed", "random-seed", "init_image",
                "generate", "queue-all"]
    missing = [c for c in controls if c not in reached]
    assert not missing, f"not reachable with Tab: {missing} (reached {reached})"
    assert reached[0] == "Skip to content"
    no_ring = [c for c in controls if not rings[c]]
    assert not no_ring, f"no visible focus ring on {no_ring}"

    # Typed and submitted from the negative prompt box with Ctrl+Enter, never touching the mouse.
    page.focus("#prompt")
    page.keyboard.type("a keyboard painting")
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.focus(field)
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
    page.focus("#negative_prompt")
    page.keyboard.type("mice")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#job[data-state=done]")
    assert page.input_value("#negative_prompt") == "mice"  # Ctrl+Enter added no line break
    # The state change reached the live region a screen reader reads out.
    assert page.get_attribute("#job-announce", "aria-live") == "polite"
    assert page.text_content("#job-announce").startswith("Done: 1 image")
    # And from the prompt box too.
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.getElementById('job-announce').textContent.startsWith('Queued') "
                           "|| document.getElementById('job').dataset.state !== 'done'")
    page.wait_for_selector("#job[data-state=done]")


def test_keyboard_only_from_the_login_page_to_a_finished_image(serve, browser):  # noqa: F811
    """Only key presses: Tab to the password, type it, Enter; Tab to the prompt, type, Tab on
    to the size and steps, back (Shift+Tab) to Generate, Enter; the finished image is announced."""
    server = serve(PASSWORD="open sesame")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()

    def tab_to(element_id: str, limit: int = 40, key: str = "Tab") -> None:
        for _ in range(limit):
            page.keyboard.press(key)
            if page.evaluate("() => document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    try:
        page.goto(server.url + "/")  # sent to the login page
        assert "/login" in page.url
        tab_to("password")
        page.keyboard.type("open sesame")
        page.keyboard.press("Enter")
        page.wait_for_selector("#model-status[data-state=ready]")
        tab_to("prompt")
        page.keyboard.type("a painting made without a mouse")
        for field, value in (("width", "64"), ("height", "64"), ("steps", "2")):
            tab_to(field)
            page.keyboard.press("Control+A")
            page.keyboard.type(value)
        tab_to("generate", key="Shift+Tab")  # Generate sits under the prompts, above the settings
        page.keyboard.press("Enter")
        page.wait_for_selector("#job[data-state=done]")
        assert page.text_content("#job-announce").startswith("Done: 1 image")
        assert page.evaluate("document.querySelector('#results img').naturalWidth") == 64
    finally:
        context.close()

"""The gallery of issue #27 in a real Chromium against a real demo-model server
(fixtures of test_browser.py): Send to img2img / inpaint carry the prompt and
settings, the lightbox's actions (Reuse, Upscale, Delete), its keyboard and a
phone's swipe, each tile's actions menu, the next page loaded on scroll, and
axe-core with the lightbox and a menu open."""
from __future__ import annotations

import pytest
import requests

from browser_helpers import TIMEOUT_MS, axe_problems, wait_for_next_job, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SETTINGS = {"prompt": "a copper kettle", "negative_prompt": "blurry, dark", "width": 64, "height": 64,
            "steps": 3, "guidance_scale": 6.5, "seed": 4242, "scheduler": "DDIM"}


def make_jobs(page, server, count: int, **fields) -> list[str]:
    """Jobs of this browser (its client id: its own to delete), finished, oldest first; one at a
    time (a client may have only a few queued)."""
    page.goto(server.url + "/")
    ids = []
    for n in range(count):
        body = {"prompt": f"tile {n}", "width": 64, "height": 64, "steps": 2, "seed": n, **fields}
        ids.append(page.request.post(server.url + "/api/jobs", data=body, headers={"Origin": server.url})
                   .json()["job"]["id"])
        assert requests.get(f"{server.url}/api/jobs/{ids[-1]}?wait=60").json()["job"]["state"] == "done"
    return ids


def menu_item(page, job_id: str, name: str):
    """Open the job's first tile's actions menu (with the keyboard) and return the named item."""
    tile = page.locator(f"article.tile[data-job='{job_id}']").first
    tile.locator(".menu-button").focus()
    page.keyboard.press("Enter")
    return tile.get_by_role("menuitem", name=name)


def open_lightbox(page, job_id: str) -> None:
    page.locator(f"article.tile[data-job='{job_id}'] a.tile-image").first.click()
    page.wait_for_selector("#lightbox[open]")


def form_settings(page) -> dict:
    return page.evaluate("""() => Object.fromEntries(["prompt", "negative_prompt", "steps", "guidance_scale",
        "seed", "width", "height"].map(id => [id, document.getElementById(id).value]))""")


EXPECTED_FORM = {"prompt": "a copper kettle", "negative_prompt": "blurry, dark", "steps": "3",
                 "guidance_scale": "6.5", "seed": "4242", "width": "64", "height": "64"}


def test_send_to_img2img_and_inpaint_keep_the_prompt_and_settings(serve, page):
    server = serve()
    [job_id] = make_jobs(page, server, 1, **SETTINGS)
    page.goto(server.url + "/gallery")
    item = menu_item(page, job_id, "Send to img2img")
    # The menu opened on its first item; the arrow keys move through it.
    assert page.evaluate("document.activeElement.textContent") == "Download"
    assert page.get_attribute(f"#actions-{job_id}-0", "aria-expanded") == "true"
    item.click()
    page.wait_for_function("() => document.getElementById('init-thumb').naturalWidth === 64")
    assert form_settings(page) == EXPECTED_FORM
    assert page.input_value("#scheduler") == "DDIM"
    assert page.evaluate("document.activeElement.id") == "strength"
    assert "/?" not in page.url
    # The job it makes is an img2img job with the source's settings.
    page.fill("#strength", "0.5")
    before = page.get_attribute("#job", "data-job")
    page.click("#generate")
    params = wait_for_next_job(page, before)["params"]
    assert params["has_init_image"] and params["prompt"] == "a copper kettle"
    assert params["negative_prompt"] == "blurry, dark" and params["steps"] == 3
    assert params["guidance_scale"] == 6.5 and params["scheduler"].startswith("DDIM")

    page.goto(server.url + "/gallery")
    menu_item(page, job_id, "Send to inpaint").click()
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 64")
    assert page.evaluate("document.getElementById('mask-section').open")
    assert form_settings(page)["prompt"] == "a copper kettle"

    # The lightbox's Send to img2img does the same.
    page.goto(server.url + "/gallery")
    open_lightbox(page, job_id)
    page.click("#lightbox-img2img")
    page.wait_for_function("() => document.getElementById('init-thumb').naturalWidth === 64")
    assert form_settings(page) == EXPECTED_FORM


def test_the_actions_menu_works_with_the_keyboard(serve, page):
    server = serve()
    [job_id] = make_jobs(page, server, 1)
    page.goto(server.url + "/gallery")
    button = page.locator(f"#actions-{job_id}-0")
    assert page.is_hidden(f"#menu-{job_id}-0")
    button.focus()
    page.keyboard.press("ArrowUp")  # opens on the last item
    assert page.evaluate("document.activeElement.textContent") == "Delete"
    page.keyboard.press("ArrowDown")  # wraps to the first
    assert page.evaluate("document.activeElement.textContent") == "Download"
    page.keyboard.press("End")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("document.activeElement.textContent") == "Extras"
    page.keyboard.press("Escape")
    assert page.is_hidden(f"#menu-{job_id}-0")
    assert page.evaluate("document.activeElement.id") == f"actions-{job_id}-0"
    assert button.get_attribute("aria-expanded") == "false"
    # A click elsewhere closes it too.
    button.click()
    assert page.is_visible(f"#menu-{job_id}-0")
    page.click("h1")
    assert page.is_hidden(f"#menu-{job_id}-0")


def test_lightbox_keyboard_reuse_upscale_and_delete(serve, page, shots):
    server = serve()
    # Another client's job (no browser cookie): shown in the shared gallery, not this browser's to delete.
    theirs = requests.post(f"{server.url}/api/jobs", json={"prompt": "someone else's", "width": 64, "height": 64,
                                                           "steps": 2}).json()["job"]["id"]
    assert requests.get(f"{server.url}/api/jobs/{theirs}?wait=60").json()["job"]["state"] == "done"
    ids = make_jobs(page, server, 3)
    page.set_viewport_size(DESKTOP)
    page.goto(server.url + "/gallery")
    assert page.locator("article.tile").count() == 4
    # Six tiles across a 1366 px screen (the compact gallery).
    columns = page.evaluate("getComputedStyle(document.getElementById('gallery')).gridTemplateColumns.split(' ').length")
    assert columns >= 6

    open_lightbox(page, ids[2])  # the newest: the first tile
    assert page.evaluate("document.activeElement.id") == "lightbox-close"
    assert "tile 2" in page.text_content("#lightbox-title") and "(1 of 4)" in page.text_content("#lightbox-title")
    page.screenshot(path=str(shots / "gallery-lightbox.png"))
    page.keyboard.press("ArrowRight")
    assert "tile 1" in page.text_content("#lightbox-title")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # wraps to the last: someone else's
    assert "someone else's" in page.text_content("#lightbox-title")
    assert page.is_hidden("#lightbox-delete") and page.is_visible("#lightbox-reuse")  # theirs: no Delete
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#lightbox-delete")
    # Tab stays in the dialog: past the last control it comes back to the first, and the other way.
    page.focus("#lightbox .lightbox-info summary")  # the last control
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "lightbox-close"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    for _ in range(12):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('#lightbox') !== null")
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    assert page.evaluate("document.activeElement.closest('article.tile').getAttribute('data-job')") == ids[2]

    # Upscale: an Extras job whose image is in the gallery after a reload.
    open_lightbox(page, ids[1])
    page.click("#lightbox-upscale")
    page.wait_for_function("() => document.getElementById('lightbox-status').textContent.includes('in the gallery')")
    page.keyboard.press("Escape")
    page.reload()
    assert page.locator("article.tile").count() == 5
    assert "128×128 · Extras" in page.text_content("article.tile >> nth=0 >> .meta")

    # Delete (confirmed): the tile goes, the job and its image too; the lightbox shows the next one.
    page.on("dialog", lambda dialog: dialog.accept())
    open_lightbox(page, ids[0])
    title = page.text_content("#lightbox-title")
    page.click("#lightbox-delete")
    page.wait_for_selector(f"article.tile[data-job='{ids[0]}']", state="detached")
    assert page.text_content("#lightbox-title") != title and page.is_visible("#lightbox")
    assert requests.get(f"{server.url}/api/jobs/{ids[0]}").status_code == 404
    assert requests.get(f"{server.url}/images/{ids[0]}/0.png").status_code == 404
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    # Focus back on a tile: the dialog's close event (which places it) comes a task after it hides.
    page.wait_for_function("() => document.activeElement.classList.contains('tile-image')")

    # Reuse: the form page with the image's settings.
    open_lightbox(page, ids[2])
    page.click("#lightbox-reuse")
    page.wait_for_url(server.url + "/")
    page.wait_for_function("() => document.getElementById('prompt').value === 'tile 2'")
    assert page.input_value("#seed") == "2"


def test_swipe_steps_through_the_lightbox_on_a_phone(serve, browser):
    server = serve()
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    context.set_default_timeout(TIMEOUT_MS)
    phone = context.new_page()
    errors: list[str] = []
    phone.on("pageerror", lambda exc: errors.append(str(exc)))
    ids = make_jobs(phone, server, 3)
    phone.goto(server.url + "/gallery")
    open_lightbox(phone, ids[2])

    def swipe(dx: int, dy: int = 0) -> None:
        phone.evaluate("""([dx, dy]) => {
            const target = document.getElementById('lightbox-image'), box = target.getBoundingClientRect();
            const x = box.left + box.width / 2, y = box.top + box.height / 2;
            const fire = (type, px, py) => target.dispatchEvent(new PointerEvent(type, {bubbles: true,
                pointerId: 7, pointerType: 'touch', isPrimary: true, clientX: px, clientY: py}));
            fire('pointerdown', x, y); fire('pointermove', x + dx / 2, y + dy / 2); fire('pointerup', x + dx, y + dy);
        }""", [dx, dy])

    assert "tile 2" in phone.text_content("#lightbox-title")
    swipe(-120)  # left: the next image
    assert "tile 1" in phone.text_content("#lightbox-title")
    swipe(-120)
    assert "tile 0" in phone.text_content("#lightbox-title")
    swipe(150)  # right: back
    assert "tile 1" in phone.text_content("#lightbox-title")
    swipe(20)  # too short: a tap
    swipe(-80, 200)  # mostly vertical: a scroll
    assert "tile 1" in phone.text_content("#lightbox-title")
    # Everything fits a phone's width.
    assert phone.evaluate("document.getElementById('lightbox').getBoundingClientRect().right") <= PHONE["width"]
    context.close()
    assert not errors, errors


def test_the_gallery_loads_the_next_page_on_scroll(serve, page):
    """More jobs than a page: the first page alone, then one page at a time as the user scrolls."""
    server = serve()
    ids = make_jobs(page, server, 21)
    page.set_viewport_size(PHONE)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "before=" in request.url else None)
    page.goto(server.url + "/gallery?limit=10")
    page.wait_for_timeout(1000)
    assert page.locator("article.tile").count() == 10 and fetched == []  # nothing more until a scroll
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("() => document.querySelectorAll('article.tile').length === 20")
    assert len(fetched) == 1 and "limit=10" in fetched[0]
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("() => document.querySelectorAll('article.tile').length === 21")
    assert "that is all" in page.text_content("#gallery-loading")
    assert page.query_selector("#older") is None and len(fetched) == 2
    shown = page.eval_on_selector_all("article.tile", "tiles => tiles.map(t => t.getAttribute('data-job'))")
    assert shown == ids[::-1]  # newest first, each once
    # The loaded tiles work like the first page's: the lightbox walks all of them, their menus open.
    open_lightbox(page, ids[0])
    assert "(21 of 21)" in page.text_content("#lightbox-title")
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    # The dialog's close event puts the focus back on the tile a task later: wait for it, or it would
    # take the focus from the menu button the next line presses Enter on.
    page.wait_for_function("() => document.activeElement.classList.contains('tile-image')")
    menu_item(page, ids[0], "Reuse settings").wait_for()
    assert page.is_visible(f"#menu-{ids[0]}-0")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_menu_and_lightbox_pass_axe(serve, browser, shots, scheme):
    server = serve()
    problems: list[str] = []
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport, color_scheme=scheme)
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        violations = watch_csp(context, tab)
        if name == "desktop":
            ids = make_jobs(tab, server, 2)
        tab.goto(server.url + "/gallery")
        tab.wait_for_selector("#gallery img")
        problems += axe_problems(tab, f"{name} {scheme} gallery")
        menu_item(tab, ids[1], "Download").wait_for()
        tab.screenshot(path=str(shots / f"{name}-{scheme}-gallery-menu.png"))
        problems += axe_problems(tab, f"{name} {scheme} menu open")
        tab.keyboard.press("Escape")
        open_lightbox(tab, ids[1])
        tab.screenshot(path=str(shots / f"{name}-{scheme}-gallery-lightbox.png"))
        problems += axe_problems(tab, f"{name} {scheme} lightbox open")
        context.close()
        assert not violations, violations
    assert not problems, "\n".join(problems)

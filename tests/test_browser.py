"""The web UI in a real headless Chromium (Debian's ``chromium``, driven by
Playwright) against a real server on 127.0.0.1 running the demo model.

Nothing is faked: the page's script calls the JSON API, the worker thread
generates with the demo engine, the browser loads the PNGs. Screenshots of
the main states go to test-artifacts/screenshots (git-ignored; or
``$T2I_SCREENSHOTS`` when set), and the run prints where, for a person to look.
"""
from __future__ import annotations

import re
import time

import pytest

from browser_helpers import CHROMIUM, STEPS, TIMEOUT_MS, serve_people, submit, watch_csp
from helpers import backend_of, tile_action

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install -y chromium)"),
]

def test_the_owner_shares_a_personal_link_and_revokes_it(serve, page, browser):
    """ACCESS = "people": the owner logs in with the password, creates a friend's link on the People
    page, the friend opens it (logged in, no token left in the address bar), and a revoke ends
    the friend's session at their next page."""
    server = serve_people(serve, page)
    page.click("#nav-admin")
    page.wait_for_url(server.url + "/admin")
    assert page.is_visible("#no-people")
    page.fill("#person-name", "Alice <b>")
    page.fill("#person-quota", "3")
    page.click("#add-person-button")
    link = page.input_value("#new-link-url")
    assert link.startswith(server.url + "/login?token=")
    assert page.text_content("#new-link-name") == "Alice <b>"  # text, not markup
    assert page.text_content("#people .person-name") == "Alice <b>"

    friend = browser.new_context()
    friend.set_default_timeout(TIMEOUT_MS)
    theirs = friend.new_page()
    theirs.goto(link)
    theirs.wait_for_selector("#prompt")
    assert theirs.url == server.url + "/" and "token" not in theirs.url
    assert not theirs.is_visible("#nav-admin")  # the People page is the owner's

    page.goto(server.url + "/admin")  # the link is not shown again
    assert not page.is_visible("#new-link-url")
    page.click("#people button.revoke")
    page.wait_for_selector("#people .person-access:has-text('revoked')")
    theirs.goto(server.url + "/gallery")
    assert theirs.url.startswith(server.url + "/login")
    friend.close()


def test_generate_watch_progress_reuse_and_open_the_gallery(serve, page, shots):
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    assert page.is_visible("#demo-notice")
    page.screenshot(path=str(shots / "form.png"), full_page=True)

    page.select_option("#scheduler", "Euler a")
    submit(page, "a lighthouse at dawn", negative_prompt="fog", width=64, height=64, steps=STEPS, seed=4242)

    page.wait_for_selector("#job[data-state=running]")
    page.wait_for_selector("#results img")
    page.wait_for_function("() => document.querySelector('#results img').naturalWidth > 0")
    assert page.get_attribute("#job", "data-state") == "done"
    assert page.text_content("#job-state").startswith("Done: 1 image")
    page.screenshot(path=str(shots / "result.png"), full_page=True)

    seen = page.evaluate("window.__seen")
    # The bar moved through intermediate steps (not just 0 then done) ...
    middle = [value for value, total in seen["progress"] if 0 < value < total]
    assert middle, f"no progress seen between start and end: {seen['progress']}"
    assert [total for _, total in seen["progress"]][-1] == STEPS
    assert page.get_attribute("#progress", "aria-valuenow") == str(STEPS)
    # ... at least one live preview frame was shown, and it is gone now.
    assert seen["previews"] >= 1
    assert page.is_hidden("#preview-box")
    assert "running" in seen["states"]
    image = page.eval_on_selector("#results img", "img => [img.naturalWidth, img.naturalHeight, img.src]")
    assert image[:2] == [64, 64]
    assert "Seed 4242" in page.text_content("#results")
    assert page.is_hidden("#cancel")

    # Reuse settings puts everything, seed included, back into a changed form.
    for field in ("#prompt", "#negative_prompt", "#seed", "#steps"):
        page.fill(field, "")
    page.select_option("#scheduler", "DDIM")
    page.click("#reuse")
    assert page.input_value("#prompt") == "a lighthouse at dawn"
    assert page.input_value("#negative_prompt") == "fog"
    assert page.input_value("#seed") == "4242"
    assert page.input_value("#steps") == str(STEPS)
    assert page.input_value("#scheduler") == "Euler a"

    page.click("a#nav-gallery")
    page.wait_for_url("**/gallery")
    gallery_image = page.wait_for_selector("#gallery img")
    page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth > 0")
    assert gallery_image.get_attribute("src") == image[2].removeprefix(server.url)
    assert "a lighthouse at dawn" in page.text_content("#gallery")
    download = page.get_attribute("#gallery a[download]", "href")
    assert download.endswith("?download=1")
    page.screenshot(path=str(shots / "gallery.png"), full_page=True)

    # The gallery's reuse link fills the form page the same way.
    tile_action(page.locator("#gallery article.tile").first, "Reuse settings").click()
    page.wait_for_function("() => document.getElementById('seed').value === '4242'")
    assert page.input_value("#prompt") == "a lighthouse at dawn"


def test_cancel_a_running_job_and_a_queued_one(serve, page, shots):
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")

    # A long job, cancelled from the page while it runs.
    submit(page, "a slow painting", width=256, height=256, steps=100)
    page.wait_for_function("() => Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 1")
    page.click("#cancel")
    page.wait_for_selector("#job[data-state=cancelled]")
    # A running job keeps the image of its last step (A1111 does), labelled as partial.
    assert re.fullmatch(r"Cancelled: partial, cancelled after step \d+ of 100", page.text_content("#job-state"))
    assert page.is_hidden("#cancel")
    assert page.is_enabled("#generate")
    assert page.locator("#results img").count() == 1

    # Another client's long job runs; ours waits in the queue with its position shown.
    other = page.context.browser.new_context()  # its own cookies: another client
    blocker = other.request.post(server.url + "/api/jobs", data={"prompt": "someone else", "width": 256,
                                                                 "height": 256, "steps": 100})
    assert blocker.status == 202
    blocker_id = blocker.json()["job"]["id"]
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while page.request.get(f"{server.url}/api/jobs/{blocker_id}").json()["job"]["state"] != "running":
        assert time.monotonic() < deadline, "the other job never started"
        time.sleep(0.05)
    submit(page, "waiting my turn", width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=queued]")
    # The place comes with the queue's next poll, the one the strip and the header show too.
    page.wait_for_function("() => document.getElementById('queue-position').textContent === 'Position in queue: 1'")
    assert "waiting my turn" in page.text_content("#job-params")  # this job's settings, not the last one's
    assert "a slow painting" not in page.text_content("#job-params")
    page.screenshot(path=str(shots / "queued.png"), full_page=True)
    page.click("#cancel")
    page.wait_for_selector("#job[data-state=cancelled]")
    assert page.text_content("#job-state") == "Cancelled"
    assert other.request.post(f"{server.url}/api/jobs/{blocker_id}/cancel").status == 200
    other.close()


def test_a_reloaded_page_picks_its_running_job_up_again(serve, page):
    # Phones drop background tabs; coming back must not lose the job.
    server = serve()
    page.goto(server.url + "/")
    submit(page, "do not lose me", width=64, height=64, steps=STEPS)
    page.wait_for_selector("#job[data-state=running]")
    page.reload()
    page.wait_for_selector("#job[data-state=done]")
    page.wait_for_function("() => document.querySelector('#results img').naturalWidth === 64")
    assert "do not lose me" in page.text_content("#job-params")


def test_api_errors_show_next_to_the_form_with_the_field_marked(serve, page):
    server = serve()
    page.goto(server.url + "/")
    submit(page, "too many steps", steps=1000)
    error = page.wait_for_selector("#form-error:visible")
    assert "steps" in error.text_content() and "1000" in error.text_content()
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "steps"
    assert page.get_attribute("#job", "data-state") == "idle"
    # Fixing the field clears the mark.
    page.fill("#steps", "2")
    assert page.get_attribute("#steps", "aria-invalid") is None
    # Half-typed numbers ("1e") read as empty in a number box: caught before sending.
    page.fill("#width", "")
    page.focus("#width")
    page.keyboard.type("1e")
    page.click("#generate")
    assert page.text_content("#form-error") == "width: must be a number"
    assert page.get_attribute("#width", "aria-invalid") == "true"
    assert page.get_attribute("#job", "data-state") == "idle"


def test_model_loading_state_turns_ready_without_a_reload(serve, page):
    server = serve(START_WORKER=False)
    page.goto(server.url + "/")
    assert page.is_visible("#model-loading")
    assert page.get_attribute("#model-status", "data-state") == "loading"
    backend_of(server.app).worker.ensure_engine()  # what the worker thread does first
    page.wait_for_selector("#model-status[data-state=ready]")
    assert page.is_hidden("#model-loading")
    assert page.text_content("#model-state") == "ready"


def test_login_when_a_password_is_set(serve, page):
    server = serve(PASSWORD="open sesame")
    page.goto(server.url + "/")
    assert page.url == server.url + "/login?next=/"
    # The app's own title and look, and who to ask for the password.
    assert "Stable Diffusion 2.1" in page.title() and page.is_visible(".brand")
    assert "ask the person who shared the link" in page.text_content("#login-help")
    page.fill("#password", "typed blind")
    assert page.get_attribute("#password", "type") == "password"
    page.click("#show-password")
    assert page.get_attribute("#password", "type") == "text" and page.text_content("#show-password") == "Hide"
    page.click("#show-password")
    assert page.get_attribute("#password", "type") == "password"
    page.fill("#password", "wrong")
    page.click("#login")
    assert "Wrong password" in page.text_content("body")
    page.fill("#password", "open sesame")
    page.click("#login")
    page.wait_for_url(server.url + "/")
    page.wait_for_selector("#prompt")
    # Logged in: the page's own API calls pass too.
    page.wait_for_selector("#model-status[data-state=ready]")
    submit(page, "behind a password", width=64, height=64, steps=2)
    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0")
    page.click("#nav-logout")
    assert page.url.startswith(server.url + "/login")
    page.goto(server.url + "/gallery")
    assert page.url.startswith(server.url + "/login")


def test_a_model_that_fails_to_load_is_reported_and_jobs_fail_with_the_reason(serve, page, tmp_path):
    server = serve(MODEL=str(tmp_path / "missing" / "model.safetensors"), ENGINE=None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-failed:visible")
    # What a visitor can do about it; the details (paths, exceptions, CLI options) are only in the log.
    banner = page.text_content("#model-failed").strip()
    assert banner == "The model could not be loaded; the person running this app must restart it."
    body = page.text_content("body")
    assert "no such file" not in body and "--model" not in body and "Error" not in body
    assert page.get_attribute("#model-status", "data-state") == "failed"
    # Generate is off, and says why (the button's description).
    assert page.is_disabled("#generate")
    assert page.is_visible("#generate-why") and "must restart it" in page.text_content("#generate-why")
    assert page.get_attribute("#generate", "aria-describedby") == "generate-why"
    page.fill("#prompt", "anything")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # the shortcut does not get round it either
    page.wait_for_timeout(300)
    assert page.get_attribute("#job", "data-state") == "idle"
    assert page.locator("#results img").count() == 0


def test_jobs_queued_from_a_failed_load_fail_without_the_details(serve, page, tmp_path):
    # A job queued while the model was still loading fails when the load fails:
    # the page says so in the visitor's words, not with the exception.
    server = serve(MODEL=str(tmp_path / "missing" / "model.safetensors"), ENGINE=None, START_WORKER=False)
    page.goto(server.url + "/")
    submit(page, "anything", width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=queued]")
    backend_of(server.app).start()  # the worker starts, tries to load, fails
    page.wait_for_selector("#job[data-state=failed]")
    assert page.text_content("#job-state") == ("Failed: the model could not be loaded; "
                                               "the person running this app must restart it.")
    assert "no such file" not in page.text_content("body")
    page.wait_for_selector("#generate:disabled")


# Watches the page's job list: every distinct text each item showed, in order.
LIST_RECORDER = """() => {
  window.__items = {};
  const list = document.getElementById("queue-list");
  const record = () => list.querySelectorAll("li[data-job]").forEach((li) => {
    const seen = (window.__items[li.dataset.job] = window.__items[li.dataset.job] || []);
    const text = li.querySelector(".where").textContent;
    if (seen[seen.length - 1] !== text) seen.push(text);
  });
  new MutationObserver(record).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_queue_three_prompts_while_one_runs_and_watch_them_finish_in_order(serve, page):
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.evaluate(LIST_RECORDER)
    submit(page, "first, running", width=64, height=64, steps=STEPS)
    page.wait_for_selector("#job[data-state=running]")
    prompts = ["second", "third", "fourth"]
    for prompt in prompts:
        submit(page, prompt, width=64, height=64, steps=STEPS)  # Generate stays on: each press queues
        page.wait_for_function("p => [...document.querySelectorAll('#queue-list li .what')]"
                               ".some((what) => what.textContent === p)", arg=prompt)
    # The strip counts the whole queue, and what is ahead of this client's next job.
    page.wait_for_function("() => document.getElementById('queue-strip').textContent.includes('4 jobs')")
    assert "1 ahead of your next one" in page.text_content("#queue-strip")
    # Four paced jobs one after another: minutes on a busy machine.
    page.wait_for_function("() => document.querySelectorAll('#queue-list li[data-state=done]').length === 4",
                           timeout=600_000)
    ids = page.eval_on_selector_all("#queue-list li", "items => items.map(li => li.dataset.job)")
    jobs = {job["id"]: job for job in page.request.get(server.url + "/api/jobs").json()["jobs"]}
    by_prompt = {jobs[i]["params"]["prompt"]: jobs[i] for i in ids}
    finished = [by_prompt[p]["finished_at"] for p in ["first, running", *prompts]]
    assert finished == sorted(finished), "the jobs did not finish in the order they were queued"
    seen = page.evaluate("window.__items")
    # Positions counted down: the last one went 3, 2, 1, then ran, then was done.
    assert seen[by_prompt["fourth"]["id"]] == ["queued #3", "queued #2", "queued #1", "running", "done"], seen
    assert seen[by_prompt["second"]["id"]] == ["queued #1", "running", "done"], seen
    # The finished jobs show their measured speed; the page shows the newest one's images.
    assert "it/s" in page.text_content("#queue-list")
    page.wait_for_selector("#job[data-state=done]")
    assert page.text_content("#job-state").startswith("Done: 1 image")
    assert "fourth" in page.text_content("#job-params")
    # Any finished job's result can be brought back into the panel.
    page.click(f"#queue-list li[data-job='{by_prompt['second']['id']}'] .show-job")
    page.wait_for_function("() => document.getElementById('job-params').textContent.includes('second')")
    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0")


def test_the_per_client_limit_shows_its_message(serve, page):
    server = serve(MAX_QUEUED_PER_CLIENT=2)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    for prompt in ("one", "two"):
        submit(page, prompt, width=256, height=256, steps=100)
        page.wait_for_function("p => [...document.querySelectorAll('#queue-list li .what')]"
                               ".some((what) => what.textContent === p)", arg=prompt)
    submit(page, "three", width=64, height=64, steps=2)
    error = page.wait_for_selector("#form-error:visible")
    assert "the limit is 2" in error.text_content() and "Wait for one to finish or cancel one" in error.text_content()
    assert page.is_enabled("#generate")
    for job in page.request.get(server.url + "/api/jobs").json()["jobs"]:
        page.request.post(f"{server.url}/api/jobs/{job['id']}/cancel")


PHONE = {"width": 390, "height": 844}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_layout_fits_the_screen(serve, browser, shots, scheme):
    # Colab users send the link to phones: nothing may need sideways scrolling.
    server = serve()
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2,
                                  color_scheme=scheme)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    overflow = "document.documentElement.scrollWidth - window.innerWidth"
    button_box = "(() => { const r = document.getElementById('generate').getBoundingClientRect(); return [r.top, r.bottom]; })()"
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        assert page.evaluate(overflow) <= 0
        page.screenshot(path=str(shots / f"phone-{scheme}-form.png"))
        # Generate is on the first screen, under the prompts, and sticks to the top while the settings
        # scroll past (issue #27; tests/test_browser_layout.py checks both sizes).
        page.evaluate("window.scrollTo(0, 0)")
        top, bottom = page.evaluate(button_box)
        assert 0 <= top and bottom <= PHONE["height"], (top, bottom)
        page.evaluate("window.scrollTo(0, document.getElementById('generate-form').scrollHeight - 300)")
        top, bottom = page.evaluate(button_box)
        assert 0 <= top and bottom <= PHONE["height"], (top, bottom)
        # A message does not push the button: it shows under it.
        before = page.evaluate("document.getElementById('generate').offsetTop")
        page.tap("#generate")  # no prompt: the error shows
        page.wait_for_selector("#form-error:visible")
        assert page.evaluate("document.getElementById('generate').offsetTop") == before
        page.screenshot(path=str(shots / f"phone-{scheme}-error.png"))

        page.fill("#prompt", "a long prompt " + "with many words " * 20 + "averyveryverylongwordwithoutanyspaces" * 3)
        page.fill("#width", "64")
        page.fill("#height", "64")
        page.fill("#steps", "2")
        page.fill("#num_images", "2")
        page.tap("#generate")
        page.wait_for_function("() => document.querySelectorAll('#results img').length === 2 && "
                               "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
        assert page.evaluate(overflow) <= 0
        # The result panel was scrolled into view for the user.
        assert page.evaluate("document.getElementById('job').getBoundingClientRect().top") < PHONE["height"]
        page.screenshot(path=str(shots / f"phone-{scheme}-result.png"), full_page=True)
        page.goto(server.url + "/gallery")
        page.wait_for_selector("#gallery img")
        assert page.evaluate(overflow) <= 0
        # Two thumbnails side by side.
        boxes = page.eval_on_selector_all(".tile", "t => t.slice(0, 2).map(e => e.getBoundingClientRect())"
                                                   ".map(r => [r.left, r.top, r.width])")
        assert boxes[0][1] == boxes[1][1] and boxes[0][0] < boxes[1][0], boxes
        assert boxes[0][2] < PHONE["width"] / 2
        page.screenshot(path=str(shots / f"phone-{scheme}-gallery.png"), full_page=True)
    finally:
        context.close()


def test_image_to_image_with_an_uploaded_init_image(serve, page, tmp_path):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (100, 68), (200, 40, 40)).save(init)
    server = serve()
    page.goto(server.url + "/")
    assert page.is_disabled("#strength")  # strength only means something with an init image
    page.fill("#prompt", "make it blue")
    page.fill("#steps", "4")
    page.set_input_files("#init_image", str(init))
    page.wait_for_selector("#init-preview:visible")
    # The size follows the image, rounded down to multiples of 8.
    page.wait_for_function("() => document.getElementById('width').value === '96'")
    assert page.input_value("#height") == "64"
    assert page.is_enabled("#strength")
    page.fill("#strength", "0.5")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0")
    size = page.eval_on_selector("#results img", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [96, 64]
    assert "yes, strength 0.5" in page.text_content("#job-params")

    page.click("#clear-init")
    assert page.is_hidden("#init-preview") and page.is_disabled("#strength")
    page.click("#reuse")
    assert "init image is not kept" in page.text_content("#form-note")


def test_delete_a_job_from_the_gallery(serve, page):
    import requests

    server = serve()
    page.goto(server.url + "/")  # the browser's client id: the jobs below are its own, so it may delete them
    ids = [page.request.post(server.url + "/api/jobs", data={"prompt": f"tile {i}", "width": 64, "height": 64,
                                                             "steps": 2}, headers={"Origin": server.url})
           .json()["job"]["id"] for i in range(2)]
    for job_id in ids:
        assert requests.get(f"{server.url}/api/jobs/{job_id}?wait=60").json()["job"]["state"] == "done"
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete this job and all its images?"
    page.goto(server.url + "/gallery")
    tile_action(page.locator(f"article.tile[data-job='{ids[0]}']"), "Delete").click()
    page.wait_for_selector(f"[data-job='{ids[0]}']", state="detached")
    assert requests.get(f"{server.url}/api/jobs/{ids[0]}").status_code == 404
    assert requests.get(f"{server.url}/images/{ids[0]}/0.png").status_code == 404
    page.reload()
    assert page.query_selector(f"[data-job='{ids[0]}']") is None and page.query_selector(f"[data-job='{ids[1]}']")


def test_every_page_runs_under_the_content_security_policy(serve, browser):
    """Login, form, gallery (with an image) and error pages all carry the CSP and
    break none of it; the watcher itself sees a violation when there is one."""
    server = serve(PASSWORD="open sesame")
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    violations = watch_csp(context, page)
    try:
        response = page.goto(server.url + "/login")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        # The app's stylesheet applies (the login page has the app's look and colour schemes).
        assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).display") == "flex"
        page.fill("#password", "open sesame")
        page.click("#login")
        page.wait_for_selector("#model-status[data-state=ready]")
        submit(page, "a strict page", width=64, height=64, steps=2)
        page.wait_for_function("() => document.querySelector('#results img') && "
                               "document.querySelector('#results img').naturalWidth > 0")
        page.goto(server.url + "/gallery")
        assert page.evaluate("document.querySelector('.tile-image img').naturalWidth") > 0
        response = page.goto(server.url + "/no-such-page")
        assert response.status == 404 and "content-security-policy" in response.headers
        assert page.text_content("body").strip()
        assert violations == []
        # The control: an inline script is refused, and the watcher reports it.
        page.evaluate("""() => { const s = document.createElement("script");
                                 s.textContent = "window.__ran = true"; document.body.appendChild(s); }""")
        page.wait_for_timeout(200)
        assert page.evaluate("window.__ran") is None
        assert any("script-src" in v for v in violations), violations
    finally:
        context.close()

"""The "Prompts from file or textbox" section of the page (templates/_prompts.html, static/prompts.js),
in headless Chromium against a live server: two lines loaded from a .txt file make two jobs, shown in
the queue panel by its own poll and then in the gallery with their prompts; a bad line is named under
the lines and nothing is queued; axe finds nothing serious, light and dark, at 1366x900 and 390x844."""
from __future__ import annotations

import pytest

from browser_helpers import TIMEOUT_MS, axe_problems, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
LINES = 'a red fox\n--prompt "a blue bird" --steps 2 --negative_prompt "blurry"\n'


@pytest.fixture
def open_page(browser):
    """A context at a size (a phone with touch), failing the test on a JavaScript error or a CSP violation."""
    contexts = []

    def make(size: str):
        phone = size == "phone"
        context = browser.new_context(viewport=SIZES[size], color_scheme="light", is_mobile=phone,
                                      has_touch=phone, device_scale_factor=2 if phone else 1)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        problems = watch_csp(context, page)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        contexts.append((context, problems))
        return page

    yield make
    for context, problems in contexts:
        context.close()
        assert not problems, f"JavaScript errors or CSP violations on the page: {problems}"


def _jobs(page, query: str = "") -> list[dict]:
    return page.evaluate("(q) => fetch('/api/jobs' + q).then(r => r.json()).then(d => d.jobs)", query)


def _fill_settings(page) -> None:
    page.fill("#prompt", "watercolor")
    for name, value in (("width", 64), ("height", 64), ("steps", 1), ("seed", 21)):
        page.fill(f"#{name}", str(value))


def test_two_lines_from_a_file_make_two_gallery_jobs(serve, open_page, tmp_path):
    server = serve()
    page = open_page("desktop")
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    _fill_settings(page)
    page.click("#lines-section > summary")

    # A bad line first: named under the lines, nothing queued.
    page.fill("#lines-text", "a red fox\n--steps lots")
    page.click("#lines-run")
    page.wait_for_selector("#lines-error:visible")
    assert "line 2" in page.inner_text("#lines-error")
    assert page.get_attribute("#lines-text", "aria-invalid") == "true"
    assert _jobs(page) == []

    lines = tmp_path / "prompts.txt"
    lines.write_text(LINES, encoding="utf-8")
    page.set_input_files("#lines-file", str(lines))
    page.wait_for_function("() => document.getElementById('lines-text').value.includes('a blue bird')")
    assert "2 lines" in page.inner_text("#lines-status")
    assert not page.is_visible("#lines-error")
    page.check("#lines-iterate-seed")
    page.click("#lines-run")
    page.wait_for_function("() => /Queued 2 jobs/.test(document.getElementById('lines-status').textContent)")
    assert page.eval_on_selector_all("#lines-jobs li", "items => items.map(i => i.textContent)") == [
        "a red fox watercolor", "a blue bird watercolor"]
    # The queue panel shows them through its own poll, then both finish.
    page.wait_for_function("() => ['a red fox watercolor', 'a blue bird watercolor'].every(p => "
                           "[...document.querySelectorAll('#queue-list li .what')].some(w => w.textContent === p))",
                           timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#queue-list li[data-state=done]').length === 2",
                           timeout=180_000)
    done = {job["params"]["prompt"]: job for job in _jobs(page, "?state=done")}
    assert set(done) == {"a red fox watercolor", "a blue bird watercolor"}
    fox, bird = done["a red fox watercolor"]["params"], done["a blue bird watercolor"]["params"]
    assert (fox["steps"], fox["seed"], fox["width"]) == (1, 21, 64)  # the form's settings
    assert (bird["steps"], bird["seed"], bird["negative_prompt"]) == (2, 22, "blurry")  # the line's, seed + 1

    page.goto(server.url + "/gallery")
    page.wait_for_selector("article.tile")
    shown = page.eval_on_selector_all("article.tile p.prompt", "ps => ps.map(p => p.textContent.trim())")
    assert sorted(shown) == ["a blue bird watercolor", "a red fox watercolor"]


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_lines_section_passes_axe(serve, open_page, size, tmp_path):
    server = serve()
    page = open_page(size)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    _fill_settings(page)
    page.click("#lines-section > summary")
    problems: list[str] = []

    def check(where: str) -> None:
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.locator("#lines-section").screenshot(path=str(tmp_path / f"{size}-{where}-{scheme}.png"))
            problems.extend(axe_problems(page, f"{size} {scheme} {where}"))
        page.emulate_media(color_scheme="light")

    page.fill("#lines-text", "--bogus 1")
    page.click("#lines-run")
    page.wait_for_selector("#lines-error:visible")
    check("error")
    page.fill("#lines-text", "a red fox\na blue bird")
    page.click("#lines-run")
    page.wait_for_function("() => /Queued 2 jobs/.test(document.getElementById('lines-status').textContent)")
    check("queued")
    assert not problems, "\n".join(problems)

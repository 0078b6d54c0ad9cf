"""The queue as the page shows it (issue #27), in a real Chromium against a real server with the
demo model: the header's count, the strip and the result panel come from one poll and agree at
every poll of a three-job run; the panel follows the running job with its live preview without
a click; a queued job's panel shows no image; finished jobs have a thumbnail in "Your jobs";
axe-core finds nothing serious in the light and the dark scheme, on a desktop and a phone."""
from __future__ import annotations

import re

import pytest

from browser_helpers import CHROMIUM, TIMEOUT_MS, PacedEngine, axe_problems, submit, watch_csp

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]

pytest.importorskip("axe_playwright_python.sync_playwright", reason="pip install axe-playwright-python")

STEPS = 30
PACE = 0.1  # seconds added to each step: a job runs 3 s or more, the page polls it several times

# Every distinct state of the header, the strip, the result panel and the list, recorded on each
# DOM change (a poll renders them all in one task, so each record is what a user saw at once).
QUEUE_RECORDER = """() => {
  window.__queue = [];
  const $ = (id) => document.getElementById(id);
  let last = "";
  const record = () => {
    const position = $("queue-position");
    const snap = {
      polls: Number($("queue-panel").dataset.polls || 0),
      header: $("queue-size").textContent,
      strip: $("queue-strip").textContent,
      state: $("job").dataset.state,
      job: $("job").dataset.job || null,
      position: position.hidden ? null : position.textContent,
      preview: $("preview-box").hidden ? null : ($("preview").dataset.job || "?"),
      results: document.querySelectorAll("#results img").length,
      items: [...document.querySelectorAll("#queue-list li[data-job]")].map((li) => [
        li.dataset.job, li.querySelector(".where").textContent, !!li.querySelector("img.thumb")]),
    };
    const text = JSON.stringify(snap);
    if (text !== last) { last = text; window.__queue.push(snap); }
  };
  record();
  new MutationObserver(record).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def count(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else 0


def disagreements(snap: dict) -> list[str]:
    """What in one record does not add up: the header, the strip, the list and the panel."""
    problems = []
    header = count(r"· (\d+) in queue", snap["header"])
    strip = 0 if snap["strip"] == "Queue: empty" else count(r"Queue: (\d+) jobs? queued or running", snap["strip"])
    where = {job: text for job, text, _ in snap["items"]}
    running = sum(text == "running" for text in where.values())
    queued = sorted(int(text[len("queued #"):]) for text in where.values() if text.startswith("queued #"))
    if not header == strip == running + len(queued):
        problems.append(f"header {header}, strip {strip}, list {running} running + {len(queued)} queued")
    ahead = re.search(r"(\d+) ahead of your next one", snap["strip"])
    if queued and (ahead is None or int(ahead.group(1)) != running + queued[0] - 1):
        problems.append(f"strip says {snap['strip']!r} with {running} running and next at #{queued[0]}")
    if not queued and ahead:
        problems.append(f"strip says {snap['strip']!r} with nothing of ours queued")
    if snap["position"] is not None:
        place = snap["position"].removeprefix("Position in queue: ")
        if snap["state"] != "queued" or where.get(snap["job"]) != f"queued #{place}":
            problems.append(f"panel {snap['position']!r} for a {snap['state']} job listed as {where.get(snap['job'])!r}")
    if snap["state"] == "queued" and (snap["preview"] or snap["results"]):
        problems.append(f"a queued job's panel shows an image (preview of {snap['preview']}, {snap['results']} results)")
    if snap["preview"] is not None and (snap["preview"] != snap["job"] or snap["state"] != "running"):
        problems.append(f"the panel ({snap['state']} job {snap['job']}) shows job {snap['preview']}'s preview")
    return [f"poll {snap['polls']}: {p}" for p in problems]


@pytest.fixture
def paced_server(tmp_path, engine):
    from app import create_app
    from app.web.server import ServerHandle

    server = ServerHandle(create_app({"INSTANCE": str(tmp_path / "instance"), "MODEL": "demo", "SECRET_KEY": "queue-test",
                                      "ENGINE": PacedEngine(engine, PACE)}), host="127.0.0.1", port=0).start()
    yield server
    server.stop()


@pytest.mark.parametrize("viewport", [(1366, 900), (390, 844)], ids=["desktop", "phone"])
def test_three_jobs_header_strip_and_panel_agree_at_every_poll(paced_server, browser, viewport, tmp_path):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    violations = watch_csp(context, page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(paced_server.url + "/")
        page.wait_for_selector("#model-status[data-state=ready]")
        page.evaluate(QUEUE_RECORDER)
        for prompt in ("first", "second", "third"):
            submit(page, prompt, width=64, height=64, steps=STEPS)
            page.wait_for_function("p => [...document.querySelectorAll('#queue-list li .what')]"
                                   ".some((w) => w.textContent === p)", arg=prompt)
        ids = dict(page.eval_on_selector_all("#queue-list li[data-job]", "items => items.map("
                                             "(li) => [li.querySelector('.what').textContent, li.dataset.job])"))
        # The running job's live preview shows without a click, though the newest job is queued.
        page.wait_for_function("id => document.getElementById('preview').dataset.job === id && "
                               "!document.getElementById('preview-box').hidden", arg=ids["first"])

        # Picking the last job while it waits: its place, as the list and the strip count it, and no image.
        page.click(f"#queue-list li[data-job='{ids['third']}'] .show-job")
        page.wait_for_function("() => !document.getElementById('queue-position').hidden")
        assert page.get_attribute("#job", "data-job") == ids["third"]
        assert page.is_hidden("#preview-box") and page.locator("#results img").count() == 0
        page.screenshot(path=str(tmp_path / "queued.png"))
        problems = axe_problems(page, "queued, light")
        page.emulate_media(color_scheme="dark")
        problems += axe_problems(page, "queued, dark")
        page.emulate_media(color_scheme="light")

        page.wait_for_function("() => document.querySelectorAll('#queue-list li[data-state=done]').length === 3",
                               timeout=600_000)
        # Finished jobs show a thumbnail of their image.
        page.wait_for_function("() => [...document.querySelectorAll('#queue-list li img.thumb')]"
                               ".filter((img) => img.complete && img.naturalWidth === 64).length === 3")
        problems += axe_problems(page, "done, light")
        page.emulate_media(color_scheme="dark")
        problems += axe_problems(page, "done, dark")
        assert not problems, "\n".join(problems)

        seen = page.evaluate("window.__queue")
        polls = {snap["polls"] for snap in seen}
        assert len(polls) >= 10, f"only {len(polls)} polls seen"
        assert [p for snap in seen for p in disagreements(snap)] == []
        # The first job's preview showed while it ran, and the third's once its turn came (it was
        # picked; the second's shows only if it started before the pick).
        assert {snap["preview"] for snap in seen} >= {ids["first"], ids["third"]}
        assert any(snap["state"] == "queued" and snap["position"] for snap in seen)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"

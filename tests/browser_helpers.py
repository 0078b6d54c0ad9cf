"""What the browser tests share (headless Chromium driven by Playwright): the browser's path and
flags, the paced demo engine, the page recorders, typing into the form, CSP and axe checks.
Their fixtures (``browser``, ``serve``, ``page``, ``shots``, ``scheme_page``) are in conftest.py."""
from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# The page polls every 500 ms. The demo model's step time depends on the
# machine (tens of ms at 64 px, more on a busy CPU), so each step gets PACE more
# seconds: a STEPS job then runs for 1.8 s or more anywhere, and the page
# sees it running, with previews, several times.
STEPS = 30
PACE = 0.06
TIMEOUT_MS = 60_000

# Records every progress value and every loaded preview frame, so the test
# sees what the user saw while the job ran, however fast it went.
RECORDER = """
window.__seen = {progress: [], previews: 0, states: []};
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  const preview = document.getElementById("preview");
  const job = document.getElementById("job");
  if (!bar) return;
  new MutationObserver(() => {
    window.__seen.progress.push([Number(bar.getAttribute("aria-valuenow")), bar.max]);
  }).observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
  new MutationObserver(() => {
    window.__seen.states.push(job.getAttribute("data-state"));
  }).observe(job, {attributes: true, attributeFilter: ["data-state"]});
  preview.addEventListener("load", () => {
    if (preview.naturalWidth > 0 && !preview.closest("[hidden]")) window.__seen.previews += 1;
  });
});
"""


class PacedEngine:
    """The real demo engine, with PACE seconds added to each denoising step so
    the job is observable on any machine. Everything else is the engine's own."""

    def __init__(self, engine, pace: float):
        self._engine = engine
        self._pace = pace

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def __setattr__(self, name, value):  # what the web app sets (wildcard_dir) reaches the engine that runs
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._engine, name, value)

    def generate(self, request, on_step=None, cancel=None):
        def paced(info):
            time.sleep(self._pace)
            if on_step is not None:
                on_step(info)

        return self._engine.generate(request, on_step=paced, cancel=cancel)


# Reports each Content-Security-Policy violation (the browser blocked something
# the page tried to run, load or apply) to the test, across navigations.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__t2iCspViolation(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


def watch_csp(context, page) -> list[str]:
    """The CSP violations seen on ``page``: the DOM event, and Chromium's console message."""
    violations: list[str] = []
    context.expose_function("__t2iCspViolation", lambda text: violations.append(text))
    context.add_init_script(CSP_LISTENER)
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    return violations


def serve_people(serve, page):
    """An ``ACCESS = "people"`` server, and ``page`` logged in as its owner (with the password)."""
    server = serve(ACCESS="people", PASSWORD="owner secret")
    page.goto(server.url + "/login")
    page.fill("#password", "owner secret")
    page.click("#login")
    page.wait_for_url(server.url + "/")
    return server


SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


def submit(page, prompt: str, **fields) -> None:
    """Type a prompt and settings (form field ids) as a user would, then press Generate."""
    page.fill("#prompt", prompt)
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))
    page.click("#generate")


def shown_job(page) -> dict:
    """The job the result panel shows (its #job[data-job]), as GET /api/jobs/<id> has it now."""
    return page.evaluate("""async () => { const id = document.getElementById('job').dataset.job;
        return (await (await fetch('/api/jobs/' + encodeURIComponent(id))).json()).job; }""")


def wait_for_next_job(page, after: str | None = None) -> dict:
    """Wait until the result panel shows a finished job other than ``after`` (a job id); that job."""
    page.wait_for_function("""(after) => { const job = document.getElementById('job');
        return job.dataset.job && job.dataset.job !== after && job.dataset.state === 'done'; }""", arg=after)
    return shown_job(page)


def paste_png(page, url: str) -> None:
    """Paste the image at ``url`` onto the page, as Ctrl+V would: the form reads its settings (PNG Info)."""
    page.evaluate("""async (url) => { const blob = await (await fetch(url)).blob();
        const data = new DataTransfer(); data.items.add(new File([blob], 'x.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true})); }""", url)


def goto_with_page_config(page, url: str, change) -> None:
    """Open ``url`` with its #page-config JSON changed by ``change(config)`` in place, as another
    server (another model's size, other limits) would have rendered it."""
    def rewrite(route):
        response = route.fetch()
        html = response.text()
        found = re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S)
        config = json.loads(found.group(1))
        change(config)
        text = json.dumps(config).replace("<", "\\u003c")
        route.fulfill(response=response, body=html[:found.start(1)] + text + html[found.end(1):])

    page.route(url, rewrite)
    try:
        page.goto(url)
    finally:
        page.unroute(url)


def sent_job_body(page, action, stop: bool = False) -> dict:
    """The JSON body of the POST /api/jobs that ``action`` makes the page send, read off the wire;
    ``stop``: the request ends there (nothing is queued, the page says the server is unreachable)."""
    if stop:
        page.route("**/api/jobs", lambda route: route.abort())
    try:
        with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as sent:
            action()
        return sent.value.post_data_json
    finally:
        if stop:
            page.unroute("**/api/jobs")


# WCAG 2.2 AA too (issue #27): axe ships its target-size rule (24 px, or room around) disabled; it is turned on.
AA_RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa",
                                                  "best-practice"]},
            "rules": {"target-size": {"enabled": True}},
            "resultTypes": ["violations"]}


@functools.cache
def _axe():
    # Skipped, not failed, where the package is missing (as the accessibility tests are).
    axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright", reason="pip install axe-playwright-python")
    return axe_sync.Axe()


def axe_problems(page, where: str, shots=None) -> list[str]:
    """Serious and critical axe violations on the page as it is now, one line each
    (and a screenshot of what was checked, when ``shots`` is the folder)."""
    if shots is not None:
        page.screenshot(path=str(shots / f"desktop-{page.scheme}-{where.replace(' ', '-')}.png"), full_page=True)
    results = _axe().run(page, options=AA_RULES).response
    return [f"{where}: {v['id']} ({v['impact']}): {v['help']} at "
            + "; ".join(", ".join(n["target"]) + " " + (n.get("failureSummary") or "").replace("\n", " ")
                        for n in v["nodes"][:4])
            for v in results["violations"] if v["impact"] in ("serious", "critical")]

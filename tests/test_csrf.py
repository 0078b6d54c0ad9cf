"""Cross-site requests: a page on another origin, or on another port of the
same host, cannot start or cancel jobs (or log out) through a visitor's
browser; the app's own page and API clients are unaffected."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM_ARGS
from helpers import assert_error, backend_of, small_job, wait_for

PASSWORD = "pw"
BEARER = {"Authorization": f"Bearer {PASSWORD}"}


# --- the rule, through the test client ------------------------------------------------------

@pytest.fixture
def logged_in(make_app):
    app = make_app(PASSWORD=PASSWORD, START_WORKER=False)
    client = app.test_client()
    assert client.post("/login", data={"password": PASSWORD}).status_code == 302
    return client


@pytest.mark.parametrize("headers,field", [
    ({"Origin": "https://evil.example"}, "Origin"),
    ({"Origin": "http://localhost:8080"}, "Origin"),  # same host, another port
    ({"Origin": "https://localhost"}, "Origin"),  # another scheme
    ({"Origin": "null"}, "Origin"),  # sandboxed frame, data: URL
    ({"Referer": "http://evil.example/page"}, "Referer"),
    ({}, None),  # a session cookie and neither header
])
def test_foreign_or_unknown_origin_is_refused(logged_in, headers, field):
    body = assert_error(logged_in.post("/api/jobs", json=small_job(), headers=headers), 403, field)
    assert "cross-site request refused" in body["error"]
    assert logged_in.get("/api/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize("headers", [{"Origin": "http://localhost"}, {"Origin": "http://localhost:80"},
                                     {"Referer": "http://localhost/?x=1"}])
def test_own_origin_passes(logged_in, headers):
    assert logged_in.post("/api/jobs", json=small_job(), headers=headers).status_code == 202


def test_cancel_options_and_logout_are_checked_too(logged_in):
    job = logged_in.post("/api/jobs", json=small_job(), headers={"Origin": "http://localhost"}).get_json()["job"]
    evil = {"Origin": "https://evil.example"}
    assert_error(logged_in.post(f"/api/jobs/{job['id']}/cancel", headers=evil), 403)
    assert_error(logged_in.post("/sdapi/v1/options", json={}, headers=evil), 403)
    assert_error(logged_in.post("/sdapi/v1/interrupt", headers=evil), 403)
    assert logged_in.post("/logout", headers=evil).status_code == 403
    assert logged_in.get("/api/jobs").get_json()["jobs"][0]["state"] == "queued"  # still logged in, not cancelled


def test_api_clients_with_a_header_are_unaffected(make_app):
    client = make_app(PASSWORD=PASSWORD, START_WORKER=False).test_client()
    assert client.post("/api/jobs", json=small_job(), headers=BEARER).status_code == 202
    assert client.post("/sdapi/v1/options", json={}, headers=BEARER).status_code == 200
    # A browser that cached Basic credentials still sends its Origin: refused.
    assert_error(client.post("/api/jobs", json=small_job(), headers={**BEARER, "Origin": "https://evil.example"}),
                 403)


def test_scripts_without_a_password_need_no_headers(client):
    assert client.post("/api/jobs", json=small_job()).status_code == 202
    assert_error(client.post("/api/jobs", json=small_job(), headers={"Origin": "http://127.0.0.1:9999"}), 403)


def test_through_a_trusted_tunnel_its_origin_is_ours(make_app):
    app = make_app(TRUST_PROXY=1, START_WORKER=False)
    client = app.test_client()
    tunnel = {"Origin": "https://abc.ngrok.app", "Host": "abc.ngrok.app", "X-Forwarded-Proto": "https",
              "X-Forwarded-For": "203.0.113.5"}
    assert client.post("/api/jobs", json=small_job(), headers=tunnel).status_code == 202
    # The same headers straight to the port (not from loopback) prove nothing.
    forged = {**tunnel, "Host": "10.0.0.5:7860"}
    assert_error(client.post("/api/jobs", json=small_job(), headers={**forged, "X-Forwarded-Host": "abc.ngrok.app"},
                             environ_base={"REMOTE_ADDR": "10.0.0.9"}), 403)


def test_origins_setting_admits_a_proxy_that_rewrites_host(make_app):
    client = make_app(ORIGINS=("https://x-7860-colab.example",), START_WORKER=False).test_client()
    headers = {"Origin": "https://x-7860-colab.example"}
    assert client.post("/api/jobs", json=small_job(), headers=headers).status_code == 202


def test_origins_from_the_environment(monkeypatch):
    from app.web.settings import from_environ

    found = from_environ({"T2I_ORIGINS": "https://a.example, https://b.example:8443"})
    assert found["ORIGINS"] == ("https://a.example", "https://b.example:8443")


# --- a real browser --------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


class Attacker:
    """A tiny web server on its own port whose page auto-submits a form to the app."""

    def __init__(self, host: str, target: str, fields: dict[str, str]):
        inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
        page = (f'<!doctype html><form id="f" method="post" action="{target}">{inputs}</form>'
                '<script>document.getElementById("f").submit()</script>').encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


@pytest.fixture
def served(make_app):
    from app.web.server import ServerHandle

    handles = []

    def start(**config):
        handles.append(ServerHandle(make_app(START_WORKER=False, **config), port=0).start())
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def attack(page, host: str, target: str, fields: dict[str, str]) -> str:
    attacker = Attacker(host, target, fields)
    try:
        page.goto(attacker.url)
        page.wait_for_url(target)
        return page.inner_text("body")
    finally:
        attacker.close()


@pytest.mark.browser
def test_a_form_on_another_site_starts_no_job(served, browser_page):
    server = served()  # no password: nothing else would stop it
    text = attack(browser_page, "localhost", server.url + "/api/jobs", {"prompt": "from evil", "steps": "2"})
    assert "cross-site request refused" in text and "403" in text
    assert backend_of(server.app).list() == []


@pytest.mark.browser
def test_a_page_on_another_port_of_the_same_host_can_neither_start_nor_cancel(served, browser_page):
    server = served(PASSWORD=PASSWORD)
    page = browser_page
    page.goto(server.url + "/login")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(server.url + "/")
    page.fill("#prompt", "mine")
    page.click("#generate")  # the app's own page still works
    backend = backend_of(server.app)
    job = wait_for(lambda: backend.list(), 30, "the page's job")[0]
    # Same host, another port: the same *site*, so the Lax login cookie goes along.
    text = attack(page, "127.0.0.1", server.url + "/api/jobs", {"prompt": "from the other port"})
    assert "cross-site request refused" in text
    attack(page, "127.0.0.1", server.url + f"/api/jobs/{job.id}/cancel", {})
    assert [(j.id, j.state) for j in backend.list()] == [(job.id, "queued")]


@pytest.mark.browser
def test_the_page_lists_my_jobs_and_the_whole_queue_without_others_prompts(served, browser_page):
    import requests

    server = served(PASSWORD=PASSWORD)
    requests.post(server.url + "/api/jobs", json=small_job(prompt="a secret of someone else"), headers=BEARER,
                  timeout=10).raise_for_status()
    page = browser_page
    page.goto(server.url + "/login")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.fill("#prompt", "my own fox")
    page.click("#generate")
    page.wait_for_selector("#queue-list li.mine")
    listed = "items => items.map(li => li.querySelector('.where').textContent + ' ' + li.querySelector('.what').textContent)"
    assert page.eval_on_selector_all("#queue-list li", listed) == ["queued #2 my own fox"]
    assert page.locator("#queue-list li.mine .show-job").count() == 1  # own jobs can be shown, others' cannot
    page.check("#queue-all")
    page.wait_for_selector("#queue-list li.other")
    assert page.eval_on_selector_all("#queue-list li", listed) == ["queued #1 someone else's job", "queued #2 my own fox"]
    assert page.locator("#queue-list li.other .show-job").count() == 0
    assert "Queue: 2 jobs queued or running" in page.text_content("#queue-strip")
    assert "secret" not in page.content()


def test_through_a_real_tunnel_hop_the_forwarded_headers_count(served):
    """The server itself (waitress, not the test client) must hand X-Forwarded-* to the app:
    a login through an https tunnel is same-origin, gets a Secure cookie, and each
    forwarded address is its own client for the password backoff."""
    import requests

    server = served(PASSWORD="secret", TRUST_PROXY=1)
    tunnel = {"Host": "abc.ngrok.app", "X-Forwarded-Proto": "https", "Origin": "https://abc.ngrok.app"}

    def login(password: str, address: str):
        return requests.post(server.url + "/login", data={"password": password}, allow_redirects=False,
                             headers={**tunnel, "X-Forwarded-For": address}, timeout=30)

    response = login("secret", "203.0.113.9")
    assert response.status_code == 302, response.text
    assert "Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    for _ in range(6):
        login("wrong", "203.0.113.66")
    assert login("wrong", "203.0.113.66").status_code == 429  # the guesser backs off ...
    assert login("typo", "198.51.100.7").status_code == 401  # ... a friend elsewhere does not

"""Who may switch models on a public server: the owner (the OWNER_PASSWORD in password mode, the
PASSWORD's holder with ACCESS = "people", or a logged-in request made on the machine itself, not
through the tunnel); friends get a 403 naming who may, on every route that switches, and the page
shows them the picker disabled with that reason. ALLOW_MODEL_SWITCH true/false still decides for all.

The tunnel is played by its headers: ngrok's agent connects from 127.0.0.1 too, and adds
X-Forwarded-For/-Host/-Proto, which is what tells its requests from a local browser's."""
from __future__ import annotations

import re

import pytest
import requests

from browser_helpers import CHROMIUM, TIMEOUT_MS, axe_problems, watch_csp
from helpers import assert_error, backend_of, serve_process, wait_for

PASSWORD, OWNER_PASSWORD = "friends pw", "owner pw"
OTHER = "someone/other-model"  # a Hub id listed by MODELS: switchable without a file (no worker loads it)
NGROK_HOST = "abc123.ngrok-free.app"
NGROK = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": NGROK_HOST, "X-Forwarded-Proto": "https"}
NGROK_ORIGIN = {"Origin": f"https://{NGROK_HOST}"}
LOCAL: dict[str, str] = {}  # a browser on the machine: no proxy header, from 127.0.0.1 (the test client's)


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def public_app(make_app):
    def make(**config):
        return make_app(**{"PUBLIC": True, "TRUST_PROXY": 1, "PASSWORD": PASSWORD, "ENGINE": None,
                           "MODELS": (OTHER,), "START_WORKER": False, **config})
    return make


def switches(client, headers: dict) -> dict[str, int]:
    """The status of both routes that switch the model, and of an options call that changes
    nothing (the model's own VAE, already selected): anyone may make that one."""
    codes = {
        "api": client.post("/api/model", json={"model": OTHER}, headers=headers).status_code,
        "options": client.post("/sdapi/v1/options", json={"sd_model_checkpoint": OTHER}, headers=headers).status_code,
        "same": client.post("/sdapi/v1/options", json={"sd_vae": "None"}, headers=headers).status_code,
    }
    client.post("/api/model", json={"model": "demo"}, headers=headers)  # back, where allowed
    return codes


def allowed(client, headers: dict) -> bool:
    state = client.get("/api/models", headers=headers).get_json()
    assert state["switch_allowed"] is (state["switch_refused"] is None)
    return state["switch_allowed"]


def test_password_mode_the_owner_password_switches_through_the_tunnel_and_friends_get_403(public_app):
    client = public_app(OWNER_PASSWORD=OWNER_PASSWORD).test_client()
    friend, owner = {**NGROK, **bearer(PASSWORD)}, {**NGROK, **bearer(OWNER_PASSWORD)}
    error = assert_error(client.post("/api/model", json={"model": OTHER}, headers=friend), 403, "model")
    assert "except for its owner" in error["error"] and "owner password" in error["error"]
    assert "ALLOW_MODEL_SWITCH" in error["error"]
    assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": OTHER}, headers=friend), 403,
                 "sd_model_checkpoint")
    assert_error(client.post("/sdapi/v1/txt2img", headers=friend, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": OTHER}}),
        403, "override_settings.sd_model_checkpoint")
    assert not allowed(client, friend)
    state = client.get("/api/models", headers=friend).get_json()
    assert "owner password" in state["switch_refused"]

    assert client.post("/api/model", json={"model": OTHER}, headers=owner).status_code == 200
    assert client.get("/api/models", headers=owner).get_json()["selected"] == OTHER
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo"}, headers=owner).status_code == 200
    assert allowed(client, owner)


def test_password_mode_a_browser_logged_in_with_the_owner_password_is_the_owner(public_app):
    app = public_app(OWNER_PASSWORD=OWNER_PASSWORD)
    owner, friend = app.test_client(), app.test_client()
    for browser, secret in ((owner, OWNER_PASSWORD), (friend, PASSWORD)):
        response = browser.post("/login", data={"password": secret}, headers={**NGROK, **NGROK_ORIGIN})
        assert response.status_code == 302, response.get_data(as_text=True)[:300]
    assert allowed(owner, NGROK) and not allowed(friend, NGROK)
    assert owner.post("/api/model", json={"model": OTHER}, headers={**NGROK, **NGROK_ORIGIN}).status_code == 200
    assert_error(friend.post("/api/model", json={"model": "demo"}, headers={**NGROK, **NGROK_ORIGIN}), 403, "model")
    # Each browser is its own client still: the owner's is not every friend's.
    assert owner.get("/api/jobs", headers=NGROK).status_code == friend.get("/api/jobs", headers=NGROK).status_code == 200
    # A wrong password is still wrong.
    stranger = app.test_client()
    assert stranger.post("/login", data={"password": "guess"}, headers={**NGROK, **NGROK_ORIGIN}).status_code == 401
    assert stranger.get("/api/models", headers=NGROK).status_code == 401


def test_the_page_renders_the_picker_for_the_owner_and_disabled_with_the_reason_for_friends(public_app):
    client = public_app(OWNER_PASSWORD=OWNER_PASSWORD).test_client()
    friend_page = client.get("/", headers={**NGROK, **bearer(PASSWORD)}).get_data(as_text=True)
    select = re.search(r'<select id="sd-model"[^>]*>', friend_page).group(0)
    assert "disabled" in select
    note = re.search(r'<p [^>]*id="model-switch-note"[^>]*>(.*?)</p>', friend_page, re.S).group(1).strip()
    assert note.startswith("Model switching is off on this public server except for its owner") and note.endswith(".")
    owner_page = client.get("/", headers={**NGROK, **bearer(OWNER_PASSWORD)}).get_data(as_text=True)
    assert "disabled" not in re.search(r'<select id="sd-model"[^>]*>', owner_page).group(0)


@pytest.mark.parametrize("forwarded", [
    NGROK,
    {"X-Forwarded-For": "203.0.113.7"},
    {"X-Forwarded-Host": NGROK_HOST},
    {"Forwarded": "for=203.0.113.7;proto=https"},
    {"Ngrok-Trace-Id": "abc"},
    {"Cf-Connecting-Ip": "203.0.113.7"},
], ids=["ngrok", "x-forwarded-for", "x-forwarded-host", "forwarded", "ngrok-header", "cloudflare"])
def test_password_mode_a_local_request_is_the_owner_but_not_one_forwarded_from_loopback(public_app, forwarded):
    client = public_app(OWNER_PASSWORD=OWNER_PASSWORD).test_client()
    local = bearer(PASSWORD)  # the shared password, from 127.0.0.1 with no proxy header: the owner's machine
    assert switches(client, local) == {"api": 200, "options": 200, "same": 200} and allowed(client, local)
    # The tunnel's agent also connects from 127.0.0.1: its headers make it a friend's request.
    through = {**forwarded, **bearer(PASSWORD)}
    assert switches(client, through) == {"api": 403, "options": 403, "same": 200} and not allowed(client, through)
    # Logged out, local is nothing: the password is still needed.
    assert_error(client.post("/api/model", json={"model": OTHER}), 401)


def test_the_vae_is_the_owners_too(public_app, tmp_path):
    vaes = tmp_path / "vae"
    vaes.mkdir()
    (vaes / "tiny.safetensors").write_bytes(b"")  # listed by name; never loaded (no worker)
    client = public_app(OWNER_PASSWORD=OWNER_PASSWORD, VAE_DIR=str(vaes)).test_client()
    error = assert_error(client.post("/sdapi/v1/options", json={"sd_vae": "tiny.safetensors"},
                                     headers={**NGROK, **bearer(PASSWORD)}), 403, "sd_vae")
    assert "except for its owner" in error["error"]
    assert_error(client.post("/api/model", json={"vae": "tiny.safetensors"}, headers={**NGROK, **bearer(PASSWORD)}),
                 403, "vae")
    assert client.post("/sdapi/v1/options", json={"sd_vae": "tiny.safetensors"},
                       headers={**NGROK, **bearer(OWNER_PASSWORD)}).status_code == 200


def test_a_lan_address_is_not_local(public_app):
    client = public_app(OWNER_PASSWORD=OWNER_PASSWORD).test_client()
    lan = {"REMOTE_ADDR": "192.168.1.20"}
    assert_error(client.post("/api/model", json={"model": OTHER}, headers=bearer(PASSWORD), environ_base=lan), 403)
    assert client.post("/api/model", json={"model": OTHER}, headers=bearer(OWNER_PASSWORD),
                       environ_base=lan).status_code == 200


def test_people_mode_the_password_holder_is_the_owner_and_a_person_never_is(public_app):
    client = public_app(ACCESS="people").test_client()
    made = client.post("/api/people", json={"name": "Alice"}, headers={**NGROK, **bearer(PASSWORD)})
    assert made.status_code == 201, made.get_json()
    alice = bearer(made.get_json()["token"])
    for where in (NGROK, LOCAL):  # a person stays a friend even on the owner's machine
        error = assert_error(client.post("/api/model", json={"model": OTHER}, headers={**where, **alice}), 403, "model")
        assert "logged in with the app's password" in error["error"]
        assert switches(client, {**where, **alice}) == {"api": 403, "options": 403, "same": 200}
    assert switches(client, {**NGROK, **bearer(PASSWORD)}) == {"api": 200, "options": 200, "same": 200}
    assert switches(client, bearer(PASSWORD)) == {"api": 200, "options": 200, "same": 200}


@pytest.mark.parametrize("access", ["password", "people"])
def test_allow_model_switch_still_decides_for_everyone(public_app, access):
    extra = {"OWNER_PASSWORD": OWNER_PASSWORD} if access == "password" else {}
    owner = bearer(OWNER_PASSWORD if access == "password" else PASSWORD)
    closed = public_app(ACCESS=access, ALLOW_MODEL_SWITCH=False, **extra).test_client()
    for headers in ({**NGROK, **owner}, owner):
        error = assert_error(closed.post("/api/model", json={"model": OTHER}, headers=headers), 403, "model")
        assert "ALLOW_MODEL_SWITCH is false" in error["error"]
    opened = public_app(ACCESS=access, ALLOW_MODEL_SWITCH=True, **extra).test_client()
    if access == "password":
        assert switches(opened, {**NGROK, **bearer(PASSWORD)}) == {"api": 200, "options": 200, "same": 200}


def test_a_local_server_still_lets_everyone_switch(make_app):
    client = make_app(ENGINE=None, MODELS=(OTHER,), START_WORKER=False, PASSWORD=PASSWORD).test_client()
    assert client.post("/api/model", json={"model": OTHER}, headers={**NGROK, **bearer(PASSWORD)}).status_code == 200


def test_the_owner_password_is_generated_when_public_and_checked(make_app):
    app = make_app(PUBLIC=True, START_WORKER=False)
    assert app.config["OWNER_PASSWORD"] and app.config["OWNER_PASSWORD"] != app.config["PASSWORD"]
    assert make_app(PUBLIC=True, ACCESS="people", START_WORKER=False).config["OWNER_PASSWORD"] is None
    with pytest.raises(ValueError, match="OWNER_PASSWORD must differ from PASSWORD"):
        make_app(PUBLIC=True, PASSWORD="same", OWNER_PASSWORD="same", START_WORKER=False)
    with pytest.raises(ValueError, match="OWNER_PASSWORD is for ACCESS=password"):
        make_app(ACCESS="people", OWNER_PASSWORD="x", START_WORKER=False)
    with pytest.raises(ValueError, match="OWNER_PASSWORD needs a PASSWORD"):
        make_app(OWNER_PASSWORD="x", START_WORKER=False)


@pytest.mark.slow
def test_serve_public_prints_the_owner_password_and_the_real_server_tells_the_tunnel_from_local(tmp_path):
    """``serve --public`` over real sockets (waitress, TRUST_PROXY 1): what reaches it from
    127.0.0.1 with ngrok's headers is a friend's, without them the owner's machine."""
    env = {"T2I_MODELS": OTHER, "HF_HUB_OFFLINE": "1"}  # the switched-to Hub id fails to load at once; no matter
    with serve_process(tmp_path, "--public", "--password", PASSWORD, **env) as (_, url):
        log = (tmp_path / "serve.log").read_text()
        found = wait_for(lambda: re.search(r"^Owner password \(.*\): (\S+)$", (tmp_path / "serve.log").read_text(),
                                           re.M), 30, "the owner password line")
        owner_password = found.group(1)
        assert owner_password != PASSWORD and f"Password: {PASSWORD}" not in log  # given, so not printed

        def switch(secret: str, headers: dict) -> int:
            return requests.post(url + "/api/model", json={"model": OTHER}, timeout=30,
                                 headers={**headers, **bearer(secret)}).status_code

        assert switch(PASSWORD, NGROK) == 403
        assert switch(PASSWORD, {"X-Forwarded-For": "203.0.113.7"}) == 403
        assert switch(owner_password, NGROK) == 200
        assert switch(PASSWORD, LOCAL) == 200
        assert requests.post(url + "/api/model", json={"model": OTHER}, timeout=30).status_code == 401


# --- the page, in a real browser ------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_a_friend_sees_the_picker_disabled_with_the_reason_and_the_owner_can_switch(serve, browser):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium")
    server = serve(PUBLIC=True, TRUST_PROXY=1, PASSWORD=PASSWORD, OWNER_PASSWORD=OWNER_PASSWORD, ENGINE=None,
                   MODELS=(OTHER,), START_WORKER=False)
    problems: list[str] = []
    for scheme in ("light", "dark"):
        # The friend's browser reaches the app through the tunnel: its requests carry X-Forwarded-For.
        context = browser.new_context(viewport={"width": 1366, "height": 900}, color_scheme=scheme,
                                      extra_http_headers={"X-Forwarded-For": "203.0.113.7"})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        violations, errors = watch_csp(context, page), []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        page.scheme = scheme
        page.goto(server.url + "/login")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_url(server.url + "/")
        for control in ("#sd-model", "#sd-vae", "#sd-refresh"):
            assert page.locator(control).is_disabled(), control
        note = page.locator("#model-switch-note")
        assert note.is_visible() and note.get_attribute("data-state") == "refused"
        text = note.inner_text()
        assert text.startswith("Model switching is off on this public server except for its owner"), text
        assert "owner password" in text
        page.wait_for_timeout(1500)  # the page's own /api/models poll keeps the picker as the server says
        assert page.locator("#sd-model").is_disabled() and note.inner_text() == text
        problems += axe_problems(page, f"model picker for a friend {scheme}")
        context.close()
        assert not errors and not violations, (errors, violations)
    # The owner, on the same link: logged in with the owner password, the picker is open and switches.
    context = browser.new_context(viewport={"width": 1366, "height": 900},
                                  extra_http_headers={"X-Forwarded-For": "203.0.113.8"})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server.url + "/login")
    page.fill("#password", OWNER_PASSWORD)
    page.click("#login")
    page.wait_for_url(server.url + "/")
    model = page.locator("#sd-model")
    assert not model.is_disabled() and page.locator("#model-switch-note").get_attribute("data-state") != "refused"
    model.select_option(OTHER)
    wait_for(lambda: backend_of(server.app).selection().model == OTHER, 30, "the owner's switch")
    context.close()
    assert not problems, "\n".join(problems)

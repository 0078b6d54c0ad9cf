"""Who a client is and what it may see and do: jobs belong to the client that
submitted them (an API credential, not a user name; a browser's session; else an address);
X-Forwarded-For names the client only through a trusted local proxy; wrong
passwords back off while the right one always gets in."""
from __future__ import annotations

import base64

import pytest

from app.web.throttle import FailureThrottle
from helpers import assert_error, backend_of, small_job

PASSWORD = "shared secret"


def basic(user: str, password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SAME_SITE = {"Origin": "http://localhost"}  # as the page's own fetch sends it


class Identity:
    """One client as the server tells them apart: a test client (its cookies) and the headers it sends."""

    def __init__(self, client, headers: dict):
        self.client, self.headers = client, headers

    def get(self, url: str, **kw):
        return self.client.get(url, headers=self.headers, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers=self.headers, **kw)

    def delete(self, url: str, **kw):
        return self.client.delete(url, headers=self.headers, **kw)


def script(app, user: str = "alice") -> Identity:
    """A script with the shared password (webuiapi's set_auth: Basic, any user name)."""
    return Identity(app.test_client(), basic(user))


def browser(app) -> Identity:
    """A browser that logged in with the shared password: its own random id, in its signed cookie."""
    client = app.test_client()
    assert client.post("/login", data={"password": PASSWORD}).status_code == 302
    return Identity(client, SAME_SITE)


@pytest.fixture
def locked(make_app):
    return make_app(PASSWORD=PASSWORD, START_WORKER=False)


@pytest.fixture
def pair(locked):
    """Two clients of one password-protected app: a script (Alice) and a browser (Bob)."""
    return script(locked), browser(locked)


def submit(client, headers=None, **environ) -> dict:
    if isinstance(client, Identity):
        client, headers = client.client, client.headers
    response = client.post("/api/jobs", json=small_job(), headers=headers, environ_base=environ)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job"]


# --- ownership ---------------------------------------------------------------------------

def test_only_the_owner_cancels_a_job(pair):
    alice, bob = pair
    job = submit(alice)
    assert job["mine"] is True
    body = assert_error(bob.post(f"/api/jobs/{job['id']}/cancel"), 403, "id")
    assert "someone else's" in body["error"]
    assert alice.get(f"/api/jobs/{job['id']}").get_json()["job"]["state"] == "queued"
    response = alice.post(f"/api/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.get_json()["job"]["state"] == "cancelled"


def test_only_the_owner_deletes_a_job(pair):
    alice, bob = pair
    job = submit(alice)
    assert alice.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    body = assert_error(bob.delete(f"/api/jobs/{job['id']}"), 403, "id")
    assert "someone else's" in body["error"]
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 200  # still there
    response = alice.delete(f"/api/jobs/{job['id']}")
    assert response.status_code == 200 and response.get_json() == {"ok": True, "deleted": job["id"]}
    assert_error(alice.get(f"/api/jobs/{job['id']}"), 404)


def test_a_user_name_is_not_an_identity(locked):
    """Anyone with the shared password can type any user name: scripts with the password are one
    client whatever name they send (and as a Bearer token), never Alice because they say "alice".
    Per-person identities are ACCESS = "people" (tests/test_people.py)."""
    alice, mallory = script(locked, "alice"), script(locked, "alice")
    job = submit(alice)
    for other in (script(locked, "bob"), Identity(locked.test_client(), {"Authorization": f"Bearer {PASSWORD}"})):
        assert other.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is True
    assert mallory.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is True
    someone = browser(locked)  # a browser is told apart by its signed cookie, which no user name forges
    assert someone.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is False
    assert script(locked, "bob").get("/api/jobs").get_json()["jobs"][0]["id"] == job["id"]


def test_browsers_are_told_apart_by_their_login(locked):
    first, second = browser(locked), browser(locked)  # two browsers on one machine (one address)
    job = submit(first)
    assert_error(second.post(f"/api/jobs/{job['id']}/cancel"), 403)
    assert first.post(f"/api/jobs/{job['id']}/cancel").status_code == 200


def test_without_a_password_each_browser_still_owns_its_jobs(make_app):
    app = make_app(START_WORKER=False)
    first, second = app.test_client(), app.test_client()
    for each in (first, second):
        assert each.get("/", headers={"Accept": "text/html"}).status_code == 200  # the page gives an id
    job = submit(first, {})
    assert second.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is False
    assert_error(second.post(f"/api/jobs/{job['id']}/cancel"), 403)


def test_the_list_is_mine_and_the_whole_queue_is_anonymous(pair):
    alice, bob = pair
    alices, bobs = submit(alice), submit(bob)
    listed = bob.get("/api/jobs").get_json()["jobs"]
    assert [(j["id"], j["mine"]) for j in listed] == [(bobs["id"], True)]
    assert listed[0]["params"]["prompt"] == small_job()["prompt"]
    everyone = bob.get("/api/jobs?all=1").get_json()["jobs"]
    assert [(j["id"], j["mine"], j["position"]) for j in everyone] == [(bobs["id"], True, 2),
                                                                        (alices["id"], False, 1)]
    other = everyone[1]
    assert other["params"] is None and other["images"] == [] and other["preview_url"] is None
    assert "client" not in other and "owner" not in other
    assert bob.get(f"/api/jobs/{alices['id']}").get_json()["job"]["params"] is None
    assert_error(bob.get(f"/api/jobs/{alices['id']}/preview.png"), 404)


def test_interrupt_stops_only_the_callers_job(pair):
    alice, bob = pair
    alices, bobs = submit(alice), submit(bob)
    assert bob.post("/sdapi/v1/interrupt").get_json() == {"interrupted": bobs["id"]}
    assert bob.post("/sdapi/v1/interrupt").get_json() == {"interrupted": None}
    assert alice.get(f"/api/jobs/{alices['id']}").get_json()["job"]["state"] == "queued"


def test_the_queue_limit_counts_per_identity(make_app):
    app = make_app(PASSWORD=PASSWORD, MAX_QUEUED_PER_CLIENT=1, START_WORKER=False)
    submit(script(app, "alice"))
    assert_error(script(app, "bob").post("/api/jobs", json=small_job()), 429)  # another name: the same client
    submit(browser(app))  # same address, another identity


@pytest.fixture
def finished(make_app):
    """An app with GALLERY as given, one finished job of Alice's (a script), and Bob (a browser)."""
    def make(gallery: str):
        app = make_app(PASSWORD=PASSWORD, START_WORKER=False, GALLERY=gallery)
        alice, bob = script(app), browser(app)
        job = submit(alice)
        assert backend_of(app).worker.run_once()
        return alice, bob, alice.get(f"/api/jobs/{job['id']}").get_json()["job"]

    return make


def test_shared_gallery_shows_everyones_finished_images(finished):
    alice, bob, job = finished("shared")
    url = job["images"][0]["url"]
    seen = bob.get(f"/api/jobs/{job['id']}").get_json()["job"]
    assert seen["mine"] is False and seen["images"][0]["url"] == url and seen["params"]["prompt"]
    assert bob.get(url).status_code == 200
    assert url.encode() in bob.get("/gallery").data


def test_private_gallery_shows_each_client_only_its_own(finished):
    alice, bob, job = finished("private")
    url = job["images"][0]["url"]
    assert alice.get(url).status_code == 200
    assert url.encode() in alice.get("/gallery").data
    body = assert_error(bob.get(url), 404)  # 404, not 403: not even its existence shows
    assert body["error"] == "no such image"
    assert url.encode() not in bob.get("/gallery").data
    seen = bob.get(f"/api/jobs/{job['id']}").get_json()["job"]
    assert seen["images"] == [] and seen["params"] is None
    assert bob.get("/api/jobs").get_json()["jobs"] == []


def test_a_restart_keeps_each_browser_logged_in_and_owning_its_jobs(make_app, tmp_path):
    """No SECRET_KEY set: the generated one is kept in the instance folder (on Drive in Colab),
    so after a restart a browser's cookie still logs it in and its jobs are still its own."""
    instance = tmp_path / "kept"
    settings = dict(INSTANCE=str(instance), PASSWORD=PASSWORD, START_WORKER=False, GALLERY="private")
    first = make_app(**settings)
    browser = first.test_client()
    assert browser.post("/login", data={"password": PASSWORD}).status_code == 302
    same_site = {"Origin": "http://localhost"}
    job = submit(browser, same_site)
    assert backend_of(first).worker.run_once()
    url = browser.get(f"/api/jobs/{job['id']}").get_json()["job"]["images"][0]["url"]
    cookie = browser.get_cookie("session").value

    after = make_app(**settings).test_client()  # the restart, on the same instance folder
    after.set_cookie("session", cookie)
    assert after.get("/api/jobs").status_code == 200  # still logged in, not 401
    assert after.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is True
    assert after.get(url).status_code == 200  # its private image, not 404
    assert after.delete(f"/api/jobs/{job['id']}", headers=same_site).status_code == 200  # not 403
    key_file = instance / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600  # the key signs every login: only its owner reads it

    key_file.unlink()  # the documented way to log everyone out
    fresh = make_app(**settings).test_client()
    fresh.set_cookie("session", cookie)
    assert_error(fresh.get("/api/jobs"), 401)


def test_gallery_setting_is_checked(make_app):
    with pytest.raises(ValueError, match="GALLERY"):
        make_app(GALLERY="public")


# --- X-Forwarded-For ----------------------------------------------------------------------

def test_forwarded_for_counts_only_through_a_local_proxy(make_app):
    client = make_app(TRUST_PROXY=1, MAX_QUEUED_PER_CLIENT=1, START_WORKER=False).test_client()
    direct = "192.0.2.10"  # reached the port itself: its forged headers are ignored
    submit(client, {"X-Forwarded-For": "203.0.113.1"}, REMOTE_ADDR=direct)
    body = assert_error(client.post("/api/jobs", json=small_job(), headers={"X-Forwarded-For": "203.0.113.2"},
                                    environ_base={"REMOTE_ADDR": direct}), 429)
    assert "limit is 1" in body["error"]
    # Through the tunnel (which connects from loopback) each visitor is itself.
    for visitor in ("203.0.113.1", "203.0.113.2"):
        submit(client, {"X-Forwarded-For": visitor}, REMOTE_ADDR="127.0.0.1")
    # Only the configured hops count: the last address the tunnel saw, not one the visitor prepended.
    assert_error(client.post("/api/jobs", json=small_job(), headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.1"},
                             environ_base={"REMOTE_ADDR": "::1"}), 429)


def test_proxy_addresses_names_where_the_proxy_connects_from(make_app):
    # Docker: a proxy on the host reaches the container from the bridge's gateway.
    client = make_app(TRUST_PROXY=1, PROXY_ADDRESSES=("172.16.0.0/12",), MAX_QUEUED_PER_CLIENT=1,
                      START_WORKER=False).test_client()
    for visitor in ("203.0.113.1", "203.0.113.2"):
        submit(client, {"X-Forwarded-For": visitor}, REMOTE_ADDR="172.18.0.1")
    # From loopback, no longer listed, the header is ignored: all such clients are one.
    submit(client, {"X-Forwarded-For": "203.0.113.3"})
    assert_error(client.post("/api/jobs", json=small_job(), headers={"X-Forwarded-For": "203.0.113.4"}), 429)


def test_without_trust_proxy_forwarded_for_is_ignored(make_app):
    client = make_app(MAX_QUEUED_PER_CLIENT=1, START_WORKER=False).test_client()
    submit(client, {"X-Forwarded-For": "203.0.113.1"})
    assert_error(client.post("/api/jobs", json=small_job(), headers={"X-Forwarded-For": "203.0.113.2"}), 429)


def test_a_forged_forwarded_for_does_not_escape_the_password_throttle(make_app):
    client = make_app(PASSWORD=PASSWORD, TRUST_PROXY=1, START_WORKER=False).test_client()
    far = {"REMOTE_ADDR": "192.0.2.7"}
    for n in range(5):
        response = client.get("/api/jobs", headers={"Authorization": "Bearer x", "X-Forwarded-For": f"10.0.0.{n}"},
                              environ_base=far)
        assert response.status_code == 401
    assert_error(client.get("/api/jobs", headers={"Authorization": "Bearer x", "X-Forwarded-For": "10.0.0.99"},
                            environ_base=far), 429)


# --- password guessing --------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_per_client_and_forgets():
    clock = Clock()
    throttle = FailureThrottle(free=3, global_free=1000, base=1.0, cap=8.0, window=60.0, clock=clock)
    waits = []
    for _ in range(7):
        throttle.failed("a")
        waits.append(throttle.retry_after("a"))
    assert waits == [0, 0, 1, 2, 4, 8, 8]  # capped
    assert throttle.retry_after("b") == 0  # others are not slowed
    clock.now += 8
    assert throttle.retry_after("a") == 0
    clock.now += 60
    throttle.failed("b")  # the table drops clients whose window is over
    assert len(throttle) == 1
    throttle.succeeded("b")
    assert len(throttle) == 0


def test_the_table_of_guessers_stays_bounded_and_keeps_the_latest():
    clock = Clock()
    throttle = FailureThrottle(free=3, global_free=10**9, window=60.0, clock=clock)
    throttle.MAX_CLIENTS = 100
    for i in range(1000):  # many addresses, all within the window: only the newest 100 are kept
        throttle.failed(f"addr{i}")
    assert len(throttle) == 100
    for _ in range(3):
        throttle.failed("addr999")
    assert throttle.retry_after("addr999") > 0 and throttle.retry_after("addr0") == 0


def test_many_addresses_trip_the_global_backoff():
    clock = Clock()
    throttle = FailureThrottle(free=5, global_free=4, base=2.0, cap=60.0, window=60.0, clock=clock)
    for n in range(5):
        throttle.failed(f"10.0.0.{n}")
    assert throttle.retry_after("192.0.2.1") == 4  # a newcomer's wrong guess waits too
    clock.now += 61
    assert throttle.retry_after("192.0.2.1") == 0


def test_the_right_password_gets_in_during_a_global_throttle(locked):
    client = locked.test_client()
    for n in range(60):  # a crowd of guessers
        client.get("/api/jobs", headers={"Authorization": f"Bearer guess{n}"},
                   environ_base={"REMOTE_ADDR": f"198.51.100.{n}"})
    newcomer = {"REMOTE_ADDR": "192.0.2.200"}
    response = client.get("/api/jobs", headers={"Authorization": "Bearer typo"}, environ_base=newcomer)
    assert_error(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {PASSWORD}"},
                      environ_base=newcomer).status_code == 200
    page = client.post("/login", data={"password": PASSWORD}, environ_base=newcomer)
    assert page.status_code == 302

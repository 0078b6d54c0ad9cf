"""ACCESS = "people": the owner (who has the password) gives each friend a personal link or token
with a daily image quota; revoking it ends it and every session made with it at once; jobs and the
private gallery belong to the person; /admin and /api/people are the owner's."""
from __future__ import annotations

import base64
import json
import stat
from urllib.parse import parse_qs, urlsplit

import pytest

from app.cli import main as cli_main
from helpers import assert_error, backend_of, small_job

PASSWORD = "owner secret"
OWNER = {"Authorization": f"Bearer {PASSWORD}"}
SAME_SITE = {"Origin": "http://localhost"}  # as the page's own forms and fetches send it


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def people_app(make_app):
    def make(**config):
        return make_app(**{"ACCESS": "people", "PASSWORD": PASSWORD, "START_WORKER": False, **config})
    return make


def add(client, name: str, quota: int | None = None) -> tuple[dict, str]:
    body = {"name": name} if quota is None else {"name": name, "quota": quota}
    response = client.post("/api/people", json=body, headers=OWNER)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert parse_qs(urlsplit(data["link"]).query)["token"] == [data["token"]]
    return data["person"], data["token"]


def submit(client, headers=None, **fields) -> dict:
    response = client.post("/api/jobs", json=small_job(**fields), headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job"]


# --- logging in ------------------------------------------------------------------------

def test_a_personal_link_logs_in_and_leaves_no_token_in_the_url(people_app):
    app = people_app()
    owner = app.test_client()
    alice, token = add(owner, "Alice")
    browser = app.test_client()
    assert browser.get("/api/jobs").status_code == 401  # not yet
    assert b"open the personal link you" in browser.get("/login").data  # what a friend without one reads
    response = browser.get(f"/login?token={token}&next=/gallery")
    assert response.status_code == 303
    assert response.headers["Location"] == "/gallery" and token not in response.headers["Location"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert browser.get("/api/jobs").status_code == 200
    job = submit(browser, SAME_SITE)
    assert job["mine"] is True
    # The job is Alice's: her token as an API client sees it as hers too.
    assert browser.get(f"/api/jobs/{job['id']}", headers=bearer(token)).get_json()["job"]["mine"] is True
    assert owner.get(f"/api/jobs/{job['id']}", headers=OWNER).get_json()["job"]["mine"] is False

    wrong = app.test_client().get(f"/login?token={token[:-2]}")
    assert wrong.status_code == 401 and b"not valid" in wrong.data
    assert wrong.headers["Referrer-Policy"] == "no-referrer"


def test_the_token_works_as_bearer_and_basic_on_both_apis(people_app):
    app = people_app(START_WORKER=True)
    client = app.test_client()
    alice, token = add(client, "Alice")
    for headers in (bearer(token), basic("anything", token)):
        assert client.get("/api/jobs", headers=headers).status_code == 200
        assert client.get("/sdapi/v1/samplers", headers=headers).status_code == 200
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 2, "width": 64, "height": 64},
                           headers=basic("webuiapi", token))
    assert response.status_code == 200, response.get_json()
    mine = client.get("/api/jobs", headers=bearer(token)).get_json()["jobs"]
    assert len(mine) == 1 and mine[0]["state"] == "done"
    assert client.get("/api/jobs", headers=OWNER).get_json()["jobs"] == []  # the owner's own list: not hers
    assert_error(client.get("/api/jobs", headers=bearer("not-a-token")), 401)


def test_revoking_ends_the_token_and_the_sessions_at_once(people_app):
    app = people_app()
    owner = app.test_client()
    alice, token = add(owner, "Alice")
    browser = app.test_client()
    browser.get(f"/login?token={token}")
    queued = submit(browser, SAME_SITE)
    assert browser.get("/api/jobs").status_code == 200
    response = owner.delete(f"/api/people/{alice['id']}", headers=OWNER)
    assert response.status_code == 200
    body = response.get_json()
    assert body["person"]["active"] is False and body["cancelled"] == [queued["id"]]
    assert_error(browser.get("/api/jobs"), 401)  # the existing session, at its next request
    assert browser.get("/", headers={"Accept": "text/html"}).status_code == 302  # the page: to /login
    assert_error(browser.get("/api/jobs", headers=bearer(token)), 401)
    assert_error(browser.get("/sdapi/v1/samplers", headers=bearer(token)), 401)
    assert app.test_client().get(f"/login?token={token}").status_code == 401
    assert owner.get(f"/api/jobs/{queued['id']}", headers=OWNER).get_json()["job"]["state"] == "cancelled"


def test_the_daily_quota_is_refused_on_both_apis(people_app):
    app = people_app()
    client = app.test_client()
    alice, token = add(client, "Alice", quota=3)
    submit(client, bearer(token), num_images=2)
    response = client.post("/api/jobs", json=small_job(num_images=2), headers=bearer(token))
    body = assert_error(response, 429, "quota")
    assert "2 of 3" in body["error"]
    assert 0 < int(response.headers["Retry-After"]) <= 86400
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "batch_size": 2, "steps": 2},
                           headers=bearer(token))
    assert_error(response, 429, "quota")
    submit(client, bearer(token), num_images=1)  # the last one fits
    assert_error(client.post("/api/jobs", json=small_job(), headers=bearer(token)), 429, "quota")
    listed = client.get("/api/people", headers=OWNER).get_json()["people"]
    assert [(p["name"], p["used_today"], p["quota"]) for p in listed] == [("Alice", 3, 3)]
    submit(client, OWNER, num_images=4)  # the owner has no quota
    assert client.patch(f"/api/people/{alice['id']}", json={"quota": 5}, headers=OWNER).status_code == 200
    submit(client, bearer(token), num_images=2)


def test_a_full_queue_gives_the_quota_back(people_app):
    client = people_app(MAX_QUEUED_PER_CLIENT=1).test_client()
    alice, token = add(client, "Alice", quota=10)
    submit(client, bearer(token), num_images=4)
    assert_error(client.post("/api/jobs", json=small_job(num_images=4), headers=bearer(token)), 429, None)
    assert client.get("/api/people", headers=OWNER).get_json()["people"][0]["used_today"] == 4


def test_the_private_gallery_is_each_persons_and_the_owner_sees_all(people_app):
    app = people_app(GALLERY="private")
    client = app.test_client()
    (_, alice_token), (_, bob_token) = add(client, "Alice"), add(client, "Bob")
    job = submit(client, bearer(alice_token))
    assert backend_of(app).worker.run_once()
    url = client.get(f"/api/jobs/{job['id']}", headers=bearer(alice_token)).get_json()["job"]["images"][0]["url"]
    assert client.get(url, headers=bearer(alice_token)).status_code == 200
    assert_error(client.get(url, headers=bearer(bob_token)), 404)
    assert url.encode() not in client.get("/gallery", headers=bearer(bob_token)).data
    assert client.get(f"/api/jobs/{job['id']}", headers=bearer(bob_token)).get_json()["job"]["images"] == []
    assert client.get(url, headers=OWNER).status_code == 200
    assert url.encode() in client.get("/gallery", headers=OWNER).data


# --- managing people -------------------------------------------------------------------

def test_admin_is_the_owners_only(people_app, make_app):
    app = people_app()
    owner = app.test_client()
    alice, token = add(owner, "Alice")
    assert owner.get("/admin", headers=OWNER).status_code == 200
    friend = {"Authorization": f"Bearer {token}", "Accept": "text/html"}
    assert owner.get("/admin", headers=friend).status_code == 403
    assert_error(owner.get("/api/people", headers=bearer(token)), 403)
    assert_error(owner.post("/api/people", json={"name": "Mallory"}, headers=bearer(token)), 403)
    assert_error(owner.delete(f"/api/people/{alice['id']}", headers=bearer(token)), 403)
    shared = make_app(PASSWORD=PASSWORD, START_WORKER=False).test_client()  # password mode: no people
    assert shared.get("/admin", headers={**OWNER, "Accept": "text/html"}).status_code == 404
    assert_error(shared.get("/api/people", headers=OWNER), 404)


def test_people_routes_refuse_other_sites(people_app):
    app = people_app()
    owner = app.test_client()
    assert owner.post("/login", data={"password": PASSWORD}).status_code == 302
    evil = {"Origin": "https://evil.example"}
    assert_error(owner.post("/api/people", json={"name": "Mallory"}, headers=evil), 403, "Origin")
    assert owner.post("/admin", data={"name": "Mallory"}, headers=evil).status_code == 403
    assert owner.post("/admin", data={"name": "Mallory"}).status_code == 403  # a session cookie, no Origin
    assert owner.get("/api/people").get_json()["people"] == []
    alice, _ = add(owner, "Alice")
    assert owner.post(f"/admin/{alice['id']}/revoke", headers=evil).status_code == 403
    assert owner.patch(f"/api/people/{alice['id']}", json={"quota": 1}, headers=evil).status_code == 403
    assert owner.get("/api/people").get_json()["people"][0]["active"] is True


def test_the_admin_page_creates_and_revokes_and_escapes_names(people_app):
    app = people_app()
    owner = app.test_client()
    assert owner.post("/login", data={"password": PASSWORD}).status_code == 302
    name = '<script>alert("x")</script>'
    response = owner.post("/admin", data={"name": name, "quota": "7"}, headers=SAME_SITE)
    assert response.status_code == 201
    page = response.get_data(as_text=True)
    assert "<script>alert" not in page and "&lt;script&gt;alert(" in page
    link = page.split('id="new-link-url" value="')[1].split('"')[0].replace("&amp;", "&")
    token = parse_qs(urlsplit(link).query)["token"][0]
    assert token not in owner.get("/admin").get_data(as_text=True)  # shown once
    person = owner.get("/api/people").get_json()["people"][0]
    assert (person["name"], person["quota"]) == (name, 7)
    assert owner.post(f"/admin/{person['id']}/quota", data={"quota": "9"}, headers=SAME_SITE).status_code == 303
    assert owner.post(f"/admin/{person['id']}/revoke", headers=SAME_SITE).status_code == 303
    assert owner.get("/api/people").get_json()["people"][0]["quota"] == 9
    assert_error(app.test_client().get("/api/jobs", headers=bearer(token)), 401)
    assert owner.post("/admin", data={"name": "", "quota": "7"}, headers=SAME_SITE).status_code == 400


@pytest.mark.parametrize("body, field", [({"name": ""}, "name"), ({"name": "x" * 65}, "name"),
                                         ({"name": "a\nb"}, "name"), ({"name": "A", "quota": -1}, "quota"),
                                         ({"name": "A", "quota": "lots"}, "quota"), ({"name": "A", "quota": 10**9}, "quota"),
                                         ({"name": "A", "role": "owner"}, "role")])
def test_bad_people_input_is_named(people_app, body, field):
    client = people_app().test_client()
    assert_error(client.post("/api/people", json=body, headers=OWNER), 400, field)
    assert_error(client.patch("/api/people/nobody", json={"quota": 1}, headers=OWNER), 404, "id")


def test_people_file_is_private_and_holds_no_token(people_app):
    app = people_app()
    _, token = add(app.test_client(), "Alice")
    path = app.instance_path + "/people.json"
    assert stat.S_IMODE(__import__("os").stat(path).st_mode) == 0o600
    text = open(path).read()
    assert token not in text and json.loads(text)["people"][0]["name"] == "Alice"


def test_a_restart_keeps_peoples_sessions(people_app, tmp_path):
    settings = {"INSTANCE": str(tmp_path / "kept")}
    first = people_app(**settings)
    _, token = add(first.test_client(), "Alice")
    browser = first.test_client()
    browser.get(f"/login?token={token}")
    job = submit(browser, SAME_SITE)
    cookie = browser.get_cookie("session").value
    after = people_app(**settings).test_client()
    after.set_cookie("session", cookie)
    assert after.get(f"/api/jobs/{job['id']}").get_json()["job"]["mine"] is True


def test_the_cli_adds_lists_and_revokes(people_app, tmp_path, capsys):
    instance = str(tmp_path / "cli")
    assert cli_main(["people", "--instance", instance, "--url", "https://x.example", "add", "Carol",
                     "--quota", "3"]) == 0
    out = capsys.readouterr().out
    token = out.split("/login?token=")[1].split()[0]
    app = people_app(INSTANCE=instance)  # the server reads the file the CLI wrote
    client = app.test_client()
    assert client.get("/api/jobs", headers=bearer(token)).status_code == 200
    assert cli_main(["people", "--instance", instance, "list"]) == 0
    line = capsys.readouterr().out.strip()
    person_id = line.split()[0]
    assert "Carol" in line and "0/3 images today" in line and "active" in line
    assert cli_main(["people", "--instance", instance, "quota", person_id, "5"]) == 0
    assert cli_main(["people", "--instance", instance, "revoke", person_id]) == 0
    assert_error(client.get("/api/jobs", headers=bearer(token)), 401)  # the running app, at once
    assert cli_main(["people", "--instance", instance, "revoke", "nobody"]) == 2
    assert "5 images today" not in capsys.readouterr().out


def test_access_setting_is_checked(make_app):
    with pytest.raises(ValueError, match="ACCESS"):
        make_app(ACCESS="everyone")
    generated = make_app(ACCESS="people", START_WORKER=False)  # the owner's password, generated
    assert generated.config["PASSWORD"]


def test_the_notebooks_people_cell_shows_a_link_once_in_a_field(people_app, make_app):
    from app.notebook.session import person_block

    app = people_app()
    block = person_block(app, "Dana", 12, "https://abc.ngrok-free.app/")
    note, field = block.children
    assert "Dana" in note.value and "12 images a day" in note.value
    assert field.value.startswith("https://abc.ngrok-free.app/login?token=")
    token = field.value.split("token=")[1]
    assert app.test_client().get("/api/jobs", headers=bearer(token)).status_code == 200
    assert "name:" in person_block(app, "", 12, "https://x").value  # named, not raised
    shared = make_app(PASSWORD=PASSWORD, START_WORKER=False)
    assert 'ACCESS = "people"' in person_block(shared, "Dana", 12, "https://x").value


def test_a_broken_people_file_fails_closed_without_500(people_app):
    app = people_app()
    client = app.test_client()
    _, token = add(client, "Alice")
    path = app.instance_path + "/people.json"
    with open(path, "w") as f:
        f.write('{"people": [{"id": ')  # a hand edit gone wrong
    assert_error(client.get("/api/jobs", headers=bearer(token)), 401)  # no personal link works
    assert client.get("/api/jobs", headers=OWNER).status_code == 200  # the owner's password does
    assert_error(client.post("/api/people", json={"name": "Bob"}, headers=OWNER), 503, "people")
    assert open(path).read() == '{"people": [{"id": '  # left for the owner to fix, not overwritten

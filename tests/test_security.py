"""Auth, limits and hostile input: each bad request gets a 4xx in the one
error shape, and the worker keeps serving afterwards."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
import requests
from PIL import Image

from app.web.server import ServerHandle
from helpers import assert_error, backend_of, gradient, png_b64, small_job, wait_job


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A few hundred bytes whose header claims a huge canvas (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 4, 9)  # a few rows; the rest "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- limits and hostile input -----------------------------------------------------------

BAD_JOBS = [
    (small_job(width=2048), 400, "width"),
    (small_job(width=100), 400, "width"),            # not a multiple of 8
    (small_job(height="64"), 400, "height"),          # wrong type
    (small_job(steps=101), 400, "steps"),
    (small_job(steps=True), 400, "steps"),
    (small_job(num_images=5), 400, "num_images"),
    (small_job(guidance_scale="7"), 400, "guidance_scale"),
    (small_job(seed="abc"), 400, "seed"),
    (small_job(seed=2**40), 400, "seed"),
    (small_job(scheduler="nope"), 400, "scheduler"),
    (small_job(strength=-1), 400, "strength"),
    (small_job(prompt=""), 400, "prompt"),
    (small_job(prompt=["a", "list"]), 400, "prompt"),
    (small_job(prompt="x" * 1001), 400, "prompt"),
    (small_job(negative_prompt="x" * 1001), 400, "negative_prompt"),
    (small_job(unknown_field=1), 400, "unknown_field"),
    ({"negative_prompt": "no prompt"}, 400, "prompt"),
    (small_job(init_image="%%% not base64 %%%"), 400, "init_image"),
    (small_job(init_image=b64(b"plain text, not an image")), 400, "init_image"),
    (small_job(init_image=12), 400, "init_image"),
    (small_job(init_image=b64(bomb_png())), 413, "init_image"),  # beyond PIL's own bomb limit
    (small_job(init_image=b64(bomb_png(5000, 5000))), 413, "init_image"),  # beyond ours, checked from the header
    (small_job(init_image=b64(bomb_png())[:-10] + "!!!!!!!!!!"), 400, "init_image"),
]


@pytest.mark.parametrize("body,status,field", BAD_JOBS)
def test_bad_job_is_refused_with_the_error_shape(client, body, status, field):
    assert_error(client.post("/api/jobs", json=body), status, field)
    assert client.get("/api/health").get_json()["queue"] == {"queued": 0, "running": 0}


def test_worker_keeps_serving_after_bad_input(client):
    for body, _status, _field in BAD_JOBS:
        assert client.post("/api/jobs", json=body).status_code >= 400
    for raw in (b"{not json", b"[1, 2]", b"null"):
        assert_error(client.post("/api/jobs", data=raw, content_type="application/json"), 400)
        assert_error(client.post("/sdapi/v1/txt2img", data=raw, content_type="application/json"), 400)
    assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64(bomb_png())]}), 413)
    assert_error(client.post("/sdapi/v1/png-info", json={"image": b64(bomb_png())}), 413, "image")
    assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 100_000}), 400, "prompt")
    job = client.post("/api/jobs", json=small_job()).get_json()["job"]
    assert wait_job(client, job["id"])["state"] == "done"


def test_truncated_image_is_refused(client):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 100).convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 4000
    assert_error(client.post("/api/jobs", json=small_job(init_image=b64(data[:2000]))), 400, "init_image")


def test_upload_byte_and_pixel_limits(make_app):
    client = make_app(MAX_UPLOAD_BYTES=30_000, MAX_UPLOAD_PIXELS=100 * 100, START_WORKER=False).test_client()
    noisy = Image.frombytes("RGB", (120, 120), bytes(range(256)) * 168 + bytes(192))
    body = assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(noisy))), 413, "init_image")
    assert "pixels" in body["error"] or "bytes" in body["error"]
    big = Image.effect_noise((160, 160), 100).convert("RGB")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(big))), 413, "init_image")
    # A body over the request size cap (MAX_CONTENT_LENGTH) is refused before parsing.
    assert_error(client.post("/api/jobs", data=b"x" * 200_000, content_type="application/json"), 413)
    # A small image inside the limits is fine.
    assert client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)))).status_code == 202


def test_large_init_image_is_shrunk_to_the_size_limits(make_app):
    client = make_app(MAX_WIDTH=128, MAX_HEIGHT=128, START_WORKER=False).test_client()
    body = small_job(init_image=png_b64(gradient(400, 200)))
    del body["width"], body["height"]
    job = client.post("/api/jobs", json=body).get_json()["job"]
    assert (job["params"]["width"], job["params"]["height"]) == (128, 64)


def test_queue_limits_per_client_and_in_all(make_app):
    client = make_app(MAX_QUEUED_PER_CLIENT=2, START_WORKER=False).test_client()
    for _ in range(2):
        assert client.post("/api/jobs", json=small_job()).status_code == 202
    body = assert_error(client.post("/api/jobs", json=small_job()), 429)
    assert "limit is 2" in body["error"]
    # Another client (address) still gets in.
    other = {"REMOTE_ADDR": "10.0.0.2"}
    assert client.post("/api/jobs", json=small_job(), environ_base=other).status_code == 202

    full = make_app(MAX_QUEUE=1, START_WORKER=False).test_client()
    assert full.post("/api/jobs", json=small_job()).status_code == 202
    assert_error(full.post("/api/jobs", json=small_job(), environ_base=other), 503)


def test_cancelled_jobs_free_the_client_quota(make_app):
    client = make_app(MAX_QUEUED_PER_CLIENT=1, START_WORKER=False).test_client()
    job = client.post("/api/jobs", json=small_job()).get_json()["job"]
    assert_error(client.post("/api/jobs", json=small_job()), 429)
    client.post(f"/api/jobs/{job['id']}/cancel")
    assert client.post("/api/jobs", json=small_job()).status_code == 202


@pytest.mark.parametrize("path", [
    "/images/../../etc/passwd",
    "/images/..%2f..%2fjobs.sqlite",
    "/images/%2e%2e/jobs.sqlite",
    "/images/" + "a" * 32 + "/..%2f..%2fjobs.sqlite",
    "/images/" + "a" * 32 + "/0.png.tmp",
    "/images/" + "a" * 32 + "/0.png",
    "/images/" + "A" * 32 + "/0.png",
    "/images/jobs.sqlite/0.png",
    "/images/%00/0.png",
])
def test_no_path_traversal_in_image_urls(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"SQLite" not in response.data and b"root:" not in response.data
    assert_error(response, 404)


def test_stored_image_is_served_only_by_its_exact_url(client):
    done = wait_job(client, client.post("/api/jobs", json=small_job()).get_json()["job"]["id"])
    url = done["images"][0]["url"]
    assert client.get(url).status_code == 200
    assert client.get(url.replace("/0.png", "/1.png")).status_code == 404
    assert client.get(url.replace("/0.png", "/./0.png")).status_code in (404, 308)


def test_user_text_comes_back_as_json_not_html(client):
    job = client.post("/api/jobs", json=small_job(prompt="<script>alert(1)</script>")).get_json()["job"]
    response = client.get(f"/api/jobs/{job['id']}")
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.get_json()["job"]["params"]["prompt"] == "<script>alert(1)</script>"


# --- auth -------------------------------------------------------------------------------

def test_no_auth_by_default_on_localhost(client):
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/health").get_json()["auth_required"] is False


@pytest.fixture
def locked(make_app):
    return make_app(PASSWORD="s3cret pass", START_WORKER=False)


@pytest.mark.parametrize("path,method", [
    ("/api/jobs", "get"), ("/api/jobs", "post"), ("/api/schedulers", "get"), ("/api/models", "get"),
    ("/sdapi/v1/txt2img", "post"), ("/sdapi/v1/sd-models", "get"), ("/sdapi/v1/progress", "get"),
    ("/images/" + "a" * 32 + "/0.png", "get"),
])
def test_api_needs_the_password(locked, path, method):
    client = locked.test_client()
    body = assert_error(getattr(client, method)(path, json=small_job()), 401)
    assert "Authorization" in body["error"]
    assert_error(getattr(client, method)(path, json=small_job(), headers={"Authorization": "Bearer wrong"}), 401)


def test_bearer_and_basic_auth(locked):
    client = locked.test_client()
    assert client.get("/api/jobs", headers={"Authorization": "Bearer s3cret pass"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret pass").decode()
    assert client.get("/api/jobs", headers={"Authorization": "Basic " + basic}).status_code == 200
    assert_error(client.get("/api/jobs", headers={"Authorization": "Basic !!notbase64"}), 401)
    health = client.get("/api/health").get_json()  # open, for the UI's "loading model" state
    assert health["ok"] and health["auth_required"] is True


def test_login_form_sets_a_session(locked):
    client = locked.test_client()
    page = client.get("/login?next=/gallery")
    assert page.status_code == 200 and b'name="password"' in page.data
    assert client.post("/login", data={"password": "nope", "next": "/gallery"}).status_code == 401
    response = client.post("/login", data={"password": "s3cret pass", "next": "/gallery"})
    assert response.status_code == 302 and response.headers["Location"].endswith("/gallery")
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/logout").status_code == 405  # a link or <img> elsewhere must not log anyone out
    assert client.get("/api/jobs").status_code == 200
    client.post("/logout", headers={"Origin": "http://localhost"})
    assert client.get("/api/jobs").status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)",
                                    "/\r\nSet-Cookie: x=1"])
def test_login_never_redirects_off_site(locked, target):
    client = locked.test_client()
    response = client.post("/login", data={"password": "s3cret pass", "next": target})
    assert response.headers["Location"] in ("/", "http://localhost/")


def test_login_page_escapes_next(locked):
    page = locked.test_client().get('/login?next=/"><script>alert(1)</script>')
    assert b"<script>alert(1)" not in page.data and b"&lt;script&gt;" in page.data


def test_html_pages_redirect_to_login(locked):
    if "views.index" not in locked.view_functions:
        pytest.skip("no HTML views in this build")
    response = locked.test_client().get("/", headers={"Accept": "text/html"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_wrong_passwords_are_throttled_but_the_right_one_gets_in(locked):
    client = locked.test_client()
    for _ in range(5):  # a few typos are free
        assert client.post("/login", data={"password": "guess"}).status_code == 401
    response = client.post("/login", data={"password": "guess"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    body = assert_error(client.get("/api/jobs", headers={"Authorization": "Bearer guess"}), 429)
    assert "wait" in body["error"] and client.get("/api/jobs").status_code == 401  # no guess: not throttled
    # The right password is never locked out, by form or by header.
    assert client.get("/api/jobs", headers={"Authorization": "Bearer s3cret pass"}).status_code == 200
    assert client.post("/login", data={"password": "s3cret pass"}).status_code == 302


def test_public_without_password_generates_one(make_app):
    app = make_app(PUBLIC=True, START_WORKER=False)
    password = app.config["PASSWORD"]
    assert password and len(password) >= 12
    client = app.test_client()
    assert_error(client.get("/api/jobs"), 401)
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {password}"}).status_code == 200


def test_webuiapi_with_auth_against_a_real_server(make_app):
    webuiapi = pytest.importorskip("webuiapi")
    app = make_app(PASSWORD="pw")
    with ServerHandle(app, port=0) as server:
        assert requests.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="me", password="pw")
        result = api.txt2img(prompt="locked", seed=1, steps=2, width=64, height=64)
        assert result.image.size == (64, 64)


def test_health_is_no_password_oracle(make_app, tmp_path):
    """/api/health is open and shows model_error only to a client with the
    password: wrong passwords there count like anywhere else."""
    app = make_app(PASSWORD="pw", ENGINE=None, MODEL=str(tmp_path / "no-such-model"), START_WORKER=False)
    backend_of(app).worker.ensure_engine()  # the load fails: there is a model_error to hide
    attacker = app.test_client()
    far = {"REMOTE_ADDR": "203.0.113.9"}
    for n in range(5):
        health = attacker.get("/api/health", headers={"Authorization": f"Bearer guess{n}"}, environ_base=far)
        assert health.status_code == 200 and health.get_json()["model_error"] is None
    assert_error(attacker.get("/api/health", headers={"Authorization": "Bearer guess"}, environ_base=far), 429)
    # Another client is not throttled, and with the password sees the error.
    mine = app.test_client().get("/api/health", headers={"Authorization": "Bearer pw"}).get_json()
    assert "no such file or folder" in mine["model_error"]
    assert app.test_client().get("/api/health").get_json()["model_error"] is None


def test_images_are_cached_privately(locked):
    client = locked.test_client()
    auth = {"Authorization": "Bearer s3cret pass"}
    job = client.post("/api/jobs", json=small_job(), headers=auth).get_json()["job"]
    assert backend_of(locked).worker.run_once()
    url = client.get(f"/api/jobs/{job['id']}", headers=auth).get_json()["job"]["images"][0]["url"]
    response = client.get(url, headers=auth)
    assert response.status_code == 200
    cache = response.headers["Cache-Control"]
    assert "private" in cache and "public" not in cache and "max-age=3600" in cache


def test_session_cookie_is_secure_over_https_and_login_works_over_http(make_app):
    app = make_app(PUBLIC=True, PASSWORD="pw", TRUST_PROXY=1, START_WORKER=False)
    tunnel = app.test_client()  # as through ngrok: https at the tunnel, http to us
    response = tunnel.post("/login", data={"password": "pw"}, headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    local = app.test_client()  # the notebook without a link: http://127.0.0.1
    response = local.post("/login", data={"password": "pw"})
    assert response.status_code == 302 and "Secure" not in response.headers["Set-Cookie"]
    assert local.get("/api/jobs").status_code == 200

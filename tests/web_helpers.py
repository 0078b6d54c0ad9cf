"""Fixtures and helpers shared by the web backend tests (imported by them;
kept out of conftest.py so the UI tests' fixtures stay separate)."""
from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

FINISHED = ("done", "failed", "cancelled")


@pytest.fixture
def make_app(engine, tmp_path):
    """create_app with the session's demo engine and a fresh instance folder;
    every app's worker is stopped afterwards."""
    from app import create_app

    apps = []

    def make(**config):
        settings = {"ENGINE": engine, "MODEL": "demo", "INSTANCE": str(tmp_path / f"instance{len(apps)}")}
        settings.update(config)
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["t2i"].stop()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def small_job(**overrides) -> dict:
    body = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 2, "seed": 1}
    body.update(overrides)
    return body


def assert_error(response, status: int, field: str | None = "any") -> dict:
    """The one error shape: ok false, a message, the status, field and value keys."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"ok", "error", "status", "field", "value"}, body
    assert body["ok"] is False and body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    if field != "any":
        assert body["field"] == field, body
    return body


def wait_job(client, job_id: str, timeout: float = 60, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}", headers=headers).get_json()["job"]
        if job["state"] in FINISHED:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout}s"
        time.sleep(0.05)


def png_b64(image: Image.Image, data_url: bool = False) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


def gradient(width: int = 96, height: int = 80) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    return image

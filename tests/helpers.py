"""Helpers shared by the tests (the fixtures are in conftest.py): request
bodies, the error-shape check, waiting, free ports and test images."""
from __future__ import annotations

import base64
import io
import socket
import time
from typing import Any, Callable

import pytest
from PIL import Image

FINISHED = ("done", "failed", "cancelled")


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


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; return that. Fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_job(client, job_id: str, timeout: float = 60, headers=None) -> dict:
    """The job once it is finished (Flask test client)."""
    def finished():
        job = client.get(f"/api/jobs/{job_id}", headers=headers).get_json()["job"]
        return job if job["state"] in FINISHED else None

    return wait_for(finished, timeout, f"job {job_id} to finish")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_b64(image: Image.Image, data_url: bool = False) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


def gradient(width: int = 96, height: int = 80) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    return image


# Folders the browser tests saved screenshots to; conftest prints them at the end.
SCREENSHOT_DIRS: pytest.StashKey[set[str]] = pytest.StashKey()


def peak_rss_growth(action) -> tuple[object, int]:
    """What ``action()`` returns and how far the process's peak RSS rose above its RSS
    before it (Linux: writing 5 to clear_refs resets the peak). Pillow allocates pixels
    outside Python's allocator, so tracemalloc would not see them."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")

    def status(key: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

    before = status("VmRSS")
    result = action()
    return result, status("VmHWM") - before


def tile_action(tile, name: str):
    """A gallery tile's action (a Playwright locator of the item), its actions menu opened first:
    the gallery keeps each tile's actions in one menu (issue #27)."""
    tile.locator(".menu-button").click()
    return tile.get_by_role("menuitem", name=name)

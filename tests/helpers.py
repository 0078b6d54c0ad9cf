"""Helpers shared by the tests (the fixtures are in conftest.py; the browser tests' own are in
browser_helpers.py): request bodies, the error-shape check, waiting, free ports, test images, worker
and redis-server processes, the views' HTML reader, a tiny LoRA and a tiny captioned data set.
A test module imports these from here, never from another test module."""
from __future__ import annotations

import base64
import csv
import errno
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from PIL import Image

FINISHED = ("done", "failed", "cancelled")
ROOT = Path(__file__).resolve().parent.parent


def backend_of(app) -> Any:
    """The app's backend: its services' (app/web/services.py), the one object the web layer calls."""
    from app.web.services import services_of

    return services_of(app).backend


def services_of(app) -> Any:
    """The app's services (backend, catalogue, wait slots ...; app/web/services.py)."""
    from app.web.services import services_of

    return services_of(app)


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


def b64_png(text: str) -> Image.Image:
    """An image from its base64 PNG, as the A1111 API answers (``png_b64``'s inverse)."""
    return Image.open(io.BytesIO(base64.b64decode(text)))


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


# --- processes: ``python -m app worker`` and redis-server ------------------------------------

HEARTBEAT = 1  # seconds: a killed worker's job is noticed after ~3 s, not RQ's default minutes
STOP_WAIT = 10  # seconds a stopped worker may take before it is killed: it exits within a few (a step's)


class Workers:
    """``python -m app worker`` processes, by name."""

    def __init__(self, url: str, logs: Path):
        import torch

        self.url, self.logs = url, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        # Same thread count as this process's engine, so CPU float sums match ours.
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
                    "PYTHONUNBUFFERED": "1"}

    def start(self, name: str) -> None:
        self.started[name] = time.time()
        out = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--redis", self.url, "--model", "demo", "--device", "cpu",
             "--heartbeat", str(HEARTBEAT), "--name", name], cwd=ROOT, env=self.env, stdout=out,
            stderr=subprocess.STDOUT)
        out.close()

    def wait_ready(self, *names: str, timeout: float = 90) -> None:
        from redis import Redis

        info = Redis.from_url(self.url)

        def ready():
            for name in names:
                if self.procs[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{self.log(name)}")
            # A heartbeat from this process, not one left by a killed worker of that name.
            return all((info.zscore("t2i:t2i:workers", name) or 0) > self.started[name] for name in names)

        wait_for(ready, timeout, f"workers {names} to load the model", interval=0.2)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        """SIGTERM to all at once (a busy worker hands its job back and exits within seconds),
        then SIGKILL to any still running after STOP_WAIT, all counted from the same start."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_WAIT
        for proc in self.procs.values():
            stop(proc, signalled=True, wait=max(0.1, deadline - time.monotonic()))


def start_worker(redis_url: str, queue: str, log: Path, *extra: str) -> subprocess.Popen:
    """A real ``python -m app worker`` process on the demo model."""
    import torch

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "app", "worker", "--redis", redis_url, "--queue", queue,
                             "--model", "demo", "--device", "cpu", "--heartbeat", "1", *extra],
                            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, signalled: bool = False, wait: float = STOP_WAIT) -> None:
    """SIGTERM (unless ``signalled`` already), then SIGKILL if it is still running after ``wait`` s."""
    if not signalled:
        proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class RedisServer:
    """A redis-server of its own (append-only file on, as the docs advise), to stop and start."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start it; returns the seconds until it answered."""
        from redis import Redis

        started = time.monotonic()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.folder), "--appendonly", "yes", "--save", "",
                                      "--logfile", str(self.folder / "redis.log")])

        def up():
            try:
                return Redis(port=self.port).ping()
            except Exception:
                return False

        wait_for(up, 20, "redis-server to start")
        return time.monotonic() - started

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        self.proc.wait(20)


class FullDiskFile:
    """A file on a disk that fills up: some bytes go out, then ENOSPC."""

    def __init__(self, real):
        self.real = real

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()

    def write(self, data):
        self.real.write(data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")


# --- the views' HTML, and a job run by hand ---------------------------------------------------

class Page(HTMLParser):
    """Elements of an HTML page by id, plus every tag's attributes (an option's
    ``_select``: the id of the select it is in)."""

    def __init__(self, html: str):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.tags: list[tuple[str, dict]] = []
        self.select: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self.select = attrs.get("id")
        elif tag == "option":
            attrs["_select"] = self.select
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.by_id[attrs["id"]] = {"tag": tag, **attrs}

    def all(self, tag: str, **match) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in match.items())]


def run_job(app, client, **params) -> dict:
    """Submit through the JSON API and let the worker run it."""
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 7, **params}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job"]["id"]
    assert backend_of(app).worker.run_once()
    return client.get(f"/api/jobs/{job_id}").get_json()["job"]


# --- a tiny LoRA and a tiny captioned data set --------------------------------------------------

RANK = 4


def kohya_lora(pipe, seed: int, te: bool = True, scale: float = 0.3) -> dict:
    """A kohya/A1111-format LoRA for the demo model: every attention projection of the UNet
    (and the text encoder's), random down/up weights, alpha = rank."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    parts = [("lora_unet_", pipe.unet, "attn")]
    if te:
        parts.append(("lora_te_text_model_", pipe.text_encoder, "self_attn"))
    for prefix, model, where in parts:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and where in name:
                key = prefix + name.replace("text_model.", "").replace(".", "_")
                tensors[key + ".lora_down.weight"] = torch.randn(RANK, module.in_features, generator=gen) * scale
                tensors[key + ".lora_up.weight"] = torch.randn(module.out_features, RANK, generator=gen) * scale
                tensors[key + ".alpha"] = torch.tensor(float(RANK))
    return tensors


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def make_images(folder, size=(80, 64)):
    """Four small images, each a coloured square on grey, with a caption each."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, colour in COLOURS.items():
        image = Image.new("RGB", size, (128, 128, 128))
        image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (size[0] // 4, size[1] // 4))
        image.save(folder / f"{name}.png")
        rows.append((f"{name}.png", f"a {name} square on a grey background"))
    return rows


def write_csv(path, rows, header=("image", "caption")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def tile_action(tile, name: str):
    """A gallery tile's action (a Playwright locator of the item), its actions menu opened first:
    the gallery keeps each tile's actions in one menu (issue #27)."""
    tile.locator(".menu-button").click()
    return tile.get_by_role("menuitem", name=name)


@contextmanager
def serve_process(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m app serve --model demo --port 0`` in its own process (its
    threads, descriptors and memory are then its own); yields it and its URL."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--model", "demo", "--port", "0",
             "--instance", str(tmp_path / "instance"), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env})
    try:
        def listening():
            assert proc.poll() is None, log.read_text()
            return re.search(r"Serving on (http://\S+)", log.read_text())

        yield proc, wait_for(listening, 120, "serve to listen").group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)

"""The ``http`` and ``sdapi`` paths: the web app served on 127.0.0.1, and the
benchmark's HTTP client, which runs in its own process (``python -m app.bench --client``)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.bench.config import BENCH_NOISE, NEGATIVE, PROJECT_ROOT, PROMPT, BenchConfig, Sample
from app.bench.paths import Runner

if TYPE_CHECKING:
    from app.engine.engine import Engine


def http_unavailable_reason() -> str | None:
    try:
        from app.web import create_app  # noqa: F401
    except ImportError:
        return "the web app (app.create_app) is not in this checkout"
    return None


class HttpStack:
    """The web app with an injected engine, served by waitress in a thread,
    and driven by a client in another process, as a browser or script would
    be: the client's own work (JSON, polling) then does not compete with the
    server for this process's interpreter lock, and ``process_time`` here
    counts the server's work only."""

    def __init__(self, engine: Engine, workdir: Path, poll: float, slow_poll: float = 0.5, preview_every: int = 1,
                 long_poll: bool = True):

        from app.web import create_app
        from app.web.server import ServerHandle

        side = max(engine.default_size[0], 1024)
        self.app = create_app({"ENGINE": engine, "INSTANCE": str(workdir / "instance"), "MAX_WIDTH": side,
                               "MAX_HEIGHT": side, "MAX_QUEUED_PER_CLIENT": 1000, "MAX_STEPS": 1000,
                               "PREVIEW_EVERY": preview_every})
        self.server = ServerHandle(self.app, "127.0.0.1", 0).start()
        self.base = self.server.url
        self.client = subprocess.Popen(
            [sys.executable, "-m", "app.bench", "--client",
             json.dumps({"base": self.base, "poll": poll, "slow_poll": max(poll, slow_poll), "long_poll": long_poll})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(PROJECT_ROOT))
        self._ask({"kind": "ready"}, timeout=600)

    def _ask(self, message: dict, timeout: float = 3600) -> dict:
        assert self.client.stdin is not None and self.client.stdout is not None  # both are pipes
        self.client.stdin.write(json.dumps(message) + "\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"http: the benchmark client stopped (exit {self.client.poll()})")
        answer = json.loads(line)
        if answer.get("error"):
            raise RuntimeError(f"http: {answer['error']}")
        return answer

    def runner(self, cfg: BenchConfig, size: int, kind: str = "http") -> Runner:
        """``http``: the native job API with polling; ``sdapi``: the synchronous A1111 route."""
        if kind == "http":
            body = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale, seed=cfg.seed, randn_source=BENCH_NOISE)
        else:  # A1111's defaults: DPM++ 2M with the Automatic schedule, the noise source as an option
            body = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                        cfg_scale=cfg.guidance_scale, seed=cfg.seed, sampler_name="DPM++ 2M",
                        override_settings={"randn_source": BENCH_NOISE})

        def run():
            cpu = time.process_time()
            answer = self._ask({"kind": kind, "body": body})
            sample = Sample(answer["seconds"], time.process_time() - cpu)
            if kind == "http":
                job = answer["job"]
                sample.server_seconds = _span(job, "created_at", "finished_at")
                sample.queue_seconds = _span(job, "created_at", "started_at")
            return sample, _png(answer["png_b64"])

        return run

    def close(self) -> None:
        """Ends the client, then the server and the app's backend."""
        if self.client.poll() is None:
            assert self.client.stdin is not None
            self.client.stdin.close()
            self.client.wait(timeout=30)
        self.server.stop()


def _png(b64: str) -> Any:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def _span(job: dict, start: str, end: str) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


# The client: its own process --------------------------------------------------------------

def poll_interval(job: dict, elapsed: float, poll: float, slow_poll: float) -> float:
    """Fast polls (``poll``) only where the job may end soon: while queued, in
    its first step and after its last one (VAE decode, saving). Mid-run sleep
    up to ``slow_poll``, but never past about half the time the remaining
    steps should take, so the end is not overshot. A 10 ms loop all along
    would itself eat a quarter of a core (4-5 ms of CPU per poll here)."""
    progress = job.get("progress") or {}
    step, total = progress.get("step", 0), progress.get("total", 0)
    if job["state"] != "running" or step < 1 or step >= total:
        return poll
    remaining = (total - step) * elapsed / step
    return min(slow_poll, max(poll, remaining / 2))


def client_main(spec: dict) -> None:
    """The benchmark's HTTP client (its own process): one JSON request per
    stdin line, one JSON answer per stdout line; times what a client sees."""
    import base64
    import urllib.request

    base, poll, slow_poll, long_poll = spec["base"], spec["poll"], spec["slow_poll"], spec.get("long_poll", False)

    def call(method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            raw = resp.read()
        return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw

    def answer(message: dict) -> dict:
        if message["kind"] == "ready":
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                state = call("GET", "/api/health").get("model_state")
                if state == "ready":
                    return {}
                if state == "failed":
                    return {"error": "the web app could not load the model"}
                time.sleep(0.05)
            return {"error": "the web app was not ready in time"}
        if message["kind"] == "sdapi":
            started = time.perf_counter()
            result = call("POST", "/sdapi/v1/txt2img", message["body"])
            return {"seconds": time.perf_counter() - started, "png_b64": result["images"][0]}
        started = time.perf_counter()
        job = call("POST", "/api/jobs", message["body"])["job"]
        while job["state"] in ("queued", "running"):
            if long_poll:  # one request that answers when the job ends, as an API client would
                job = call("GET", f"/api/jobs/{job['id']}?wait=60")["job"]
                continue
            time.sleep(poll_interval(job, time.perf_counter() - started, poll, slow_poll))
            job = call("GET", f"/api/jobs/{job['id']}")["job"]
        seconds = time.perf_counter() - started
        if job["state"] != "done":
            return {"error": f"job {job['id']} ended {job['state']}: {job.get('error')}"}
        png = call("GET", job["images"][0]["url"])  # after the clock: the image is fetched once the UI shows it
        return {"seconds": seconds, "job": job, "png_b64": base64.b64encode(png).decode()}

    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as exc:  # report to the parent rather than die silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

"""Shared fixtures. Everything runs offline on the CPU with the tiny demo
model, built once per test session; the helpers they share are in helpers.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

# The Hub cannot be reached from CI; fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh cache per session: the demo tokenizer is built from the bundled BPE file
# every time, as on a clean machine (a warm ~/.cache once hid a missing file).
os.environ.setdefault("T2I_CACHE", tempfile.mkdtemp(prefix="t2i-cache-"))

import pytest


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo model saved as an ordinary diffusers folder."""
    from app.models.demo import save_demo_model

    return save_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def engine():
    """A loaded demo engine shared by the tests that only generate."""
    from app.engine.engine import Engine, EngineOptions

    return Engine.load(EngineOptions(model="demo", device="cpu"))


@pytest.fixture
def small_request():
    """A fast request: 64x64, 2 steps, fixed seed."""
    from app.engine.types import GenerationRequest

    def make(**overrides):
        params = dict(prompt="a red fox in the snow", width=64, height=64, steps=2, seed=1)
        params.update(overrides)
        return GenerationRequest(**params)

    return make


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port (no persistence), for the
    session; skipped only where redis-server is not installed (CI installs it)."""
    from helpers import free_port, wait_for

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from redis import Redis

    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--logfile", str(log)])
    client = Redis(port=port)

    def up():
        try:
            return client.ping()
        except Exception:
            return False

    try:
        wait_for(up, 20, "redis-server to start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the browser tests put their screenshots, for a person to look at."""
    from helpers import SCREENSHOT_DIRS

    for folder in sorted(config.stash.get(SCREENSHOT_DIRS, set())):
        terminalreporter.write_line(f"screenshots of the pages: {folder}")

"""Shared fixtures. Everything runs offline on the CPU with the tiny demo
model, built once per test session; the helpers they share are in helpers.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

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
    from helpers import backend_of

    apps = []

    def make(**config):
        settings = {"ENGINE": engine, "MODEL": "demo", "INSTANCE": str(tmp_path / f"instance{len(apps)}")}
        settings.update(config)
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        backend_of(app).stop()


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


# --- the browser tests' (browser_helpers.py) ----------------------------------------

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from browser_helpers import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def serve(tmp_path, engine):
    """Start live servers on free ports. The loaded demo engine is handed in
    (paced), so the worker does not load another."""
    from app import create_app
    from app.web.server import ServerHandle
    from browser_helpers import PACE, PacedEngine

    servers = []

    def start(**config):
        settings = {"INSTANCE": str(tmp_path / f"instance{len(servers)}"), "MODEL": "demo",
                    "ENGINE": PacedEngine(engine, PACE), "SECRET_KEY": "browser-test"}
        settings.update(config)
        servers.append(ServerHandle(create_app(settings), host="127.0.0.1", port=0).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def page(browser):
    """A page that fails its test on a JavaScript error or a CSP violation."""
    from browser_helpers import RECORDER, TIMEOUT_MS, watch_csp

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORDER)
    page = context.new_page()
    violations = watch_csp(context, page)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


@pytest.fixture
def shots(request):
    from browser_helpers import SCREENSHOTS
    from helpers import SCREENSHOT_DIRS

    folder = Path(os.environ.get("T2I_SCREENSHOTS") or SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    request.config.stash.setdefault(SCREENSHOT_DIRS, set()).add(str(folder))  # printed at the end (conftest)
    return folder


@pytest.fixture(params=["light", "dark"])
def scheme_page(request, browser):
    """A page in the light or the dark colour scheme (the accessibility tests run both)."""
    from browser_helpers import TIMEOUT_MS, watch_csp

    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=request.param)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    violations = watch_csp(context, page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.scheme = request.param
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


# --- tiny face restorers and upscalers with random weights (test_faces, test_upscalers, test_extras) ---

def _random_weights(module):
    import torch

    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return module


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory) -> Path:
    """FACE_DIR with random-weight GFPGAN and CodeFormer files under A1111's names, and a
    facexlib-shaped RetinaFace state dict (keys prefixed ``module.`` as facexlib's may be)."""
    import torch

    from app.engine.faces import weights
    from app.engine.faces.retinaface import RetinaFace
    from app.models.spandrel_loader import spandrel

    spandrel()  # installs the extra arches (CodeFormer)
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    folder = tmp_path_factory.mktemp("faces")
    gfpgan = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                    fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    torch.save(_random_weights(gfpgan).state_dict(), folder / weights.GFPGAN.name)
    torch.manual_seed(0)  # CodeFormer's own initialisation: its fusion layers then make w matter
    torch.save(CodeFormer().state_dict(), folder / weights.CODEFORMER.name)
    state = {"module." + k: v for k, v in RetinaFace().state_dict().items()}
    torch.save(state, folder / weights.DETECTOR.name)
    return folder


@pytest.fixture
def faces_here(face_dir, monkeypatch):
    """FACE_DIR is the session's folder; the detector (faked, see the module docstring) finds one
    face: a box in the middle of the image with landmarks placed as the FFHQ template has them."""
    from app.engine.faces import align, detect, weights
    from app.engine.faces.retinaface import Face

    weights.configure(face_dir)

    def fake_detect(image, confidence=detect.RESTORE_CONFIDENCE):
        w, h = image.size
        box = (w * 0.3, h * 0.3, w * 0.7, h * 0.7)
        marks = tuple((box[0] + x / 512 * (box[2] - box[0]), box[1] + y / 512 * (box[3] - box[1]))
                      for x, y in align.TEMPLATE)
        return [Face(box=box, score=0.99, landmarks=marks)]

    monkeypatch.setattr(detect, "detect_faces", fake_detect)
    yield face_dir
    weights.configure(None)


def _tiny_upscaler_state_dicts() -> dict[str, dict]:
    import torch

    from app.models.spandrel_loader import spandrel

    spandrel()  # spandrel's architectures import through our loader (torchvision stub where needed)
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    return {
        "tiny-esrgan.pth": ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(),
        "tiny-esrgan-2x.safetensors": ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(),
        "tiny-compact.pth": Compact(num_feat=8, num_conv=2, upscale=4).state_dict(),
        "tiny-swinir.safetensors": SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                          upscale=2, upsampler="pixelshuffle", mlp_ratio=2).state_dict(),
    }


def _save_state_dict(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        import torch

        torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("upscalers")
    return {name: _save_state_dict(state, folder / name) for name, state in _tiny_upscaler_state_dicts().items()}


@pytest.fixture
def folder(model_files, tmp_path):
    """A fresh upscaler folder holding the tiny models; the registry points there while the test runs."""
    from app.engine import upscalers
    from app.engine.upscalers import models, registry

    target = tmp_path / "upscalers"
    target.mkdir()
    for path in model_files.values():
        os.link(path, target / path.name)
    upscalers.configure(target, tile=192, overlap=16)
    yield target
    upscalers.configure(registry.DEFAULT_FOLDER, tile=192, overlap=16)
    models.free()


# --- no slow teardown (issue #23) ---------------------------------------------------------------

TEARDOWN_LIMIT = 5.0  # seconds one fixture's own teardown may take
# Fixtures allowed longer, each with the reason; none today. A worker or server that is slow to stop
# is a bug to fix (a Redis worker that waited for its job made a module's teardown wait 20 s), not
# a name to add here.
SLOW_TEARDOWNS: dict[str, str] = {}
_teardown_started: dict[int, float] = {}


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    value = yield
    # Finalizers run last-in first-out: this one runs just before the fixture's own teardown (the
    # code after its ``yield``, and the finalizers it added), after those of the fixtures using it.
    fixturedef.addfinalizer(lambda: _teardown_started.__setitem__(id(fixturedef), time.perf_counter()))
    return value


def pytest_fixture_post_finalizer(fixturedef, request):
    """A fixture whose teardown took over TEARDOWN_LIMIT fails the test it ended with (an error in
    its teardown phase), naming the fixture and the time."""
    started = _teardown_started.pop(id(fixturedef), None)
    if started is None:  # its setup failed, or it was torn down already
        return
    took = time.perf_counter() - started
    if took > TEARDOWN_LIMIT and fixturedef.argname not in SLOW_TEARDOWNS:
        pytest.fail(f"the fixture {fixturedef.argname!r} took {took:.1f} s to tear down (over "
                    f"{TEARDOWN_LIMIT:g} s): make it stop faster, or say why in conftest.SLOW_TEARDOWNS",
                    pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the browser tests put their screenshots, for a person to look at."""
    from helpers import SCREENSHOT_DIRS

    for folder in sorted(config.stash.get(SCREENSHOT_DIRS, set())):
        terminalreporter.write_line(f"screenshots of the pages: {folder}")

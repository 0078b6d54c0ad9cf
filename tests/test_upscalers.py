"""Model upscalers (issue #24): tiny models built from spandrel's own
architectures with random weights (ESRGAN/RRDB, Real-ESRGAN Compact, SwinIR),
saved as .pth and .safetensors, detected by spandrel from their state dicts and
used through the engine, the native API, /sdapi (webuiapi) and the CLI.

The only fake: A1111's download URLs point at a local http.server (there is
no internet here); the download code itself runs unchanged."""
from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from app.engine import upscalers
from app.engine.types import ValidationError
from app.engine.upscale import upscale
from app.engine.upscalers import download, models, registry
from app.models.devices import free_memory
from browser_helpers import CHROMIUM, shown_job, submit
from helpers import assert_error, gradient, small_job, wait_job


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def test_spandrel_detects_the_models_and_the_list_shows_their_scales(folder):
    listed = {u.name: u for u in upscalers.available()}
    assert [name for name in listed][:3] == ["None", "Lanczos", "Nearest"]
    assert {name: listed[name].scale for name in ("tiny-esrgan", "tiny-esrgan-2x", "tiny-compact", "tiny-swinir")} == {
        "tiny-esrgan": 4, "tiny-esrgan-2x": 2, "tiny-compact": 4, "tiny-swinir": 2}
    assert listed["R-ESRGAN 4x+"].scale == 4 and listed["R-ESRGAN 4x+"].url.endswith("RealESRGAN_x4plus.pth")
    assert "LDSR" not in listed
    assert upscalers.find("TINY-ESRGAN").name == "tiny-esrgan"  # A1111's names are matched case-insensitively


def test_listing_reads_each_file_once(folder, monkeypatch):
    upscalers.available()
    reads = []
    monkeypatch.setattr("app.models.spandrel_loader.read_weights", lambda path: reads.append(path) or {})
    upscalers.available()
    assert reads == []  # remembered by (mtime, size)
    os.utime(folder / "tiny-compact.pth", (1, 1))  # a new version of the file is read again
    upscalers.available()
    assert [Path(p).name for p in reads] == ["tiny-compact.pth"]


@pytest.mark.parametrize("name,scale,size", [
    ("tiny-esrgan", 4, (160, 120)), ("tiny-esrgan-2x", 2, (80, 60)), ("tiny-compact", 3, (120, 90)),
    ("tiny-swinir", 3, (120, 90)),  # a 2x model runs twice (to 4x), then Lanczos down to 3x, as A1111
    ("Nearest", 2, (80, 60)),
])
def test_output_size(folder, name, scale, size):
    out = upscale(noise(40, 30), scale=scale, upscaler=name)
    assert out.size == size and out.mode == "RGB"


@pytest.mark.parametrize("name,scale", [("tiny-esrgan", 4), ("tiny-swinir", 2)])  # convolutions; windowed attention
def test_tiles_leave_no_seams(folder, name, scale):
    """Tiles with context give the picture one pass gives, pixel for pixel (within rounding)."""
    image = noise(100, 70, seed=1)
    upscalers.configure(tile=0)
    whole = np.asarray(upscale(image, scale=scale, upscaler=name), dtype=int)
    upscalers.configure(tile=32, overlap=16)
    ticks = []
    tiled = np.asarray(upscale(image, scale=scale, upscaler=name, progress=lambda d, t: ticks.append((d, t))),
                       dtype=int)
    assert ticks == [(i, 12) for i in range(1, 13)]  # 4 x 3 tiles, reported one by one
    assert np.abs(whole - tiled).max() <= 1
    assert whole.std() > 5  # a real picture, not a flat one that would match anyway


def test_a_pickle_that_would_run_code_is_refused_unrun(folder, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"params": Evil(marker)}, folder / "4x-evil.pth")
    assert "4x-evil" not in [u.name for u in upscalers.available()]  # left out of the list
    with pytest.raises(ValidationError) as err:
        upscale(gradient(16, 16), scale=2, upscaler="4x-evil")
    assert err.value.field == "upscaler" and "4x-evil" in err.value.message
    assert not marker.exists()


def test_models_that_are_not_upscalers_are_refused(folder):
    torch.save({"lora_unet_down.alpha": torch.tensor(1.0), "w": torch.zeros(4, 4)}, folder / "a-lora.pth")
    with pytest.raises(ValidationError, match="not an architecture spandrel knows"):
        upscale(gradient(16, 16), scale=2, upscaler="a-lora")
    (folder / "cut-short.safetensors").write_bytes(b"\x10\x00\x00\x00not a safetensors file")
    with pytest.raises(ValidationError) as err:
        upscale(gradient(16, 16), scale=2, upscaler="cut-short")
    assert err.value.field == "upscaler"
    assert not {"a-lora", "cut-short"} & {u.name for u in upscalers.available()}  # the list leaves them out
    with pytest.raises(ValidationError) as err:
        upscale(gradient(16, 16), scale=2, upscaler="4x-NoSuchModel")
    assert "/sdapi/v1/upscalers" in err.value.message


def test_two_models_are_kept_and_free_memory_drops_them(folder):
    for name in ("tiny-esrgan", "tiny-compact", "tiny-esrgan-2x"):
        upscale(gradient(16, 16), scale=2, upscaler=name)
    assert [Path(key[0]).stem for key in models._cache] == ["tiny-compact", "tiny-esrgan-2x"]
    free_memory("cpu")
    assert not models._cache


@pytest.fixture
def file_server(model_files, tmp_path):
    """A local http.server standing in for github.com's release downloads."""
    root = tmp_path / "www"
    root.mkdir()
    for name in ("RealESRGAN_x4plus.pth", "big.pth"):
        (root / name).write_bytes(model_files["tiny-compact.pth"].read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_built_in_models_download_on_first_use(folder, file_server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(registry.BUILTINS, "R-ESRGAN 4x+",
                        registry.BuiltIn(f"{file_server}/RealESRGAN_x4plus.pth", 4, "RealESRGAN"))
    assert not (folder / "RealESRGAN_x4plus.pth").exists()
    assert upscale(gradient(20, 10), scale=4, upscaler="R-ESRGAN 4x+").size == (80, 40)
    assert (folder / "RealESRGAN_x4plus.pth").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no partial file left
    names = [u.name for u in upscalers.available()]
    assert "R-ESRGAN 4x+" in names and "RealESRGAN_x4plus" not in names  # listed once, by A1111's name

    monkeypatch.setitem(registry.BUILTINS, "ESRGAN_4x", registry.BuiltIn(f"{file_server}/missing.pth", 4, "ESRGAN"))
    with pytest.raises(ValidationError, match="could not be downloaded.*missing.pth"):
        upscale(gradient(20, 10), scale=4, upscaler="ESRGAN_4x")
    monkeypatch.setitem(registry.BUILTINS, "SwinIR 4x", registry.BuiltIn(f"{file_server}/big.pth", 4, "SwinIR"))
    monkeypatch.setattr(download, "MAX_BYTES", 1000)
    with pytest.raises(ValidationError, match="more than the 1000 bytes"):
        upscale(gradient(20, 10), scale=4, upscaler="SwinIR 4x")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("tiny")) == ["RealESRGAN_x4plus.pth"]


def test_offline_says_which_file_to_put_where(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValidationError) as err:
        upscale(gradient(20, 10), scale=4, upscaler="R-ESRGAN 4x+ Anime6B")
    message = err.value.message
    assert "offline" in message and str(folder) in message and "RealESRGAN_x4plus_anime_6B.pth" in message
    assert "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/" in message


@pytest.fixture
def app_with_models(make_app, folder):
    return make_app(UPSCALER_DIR=str(folder))


def test_sdapi_lists_a_dropped_in_file_and_the_realesrgan_models(app_with_models, folder, model_files):
    client = app_with_models.test_client()
    os.link(model_files["tiny-esrgan.pth"], folder / "4x-Dropped.pth")
    listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").get_json()}
    assert listed["4x-Dropped"] == {"name": "4x-Dropped", "model_name": "4x-Dropped",
                                    "model_path": str(folder / "4x-Dropped.pth"), "model_url": None, "scale": 4}
    assert listed["None"] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert listed["ESRGAN_4x"]["model_url"] == "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth"
    realesrgan = client.get("/sdapi/v1/realesrgan-models").get_json()
    assert [m["name"] for m in realesrgan] == [n for n in registry.BUILTINS if n.startswith("R-ESRGAN")]
    assert {"name": "R-ESRGAN 2x+", "scale": 2,
            "path": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"} in realesrgan
    form = client.get("/").get_data(as_text=True)
    assert '<option value="4x-Dropped"' in form or ">4x-Dropped<" in form


def test_hires_with_a_model_upscaler_native_api(app_with_models):
    client = app_with_models.test_client()
    response = client.post("/api/jobs", json=small_job(enable_hr=True, hr_scale=2, strength=0.5,
                                                       hr_upscaler="tiny-esrgan"))
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"], timeout=120)
    assert job["state"] == "done", job["error"]
    assert Image.open(io.BytesIO(client.get(job["images"][0]["url"]).data)).size == (128, 128)
    assert "Hires upscaler: tiny-esrgan" in job["images"][0]["infotext"]
    assert_error(client.post("/api/jobs", json=small_job(enable_hr=True, hr_upscaler="4x-Nope")), 400, "hr_upscaler")


def test_webuiapi_hires_with_a_model_upscaler(app_with_models):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(app_with_models, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        assert "tiny-compact" in [u["name"] for u in api.get_upscalers()]
        result = api.txt2img(prompt="a lake", width=64, height=64, steps=2, seed=5, enable_hr=True, hr_scale=2,
                             hr_upscaler="tiny-compact", hr_second_pass_steps=2, denoising_strength=0.5)
        assert result.image.size == (128, 128)
        assert "Hires upscaler: tiny-compact" in result.info["infotexts"][0]


def test_cli_upscale_with_a_model(folder, tmp_path, capsys):
    noise(40, 30).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "tiny-esrgan", "--upscaler-dir", str(folder),
                 "--scale", "4", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert Image.open(out).size == (160, 120) and "40x30 -> 160x120" in captured.out and "tile 1/1" in captured.err
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "4x-Nope", "--upscaler-dir", str(folder),
                 "-o", str(out)]) != 0
    assert "upscaler" in capsys.readouterr().err


CHILD = Path(__file__).resolve().parent / "upscaler_memory_child.py"
PEAK_GROWTH_MB = 200  # docs/memory.md#upscalers: measured 96-118 MB (353 MB without tiles)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")
def test_a_4x_upscale_of_768_stays_within_its_memory_bound(folder):
    proc = subprocess.run([sys.executable, str(CHILD), str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == [3072, 3072]
    assert result["peak_growth_mb"] < PEAK_GROWTH_MB, result


def test_notebook_upscales_the_last_result_with_a_model(engine, folder, tmp_path):
    pytest.importorskip("ipywidgets")
    from app.engine.metadata import read_parameters
    from app.notebook.widgets import GeneratorUI

    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    assert "tiny-esrgan" in ui.upscaler.options and "R-ESRGAN 4x+" in ui.upscaler.options
    assert "tiny-esrgan" in ui.hr_upscaler.options  # one list for both: the registry's
    ui.prompt.value, ui.seed.value = "a lighthouse", 5
    ui.button.click()
    ui.upscale_by.value, ui.upscaler.value = 2, "tiny-esrgan"
    ui.upscale_button.click()
    (path,) = ui.upscaled
    with Image.open(path) as big:
        assert big.size == (128, 128)
        assert read_parameters(big).endswith("Postprocess upscale by: 2, Postprocess upscaler: tiny-esrgan")


def test_hires_with_a_built_in_model_offline_is_refused_at_submit(app_with_models, folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = app_with_models.test_client().post("/sdapi/v1/txt2img", json={
        "prompt": "x", "width": 64, "height": 64, "steps": 2, "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"})
    body = assert_error(response, 400, "hr_upscaler")
    assert "offline" in body["error"]
    assert f"put it in {folder} as RealESRGAN_x4plus.pth" in body["error"]


# --- the page, in a real Chromium (fixtures of test_browser.py) -----------------------------------



@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_page_runs_the_hires_fix_with_a_model_upscaler(serve, page, folder):  # noqa: F811
    server = serve(UPSCALER_DIR=str(folder))
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#hires-section > summary")
    page.check("#enable_hr")
    page.fill("#hr_scale", "2")
    page.select_option("#hr_upscaler", "tiny-esrgan")  # the dropped-in file, listed by its name
    page.fill("#hr_second_pass_steps", "2")
    submit(page, "a lake", width=64, height=64, steps=2, seed=5)
    page.wait_for_selector("#job[data-state=done]", timeout=240_000)
    assert page.eval_on_selector("#results img", "i => [i.naturalWidth, i.naturalHeight]") == [128, 128]
    job = shown_job(page)
    assert job["params"]["hr_upscaler"] == "tiny-esrgan"
    assert "Hires upscaler: tiny-esrgan" in job["images"][0]["infotext"]


def test_cli_generate_with_the_hires_fix_and_a_model_upscaler(folder, tmp_path, capsys):
    out = tmp_path / "lake.png"
    assert main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "2", "--width", "64",
                 "--height", "64", "--seed", "5", "--hires", "--hires-scale", "2", "--hires-steps", "2",
                 "--hires-upscaler", "tiny-esrgan", "--upscaler-dir", str(folder), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    image = Image.open(out)
    assert image.size == (128, 128) and "Hires upscaler: tiny-esrgan" in image.info["parameters"]

"""Hires fix (issue #12): two passes, the second at the upscaled size, on the
engine, the native API, the A1111 API and the CLI."""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from app.cli import main
from app.engine.metadata import parse_infotext
from helpers import assert_error, small_job, wait_job


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "latent (nearest)"])
def test_hires_doubles_the_size_and_reports_both_passes(engine, small_request, upscaler):
    steps = []
    result = engine.generate(small_request(steps=3, enable_hr=True, hr_upscaler=upscaler, hr_second_pass_steps=4,
                                           strength=0.5), on_step=lambda info: steps.append((info.step, info.total)))
    assert result.images[0].size == (128, 128)
    settings = parse_infotext(result.infotexts[0])
    assert settings["Size"] == "64x64" and settings["Steps"] == "3"  # the first pass, as A1111 writes it
    assert settings["Hires upscale"] == "2" and settings["Hires steps"] == "4"
    assert settings["Hires upscaler"] == upscaler.replace("latent", "Latent") and settings["Denoising strength"] == "0.5"
    # 3 first-pass steps, then A1111 runs exactly the 4 hires steps (its schedule stretched by the strength)
    assert steps == [(i, 7) for i in range(1, 8)]


def test_hires_resize_to_a_size_and_differs_from_plain_upscale(engine, small_request):
    result = engine.generate(small_request(steps=2, enable_hr=True, hr_resize_x=128, hr_resize_y=96))
    assert result.images[0].size == (128, 96)
    assert parse_infotext(result.infotexts[0])["Hires resize"] == "128x96"
    plain = engine.generate(small_request(steps=2)).images[0].resize((128, 96))
    assert result.images[0].tobytes() != plain.tobytes()


@pytest.mark.parametrize("extra,field", [
    ({"hr_scale": 40}, "hr_scale"),
    ({"hr_upscaler": "4x-NotInTheFolder"}, "hr_upscaler"),
    ({"width": 512, "height": 512, "hr_scale": 4}, "hr_scale"),  # 2048x2048 > the app's pixel limit
])
def test_native_api_refuses_bad_hires(client, extra, field):
    assert_error(client.post("/api/jobs", json=small_job(enable_hr=True, **extra)), 400, field)


def test_native_api_hires_job(client):
    response = client.post("/api/jobs", json=small_job(enable_hr=True, hr_scale=1.5, strength=0.6))
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "done", job["error"]
    image = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).data))
    assert image.size == (96, 96) and "Hires upscale: 1.5" in job["images"][0]["infotext"]


def test_sdapi_hires(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3, "enable_hr": True,
            "hr_upscaler": "Latent", "hr_second_pass_steps": 2, "denoising_strength": 0.7}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(response.get_json()["images"][0])))
    info = json.loads(response.get_json()["info"])
    assert image.size == (128, 128) and info["denoising_strength"] == 0.7
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in info["infotexts"][0]
    # an upscaler this server lacks is refused, but only when hires is on (A1111 ignores hr_* otherwise)
    assert_error(client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "4x-NotInTheFolder"}), 400, "hr_upscaler")
    off = client.post("/sdapi/v1/txt2img", json={**body, "enable_hr": False, "hr_upscaler": "4x-NotInTheFolder"})
    assert off.status_code == 200


def test_cli_hires(tmp_path, capsys):
    out = tmp_path / "hr.png"
    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "2", "--seed", "1",
                 "--width", "64", "--height", "64", "--hires", "--hires-steps", "2", "--strength", "0.5",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (128, 128) and "128x128" in capsys.readouterr().out

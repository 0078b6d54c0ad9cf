"""The payloads of A1111's own API tests (stable-diffusion-webui ``test/test_txt2img.py`` and
``test/test_img2img.py``: their request bodies and the variations each test makes), sent to a real
server on 127.0.0.1 running the demo model, as A1111's suite sends them to its own.

One of A1111's tests needs a feature this server may not have (face restoration, issue #24): it is
answered 400 naming the field, checked here as such. The "SD upscale" script runs (issue #24).
"""
from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image

from app.web.server import ServerHandle
from helpers import backend_of, gradient, png_b64

TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}
TXT2IMG_CASES = {
    "simple": {},
    "negative_prompt": {"negative_prompt": "example negative prompt"},
    "complex_prompt": {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
    "not_square": {"height": 128},
    "hrfix": {"enable_hr": True},
    "tiling": {"tiling": True},
    "sampler_PLMS": {"sampler_index": "PLMS"},
    "sampler_DDIM": {"sampler_index": "DDIM"},
    "sampler_UniPC": {"sampler_index": "UniPC"},
    "multiple_batches": {"n_iter": 2},
    "batch": {"batch_size": 2},
}


def _img2img(image: str) -> dict:
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [image], "inpaint_full_res": False, "inpaint_full_res_padding": 0,
        "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "n_iter": 1,
        "negative_prompt": "", "override_settings": {}, "prompt": "example prompt", "resize_mode": 0,
        "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
        "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
        "subseed_strength": 0, "tiling": False, "width": 64,
    }


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    from app import create_app

    app = create_app({"ENGINE": engine, "MODEL": "demo", "INSTANCE": str(tmp_path_factory.mktemp("a1111-suite"))})
    try:
        with ServerHandle(app, port=0) as handle:
            yield f"http://127.0.0.1:{handle.port}"
    finally:
        backend_of(app).stop()


@pytest.mark.parametrize("case", list(TXT2IMG_CASES))
def test_a1111_txt2img_suite(server, case):
    body = {**TXT2IMG, **TXT2IMG_CASES[case]}
    response = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    count = body["batch_size"] * body["n_iter"]
    assert len(data["images"]) == count
    size = (128, 128) if body["enable_hr"] else (body["width"], body["height"])
    assert Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).size == size
    info = json.loads(data["info"])
    assert info["sampler_name"] == body["sampler_index"] and info["prompt"] == body["prompt"]


def test_a1111_img2img_suite(server):
    image = png_b64(gradient(64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    cases = {"simple": {}, "inpainting_masked": {"mask": png_b64(mask)},
             "inverted_mask": {"mask": png_b64(mask), "inpainting_mask_invert": True}}
    for case, changes in cases.items():
        response = requests.post(f"{server}/sdapi/v1/img2img", json={**_img2img(image), **changes}, timeout=120)
        assert response.status_code == 200, (case, response.text)
        assert len(response.json()["images"]) == 1


@pytest.mark.parametrize("route,changes,field", [
    ("txt2img", {"restore_faces": True, "override_settings": {"face_restoration_model": "RestoreFormer"}},
     "face_restorer"),  # face restoration is honoured (tests/test_faces.py); a restorer we lack is not
    ("img2img", {"script_name": "loopback"}, "script_name"),  # SD upscale runs: below; the X/Y/Z plot: test_xyz
    ("img2img", {"script_name": "x/y/z plot"}, "script_args"),  # a plot with no axes
])
def test_what_needs_issue_24_is_refused_naming_the_field(server, route, changes, field):
    body = {**(TXT2IMG if route == "txt2img" else _img2img(png_b64(gradient(64, 64)))), **changes}
    response = requests.post(f"{server}/sdapi/v1/{route}", json=body, timeout=60)
    assert response.status_code == 400 and response.json()["field"] == field


def test_img2img_sd_upscale_performed(server):
    """A1111's payload: overlap 8, the upscaler by name, scale 2: the 64x64 image comes back 128x128."""
    body = {**_img2img(png_b64(gradient(64, 64))), "script_name": "sd upscale",
            "script_args": ["", 8, "Lanczos", 2.0]}
    response = requests.post(f"{server}/sdapi/v1/img2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (128, 128)


def _pixels(server, **changes) -> bytes:
    body = {**TXT2IMG, "seed": 77, "steps": 4, **changes}
    response = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).tobytes()


def test_eta_0_makes_euler_a_the_euler_picture(server):
    euler_a_eta_0 = _pixels(server, sampler_index="Euler a", eta=0)
    euler = _pixels(server, sampler_index="Euler", eta=None)
    euler_a = _pixels(server, sampler_index="Euler a", eta=None)
    assert euler_a_eta_0 == euler
    assert euler_a != euler

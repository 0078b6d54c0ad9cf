"""Inpainting (issue #12): the engine, the native API, the A1111 API (with
webuiapi) and the CLI. Pixels outside the mask are the init image's exactly."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.engine.metadata import parse_infotext, read_parameters
from helpers import assert_error, gradient, png_b64, small_job, wait_job


def square_mask(size=(64, 64), box=(16, 16, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def outside_and_inside(result: Image.Image, init: Image.Image, mask: Image.Image):
    a, b = np.asarray(result.convert("RGB")).astype(int), np.asarray(init.convert("RGB")).astype(int)
    keep = np.asarray(mask) == 0
    return np.abs(a[keep] - b[keep]).max(), np.abs(a[~keep] - b[~keep]).mean()


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_outside_the_mask_is_the_init_image_exactly(engine, small_request, fill):
    init, mask = gradient(64, 64), square_mask()
    result = engine.generate(small_request(steps=4, init_image=init, mask=mask, mask_blur=0, inpainting_fill=fill,
                                           strength=0.9))
    image = result.images[0]
    assert image.size == (64, 64)
    outside, inside = outside_and_inside(image, init, mask)
    assert outside == 0 and inside > 5  # the masked square was repainted, nothing else
    settings = parse_infotext(result.infotexts[0])
    assert settings["Mask blur"] == "0" and settings["Denoising strength"] == "0.9"


def test_inverted_mask_repaints_the_black_area(engine, small_request):
    init, mask = gradient(64, 64), square_mask()
    image = engine.generate(small_request(steps=4, init_image=init, mask=mask, mask_blur=0,
                                          inpainting_mask_invert=True, strength=0.9)).images[0]
    inverted = Image.eval(mask, lambda v: 255 - v)
    outside, inside = outside_and_inside(image, init, inverted)
    assert outside == 0 and inside > 5


def test_only_masked_keeps_the_init_size_and_pastes_back(engine, small_request):
    init = gradient(128, 96)
    mask = square_mask((128, 96), (70, 40, 90, 60))
    result = engine.generate(small_request(steps=4, width=64, height=64, init_image=init, mask=mask, mask_blur=0,
                                           inpaint_full_res=True, inpaint_full_res_padding=8, strength=0.9))
    image = result.images[0]
    assert image.size == (128, 96)
    outside, inside = outside_and_inside(image, init, mask)
    assert outside == 0 and inside > 5
    settings = parse_infotext(result.infotexts[0])
    # as A1111 writes it: the size the masked region was generated at
    assert settings["Inpaint area"] == "Only masked" and settings["Size"] == "64x64"


def test_mask_blur_softens_the_edge(engine, small_request):
    init, mask = gradient(64, 64), square_mask()
    image = engine.generate(small_request(steps=4, init_image=init, mask=mask, mask_blur=4, strength=0.9)).images[0]
    a, b = np.asarray(image).astype(int), np.asarray(init).astype(int)
    assert (a[14, 28] != b[14, 28]).any()  # 2 px outside the square: blended
    assert (a[0:4] == b[0:4]).all()  # far outside: untouched


def test_native_api_inpaints_a_job(client):
    init, mask = gradient(64, 64), square_mask()
    body = small_job(init_image=png_b64(init), mask=png_b64(mask, data_url=True), mask_blur=0, strength=0.9, steps=4)
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "done", job["error"]
    assert job["params"]["has_mask"] is True and "Mask blur: 0" in job["images"][0]["infotext"]
    image = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).data))
    outside, inside = outside_and_inside(image, init, mask)
    assert outside == 0 and inside > 5


def test_native_api_mask_errors(client):
    assert_error(client.post("/api/jobs", json=small_job(mask=png_b64(square_mask()))), 400, "mask")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)), mask="")), 400, "mask")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)),
                                                         mask=png_b64(square_mask()), inpainting_fill=7)),
                 400, "inpainting_fill")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)), mask="bad!")),
                 400, "mask")


def test_webuiapi_img2img_with_a_mask(app):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    init, mask = gradient(64, 64), square_mask()
    with ServerHandle(app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=4)
        result = api.img2img(images=[init], mask_image=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                             prompt="a red door", seed=4, width=64, height=64, denoising_strength=0.9)
    outside, inside = outside_and_inside(result.image, init, mask)
    assert outside == 0 and inside > 5
    assert parse_infotext(read_parameters(result.image))["Mask blur"] == "0"
    assert result.info["extra_generation_params"] == {"Mask blur": 0}


def test_sdapi_mask_uses_a1111_api_defaults(client):
    init, mask = gradient(128, 128), square_mask((128, 128), (80, 80, 100, 100))
    body = {"prompt": "x", "init_images": [png_b64(init)], "mask": png_b64(mask), "width": 64, "height": 64,
            "steps": 4, "seed": 2, "denoising_strength": 0.9}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(response.get_json()["images"][0])))
    # A1111's API default is inpaint_full_res (only masked): the whole init image comes back
    assert image.size == (128, 128)
    assert "Inpaint area: Only masked" in json.loads(response.get_json()["info"])["infotexts"][0]


def test_cli_mask(tmp_path, capsys):
    init, mask = gradient(64, 64), square_mask()
    init.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code = main(["generate", "a door", "--model", "demo", "--device", "cpu", "--steps", "4", "--seed", "3",
                 "--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--mask-blur", "0",
                 "--strength", "0.9", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    outside, inside = outside_and_inside(Image.open(out), init, mask)
    assert outside == 0 and inside > 5


def test_cli_mask_needs_an_init_image(tmp_path, capsys):
    square_mask().save(tmp_path / "mask.png")
    assert main(["generate", "x", "--model", "demo", "--mask", str(tmp_path / "mask.png")]) != 0
    assert "mask" in capsys.readouterr().err


def test_outpainting_extends_the_canvas_and_keeps_the_original(engine, small_request):
    init = gradient(64, 48)
    result = engine.generate(small_request(width=None, height=None, steps=4, init_image=init, outpaint=16,
                                           outpaint_directions="left,down", mask_blur=0, inpainting_fill=0,
                                           strength=0.9))
    image = result.images[0]
    assert image.size == (80, 64)  # 16 px on the left and at the bottom
    assert image.crop((16, 0, 80, 48)).tobytes() == init.tobytes()  # the original, untouched
    assert image.crop((0, 0, 16, 64)).tobytes() != Image.new("RGB", (16, 64)).tobytes()
    assert parse_infotext(result.infotexts[0])["Outpaint"] == "16px left down"


def test_outpainting_rounds_to_8_and_is_refused_without_an_init_image(engine, small_request, client):
    from app.engine.inpaint import outpaint_canvas

    canvas, mask = outpaint_canvas(gradient(60, 60), 10, ("right",))
    assert canvas.size == (72, 64)  # 60+10 -> 72 wide, 60 -> 64 high: the rounding goes to the new area too
    assert [mask.getpixel(xy) for xy in ((10, 10), (59, 59), (65, 10), (10, 62))] == [0, 0, 255, 255]
    assert_error(client.post("/api/jobs", json=small_job(outpaint=32)), 400, "outpaint")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)), outpaint=32,
                                                         outpaint_directions="sideways")), 400, "outpaint_directions")
    assert_error(client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)), width=None,
                                                         height=None, outpaint=512)), 400, "outpaint")

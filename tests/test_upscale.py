"""Upscaling any image (issue #12): the engine function, POST /api/upscale,
/sdapi/v1/extra-single-image (webuiapi) and ``python -m app upscale``."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from app.cli import main
from app.engine.types import Limits, ValidationError
from app.engine.upscale import upscale
from helpers import assert_error, gradient, png_b64


def test_upscale_by_factor_and_to_a_size():
    image = gradient(40, 30)
    assert upscale(image, 2).size == (80, 60)
    assert upscale(image, width=100).size == (100, 75)  # the aspect kept
    cropped = upscale(image, width=100, height=100)  # covered and cropped in the middle
    assert cropped.size == (100, 100)
    stretched = upscale(image, width=100, height=100, crop=False)
    assert stretched.size == (100, 100) and cropped.tobytes() != stretched.tobytes()
    # Lanczos, not nearest: a gradient gains in-between values
    assert len(upscale(image, 4).getcolors(1 << 20)) > len(image.getcolors(1 << 20))


@pytest.mark.parametrize("kwargs,field", [
    ({"scale": 20}, "scale"), ({"scale": 0}, "scale"), ({"width": 5000}, "width"), ({"upscaler": "ESRGAN"}, "upscaler"),
])
def test_upscale_limits(kwargs, field):
    with pytest.raises(ValidationError) as err:
        upscale(gradient(40, 30), limits=Limits(max_width=1024, max_height=1024), **kwargs)
    assert err.value.field == field


def test_native_upscale_route(client):
    """Since issue #24 the answer is an Extras job (its image in the gallery); ``?wait`` waits for it."""
    response = client.post("/api/upscale?wait=30", json={"image": png_b64(gradient(40, 30)), "scale": 2})
    assert response.status_code == 202 and response.get_json()["job"]["state"] == "done"
    png = client.get(response.get_json()["job"]["images"][0]["url"])
    assert Image.open(io.BytesIO(png.data)).size == (80, 60)
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(40, 30)), "scale": 200}), 400, "scale")
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(64, 64)), "width": 4096}), 400, "width")
    assert_error(client.post("/api/upscale", json={"scale": 2}), 400, "image")
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(8, 8)), "model": "x"}), 400, "model")


def test_webuiapi_extra_single_image(app):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        names = [u["name"] for u in api.get_upscalers()]
        assert names[:3] == ["None", "Lanczos", "Nearest"] and "R-ESRGAN 4x+" in names  # models: tests/test_upscalers.py
        by = api.extra_single_image(gradient(40, 30), upscaler_1="Lanczos", upscaling_resize=3)
        assert by.image.size == (120, 90)
        to = api.extra_single_image(gradient(40, 30), resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64)
        assert to.image.size == (64, 64)


def test_sdapi_extra_single_image_refusals(client):
    body = {"image": png_b64(gradient(40, 30)), "upscaling_resize": 2}
    assert_error(client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "R-ESRGAN 4x+"}), 400,
                 "upscaler_1")
    from app.engine.extras import faces_available

    if not faces_available():
        assert_error(client.post("/sdapi/v1/extra-single-image", json={**body, "gfpgan_visibility": 0.5}), 400,
                     "gfpgan_visibility")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={**body, "upscaling_resize": 100}), 400,
                 "upscaling_resize")


def test_cli_upscale(tmp_path, capsys):
    gradient(40, 30).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "--scale", "2", "-o", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (80, 60) and "40x30 -> 80x60" in capsys.readouterr().out
    assert main(["upscale", str(tmp_path / "in.png"), "--scale", "100", "-o", str(tmp_path / "x.png")]) != 0
    assert "scale" in capsys.readouterr().err

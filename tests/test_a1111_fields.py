"""Issue #12: an A1111 field that would change the image is honoured or
refused with 400 naming it, never silently ignored; the defaults every
client sends stay accepted."""
from __future__ import annotations

import pytest

from helpers import assert_error, gradient, png_b64

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.mark.parametrize("extra,field", [
    ({"restore_faces": "yes"}, "restore_faces"),  # true is honoured (tests/test_faces.py)
    ({"script_name": "prompt matrix"}, "script_name"),  # X/Y/Z plot: tests/test_xyz.py
    ({"styles": ["cinematic"]}, "styles"),
    ({"alwayson_scripts": {"Regional Prompter": {"args": [True]}}}, "alwayson_scripts"),  # ADetailer, ControlNet: honoured
    ({"override_settings": {"sd_model_checkpoint": "sd-v1-5"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"sd_checkpoint_hash": "abc"}}, "override_settings.sd_checkpoint_hash"),
    ({"hr_prompt": "other"}, "hr_prompt"),
])
def test_txt2img_refuses_what_it_cannot_honour(client, extra, field):
    body = assert_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **extra}), 400, field)
    assert field.split(".")[0] in body["error"]
    assert client.get("/api/jobs").get_json()["jobs"] == []  # refused before any job was queued


@pytest.mark.parametrize("extra,field", [
    ({"resize_mode": 1}, "resize_mode"),
    ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier"),
    ({"restore_faces": 1}, "restore_faces"),
])
def test_img2img_refuses_what_it_cannot_honour(client, extra, field):
    body = {**SMALL, "init_images": [png_b64(gradient(64, 64))], **extra}
    assert_error(client.post("/sdapi/v1/img2img", json=body), 400, field)


@pytest.mark.parametrize("extra,field", [
    ({"eta": 3}, "eta"),
    ({"s_churn": -1}, "s_churn"),
    ({"override_settings": {"randn_source": "TPU"}}, "randn_source"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "clip_skip"),
    ({"override_settings": {"eta_noise_seed_delta": -5}}, "eta_noise_seed_delta"),
    ({"s_min_uncond": 16}, "s_min_uncond"),  # A1111's slider ends at 15; within it, honoured (tests/test_ngms.py)
    ({"override_settings": {"s_min_uncond_all": "on"}}, "s_min_uncond_all"),  # honoured when a bool (test_ngms)
])
def test_sampler_settings_out_of_range_are_refused(client, extra, field):
    assert_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **extra}), 400, field)


def test_sampler_settings_are_honoured_and_written(client):
    # A1111's fields and options: each changes the picture and reads back from the infotext.
    import base64
    import io
    import json

    from PIL import Image

    def run(**extra):
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler a", **extra})
        assert response.status_code == 200, response.get_json()
        data = response.get_json()
        return Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).tobytes(), json.loads(data["info"])

    plain, info = run()
    assert "Eta" not in info["infotexts"][0] and "RNG" not in info["infotexts"][0]
    for extra, written in (({"eta": 0.5}, "Eta: 0.5"), ({"override_settings": {"eta_ancestral": 0.5}}, "Eta: 0.5"),
                           ({"override_settings": {"randn_source": "CPU"}}, "RNG: CPU"),
                           ({"override_settings": {"eta_noise_seed_delta": 31337}}, "ENSD: 31337")):
        pixels, info = run(**extra)
        assert pixels != plain and written in info["infotexts"][0], extra
    pixels, info = run(override_settings={"CLIP_stop_at_last_layers": 2})  # SD 2.x: written, no effect
    assert pixels == plain and "Clip skip: 2" in info["infotexts"][0]
    pixels, info = run(sampler_name="Euler", s_churn=1.0)
    assert "Sigma churn: 1" in info["infotexts"][0]


def test_defaults_and_harmless_settings_are_accepted(client):
    body = {**SMALL, "restore_faces": False, "styles": [], "script_name": None, "script_args": [], "eta": 1.0,
            "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "alwayson_scripts": {"ADetailer": {"args": [False]}},
            "override_settings": {"sd_model_checkpoint": "demo", "CLIP_stop_at_last_layers": 1},
            "firstphase_width": 0, "hr_sampler_name": None, "send_images": True, "save_images": False,
            "disable_extra_networks": False}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 1


def test_options_that_change_a_picture_are_per_job_not_server_wide(client):
    """A shared server: POST /sdapi/v1/options may not change what everyone's pictures look like. A
    server-wide change of such an option is refused, naming it and how to send it per job; posting back
    the values GET /options gave (what clients do) is accepted."""
    current = client.get("/sdapi/v1/options").get_json()
    assert current["always_discard_next_to_last_sigma"] is False and current["CLIP_stop_at_last_layers"] == 1
    assert client.post("/sdapi/v1/options", json=current).status_code == 200
    assert client.post("/sdapi/v1/options", json={"s_noise": 1, "eta_ancestral": 1}).status_code == 200
    for name, value in (("always_discard_next_to_last_sigma", True), ("CLIP_stop_at_last_layers", 2),
                        ("s_min_uncond", 1.5), ("eta_ancestral", 0)):
        body = assert_error(client.post("/sdapi/v1/options", json={name: value}), 400, name)
        assert "override_settings" in body["error"]
    assert client.get("/sdapi/v1/options").get_json() == current  # nothing changed

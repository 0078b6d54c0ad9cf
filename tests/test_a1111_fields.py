"""Issue #12: an A1111 field that would change the image is honoured or
refused with 400 naming it, never silently ignored; the defaults every
client sends stay accepted."""
from __future__ import annotations

import pytest

from helpers import assert_error, gradient, png_b64

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.mark.parametrize("extra,field", [
    ({"restore_faces": True}, "restore_faces"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"alwayson_scripts": {"ControlNet": {"args": [{"module": "canny"}]}}}, "alwayson_scripts"),
    ({"override_settings": {"sd_model_checkpoint": "sd-v1-5"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"s_noise": 0.9}, "s_noise"),
    ({"eta": 0.3}, "eta"),
    ({"hr_prompt": "other"}, "hr_prompt"),
])
def test_txt2img_refuses_what_it_cannot_honour(client, extra, field):
    body = assert_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **extra}), 400, field)
    assert field.split(".")[0] in body["error"]
    assert client.get("/api/jobs").get_json()["jobs"] == []  # refused before any job was queued


@pytest.mark.parametrize("extra,field", [
    ({"resize_mode": 1}, "resize_mode"),
    ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier"),
    ({"restore_faces": True}, "restore_faces"),
])
def test_img2img_refuses_what_it_cannot_honour(client, extra, field):
    body = {**SMALL, "init_images": [png_b64(gradient(64, 64))], **extra}
    assert_error(client.post("/sdapi/v1/img2img", json=body), 400, field)


def test_defaults_and_harmless_settings_are_accepted(client):
    body = {**SMALL, "restore_faces": False, "styles": [], "script_name": None, "script_args": [], "eta": 1.0,
            "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "alwayson_scripts": {"ADetailer": {"args": [False]}},
            "override_settings": {"sd_model_checkpoint": "demo", "CLIP_stop_at_last_layers": 1},
            "firstphase_width": 0, "hr_sampler_name": None, "send_images": True, "save_images": False}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 1

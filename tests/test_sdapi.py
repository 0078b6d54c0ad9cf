"""The A1111-compatible API, driven by the real ``webuiapi`` client from PyPI
against a real server on 127.0.0.1."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
import requests
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters
from app.web.server import ServerHandle
from helpers import assert_error, backend_of, gradient, png_b64

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def server(app):
    with ServerHandle(app, port=0) as handle:
        yield handle


@pytest.fixture
def api(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)


def test_webuiapi_txt2img(api):
    result = api.txt2img(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=123, steps=2,
                         width=64, height=64, cfg_scale=6, batch_size=2)
    assert len(result.images) == 2 and all(im.size == (64, 64) for im in result.images)
    info = result.info
    assert info["seed"] == 123 and info["all_seeds"] == [123, 124]
    assert info["prompt"] == "a lighthouse at dusk" and info["negative_prompt"] == "blurry"
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["cfg_scale"] == 6
    assert (info["width"], info["height"]) == (64, 64) and len(info["infotexts"]) == 2
    assert result.parameters["prompt"] == "a lighthouse at dusk"
    # the PNGs carry their own parameters
    assert parse_infotext(read_parameters(result.images[1]))["Seed"] == "124"


def test_webuiapi_txt2img_with_hires_fix(api):
    result = api.txt2img(prompt="a lighthouse", seed=4, steps=2, width=64, height=64, enable_hr=True, hr_scale=2,
                         hr_upscaler="Latent", hr_second_pass_steps=3, denoising_strength=0.6)
    assert result.image.size == (128, 128)
    text = result.info["infotexts"][0]
    assert "Steps: 2," in text and "Hires steps: 3" in text and "Hires upscale: 2" in text
    assert "Denoising strength: 0.6" in text


def test_webuiapi_img2img_with_karras_scheduler(api):
    result = api.img2img(images=[gradient(64, 64)], prompt="an oil painting", seed=9, steps=4, width=64, height=64,
                         denoising_strength=0.5, sampler_name="DPM++ 2M", scheduler="Karras")
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert (result.info["sampler_name"], result.info["scheduler"]) == ("DPM++ 2M", "Karras")  # as A1111 1.9+
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in result.info["infotexts"][0]
    assert result.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]


def test_webuiapi_listings_options_progress_png_info(api):
    assert api.util_get_model_names() == ["demo"]
    assert api.util_get_current_model() == "demo"
    api.util_set_model("demo")
    assert "Euler a" in api.util_get_sampler_names() and "DPM++ 2M" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)

    image = api.txt2img(prompt="a cat", seed=5, steps=2, width=64, height=64).image
    info = api.png_info(image)
    assert info.info.startswith("a cat\n")
    assert info.json["parameters"]["Seed"] == "5" and info.json["parameters"]["Prompt"] == "a cat"


def test_progress_and_interrupt_during_a_sync_call(api, server):
    results = {}

    def call():
        results["r"] = api.txt2img(prompt="long one", seed=1, steps=100, width=64, height=64)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] >= 1:
            break
        assert time.monotonic() < deadline, progress
        time.sleep(0.02)
    assert progress["state"]["job_count"] == 1 and 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 100
    assert progress["current_image"]  # the live preview, base64 PNG
    Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).verify()
    api.interrupt()
    thread.join(30)
    result = results["r"]
    # As A1111: 200 with the image the interrupted run had reached.
    assert result.info["interrupted"] is True and len(result.images) == 1
    assert "Steps: 100" in result.info["infotexts"][0] and result.images[0].size == (64, 64)
    assert api.get_progress()["state"]["job_count"] == 0


def test_skip_during_a_sync_call_answers_the_images_so_far(api, server):
    assert api.skip() == {"skipped": None}  # nothing running: nothing skipped, and it says so
    results = {}
    thread = threading.Thread(target=lambda: results.update(
        r=api.txt2img(prompt="long one", seed=3, steps=100, width=64, height=64, n_iter=2)))
    thread.start()
    deadline = time.monotonic() + 30
    while api.get_progress()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job_id = api.get_progress()["state"]["job"]
    assert api.skip() == {"skipped": job_id}
    thread.join(30)
    result = results["r"]
    assert result.info["interrupted"] is False and result.info["all_seeds"] == [3, 4]
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    job = requests.get(f"{server.url}/api/jobs/{job_id}").json()["job"]
    assert job["state"] == "done" and job["partial"] is True


def test_sdapi_jobs_share_the_queue_and_gallery(api, server):
    api.txt2img(prompt="shared", seed=11, steps=2, width=64, height=64)
    jobs = requests.get(server.url + "/api/jobs").json()["jobs"]
    assert jobs[0]["params"]["prompt"] == "shared" and jobs[0]["state"] == "done"
    assert requests.get(server.url + jobs[0]["images"][0]["url"]).status_code == 200


def test_unknown_fields_are_ignored_and_sizes_floored(client):
    body = {"prompt": "x", "width": 70, "height": 64, "steps": 2.0, "seed": 3, "enable_hr": False,
            "some_extension_field": {"a": 1}, "sampler_index": "Euler"}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    info = json.loads(response.get_json()["info"])
    assert (info["width"], info["steps"], info["sampler_name"]) == (64, 2, "Euler")


@pytest.mark.parametrize("body,field", [
    ({"prompt": "x", "steps": "many"}, "steps"),
    ({"prompt": "x", "sampler_name": "No Such Sampler"}, "sampler_name"),
    ({"prompt": "x", "scheduler": "polyexponentia"}, "scheduler"),
    ({"prompt": "x", "sampler_name": "Euler a", "scheduler": 7}, "scheduler"),
    ({"prompt": "x", "batch_size": 0}, "batch_size"),
    ({"prompt": "x", "cfg_scale": "high"}, "guidance_scale"),
    ({"prompt": 5}, "prompt"),
])
def test_sdapi_bad_fields(client, body, field):
    body = {"width": 64, "height": 64, "steps": 2, **body}
    assert_error(client.post("/sdapi/v1/txt2img", json=body), 400, field)


def test_img2img_needs_init_images(client):
    assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "x"}), 400, "init_images")
    assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["not base64!"]}),
                 400, "init_image")


def test_options_refuses_another_model(client):
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo", "foo": 1}).status_code == 200
    assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-v1-5"}), 400,
                 "sd_model_checkpoint")


def test_png_info_of_a_plain_image(client):
    response = client.post("/sdapi/v1/png-info", json={"image": png_b64(gradient(8, 8), data_url=True)})
    assert response.get_json() == {"info": "", "items": {}, "parameters": {}, "request": {}}


def test_png_info_reads_an_infotext_into_request_fields(client):
    # What the page fills its form from: A1111's names read as this server's fields, its defaults included.
    from PIL import PngImagePlugin

    text = ("a fox [in:on:5] snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, "
            "CFG scale: 6.5, Seed: 42, Size: 512x768, Eta: 0.5, ENSD: 31337, Clip skip: 2, Variation seed: 7, "
            "Variation seed strength: 0.25, Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.6")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    body = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()}).get_json()
    assert body["request"] == {
        "prompt": "a fox [in:on:5] snow", "negative_prompt": "blurry", "width": 512, "height": 768, "steps": 20,
        "guidance_scale": 6.5, "seed": 42, "scheduler": "Euler a Karras", "strength": 0.6, "eta": 0.5,
        "eta_noise_seed_delta": 31337, "clip_skip": 2, "randn_source": "GPU", "subseed": 7, "subseed_strength": 0.25,
        "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent"}
    # and the request runs as it reads (sizes made small for the demo)
    job = client.post("/api/jobs", json={**body["request"], "width": 64, "height": 64, "steps": 2}).get_json()
    assert job["ok"], job


def test_a_missing_image_file_is_a_clear_error(app, client):
    class EmptyFolder:  # the image folder lost the file (disk cleaned, another process)
        def path(self, job_id, name):
            return None

    backend_of(app).images = EmptyFolder()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 2})
    body = assert_error(response, 500, "job_id")
    assert "missing from the image folder" in body["error"]

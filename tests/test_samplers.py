"""Samplers and schedule types: A1111 1.9+ names in requests, infotexts and the A1111 API."""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from app.engine.metadata import infotext, parse_infotext, read_parameters
from app.engine.schedulers import SCHEDULERS, find_scheduler, from_infotext
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, small_job, wait_job


@pytest.mark.parametrize("name", [s.name for s in SCHEDULERS] + ["LMS Karras", "DPM2 a Karras", "Heun Beta",
                                  "DPM++ 2M SDE Exponential", "Euler SGM Uniform", "DPM++ SDE KL Optimal",
                                  "Euler a Align Your Steps", "DPM++ 2M Simple", "LMS Normal", "Euler DDIM",
                                  "Restart Polyexponential"])
def test_each_sampler_makes_an_image_and_names_itself(engine, small_request, name):
    steps = 4 if name.startswith("UniPC") else 3
    result = engine.generate(small_request(scheduler=name, steps=steps))
    assert result.images[0].size == (64, 64)
    parsed = parse_infotext(result.infotexts[0])
    choice = find_scheduler(name)
    # A1111 writes the schedule that ran: none for the model's own sigmas or a timestep sampler.
    assert parsed["Sampler"] == choice.sampler.name
    assert parsed.get("Schedule type") == (choice.infotext_schedule or "Automatic")
    assert find_scheduler(from_infotext(parsed["Sampler"], parsed["Schedule type"])).resolved_schedule == \
        choice.resolved_schedule


def test_the_schedule_type_changes_the_image(engine, small_request):
    plain = engine.generate(small_request(scheduler="LMS", steps=4)).images[0]
    karras = engine.generate(small_request(scheduler="LMS Karras", steps=4)).images[0]
    assert plain.tobytes() != karras.tobytes()


def test_timestep_samplers_keep_their_timesteps_whatever_the_schedule_type(engine, small_request):
    # A1111 offers both lists side by side and its DDIM ignores the schedule type; so does this server.
    ddim = engine.generate(small_request(scheduler="DDIM", steps=4))
    karras = engine.generate(small_request(scheduler="DDIM Karras", steps=4))
    assert ddim.images[0].tobytes() == karras.images[0].tobytes()
    assert "Schedule type" not in karras.infotexts[0]


@pytest.mark.parametrize("name", ["Euler Bogus", "Euler z", "DPM++ 9M", ""])
def test_unknown_names_are_refused_naming_the_field(name):
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="a fox", scheduler=name).validate()
    assert info.value.field == "scheduler"


def test_unipc_below_its_order_is_refused():
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="a fox", scheduler="UniPC", steps=2).validate()
    assert info.value.field == "steps" and "UniPC" in info.value.message


def test_dpmpp_sde_noise_follows_the_seed(engine, small_request):
    # Its noise comes from Brownian trees: seeded per image from the image's seed (as A1111 does), one seed
    # gives the same image every run; unseeded trees would differ run to run.
    first = engine.generate(small_request(scheduler="DPM++ SDE Karras", steps=3, seed=11)).images[0]
    again = engine.generate(small_request(scheduler="DPM++ SDE Karras", steps=3, seed=11)).images[0]
    other = engine.generate(small_request(scheduler="DPM++ SDE Karras", steps=3, seed=12)).images[0]
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    # One tree per image: the second image of a batch is the image its own seed gives alone (up to the
    # rounding a batched convolution differs by: a level or two, where another seed moves pixels a lot).
    batch = engine.generate(small_request(scheduler="DPM++ SDE Karras", steps=3, seed=11, num_images=2))
    assert batch.seeds == [11, 12]
    assert _max_difference(batch.images[0], first) <= 2 and _max_difference(batch.images[1], other) <= 2
    assert _max_difference(first, other) > 20


def _max_difference(a, b) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def test_old_and_new_infotexts_read_back_the_same():
    new = infotext(prompt="a fox", negative_prompt="", steps=2, sampler="DPM++ 2M Karras", cfg_scale=7,
                   seed=1, width=64, height=64, model="demo")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in new
    old = new.replace("Sampler: DPM++ 2M, Schedule type: Karras", "Sampler: DPM++ 2M Karras")
    for text in (new, old):
        parsed = parse_infotext(text)
        assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")
        assert from_infotext(parsed["Sampler"], parsed["Schedule type"]) == "DPM++ 2M Karras"
    assert from_infotext("Euler a", "Automatic") == "Euler a"
    assert from_infotext("DPM++ 2M", "KL Optimal") == "DPM++ 2M KL Optimal"
    assert from_infotext("DPM++ 2M", "Bogus") is None


def _txt2img(client, **fields):
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 5, **fields}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    return data, parse_infotext(read_parameters(image))


def test_a1111_api_sampler_and_scheduler_fields(client):
    # A1111 1.9+: "Automatic" (or no scheduler) is the sampler's own default, Karras for DPM++ 2M.
    for fields in ({"sampler_name": "DPM++ 2M"}, {"sampler_name": "DPM++ 2M", "scheduler": "Automatic"},
                   {"sampler_name": "DPM++ 2M Karras"}, {"sampler_name": "DPM++ 2M", "scheduler": "karras"}):
        data, parsed = _txt2img(client, **fields)
        assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras"), fields
    data, parsed = _txt2img(client, sampler_name="LMS", scheduler="Exponential")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("LMS", "Exponential")
    data, parsed = _txt2img(client, sampler_name="DPM++ SDE")  # A1111's Automatic for it: Karras
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ SDE", "Karras")
    data, parsed = _txt2img(client, sampler_name="Euler a")  # the model's own sigmas: A1111 writes no type
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("Euler a", "Automatic")
    assert "Schedule type" not in json.loads(data["info"])["infotexts"][0]
    data, parsed = _txt2img(client, sampler_name="DDIM", scheduler="Karras")
    assert parsed["Sampler"] == "DDIM"
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "DDIM", "scheduler": "Bogus"})
    assert "unknown schedule type" in assert_error(response, 400, "scheduler")["error"]


def test_a1111_api_lists_samplers_and_schedulers(client):
    listed = client.get("/sdapi/v1/samplers").get_json()
    assert [s["name"] for s in listed] == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
        "PLMS", "UniPC", "LCM"]
    samplers = {s["name"]: s for s in listed}
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert samplers["DPM++ 3M SDE"]["options"] == {"scheduler": "exponential", "discard_next_to_last_sigma": True,
                                                   "brownian_noise": True}
    assert samplers["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    schedulers = client.get("/sdapi/v1/schedulers").get_json()
    assert [(s["name"], s["label"]) for s in schedulers] == [
        ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"),
        ("beta", "Beta")]
    assert schedulers[2]["default_rho"] == 7.0 and schedulers[5]["aliases"] == ["SGMUniform"]


def test_png_info_splits_an_old_sampler_name(client):
    from PIL import PngImagePlugin

    old = "a fox\nSteps: 2, Sampler: DPM2 a Karras, CFG scale: 7, Seed: 1, Size: 64x64"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", old)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    body = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()}).get_json()
    assert (body["parameters"]["Sampler"], body["parameters"]["Schedule type"]) == ("DPM2 a", "Karras")


def test_native_api_takes_the_combined_name(client):
    job = client.post("/api/jobs", json=small_job(scheduler="heun karras")).get_json()["job"]
    job = wait_job(client, job["id"])
    assert job["state"] == "done" and job["params"]["scheduler"] == "Heun Karras"
    assert "Sampler: Heun, Schedule type: Karras" in job["images"][0]["infotext"]


def test_dpmpp_sde_through_the_api_and_png_info(client):
    # Listed for the page, the CLI and the notebook; the old one-word name and the infotext read back.
    listing = client.get("/api/schedulers").get_json()
    assert "DPM++ SDE" in listing["samplers"] and "Karras" in listing["schedule_types"]
    job = client.post("/api/jobs", json=small_job(scheduler="k_dpmpp_sde_ka", seed=4)).get_json()["job"]
    job = wait_job(client, job["id"])
    assert job["state"] == "done" and job["params"]["scheduler"] == "DPM++ SDE Karras"
    png = client.get(job["images"][0]["url"]).data
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()}).get_json()
    assert (info["parameters"]["Sampler"], info["parameters"]["Schedule type"]) == ("DPM++ SDE", "Karras")
    assert str(info["parameters"]["Seed"]) == "4"
    assert from_infotext(info["parameters"]["Sampler"], info["parameters"]["Schedule type"]) == "DPM++ SDE Karras"

"""Samplers and schedule types: A1111 1.9+ names in requests, infotexts and the A1111 API."""
from __future__ import annotations

import base64
import inspect
import io

import pytest
from PIL import Image

from app.engine.metadata import infotext, parse_infotext, read_parameters
from app.engine.schedulers import SCHEDULE_TYPES, SCHEDULERS, find_scheduler, from_infotext, supported_schedules
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, small_job, wait_job


def test_schedule_table_matches_diffusers():
    import diffusers

    for sampler in SCHEDULERS:
        params = inspect.signature(getattr(diffusers, sampler.class_name).__init__).parameters
        takes = {t.name for t in SCHEDULE_TYPES if all(k in params for k in t.options)}
        assert {t.name for t in supported_schedules(sampler)} == takes, sampler.name


@pytest.mark.parametrize("name", ["LMS", "LMS Karras", "DPM2", "DPM2 a Karras", "Heun", "DPM++ 2M SDE Exponential",
                                  "DPM++ 3M SDE", "Euler SGM Uniform", "UniPC Beta", "DPM++ SDE",
                                  "DPM++ SDE Karras"])
def test_each_sampler_makes_an_image_and_names_itself(engine, small_request, name):
    result = engine.generate(small_request(scheduler=name, steps=3))
    assert result.images[0].size == (64, 64)
    parsed = parse_infotext(result.infotexts[0])
    choice = find_scheduler(name)
    assert (parsed["Sampler"], parsed["Schedule type"]) == (choice.sampler.name, choice.schedule.label)
    assert from_infotext(parsed["Sampler"], parsed["Schedule type"]) == name


def test_the_schedule_type_changes_the_image(engine, small_request):
    plain = engine.generate(small_request(scheduler="LMS", steps=4)).images[0]
    karras = engine.generate(small_request(scheduler="LMS Karras", steps=4)).images[0]
    assert plain.tobytes() != karras.tobytes()


@pytest.mark.parametrize("name", ["Euler a Karras", "DDIM Exponential", "LMS Polyexponential", "DPM++ 2S a"])
def test_unavailable_pairs_are_refused_naming_the_field(name):
    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="a fox", scheduler=name).validate()
    assert info.value.field == "scheduler"


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


def test_dpmpp_sde_trees_are_seeded_by_make_scheduler():
    from app.engine.schedulers import make_scheduler

    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}
    assert make_scheduler("DPM++ SDE", config, [5, 6]).config.noise_sampler_seed == [5, 6]
    assert make_scheduler("DPM++ SDE Karras", config).config.use_karras_sigmas is True


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
    assert from_infotext("DPM++ 2M", "KL Optimal") is None


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
    data, parsed = _txt2img(client, sampler_name="Euler a")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("Euler a", "Automatic")
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "DDIM", "scheduler": "Karras"})
    assert "DDIM does not take the Karras schedule" in assert_error(response, 400, "scheduler")["error"]


def test_a1111_api_lists_samplers_and_schedulers(client):
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").get_json()}
    assert {"LMS", "DPM2", "DPM2 a", "Heun", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE"} <= set(samplers)
    assert samplers["DPM++ 2M"]["options"] == samplers["DPM++ SDE"]["options"] == {"scheduler": "karras"}
    schedulers = {s["name"]: s["label"] for s in client.get("/sdapi/v1/schedulers").get_json()}
    assert schedulers == {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras",
                          "exponential": "Exponential", "sgm_uniform": "SGM Uniform", "beta": "Beta"}


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
    names = client.get("/api/schedulers").get_json()["schedulers"]
    assert {"DPM++ SDE", "DPM++ SDE Karras"} <= set(names)
    job = client.post("/api/jobs", json=small_job(scheduler="k_dpmpp_sde_ka", seed=4)).get_json()["job"]
    job = wait_job(client, job["id"])
    assert job["state"] == "done" and job["params"]["scheduler"] == "DPM++ SDE Karras"
    png = client.get(job["images"][0]["url"]).data
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()}).get_json()
    assert (info["parameters"]["Sampler"], info["parameters"]["Schedule type"]) == ("DPM++ SDE", "Karras")
    assert str(info["parameters"]["Seed"]) == "4"
    assert from_infotext(info["parameters"]["Sampler"], info["parameters"]["Schedule type"]) == "DPM++ SDE Karras"

"""A1111's option "Always discard next-to-last sigma" (``always_discard_next_to_last_sigma``), the second
request field added as issue #23's demonstration: its facts in app/engine/types.py and its sampling in
app/engine/sampling/run.py, nothing else in the app's code. The sampling itself is compared with
k-diffusion as A1111 runs it in test_a1111_fidelity; here every place a user meets it: the infotext,
PNG Info, the native and A1111 APIs, the CLI, the X/Y/Z plot, the notebook form and the page."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import parse_infotext, read_parameters
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, b64_png, small_job, wait_job

FIELD = "always_discard_next_to_last_sigma"
ENTRY = "Discard penultimate sigma: True"


@pytest.mark.parametrize("sampler", ["Euler", "LCM"])  # LCM: A1111's LCMSampler is a KDiffusionSampler too
def test_it_is_written_where_it_applies_and_read_back(engine, small_request, sampler):
    plain = engine.generate(small_request(scheduler=sampler, steps=4))
    result = engine.generate(small_request(scheduler=sampler, steps=4, **{FIELD: True}))
    assert ENTRY not in plain.infotexts[0] and ENTRY in result.infotexts[0]
    assert plain.images[0].tobytes() != result.images[0].tobytes()
    assert request_from_infotext(result.infotexts[0])[FIELD] is True
    assert FIELD not in request_from_infotext(plain.infotexts[0])


@pytest.mark.parametrize("sampler", ["DPM2", "DDIM", "UniPC"])
def test_where_it_changes_nothing_the_picture_and_infotext_are_the_plain_ones(engine, small_request, sampler):
    """DPM2 always discards; the timestep samplers never do (A1111 applies the option to neither)."""
    plain = engine.generate(small_request(scheduler=sampler, steps=4))
    asked = engine.generate(small_request(scheduler=sampler, steps=4, **{FIELD: True}))
    assert asked.images[0].tobytes() == plain.images[0].tobytes()
    assert asked.infotexts[0] == plain.infotexts[0] and "Discard" not in asked.infotexts[0]


def test_it_must_be_true_or_false():
    GenerationRequest(prompt="x", **{FIELD: True}).validate()
    for bad in ("yes", 1, None):
        with pytest.raises(ValidationError) as err:
            GenerationRequest(prompt="x", **{FIELD: bad}).validate()
        assert err.value.field == FIELD


def test_the_native_api_keeps_it_on_the_job_for_reuse(client):
    job = client.post("/api/jobs", json=small_job(scheduler="Euler", steps=3, **{FIELD: True})).get_json()["job"]
    assert job["params"][FIELD] is True
    done = wait_job(client, job["id"])
    assert ENTRY in done["images"][0]["infotext"]
    assert client.get(f"/api/jobs/{job['id']}").get_json()["job"]["params"][FIELD] is True
    body = assert_error(client.post("/api/jobs", json=small_job(**{FIELD: "yes"})), 400, FIELD)
    assert body["value"] == repr("yes")  # the one error shape shows a value as Python writes it


def test_sdapi_takes_a1111s_option_per_job_and_png_info_reads_it(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "seed": 3, "sampler_name": "Euler"}
    plain = client.post("/sdapi/v1/txt2img", json=body).get_json()
    response = client.post("/sdapi/v1/txt2img",
                           json={**body, "override_settings": {"always_discard_next_to_last_sigma": True}})
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert ENTRY in json.loads(data["info"])["infotexts"][0] and data["images"][0] != plain["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).get_json()
    assert info["parameters"]["Discard penultimate sigma"] == "True" and info["request"][FIELD] is True
    bad = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {FIELD: "sure"}})
    assert_error(bad, 400, FIELD)


def test_the_cli_flag(tmp_path):
    from app.cli import main

    out = tmp_path / "discard.png"
    assert main(["generate", "a fox", "--model", "demo", "--device", "cpu", "--width", "64", "--height", "64",
                 "--steps", "3", "--seed", "1", "--sampler", "Euler", "--discard-penultimate-sigma",
                 "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert ENTRY in read_parameters(image)


def test_the_xyz_axis_plots_true_and_false(client):
    # A1111's txt2img axis index 35 is "Always discard next-to-last sigma", its values True and False.
    args = [35, "False, True", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 3,
                                                      "seed": 5, "sampler_name": "Euler",
                                                      "script_name": "X/Y/Z plot", "script_args": args})
    assert response.status_code == 200, response.get_data(as_text=True)
    cells = [parse_infotext(read_parameters(b64_png(image))) for image in response.get_json()["images"][1:]]
    assert [cell.get("Discard penultimate sigma") for cell in cells] == [None, "True"]
    bad = [35, "False, maybe", [], *args[3:]]
    answer = assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "script_name": "X/Y/Z plot",
                                                                 "script_args": bad}), 400)
    assert answer["value"] == repr("maybe") and "True or False" in answer["error"]


def test_the_notebook_form_has_its_checkbox(engine, tmp_path):
    from app.notebook.widgets import GeneratorUI

    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    box = ui.advanced.inputs[FIELD]  # from its facts
    assert (type(box).__name__, box.value, box.description) == ("Checkbox", False, "Discard penultimate sigma")
    ui.prompt.value, ui.seed.value, ui.scheduler.value = "a lighthouse", 3, "Euler"
    box.value = True
    assert getattr(ui.request(), FIELD) is True
    ui.button.click()
    with Image.open(ui.saved[0]) as saved:
        assert ENTRY in saved.info["parameters"]


def test_the_page_has_its_checkbox(client):
    page = client.get("/").get_data(as_text=True)
    assert f'name="{FIELD}"' in page and "Discard next-to-last sigma" in page
    assert '<option value="Always discard next-to-last sigma"' in page  # the X/Y/Z axis list

"""The generate form is the request (issue #23): its controls named by the request's field names are
read and written from the field list, so a new field needs only its input in templates/index.html.
Real Chromium against a demo-model server; the request the page sends is read off the wire."""
from __future__ import annotations

import pytest

from browser_helpers import sent_job_body, submit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A field of the request type that the page has no box for: the test adds one, as a template would.
NEW_FIELD = """() => { const box = document.createElement('input');
    box.id = box.name = 'face_detail_negative_prompt'; box.type = 'text'; box.value = 'blurry face';
    document.getElementById('face_detail_prompt').after(box); }"""


def test_a_new_field_needs_only_its_input_and_other_modes_drop_out(serve, page):
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.evaluate(NEW_FIELD)
    body = sent_job_body(page, lambda: submit(page, "a fox", width=64, height=64, steps=2, seed=3))
    assert body["face_detail_negative_prompt"] == "blurry face"
    assert (body["width"], body["steps"], body["seed"], body["tiling"]) == (64, 2, 3, False)  # typed by the input
    # No init image: img2img's fields (a disabled fieldset) are not sent, nor the init strength.
    assert not {"mask_blur", "outpaint", "inpainting_fill", "strength", "init_image"} & set(body)
    assert "eta" not in body  # an empty box is left out: the server's default

    page.wait_for_selector("#job[data-state=done]")
    job_id = page.get_attribute("#job", "data-job")
    job = page.request.get(f"{server.url}/api/jobs/{job_id}").json()["job"]
    assert job["params"]["face_detail_negative_prompt"] == "blurry face"
    # Reuse writes it back from the job's params, like every named box; a field the params lack takes its default.
    page.eval_on_selector("#face_detail_negative_prompt", "box => { box.value = ''; }")
    page.fill("#steps", "9")
    page.click("#reuse")
    assert page.input_value("#face_detail_negative_prompt") == "blurry face"
    assert page.get_attribute("#faces-section", "open") is not None  # a section holding a changed value opens
    assert page.input_value("#steps") == "2"


def test_hires_fields_drop_out_with_an_init_image(serve, page, tmp_path):
    from PIL import Image

    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#hires-section > summary")
    page.check("#enable_hr")
    Image.new("RGB", (64, 64), (90, 140, 200)).save(tmp_path / "init.png")
    page.set_input_files("#init_image", str(tmp_path / "init.png"))
    page.wait_for_function("() => document.getElementById('mask-canvas').width > 0")
    assert page.is_disabled("#enable_hr") and page.is_disabled("#subseed_strength") and page.is_enabled("#mask_blur")
    body = sent_job_body(page, lambda: submit(page, "a fox", steps=2))
    assert body["init_image"].startswith("data:image/png;base64,") and body["strength"] == 0.75
    assert not {"enable_hr", "hr_scale", "subseed_strength"} & set(body)
    assert body["mask_blur"] == 4 and body["inpainting_fill"] == 1  # a select typed by its field's default


def _round_trip(serve, page, set_field, prompt: str, seed: int, entry: str) -> dict:
    """A demonstration field through the page with no JavaScript of its own: ``set_field`` sets it in the
    opened sampler section; the job runs, its image's infotext holds ``entry`` on the job and in the gallery,
    and Reuse there fills the form again (its sampler section opened: it holds a changed value). Returns the
    request the page sent."""
    server = serve()
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#sampler-section > summary")
    set_field()
    body = sent_job_body(page, lambda: submit(page, prompt, width=64, height=64, steps=3, seed=seed))
    page.wait_for_selector("#job[data-state=done]")
    job_id = page.get_attribute("#job", "data-job")
    job = page.request.get(f"{server.url}/api/jobs/{job_id}").json()["job"]
    assert entry in job["images"][0]["infotext"]
    body["params"] = job["params"]

    page.goto(server.url + "/gallery")
    tile = page.locator(f"article.tile[data-job='{job_id}']").first
    assert entry in tile.locator("pre.infotext").text_content()
    tile.locator(".menu-button").focus()
    page.keyboard.press("Enter")
    tile.get_by_role("menuitem", name="Reuse settings").click()
    page.wait_for_function(f"() => document.getElementById('prompt').value === {prompt!r}")
    assert page.get_attribute("#sampler-section", "open") is not None
    assert page.input_value("#seed") == str(seed)
    return body


def test_ngms_round_trips_form_job_gallery_and_reuse(serve, page):
    """The issue's demonstration field (A1111's NGMS, s_min_uncond), added with no JavaScript: typed in
    the form, on the job and in its image's infotext, shown in the gallery, and put back by Reuse."""
    sent = _round_trip(serve, page, lambda: page.fill("#s_min_uncond", "2.5"), "a lighthouse", 5, "NGMS: 2.5")
    assert sent["s_min_uncond"] == 2.5 and sent["params"]["s_min_uncond"] == 2.5
    assert page.input_value("#s_min_uncond") == "2.5"


def test_discard_next_to_last_sigma_round_trips_form_job_gallery_and_reuse(serve, page):
    """The second demonstration field (A1111's "Always discard next-to-last sigma"), a checkbox with no
    JavaScript of its own: sent as true, on the job and its infotext, in the gallery, checked again by Reuse."""
    sent = _round_trip(serve, page, lambda: page.check("#always_discard_next_to_last_sigma"), "a harbour", 7,
                       "Discard penultimate sigma: True")
    assert sent["always_discard_next_to_last_sigma"] is True and sent["params"]["always_discard_next_to_last_sigma"] is True
    assert page.is_checked("#always_discard_next_to_last_sigma")
    page.uncheck("#always_discard_next_to_last_sigma")  # and unchecked, it is sent as false
    body = sent_job_body(page, lambda: submit(page, "a harbour", width=64, height=64, steps=3, seed=7))
    assert body["always_discard_next_to_last_sigma"] is False

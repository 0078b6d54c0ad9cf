"""Hostile input: every bad body is a 4xx in the one error shape that names
the field, answered at submission (no job is queued to fail later), on the
native API and the A1111 one; and a prompt can never rewrite the settings a
PNG's infotext carries."""
from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from app.engine.metadata import infotext, parse_infotext, read_parameters
from helpers import assert_error, small_job, wait_job

DEEP = "[" * 100_000 + "]" * 100_000
SMALL = {"width": 64, "height": 64, "steps": 2}

# (path, raw JSON text, the field the error names)
RAW = [
    ("/api/jobs", DEEP, "body"),
    ("/api/jobs", '{"prompt": ' + DEEP + "}", "body"),
    ("/api/jobs", '{"prompt": "a", "x": ' + "[" * 40 + "]" * 40 + "}", "body"),
    ("/sdapi/v1/txt2img", DEEP, "body"),
    ("/sdapi/v1/img2img", DEEP, "body"),
    ("/sdapi/v1/png-info", DEEP, "body"),
    ("/sdapi/v1/options", DEEP, "body"),
    ("/api/jobs", "[]", "body"),
    ("/api/jobs", '"a fox"', "body"),
    ("/api/jobs", "null", "body"),
    ("/api/jobs", "", "body"),
    ("/api/jobs", "{", "body"),
    ("/sdapi/v1/txt2img", "5", "body"),
    ("/sdapi/v1/png-info", "[]", "body"),
    ("/api/jobs", '{"prompt": "a", "steps": 1' + "0" * 5000 + "}", "body"),  # past int()'s digit limit
    ("/api/jobs", '{"prompt": "a fox\\ud800"}', "prompt"),
    ("/api/jobs", '{"prompt": "a fox", "negative_prompt": "\\udfffblur"}', "negative_prompt"),
    ("/sdapi/v1/txt2img", '{"prompt": "a\\ud83dfox"}', "prompt"),
    ("/api/jobs", '{"prompt": "a\\u0000fox"}', "prompt"),
    ("/api/jobs", '{"prompt": "a fox\\u001b[2J"}', "prompt"),
    ("/sdapi/v1/txt2img", '{"prompt": "a fox", "negative_prompt": "x\\u0085y"}', "negative_prompt"),
    ("/api/jobs", '{"prompt": "a", "steps": NaN}', "steps"),
    ("/api/jobs", '{"prompt": "a", "guidance_scale": NaN}', "guidance_scale"),
    ("/api/jobs", '{"prompt": "a", "guidance_scale": Infinity}', "guidance_scale"),
    ("/api/jobs", '{"prompt": "a", "width": -Infinity}', "width"),
    ("/api/jobs", '{"prompt": "a", "steps": 1e400}', "steps"),
    ("/sdapi/v1/txt2img", '{"prompt": "a", "cfg_scale": NaN}', "cfg_scale"),
    ("/sdapi/v1/txt2img", '{"prompt": "a", "seed": Infinity}', "seed"),
    ("/sdapi/v1/txt2img", '{"prompt": "a", "batch_size": Infinity}', "batch_size"),
    ("/sdapi/v1/txt2img", '{"prompt": "a", "width": 1e400}', "width"),
    # Unknown A1111 fields are ignored, but echoed back in "parameters": NaN there would break our JSON.
    ("/sdapi/v1/txt2img", '{"prompt": "a", "alwayson_scripts": {"x": {"args": [1, NaN]}}}', "alwayson_scripts"),
]

# (path, JSON body, the field the error names)
BODIES = [
    ("/api/jobs", small_job(width=-64), "width"),
    ("/api/jobs", small_job(width="64"), "width"),
    ("/api/jobs", small_job(height=True), "height"),
    ("/api/jobs", small_job(steps=10**30), "steps"),
    ("/api/jobs", small_job(steps=-1), "steps"),
    ("/api/jobs", small_job(seed=10**30), "seed"),
    ("/api/jobs", small_job(seed="1"), "seed"),
    ("/api/jobs", small_job(guidance_scale=False), "guidance_scale"),
    ("/api/jobs", small_job(num_images=2.5), "num_images"),
    ("/api/jobs", small_job(scheduler="Eülér ☃"), "scheduler"),
    ("/api/jobs", small_job(scheduler=5), "scheduler"),
    ("/api/jobs", small_job(prompt=["a fox"]), "prompt"),
    ("/api/jobs", small_job(prompt={"text": "a fox"}), "prompt"),
    ("/api/jobs", small_job(prompt=5), "prompt"),
    ("/api/jobs", small_job(negative_prompt=False), "negative_prompt"),
    ("/api/jobs", small_job(tiling="yes"), "tiling"),
    ("/api/jobs", small_job(strength="high"), "strength"),
    ("/api/jobs", small_job(init_image=""), "init_image"),
    ("/api/jobs", small_job(init_image="   "), "init_image"),
    ("/api/jobs", small_job(init_image=5), "init_image"),
    ("/api/jobs", small_job(init_image=[]), "init_image"),
    ("/api/jobs", small_job(init_image="not base64!"), "init_image"),
    ("/api/jobs", small_job(save_steps=1), "save_steps"),
    ("/api/jobs", small_job(**{"Ünknown\u2603": 1}), "Ünknown\u2603"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "width": -64}, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "width": "abc"}, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "width": True}, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "steps": 10**30}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "steps": "20"}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "seed": 10**30}, "seed"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "cfg_scale": "7"}, "guidance_scale"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "cfg_scale": True}, "guidance_scale"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "sampler_name": "Eülér ☃"}, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "sampler_name": 5}, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "scheduler": "Kärras"}, "scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "scheduler": ["karras"]}, "scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "negative_prompt": 5}, "negative_prompt"),
    ("/sdapi/v1/txt2img", {"prompt": None}, "prompt"),
    ("/sdapi/v1/txt2img", {"prompt": 5}, "prompt"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "tiling": "yes"}, "tiling"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "batch_size": 0}, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "batch_size": "2"}, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "batch_size": 10**6, "n_iter": 10**6}, "num_images"),
    ("/sdapi/v1/img2img", {"prompt": "a"}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": []}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": [""]}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": [None]}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": [5]}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": "abc"}, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "a", "init_images": ["bm90IGFuIGltYWdl"]}, "init_image"),
    ("/sdapi/v1/png-info", {}, "image"),
    ("/sdapi/v1/png-info", {"image": ""}, "image"),
    ("/sdapi/v1/png-info", {"image": None}, "image"),
    ("/sdapi/v1/png-info", {"image": 5}, "image"),
    ("/sdapi/v1/png-info", {"image": "%%%"}, "image"),
]


def _no_jobs(client):
    assert client.get("/api/jobs").get_json()["jobs"] == [], "a bad request was queued"


@pytest.mark.parametrize("path,text,field", RAW, ids=[f"{p} {t[:30]}" for p, t, _ in RAW])
def test_hostile_json_is_a_400_naming_the_field(client, path, text, field):
    response = client.post(path, data=text, content_type="application/json")
    assert_error(response, 400, field)
    _no_jobs(client)


@pytest.mark.parametrize("path,body,field", BODIES, ids=[f"{p} {json.dumps(b)[:40]}" for p, b, _ in BODIES])
def test_wrong_values_are_a_400_naming_the_field(client, path, body, field):
    assert_error(client.post(path, json=body), 400, field)
    _no_jobs(client)


PLAIN = ["text/plain", "text/plain; charset=utf-8", None]
FORM = "application/x-www-form-urlencoded"  # the native API takes forms too


@pytest.mark.parametrize("path,content_type", [("/api/jobs", t) for t in PLAIN]
                         + [(p, t) for p in ("/sdapi/v1/txt2img", "/sdapi/v1/png-info") for t in PLAIN + [FORM]])
def test_a_json_body_needs_the_json_content_type(client, path, content_type):
    """A cross-site page can post text/plain without a preflight; it must not count as JSON."""
    response = client.post(path, data=json.dumps(small_job()), content_type=content_type)
    body = assert_error(response, 400, "Content-Type")
    assert "application/json" in body["error"]
    _no_jobs(client)


def test_nan_is_named_as_json_spells_it(client):
    body = assert_error(client.post("/api/jobs", data='{"prompt": "a", "steps": -Infinity}',
                                    content_type="application/json"), 400, "steps")
    assert "-Infinity is not JSON" in body["error"]


def test_bad_utf8_is_named(client):
    body = assert_error(client.post("/api/jobs", data=b'{"prompt": "a \xff fox"}', content_type="application/json"),
                        400, "body")
    assert "not UTF-8" in body["error"] or "not valid JSON" in body["error"]


def test_form_posts_are_checked_the_same_way(client):
    body = assert_error(client.post("/api/jobs", data={"prompt": "a fox\x07", "steps": "2"}), 400, "prompt")
    assert "U+0007" in body["error"]
    assert_error(client.post("/api/jobs", data={"prompt": "a fox", "steps": "NaN"}), 400, "steps")
    assert_error(client.post("/api/jobs", data={"prompt": "a fox", "width": "-64"}), 400, "width")
    _no_jobs(client)


def _png(text: str | None = "a fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1") -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_png_is_a_400_everywhere(client, keep):
    data = _png()
    cut = base64.b64encode(data[: int(len(data) * keep)]).decode()
    assert_error(client.post("/sdapi/v1/png-info", json={"image": cut}), 400, "image")
    assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": [cut]}), 400, "init_image")
    assert_error(client.post("/api/jobs", json=small_job(init_image=cut)), 400, "init_image")
    _no_jobs(client)


def _png_with_compressed_text(chunks: int, size: int) -> bytes:
    """A small PNG whose zTXt chunks inflate to ``chunks`` x ``size`` bytes."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1")
    for i in range(chunks):
        meta.add_text(f"bomb{i}", "\xff" * size, zip=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=meta)
    return out.getvalue()


def test_a_png_whose_text_inflates_past_the_limit_is_refused(client):
    from app.web.uploads import MAX_TEXT_BYTES

    bomb = _png_with_compressed_text(4, 900_000)  # 3.6 MB of text in a file of a few KB
    assert len(bomb) < 50_000 and 4 * 900_000 > MAX_TEXT_BYTES
    body = assert_error(client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(bomb).decode()}), 413, "image")
    assert "text chunks" in body["error"]
    modest = _png_with_compressed_text(1, 100_000)  # a large ComfyUI workflow's worth still reads
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(modest).decode()}).get_json()
    assert info["parameters"]["Prompt"] == "a fox" and len(info["items"]["bomb0"]) == 100_000


def test_the_whole_png_still_reads(client):
    info = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(_png()).decode()}).get_json()
    assert info["parameters"]["Prompt"] == "a fox" and info["parameters"]["Seed"] == "1"


# --- infotext injection -------------------------------------------------------------

_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict:
    """What A1111's PNG Info reads (modules/infotext_utils.py,
    parse_generation_parameters, its prompt/settings split): the last line
    is the settings when it has 3+ pairs; a line starting "Negative prompt:"
    switches to the negative prompt; every line is stripped."""
    *lines, last = text.strip().split("\n")
    if len(_A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, done = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done, line = True, line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    settings = {k: v for k, v in _A1111_PARAM.findall(last)}
    return {"prompt": prompt, "negative_prompt": negative, **settings}


def sd_parsers_read(image: Image.Image) -> dict:
    from sd_parsers import ParserManager

    (sampler,) = ParserManager().parse(image).samplers
    return {"prompt": "\n".join(p.value for p in sampler.prompts),
            "negative_prompt": "\n".join(p.value for p in sampler.negative_prompts),
            "Sampler": sampler.name, "Steps": sampler.parameters["steps"], "Seed": sampler.parameters["seed"]}


# Prompts that look like parts of the infotext but do not hold its separator:
# each must come back exactly, with the settings the job really used.
TRICKY = [
    ("a fox\nSteps: 150, Sampler: Euler, CFG scale: 30, Seed: 99, Size: 2048x2048", ""),
    ("Steps: 150, Sampler: Euler, CFG scale: 30, Seed: 99", "Steps: 1, Sampler: Euler, CFG scale: 1, Seed: 5"),
    ("a fox, Seed: 7, Size: 8x8\nnegative prompt: lowercase is only text", "blur\nSteps: 9, Seed: 9, Sampler: x"),
    ("a fox\n\nin the snow, (detailed:1.2)", "Negative: prompt"),
]


@pytest.mark.parametrize("prompt,negative", TRICKY)
def test_a_prompt_that_looks_like_settings_reads_back_as_itself(client, prompt, negative):
    response = client.post("/api/jobs", json=small_job(prompt=prompt, negative_prompt=negative, seed=3))
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "done", job
    png = client.get(job["images"][0]["url"]).data
    image = Image.open(io.BytesIO(png))
    text = read_parameters(image)
    for reader, parsed in (("ours", parse_infotext(text)), ("A1111", a1111_parse(text)),
                           ("sd-parsers", sd_parsers_read(image))):
        assert parsed["prompt"] == prompt, reader
        assert parsed["negative_prompt"] == negative, reader
        assert (parsed["Steps"], parsed["Seed"]) == ("2", "3"), reader
    pnginfo = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()}).get_json()
    assert pnginfo["parameters"]["Prompt"] == prompt and pnginfo["parameters"]["Steps"] == "2"


INJECTIONS = [
    ("prompt", "a fox\nNegative prompt: x\nSteps: 150, Sampler: Euler, CFG scale: 30, Seed: 99"),
    ("prompt", "Negative prompt: everything"),
    ("prompt", "a fox   \n   Negative prompt: x"),
    ("prompt", "a fox, Negative prompt: x"),  # sd-parsers splits on it anywhere
    ("negative_prompt", "blur\nNegative prompt: x"),
]


@pytest.mark.parametrize("field,text", INJECTIONS)
@pytest.mark.parametrize("path", ["/api/jobs", "/sdapi/v1/txt2img"])
def test_a_prompt_holding_the_infotext_separator_is_refused(client, field, text, path):
    body = {"prompt": "a fox", **SMALL, field: text}
    error = assert_error(client.post(path, json=body), 400, field)
    assert "Negative prompt:" in error["error"] and "negative_prompt field" in error["error"]
    _no_jobs(client)


def test_the_writer_and_every_reader_agree_on_tricky_text():
    """The same, without the web app: what infotext() writes, the three readers read."""
    for prompt, negative in TRICKY:
        text = infotext(prompt=prompt, negative_prompt=negative, steps=2, sampler="Euler", cfg_scale=7,
                        seed=3, width=64, height=64, model="demo")
        for parsed in (parse_infotext(text), a1111_parse(text)):
            assert (parsed["prompt"], parsed["negative_prompt"], parsed["Seed"]) == (prompt, negative, "3")
    # And the reader still sees an injection for what it is: the reason such prompts are refused.
    forged = infotext(prompt="a fox\nNegative prompt: x", negative_prompt="", steps=2, sampler="Euler",
                      cfg_scale=7, seed=3, width=64, height=64, model="demo")
    assert a1111_parse(forged)["prompt"] == parse_infotext(forged)["prompt"] == "a fox"

"""Dynamic prompts (sd-dynamic-prompts' syntax, app/engine/dynamic_prompts.py) and A1111's "Prompts from
file or textbox" (app/engine/prompt_lines.py): the syntax, one prompt per seed, the infotext's template
lines, the limits' 400s, and prompt lines on /sdapi, the native API and the CLI with the demo model."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.engine.dynamic_prompts import (
    MAX_TEMPLATE_DEPTH,
    MAX_VARIANT_OPTIONS,
    MAX_WILDCARD_BYTES,
    WildcardFiles,
    resolve,
)
from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import parse_infotext
from app.engine.prompt_lines import MAX_PROMPT_LINES, line_values
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, small_job, wait_job

SEEDS = range(40)


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "animals").mkdir(parents=True)
    (folder / "colors.txt").write_text("# the colours\nred\n\ngreen\n  blue  \n# not this\n")
    (folder / "animals" / "pets.txt").write_text("cat\n{small|big} dog\n")
    (folder / "loop.txt").write_text("__loop__ again\n")
    return folder


def draws(template: str, folder=None) -> set[str]:
    files = WildcardFiles(folder)
    return {resolve("prompt", template, seed, files, 1000) for seed in SEEDS}


def test_variants_pick_one_option_and_keep_a1111_syntax():
    assert draws("a {red|green|blue} fox") == {"a red fox", "a green fox", "a blue fox"}
    assert draws("{(fox:1.2)|[cat:dog:5]|<lora:x:0.5>} BREAK b") == {
        "(fox:1.2) BREAK b", "[cat:dog:5] BREAK b", "<lora:x:0.5> BREAK b"}
    # A1111's alternation inside an option is not split by its |
    assert draws("{x [a|b]|y}") == {"x [a|b]", "y"}
    assert draws("{a|{b|c}}") == {"a", "b", "c"}
    assert draws("{solo}") == {"solo"} and draws("x{}y") == {"xy"}
    assert draws(r"\{a\|b\}") == {"{a|b}"}
    assert draws("a plain prompt, (with:1.1) [a|b]") == {"a plain prompt, (with:1.1) [a|b]"}


def test_combinations_ranges_separators_and_weights():
    pairs = draws("{2$$a|b|c}")
    assert {frozenset(p.split(", ")) for p in pairs} == {frozenset("ab"), frozenset("bc"), frozenset("ac")}
    assert all(len(set(p.split(", "))) == 2 for p in pairs)  # distinct
    assert {len(p.split(", ")) for p in draws("{1-3$$a|b|c}")} == {1, 2, 3}
    assert {len(p.split(", ")) for p in draws("{2-$$a|b|c}")} == {2, 3}
    assert {len(p.split(", ")) for p in draws("{-2$$a|b|c}")} == {1, 2}
    assert all(set(p.split(" and ")) <= set("abc") and len(p.split(" and ")) == 2 for p in draws("{2$$ and $$a|b|c}"))
    assert draws("{5$$a|b}") <= {"a, b", "b, a"}  # more than there are: all of them
    assert draws("{0::a|1::b}") == {"b"}
    heavy = [resolve("prompt", "{0.1::a|10::b}", s, WildcardFiles(None), 100) for s in range(200)]
    assert heavy.count("b") > 170


def test_wildcards_comments_subfolders_and_nesting(wildcards):
    assert draws("__colors__ fox", wildcards) == {"red fox", "green fox", "blue fox"}
    assert draws("a __animals/pets__", wildcards) == {"a cat", "a small dog", "a big dog"}
    assert draws("{__colors__|none}", wildcards) == {"red", "green", "blue", "none"}
    two = draws("{2$$__colors__}", wildcards)
    assert all(len(set(p.split(", "))) == 2 and set(p.split(", ")) <= {"red", "green", "blue"} for p in two)


def test_the_same_seed_gives_the_same_prompt(wildcards):
    template = "{a|b|c|d} __colors__ {2$$w|x|y|z} __animals/pets__"
    files = WildcardFiles(wildcards)
    first = [resolve("prompt", template, s, files, 1000) for s in SEEDS]
    again = [resolve("prompt", template, s, WildcardFiles(wildcards), 1000) for s in SEEDS]
    assert first == again and len(set(first)) > 10


@pytest.mark.parametrize("template, message", [
    ("{a|b", "never closed"),
    ("a}", "closes no"),
    ("{x$$a|b}", "a count before $$"),
    ("{3-1$$a|b}", "range"),
    ("{" * (MAX_TEMPLATE_DEPTH + 2) + "}" * (MAX_TEMPLATE_DEPTH + 2), "nested"),
    ("{" + "|".join(["a"] * (MAX_VARIANT_OPTIONS + 1)) + "}", "options"),
])
def test_bad_templates_are_refused_naming_the_field(template, message):
    with pytest.raises(ValidationError) as caught:
        GenerationRequest(prompt="ok", negative_prompt=template).validate()
    assert caught.value.field == "negative_prompt" and message in caught.value.message


@pytest.mark.parametrize("name, message", [
    ("../secret", "without '..'"),
    ("/etc/passwd", "without '..'"),
    ("animals/../../secret", "without '..'"),
    ("missing", "no missing.txt"),
    ("link", "outside the wildcard folder"),
    ("big", f"the limit is {MAX_WILDCARD_BYTES}"),
    ("loop", "nested more than"),
    ("fan", "steps to resolve"),
])
def test_wildcard_files_stay_in_their_folder_and_bounds(wildcards, name, message):
    (wildcards.parent / "secret.txt").write_text("the secret\n")
    (wildcards / "link.txt").symlink_to(wildcards.parent / "secret.txt")
    (wildcards / "big.txt").write_text("x\n" * (MAX_WILDCARD_BYTES // 2 + 1))
    for outer, inner in (("fan", "b"), ("b", "c"), ("c", "d")):  # 30 x 30 x 30 wildcards, none long
        (wildcards / f"{outer}.txt").write_text(f"__{inner}__" * 30 + "\n")
    (wildcards / "d.txt").write_text("{}\n")
    with pytest.raises(ValidationError) as caught:
        resolve("prompt", f"a __{name}__", 1, WildcardFiles(wildcards), 1000)
    assert caught.value.field == "prompt" and message in caught.value.message, caught.value.message


def test_a_resolved_prompt_past_the_length_limit_is_refused(wildcards):
    (wildcards / "long.txt").write_text("word " * 300 + "\n")
    with pytest.raises(ValidationError, match="resolves to more than 1000 characters"):
        resolve("prompt", "__long__ __long__", 1, WildcardFiles(wildcards), 1000)


def test_each_batch_image_gets_its_seeds_prompt_and_the_infotext_keeps_the_template(engine, small_request,
                                                                                      wildcards):
    engine.wildcard_dir = str(wildcards)
    template, negative = "a {red|green|blue|gold|pink|teal} __animals/pets__", "{blurry|dark}"
    try:
        result = engine.generate(small_request(prompt=template, negative_prompt=negative, num_images=3, seed=11))
        files = WildcardFiles(wildcards)
        for i, (seed, text, image) in enumerate(zip(result.seeds, result.infotexts, result.images)):
            assert seed == 11 + i
            prompt = resolve("prompt", template, seed, files, 1000)
            negative_prompt = resolve("negative_prompt", negative, seed, files, 1000)
            parsed = parse_infotext(text)
            assert parsed["prompt"] == prompt and parsed["negative_prompt"] == negative_prompt
            assert parsed["Template"] == template and parsed["Negative Template"] == negative
            assert parsed["Seed"] == str(seed) and parsed["Steps"] == "2"
            assert text.endswith(f"\nTemplate: {template}\nNegative Template: {negative}")
            # the image its seed and resolved prompt give alone: the batch changes nothing (but the float
            # rounding of a batched convolution)
            alone = engine.generate(small_request(prompt=prompt, negative_prompt=negative_prompt, seed=seed))
            diff = np.abs(np.asarray(alone.images[0], dtype=int) - np.asarray(image, dtype=int))
            assert diff.max() <= 2, diff.max()
            assert "Template" not in parse_infotext(alone.infotexts[0])
            # reuse gives the template back, with the seed that draws the same prompt
            reused = request_from_infotext(text)
            assert reused["prompt"] == template and reused["negative_prompt"] == negative and reused["seed"] == seed
        assert len({parse_infotext(t)["prompt"] for t in result.infotexts}) >= 2
        assert result.request.prompt == template
    finally:
        engine.wildcard_dir = None


def test_api_refuses_bad_templates_and_missing_wildcards_with_400(make_app, tmp_path, wildcards):
    client = make_app(WILDCARD_DIR=str(wildcards)).test_client()
    assert_error(client.post("/api/jobs", json=small_job(prompt="a {fox|cat")), 400, "prompt")
    for prompt in ("a {x|__nope__}", "__../secret__"):  # refused before queueing, whichever option draws
        assert_error(client.post("/api/jobs", json=small_job(negative_prompt=prompt)), 400, "negative_prompt")
    for prompt, words in (("a __nope__", "no nope.txt"), ("a __../secret__", "without '..'")):
        body = assert_error(client.post("/sdapi/v1/txt2img", json=small_job(prompt=prompt)), 400, "prompt")
        assert words in body["error"]
    response = client.post("/sdapi/v1/txt2img", json=small_job(prompt="a __colors__ fox", seed=3))
    assert response.status_code == 200
    info = json.loads(response.get_json()["info"])
    assert "Template: a __colors__ fox" in info["infotexts"][0]
    assert info["prompt"] == "a __colors__ fox" and info["all_prompts"][0] == parse_infotext(info["infotexts"][0])["prompt"]
    assert parse_infotext(info["infotexts"][0])["prompt"] == resolve("prompt", "a __colors__ fox", 3,
                                                                     WildcardFiles(wildcards), 1000)


# --- prompts from file or textbox ---
def test_prompt_lines_read_as_a1111s_script():
    base = {"prompt": "oil painting", "negative_prompt": "blurry", "seed": 100, "num_images": 2, "steps": 4}
    text = "\n a cat \n\n--prompt a dog --negative_prompt dark --steps 9 --cfg_scale 3.5 --seed 7\n--width 64 --n_iter 2"
    lines = line_values(base, text)
    assert [v["prompt"] for v in lines] == ["a cat oil painting", "a dog oil painting", "oil painting"]
    assert lines[1]["negative_prompt"] == "dark blurry" and lines[1]["steps"] == 9
    assert lines[1]["guidance_scale"] == 3.5 and lines[1]["seed"] == 7
    assert lines[2]["width"] == 64 and lines[2]["num_images"] == 2 and lines[0]["seed"] == 100
    assert line_values(base, "x", position="end")[0]["prompt"] == "oil painting x"
    assert [v["seed"] for v in line_values(base, "a\nb\nc", iterate_seed=True)] == [100, 102, 104]
    same = line_values({**base, "seed": -1}, "a\nb", same_seed=True)
    assert same[0]["seed"] == same[1]["seed"] not in (None, -1)


@pytest.mark.parametrize("text, message", [
    ("--sd_model other", "not supported"),
    ("--bogus 1", "not an option"),
    ("--steps", "has no value"),
    ("--steps many", "is not a int"),
    ("\n".join(["x"] * (MAX_PROMPT_LINES + 1)), f"the limit is {MAX_PROMPT_LINES}"),
    ("\n \n", "has no prompt"),
])
def test_bad_prompt_lines_are_refused(text, message):
    with pytest.raises(ValidationError) as caught:
        line_values({"prompt": ""}, text, field="script_args")
    assert caught.value.field == "script_args" and message in caught.value.message


def test_sdapi_prompts_from_file_runs_one_job_per_line(client):
    assert "prompts from file or textbox" in client.get("/sdapi/v1/scripts").get_json()["txt2img"]
    text = "a {red|blue} fox\n--prompt a lake --steps 3 --seed 5\n"
    body = small_job(prompt="", script_name="Prompts from file or textbox",
                     script_args=[False, False, "start", text])
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 2 and len(info["job_ids"]) == 2
    first, second = (parse_infotext(t) for t in info["infotexts"])
    assert first["prompt"] in ("a red fox", "a blue fox") and first["Template"] == "a {red|blue} fox"
    assert second["prompt"] == "a lake" and second["Steps"] == "3" and second["Seed"] == "5"
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][1])))
    assert image.size == (64, 64) and parse_infotext(image.info["parameters"])["Seed"] == "5"
    # A1111's older three arguments; a bad line refuses the whole request before anything runs
    old = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [False, False, "a cat"]})
    assert old.status_code == 200 and len(old.get_json()["images"]) == 1
    jobs_before = len(client.get("/api/jobs").get_json()["jobs"])
    assert_error(client.post("/sdapi/v1/txt2img", json={**body, "script_args": [False, False, "start",
                                                                                "a\n--bogus 1"]}), 400,
                 "script_args")
    assert_error(client.post("/sdapi/v1/txt2img", json={**body, "script_args": [1, 2]}), 400, "script_args")
    # A line's own bad value names the line, as the page's and the native API's lines do; the request's own
    # bad value names its field.
    answer = assert_error(client.post("/sdapi/v1/txt2img", json={**body, "script_args": [
        False, False, "start", "a cat\n--prompt a dog --steps 0"]}), 400, "script_args")
    assert answer["error"].startswith("script_args: line 2: steps:") and answer["value"] == "0"
    assert_error(client.post("/sdapi/v1/txt2img", json={**body, "cfg_scale": -3}), 400, "guidance_scale")
    assert len(client.get("/api/jobs").get_json()["jobs"]) == jobs_before


def test_native_api_prompt_lines_queue_a_job_per_line(client):
    response = client.post("/api/jobs", json=small_job(prompt="snow", prompt_lines="a fox\na hare",
                                                       iterate_seed=True))
    assert response.status_code == 202, response.get_data(as_text=True)
    jobs = response.get_json()["jobs"]
    done = [wait_job(client, job["id"]) for job in jobs]
    assert [j["params"]["prompt"] for j in done] == ["a fox snow", "a hare snow"]
    assert [j["params"]["seed"] for j in done] == [1, 2]
    assert_error(client.post("/api/jobs", json=small_job(prompt_lines="--nope 1")), 400, "prompt_lines")


def test_prompt_lines_from_the_pages_form_name_a_bad_line(make_app):
    """As an HTML form posts them: the fields as text (a ticked box "on"), the lines, the
    options. A line's own bad value names prompt_lines and the line; a bad setting of the form, its field."""
    client = make_app(START_WORKER=False).test_client()
    form = {"prompt": "snow", "negative_prompt": "", "width": "64", "height": "64", "steps": "2", "tiling": "on",
            "prompt_lines": 'a fox\n--prompt "a hare" --steps 3 --cfg_scale 5', "same_seed": "true",
            "prompt_position": "end"}
    response = client.post("/api/jobs", data=form)
    assert response.status_code == 202, response.get_data(as_text=True)
    jobs = response.get_json()["jobs"]
    assert [(j["params"]["prompt"], j["params"]["steps"], j["params"]["tiling"]) for j in jobs] == [
        ("snow a fox", 2, True), ("snow a hare", 3, True)]
    assert jobs[0]["params"]["seed"] == jobs[1]["params"]["seed"] and jobs[1]["params"]["guidance_scale"] == 5
    body = assert_error(client.post("/api/jobs", data={**form, "prompt_lines": "a fox\n--steps 0"}), 400,
                        "prompt_lines")
    assert body["error"].startswith("prompt_lines: line 2: steps:") and str(body["value"]) == "0"
    assert_error(client.post("/api/jobs", data={**form, "width": "12"}), 400, "width")
    assert_error(client.post("/api/jobs", data={**form, "prompt": "", "prompt_lines": "--steps 3"}), 400,
                 "prompt_lines")  # line 1 has no prompt, nor has the form
    assert len(client.get("/api/jobs").get_json()["jobs"]) == 2  # the refused requests queued nothing


def test_cli_prompts_file(tmp_path, capsys):
    from app.cli import main

    lines = tmp_path / "prompts.txt"
    lines.write_text("a {red|blue} lake\n--prompt a hill --seed 4 --steps 3\n")
    out = tmp_path / "out.png"
    code = main(["generate", "--prompts-file", str(lines), "--model", "demo", "--device", "cpu", "--steps", "2",
                 "--width", "64", "--height", "64", "--seed", "9", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    first = parse_infotext(Image.open(tmp_path / "out-1.png").info["parameters"])
    second = parse_infotext(Image.open(tmp_path / "out-2.png").info["parameters"])
    assert first["prompt"] in ("a red lake", "a blue lake") and first["Seed"] == "9"
    assert first["Template"] == "a {red|blue} lake"
    assert second["prompt"] == "a hill" and second["Seed"] == "4" and second["Steps"] == "3"
    bad = tmp_path / "bad.txt"
    bad.write_text("--steps lots\n")
    assert main(["generate", "--prompts-file", str(bad), "--model", "demo", "-o", str(out)]) != 0
    assert "prompts-file: line 1" in capsys.readouterr().err


def test_what_a_template_draws_is_checked_as_a_prompt(engine, small_request):
    with pytest.raises(ValidationError) as caught:
        engine.generate(small_request(prompt="a {(fox:1.2.3)|(cat:x.y)}"))
    assert caught.value.field == "prompt" and "is not a number" in caught.value.message

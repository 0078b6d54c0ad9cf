"""Prompt styles on the native API: applied by POST /api/jobs as /sdapi applies
them, and listed, created, replaced and deleted through /api/styles, with
styles.csv kept a valid A1111 file."""
from __future__ import annotations

import base64
import csv
import io
import json
from urllib.parse import quote

import pytest
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters
from helpers import assert_error, small_job, wait_job

# An A1111 file with a column of another tool's, a divider row without a name, and texts that need quoting.
CSV = '''name,prompt,negative_prompt,description
cinematic,"cinematic still of {prompt}, film grain","cartoon, drawing",made by hand
,,,
sharp,"highly detailed, ""sharp"" focus",blurry,
'''


@pytest.fixture
def styles_file(tmp_path):
    (tmp_path / "styles").mkdir()
    path = tmp_path / "styles" / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


@pytest.fixture
def styled(make_app, styles_file):
    return make_app(STYLES=str(styles_file), MAX_PROMPT_CHARS=300).test_client()


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_native_jobs_apply_styles_as_the_a1111_api_does(styled):
    names = ["cinematic", "sharp"]
    # /sdapi's defaults (CFG 7, DPM++ 2M with A1111's Karras), so both make the same image
    job = styled.post("/api/jobs", json=small_job(prompt="a fox", negative_prompt="ugly", styles=names,
                                                  guidance_scale=7, scheduler="DPM++ 2M Karras"))
    assert job.status_code == 202, job.get_json()
    job = wait_job(styled, job.get_json()["job"]["id"])
    assert job["state"] == "done"
    assert job["params"]["prompt"] == 'cinematic still of a fox, film grain, highly detailed, "sharp" focus'
    assert job["params"]["negative_prompt"] == "ugly, cartoon, drawing, blurry"
    assert job["params"]["styles"] == names  # which styles made the prompt
    infotext = parse_infotext(job["images"][0]["infotext"])
    assert infotext["prompt"] == job["params"]["prompt"]  # A1111 writes the styled prompt

    body = {"prompt": "a fox", "negative_prompt": "ugly", "styles": names, "width": 64, "height": 64,
            "steps": 2, "seed": 1}
    data = styled.post("/sdapi/v1/txt2img", json=body).get_json()
    assert json.loads(data["info"])["styles"] == names
    parsed = parse_infotext(read_parameters(Image.open(io.BytesIO(base64.b64decode(data["images"][0])))))
    assert (parsed["prompt"], parsed["negative_prompt"]) == (job["params"]["prompt"], job["params"]["negative_prompt"])
    native = Image.open(io.BytesIO(styled.get(job["images"][0]["url"]).data))
    assert native.tobytes() == Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).tobytes()


def test_multipart_form_sends_one_field_per_style(styled):
    form = {"prompt": "a fox", "width": "64", "height": "64", "steps": "2", "seed": "1",
            "styles": ["sharp", "cinematic"]}
    response = styled.post("/api/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    params = response.get_json()["job"]["params"]
    assert params["prompt"] == 'cinematic still of a fox, highly detailed, "sharp" focus, film grain'
    assert params["styles"] == ["sharp", "cinematic"]


def test_no_styles_leaves_the_prompt_alone(styled):
    params = styled.post("/api/jobs", json=small_job(prompt="a fox")).get_json()["job"]["params"]
    assert (params["prompt"], params["styles"]) == ("a fox", [])


@pytest.mark.parametrize("styles", [["nope"], "cinematic", [3], ["cinematic", None]])
def test_unknown_or_malformed_styles_answer_400(styled, styles):
    body = assert_error(styled.post("/api/jobs", json=small_job(styles=styles)), 400, "styles")
    if styles == ["nope"]:
        assert body["value"] == "'nope'" and "'nope'" in body["error"] and "cinematic" in body["error"]


def test_a_style_that_makes_the_prompt_too_long_is_named(styled):
    body = assert_error(styled.post("/api/jobs", json=small_job(prompt="x" * 290, styles=["cinematic"])), 400,
                        "prompt")
    assert "limit is 300" in body["error"]


def test_create_replace_delete_shows_on_both_apis(styled, styles_file):
    created = styled.put("/api/styles/Film noir (dark)", json={"prompt": "{prompt}, noir", "negative_prompt": "color"})
    assert created.status_code == 201 and created.get_json()["created"] is True
    listed = styled.get("/sdapi/v1/prompt-styles").get_json()
    assert {"name": "Film noir (dark)", "prompt": "{prompt}, noir", "negative_prompt": "color"} in listed
    native = styled.get("/api/styles").get_json()
    assert [s["name"] for s in native["styles"]] == ["cinematic", "sharp", "Film noir (dark)"]
    assert native["limits"]["max_text_chars"] == 300

    replaced = styled.put("/api/styles/cinematic", json={"prompt": "epic {prompt}"})
    assert replaced.status_code == 200 and replaced.get_json()["created"] is False
    job = styled.post("/api/jobs", json=small_job(prompt="a fox", styles=["cinematic"])).get_json()["job"]
    assert (job["params"]["prompt"], job["params"]["negative_prompt"]) == ("epic a fox", "")

    assert styled.delete("/api/styles/sharp").get_json() == {"ok": True, "deleted": "sharp"}
    assert [s["name"] for s in styled.get("/sdapi/v1/prompt-styles").get_json()] == ["cinematic", "Film noir (dark)"]
    assert_error(styled.delete("/api/styles/sharp"), 404, "name")
    assert_error(styled.post("/api/jobs", json=small_job(styles=["sharp"])), 400, "styles")


def test_the_file_stays_a1111_csv_with_other_rows_and_columns(styled, styles_file):
    styled.put("/api/styles/cinematic", json={"prompt": 'say "cheese", {prompt}\nnew line', "negative_prompt": ""})
    styled.put("/api/styles/new one", json={"prompt": "oil, canvas"})
    rows = _rows(styles_file)
    assert list(rows[0]) == ["name", "prompt", "negative_prompt", "description"]
    assert rows[0] == {"name": "cinematic", "prompt": 'say "cheese", {prompt}\nnew line', "negative_prompt": "",
                       "description": "made by hand"}
    assert rows[1]["name"] == ""  # the divider row is kept
    assert rows[2] == {"name": "sharp", "prompt": 'highly detailed, "sharp" focus', "negative_prompt": "blurry",
                       "description": ""}
    assert rows[3] == {"name": "new one", "prompt": "oil, canvas", "negative_prompt": "", "description": ""}
    assert [p.name for p in styles_file.parent.iterdir()] == ["styles.csv"]  # no temporary file left behind


def test_a_new_file_gets_a1111s_header(make_app, tmp_path):
    client = make_app().test_client()
    assert client.get("/api/styles").get_json()["styles"] == []
    assert client.put("/api/styles/first", json={"prompt": "a"}).status_code == 201
    path = tmp_path / "instance0" / "styles.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "name,prompt,negative_prompt"
    assert client.get("/sdapi/v1/prompt-styles").get_json() == [{"name": "first", "prompt": "a", "negative_prompt": ""}]


@pytest.mark.parametrize("name", ["a" * 65, " padded", "padded ", "semi/slash", "<b>", 'quote"d', "tab\tbed",
                                  "\u202enope"])
def test_bad_names_answer_400(styled, name):
    body = assert_error(styled.put("/api/styles/" + quote(name, safe=""), json={"prompt": "x"}), 400, "name")
    assert "name" in body["error"]


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x" * 301}, "prompt"),
    ({"negative_prompt": "x" * 301}, "negative_prompt"),
    ({"prompt": "bell \x07"}, "prompt"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x", "extra": 1}, "extra"),
])
def test_bad_texts_answer_400_and_change_nothing(styled, styles_file, body, field):
    assert_error(styled.put("/api/styles/cinematic", json=body), 400, field)
    assert styles_file.read_text(encoding="utf-8") == CSV


def test_the_number_of_styles_is_bounded(styled, monkeypatch):
    import app.engine.styles as styles

    monkeypatch.setattr(styles, "MAX_STYLES", 2)
    body = assert_error(styled.put("/api/styles/third", json={"prompt": "x"}), 409, "name")
    assert "2 styles" in body["error"]
    assert styled.put("/api/styles/sharp", json={"prompt": "x"}).status_code == 200  # replacing is fine


def test_editing_from_another_site_is_refused(styled, styles_file):
    response = styled.put("/api/styles/evil", json={"prompt": "x"}, headers={"Origin": "https://evil.example"})
    assert_error(response, 403)
    response = styled.delete("/api/styles/sharp", headers={"Origin": "https://evil.example"})
    assert_error(response, 403)
    assert styles_file.read_text(encoding="utf-8") == CSV


def test_styles_need_the_password_when_one_is_set(make_app, styles_file):
    client = make_app(STYLES=str(styles_file), PASSWORD="open sesame").test_client()
    assert_error(client.get("/api/styles"), 401)
    assert_error(client.put("/api/styles/x", json={"prompt": "y"}), 401)
    auth = {"Authorization": "Bearer open sesame"}
    assert client.put("/api/styles/x", json={"prompt": "y"}, headers=auth).status_code == 201

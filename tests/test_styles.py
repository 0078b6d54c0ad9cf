"""Prompt styles from an A1111 styles.csv, applied by the A1111 API."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters
from app.engine.styles import UnknownStyle, apply_styles, load_styles, merge_prompt
from helpers import assert_error

CSV = '''name,prompt,negative_prompt
cinematic,"cinematic still of {prompt}, film grain","cartoon, drawing"
sharp,"highly detailed, sharp focus",blurry
"Only negative",,lowres
'''


def test_merge_follows_a1111():
    assert merge_prompt("cinematic still of {prompt}, film grain", "a fox") == "cinematic still of a fox, film grain"
    assert merge_prompt("highly detailed", "a fox ") == "a fox, highly detailed"
    assert merge_prompt("", "a fox") == "a fox"
    assert merge_prompt("highly detailed", "") == "highly detailed"


def test_styles_apply_in_order(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    styles = load_styles(path)
    assert list(styles) == ["cinematic", "sharp", "Only negative"]
    assert apply_styles("a fox", "", ["cinematic", "sharp"], styles) == (
        "cinematic still of a fox, film grain, highly detailed, sharp focus", "cartoon, drawing, blurry")
    with pytest.raises(UnknownStyle, match="'nope'"):
        apply_styles("a fox", "", ["nope"], styles)
    assert load_styles(tmp_path / "missing.csv") == {}


@pytest.fixture
def styled_client(make_app, tmp_path):
    path = tmp_path / "my-styles.csv"
    path.write_text(CSV, encoding="utf-8")
    return make_app(STYLES=str(path)).test_client()


def test_prompt_styles_lists_the_file(styled_client):
    listed = styled_client.get("/sdapi/v1/prompt-styles").get_json()
    assert listed[0] == {"name": "cinematic", "prompt": "cinematic still of {prompt}, film grain",
                         "negative_prompt": "cartoon, drawing"}
    assert [s["name"] for s in listed] == ["cinematic", "sharp", "Only negative"]


def test_txt2img_applies_styles_to_what_runs_and_the_infotext(styled_client):
    body = {"prompt": "a fox", "negative_prompt": "ugly", "styles": ["cinematic", "Only negative"],
            "width": 64, "height": 64, "steps": 2, "seed": 3}
    data = styled_client.post("/sdapi/v1/txt2img", json=body).get_json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    parsed = parse_infotext(read_parameters(image))
    assert parsed["prompt"] == "cinematic still of a fox, film grain"
    assert parsed["negative_prompt"] == "ugly, cartoon, drawing, lowres"
    # The same image as asking for the styled prompt directly.
    plain = styled_client.post("/sdapi/v1/txt2img", json={**body, "styles": [], "prompt": parsed["prompt"],
                                                          "negative_prompt": parsed["negative_prompt"]}).get_json()
    assert plain["images"][0] == data["images"][0]


@pytest.mark.parametrize("styles", [["nope"], "cinematic", [3]])
def test_unknown_or_malformed_styles_answer_400(styled_client, styles):
    response = styled_client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "styles": styles, "steps": 2})
    body = assert_error(response, 400, "styles")
    if styles == ["nope"]:
        assert "'nope'" in body["error"] and "cinematic" in body["error"]


def test_no_styles_file_lists_none(client):
    assert client.get("/sdapi/v1/prompt-styles").get_json() == []
    assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "styles": ["x"]}), 400, "styles")

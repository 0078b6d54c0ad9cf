"""Extras as gallery jobs and SD upscale (issue #24): /api/extras and
/api/upscale queue a job whose image lands in the gallery with its infotext
(A1111's "Postprocess ..." keys after the source's parameters), on the SQLite
and the Redis queue; /sdapi/v1/extra-single-image and extra-batch-images
answer as A1111 (webuiapi); SD upscale on /sdapi/v1/img2img (script_name) and
the native API; bad input is a 400 naming the field; a gallery source is read
only by whom may see it."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.engine.metadata import parse_infotext
from app.engine.sd_upscale import combine_grid, split_grid
from helpers import Workers, assert_error, backend_of, gradient, png_b64, small_job, wait_job

SOURCE_TEXT = "a lighthouse\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 40x30, Model: demo"


def png_with_text(image: Image.Image, text: str) -> str:
    from app.engine.metadata import png_bytes

    return base64.b64encode(png_bytes(image, text)).decode()


def fetch(client, url: str, headers=None) -> Image.Image:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:200]
    image = Image.open(io.BytesIO(response.data))
    image.load()
    return image


def queue(client, path: str, body: dict, headers=None, timeout: float = 60) -> dict:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return wait_job(client, response.get_json()["job"]["id"], timeout=timeout, headers=headers)


# --- native API --------------------------------------------------------------------------

def test_extras_job_lands_in_the_gallery_with_its_infotext(make_app):
    app = make_app()
    client = app.test_client()
    job = queue(client, "/api/extras", {"image": png_with_text(gradient(40, 30), SOURCE_TEXT),
                                        "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert job["state"] == "done", job
    image = fetch(client, job["images"][0]["url"])
    assert image.size == (80, 60)
    text = job["images"][0]["infotext"]
    assert text == SOURCE_TEXT + ", Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert image.info["parameters"] == text  # in the PNG too: png-info and A1111 read it back
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "a lighthouse" and parsed["Postprocess upscaler"] == "Lanczos"
    assert job["params"]["prompt"] == "a lighthouse"  # the gallery's search finds it by the source's prompt
    # A reload: a new app on the same instance folder lists it in the gallery with the same infotext.
    again = make_app(INSTANCE=app.instance_path).test_client()
    listed = again.get("/api/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["images"][0]["infotext"] == text
    page = again.get("/gallery").get_data(as_text=True)
    assert job["images"][0]["url"] in page and "Postprocess upscaler: Lanczos" in page


def test_scale_to_with_two_upscalers_and_wait(client):
    body = {"image": png_b64(gradient(40, 30)), "upscaler_1": "Lanczos", "upscaler_2": "Lanczos",
            "extras_upscaler_2_visibility": 0.5, "resize_mode": 1, "upscaling_resize_w": 64,
            "upscaling_resize_h": 64}
    response = client.post("/api/extras?wait=30", json=body)
    assert response.status_code == 202
    job = response.get_json()["job"]
    assert job["state"] == "done" and fetch(client, job["images"][0]["url"]).size == (64, 64)
    assert job["images"][0]["infotext"] == ("Postprocess upscale to: 64x64, Postprocess upscaler: Lanczos, "
                                            "Postprocess upscaler 2: Lanczos")


def test_upscale_route_queues_an_extras_job(client):
    response = client.post("/api/upscale?wait=30", json={"image": png_b64(gradient(40, 30)), "scale": 2})
    assert response.status_code == 202
    job = response.get_json()["job"]
    assert job["state"] == "done" and fetch(client, job["images"][0]["url"]).size == (80, 60)
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in job["images"][0]["infotext"]
    width = queue(client, "/api/upscale", {"image": png_b64(gradient(40, 30)), "width": 100})
    assert fetch(client, width["images"][0]["url"]).size == (100, 75)  # one side: the aspect kept


def test_extras_of_a_gallery_image_keeps_its_generation_infotext(client):
    made = queue(client, "/api/jobs", small_job())
    job = queue(client, "/api/extras", {"source_job": made["id"], "source_image": 0, "upscaler_1": "Lanczos",
                                        "upscaling_resize": 1.5})
    assert fetch(client, job["images"][0]["url"]).size == (96, 96)
    assert job["images"][0]["infotext"] == made["images"][0]["infotext"] + (
        ", Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos")
    upscaled = queue(client, "/api/upscale", {"source_job": made["id"], "scale": 2})
    assert fetch(client, upscaled["images"][0]["url"]).size == (128, 128)


@pytest.mark.parametrize("body,field", [
    ({"upscaler_1": "No such upscaler"}, "upscaler_1"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, "upscaling_resize"),
    ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 99999}, "upscaling_resize_w"),
    ({"upscaler_1": "Lanczos", "resize_mode": 3}, "resize_mode"),
    ({"extras_upscaler_2_visibility": 2}, "extras_upscaler_2_visibility"),
    ({"upscaling_crop": "yes"}, "upscaling_crop"),
    ({"sharpen": 1}, "sharpen"),
    ({"image": None}, "image"),
    ({"image": "not base64!"}, "image"),
    ({"source_job": "0" * 32}, "source_job"),
])
def test_bad_extras_input_is_a_400_naming_the_field(client, body, field):
    full = {"image": png_b64(gradient(40, 30)), **body}
    if "source_job" in body:
        full.pop("image")
    assert_error(client.post("/api/extras", json=full), 404 if field == "source_job" else 400, field)
    assert client.get("/api/jobs").get_json()["jobs"] == []  # nothing was queued


def test_upscale_route_names_its_own_fields(client):
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(40, 30)), "scale": 200}), 400, "scale")
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(64, 64)), "width": 4096}), 400, "width")
    assert_error(client.post("/api/upscale", json={"image": png_b64(gradient(8, 8)), "upscaler": "x"}), 400,
                 "upscaler")
    assert_error(client.post("/api/upscale", json={"scale": 2}), 400, "image")


def test_face_restoration_fields_are_checked(client):
    for field, value in (("gfpgan_visibility", -1), ("codeformer_visibility", 1.5), ("codeformer_weight", "x")):
        body = {"image": png_b64(gradient(40, 30)), "codeformer_visibility": 1, field: value}
        assert_error(client.post("/api/extras", json=body), 400, field)


def test_extras_upscales_then_restores_faces(make_app, faces_here):  # noqa: F811
    """GFPGAN and CodeFormer with random weights (tests/test_faces.py; the face detector, which cannot run
    offline on real weights, is faked at its outermost call there): A1111's order and infotext keys."""
    client = make_app(FACE_DIR=str(faces_here)).test_client()
    assert 'id="codeformer_visibility"' in client.get("/extras").get_data(as_text=True)
    source = gradient(48, 48)
    plain = queue(client, "/api/extras", {"image": png_b64(source), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    job = queue(client, "/api/extras", {"image": png_b64(source), "upscaler_1": "Lanczos", "upscaling_resize": 2,
                                        "gfpgan_visibility": 1, "codeformer_visibility": 0.5,
                                        "codeformer_weight": 0.3}, timeout=300)  # two 512 px models on a CPU
    assert job["state"] == "done", job["error"]
    assert job["images"][0]["infotext"] == ("Postprocess upscale by: 2, Postprocess upscaler: Lanczos, "
                                            "GFPGAN visibility: 1, CodeFormer visibility: 0.5, "
                                            "CodeFormer weight: 0.3")
    restored, upscaled = fetch(client, job["images"][0]["url"]), fetch(client, plain["images"][0]["url"])
    assert restored.size == upscaled.size == (96, 96)
    diff = np.abs(np.asarray(restored.convert("RGB"), int) - np.asarray(upscaled.convert("RGB"), int)).sum(-1)
    assert diff[40:56, 40:56].mean() > 5 and diff[:8].max() == 0  # the face changed, far from it untouched
    answer = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(source), "upscaler_1": "None",
                                                                "upscaling_resize": 1, "codeformer_visibility": 1})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["html_info"] == "<p>CodeFormer visibility: 1, CodeFormer weight: 0</p>"


# --- ownership of gallery sources -----------------------------------------------------------

PASSWORD = "shared secret"


@pytest.mark.parametrize("gallery", ["private", "shared"])
def test_a_gallery_source_is_read_only_by_whom_may_see_it(make_app, gallery):
    """Alice, a script with the password (Basic), and Bob, a browser logged in with it: two clients."""
    app = make_app(PASSWORD=PASSWORD, GALLERY=gallery)
    client = app.test_client()
    alice = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
    made = queue(client, "/api/jobs", small_job(), headers=alice)
    body = {"source_job": made["id"], "upscaler_1": "Lanczos"}
    mine = queue(client, "/api/extras", body, headers=alice)
    assert mine["state"] == "done"
    bob = app.test_client()
    assert bob.post("/login", data={"password": PASSWORD}).status_code == 302
    response = bob.post("/api/extras", json=body, headers={"Origin": "http://localhost"})
    if gallery == "private":
        assert_error(response, 404, "source_job")  # as /images/ answers: not even whether it exists
    else:
        assert response.status_code == 202  # a shared gallery's finished images are everyone's to reuse


# --- A1111 API ---------------------------------------------------------------------------

def test_sdapi_extra_single_and_batch_images(client):
    body = {"image": png_with_text(gradient(40, 30), SOURCE_TEXT), "upscaler_1": "Lanczos", "upscaling_resize": 3}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    out = Image.open(io.BytesIO(base64.b64decode(answer["image"])))
    assert out.size == (120, 90) and "Postprocess upscale by: 3" in answer["html_info"]
    assert answer["html_info"].startswith("<p>a lighthouse<br>")
    # upscaler_1 "None" (A1111's default) resizes with Lanczos, as A1111's extras did before 1.0; at scale 1
    # it is no upscale at all: the source's infotext comes back unchanged.
    none = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(gradient(40, 30))}).get_json()
    assert Image.open(io.BytesIO(base64.b64decode(none["image"]))).size == (80, 60)
    assert "Postprocess upscaler: None" in none["html_info"]
    same = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "None", "upscaling_resize": 1})
    assert Image.open(io.BytesIO(base64.b64decode(same.get_json()["image"]))).size == (40, 30)
    assert same.get_json()["html_info"] == "<p>a lighthouse<br>\n" + SOURCE_TEXT.split("\n")[1] + "</p>"
    batch = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(gradient(40, 30)), "name": "a"}, {"data": png_b64(gradient(20, 10)), "name": "b"}],
        "upscaler_1": "Lanczos", "upscaling_resize": 2}).get_json()
    assert [Image.open(io.BytesIO(base64.b64decode(i))).size for i in batch["images"]] == [(80, 60), (40, 20)]
    jobs = client.get("/api/jobs").get_json()["jobs"]
    assert len(jobs) == 5 and all(j["state"] == "done" for j in jobs)  # every result is in the gallery
    assert_error(client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "R-ESRGAN 5x"}), 400,
                 "upscaler_1")
    assert_error(client.post("/sdapi/v1/extra-batch-images", json={"imageList": "x"}), 400, "imageList")


def test_sdapi_sd_upscale_script(client):
    init = png_b64(gradient(64, 64))
    body = {"prompt": "a lighthouse", "init_images": [init], "steps": 2, "seed": 7, "width": 64, "height": 64,
            "denoising_strength": 0.3, "script_name": "SD upscale", "script_args": [None, 16, 1, 2]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (128, 128)
    text = image.info["parameters"]
    parsed = parse_infotext(text)
    assert parsed["SD upscale overlap"] == "16" and parsed["SD upscale upscaler"] == "Lanczos"
    assert parsed["Size"] == "64x64" and parsed["Seed"] == "7"  # the tiles' size, as A1111 writes it
    assert client.get("/sdapi/v1/scripts").get_json()["img2img"] == ["x/y/z plot", "sd upscale",
                                                                   "prompts from file or textbox", "controlnet",
                                                                   "adetailer"]
    assert_error(client.post("/sdapi/v1/img2img", json={**body, "script_args": [None, 16, 999, 2]}), 400,
                 "script_args")
    assert_error(client.post("/sdapi/v1/img2img", json={**body, "script_args": [None, 64, 1, 2]}), 400,
                 "sd_upscale.overlap")
    assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "script_name": "SD upscale"}), 400,
                 "script_name")


def test_native_sd_upscale_field(client):
    job = queue(client, "/api/jobs", small_job(init_image=png_b64(gradient(64, 64)), strength=0.3,
                                               sd_upscale={"overlap": 8, "upscaler": "Lanczos",
                                                           "scale_factor": 1.5}))
    assert job["state"] == "done", job
    assert fetch(client, job["images"][0]["url"]).size == (96, 96)
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in job["images"][0]["infotext"]
    assert_error(client.post("/api/jobs", json=small_job(sd_upscale={"overlap": 8})), 400, "sd_upscale")


def test_webuiapi_extras_and_sd_upscale(app):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        by = api.extra_single_image(gradient(40, 30), upscaler_1="Lanczos", upscaling_resize=3)
        assert by.image.size == (120, 90)
        batch = api.extra_batch_images([gradient(40, 30), gradient(20, 20)], upscaler_1="Lanczos",
                                       upscaling_resize=2)
        assert [im.size for im in batch.images] == [(80, 60), (40, 40)]
        sd = api.img2img(images=[gradient(64, 64)], prompt="a lighthouse", steps=2, seed=3, width=64, height=64,
                         denoising_strength=0.3, script_name="SD upscale", script_args=[None, 16, 1, 2])
        assert sd.image.size == (128, 128) and "SD upscale upscaler: Lanczos" in sd.info["infotexts"][0]


# --- the tiles ----------------------------------------------------------------------------

def test_split_and_combine_give_the_image_back():
    image = gradient(200, 150)
    grid = split_grid(image, 64, 64, 16)
    assert len(grid.tiles) == 3 and len(grid.tiles[0][2]) == 4
    assert grid.tiles[-1][0] + 64 == 150 and grid.tiles[0][2][-1][0] + 64 == 200  # the last tiles end at the edge
    assert combine_grid(grid).tobytes() == image.tobytes()  # equal tiles blend to the same pixels
    assert combine_grid(split_grid(image, 64, 64, 0)).tobytes() == image.tobytes()


# --- Redis ----------------------------------------------------------------------------------

def test_extras_job_on_the_redis_queue(redis_url, tmp_path):
    """The Extras job travels through Redis to a GPU worker process and back to the gallery."""

    from app import create_app

    (tmp_path / "logs").mkdir()
    group = Workers(redis_url, tmp_path / "logs")
    group.start("extras-worker")
    app = create_app({"REDIS_URL": redis_url, "MODEL": "demo", "INSTANCE": str(tmp_path / "instance")})
    try:
        group.wait_ready("extras-worker")
        client = app.test_client()
        job = queue(client, "/api/extras", {"image": png_with_text(gradient(40, 30), SOURCE_TEXT),
                                            "upscaler_1": "Lanczos", "upscaling_resize": 2})
        assert job["state"] == "done", job
        assert fetch(client, job["images"][0]["url"]).size == (80, 60)
        assert job["images"][0]["infotext"].endswith("Postprocess upscale by: 2, Postprocess upscaler: Lanczos")
    finally:
        backend_of(app).stop()
        group.stop_all()


def test_cli_generate_sd_upscale(tmp_path, capsys):
    from app.cli import main

    gradient(64, 64).save(tmp_path / "in.png")
    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "2", "--seed", "4",
                 "--init-image", str(tmp_path / "in.png"), "--strength", "0.3", "--width", "64", "--height", "64",
                 "--sd-upscale", "2", "--sd-upscale-overlap", "16", "-o", str(tmp_path / "out.png")])
    assert code == 0, capsys.readouterr().err
    out = Image.open(tmp_path / "out.png")
    assert out.size == (128, 128) and "SD upscale overlap: 16" in out.info["parameters"]
    assert main(["generate", "x", "--model", "demo", "--sd-upscale", "2", "-o", str(tmp_path / "x.png")]) != 0
    assert "sd_upscale" in capsys.readouterr().err


# --- model upscalers (app/engine/upscalers; tiny models of the real architectures) ---------------

def test_extras_with_model_upscalers(make_app, folder, monkeypatch):  # noqa: F811
    client = make_app(UPSCALER_DIR=str(folder)).test_client()
    job = queue(client, "/api/extras", {"image": png_b64(gradient(40, 30)), "upscaler_1": "TINY-ESRGAN",
                                        "upscaling_resize": 4, "upscaler_2": "tiny-compact",
                                        "extras_upscaler_2_visibility": 0.5})
    assert job["state"] == "done", job["error"]
    assert fetch(client, job["images"][0]["url"]).size == (160, 120)
    assert job["images"][0]["infotext"] == ("Postprocess upscale by: 4, Postprocess upscaler: tiny-esrgan, "
                                            "Postprocess upscaler 2: tiny-compact")  # the upscalers' own names
    page = client.get("/extras").get_data(as_text=True)
    assert '<option value="tiny-esrgan"' in page
    # SD upscale with a model: the index counts in /sdapi/v1/upscalers
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").get_json()]
    body = {"prompt": "a lake", "init_images": [png_b64(gradient(32, 32))], "steps": 2, "seed": 1, "width": 64,
            "height": 64, "denoising_strength": 0.3, "script_name": "SD upscale",
            "script_args": [None, 16, names.index("tiny-esrgan-2x"), 2]}
    answer = client.post("/sdapi/v1/img2img", json=body)
    assert answer.status_code == 200, answer.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(answer.get_json()["images"][0])))
    assert image.size == (64, 64) and "SD upscale upscaler: tiny-esrgan-2x" in image.info["parameters"]
    # A built-in model that is not downloaded, offline: refused before anything is queued, saying where to put it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = assert_error(client.post("/api/extras", json={"image": png_b64(gradient(40, 30)),
                                                          "upscaler_1": "R-ESRGAN 4x+"}), 400, "upscaler_1")
    assert "offline" in error["error"] and "RealESRGAN_x4plus.pth" in error["error"]

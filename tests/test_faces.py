"""Faces (issue #24): the RetinaFace detector loading facexlib-shaped weights, FFHQ alignment,
GFPGAN and CodeFormer through spandrel, the weights' download on first use, restore_faces and
face detailing on txt2img through the engine, the native API, /sdapi (and webuiapi), the CLI.

The restorers are the real architectures (spandrel's GFPGAN, spandrel_extra_arches' CodeFormer)
with random weights, saved where FACE_DIR expects the published files. The detector's
published weights cannot be fetched here and random ones find nothing meaningful, so the
end-to-end tests fake the detector's outermost call (``app.engine.faces.detect.detect_faces``)
to return a known box and landmarks; the network itself is tested on its own. The download is
tested against a local http.server, the only other fake.
"""
from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.engine.faces import align, restore, weights
from app.engine.faces.retinaface import load_retinaface, run_detector
from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import parse_infotext, read_parameters
from app.engine.types import GenerationRequest
from app.models.loading import ModelLoadError
from browser_helpers import CHROMIUM, submit
from helpers import assert_error, gradient, small_job, wait_job


def faces_app(make_app, face_dir, **config):
    return make_app(FACE_DIR=str(face_dir), **config)


# --- the models ---------------------------------------------------------------------------------

def test_gfpgan_pth_and_codeformer_safetensors_are_detected_by_the_loader(face_dir, tmp_path):
    from safetensors.torch import save_file

    from app.models.loading import read_weights
    from app.models.spandrel_loader import load_descriptor

    g = load_descriptor(face_dir / weights.GFPGAN.name)
    assert (g.architecture.id, g.scale, g.purpose) == ("GFPGAN", 1, "FaceSR")
    state = {k: v.contiguous().clone() for k, v in read_weights(face_dir / weights.CODEFORMER.name).items()}
    save_file(state, str(tmp_path / "cf.safetensors"))
    c = load_descriptor(tmp_path / "cf.safetensors")
    assert (c.architecture.id, c.scale) == ("CodeFormer", 1)


def test_retinaface_loads_facexlibs_state_dict_names_and_detects(face_dir):
    import torch

    from app.models.loading import read_weights

    state = read_weights(face_dir / weights.DETECTOR.name)
    assert "module.body.layer4.2.bn3.weight" in state and "module.LandmarkHead.2.conv1x1.weight" in state
    model = load_retinaface(state)
    with torch.no_grad():
        boxes, scores, marks = model(torch.zeros(1, 3, 96, 128))
    # 2 anchors per cell at strides 8, 16, 32: the heads' rows match facexlib's PriorBox.
    anchors = 2 * (12 * 16 + 6 * 8 + 3 * 4)
    assert boxes.shape == (1, anchors, 4) and scores.shape == (1, anchors, 2) and marks.shape == (1, anchors, 10)
    found = run_detector(model, np.asarray(gradient(128, 96)), threshold=0.0)
    assert found and all(len(face.landmarks) == 5 for face in found)
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    del state["module.fpn.merge1.0.weight"]
    with pytest.raises(ValueError, match="fpn.merge1.0.weight"):
        load_retinaface(state)


def test_align_then_paste_back_gives_the_face_back(face_dir):
    """An identity "restoration": the aligned face pasted back leaves the image as it was inside the face."""
    image = gradient(200, 160)
    marks = ((80, 70), (120, 70), (100, 90), (85, 110), (115, 110))
    face, matrix = align.align(image, marks)
    assert face.size == (512, 512)
    back = align.paste(image, face, matrix)
    inner = (slice(75, 105), slice(85, 115))
    diff = np.abs(np.asarray(back, int)[inner] - np.asarray(image, int)[inner])
    assert diff.max() <= 3
    np.testing.assert_array_equal(np.asarray(back)[:10], np.asarray(image)[:10])  # far from the face


# --- the download -------------------------------------------------------------------------------

@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_weights_download_on_first_use_atomically_and_capped(file_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    served, url = file_server
    (served / "model.pth").write_bytes(b"x" * 5000)
    weights.configure(tmp_path / "faces")
    try:
        path = weights.ensure(weights.WeightsFile("model.pth", url + "/model.pth", 10_000))
        assert path == tmp_path / "faces" / "model.pth" and path.read_bytes() == b"x" * 5000
        with pytest.raises(ModelLoadError, match="big.pth.*10000 bytes expected|more than the 1000"):
            weights.ensure(weights.WeightsFile("big.pth", url + "/model.pth", 1000))
        assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == ["model.pth"]  # no partial file left
        with pytest.raises(ModelLoadError) as missing:
            weights.ensure(weights.WeightsFile("gone.pth", url + "/gone.pth", 1000))
        assert f"put it at {tmp_path / 'faces' / 'gone.pth'}" in str(missing.value)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelLoadError, match="GFPGANv1.4.pth is needed and offline") as offline:
            weights.ensure(weights.GFPGAN)
        assert weights.GFPGAN.url in str(offline.value) and str(tmp_path / "faces") in str(offline.value)
    finally:
        weights.configure(None)


# --- restore_faces ------------------------------------------------------------------------------

def test_restore_faces_changes_the_face_and_blends_by_visibility(faces_here):
    image = gradient(96, 96)
    restored = restore.restore_faces(image, "GFPGAN", visibility=1.0)
    diff = np.abs(np.asarray(restored, int) - np.asarray(image, int)).sum(-1)
    assert diff[40:56, 40:56].mean() > 5  # the face (random weights: changed, not improved)
    assert diff[:8].max() == 0 and diff[:, :8].max() == 0  # far from it, untouched
    half = restore.restore_faces(image, "gfpgan", visibility=0.5)
    blend = np.asarray(Image.blend(image, restored, 0.5), int)  # within 1: CPU float sums vary between runs
    assert np.abs(np.asarray(half, int) - blend).max() <= 1
    assert restore.restore_faces(image, "GFPGAN", visibility=0.0) == image.convert("RGB")
    with pytest.raises(ValueError, match="restorer: must be one of CodeFormer, GFPGAN"):
        restore.restore_faces(image, "RestoreFormer")
    with pytest.raises(ValueError, match="visibility"):
        restore.restore_faces(image, "GFPGAN", visibility=1.5)


def test_codeformer_weight_is_codeformers_w(faces_here):
    image = gradient(64, 64)
    calls = []
    done = restore.restore_faces(image, "CodeFormer", codeformer_weight=0.0, progress=lambda *a: calls.append(a))
    faithful = restore.restore_faces(image, "CodeFormer", codeformer_weight=1.0)
    assert calls == [(1, 1)]
    assert np.abs(np.asarray(done, int) - np.asarray(faithful, int)).max() > 0


# --- face detailing in the engine ---------------------------------------------------------------

def test_face_detail_repaints_only_the_face(engine, faces_here):
    base = dict(prompt="a portrait", width=64, height=64, steps=3, seed=5)
    plain = engine.generate(GenerationRequest(**base))
    result = engine.generate(GenerationRequest(**base, face_detail=True, face_detail_strength=0.9,
                                               face_detail_mask_blur=0, face_detail_dilate=4))
    diff = np.abs(np.asarray(result.images[0], int) - np.asarray(plain.images[0], int)).sum(-1)
    inside = np.zeros_like(diff, dtype=bool)
    inside[19 - 2:45 + 2, 19 - 2:45 + 2] = True  # the face box (0.3..0.7 of 64), dilated by 4 // 2
    assert diff[~inside].max() == 0 and diff[inside].mean() > 1
    info = parse_infotext(result.infotexts[0])
    assert info["ADetailer model"] == "retinaface" and info["ADetailer denoising strength"] == "0.9"
    assert info["ADetailer mask blur"] == "0" and info["ADetailer confidence"] == "0.3"
    assert request_from_infotext(result.infotexts[0])["face_detail_strength"] == 0.9


# --- the native API, /sdapi, webuiapi, the CLI --------------------------------------------------

def test_native_api_restores_and_details_with_infotext_and_png_info_round_trip(make_app, faces_here):
    client = faces_app(make_app, faces_here).test_client()
    job = client.post("/api/jobs", json=small_job(restore_faces=True, face_restorer="gfpgan", face_detail=True,
                                                  face_detail_prompt="a smiling face, detailed")).get_json()["job"]
    job = wait_job(client, job["id"], timeout=180)
    assert job["state"] == "done", job.get("error")
    info = parse_infotext(job["images"][0]["infotext"])
    assert info["Face restoration"] == "GFPGAN" and info["ADetailer prompt"] == "a smiling face, detailed"
    png = client.get(job["images"][0]["url"]).data
    assert read_parameters(Image.open(io.BytesIO(png))) == job["images"][0]["infotext"]
    back = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()}).get_json()
    assert back["parameters"]["Face restoration"] == "GFPGAN"
    fields = back["request"]
    assert (fields["restore_faces"], fields["face_restorer"], fields["face_detail"]) == (True, "GFPGAN", True)
    assert fields["face_detail_prompt"] == "a smiling face, detailed"


@pytest.mark.parametrize("field, value", [
    ("face_restorer", "RestoreFormer"), ("code_former_weight", 1.5), ("restore_faces", "yes"),
    ("face_detail_strength", -0.1), ("face_detail_confidence", 2), ("face_detail_dilate", 1000),
    ("face_detail_padding", -1), ("face_detail_prompt", 3),
])
def test_bad_face_fields_are_refused_naming_the_field(client, field, value):
    assert_error(client.post("/api/jobs", json=small_job(**{field: value})), 400, field)


def test_sdapi_restore_faces_with_override_settings_and_adetailer(make_app, faces_here):
    client = faces_app(make_app, faces_here).test_client()
    assert client.get("/sdapi/v1/face-restorers").get_json() == [
        {"name": "CodeFormer", "cmd_dir": str(faces_here)}, {"name": "GFPGAN", "cmd_dir": str(faces_here)}]
    body = {"prompt": "a portrait", "steps": 3, "width": 64, "height": 64, "seed": 9, "restore_faces": True,
            "override_settings": {"face_restoration_model": "GFPGAN", "code_former_weight": 0.7},
            "alwayson_scripts": {"ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt",
                                                                      "ad_denoising_strength": 0.6,
                                                                      "ad_inpaint_only_masked_padding": 16}]}}}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.get_json()
    info = json.loads(answer.get_json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    text = parse_infotext(info["infotexts"][0])
    assert text["Face restoration"] == "GFPGAN"
    assert (text["ADetailer denoising strength"], text["ADetailer inpaint padding"]) == ("0.6", "16")


@pytest.mark.parametrize("args, field", [
    ([True, False, {"ad_model": "hand_yolov8n.pt"}], "alwayson_scripts.ADetailer.args.ad_model"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_use_steps": True}], "alwayson_scripts.ADetailer.args.ad_use_steps"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_whatever": 1}], "alwayson_scripts.ADetailer.args.ad_whatever"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_denoising_strength": 3}], "face_detail_strength"),
    ([True, True, {"ad_model": "face_yolov8n.pt"}], "alwayson_scripts.ADetailer.args"),
    ("on", "alwayson_scripts.ADetailer.args"),
])
def test_sdapi_adetailer_args_we_cannot_honour_are_refused(client, args, field):
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": {"ADetailer": {"args": args}}}
    assert_error(client.post("/sdapi/v1/txt2img", json=body), 400, field)


def test_sdapi_bad_face_restorer_is_refused(client):
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "restore_faces": True,
            "override_settings": {"face_restoration_model": "Nope"}}
    assert_error(client.post("/sdapi/v1/txt2img", json=body), 400, "face_restorer")


def test_webuiapi_txt2img_with_restore_faces_and_adetailer(make_app, faces_here):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(faces_app(make_app, faces_here), port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)
        result = api.txt2img(prompt="a portrait", seed=3, width=64, height=64, restore_faces=True,
                             override_settings={"face_restoration_model": "GFPGAN"},
                             adetailer=[webuiapi.ADetailer(ad_model="face_yolov8n.pt", ad_denoising_strength=0.5)])
    info = parse_infotext(read_parameters(result.image))
    assert info["Face restoration"] == "GFPGAN" and info["ADetailer denoising strength"] == "0.5"


def test_cli_restore_faces_and_face_detail(faces_here, tmp_path, capsys):
    out = tmp_path / "face.png"
    code = main(["generate", "a portrait", "--model", "demo", "--device", "cpu", "--steps", "3", "--seed", "2",
                 "--width", "64", "--height", "64", "--restore-faces", "--face-restorer", "GFPGAN",
                 "--face-detail", "--face-detail-strength", "0.5", "--face-dir", str(faces_here), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    info = parse_infotext(read_parameters(Image.open(out)))
    assert info["Face restoration"] == "GFPGAN" and info["ADetailer denoising strength"] == "0.5"


def test_cli_missing_face_model_offline_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["generate", "a portrait", "--model", "demo", "--device", "cpu", "--steps", "2", "--width", "64",
                 "--height", "64", "--restore-faces", "--face-dir", str(tmp_path / "empty"),
                 "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "detection_Resnet50_Final.pth is needed and offline" in err and str(tmp_path / "empty") in err
    weights.configure(None)


def test_sdapi_unknown_ad_field_in_an_off_tab_is_fine(client):
    """webuiapi sends ``args: [False]`` when ADetailer is off; other off forms are accepted too."""
    for args in ([False], [], [True, False, {"ad_model": "None"}]):
        body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "alwayson_scripts": {"ADetailer": {"args": args}}}
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200, args


# --- the page, in a real Chromium (fixtures of test_browser.py; the detector faked as above) -----



@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_page_restores_and_details_faces(serve, page, faces_here):  # noqa: F811
    server = serve(FACE_DIR=str(faces_here))
    page.goto(server.url + "/")
    page.wait_for_selector("#model-status[data-state=ready]")
    page.click("#faces-section summary")
    page.check("#restore_faces")
    page.select_option("#face_restorer", "GFPGAN")
    page.check("#face_detail")
    page.fill("#face_detail_strength", "0.6")
    assert page.text_content("#face_detail_strength-value") == "0.6"
    submit(page, "a portrait", width=64, height=64, steps=3, seed=7)
    page.wait_for_function("() => document.querySelector('#results img') && "
                           "document.querySelector('#results img').naturalWidth > 0", timeout=240_000)
    src = page.get_attribute("#results img", "src")
    png = page.request.get(src if src.startswith("http") else server.url + src).body()
    info = parse_infotext(read_parameters(Image.open(io.BytesIO(png))))
    assert info["Face restoration"] == "GFPGAN" and info["ADetailer denoising strength"] == "0.6"
    assert "Face restoration" in page.text_content("body")
    # Reuse puts the boxes back after they were cleared.
    page.uncheck("#restore_faces")
    page.uncheck("#face_detail")
    page.click("#results .reuse-image")
    assert page.is_checked("#restore_faces") and page.is_checked("#face_detail")
    assert page.input_value("#face_detail_strength") == "0.6"


def test_missing_face_models_offline_are_a_400_at_submit_on_both_apis(make_app, tmp_path, monkeypatch):
    """Offline with no weights in FACE_DIR, the request is refused before anything is queued
    (it was a failed job after the picture was made, a 500 on /sdapi)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = make_app(FACE_DIR=str(tmp_path / "empty")).test_client()
    body = {"prompt": "a portrait", "steps": 1, "width": 64, "height": 64}
    for path, extra, field in (("/api/jobs", {"restore_faces": True}, "restore_faces"),
                               ("/api/jobs", {"face_detail": True}, "face_detail"),
                               ("/sdapi/v1/txt2img", {"restore_faces": True}, "restore_faces")):
        response = client.post(path, json={**body, **extra})
        assert response.status_code == 400, (path, response.get_json())
        error = response.get_json()
        assert error["field"] == field and "detection_Resnet50_Final.pth is needed and offline" in error["error"]
        assert str(tmp_path / "empty") in error["error"]
    assert client.get("/api/jobs").get_json()["jobs"] == []
    weights.configure(None)

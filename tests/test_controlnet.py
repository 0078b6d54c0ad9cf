"""ControlNet units (issue #25) on the demo model with a tiny ControlNet made from the demo UNet
(``ControlNetModel.from_unet``, random zero-convs: app/models/controlnet.py ``demo-controlnet``):
the engine's per-step residuals, the A1111 extension's API, the canny preprocessor against OpenCV."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from app.engine.controlnet import ControlSet, encode_png, fit, parse_infotext_unit
from app.engine.metadata import parse_infotext
from app.engine.preprocessors import run_module
from app.engine.preprocessors.canny import canny
from app.engine.types import ValidationError


def control_image(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (20, 30, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, size[0] - 12, size[1] - 6), fill=(230, 200, 40))
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=(250, 250, 250), width=3)
    return image


def unit(**overrides) -> dict:
    values = {"image": encode_png(control_image()), "module": "canny", "model": "demo-controlnet"}
    values.update(overrides)
    return values


def pixels(image):
    return np.asarray(image, dtype=np.int16)


# --- engine ------------------------------------------------------------------------------

def test_weight_zero_gives_exactly_the_plain_picture(engine, small_request):
    plain = engine.generate(small_request(seed=5)).images[0]
    zero = engine.generate(small_request(seed=5, controlnet=[unit(weight=0.0)])).images[0]
    full = engine.generate(small_request(seed=5, controlnet=[unit(weight=1.0)])).images[0]
    assert zero.tobytes() == plain.tobytes()
    assert np.abs(pixels(full) - pixels(plain)).max() > 0  # the ControlNet changes the picture


def test_guidance_start_and_end_switch_the_unit_at_the_right_steps(engine, small_request):
    # A1111's extension: active while start <= sampling_step / steps <= end, sampling_step being the index
    # of the last finished step (0 before the first). Euler, 10 steps: one model call per step.
    engine.generate(small_request(steps=10, scheduler="Euler", controlnet=[
        unit(guidance_start=0.3, guidance_end=0.6), unit(guidance_start=0.0, guidance_end=1.0)]))
    calls = engine.last_control.calls
    steps = [step for step, _ in calls]
    assert steps == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    first = [ran[0] for _, ran in calls]
    assert first == [0.3 <= s / 10 <= 0.6 for s in steps]
    assert first == [False, False, False, False, True, True, True, True, False, False]
    assert all(ran[1] for _, ran in calls)


def test_two_units_add_up(engine):
    import torch

    model = engine.controlnets.get("demo-controlnet")
    hint = torch.rand(1, 3, 64, 64)
    from app.engine.controlnet import ActiveUnit

    def units(*weights):
        return ControlSet([ActiveUnit(model, hint, w, 0.0, 1.0, "Balanced", "none") for w in weights])

    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0])
    cond, rows = torch.randn(2, 77, engine.pipe.text_encoder.config.hidden_size), torch.tensor([True, False])
    with torch.no_grad():
        one = units(0.7).residuals(x, t, cond, rows)
        two = units(0.7, 0.5).residuals(x, t, cond, rows)
        single = units(1.0).residuals(x, t, cond, rows)
    for a, b in zip(two[0] + [two[1]], single[0] + [single[1]]):
        torch.testing.assert_close(a, 1.2 * b, rtol=1e-4, atol=1e-5)
    for a, b in zip(one[0], single[0]):
        torch.testing.assert_close(a, 0.7 * b, rtol=1e-4, atol=1e-5)


def test_control_modes_scale_as_the_extension(engine):
    import torch

    from app.engine.controlnet import CONTROL_MODES, ActiveUnit

    model = engine.controlnets.get("demo-controlnet")
    hint = torch.rand(1, 3, 64, 64)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0])
    cond, rows = torch.randn(2, 77, engine.pipe.text_encoder.config.hidden_size), torch.tensor([True, False])
    out = {}
    with torch.no_grad():
        for mode in CONTROL_MODES:
            out[mode] = ControlSet([ActiveUnit(model, hint, 1.0, 0, 1, mode, "none")]).residuals(x, t, cond, rows)
    balanced, prompt, control = (out[m] for m in CONTROL_MODES)
    n = len(balanced[0]) + 1
    for i, (b, p) in enumerate(zip(balanced[0] + [balanced[1]], prompt[0] + [prompt[1]])):
        torch.testing.assert_close(p, b * 0.825 ** (n - 1 - i))  # soft injection
    for p, c in zip(prompt[0] + [prompt[1]], control[0] + [control[1]]):
        torch.testing.assert_close(c[0], p[0])  # the prompt's row: soft scales
        assert c[1].abs().max() == 0  # the negative prompt's row: no control
    # The hires pass gives canny units the soft scales whatever the mode.
    hires = ControlSet([ActiveUnit(model, hint, 1.0, 0, 1, "Balanced", "canny")], hires=True)
    assert hires.scales(hires.units[0], 13) == [0.825 ** (12 - i) for i in range(13)]


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "hires"])
def test_units_work_in_img2img_inpainting_and_the_hires_pass(engine, small_request, kind):
    init = control_image()
    extra = {"img2img": dict(init_image=init, strength=0.6),
             "inpaint": dict(init_image=init, mask=Image.new("L", (64, 64), 255), strength=0.6),
             "hires": dict(enable_hr=True, hr_scale=1.5, strength=0.5)}[kind]
    plain = engine.generate(small_request(seed=3, **extra)).images[0]
    result = engine.generate(small_request(seed=3, controlnet=[unit(image=None if kind != "hires" else
                                                                      encode_png(init))], **extra))
    assert result.images[0].size == plain.size
    assert np.abs(pixels(result.images[0]) - pixels(plain)).max() > 0
    if kind == "hires":  # the last pass is the hires one: its control map is at the hires size
        assert tuple(engine.last_control.units[0].hint.shape[-2:]) == (96, 96) and engine.last_control.hires


def test_infotext_records_each_unit_as_the_extension(engine, small_request):
    result = engine.generate(small_request(controlnet=[unit(weight=0.5, control_mode=1, resize_mode="Just Resize")]))
    params = parse_infotext(result.infotexts[0])
    assert params["ControlNet 0"] == (
        "Module: canny, Model: demo-controlnet, Weight: 0.5, Resize Mode: Just Resize, Processor Res: 512, "
        "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: My prompt is more important")
    back = parse_infotext_unit(params["ControlNet 0"])
    assert back["weight"] == 0.5 and back["control_mode"] == "My prompt is more important"


@pytest.mark.parametrize("field,value", [("weight", 3), ("weight", "x"), ("guidance_start", -0.1),
                                         ("control_mode", "Loud"), ("resize_mode", 7), ("module", "no_such_module"),
                                         ("model", "None"), ("image", "not base64!"), ("colour", 1)])
def test_bad_units_name_the_field(small_request, field, value):
    with pytest.raises(ValidationError) as info:
        small_request(controlnet=[unit(**{field: value})]).validate()
    assert info.value.field == f"controlnet[0].{field}"


def test_start_after_end_is_refused(small_request):
    with pytest.raises(ValidationError) as info:
        small_request(controlnet=[unit(guidance_start=0.8, guidance_end=0.2)]).validate()
    assert info.value.field == "controlnet[0].guidance_start"


def test_unknown_model_is_named_when_it_runs(engine, small_request):
    with pytest.raises(ValidationError) as info:
        engine.generate(small_request(controlnet=[unit(model="no-such-controlnet")]))
    assert info.value.field == "controlnet[0].model" and "no-such-controlnet" in info.value.message


# --- preprocessors --------------------------------------------------------------------

def noisy_picture(size=(97, 80)) -> np.ndarray:
    image = control_image(size).filter(ImageFilter.GaussianBlur(1.5))
    noise = np.random.default_rng(0).integers(-8, 9, (size[1], size[0], 3))
    return np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("low,high", [(100, 200), (50, 120), (200, 100), (20, 40), (1, 255)])
@pytest.mark.parametrize("channels", [1, 3])
def test_canny_matches_opencv(low, high, channels):
    cv2 = pytest.importorskip("cv2")  # test-only reference (tests/requirements-reference.txt)
    picture = noisy_picture()
    if channels == 1:
        picture = np.ascontiguousarray(picture[..., 1])
    ours, theirs = canny(picture, low, high), cv2.Canny(picture, low, high)
    assert (theirs > 0).sum() > 100
    assert (ours != theirs).sum() == 0


@pytest.mark.parametrize("module,res,size", [("canny", 512, (512, 640)), ("canny", 96, (96, 120)),
                                             ("none", 512, (80, 100)), ("invert", 512, (80, 100))])
def test_preprocessors_give_the_requested_resolution(module, res, size):
    # The extension's rule: processor_res is the short side; none and invert take no resolution.
    out = run_module(module, control_image((80, 100)), res)
    assert out.size == size and out.mode == "RGB"


def test_resize_modes_fit_the_map_as_the_extension():
    wide = Image.new("RGB", (200, 100), (255, 255, 255))
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        assert fit(wide, mode, 64, 96).size == (64, 96)
    filled = np.asarray(fit(Image.new("RGB", (200, 100), (9, 9, 9)), "Resize and Fill", 64, 96))
    assert (filled == 9).all()  # padded with the border's median colour


# --- web ------------------------------------------------------------------------------

def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_extension_routes_answer_as_the_extension(client):
    assert client.get("/controlnet/version").get_json() == {"version": 3}
    models = client.get("/controlnet/model_list").get_json()
    assert models == {"model_list": ["demo-controlnet"]}
    modules = client.get("/controlnet/module_list").get_json()
    assert modules["module_list"][0] == "none" and {"canny", "invert"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1,
                                                               "max": 255, "step": 1}
    aliases = client.get("/controlnet/module_list?alias_names=true").get_json()
    assert "invert (from white bg & black line)" in aliases["module_list"]


def test_detect_route(client):
    response = client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(control_image((80, 100)))],
        "controlnet_processor_res": 128, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150})
    assert response.status_code == 200
    body = response.get_json()
    assert body["info"] == "Success"
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as im:
        assert im.size == (128, 160)
        expected = run_module("canny", control_image((80, 100)), 128, 50, 150)
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))
    bad = client.post("/controlnet/detect", json={"controlnet_module": "zoe", "controlnet_input_images": ["x"]})
    assert bad.status_code == 422 and bad.get_json()["detail"] == "Module not available"
    empty = client.post("/controlnet/detect", json={"controlnet_module": "canny"})
    assert empty.status_code == 422 and empty.get_json()["detail"] == "No image selected"


def test_extension_client_payload_succeeds(client):
    # The extension's own example (example/txt2img_example/api_txt2img.py), with our model's name and a small size.
    payload = {
        "prompt": "a large avalanche", "negative_prompt": "", "batch_size": 1, "steps": 3, "cfg_scale": 7,
        "width": 64, "height": 64, "seed": 4,
        "alwayson_scripts": {"controlnet": {"args": [{
            "enabled": True, "module": "none", "model": "demo-controlnet", "weight": 1.0,
            "image": b64(control_image()), "resize_mode": "Crop and Resize", "lowvram": False,
            "processor_res": 64, "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0,
            "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False}]}},
    }
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.get_json()
    info = json.loads(response.get_json()["info"])
    assert info["infotexts"][0].count("ControlNet 0: \"Module: none, Model: demo-controlnet, Weight: 1.0") == 1
    # Off units and an empty list change nothing; "ControlNet" spelled as the inpaint example does works too.
    off = dict(payload, alwayson_scripts={"ControlNet": {"args": [{"enabled": False, "model": "x"}]}})
    response = client.post("/sdapi/v1/txt2img", json=off)
    assert response.status_code == 200 and "ControlNet 0" not in json.loads(response.get_json()["info"])["infotexts"][0]


@pytest.mark.parametrize("change,field", [({"weight": 5}, "controlnet[0].weight"),
                                          ({"mystery": 1}, "controlnet[0].mystery"),
                                          ({"model": "nope"}, "controlnet[0].model"),
                                          ({"input_image": None, "image": None}, "controlnet[0].image")])
def test_sdapi_bad_units_are_400_naming_the_field(client, change, field):
    args = {"enabled": True, "module": "none", "model": "demo-controlnet", "input_image": b64(control_image())}
    args.update(change)
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                      "alwayson_scripts": {"controlnet": {"args": [args]}}})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] == field


def test_a_unit_without_an_image_on_txt2img_is_refused_before_queueing(client):
    """It was queued (202) and failed when it ran; img2img's units may use the init image instead."""
    response = client.post("/api/jobs", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                              "controlnet": [unit(image=None)]})
    assert response.status_code == 400 and response.get_json()["field"] == "controlnet[0].image", response.get_json()
    assert client.get("/api/jobs").get_json()["jobs"] == []


def test_native_api_takes_units(client):
    response = client.post("/api/jobs", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                              "controlnet": [unit(weight=0.8)]})
    assert response.status_code in (200, 201, 202), response.get_json()
    job = client.get(f"/api/jobs/{response.get_json()['job']['id']}?wait=60").get_json()['job']
    assert job["state"] == "done", job
    assert "ControlNet 0: \"Module: canny, Model: demo-controlnet, Weight: 0.8" in job["images"][0]["infotext"]
    # The job's params show the units without their images (the image is kept with the job, not echoed).
    assert job["params"]["controlnet"][0]["weight"] == 0.8 and "image" not in job["params"]["controlnet"][0]
    bad = client.post("/api/jobs", json={"prompt": "x", "controlnet": [unit(weight=-1)]})
    assert bad.status_code == 400 and bad.get_json()["field"] == "controlnet[0].weight"


# --- memory: the ControlNet is the only extra model ---------------------------------------

RSS_SCRIPT = r"""
import gc, json, sys
from PIL import Image
from app.engine.controlnet import encode_png
from app.engine.engine import Engine, EngineOptions
from app.engine.types import GenerationRequest

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

engine = Engine.load(EngineOptions(model=sys.argv[1], device="cpu", controlnet_dir=sys.argv[2]))
request = dict(prompt="a hill", width=64, height=64, steps=2, seed=1)
engine.generate(GenerationRequest(**request))
plain = rss()
unit = {"image": encode_png(Image.new("RGB", (64, 64), (200, 10, 10))), "model": "big-controlnet"}
engine.generate(GenerationRequest(**request, controlnet=[unit]))
engine.generate(GenerationRequest(**request, controlnet=[unit, dict(unit, weight=0.5)]))
controlled = rss()
size = sum(p.numel() * p.element_size() for p in engine.controlnets.get("big-controlnet").parameters())
print(json.dumps({"plain": plain, "controlled": controlled, "controlnet_bytes": size}))
"""


@pytest.mark.slow
def test_a_controlnet_run_adds_only_the_controlnet_to_memory(tmp_path):
    """In a fresh process, with the demo architecture scaled up (a UNet of about 350 MB in fp32) and a
    ControlNet made from it in the ControlNet folder (a diffusers folder, loaded by name): after runs with
    one and two units of it, the resident memory is within 10% of the plain model's plus the ControlNet's
    own size: no second UNet, VAE or text encoder."""
    import os
    import subprocess
    import sys

    import torch
    from diffusers import ControlNetModel

    from app.models.demo import DEMO_TEXT_ENCODER, DEMO_UNET, DEMO_VAE, SD21_SCHEDULER
    from app.models.random_weights import build_components, build_pipeline

    big_unet = dict(DEMO_UNET, block_out_channels=(256, 512))
    pipe = build_pipeline(build_components(big_unet, DEMO_VAE, DEMO_TEXT_ENCODER, SD21_SCHEDULER,
                                           dtype=torch.float16, seed=1))
    pipe.save_pretrained(tmp_path / "big")
    ControlNetModel.from_unet(pipe.unet).save_pretrained(tmp_path / "controlnets" / "big-controlnet")
    del pipe
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "big"), str(tmp_path / "controlnets")],
                         capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    mb = {k: round(v / 2**20) for k, v in rss.items()}
    assert rss["controlled"] <= 1.1 * rss["plain"] + rss["controlnet_bytes"], mb


# --- command line -------------------------------------------------------------------------

def test_cli_takes_units(tmp_path, capsys):
    from app.cli import main
    from app.engine.metadata import read_parameters

    control_image().save(tmp_path / "edges.png")
    unit_text = f"image={tmp_path / 'edges.png'},model=demo-controlnet,module=canny,weight=0.8,guidance_end=0.5"
    code = main(["generate", "x", "--model", "demo", "--device", "cpu", "--steps", "2", "--width", "64",
                 "--height", "64", "--controlnet", unit_text, "-o", str(tmp_path / "out.png")])
    assert code == 0, capsys.readouterr().err
    params = parse_infotext(read_parameters(Image.open(tmp_path / "out.png")))
    assert params["ControlNet 0"].startswith("Module: canny, Model: demo-controlnet, Weight: 0.8")
    assert "Guidance End: 0.5" in params["ControlNet 0"]
    code = main(["generate", "x", "--model", "demo", "--controlnet", "model=demo-controlnet,weight=9",
                 "-o", str(tmp_path / "bad.png")])
    err = capsys.readouterr().err
    assert code == 2 and "controlnet[0].weight: must be between 0 and 2 (got 9)" in err


@pytest.fixture(scope="session")
def tiny_depth_model(tmp_path_factory):
    """Depth Anything's architecture (transformers' DepthAnythingConfig over a DINOv2 backbone), tiny and
    random, saved as a folder: stands in for the Hub download (LiheYoung/depth-anything-small-hf)."""
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
    folder = tmp_path_factory.mktemp("depth") / "depth-anything-tiny"
    AutoModelForDepthEstimation.from_config(config).save_pretrained(folder)
    return str(folder)


def test_depth_preprocessor_runs_at_the_requested_resolution(tiny_depth_model, monkeypatch):
    from app.models import controlnet as models

    monkeypatch.setattr(models, "DEPTH_MODEL", tiny_depth_model)
    out = run_module("depth_anything", control_image((80, 100)), 96)
    assert out.size == (96, 120) and out.mode == "RGB"
    grey = np.asarray(out)[..., 0]
    assert grey.min() == 0 and grey.max() == 255  # min-max scaled, as the extension
    monkeypatch.setattr(models, "DEPTH_MODEL", "/no/such/depth-model")
    models._depth.clear()
    with pytest.raises(Exception, match="/no/such/depth-model"):
        run_module("depth_anything", control_image(), 64)


def test_hr_option_picks_the_passes_of_a_hires_run(engine, small_request):
    hires = dict(enable_hr=True, hr_scale=1.5, strength=0.5, steps=2)
    engine.generate(small_request(controlnet=[unit(hr_option="Low res only")], **hires))
    assert engine.last_control.hires and engine.last_control.units == []  # the hires pass runs without it
    engine.generate(small_request(controlnet=[unit(hr_option="High res only")], **hires))
    assert len(engine.last_control.units) == 1
    with pytest.raises(ValidationError) as info:
        small_request(controlnet=[unit(hr_option="Sometimes")]).validate()
    assert info.value.field == "controlnet[0].hr_option"


def test_png_info_reads_the_units_back(client):
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"controlnet": {"args": [{"input_image": b64(control_image()), "module": "canny",
                                                      "model": "demo-controlnet", "guidance": 0.5}]}}})
    assert response.status_code == 200, response.get_json()
    png = response.get_json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": png}).get_json()
    text = info["parameters"]["ControlNet 0"]
    assert text.startswith("Module: canny, Model: demo-controlnet, Weight: 1.0, Resize Mode: Crop and Resize")
    assert parse_infotext_unit(text)["guidance_end"] == 0.5  # the extension's legacy "guidance" alias
    # The request png-info describes restores the unit's settings (the image is the user's to give again).
    (restored,) = info["request"]["controlnet"]
    assert restored == {"module": "canny", "model": "demo-controlnet", "weight": 1.0, "resize_mode": "Crop and Resize",
                        "processor_res": 512, "threshold_a": 100.0, "threshold_b": 200.0, "guidance_start": 0.0,
                        "guidance_end": 0.5, "pixel_perfect": False, "control_mode": "Balanced"}


def test_a_hub_controlnet_that_cannot_download_is_400_naming_it_and_the_folder(client):
    # The tests run with HF_HUB_OFFLINE=1 (conftest): the Hub download fails as it does without internet.
    hub_id = "thibaud/controlnet-sd21-canny-diffusers"
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"controlnet": {"args": [{"input_image": b64(control_image()), "model": hub_id}]}}})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["field"] == "controlnet[0].model" and hub_id in body["error"] and "ControlNet folder" in body["error"]


def test_pixel_perfect_resolution_is_the_extensions():
    from app.engine.controlnet import pixel_perfect_resolution

    image = Image.new("RGB", (100, 80))
    assert pixel_perfect_resolution(image, 64, 64, "Crop and Resize") == 64  # covers: the larger scale
    assert pixel_perfect_resolution(image, 64, 64, "Resize and Fill") == 51  # fits: the smaller scale (51.2)

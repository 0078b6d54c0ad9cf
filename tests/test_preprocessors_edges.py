"""The soft-edge and scribble preprocessors (issue #25): HED, PiDiNet and XDoG maps against controlnet_aux 0.0.10
(the annotators the extension ships, as a test-only reference: tests/requirements-reference.txt) and OpenCV, from
the same random weights and the same pixels; sizes, binary scribbles, the module list, missing weights."""
from __future__ import annotations

import base64
import importlib
import importlib.util
import io
import sys
import types

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.engine.preprocessors import run_module
from app.engine.preprocessors.common import gaussian_blur, gaussian_blur_uint8, nms, resize_short_side, safe_step, scribble
from app.models import annotators

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")  # test-only reference
pytest.importorskip("einops")  # controlnet_aux's annotators import it

SOFT = ("hed", "hed_safe", "pidinet", "pidinet_safe")
SCRIBBLES = ("scribble_hed", "pidinet_scribble", "scribble_xdog")
RES = 64


def picture(size=(96, 128)) -> Image.Image:
    """Shapes with hard and soft edges and some texture, so every map has lines to find."""
    w, h = size
    image = Image.new("RGB", size, (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 12, w - 20, h // 2), fill=(30, 60, 140))
    draw.rectangle((w // 3, h // 2 + 8, w - 8, h - 10), fill=(240, 240, 240), outline=(10, 10, 10), width=3)
    draw.line((0, h - 1, w - 1, 0), fill=(20, 20, 20), width=2)
    rng = np.random.default_rng(3)
    noisy = np.asarray(image).astype(int) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def padded_input(image: Image.Image, res: int) -> tuple[np.ndarray, int, int]:
    """What the extension's resize_image_with_pad feeds its networks (after our short-side resize):
    replicate-padded right and bottom to multiples of 64."""
    array = np.asarray(resize_short_side(image, res))
    h, w = array.shape[:2]
    padded = cv2.copyMakeBorder(array, 0, -h % 64, 0, -w % 64, cv2.BORDER_REPLICATE)
    return padded, h, w


@pytest.fixture(scope="module")
def ref():
    """controlnet_aux's ``hed``, ``pidi`` and ``util`` executed inside a bare stand-in package (its own
    ``__init__`` imports every annotator and their heavy extras)."""
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("controlnet_aux (test-only reference) is not installed")
    name = "_controlnet_aux_ref"
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package
    try:
        yield types.SimpleNamespace(hed=importlib.import_module(f"{name}.hed"),
                                    pidi=importlib.import_module(f"{name}.pidi"),
                                    util=importlib.import_module(f"{name}.util"))
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


@pytest.fixture(scope="module")
def networks(ref):
    """Their HED and PiDiNet with random weights (scaled so the maps are neither blank nor saturated), and ours
    loaded from their state dicts with strict=True: the published files' names and shapes."""
    from app.engine.preprocessors import hed, pidinet

    torch.manual_seed(0)
    their_hed = ref.hed.ControlNetHED_Apache2().float().eval()
    their_pidi = ref.pidi.pidinet().eval()
    with torch.no_grad():  # scaled so that the maps have contrast and the scribbles some lines, not all
        their_hed.norm.fill_(120.0)
        for p in their_hed.parameters():
            if p.ndim == 4:
                p.mul_(1.4)  # keeps the activations alive through 13 ReLU layers
        for block in (their_hed.block1, their_hed.block2, their_hed.block3, their_hed.block4, their_hed.block5):
            block.projection.bias.sub_(4.0)
        for reduce in their_pidi.conv_reduces:
            reduce.conv.weight.mul_(300.0)
        their_pidi.classifier.bias.sub_(1.5)
    our_hed, our_pidi = hed.HED(), pidinet.PiDiNet()
    our_hed.load_state_dict(their_hed.state_dict(), strict=True)
    our_pidi.load_state_dict(their_pidi.state_dict(), strict=True)
    return {"hed": (their_hed, our_hed.eval()), "pidinet": (their_pidi, our_pidi.eval())}


@pytest.fixture(scope="module")
def ours(networks):
    """Every module's map of ``picture()`` at RES (and hed's at 96), computed once with our networks put in
    the annotator cache, as if their files had been downloaded."""
    from app.engine.preprocessors import hed, pidinet

    annotators.clear()
    annotators.built(hed.WEIGHTS, lambda: networks["hed"][1])
    annotators.built(pidinet.WEIGHTS, lambda: networks["pidinet"][1])
    try:
        maps = {module: run_module(module, picture(), RES) for module in SOFT + SCRIBBLES}
        maps["hed@96"] = run_module("hed", picture(), 96)
    finally:
        annotators.clear()
    return maps


@pytest.fixture(scope="module")
def theirs(ref, networks):
    """controlnet_aux's soft maps of ``picture()`` at RES."""
    return {module: their_soft(ref, networks, module, picture(), RES) for module in SOFT}


def their_soft(ref, networks, module: str, image: Image.Image, res: int) -> np.ndarray:
    """controlnet_aux's detector on the extension's padded input, cropped back as the extension does."""
    padded, h, w = padded_input(image, res)
    family = "hed" if "hed" in module else "pidinet"
    detector = (ref.hed.HEDdetector if family == "hed" else ref.pidi.PidiNetDetector)(networks[family][0])
    side = min(padded.shape[:2])  # already a multiple of 64 at this side: their resizes are no-ops
    out = detector(padded, detect_resolution=side, image_resolution=side, safe=module.endswith("_safe"),
                   output_type="np")
    assert out.shape[:2] == padded.shape[:2]
    return out[:h, :w, 0]


def their_scribble(ref, soft: np.ndarray) -> np.ndarray:
    """The extension's scribble_hed / scribble_pidinet steps on the cropped soft map, with OpenCV."""
    out = cv2.GaussianBlur(ref.util.nms(soft, 127, 3.0), (0, 0), 3.0)
    out[out > 4] = 255
    out[out < 255] = 0
    return out


def their_xdog(image: Image.Image, res: int, threshold: float) -> np.ndarray:
    """The extension's scribble_xdog with OpenCV (uint8 arithmetic included)."""
    padded, h, w = padded_input(image, res)
    g1 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[2 * (255 - dog) > threshold] = 255
    return out[:h, :w]


def grey(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    assert image.mode == "RGB" and (array == array[..., :1]).all()  # the map is grey, as RGB
    return array[..., 0]


# --- the maps against the peers -------------------------------------------------------------------------------

@pytest.mark.parametrize("module", SOFT)
def test_soft_edges_match_controlnet_aux(ours, theirs, module):
    mine, reference = grey(ours[module]).astype(int), theirs[module].astype(int)
    assert mine.shape == reference.shape
    assert reference.std() > 10  # a map with edges, not a blank or saturated one
    diff = np.abs(mine - reference)
    if module.endswith("_safe"):  # three levels: a rounding step at a level's edge moves a pixel a whole level
        assert set(np.unique(mine)) <= {0, 127, 255}
        assert (diff > 0).mean() < 0.01
    else:
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02


@pytest.mark.parametrize("module,soft", [("scribble_hed", "hed"), ("pidinet_scribble", "pidinet")])
def test_network_scribbles_match_the_extensions_steps(ref, ours, theirs, module, soft):
    reference = their_scribble(ref, theirs[soft])
    assert 0.1 < (reference == 255).mean() < 0.6
    assert (grey(ours[module]) != reference).mean() < 0.002


@pytest.mark.parametrize("threshold", [32, 8, 64])
def test_xdog_matches_the_extension(threshold):
    image = picture()
    ours = np.asarray(run_module("scribble_xdog", image, RES, threshold))
    theirs = their_xdog(image, RES, threshold)
    assert (theirs == 255).mean() > 0.02
    assert (ours != theirs).mean() < 0.005


def test_helpers_match_opencv_and_controlnet_aux(ref):
    rng = np.random.default_rng(1)
    soft = cv2.GaussianBlur(rng.integers(0, 256, (70, 90)).astype(np.uint8), (0, 0), 1.5)
    soft = cv2.normalize(soft, None, 0, 255, cv2.NORM_MINMAX)
    for sigma in (0.5, 3.0, 5.0):
        assert np.allclose(gaussian_blur(soft.astype(np.float32), sigma),
                           cv2.GaussianBlur(soft.astype(np.float32), (0, 0), sigma), atol=1e-3)
    theirs_nms = ref.util.nms(soft, 127, 3.0)
    assert (theirs_nms == 255).sum() > 20
    assert (nms(soft, 127, 3.0) != theirs_nms).mean() < 0.002
    assert np.array_equal(gaussian_blur_uint8(theirs_nms, 3.0), cv2.GaussianBlur(theirs_nms, (0, 0), 3.0))
    assert np.array_equal(gaussian_blur_uint8(soft, 1.0), cv2.GaussianBlur(soft, (0, 0), 1.0))
    assert (scribble(soft) != their_scribble(ref, soft)).mean() < 0.002
    levels = rng.random((40, 50))
    assert np.array_equal(safe_step(levels), ref.util.safe_step(levels))


# --- what a user gets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", SOFT + SCRIBBLES)
def test_maps_have_the_requested_resolution(ours, module):
    # processor_res is the short side (the extension pads to multiples of 64 for the network, then crops back).
    assert ours[module].size == (64, 85) and ours[module].mode == "RGB"
    if module in SCRIBBLES:
        assert set(np.unique(np.asarray(ours[module]))) <= {0, 255}


def test_a_larger_resolution_too(ours):
    assert ours["hed@96"].size == (96, 128)
    assert run_module("scribble_xdog", picture(), 200).size == (200, 267)


def test_module_list_shows_the_new_modules_and_their_sliders(client):
    body = client.get("/controlnet/module_list").get_json()
    assert {"hed", "hed_safe", "scribble_hed", "pidinet", "pidinet_safe", "pidinet_scribble",
            "scribble_xdog"} <= set(body["module_list"])
    resolution = {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
    assert body["module_detail"]["hed"] == {"model_free": False, "sliders": [resolution]}
    assert body["module_detail"]["scribble_xdog"]["sliders"] == [
        resolution, {"name": "XDoG Threshold", "value": 32, "min": 1, "max": 64, "step": 0.01}]
    aliases = client.get("/controlnet/module_list?alias_names=true").get_json()["module_list"]
    assert {"softedge_hed", "softedge_hedsafe", "scribble_hed", "softedge_pidinet", "softedge_pidisafe",
            "scribble_pidinet", "scribble_xdog"} <= set(aliases)


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_missing_weights_are_a_400_naming_the_file(client, monkeypatch, tmp_path):
    # The tests run offline (HF_HUB_OFFLINE=1, conftest): the download fails as it does without internet.
    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(tmp_path))
    annotators.clear()
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"controlnet": {"args": [{"input_image": b64(picture()), "module": "softedge_hed",
                                                      "model": "demo-controlnet"}]}}})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["field"] == "controlnet[0].module" and "ControlNetHED.pth" in body["error"]
    detect = client.post("/controlnet/detect", json={"controlnet_module": "softedge_pidinet",
                                                     "controlnet_input_images": [b64(picture())]})
    assert detect.status_code == 400 and "table5_pidinet.pth" in detect.get_json()["error"]


def test_published_file_layouts_load(networks, ours, monkeypatch, tmp_path):
    # The files as lllyasviel/Annotators has them: ControlNetHED.pth a plain state dict; table5_pidinet.pth
    # PiDiNet's training checkpoint, {"state_dict": {"module.<name>": ...}, "epoch": ...} (DataParallel).
    torch.save(networks["hed"][0].state_dict(), tmp_path / "ControlNetHED.pth")
    torch.save({"epoch": 14, "state_dict": {f"module.{k}": v for k, v in networks["pidinet"][0].state_dict().items()}},
               tmp_path / "table5_pidinet.pth")
    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(tmp_path))
    annotators.clear()
    try:
        for module in ("hed", "pidinet"):
            assert np.array_equal(np.asarray(run_module(module, picture(), RES)), np.asarray(ours[module]))
    finally:
        annotators.clear()

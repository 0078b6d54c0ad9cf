"""The lineart, shuffle and color preprocessors (issue #25) against controlnet_aux 0.0.10 and OpenCV,
test-only references (tests/requirements-reference.txt).

The networks are the real architectures with random weights: controlnet_aux's network is built, its
state dict saved as the annotator file our loader reads (T2I_ANNOTATOR_DIR), and both maps are compared
from the same input. controlnet_aux resizes to multiples of 64 where the extension pads, so the references
are given the image as the extension's ``resize_image_with_pad`` makes it (scaled so the short side is the
resolution, edge-padded to multiples of 64; here the short side already is the resolution) and cropped."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from app.engine.preprocessors import MODULES, run_module
from app.engine.preprocessors import lineart as ours
from app.engine.preprocessors.shuffle import shuffle_seed
from app.models import annotators

REFERENCE = "_controlnet_aux_ref"


def reference(name: str) -> types.ModuleType:
    """controlnet_aux's subpackage ``name``, loaded without its package ``__init__`` (which imports every
    detector and their dependencies: timm, torchvision, ...)."""
    pytest.importorskip("cv2")
    pytest.importorskip("einops")
    if REFERENCE not in sys.modules:
        spec = importlib.util.find_spec("controlnet_aux")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("controlnet_aux (test-only reference) is not installed")
        package = types.ModuleType(REFERENCE)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[REFERENCE] = package
    return importlib.import_module(f"{REFERENCE}.{name}")


def drawing(size=(96, 64)) -> Image.Image:
    """Dark lines on a light background, softened (what lineart detectors are for)."""
    image = Image.new("RGB", size, (232, 222, 204))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, size[0] - 16, size[1] - 4), outline=(20, 24, 40), width=2)
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=(60, 30, 20), width=2)
    draw.rectangle((size[0] // 2, 6, size[0] // 2 + 14, 20), fill=(180, 40, 40))
    return image.filter(ImageFilter.GaussianBlur(0.7))


def extension_input(image: Image.Image) -> np.ndarray:
    """The image as the extension hands it to a detector at resolution = its short side: edge-padded."""
    array = np.asarray(image)
    h, w = array.shape[:2]
    return np.pad(array, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")


def grey(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    assert image.mode == "RGB" and (array == array[..., :1]).all()
    return array[..., 0].astype(int)


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """controlnet_aux's lineart networks with random weights, saved under the Annotators file names (the
    anime U-Net with 16 filters instead of 64, to keep the test fast, and its keys prefixed ``module.`` as
    a DataParallel checkpoint's)."""
    import torch

    sketch_ref, anime_ref = reference("lineart"), reference("lineart_anime")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("annotators")
    realistic, coarse = sketch_ref.Generator(3, 1, 3).eval(), sketch_ref.Generator(3, 1, 3).eval()
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    anime = anime_ref.UnetGenerator(3, 1, 8, 16, norm_layer=norm).eval()
    torch.save(realistic.state_dict(), folder / ours.REALISTIC)
    torch.save(coarse.state_dict(), folder / ours.COARSE)
    torch.save({f"module.{k}": v for k, v in anime.state_dict().items()}, folder / ours.ANIME)
    return {"folder": folder, "lineart": realistic, "lineart_coarse": coarse, "lineart_anime": anime,
            "anime_ref": anime_ref, "sketch_ref": sketch_ref}


@pytest.fixture
def weights(networks, monkeypatch):
    """Our loader reads the saved files; the anime network is built with the saved one's 16 filters."""
    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(networks["folder"]))
    monkeypatch.setattr(ours, "anime_generator", functools.partial(ours.anime_generator, 16))
    annotators.clear()
    yield networks
    annotators.clear()


# --- the networks --------------------------------------------------------------------------------------

def test_our_networks_take_the_published_state_dicts():
    """Full size: the same parameter names and shapes as controlnet_aux's networks (built on the meta
    device: no memory, no time), so the real files load with strict=True."""
    import torch

    sketch_ref, anime_ref = reference("lineart"), reference("lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    with torch.device("meta"):
        pairs = [(ours.sketch_generator(), sketch_ref.Generator(3, 1, 3)),
                 (ours.anime_generator(), anime_ref.UnetGenerator(3, 1, 8, 64, norm_layer=norm))]
    for mine, theirs in pairs:
        assert {k: v.shape for k, v in mine.state_dict().items()} == \
               {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in pairs[1][0].parameters()) == 54_405_505


@pytest.mark.parametrize("module", ["lineart", "lineart_coarse"])
def test_sketch_lineart_matches_controlnet_aux(weights, module):
    image = drawing()
    out = run_module(module, image, 64)
    detector = weights["sketch_ref"].LineartDetector(weights["lineart"], weights["lineart_coarse"])
    expected = detector(extension_input(image), coarse=module == "lineart_coarse", detect_resolution=64,
                        image_resolution=64, output_type="np")[:64, :96, 0]
    assert out.size == (96, 64)
    assert expected.max() - expected.min() > 50  # a map with content, not a flat field
    assert np.abs(grey(out) - expected).max() <= 1  # the same float ops; 1 level for a rounding edge


def test_anime_lineart_matches_controlnet_aux(weights):
    image = drawing()
    out = run_module("lineart_anime", image, 64)
    expected = weights["anime_ref"].LineartAnimeDetector(weights["lineart_anime"])(
        extension_input(image), detect_resolution=64, image_resolution=64, output_type="np")[:64, :96, 0]
    assert out.size == (96, 64) and expected.max() - expected.min() > 50
    # The network's input is resized to 256x256 and its output back: OpenCV's 8-bit bicubic rounds its own
    # way, torch's is the same filter in float, so a pixel may land 1 level off before the network.
    diff = np.abs(grey(out) - expected)
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_lineart_standard_matches_controlnet_aux():
    image = drawing()
    out = run_module("lineart_standard", image, 64)
    expected = reference("lineart_standard").LineartStandardDetector()(
        extension_input(image), detect_resolution=64, output_type="np")[:64, :96, 0]
    assert expected.max() > 100
    # scipy's Gaussian (float64 kernel) against OpenCV's (float32): at most a level at a rounding edge.
    assert np.abs(grey(out) - expected).max() <= 1


def test_lineart_without_its_weights_is_a_400_naming_the_file(client, monkeypatch, tmp_path):
    import base64
    import io

    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(tmp_path))  # empty; the Hub is offline in the tests
    annotators.clear()
    buf = io.BytesIO()
    drawing().save(buf, format="PNG")
    picture = base64.b64encode(buf.getvalue()).decode()
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"controlnet": {"args": [{"input_image": picture, "module": "lineart_realistic",
                                                      "model": "demo-controlnet"}]}}})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["field"] == "controlnet[0].module" and "sk_model.pth" in body["error"], body
    detect = client.post("/controlnet/detect", json={"controlnet_module": "lineart_coarse",
                                                     "controlnet_input_images": [picture]})
    assert detect.status_code == 400 and "sk_model2.pth" in detect.get_json()["error"]


# --- the network-free maps -----------------------------------------------------------------------------

def test_shuffle_is_the_extensions_flow_field_seeded_by_the_request():
    """Exactly controlnet_aux's ContentShuffleDetector after ``np.random.seed(shuffle_seed(image))``."""
    image = drawing((128, 64))
    out = run_module("shuffle", image, 64)
    array = np.asarray(image)
    np.random.seed(shuffle_seed(array))
    expected = reference("shuffle").ContentShuffleDetector()(array, detect_resolution=64, image_resolution=64,
                                                             output_type="np")
    assert np.array_equal(np.asarray(out), expected)
    assert np.array_equal(np.asarray(run_module("shuffle", image, 64)), expected)  # the same request, the same map
    flipped = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # another picture, another flow field
    assert shuffle_seed(np.asarray(flipped)) != shuffle_seed(array)
    assert not np.array_equal(np.asarray(run_module("shuffle", flipped, 64))[::-1], expected)


def test_color_grid_matches_the_extensions_opencv_calls():
    cv2 = pytest.importorskip("cv2")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 200, 3), dtype=np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(6))
    out = np.asarray(run_module("color", image, 128))
    # annotator/color's apply_color: the short side to res (INTER_AREA; 128 already), w//64 x h//64 bicubic,
    # nearest back up.
    small = cv2.resize(np.asarray(image), (200 // 64, 128 // 64), interpolation=cv2.INTER_CUBIC)
    expected = cv2.resize(small, (200, 128), interpolation=cv2.INTER_NEAREST)
    assert out.shape == expected.shape
    # OpenCV sums its 8-bit bicubic in float32, we in float64: 1 level at a rounding edge.
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 6  # 3 x 2 blocks


# --- what every module promises ------------------------------------------------------------------------

NEW = ("lineart", "lineart_coarse", "lineart_anime", "lineart_standard", "shuffle", "color")


@pytest.mark.parametrize("module", NEW)
def test_the_map_has_the_requested_resolution(weights, module):
    out = run_module(module, drawing((96, 128)), 64)
    assert out.size == (64, 85) and out.mode == "RGB"


def test_module_list_shows_them_as_the_extension(client):
    body = client.get("/controlnet/module_list").get_json()
    names = body["module_list"]
    assert [n for n in names if n in NEW] == ["lineart_anime", "lineart_coarse", "lineart", "lineart_standard",
                                              "shuffle", "color"]  # the extension's UI order: by label
    detail = body["module_detail"]
    resolution = {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
    for name in NEW:
        assert detail[name]["model_free"] is False
        assert detail[name]["sliders"] == ([] if name == "shuffle" else [resolution])  # shuffle: fixed, hidden
    aliases = client.get("/controlnet/module_list?alias_names=true").get_json()["module_list"]
    assert {"lineart_realistic", "t2ia_color_grid", "lineart_standard (from white bg & black line)"} <= set(aliases)
    assert {MODULES[n].label for n in NEW} <= set(aliases)

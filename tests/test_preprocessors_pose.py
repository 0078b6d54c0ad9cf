"""The openpose preprocessors against controlnet_aux 0.0.10's open_pose (the annotator A1111's ControlNet
extension runs), in layers: the networks (same random weights, same outputs), the pipeline from network
output to keypoints (stand-in networks returning the maps of a known skeleton, so both run the same
resizing, blurring, peak finding and part association), the drawing (same keypoints, pixels against
OpenCV's), and every module's output size.

controlnet_aux is test-only (tests/requirements-reference.txt, installed --no-deps): only its open_pose
modules are loaded, in a bare ``controlnet_aux`` package (its __init__ imports every annotator). The names
they import that are not installed are stubbed while they load and run: skimage.measure.label (by
scipy.ndimage.label, 8-connected, as the hand code asks), torchvision's ToTensor/ToPILImage (unused by the
code tested) and matplotlib.colors.hsv_to_rgb (a plain HSV conversion)."""
from __future__ import annotations

import colorsys
import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.engine.preprocessors import MODULES, run_module
from app.engine.preprocessors import openpose as op
from app.engine.preprocessors.common import gaussian_blur_uint8

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")


def _stub_modules() -> dict[str, types.ModuleType]:
    from scipy import ndimage

    def label(image, return_num=False, connectivity=None):
        labels, count = ndimage.label(image, structure=np.ones((3,) * image.ndim, dtype=int))
        return (labels, count) if return_num else labels

    def hsv_to_rgb(hsv):
        return np.array(colorsys.hsv_to_rgb(*hsv))

    stubs = {}
    for name in ("skimage", "skimage.measure", "torchvision", "torchvision.transforms", "matplotlib",
                 "matplotlib.colors"):
        stubs[name] = types.ModuleType(name)
    stubs["skimage.measure"].label = label
    stubs["torchvision.transforms"].ToTensor = stubs["torchvision.transforms"].ToPILImage = object
    stubs["matplotlib.colors"].hsv_to_rgb = hsv_to_rgb
    stubs["matplotlib"].colors = stubs["matplotlib.colors"]
    return {name: m for name, m in stubs.items() if importlib.util.find_spec(name.split(".")[0]) is None}


@contextlib.contextmanager
def stubs():
    saved = {name: sys.modules.get(name) for name in _stub_modules()}
    sys.modules.update(_stub_modules())
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def ref():
    """controlnet_aux.open_pose (its package module: body, hand, face, util, model)."""
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("controlnet_aux (test-only reference) is not installed")
    saved = {k: v for k, v in sys.modules.items() if k == "controlnet_aux" or k.startswith("controlnet_aux.")}
    package = types.ModuleType("controlnet_aux")
    package.__path__ = [str(Path(next(iter(spec.submodule_search_locations))))]
    sys.modules["controlnet_aux"] = package
    with stubs():
        module = importlib.import_module("controlnet_aux.open_pose")
    yield module
    for k in [k for k in sys.modules if k == "controlnet_aux" or k.startswith("controlnet_aux.")]:
        del sys.modules[k]
    sys.modules.update(saved)


# --- (1) networks ------------------------------------------------------------------------------------------

def _same_weights(make_theirs, make_ours, prefixed: bool):
    """Both networks with the same random weights (He-scaled, drawn directly: no slow default init), ours
    under the published names (the reference's own names carry a block prefix its loader adds)."""
    with torch.device("meta"):
        theirs, ours = make_theirs(), make_ours()
    state = {}
    for name, p in theirs.state_dict().items():
        fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        state[name] = torch.randn(p.shape) * (2 / fan_in) ** 0.5 if p.ndim > 1 else torch.randn(p.shape) * 0.01
    theirs.load_state_dict(state, strict=True, assign=True)
    if prefixed:
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    ours.load_state_dict(state, strict=True, assign=True)  # every published name, and only those
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("which", ["body", "hand", "face"])
def test_networks_match_the_reference_on_the_same_weights(ref, which):
    torch.manual_seed(0)
    if which == "body":
        ours, theirs = _same_weights(ref.model.bodypose_model, op.body_net, True)
    elif which == "hand":
        ours, theirs = _same_weights(ref.model.handpose_model, op.hand_net, True)
    else:
        ours, theirs = _same_weights(ref.face.FaceNet, op.face_net, False)
    x = torch.rand(1, 3, 40, 48) - 0.5
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    got = got if isinstance(got, tuple) else (got,)
    want = want[-1:] if which == "face" else (want if isinstance(want, tuple) else (want,))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = float(w.abs().max()) + 1e-12
        assert float((g - w).abs().max()) <= 1e-4 * scale


# --- (2) network output to keypoints -----------------------------------------------------------------------

# Two people on a stride-8 grid (x, y), 18 parts each (OpenPose's COCO order), in a 368 x 368 image.
PEOPLE = [
    [(5, 3), (5, 5), (4, 5), (3, 8), (3, 11), (7, 5), (8, 8), (8, 11), (4, 11), (4, 15), (4, 19), (6, 11),
     (6, 15), (6, 19), (4.5, 2.5), (5.5, 2.5), (4, 3), (6, 3)],
    [(16, 4), (16, 6), (15, 6), (14, 9), (13, 12), (17, 6), (18, 9), (19, 12), (15, 12), (15, 16), (15, 20),
     (17, 12), (17, 16), (17, 20), (15.5, 3.5), (16.5, 3.5), (15, 4), (17, 4)],
]


def _skeleton_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (19) and PAFs (38) at stride 8 for PEOPLE: a Gaussian per part, the unit vector of each
    limb within a cell of its segment."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    heat = np.zeros((19, height, width))
    pafs = np.zeros((38, height, width))
    for person in PEOPLE:
        person = [(x + 0.2, y + 0.3) for x, y in person]  # off the half pixels of the 368 px image: no ties
        for part, (x, y) in enumerate(person):
            heat[part] = np.maximum(heat[part], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.8 ** 2)))
        for (a, b), (cx, cy) in zip(op.LIMBS, op.PAF_CHANNELS):
            (ax, ay), (bx, by) = person[a - 1], person[b - 1]
            v = np.array([bx - ax, by - ay])
            length = np.linalg.norm(v)
            u = v / length
            t = np.clip(((xx - ax) * u[0] + (yy - ay) * u[1]) / length, 0, 1)
            near = np.hypot(xx - (ax + t * v[0]), yy - (ay + t * v[1])) <= 1.0
            pafs[cx][near], pafs[cy][near] = u[0], u[1]
    heat[18] = 1 - heat[:18].max(axis=0)
    return heat.astype(np.float32), pafs.astype(np.float32)


class MapsNet(torch.nn.Module):
    """Stands in for a network: fixed maps (at the input's stride-8 size) whatever the pixels."""

    def __init__(self, make, tuple_out: bool = False, as_list: bool = False):
        super().__init__()
        self.make, self.tuple_out, self.as_list = make, tuple_out, as_list
        self.seen: list[tuple[int, int]] = []
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the reference's device lookup

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        outs = [torch.from_numpy(m)[None] for m in self.make(x.shape[2] // 8, x.shape[3] // 8)]
        if self.as_list:
            return outs
        return tuple(outs[::-1]) if self.tuple_out else outs[0]


def _body_net():
    return MapsNet(_skeleton_maps, tuple_out=True)  # (PAFs, heatmaps), as the body model


def _hand_maps(height: int, width: int):
    """22 Gaussians spread over the crop (positions as fractions of its size)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    maps = np.zeros((22, height, width), dtype=np.float32)
    for k in range(21):
        fx, fy = 0.15 + 0.7 * ((k * 7) % 21) / 20, 0.15 + 0.7 * k / 20
        maps[k] = np.exp(-((xx - fx * width) ** 2 + (yy - fy * height) ** 2) / (2 * (0.04 * width + 0.5) ** 2))
    return [maps]


def _face_maps(height: int, width: int):
    """71 maps at the network's output size (48 x 48 for 384 px): a Gaussian each, a few below threshold."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    maps = np.zeros((71, height, width), dtype=np.float32)
    for k in range(71):
        fx, fy = 0.1 + 0.8 * ((k * 13) % 71) / 70, 0.1 + 0.8 * k / 70
        peak = 0.03 if k % 10 == 9 else 0.9
        maps[k] = peak * np.exp(-((xx - fx * width) ** 2 + (yy - fy * height) ** 2) / (2 * 1.5 ** 2))
    return [maps]


def _image(size=(368, 368)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _their_body(ref, net):
    body = object.__new__(ref.body.Body)
    body.model = net
    return body


def test_body_keypoints_match_the_reference(ref):
    bgr = _image()
    with stubs():
        want_candidates, want_people = _their_body(ref, _body_net())(bgr)
    heat, pafs = op.body_heatmaps(_body_net(), bgr)
    candidates, people = op.associate(op.find_peaks(heat), pafs, bgr.shape[0])
    assert len(want_people) == 2 and np.all(want_people[:, -1] == 18)  # the skeleton is found whole
    assert candidates.shape == want_candidates.shape
    assert np.array_equal(candidates[:, [0, 1, 3]], want_candidates[:, [0, 1, 3]])
    assert np.allclose(candidates[:, 2], want_candidates[:, 2], atol=1e-4)
    assert np.array_equal(people[:, :18], want_people[:, :18]) and np.array_equal(people[:, 19], want_people[:, 19])
    assert np.allclose(people[:, 18], want_people[:, 18], atol=1e-3)


def test_association_matches_the_reference_on_crowded_random_peaks(ref):
    """The greedy assembly on its own, with the PAFs as they come from a random picture's maps."""
    rng = np.random.default_rng(3)
    heat = rng.random((120, 140, 19)) * 0.15  # many weak local maxima above 0.1 after blurring is rare:
    for part in range(18):  # so add a few clear peaks per part
        for _ in range(3):
            y, x = rng.integers(10, 110), rng.integers(10, 130)
            heat[y, x, part] += 40.0
    pafs = rng.normal(0.3, 0.4, (120, 140, 38))
    peaks = op.find_peaks(heat)
    candidates, people = op.associate(peaks, pafs, 120)

    body = _their_body(ref, MapsNet(lambda h, w: [np.zeros((19, 2, 2), np.float32), np.zeros((38, 2, 2), np.float32)],
                                    tuple_out=True))
    # The reference has no entry point after its network and resizing: run its __call__ with those replaced
    # by the maps themselves (scale 0.5 * 368 / 120, both resizes identities).
    util = ref.body.util
    calls = iter([heat, pafs])
    originals = util.smart_resize_k, util.smart_resize
    util.smart_resize_k = lambda x, fx, fy: x if x.ndim == 3 and x.shape[2] != 3 else np.zeros((120, 136, 3))
    util.smart_resize = lambda x, s: next(calls)
    try:
        with stubs():
            want_candidates, want_people = body(np.zeros((120, 140, 3), dtype=np.uint8))
    finally:
        util.smart_resize_k, util.smart_resize = originals
    assert np.allclose(candidates, want_candidates)
    assert people.shape == want_people.shape and np.allclose(people, want_people)


def test_hand_boxes_and_keypoints_match_the_reference(ref):
    bgr = _image((368, 368))
    with stubs():
        (body,) = [b for b in ref.body.Body.format_body_result(*_their_body(ref, _body_net())(bgr))][:1]
    pixels = [op.Keypoint(k.x, k.y) if k else None for k in body.keypoints]
    boxes = op.hand_boxes(pixels, 368, 368)
    assert boxes == ref.util.handDetect(body, bgr) and len(boxes) == 2
    hand = object.__new__(ref.hand.Hand)
    hand.model = MapsNet(_hand_maps)
    for x, y, side, _ in boxes:
        crop = bgr[y:y + side, x:x + side]
        with stubs():
            want = hand(crop)
        ours_net = MapsNet(_hand_maps)
        got = op.hand_peaks(op.hand_heatmaps(ours_net, crop), side, side)
        assert ours_net.seen == [(184, 184), (368, 368), (552, 552), (736, 736)]
        assert np.abs(got - want).max() <= 1, (got, want)


def test_face_box_and_keypoints_match_the_reference(ref):
    bgr = _image((368, 368))
    with stubs():
        bodies = ref.body.Body.format_body_result(*_their_body(ref, _body_net())(bgr))
    face = object.__new__(ref.face.Face)
    face.model = MapsNet(_face_maps, as_list=True)
    for body in bodies:
        pixels = [op.Keypoint(k.x, k.y) if k else None for k in body.keypoints]
        box = op.face_box(pixels, 368, 368)
        assert box == ref.util.faceDetect(body, bgr) and box is not None
        x, y, side = box
        crop = bgr[y:y + side, x:x + side]
        with stubs():
            want = face.compute_peaks_from_heatmaps(face(crop))
        got = op.face_peaks(op.face_heatmaps(MapsNet(_face_maps), crop))
        assert got.shape == want.shape == (64, 2) and np.abs(got - want).max() <= 1


# --- (3) drawing ---------------------------------------------------------------------------------------------

def test_resize_and_blur_match_opencv():
    rng = np.random.default_rng(2)
    maps = rng.random((23, 29, 5)).astype(np.float32)
    up = op.resize(maps, 184, 232)
    want = np.stack([cv2.resize(maps[:, :, c], (232, 184), interpolation=cv2.INTER_LANCZOS4) for c in range(5)], 2)
    assert np.abs(up - want).max() < 1e-4
    for size in ((100, 77), (64, 64)):
        down = op.resize(up, *size)
        want = np.stack([cv2.resize(up[:, :, c], size[::-1], interpolation=cv2.INTER_AREA) for c in range(5)], 2)
        assert np.abs(down - want).max() < 1e-4
    image = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    assert np.abs(op.resize(image, 184, 184).astype(int)
                  - cv2.resize(image, (184, 184), interpolation=cv2.INTER_LANCZOS4)).max() <= 1
    assert np.abs(gaussian_blur_uint8(image, 0.8).astype(int) - cv2.GaussianBlur(image, (0, 0), 0.8)).max() <= 1


def _random_pose(ref, rng, height, width):
    body = [ref.body.Keypoint(float(x), float(y)) if rng.random() > 0.15 else None
            for x, y in rng.uniform(0.05, 0.95, (18, 2))]
    hands = [[ref.body.Keypoint(float(x), float(y)) for x, y in rng.uniform(0.05, 0.95, (21, 2))] for _ in range(2)]
    face = [ref.body.Keypoint(float(x), float(y)) for x, y in rng.uniform(0.05, 0.95, (68, 2))]
    return ref.PoseResult(ref.body.BodyResult(body, 1.0, 18), hands[0], hands[1], face)


def test_drawing_matches_opencv_within_a_few_pixels(ref):
    rng = np.random.default_rng(5)
    height, width = 512, 384
    poses = [_random_pose(ref, rng, height, width) for _ in range(2)]
    with stubs():
        want = ref.draw_poses(poses, height, width)
    ours = [op.Pose([op.Keypoint(k.x, k.y) if k else None for k in p.body.keypoints],
                    [op.Keypoint(k.x, k.y) for k in p.left_hand], [op.Keypoint(k.x, k.y) for k in p.right_hand],
                    [op.Keypoint(k.x, k.y) for k in p.face]) for p in poses]
    got = np.asarray(op.draw_poses(ours, height, width))
    differ = np.any(got != want, axis=2)
    drawn = np.any(want > 0, axis=2)
    # Limbs agree to ~1%, 2 px hand bones to ~5% (OpenCV's thick-line rasterizer is approximated).
    assert differ.sum() <= 0.05 * drawn.sum(), (differ.sum(), drawn.sum())
    # Colours are the reference's: every colour we paint is one it paints.
    assert set(map(tuple, got.reshape(-1, 3))) <= set(map(tuple, want.reshape(-1, 3)))


def test_limb_polygons_are_opencvs():
    rng = np.random.default_rng(6)
    for _ in range(50):
        cx, cy, length, angle = int(rng.integers(0, 300)), int(rng.integers(0, 300)), int(rng.integers(0, 90)), \
            int(rng.integers(-180, 180))
        got = op.ellipse_polygon(cx, cy, length, 4, angle)
        want = cv2.ellipse2Poly((cx, cy), (length, 4), angle, 0, 360, 1)
        assert len(got) == len(want) and np.abs(np.array(got) - want).max() <= 1


# --- (4) modules ------------------------------------------------------------------------------------------------

@pytest.fixture
def stand_in_networks(monkeypatch):
    nets = {op.BODY_FILE: _body_net(), op.HAND_FILE: MapsNet(_hand_maps), op.FACE_FILE: MapsNet(_face_maps)}
    monkeypatch.setattr(op, "_load", lambda filename, make: nets[filename])
    return nets


@pytest.mark.parametrize("module", ["openpose", "openpose_face", "openpose_faceonly", "openpose_full",
                                   "openpose_hand"])
def test_every_module_draws_at_the_requested_resolution(stand_in_networks, module):
    image = Image.fromarray(_image((300, 240))[:, :, ::-1])
    out = run_module(module, image, 256)
    assert out.size == (320, 256) and out.mode == "RGB"
    assert np.asarray(out).any()  # the stand-in skeleton is drawn
    assert MODULES[module].model_free is False


def test_openpose_full_draws_hands_and_face(stand_in_networks):
    image = Image.fromarray(_image((368, 368)))
    body = np.asarray(run_module("openpose", image, 368))
    full = np.asarray(run_module("openpose_full", image, 368))
    assert np.all(full[np.any(body > 0, axis=2) & ~np.any(full > 0, axis=2)] == 0)
    colours = set(map(tuple, full.reshape(-1, 3)))
    assert (0, 0, 255) in colours and (255, 255, 255) in colours  # hand joints, face points
    assert (255, 255, 255) not in set(map(tuple, body.reshape(-1, 3)))


def test_without_weights_the_unit_is_a_400_naming_the_file(client, monkeypatch, tmp_path):
    import base64
    import io

    from app.models import annotators

    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(tmp_path))
    annotators.clear()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    unit = {"input_image": base64.b64encode(buf.getvalue()).decode(), "module": "openpose", "model": "demo-controlnet"}
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                      "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["field"] == "controlnet[0].module" and "body_pose_model.pth" in body["error"], body
    detect = client.post("/controlnet/detect", json={"controlnet_module": "openpose_hand",
                                                     "controlnet_input_images": [unit["input_image"]]})
    assert detect.status_code == 400 and "body_pose_model.pth" in detect.get_json()["error"]


def test_drawing_helpers_fill_like_opencv():
    canvas = Image.new("RGB", (15, 15))
    op._disc(ImageDraw.Draw(canvas), 7, 7, 4, (255, 255, 255))
    want = np.zeros((15, 15, 3), np.uint8)
    cv2.circle(want, (7, 7), 4, (255, 255, 255), thickness=-1)
    assert np.array_equal(np.asarray(canvas), want)


def test_openpose_loads_the_published_file_by_name_and_runs(monkeypatch, tmp_path):
    """The body network from ``body_pose_model.pth`` in T2I_ANNOTATOR_DIR (random weights under the published
    names, read weights_only, loaded strictly): a black map at the requested size (random weights find
    no one)."""
    from app.models import annotators

    with torch.device("meta"):
        names = op.body_net().state_dict()
    torch.save({k: torch.randn(v.shape) * 0.01 for k, v in names.items()}, tmp_path / op.BODY_FILE)
    monkeypatch.setenv("T2I_ANNOTATOR_DIR", str(tmp_path))
    annotators.clear()
    try:
        out = run_module("openpose", Image.fromarray(_image((90, 72))), 64)
    finally:
        annotators.clear()
    assert out.size == (80, 64) and out.mode == "RGB"

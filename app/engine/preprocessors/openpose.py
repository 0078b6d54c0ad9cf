"""``openpose``, ``openpose_hand``, ``openpose_face``, ``openpose_faceonly``, ``openpose_full``: the CMU
OpenPose body, hand and face networks with ControlNet's post-processing and drawing, as A1111's
ControlNet extension (and controlnet_aux 0.0.10, its annotator packaged) run them.

The image is scaled to ``processor_res`` on its short side; the skeleton is drawn on black at that size.
Weights: ``body_pose_model.pth``, ``hand_pose_model.pth`` and ``facenet.pth`` of ``lllyasviel/Annotators``
(app/models/annotators.py). OpenCV's resizing (INTER_AREA down, INTER_LANCZOS4 up), its Gaussian blur and
its drawing are reimplemented on numpy/scipy/PIL; tests/test_preprocessors_pose.py compares every stage
with controlnet_aux and OpenCV.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from app.engine.preprocessors.common import RESOLUTION, Module, resize_short_side

BODY_FILE, HAND_FILE, FACE_FILE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"


# --- OpenCV's resize, separable: out = Ay @ x @ Ax^T per channel ------------------------------------------

def _lanczos4_matrix(src: int, dst: int) -> np.ndarray:
    """INTER_LANCZOS4 weights (dst, src): 8 taps around the pixel-centre mapped position, border replicated."""
    scale = src / dst
    fx = (np.arange(dst) + 0.5) * scale - 0.5
    sx = np.floor(fx).astype(int)
    frac = fx - sx
    taps = np.arange(8)
    d = frac[:, None] + 3 - taps[None, :]
    weights = np.sinc(d) * np.sinc(d / 4)
    weights /= weights.sum(axis=1, keepdims=True)
    exact = frac < np.finfo(np.float32).eps  # on a source pixel: that pixel alone
    weights[exact] = (taps == 3).astype(float)
    cols = np.clip(sx[:, None] - 3 + taps[None, :], 0, src - 1)
    matrix = np.zeros((dst, src))
    np.add.at(matrix, (np.repeat(np.arange(dst), 8), cols.ravel()), weights.ravel())
    return matrix


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """INTER_AREA weights (dst, src) for shrinking: each output pixel averages the source area it covers."""
    scale = src / dst
    matrix = np.zeros((dst, src))
    for dx in range(dst):
        start, end = dx * scale, (dx + 1) * scale
        cell = min(scale, src - start)
        first, last = math.ceil(start), min(math.floor(end), src - 1)
        first = min(first, last)
        if first - start > 1e-3:
            matrix[dx, first - 1] += (first - start) / cell
        matrix[dx, first:last] += 1 / cell
        if end - last > 1e-3:
            matrix[dx, last] += min(min(end - last, 1.0), cell) / cell
    return matrix


def resize(x: np.ndarray, height: int, width: int, factor: float | None = None) -> np.ndarray:
    """``cv2.resize`` to (height, width) as the annotator's ``smart_resize`` picks it: INTER_AREA when the
    size shrinks (by the sum of the sides, or by ``factor`` where the annotator scaled by one), else
    INTER_LANCZOS4. uint8 in, uint8 out (rounded)."""
    h, w = x.shape[:2]
    if (h, w) == (height, width):
        return x.copy()
    shrink = (factor if factor is not None else (height + width) / (h + w)) < 1
    build = _area_matrix if shrink else _lanczos4_matrix
    from scipy.sparse import csr_matrix

    # A handful of taps per output pixel: sparse matrices, rows first, then columns.
    ay, ax = csr_matrix(build(h, height).astype(np.float32)), csr_matrix(build(w, width).astype(np.float32))
    rows = (ay @ x.astype(np.float32).reshape(h, -1)).reshape(height, w, -1)
    cols = ax @ np.ascontiguousarray(rows.transpose(1, 0, 2)).reshape(w, -1)
    out = np.ascontiguousarray(cols.reshape(width, height, -1).transpose(1, 0, 2)).reshape((height, width) + x.shape[2:])
    if x.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(x.dtype)


def _gaussian_blur_u8(x: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(x, (0, 0), sigma)`` on uint8: OpenCV's kernel size for 8-bit (6 sigma + 1, odd),
    mirrored borders (BORDER_REFLECT_101)."""
    from scipy import ndimage

    size = int(round(sigma * 3 * 2 + 1)) | 1
    t = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-t * t / (2 * sigma * sigma))
    kernel /= kernel.sum()
    out = ndimage.convolve1d(x.astype(np.float64), kernel, axis=0, mode="mirror")
    out = ndimage.convolve1d(out, kernel, axis=1, mode="mirror")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pad_right_down(image: np.ndarray, stride: int, value: int) -> tuple[np.ndarray, int, int]:
    """The image padded with ``value`` at the bottom and right to multiples of ``stride``."""
    h, w = image.shape[:2]
    pad_h, pad_w = -h % stride, -w % stride
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=value)
    return padded, pad_h, pad_w


# --- networks (layer names are those of the published state dicts) ---------------------------------------

_VGG = (("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool", ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
        ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
        ("conv4_1", 256, 512), ("conv4_2", 512, 512))


def _networks():
    """The network classes, defined on first use (torch is imported only when a pose module runs)."""
    import torch
    from torch import nn

    class _Net(nn.Module):
        def _conv(self, name: str, cin: int, cout: int, k: int) -> None:
            self.add_module(name, nn.Conv2d(cin, cout, k, 1, k // 2))

        def _run(self, names: Sequence, x, relu_last: bool = False):
            for i, name in enumerate(names):
                if name == "pool":
                    x = nn.functional.max_pool2d(x, 2, 2)
                    continue
                x = getattr(self, name)(x)
                if i < len(names) - 1 or relu_last:
                    x = torch.relu(x)
            return x

    class BodyNet(_Net):
        """The body model: VGG features, then 6 stages of two branches, PAFs (L1, 38) and heatmaps (L2, 19)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = [v[0] if isinstance(v, tuple) else v for v in _VGG] + ["conv4_3_CPM", "conv4_4_CPM"]
            for v in _VGG:
                if isinstance(v, tuple):
                    self._conv(*v, 3)
            self._conv("conv4_3_CPM", 512, 256, 3)
            self._conv("conv4_4_CPM", 256, 128, 3)
            self.branches: dict[tuple[int, int], list[str]] = {}
            for branch, out in ((1, 38), (2, 19)):
                names = [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
                for name, cin, cout, k in zip(names, (128, 128, 128, 128, 512), (128, 128, 128, 512, out),
                                              (3, 3, 3, 1, 1)):
                    self._conv(name, cin, cout, k)
                self.branches[1, branch] = names
                for stage in range(2, 7):
                    names = [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]
                    for name, cin, cout, k in zip(names, (185,) + (128,) * 6, (128,) * 6 + (out,), (7,) * 5 + (1, 1)):
                        self._conv(name, cin, cout, k)
                    self.branches[stage, branch] = names

        def forward(self, x):
            features = self._run(self.stem, x, relu_last=True)
            h = features
            for stage in range(1, 7):
                # The published model keeps a ReLU on the last heatmap layer (its no-ReLU list names
                # Mconv7_stage6_L1 twice and misses ..._L2); the annotator's output depends on it.
                pafs = self._run(self.branches[stage, 1], h)
                heat = self._run(self.branches[stage, 2], h, relu_last=stage == 6)
                h = torch.cat([pafs, heat, features], 1)
            return pafs, heat

    class CascadeNet(_Net):
        """The hand (22 maps) and face (71 maps) models: VGG features, then 6 stages of heatmaps."""

        def __init__(self, maps: int) -> None:
            super().__init__()
            self.stem = [v[0] if isinstance(v, tuple) else v for v in _VGG] + [
                "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"]
            for v in _VGG:
                if isinstance(v, tuple):
                    self._conv(*v, 3)
            for name in ("conv4_3", "conv4_4", "conv5_1", "conv5_2"):
                self._conv(name, 512, 512, 3)
            self._conv("conv5_3_CPM", 512, 128, 3)
            self._conv("conv6_1_CPM", 128, 512, 1)
            self._conv("conv6_2_CPM", 512, maps, 1)
            for stage in range(2, 7):
                for i, cin, cout, k in zip(range(1, 8), (128 + maps,) + (128,) * 6, (128,) * 6 + (maps,),
                                           (7,) * 5 + (1, 1)):
                    self._conv(f"Mconv{i}_stage{stage}", cin, cout, k)

        def forward(self, x):
            features = self._run(self.stem, x, relu_last=True)
            h = self._run(["conv6_1_CPM", "conv6_2_CPM"], features)
            for stage in range(2, 7):
                h = self._run([f"Mconv{i}_stage{stage}" for i in range(1, 8)], torch.cat([h, features], 1))
            return h

    return BodyNet, CascadeNet


def body_net():
    return _networks()[0]()


def hand_net():
    return _networks()[1](22)


def face_net():
    return _networks()[1](71)


def _load(filename: str, make):
    from app.models.annotators import built, load_state_dict

    def build():
        state = load_state_dict(filename)  # first: offline, a ModelLoadError names the file
        network = make()
        network.load_state_dict(state, strict=True)
        return network.eval()

    return built(filename, build)


def _forward(network, image_bgr: np.ndarray):
    """The network on a uint8 BGR image (its input: value/256 - 0.5), outputs as (H, W, C) float32 arrays."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
    with torch.no_grad():
        out = network(x.to(next(network.parameters()).device))
    outs = out if isinstance(out, tuple) else (out,)
    return [o[0].float().cpu().numpy().transpose(1, 2, 0) for o in outs]


def _maps_to_size(maps: np.ndarray, padded_hw: tuple[int, int], pads: tuple[int, int], hw: tuple[int, int]):
    """The network's stride-8 maps upscaled 8x, the padding cut, then scaled to ``hw``."""
    up = resize(maps, maps.shape[0] * 8, maps.shape[1] * 8)
    up = up[:padded_hw[0] - pads[0], :padded_hw[1] - pads[1]]
    return resize(up, *hw)


# --- body: heatmap peaks and part association ---------------------------------------------------------------

# Limbs as (part, part), 1-based as in the OpenPose papers, and the PAF channels of each (x, y).
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
PAF_CHANNELS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
                (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))


@dataclass(frozen=True)
class Keypoint:
    x: float  # normalized to the image's width / height
    y: float


def body_heatmaps(network, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps (H, W, 19), PAFs (H, W, 38)) at the image's size: one pass with the image scaled so its
    height is 184 (boxsize 368 at scale 0.5), padded to a multiple of 8 with grey."""
    h, w = image_bgr.shape[:2]
    scale = 0.5 * 368 / h
    scaled = resize(image_bgr, int(h * scale), int(w * scale), scale)
    padded, pad_h, pad_w = _pad_right_down(scaled, 8, 128)
    pafs, heat = _forward(network, padded)
    heat = _maps_to_size(heat, padded.shape[:2], (pad_h, pad_w), (h, w))
    pafs = _maps_to_size(pafs, padded.shape[:2], (pad_h, pad_w), (h, w))
    return heat.astype(np.float64), pafs.astype(np.float64)


def find_peaks(heatmaps: np.ndarray, threshold: float = 0.1) -> list[list[tuple[int, int, float, int]]]:
    """Per part (18), its peaks (x, y, score, id): local maxima (4-neighbours, ties kept) of the heatmap
    blurred with sigma 3 above ``threshold``, scored on the raw map; ids run over all parts."""
    from scipy.ndimage import gaussian_filter

    peaks, counter = [], 0
    for part in range(18):
        raw = heatmaps[:, :, part]
        blurred = gaussian_filter(raw, sigma=3)
        padded = np.pad(blurred, 1)  # zeros outside, as the annotator's shifted copies
        centre = padded[1:-1, 1:-1]
        on = ((centre >= padded[:-2, 1:-1]) & (centre >= padded[2:, 1:-1]) & (centre >= padded[1:-1, :-2])
              & (centre >= padded[1:-1, 2:]) & (centre > threshold))
        ys, xs = np.nonzero(on)
        peaks.append([(int(x), int(y), float(raw[y, x]), counter + i) for i, (x, y) in enumerate(zip(xs, ys))])
        counter += len(xs)
    return peaks


def _limb_connections(peaks_a, peaks_b, paf_x: np.ndarray, paf_y: np.ndarray, height: int,
                      threshold: float = 0.05, samples: int = 10) -> np.ndarray:
    """Rows (id A, id B, score, index A, index B): the pairs whose segment follows the PAF (9 of 10
    samples above ``threshold``, mean score with a penalty for limbs longer than half the image's height),
    best first, each peak used once."""
    found = []
    for i, a in enumerate(peaks_a):
        for j, b in enumerate(peaks_b):
            vx, vy = b[0] - a[0], b[1] - a[1]
            norm = max(0.001, math.sqrt(vx * vx + vy * vy))
            xs = np.rint(np.linspace(a[0], b[0], num=samples)).astype(int)
            ys = np.rint(np.linspace(a[1], b[1], num=samples)).astype(int)
            along = paf_x[ys, xs] * (vx / norm) + paf_y[ys, xs] * (vy / norm)
            score = sum(along) / len(along) + min(0.5 * height / norm - 1, 0)
            if np.count_nonzero(along > threshold) > 0.8 * len(along) and score > 0:
                found.append((i, j, score))
    found.sort(key=lambda c: c[2], reverse=True)
    rows: list[list[float]] = []
    used_a, used_b = set(), set()
    for i, j, score in found:
        if i not in used_a and j not in used_b:
            rows.append([peaks_a[i][3], peaks_b[j][3], score, i, j])
            used_a.add(i)
            used_b.add(j)
            if len(rows) >= min(len(peaks_a), len(peaks_b)):
                break
    return np.array(rows, dtype=float).reshape(-1, 5)


def associate(peaks: list, pafs: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (n, 4): x, y, score, id; people (m, 20): 18 candidate ids or -1, total score, part count),
    OpenPose's greedy assembly of limbs into people; people with under 4 parts or a mean score under 0.4
    are dropped."""
    connections: list[np.ndarray | None] = []
    for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS):
        pa, pb = peaks[a - 1], peaks[b - 1]
        connections.append(_limb_connections(pa, pb, pafs[:, :, cx], pafs[:, :, cy], height) if pa and pb else None)
    candidates = np.array([p for part in peaks for p in part], dtype=float).reshape(-1, 4)
    people = -np.ones((0, 20))
    for k, ((a, b), rows) in enumerate(zip(LIMBS, connections)):
        if rows is None:
            continue
        ia, ib = a - 1, b - 1
        for row in rows:
            part_a, part_b, limb_score = row[0], row[1], row[2]
            hits = [j for j in range(len(people)) if people[j][ia] == part_a or people[j][ib] == part_b][:2]
            if len(hits) == 1:
                person = people[hits[0]]
                if person[ib] != part_b:
                    person[ib] = part_b
                    person[-1] += 1
                    person[-2] += candidates[int(part_b), 2] + limb_score
            elif len(hits) == 2:
                j1, j2 = hits
                shared = ((people[j1] >= 0).astype(int) + (people[j2] >= 0).astype(int))[:-2]
                if not np.any(shared == 2):  # disjoint: merge the two
                    people[j1][:-2] += people[j2][:-2] + 1
                    people[j1][-2:] += people[j2][-2:]
                    people[j1][-2] += limb_score
                    people = np.delete(people, j2, 0)
                else:
                    people[j1][ib] = part_b
                    people[j1][-1] += 1
                    people[j1][-2] += candidates[int(part_b), 2] + limb_score
            elif k < 17:
                person = -np.ones(20)
                person[ia], person[ib] = part_a, part_b
                person[-1] = 2
                person[-2] = candidates[int(part_a), 2] + candidates[int(part_b), 2] + limb_score
                people = np.vstack([people, person])
    keep = [i for i in range(len(people)) if not (people[i][-1] < 4 or people[i][-2] / people[i][-1] < 0.4)]
    return candidates, people[keep]


def body_keypoints(candidates: np.ndarray, people: np.ndarray, height: int, width: int) -> list[list]:
    """Per person, the 18 keypoints (normalized, None where missing)."""
    return [[Keypoint(candidates[i][0] / float(width), candidates[i][1] / float(height)) if i != -1 else None
             for i in person[:18].astype(int)] for person in people]


# --- hands and face: boxes from the body, one network pass each ---------------------------------------------

def hand_boxes(body: Sequence[Keypoint | None], height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) of the square hand boxes (OpenPose's handDetector): centred a third of the
    forearm beyond the wrist, 1.5 x max(forearm, 0.9 upper arm) wide, cut to the image, at least 20 px.
    ``body`` keypoints are in pixels here (normalized x width)."""
    boxes = []
    for shoulder, elbow, wrist, is_left in ((5, 6, 7, True), (2, 3, 4, False)):
        s, e, w = body[shoulder], body[elbow], body[wrist]
        if s is None or e is None or w is None:
            continue
        x = w.x + 0.33 * (w.x - e.x)
        y = w.y + 0.33 * (w.y - e.y)
        side = 1.5 * max(math.hypot(w.x - e.x, w.y - e.y), 0.9 * math.hypot(e.x - s.x, e.y - s.y))
        x, y = max(x - side / 2, 0), max(y - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= 20:
            boxes.append((int(x), int(y), int(side), is_left))
    return boxes


def hand_heatmaps(network, crop_bgr: np.ndarray) -> np.ndarray:
    """The hand's 22 maps (128, 128): the crop blurred (sigma 0.8), averaged over squares of 184, 368, 552
    and 736 px."""
    blurred = _gaussian_blur_u8(crop_bgr, 0.8)
    total = np.zeros((128, 128, 22))
    for size in (184, 368, 552, 736):
        scaled = resize(blurred, size, size)
        padded, pad_h, pad_w = _pad_right_down(scaled, 8, 128)
        (maps,) = _forward(network, padded)
        total += _maps_to_size(maps, padded.shape[:2], (pad_h, pad_w), (128, 128)) / 4
    return total


def hand_peaks(heatmaps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(21, 2) integer x, y in the crop ((0, 0): not found): per part, the maximum of the raw map within the
    8-connected region (of the sigma-3 blurred map above 0.05) holding most of the map's mass."""
    from scipy import ndimage

    peaks = []
    for part in range(21):
        raw = heatmaps[:, :, part].copy()
        on = ndimage.gaussian_filter(raw, sigma=3) > 0.05
        if not on.any():
            peaks.append([0, 0])
            continue
        labels, count = ndimage.label(on, structure=np.ones((3, 3), dtype=int))
        mass = ndimage.sum(raw, labels, index=np.arange(1, count + 1))
        raw[labels != int(np.argmax(mass)) + 1] = 0
        y, x = np.unravel_index(int(np.argmax(raw)), raw.shape)
        side_h, side_w = heatmaps.shape[:2]
        peaks.append([int(float(x) * float(width) / float(side_w)), int(float(y) * float(height) / float(side_h))])
    return np.array(peaks)


def face_box(body: Sequence[Keypoint | None], height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, side) of the face's square box from the nose, eyes and ears (pixels), or None (under 20 px)."""
    head = body[0]
    marks = [(mark, k) for mark, k in ((body[14], 3.0), (body[15], 3.0), (body[16], 1.5), (body[17], 1.5))
             if mark is not None]
    if head is None or not marks:
        return None
    side = 0.0
    for mark, k in marks:
        side = max(side, max(abs(head.x - mark.x), abs(head.y - mark.y)) * k)
    x, y = max(head.x - side, 0), max(head.y - side, 0)
    full_w = width - x if x + side > width else side * 2
    full_h = height - y if y + side > height else side * 2
    side = min(full_w, full_h)
    return (int(x), int(y), int(side)) if side >= 20 else None


def face_heatmaps(network, crop_bgr: np.ndarray) -> np.ndarray:
    """The face's 71 maps at the crop's size: the crop scaled to 384 px, bilinear back (corners aligned)."""
    import torch

    h, w = crop_bgr.shape[:2]
    scaled = resize(crop_bgr, 384, 384)
    x = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1))).float()[None] / 256.0 - 0.5
    with torch.no_grad():
        maps = network(x.to(next(network.parameters()).device))
        maps = torch.nn.functional.interpolate(maps, (h, w), mode="bilinear", align_corners=True)
    return maps[0].cpu().numpy().transpose(1, 2, 0)


def face_peaks(heatmaps: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """(n, 2) x, y: each map's maximum where it passes ``threshold`` (maps that never do are skipped)."""
    peaks = []
    for part in range(heatmaps.shape[2]):
        m = heatmaps[:, :, part]
        if (m > threshold).any():
            y, x = np.unravel_index(int(np.argmax(m)), m.shape)
            peaks.append([x, y])
    return np.array(peaks)


def _crop_keypoints(peaks: np.ndarray, x0: int, y0: int, height: int, width: int) -> list[Keypoint]:
    """Crop peaks as image keypoints, normalized (float32 as the annotator; (0, ...) peaks become -1)."""
    p = peaks.astype(np.float32)
    p[:, 0] = np.where(p[:, 0] < 1e-6, -1, p[:, 0] + x0) / float(width)
    p[:, 1] = np.where(p[:, 1] < 1e-6, -1, p[:, 1] + y0) / float(height)
    return [Keypoint(x, y) for x, y in p]


# --- drawing -----------------------------------------------------------------------------------------------

BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
_EPS = 0.01


def ellipse_polygon(cx: int, cy: int, ax: int, ay: int, angle: int) -> list[tuple[int, int]]:
    """``cv2.ellipse2Poly(centre, axes, angle, 0, 360, 1)``: a point per degree, rounded, repeats dropped."""
    angle %= 360
    t = np.radians(np.arange(0, 361))
    a = math.radians(angle)
    x, y = ax * np.cos(t), ay * np.sin(t)
    px = np.rint(cx + x * math.cos(a) - y * math.sin(a)).astype(int)
    py = np.rint(cy + x * math.sin(a) + y * math.cos(a)).astype(int)
    points: list[tuple[int, int]] = []
    for p in zip(px.tolist(), py.tolist()):
        if not points or points[-1] != p:
            points.append(p)
    return points if len(points) > 1 else [(cx, cy), (cx, cy)]


def _disc(draw: ImageDraw.ImageDraw, x: int, y: int, radius: int, color: tuple[int, int, int]) -> None:
    """OpenCV's filled circle at an integer centre: the pixels with dx^2 + dy^2 <= r^2."""
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        draw.line([(x - half, y + dy), (x + half, y + dy)], fill=color)


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


@dataclass
class _Walker:
    """One side of the convex fill's scan: the edge ending at ``vertex``, its x on the current row."""

    vertex: int
    step: int  # +1 or n - 1: around the polygon one way or the other
    end: int  # the row where the edge ends
    x: float = -1.0
    dx: float = 0.0


def _fill_convex(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]],
                 color: tuple[int, int, int]) -> None:
    """OpenCV's fillConvexPoly (8-connected): the outline, then a scan from the top vertex down two edge
    walkers whose edges run between the vertices' rows (rounded) from their exact x; each row is filled
    between the walkers' x, rounded. Corners may be fractional (OpenCV's sub-pixel ``shift``)."""
    n = len(points)
    outline = [(_round_half_up(x), _round_half_up(y)) for x, y in points]
    draw.line(outline + outline[:1], fill=color)  # OpenCV's sub-pixel edges (Line2) differ by a pixel here and there
    if n < 3:
        return
    top = min(range(n), key=lambda i: (points[i][1], i))
    y = _round_half_up(points[top][1])
    y_last = _round_half_up(max(p[1] for p in points))
    walkers = [_Walker(top, 1, y), _Walker(top, n - 1, y)]
    budget = n
    while True:
        for w in walkers:
            if y >= w.end:
                start, nxt = w.vertex, (w.vertex + w.step) % n
                while budget > 0:
                    budget -= 1
                    end_row = _round_half_up(points[nxt][1])
                    if end_row > y:
                        xs, xe = points[start][0], points[nxt][0]
                        w.vertex, w.x, w.dx, w.end = nxt, xs, (xe - xs) / (end_row - y), end_row
                        break
                    start, nxt = nxt, (nxt + w.step) % n
                else:
                    budget = -1
        if budget < 0:
            break
        left, right = sorted((walkers[0].x, walkers[1].x))
        draw.line([(_round_half_up(left), y), (_round_half_up(right), y)], fill=color)
        for w in walkers:
            w.x += w.dx
        y += 1
        if y > y_last:
            break


def _thick_line(draw: ImageDraw.ImageDraw, x1: int, y1: int, x2: int, y2: int, color: tuple[int, int, int]) -> None:
    """OpenCV's line of thickness 2: the segment widened by 1 px on each side (sub-pixel corners), with round
    ends of radius 1."""
    length = math.hypot(x2 - x1, y2 - y1)
    if length > 0:
        nx, ny = (y2 - y1) / length, (x1 - x2) / length
        _fill_convex(draw, [(x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x2 - nx, y2 - ny), (x2 + nx, y2 + ny)], color)
    _disc(draw, x1, y1, 1, color)
    _disc(draw, x2, y2, 1, color)


def draw_body(draw: ImageDraw.ImageDraw, keypoints: Sequence[Keypoint | None], height: int, width: int) -> None:
    """Limbs as ellipses 4 px thick in 60% of their colour, then a disc of radius 4 per keypoint."""
    for (a, b), color in zip(LIMBS[:17], BODY_COLORS):
        k1, k2 = keypoints[a - 1], keypoints[b - 1]
        if k1 is None or k2 is None:
            continue
        xs = np.array([k1.x, k2.x]) * float(width)
        ys = np.array([k1.y, k2.y]) * float(height)
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = ellipse_polygon(int(np.mean(xs)), int(np.mean(ys)), int(length / 2), 4, int(angle))
        red, green, blue = (int(float(c) * 0.6) for c in color)
        shade = (red, green, blue)
        _fill_convex(draw, polygon, shade)
    for keypoint, color in zip(keypoints, BODY_COLORS):
        if keypoint is not None:
            _disc(draw, int(keypoint.x * width), int(keypoint.y * height), 4, color)


def _hsv_color(hue: float) -> tuple[int, int, int]:
    """Full saturation and value, hue in [0, 1), to 0..255 RGB (OpenCV rounds the float colour)."""
    i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    q, t = 1 - f, 1 - (1 - f)  # matplotlib's hsv_to_rgb arithmetic, so halves round alike
    rgb = [(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][i]
    r, g, b = (int(np.rint(c * 255)) for c in rgb)
    return r, g, b


def draw_hand(draw: ImageDraw.ImageDraw, keypoints: Sequence[Keypoint] | None, height: int, width: int) -> None:
    """Bones as 2 px lines coloured around the hue circle, then blue discs of radius 4 (pixels at 0 skipped)."""
    if not keypoints:
        return
    for ie, (e1, e2) in enumerate(HAND_EDGES):
        x1, y1 = int(keypoints[e1].x * width), int(keypoints[e1].y * height)
        x2, y2 = int(keypoints[e2].x * width), int(keypoints[e2].y * height)
        if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
            _thick_line(draw, x1, y1, x2, y2, _hsv_color(ie / float(len(HAND_EDGES))))
    for k in keypoints:
        x, y = int(k.x * width), int(k.y * height)
        if x > _EPS and y > _EPS:
            _disc(draw, x, y, 4, (0, 0, 255))


def draw_face(draw: ImageDraw.ImageDraw, keypoints: Sequence[Keypoint] | None, height: int, width: int) -> None:
    """White discs of radius 3."""
    for k in keypoints or ():
        x, y = int(k.x * width), int(k.y * height)
        if x > _EPS and y > _EPS:
            _disc(draw, x, y, 3, (255, 255, 255))


# --- the modules --------------------------------------------------------------------------------------------

@dataclass
class Pose:
    body: list
    left_hand: list | None = None
    right_hand: list | None = None
    face: list | None = None


def detect(image_rgb: np.ndarray, hands: bool, face: bool) -> list[Pose]:
    """The people in the image, keypoints normalized to its size."""
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    h, w = bgr.shape[:2]
    heat, pafs = body_heatmaps(_load(BODY_FILE, body_net), bgr)
    candidates, people = associate(find_peaks(heat), pafs, h)
    poses = []
    for pixels in body_keypoints(candidates, people, 1, 1):  # in pixels first: the boxes are measured so
        pose = Pose([Keypoint(k.x / float(w), k.y / float(h)) if k else None for k in pixels])
        if hands:
            for x, y, side, is_left in hand_boxes(pixels, h, w):
                peaks = hand_peaks(hand_heatmaps(_load(HAND_FILE, hand_net), bgr[y:y + side, x:x + side]), side, side)
                found = _crop_keypoints(peaks, x, y, h, w)
                if is_left:
                    pose.left_hand = found
                else:
                    pose.right_hand = found
        if face:
            box = face_box(pixels, h, w)
            if box is not None:
                x, y, side = box
                crop = bgr[y:y + side, x:x + side]
                peaks = face_peaks(face_heatmaps(_load(FACE_FILE, face_net), crop))
                if peaks.ndim == 2 and peaks.shape[1] == 2:
                    pose.face = _crop_keypoints(peaks, x, y, h, w)
        poses.append(pose)
    return poses


def draw_poses(poses: Sequence[Pose], height: int, width: int, body: bool = True, hands: bool = True,
               face: bool = True) -> Image.Image:
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    for pose in poses:
        if body:
            draw_body(draw, pose.body, height, width)
        if hands:
            draw_hand(draw, pose.left_hand, height, width)
            draw_hand(draw, pose.right_hand, height, width)
        if face:
            draw_face(draw, pose.face, height, width)
    return canvas


def _module(name: str, body: bool, hands: bool, face: bool, with_resolution: bool) -> Module:
    def run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
        array = np.asarray(resize_short_side(image, res).convert("RGB"))
        poses = detect(array, hands, face)
        return draw_poses(poses, array.shape[0], array.shape[1], body, hands, face)

    # The extension shows the resolution slider only on openpose and openpose_full (the others still use it).
    return Module(name, name, RESOLUTION if with_resolution else None, run=run)


MODULES = [
    _module("openpose", True, False, False, True),
    _module("openpose_face", True, False, True, False),
    _module("openpose_faceonly", False, False, True, False),
    _module("openpose_full", True, True, True, True),
    _module("openpose_hand", True, True, False, False),
]

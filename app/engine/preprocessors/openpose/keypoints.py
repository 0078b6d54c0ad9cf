"""Keypoints from the networks' maps: body heatmap peaks and part association, hand and face boxes
from the body and their peaks."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from app.engine.preprocessors.common import gaussian_blur_uint8
from app.engine.preprocessors.openpose.cv import _pad_right_down, resize
from app.engine.preprocessors.openpose.networks import _forward


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
    blurred = gaussian_blur_uint8(crop_bgr, 0.8)
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

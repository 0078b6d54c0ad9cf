"""The extension's pose drawing (limb ellipses, keypoint discs, hand lines, face dots) with PIL, as OpenCV
draws them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import ImageDraw

from app.engine.preprocessors.openpose.keypoints import LIMBS, Keypoint

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

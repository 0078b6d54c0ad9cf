"""RetinaFace (ResNet-50), the face detector A1111 uses through facexlib, written
here so its published weights (``detection_Resnet50_Final.pth``) load by name:
the modules carry facexlib's names (``body`` the ResNet-50 trunk as torchvision
names it, ``fpn``, ``ssh1..3``, ``ClassHead``/``BboxHead``/``LandmarkHead``).

Detection follows facexlib's ``RetinaFace.detect_faces``: BGR pixels minus the
Caffe means, the network at the image's own size, anchors from ``PriorBox``
(min sizes 16/32, 64/128, 256/512 at strides 8/16/32), boxes and five
landmarks decoded with variances 0.1/0.2, a score threshold, then NMS at 0.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from math import ceil
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)  # the Caffe means facexlib subtracts
NMS_THRESHOLD = 0.4


@dataclass(frozen=True)
class Face:
    """One detection in the image's pixels: the box, its score, and five landmarks
    (left eye, right eye, nose, left and right mouth corner) as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]


def _conv_bn(inp: int, out: int, kernel: int, leaky: float | None) -> nn.Sequential:
    """Conv, BatchNorm and (unless ``leaky`` is None) a LeakyReLU: facexlib's conv_bn family, same indices."""
    layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(out)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (stride on the 3x3 conv), with its parameter names."""

    def __init__(self, inp: int, width: int, stride: int):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(inp, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet50Body(nn.Module):
    """The trunk facexlib takes from torchvision's resnet50 (IntermediateLayerGetter up to layer4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inp = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = []
            for i in range(blocks):
                layer.append(_Bottleneck(inp, width, stride if i == 0 else 1))
                inp = width * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class _FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out, 1, leaky)
        self.output2 = _conv_bn(in_channels[1], out, 1, leaky)
        self.output3 = _conv_bn(in_channels[2], out, 1, leaky)
        self.merge1 = _conv_bn(out, out, 3, leaky)
        self.merge2 = _conv_bn(out, out, 3, leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    def __init__(self, inp: int, out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn(inp, out // 2, 3, None)
        self.conv5X5_1 = _conv_bn(inp, out // 4, 3, leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3, None)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5 = self.conv5X5_1(x)
        c7 = self.conv7X7_2(c5)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5), self.conv7x7_3(c7)], dim=1))


class _Head(nn.Module):
    """ClassHead / BboxHead / LandmarkHead: a 1x1 conv giving ``per_anchor`` numbers per anchor."""

    def __init__(self, inp: int, anchors: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(inp, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, channels: int = 256):
        super().__init__()
        self.body = _ResNet50Body()
        self.fpn = _FPN((channels * 2, channels * 4, channels * 8), channels)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(channels, channels), _SSH(channels, channels), _SSH(channels, channels)
        anchors = len(MIN_SIZES[0])
        self.ClassHead = nn.ModuleList([_Head(channels, anchors, 2) for _ in STEPS])
        self.BboxHead = nn.ModuleList([_Head(channels, anchors, 4) for _ in STEPS])
        self.LandmarkHead = nn.ModuleList([_Head(channels, anchors, 10) for _ in STEPS])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return boxes, F.softmax(scores, dim=-1), marks


def load_retinaface(state: dict[str, Any]) -> RetinaFace:
    """The detector with ``state`` loaded by name (facexlib's files may prefix keys with ``module.``);
    ValueError when the tensors are not this network's."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = RetinaFace()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older saves lack the counters
    if missing or unexpected:
        raise ValueError(f"not facexlib's RetinaFace ResNet-50: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def priors(height: int, width: int) -> torch.Tensor:
    """facexlib's PriorBox: (cx, cy, w, h) of every anchor, relative to the image, in the heads' order."""
    anchors: list[float] = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(anchors).view(-1, 4)


def decode(loc: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    centre = anchors[:, :2] + loc[:, :2] * VARIANCES[0] * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    points = [anchors[:, :2] + pre[:, 2 * k:2 * k + 2] * VARIANCES[0] * anchors[:, 2:] for k in range(5)]
    return torch.cat(points, dim=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression (facexlib's py_cpu_nms, with its +1 pixel areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= threshold]
    return keep


@torch.no_grad()
def run_detector(model: RetinaFace, rgb: np.ndarray, threshold: float) -> list[Face]:
    """Faces in an RGB uint8 array (H, W, 3), in its pixels, best first."""
    height, width = rgb.shape[:2]
    param = next(model.parameters())
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)).permute(2, 0, 1)[None]
    bgr = (bgr - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)).to(param)
    loc, conf, marks = (t[0].float().cpu() for t in model(bgr))
    anchors = priors(height, width)
    boxes = (decode(loc, anchors) * torch.tensor([width, height] * 2)).numpy()
    points = (decode_landmarks(marks, anchors) * torch.tensor([width, height] * 5)).numpy()
    scores = conf[:, 1].numpy()
    chosen = np.where(scores > threshold)[0]
    boxes, points, scores = boxes[chosen], points[chosen], scores[chosen]
    return [Face(box=tuple(float(v) for v in boxes[i]), score=float(scores[i]),  # type: ignore[arg-type]
                 landmarks=tuple((float(points[i, 2 * k]), float(points[i, 2 * k + 1])) for k in range(5)))
            for i in nms(boxes, scores)]

"""PiDiNet soft edges (``softedge_pidinet``, ``softedge_pidisafe``) and the scribbles drawn from them
(``scribble_pidinet``), as the extension's ``pidinet``, ``pidinet_safe`` and ``pidinet_scribble``: Su et al.'s
pixel difference network in its "table 5" configuration (``table5_pidinet.pth`` from lllyasviel/Annotators,
app/models/annotators.py), fed BGR in 0..1 as it was trained; tests/test_preprocessors_edges.py compares
the maps with controlnet_aux's."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.engine.preprocessors.common import soft_edge_modules

WEIGHTS = "table5_pidinet.pth"

# The published model ("carv4"): its 16 layers' 3x3 convolutions (init_block's, then each block's depthwise
# one) cycle through central, angular and radial pixel differences and a plain convolution; 60 channels,
# doubled twice; 24-channel dilation modules and spatial attention on each of the four scales.
KINDS = ("cd", "ad", "rd", "cv") * 4
WIDTH, DILATION_CHANNELS = 60, 24
# Layers 1..15 after init_block: three blocks at the first scale, four at each of the three others.
BLOCKS = tuple(f"block{layer // 4 + 1}_{layer % 4 + (layer >= 4)}" for layer in range(1, 16))
SCALES = tuple(tuple(name for name in BLOCKS if name.startswith(f"block{scale}_")) for scale in range(1, 5))
_AD_ORDER = [3, 0, 1, 6, 4, 2, 7, 8, 5]  # each 3x3 tap's clockwise neighbour (angular difference)
_RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]  # the 5x5 ring the radial difference reads from ...
_RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]  # ... minus the inner ring


def plain_kernel(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """The ordinary convolution kernel a pixel difference convolution equals (its weights stay as trained:
    the published state dict holds them)."""
    out_c, in_c = weight.shape[:2]
    flat = weight.reshape(out_c, in_c, 9)
    if kind == "cd":  # sum of w_i (x_i - x_centre)
        centre = torch.zeros_like(flat)
        centre[:, :, 4] = flat.sum(-1)
        return (flat - centre).reshape(weight.shape)
    if kind == "ad":  # sum of w_i (x_i - x_clockwise(i))
        return (flat - flat[:, :, _AD_ORDER]).reshape(weight.shape)
    if kind == "rd":  # 5x5: w_i (x_outer(i) - x_inner(i)), taps 1..8
        ring = torch.zeros(out_c, in_c, 25, dtype=weight.dtype, device=weight.device)
        ring[:, :, _RD_OUTER] = flat[:, :, 1:]
        ring[:, :, _RD_INNER] = -flat[:, :, 1:]
        return ring.reshape(out_c, in_c, 5, 5)
    return weight


class DifferenceConv(nn.Module):
    """A 3x3 pixel difference convolution (``kind``), no bias, ``groups`` as nn.Conv2d."""

    def __init__(self, kind: str, channels_in: int, channels_out: int, groups: int = 1):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.zeros(channels_out, channels_in // groups, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = plain_kernel(self.kind, self.weight)
        return F.conv2d(x, kernel, padding=kernel.shape[-1] // 2, groups=self.groups)


class Block(nn.Module):
    """Depthwise difference convolution, ReLU, 1x1 convolution, plus the input (max-pooled and widened
    by a 1x1 ``shortcut`` when the block halves the scale)."""

    def __init__(self, kind: str, channels_in: int, channels_out: int, halve: bool = False):
        super().__init__()
        self.halve = halve
        if halve:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1)
        self.conv1 = DifferenceConv(kind, channels_in, channels_in, groups=channels_in)
        self.conv2 = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.halve:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(torch.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.halve else x)


class Dilations(nn.Module):
    """ReLU, 1x1 to 24 channels, then the sum of four 3x3 convolutions dilated 5, 7, 9, 11."""

    def __init__(self, channels_in: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 1)
        for i, d in enumerate((5, 7, 9, 11), 1):
            setattr(self, f"conv2_{i}", nn.Conv2d(channels, channels, 3, dilation=d, padding=d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(torch.relu(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, 5))


class Attention(nn.Module):
    """The features times a sigmoid mask (ReLU, 1x1 to 4 channels, 3x3 to 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(torch.relu(x))))


class Reduce(nn.Module):
    """A scale's features to one edge logit (1x1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """Four scales of blocks (3, 4, 4, 4); each scale's edge logits upsampled to the input, and a 1x1 classifier
    over the four: the last of the five sigmoid maps is the fused edge map (names: the published ones)."""

    def __init__(self):
        super().__init__()
        widths = (WIDTH, WIDTH * 2, WIDTH * 4, WIDTH * 4)
        self.init_block = DifferenceConv(KINDS[0], 3, WIDTH)
        for layer, name in enumerate(BLOCKS, 1):
            scale, halve = int(name[5]) - 1, layer in (4, 8, 12)  # the first block of scales 2..4
            setattr(self, name, Block(KINDS[layer], widths[scale - 1 if halve else scale], widths[scale], halve))
        self.dilations = nn.ModuleList(Dilations(w, DILATION_CHANNELS) for w in widths)
        self.attentions = nn.ModuleList(Attention(DILATION_CHANNELS) for _ in widths)
        self.conv_reduces = nn.ModuleList(Reduce(DILATION_CHANNELS) for _ in widths)
        self.classifier = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five edge maps in 0..1 (each N, 1, H, W) of BGR images in 0..1 (N, 3, H, W); the last is the fused."""
        size = x.shape[-2:]
        x = self.init_block(x)
        logits = []
        for scale, names in enumerate(SCALES):
            for name in names:
                x = getattr(self, name)(x)
            edge = self.conv_reduces[scale](self.attentions[scale](self.dilations[scale](x)))
            logits.append(F.interpolate(edge, size=size, mode="bilinear", align_corners=False))
        logits.append(self.classifier(torch.cat(logits, 1)))
        return [torch.sigmoid(t) for t in logits]


def build_network() -> PiDiNet:
    """PiDiNet with the published weights (saved from a DataParallel model: ``module.`` prefixes, under
    ``state_dict``); ModelLoadError naming the file where it cannot be had."""
    from app.models.annotators import load_state_dict

    saved = load_state_dict(WEIGHTS)  # read_weights takes the file's "state_dict" out
    net = PiDiNet()
    net.load_state_dict({k.removeprefix("module."): v for k, v in saved.items()}, strict=True)
    return net.float().eval()


def network() -> PiDiNet:
    from app.models.annotators import built

    return built(WEIGHTS, build_network)


def probabilities(rgb: np.ndarray) -> np.ndarray:
    """PiDiNet's edge probability (H x W) of an RGB uint8 array whose sides are multiples of 16 (fed BGR, as the
    extension does)."""
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).float() / 255.0
    net = network()
    with torch.no_grad():
        return net(bgr.permute(2, 0, 1)[None].to(next(net.parameters()).device))[-1][0, 0].cpu().numpy()


MODULES = soft_edge_modules(("pidinet", "pidinet_safe", "pidinet_scribble"),
                            ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"), probabilities)

"""The lineart family, as A1111's ControlNet extension runs it: ``lineart`` (UI label
``lineart_realistic``, weights ``sk_model.pth``), ``lineart_coarse`` (``sk_model2.pth``), ``lineart_anime``
(``netG.pth``) and the network-free ``lineart_standard``. Weights are lllyasviel/Annotators' files
(app/models/annotators.py); tests/test_preprocessors_lineart.py compares the maps with controlnet_aux's.

Every module scales the image so its short side is the resolution, pads it (edge pixels) to multiples of
64 as the extension's ``resize_image_with_pad``, detects, and crops the padding off again: the map has the
scaled image's size. The maps are white lines on black (the networks draw black on white; inverted)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, resize_short_side

REALISTIC, COARSE, ANIME = "sk_model.pth", "sk_model2.pth", "netG.pth"


def padded(image: Image.Image, res: int) -> tuple[np.ndarray, int, int]:
    """The image scaled to ``res`` on its short side and edge-padded to multiples of 64 (uint8 HWC), with
    the scaled height and width (what the map is cropped back to)."""
    array = np.asarray(resize_short_side(image, res))
    h, w = array.shape[:2]
    return np.pad(array, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge"), h, w


def _grey_map(lines: np.ndarray, h: int, w: int) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(lines[:h, :w])).convert("RGB")


# --- networks ---------------------------------------------------------------------------------------------

def sketch_generator():
    """The realistic and coarse lineart network (Chan et al., "Learning to generate line drawings"): a
    ResNet generator, two stride-2 convolutions down, three residual blocks at 256 channels, two transposed
    convolutions up, a sigmoid. Instance norms without parameters; the attribute names are the published
    state dict's (``model0.1.weight``, ``model2.0.conv_block.1.weight`` ...)."""
    import torch
    from torch import nn

    def conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
        return [conv, nn.InstanceNorm2d(channels), nn.ReLU(inplace=True)]

    class Residual(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1), *conv_norm_relu(nn.Conv2d(channels, channels, 3), channels),
                nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv_block(x)

    class SketchGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), *conv_norm_relu(nn.Conv2d(3, 64, 7), 64))
            self.model1 = nn.Sequential(*conv_norm_relu(nn.Conv2d(64, 128, 3, stride=2, padding=1), 128),
                                        *conv_norm_relu(nn.Conv2d(128, 256, 3, stride=2, padding=1), 256))
            self.model2 = nn.Sequential(*(Residual(256) for _ in range(3)))
            self.model3 = nn.Sequential(
                *conv_norm_relu(nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), 128),
                *conv_norm_relu(nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), 64))
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    return SketchGenerator()


def anime_generator(filters: int = 64):
    """The anime lineart network: pix2pix's U-Net generator with 8 levels (``filters`` at the outermost,
    doubling to 8 times that; ``netG.pth`` has 64), instance norms without parameters (so its convolutions
    have biases). Each level's layers sit in a ``model`` Sequential with the inner level at index 3 (index 1
    in the outermost), as in ``netG.pth``."""
    import torch
    from torch import nn

    class Level(nn.Module):
        def __init__(self, outer: int, inner: int, sub: nn.Module | None = None, image_channels: int = 0):
            super().__init__()
            self.outermost = image_channels > 0
            down = nn.Conv2d(image_channels or outer, inner, 4, stride=2, padding=1)
            up = nn.ConvTranspose2d(inner if sub is None else inner * 2, outer, 4, stride=2, padding=1)
            if self.outermost:
                layers = [down, sub, nn.ReLU(True), up, nn.Tanh()]
            elif sub is None:  # innermost: no norm after its down convolution
                layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, nn.InstanceNorm2d(outer)]
            else:
                layers = [nn.LeakyReLU(0.2, True), down, nn.InstanceNorm2d(inner), sub,
                          nn.ReLU(True), up, nn.InstanceNorm2d(outer)]
            self.model = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.outermost:
                return self.model(x)
            return torch.cat([x, self.model(x)], 1)  # the skip connection

    class AnimeGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            widest = filters * 8
            level = Level(widest, widest)
            for _ in range(3):
                level = Level(widest, widest, level)
            for outer in (filters * 4, filters * 2, filters):
                level = Level(outer, outer * 2, level)
            self.model = Level(1, filters, level, image_channels=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    return AnimeGenerator()


def _network(filename: str, build: Callable):
    """The network for ``filename``, its weights loaded strictly; ModelLoadError (naming the file) offline."""
    from app.models.annotators import built, load_state_dict

    def make():
        state = {key.replace("module.", ""): value for key, value in load_state_dict(filename).items()}
        network = build()
        network.load_state_dict(state, strict=True)
        return network.eval()

    return built(filename, make)


# --- detection ------------------------------------------------------------------------------------------

def sketch_lines(network, array: np.ndarray) -> np.ndarray:
    """White-on-black lines (uint8 HW) from a sketch generator for a uint8 HWC image (any size that is a
    multiple of 4): the network's black-on-white drawing, quantized down as the extension, inverted."""
    import torch

    param = next(network.parameters())
    x = torch.from_numpy(np.ascontiguousarray(array)).to(param.device, torch.float32) / 255.0
    with torch.no_grad():
        line = network(x.permute(2, 0, 1)[None])[0, 0].float().cpu().numpy()
    return 255 - (line * 255.0).clip(0, 255).astype(np.uint8)


def anime_lines(network, array: np.ndarray) -> np.ndarray:
    """White-on-black lines (uint8 HW) from the anime U-Net for a uint8 HWC image: the image goes in at
    the next multiples of 256 (bicubic, as OpenCV's INTER_CUBIC: a = -0.75, edge pixels repeated; torch's
    bicubic is the same filter), the drawing comes back to the image's size the same way."""
    import torch
    import torch.nn.functional as F

    h, w = array.shape[:2]
    size = (-(-h // 256) * 256, -(-w // 256) * 256)
    param = next(network.parameters())
    x = torch.from_numpy(np.ascontiguousarray(array)).to(param.device, torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).round().clamp(0, 255)
        line = network(x / 127.5 - 1.0)[:, :1].float() * 127.5 + 127.5
        line = F.interpolate(line, size=(h, w), mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    return 255 - line.clip(0, 255).astype(np.uint8)


def standard_lines(array: np.ndarray) -> np.ndarray:
    """``lineart_standard``: how much darker each pixel is than its neighbourhood (a Gaussian blur, sigma 6,
    OpenCV's 49-tap kernel and mirrored border), darkest channel, scaled so the median line is ~127."""
    from scipy import ndimage

    x = array.astype(np.float32)
    blurred = ndimage.gaussian_filter(x, sigma=(6.0, 6.0, 0.0), mode="mirror", truncate=4.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 16.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _sketch_runner(filename: str):
    def run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
        network = _network(filename, sketch_generator)
        array, h, w = padded(image, res)
        return _grey_map(sketch_lines(network, array), h, w)

    return run


def _run_anime(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    network = _network(ANIME, anime_generator)
    array, h, w = padded(image, res)
    return _grey_map(anime_lines(network, array), h, w)


def _run_standard(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    array, h, w = padded(image, res)
    return _grey_map(standard_lines(array), h, w)


MODULES = [
    Module("lineart", "lineart_realistic", RESOLUTION, run=_sketch_runner(REALISTIC)),
    Module("lineart_coarse", "lineart_coarse", RESOLUTION, run=_sketch_runner(COARSE)),
    Module("lineart_anime", "lineart_anime", RESOLUTION, run=_run_anime),
    Module("lineart_standard", "lineart_standard (from white bg & black line)", RESOLUTION, run=_run_standard),
]

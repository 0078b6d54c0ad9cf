"""``depth_anything``: Depth Anything (transformers' AutoModelForDepthEstimation, weights from the Hub
on first use: app/models/controlnet.py ``DEPTH_MODEL``) at ``processor_res`` on the short side, its
relative depth scaled to 0..255 (near is bright), as the extension's ``depth_anything``."""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, resize_short_side


def _run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    return depth(resize_short_side(image, res))


MODULES = [Module("depth_anything", "depth_anything", RESOLUTION, run=_run)]

_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet, as DPT's processor


def depth(image: Image.Image) -> Image.Image:
    """Depth Anything's relative depth of ``image`` at its own size, min-max scaled to 0..255 (grey RGB).
    The network sees the image at the nearest multiple of its patch size (14), bicubic, ImageNet-normalized."""
    import torch

    from app.models.controlnet import depth_model

    model = depth_model()
    patch = int(getattr(model.config, "patch_size", 14))
    w, h = (max(patch, int(round(v / patch)) * patch) for v in image.size)
    array = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(((array - _MEAN) / _STD).astype(np.float32)).permute(2, 0, 1)[None]
    param = next(model.parameters())
    with torch.no_grad():
        predicted = model(pixel_values=pixels.to(param.device, param.dtype)).predicted_depth
    predicted = torch.nn.functional.interpolate(predicted[:, None].float(), size=(image.height, image.width),
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    low, high = float(predicted.min()), float(predicted.max())
    scaled = (predicted - low) / (high - low) * 255.0 if high > low else np.zeros_like(predicted)
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8)).convert("RGB")

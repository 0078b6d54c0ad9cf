"""HED soft edges (``softedge_hed``, ``softedge_hedsafe``) and the scribbles drawn from them (``scribble_hed``),
as the extension's ``hed``, ``hed_safe`` and ``scribble_hed``: lllyasviel's Apache-2.0 HED network
(``ControlNetHED.pth`` from lllyasviel/Annotators, app/models/annotators.py) on the RGB image at
``processor_res``; tests/test_preprocessors_edges.py compares the maps with controlnet_aux's."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.engine.preprocessors.common import soft_edge_modules

WEIGHTS = "ControlNetHED.pth"


class Stage(nn.Module):
    """``layers`` 3x3 convolutions with ReLU (after a 2x2 max-pool, but for the first stage), and the 1x1
    ``projection`` that scores the stage's features as edges."""

    def __init__(self, channels_in: int, channels: int, layers: int):
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(channels_in if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(layers)))
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x, self.projection(x)


class HED(nn.Module):
    """Five VGG-like stages; the edge logit is the mean of their projections upsampled to the input (attribute
    names are the published state dict's)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # the learned mean colour (0..255)
        self.block1, self.block2 = Stage(3, 64, 2), Stage(64, 128, 2)
        self.block3, self.block4, self.block5 = Stage(128, 256, 3), Stage(256, 512, 3), Stage(512, 512, 3)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Edge logits (N, 1, H, W) of RGB images in 0..255 (N, 3, H, W), H and W multiples of 16."""
        x, logits = rgb - self.norm, []
        for i, stage in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5)):
            x, projection = stage(x, pool=i > 0)
            logits.append(F.interpolate(projection, size=rgb.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(logits, 1).mean(1, keepdim=True)


def build_network() -> HED:
    """The HED network with the published weights (ModelLoadError naming the file where it cannot be had)."""
    from app.models.annotators import load_state_dict

    net = HED()
    net.load_state_dict(load_state_dict(WEIGHTS), strict=True)
    return net.float().eval()


def network() -> HED:
    from app.models.annotators import built

    return built(WEIGHTS, build_network)


def probabilities(rgb: np.ndarray) -> np.ndarray:
    """HED's edge probability (float64, H x W) of an RGB uint8 array whose sides are multiples of 16."""
    net = network()
    with torch.no_grad():
        x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None].to(next(net.parameters()).device)
        logits = net(x)[0, 0].double().cpu().numpy()
    return 1 / (1 + np.exp(-logits))  # sigmoid in float64, as theirs


MODULES = soft_edge_modules(("hed", "hed_safe", "scribble_hed"), ("softedge_hed", "softedge_hedsafe", "scribble_hed"),
                            probabilities)

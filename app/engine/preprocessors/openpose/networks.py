"""The CMU OpenPose body, hand and face networks (layer names of the published state dicts), built on
first use through app/models/annotators.py."""
from __future__ import annotations

from typing import Sequence

import numpy as np

BODY_FILE, HAND_FILE, FACE_FILE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"


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

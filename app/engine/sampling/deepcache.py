"""DeepCache (Ma, Fang and Wang, CVPR 2024: "DeepCache: Accelerating Diffusion Models for Free"): the deep
features of the UNet change little from one denoising step to the next, so a full UNet call every
``interval`` calls keeps them, and the calls in between run only the shallow branch around them.

With DeepCache's default branch (``cache_branch_id=0``: layer 0, block 0), on a diffusers
UNet2DConditionModel:

- a full call runs the UNet as it is and keeps the hidden state leaving the first layer (resnet and
  transformer) of the last up block: everything deeper has gone into it;
- a shallow call runs the time embedding, ``conv_in``, the first ``L - 1`` layers of the first down block
  (their outputs are the skips the last up block still needs; L is layers_per_block, 2 on SD 2.1), then
  the last up block from its second layer on, starting from the kept state, and the output convolutions.

On SD 2.1 that is three resnet+transformer layers, all at the finest resolution. The full calls are
``call % interval == 0`` (DeepCache's uniform schedule), counted per pass from the CFG denoiser's model
calls, and the kept state is per slot: one per UNet batch of a CFG call (two when cond and uncond go
separately); a call that skips the negative prompt (NGMS) uses and refreshes the prompt's rows of it.
A ControlNet's residuals still apply to the skips the shallow call makes; the ControlNet itself still
runs on every call.

Nothing on the UNet changes: a hook lives only for the length of a full call.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

INTERVALS = (0, 2, 3, 4, 5)  # 0: off; DeepCache's paper and diffusers' docs use 2..5 (3 by default)


def unsupported(unet: Any) -> str | None:
    """Why this UNet cannot take the shallow branch (None: it can): the plain text-to-image layout only."""
    config = unet.config
    if getattr(unet, "class_embedding", None) is not None or config.get("addition_embed_type") is not None:
        return "it needs a UNet without class or added embeddings"
    if config.get("center_input_sample"):
        return "it needs a UNet that does not centre its input"
    down, up = unet.down_blocks[0], unet.up_blocks[-1]
    if len(up.resnets) != len(down.resnets) + 1 or getattr(up, "upsamplers", None) is not None:
        return "it needs the UNet's usual skip layout"
    return None


def _first_layer(block: Any) -> Any:
    """The module whose output leaves the block's first layer: its transformer, else its resnet."""
    attentions = getattr(block, "attentions", None)
    return attentions[0] if attentions else block.resnets[0]


@contextmanager
def _keep_feature(unet: Any, box: dict) -> Iterator[None]:
    def hook(_module: Any, _args: Any, output: Any) -> None:
        box["feature"] = output[0] if isinstance(output, tuple) else output

    handle = _first_layer(unet.up_blocks[-1]).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _layer(block: Any, k: int, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    h = block.resnets[k](h, emb)
    attentions = getattr(block, "attentions", None)
    if attentions:
        h = attentions[k](h, encoder_hidden_states=cond, return_dict=False)[0]
    return h


def shallow_forward(unet: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, feature: torch.Tensor,
                    residuals: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The UNet's output from the shallow branch and the deep feature a full call kept; ``residuals``:
    ControlNet's down residuals, in the UNet's skip order (only the first few are used here)."""
    emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t), None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    cond = unet.process_encoder_hidden_states(encoder_hidden_states=cond, added_cond_kwargs=None)
    down, up = unet.down_blocks[0], unet.up_blocks[-1]
    h = unet.conv_in(x)
    skips = [h]
    for k in range(len(down.resnets) - 1):  # the skips the last up block's layers 1.. take
        h = _layer(down, k, h, emb, cond)
        skips.append(h)
    if residuals is not None:
        skips = [s + r for s, r in zip(skips, residuals)]
    h = feature
    for k in range(1, len(up.resnets)):
        h = _layer(up, k, torch.cat([h, skips.pop()], dim=1), emb, cond)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


class FeatureCache:
    """One pass's kept deep features, and how many calls ran full and shallow (for tests and the bench)."""

    def __init__(self, interval: int):
        self.interval = interval
        self.features: dict[int, torch.Tensor] = {}
        self.full_calls = 0
        self.shallow_calls = 0

    def run(self, unet: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, extra: dict, call: int,
            slot: int) -> torch.Tensor:
        """The UNet's output for model call ``call`` of the pass; ``slot``: which batch of that call."""
        kept = self.features.get(slot)
        rows = x.shape[0]  # fewer than kept: a cond-only call (NGMS), whose rows lead the guided batch
        if kept is not None and (kept.shape[0] < rows or kept.shape[-2:] != x.shape[-2:]):
            kept = None
        if call % self.interval and kept is not None:
            self.shallow_calls += 1
            return shallow_forward(unet, x, t, cond, kept[:rows], extra.get("down_block_additional_residuals"))
        box: dict = {}
        with _keep_feature(unet, box):
            out = unet(x, t, encoder_hidden_states=cond, return_dict=False, **extra)[0]
        if kept is not None and kept.shape[0] > rows:  # refresh the prompt's rows, keep the negative prompt's
            kept = kept.clone()
            kept[:rows] = box["feature"]
            self.features[slot] = kept
        else:
            self.features[slot] = box["feature"]
        self.full_calls += 1
        return out

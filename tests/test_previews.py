"""The live preview is the latents' cheap RGB approximation, upscaled smoothly."""
from __future__ import annotations

import torch

from app.engine.previews import latents_to_rgb


def test_previews_are_upscaled_smoothly_not_in_blocks():
    latents = torch.zeros(1, 4, 2, 2)
    latents[0, 0, 0, 0] = 2.0  # one bright latent pixel among dark ones
    (small,) = latents_to_rgb(latents)
    (big,) = latents_to_rgb(latents, scale=8)
    assert big.size == (16, 16)
    # Nearest-neighbour would only repeat the 4 source colours in 8x8 blocks;
    # bilinear blends between them, so the row across the edge is a ramp.
    assert len(set(small.getdata())) == 2
    row = [big.getpixel((x, 4))[0] for x in range(16)]
    assert len(set(row)) > 4, row
    assert row == sorted(row, reverse=True), row

"""Seamlessness of tiling (issue #12). Edge continuity of the final picture
cannot be shown with the demo model: its random weights give noise whose
neighbouring pixels are barely related, tiled or not (measured: the seam
differs from interior neighbours by the same ratio either way). What makes a
trained model's picture tile is shown instead, for any weights: with tiling
the UNet and the VAE decoder are circularly shift-equivariant, so the image's
left/right and top/bottom edges are neighbours exactly as interior columns
are; without tiling they are not. And the circular padding holds on every
convolution during the job only."""
from __future__ import annotations

import threading

import pytest
import torch

from app.engine.engine import GenerationCancelled, circular_padding


def convs(engine):
    return [m for model in (engine.pipe.unet, engine.pipe.vae) for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)]


def decode(engine, latents):
    with torch.no_grad():
        return engine.pipe.vae.decode(latents, return_dict=False)[0]


def test_with_tiling_the_decoder_wraps_around(engine):
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    shift = 5  # latent pixels; 8 image pixels each
    with circular_padding([engine.pipe.unet, engine.pipe.vae], on=True):
        image, shifted = decode(engine, latents), decode(engine, torch.roll(latents, shift, dims=3))
    assert torch.allclose(torch.roll(image, shift * 8, dims=3), shifted, atol=1e-4)
    plain, plain_shifted = decode(engine, latents), decode(engine, torch.roll(latents, shift, dims=3))
    assert not torch.allclose(torch.roll(plain, shift * 8, dims=3), plain_shifted, atol=1e-2)


def test_with_tiling_the_unet_wraps_around(engine):
    unet = engine.pipe.unet
    x = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(1))
    cond = torch.randn((1, 77, unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(2))
    shift = 8  # a multiple of the UNet's downsampling

    def run(sample):
        with torch.no_grad():
            return unet(sample, 500, encoder_hidden_states=cond, return_dict=False)[0]

    with circular_padding([unet, engine.pipe.vae], on=True):
        out, shifted = run(x), run(torch.roll(x, shift, dims=2))
    assert torch.allclose(torch.roll(out, shift, dims=2), shifted, atol=1e-4)
    assert not torch.allclose(torch.roll(run(x), shift, dims=2), run(torch.roll(x, shift, dims=2)), atol=1e-3)


def test_circular_padding_on_every_conv_during_the_job_only(engine, small_request):
    seen = []
    engine.generate(small_request(tiling=True), on_step=lambda info: seen.append(
        {conv.padding_mode for conv in convs(engine)}))
    assert seen and all(modes == {"circular"} for modes in seen)
    assert {conv.padding_mode for conv in convs(engine)} == {"zeros"}
    cancel = threading.Event()
    with pytest.raises(GenerationCancelled):
        engine.generate(small_request(tiling=True, steps=4), on_step=lambda info: cancel.set(), cancel=cancel)
    assert {conv.padding_mode for conv in convs(engine)} == {"zeros"}  # restored after a cancelled job too

"""The live preview: the latents' cheap RGB approximation, upscaled smoothly, or with
PREVIEW_DECODER a TAESD tiny decoder's real decode."""
from __future__ import annotations

import pytest
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


def test_a_taesd_preview_decoder_decodes_the_latents(tmp_path, small_request):
    """A tiny AutoencoderTiny built here (the real TAESD weights are the user's download)
    stands in; the engine loads it from its folder and its previews are its decodes."""
    from diffusers import AutoencoderTiny

    from app.engine.engine import Engine, EngineOptions

    folder = tmp_path / "taesd"
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)
    engine = Engine.load(EngineOptions(model="demo", device="cpu", preview_decoder=str(folder)))
    seen = []
    engine.generate(small_request(steps=2), on_step=lambda info: seen.append(info.latents.clone()))
    latents = seen[-1]
    (preview,) = engine.preview(latents, max_side=256)
    assert preview.size == (latents.shape[-1] * 8, latents.shape[-2] * 8)  # a decode: 8x the latents, not 1x
    expected = engine.preview_decoder.decode(latents).sample
    pixel = ((expected[0, :, 0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).tolist()
    assert list(preview.getpixel((0, 0))) == pixel
    (linear,) = latents_to_rgb(latents, scale=8)
    assert preview.tobytes() != linear.tobytes()


def test_a_preview_decoder_folder_without_a_model_is_refused(tmp_path):
    from app.engine.engine import Engine, EngineOptions

    with pytest.raises(ValueError, match="preview_decoder"):
        Engine.load(EngineOptions(model="demo", device="cpu", preview_decoder=str(tmp_path)))

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


def test_the_live_preview_shows_every_image_of_the_batch(engine, small_request):
    """Three images at 256x64: one PNG of three tiles side by side, each tile
    that image's own preview (for the SQLite worker's LivePreview and the
    Redis worker's PNG bytes alike)."""
    import io

    from PIL import Image

    from app.engine.previews import PREVIEW_GRID_SIDE, preview_grid
    from app.engine.types import StepInfo
    from app.jobs.runner import LivePreview, preview_png

    seen = []
    engine.generate(small_request(width=256, height=64, num_images=3, steps=2, seed=4),
                    on_step=lambda info: seen.append(info.latents.clone()))
    latents = seen[-1]
    singles = engine.preview(latents)
    assert len(singles) == 3 and len({im.tobytes() for im in singles}) == 3  # three different images
    for png in (LivePreview(engine, latents).png(), preview_png(engine, StepInfo(2, 2, latents), every=1)):
        with Image.open(io.BytesIO(png)) as grid:
            grid = grid.convert("RGB")
        tile_w = grid.width // 3
        assert grid.height * 4 == tile_w and grid.width == 3 * tile_w  # three 4:1 tiles in a row
        assert max(grid.size) <= PREVIEW_GRID_SIDE
        for i, single in enumerate(singles):
            tile = grid.crop((i * tile_w, 0, (i + 1) * tile_w, grid.height))
            assert tile.tobytes() == single.resize(tile.size, Image.Resampling.BILINEAR).tobytes()
    # Many images stay bounded: nine in a 3x3 grid no larger than the limit.
    nine = preview_grid([Image.new("RGB", (768, 768), (i, 0, 0)) for i in range(9)])
    assert nine.size == (PREVIEW_GRID_SIDE, PREVIEW_GRID_SIDE) and nine.getpixel((PREVIEW_GRID_SIDE - 1, 0))[0] == 2


def test_a_redis_worker_ships_at_most_one_preview_png_per_half_second_and_always_the_last(engine):
    """The Redis worker must encode a preview to ship it: the due steps inside half a second
    of the last one shipped ship none (the last stays), the last step's always ships, and
    each job's first due step ships one."""
    from app.engine.types import StepInfo
    from app.jobs.runner import ShippedPreviews

    now = [100.0]
    previews = ShippedPreviews(every=1, seconds=0.5, clock=lambda: now[0])
    latents = torch.zeros(1, 4, 8, 8)

    def step(n, total=10, after=0.125):
        now[0] += after
        return previews.png(engine, StepInfo(step=n, total=total, latents=latents))

    shipped = [n for n in range(1, 11) if step(n) is not None]
    assert shipped == [1, 5, 9, 10]  # 1/8 s a step: every fourth, and the last one
    previews.start()  # the next job
    assert step(1, after=0.01) is not None and step(2, after=0.01) is None
    every_third = ShippedPreviews(every=3, seconds=0.5, clock=lambda: now[0])
    assert [n for n in range(1, 8) if every_third.png(engine, StepInfo(step=n, total=7, latents=latents))] == [3, 7]

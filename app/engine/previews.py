"""Cheap previews of the latents during denoising, and strips/GIFs of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

# Linear latent -> RGB factors for the SD 1.x/2.x VAE (the "Approx cheap"
# preview of A1111 and the recipe in diffusers' callback docs). About 1 ms
# per preview instead of a full VAE decode.
LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latents_to_rgb(latents, scale: int = 1) -> list[Image.Image]:
    """One preview image per batch item from latents of shape (B, 4, h, w)."""
    import torch

    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32)
    lat = latents.detach().float().cpu()
    rgb = torch.einsum("bchw,cr->bhwr", lat, factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    images = [Image.fromarray(p, "RGB") for p in pixels]
    if scale > 1:
        # Bilinear: the latent grid is 1/8 of the image, and blocky nearest-neighbour
        # squares read as noise; a smooth blow-up shows the forming shapes.
        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.BILINEAR) for im in images]
    return images


def load_preview_decoder(folder: str, placement) -> Any:
    """A TAESD tiny autoencoder (diffusers ``AutoencoderTiny``) from a local folder: a full decode
    of the in-flight latents at a few ms, sharper than the linear preview. Its weights are the
    user's to download (the app never fetches them)."""
    from diffusers import AutoencoderTiny

    if not (Path(folder) / "config.json").is_file():
        raise ValueError(f"preview_decoder: expected a folder with an AutoencoderTiny's config.json (got {folder!r})")
    decoder = AutoencoderTiny.from_pretrained(folder, torch_dtype=placement.torch_dtype, local_files_only=True)
    return decoder.to(placement.device).eval()


def taesd_previews(decoder: Any, latents, max_side: int = 256) -> list[Image.Image]:
    """One preview per batch item: the pipeline's (scaled) latents through TAESD, shrunk to ``max_side``."""
    import torch

    with torch.no_grad():
        # TAESD takes the pipeline's latents as they are (its scaling_factor is 1).
        pixels = decoder.decode(latents.to(decoder.device, decoder.dtype) / decoder.config.scaling_factor).sample
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(p, "RGB") for p in pixels]
    for image in images:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return images


PREVIEW_GRID_SIDE = 768  # the live preview of a whole batch is at most this wide and tall


def preview_grid(images: list[Image.Image], max_side: int = PREVIEW_GRID_SIDE) -> Image.Image:
    """Every image of a batch in one picture: one row of up to four, then a
    near-square grid (columns = ceil(sqrt(n))), each tile shrunk so the grid
    fits ``max_side``; empty cells stay black."""
    import math

    if not images:
        raise ValueError("images: need at least one image")
    n = len(images)
    cols = n if n <= 4 else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tile_w, tile_h = max(im.width for im in images), max(im.height for im in images)
    shrink = min(1.0, max_side / (cols * tile_w), max_side / (rows * tile_h))
    tile_w, tile_h = max(1, int(tile_w * shrink)), max(1, int(tile_h * shrink))
    if n == 1 and shrink == 1.0:
        return images[0]
    grid = Image.new("RGB", (cols * tile_w, rows * tile_h))
    for i, image in enumerate(images):
        tile = image.convert("RGB")
        if tile.size != (tile_w, tile_h):
            tile = tile.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
        grid.paste(tile, ((i % cols) * tile_w, (i // cols) * tile_h))
    return grid


def filmstrip(frames: list[Image.Image], height: int = 128) -> Image.Image:
    """Frames side by side, each scaled to ``height``."""
    if not frames:
        raise ValueError("frames: need at least one frame")
    scaled = [f.resize((max(1, round(f.width * height / f.height)), height)) for f in frames]
    strip = Image.new("RGB", (sum(f.width for f in scaled), height))
    x = 0
    for frame in scaled:
        strip.paste(frame, (x, 0))
        x += frame.width
    return strip


def save_gif(frames: list[Image.Image], path: str | os.PathLike, ms_per_frame: int = 200) -> Path:
    if not frames:
        raise ValueError("frames: need at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = frames[-1].size
    frames = [f.convert("RGB").resize(size) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path

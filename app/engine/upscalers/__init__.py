"""Upscalers by A1111's names: plain resizes, model upscalers (ESRGAN, Real-ESRGAN,
SwinIR, DAT, HAT... read through spandrel) dropped into UPSCALER_DIR, and A1111's
built-in models downloaded there on first use (issue #24).

``registry`` lists and finds them (cheaply: names without reading files),
``models`` loads and runs them in tiles, ``download`` fetches the built-ins."""
from __future__ import annotations

import os

from app.engine.upscalers.models import free, upscale_to, upscale_with
from app.engine.upscalers.registry import RESIZES, Upscaler, available, find, names, require
from app.models.devices import on_free_memory

__all__ = ["RESIZES", "Upscaler", "available", "configure", "find", "free", "names", "require", "upscale_to",
           "upscale_with"]


def configure(folder: str | os.PathLike | None = None, tile: int | None = None, overlap: int | None = None) -> None:
    """The upscaler folder and tiling (the web app's UPSCALER_DIR, UPSCALER_TILE, UPSCALER_TILE_OVERLAP)."""
    from app.engine.upscalers import models, registry

    if folder is not None:
        registry.configure(folder)
    models.configure_tiles(tile, overlap)


on_free_memory(free)  # after an out-of-memory error or a failed job the cached models go too

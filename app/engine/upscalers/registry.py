"""Which upscalers this server has, by A1111's names: the plain resizes, A1111's
built-in models (downloaded on first use from the URLs A1111 downloads them
from) and every weights file in the upscaler folder (UPSCALER_DIR), listed by
file stem with the scale spandrel detects in it.

Detecting a scale reads the whole file, so it is done once per file version
(path, mtime, size) and remembered: listing the folder again costs a
``stat`` per file.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.base import ValidationError
from app.models.loading import ModelLoadError

logger = logging.getLogger(__name__)

# A1111's resizes without a model ("None" resizes with Lanczos too: A1111 resizes to the size asked after any upscaler).
RESIZES = ("None", "Lanczos", "Nearest")
EXTENSIONS = (".pth", ".safetensors")
DEFAULT_FOLDER = "models/upscalers"  # the web app resolves UPSCALER_DIR inside its instance folder instead


@dataclass(frozen=True)
class BuiltIn:
    url: str
    scale: int
    family: str  # A1111's upscaler class: RealESRGAN, ESRGAN, SwinIR, ScuNET

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# A1111's built-in model upscalers (modules/realesrgan_model.py, esrgan_model.py, swinir_model.py,
# extensions-builtin/ScuNET), with the files they download. LDSR is a diffusion model, not one spandrel loads.
_REAL_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download/"
BUILTINS: dict[str, BuiltIn] = {
    "R-ESRGAN General 4xV3": BuiltIn(_REAL_ESRGAN + "v0.2.5.0/realesr-general-x4v3.pth", 4, "RealESRGAN"),
    "R-ESRGAN General WDN 4xV3": BuiltIn(_REAL_ESRGAN + "v0.2.5.0/realesr-general-wdn-x4v3.pth", 4, "RealESRGAN"),
    "R-ESRGAN AnimeVideo": BuiltIn(_REAL_ESRGAN + "v0.2.5.0/realesr-animevideov3.pth", 4, "RealESRGAN"),
    "R-ESRGAN 4x+": BuiltIn(_REAL_ESRGAN + "v0.1.0/RealESRGAN_x4plus.pth", 4, "RealESRGAN"),
    "R-ESRGAN 4x+ Anime6B": BuiltIn(_REAL_ESRGAN + "v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", 4, "RealESRGAN"),
    "R-ESRGAN 2x+": BuiltIn(_REAL_ESRGAN + "v0.2.1/RealESRGAN_x2plus.pth", 2, "RealESRGAN"),
    "ESRGAN_4x": BuiltIn("https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth", 4, "ESRGAN"),
    "SwinIR 4x": BuiltIn("https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
                         "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth", 4, "SwinIR"),
    "ScuNET GAN": BuiltIn("https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth", 1, "ScuNET"),
    "ScuNET PSNR": BuiltIn("https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth", 1,
                           "ScuNET"),
}


@dataclass(frozen=True)
class Upscaler:
    """One entry of the list: ``path`` is where its file is (or goes, for a built-in not yet
    downloaded); ``url`` where a built-in comes from; ``scale`` the model's factor (None for a resize)."""
    name: str
    path: Path | None = None
    url: str | None = None
    scale: int | None = None
    family: str | None = None

    @property
    def is_model(self) -> bool:
        return self.path is not None

    @property
    def downloaded(self) -> bool:
        return self.path is not None and self.path.is_file()


_folder = Path(DEFAULT_FOLDER)
_scales: dict[Path, tuple[tuple[float, int], int | None]] = {}  # file -> ((mtime, size), scale or None: unusable)
_lock = threading.Lock()


def configure(folder: str | os.PathLike | None) -> None:
    """Where dropped-in and downloaded models live (the web app's UPSCALER_DIR, the CLI's --upscaler-dir)."""
    global _folder
    _folder = Path(folder) if folder else Path(DEFAULT_FOLDER)


def folder() -> Path:
    return _folder


def _files() -> list[Path]:
    try:
        return sorted(p for p in _folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
    except OSError:  # no folder yet: only the built-ins
        return []


def names() -> list[str]:
    """Every name, cheaply (no file is read): for validating a request before any work."""
    builtin_files = {b.filename for b in BUILTINS.values()}
    return [*RESIZES, *BUILTINS, *(p.stem for p in _files() if p.name not in builtin_files)]


def available() -> list[Upscaler]:
    """Every upscaler with its scale. A dropped-in file spandrel cannot use is left out (and logged once)."""
    entries = [Upscaler(name) for name in RESIZES]
    entries += [Upscaler(name, _folder / b.filename, b.url, b.scale, b.family) for name, b in BUILTINS.items()]
    builtin_files = {b.filename for b in BUILTINS.values()}
    for path in _files():
        if path.name in builtin_files:
            continue
        scale = detected_scale(path)
        if scale is not None:
            entries.append(Upscaler(path.stem, path, None, scale, "spandrel"))
    return entries


def find(name: Any) -> Upscaler | None:
    """The upscaler called ``name`` (case-insensitive), None if there is none. Reads no file."""
    if not isinstance(name, str):
        return None
    wanted = name.strip().lower()
    for known in RESIZES:
        if known.lower() == wanted:
            return Upscaler(known)
    for known, b in BUILTINS.items():
        if known.lower() == wanted:
            return Upscaler(known, _folder / b.filename, b.url, b.scale, b.family)
    builtin_files = {b.filename for b in BUILTINS.values()}
    for path in _files():
        if path.stem.lower() == wanted and path.name not in builtin_files:
            return Upscaler(path.stem, path, None, None, "spandrel")
    return None


def require(name: Any) -> Upscaler:
    """``find``, or the ValidationError a client gets as a 400."""
    found = find(name)
    if found is None:
        raise ValidationError("upscaler", name, "no such upscaler on this server; see /sdapi/v1/upscalers "
                                                f"(or put a .pth/.safetensors file in {_folder})")
    return found


def check_upscaler(descriptor: Any, name: str) -> Any:
    """The descriptor, if it is an image-to-image model for RGB pictures (not a face restorer, an
    inpainting model or a grayscale one); otherwise the ValidationError a client sees as a 400."""
    purpose = getattr(descriptor, "purpose", None)
    arch = descriptor.architecture.name
    if purpose not in ("SR", "Restoration"):
        raise ValidationError("upscaler", name, f"{name} is a {arch} model for {purpose}, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValidationError("upscaler", name, f"{name} is a {arch} model for {descriptor.input_channels}-channel "
                                                "images; upscalers here take RGB")
    return descriptor


def detected_scale(path: Path) -> int | None:
    """The model's scale, read once per file version; None (and a warning, once) for a file spandrel cannot use."""
    try:
        stat = path.stat()
    except OSError:
        return None
    version = (stat.st_mtime, stat.st_size)
    with _lock:
        known = _scales.get(path)
    if known is not None and known[0] == version:
        return known[1]
    from app.models.spandrel_loader import load_descriptor

    try:
        scale: int | None = int(check_upscaler(load_descriptor(path), path.stem).scale)
    except (ModelLoadError, ValidationError) as exc:
        logger.warning("upscaler folder: %s is left out: %s", path.name, exc)
        scale = None
    except Exception:  # noqa: BLE001 - one odd file must not break the list for every client
        logger.exception("upscaler folder: %s is left out: reading it failed", path.name)
        scale = None
    with _lock:
        _scales[path] = (version, scale)
    return scale

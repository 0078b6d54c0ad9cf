"""The face models' weight files: where they live (the FACE_DIR setting) and
their download on first use from the URLs A1111 fetches them from.

A download is streamed into a temporary file beside the target, capped in
size, and renamed into place only when complete, so a broken connection never
leaves a truncated file that would later fail to load. Offline
(``HF_HUB_OFFLINE=1``, or the fetch fails) the error names the file and the
folder to put it in by hand.
"""
from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from app.models.downloads import download, offline
from app.models.loading import ModelLoadError


@dataclass(frozen=True)
class WeightsFile:
    name: str  # the file name in FACE_DIR (A1111's, so a copied A1111 models folder works)
    url: str
    max_bytes: int  # a cap well above the published size: a server sending more is not sending this file


DETECTOR = WeightsFile("detection_Resnet50_Final.pth",
                       "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
                       200 * 2**20)
GFPGAN = WeightsFile("GFPGANv1.4.pth",
                     "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth", 600 * 2**20)
CODEFORMER = WeightsFile("codeformer-v0.1.0.pth",
                         "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth", 600 * 2**20)

_folder: Path | None = None


def configure(folder: str | os.PathLike | None) -> None:
    """Set the folder (the web app's FACE_DIR, the CLI's --face-dir); None: the default."""
    global _folder
    _folder = Path(folder) if folder else None


def face_dir() -> Path:
    """FACE_DIR as configured, else $T2I_FACE_DIR, else ~/.cache/t2i/faces."""
    if _folder is not None:
        return _folder
    env = os.environ.get("T2I_FACE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "t2i" / "faces"


def ensure(weights: WeightsFile) -> Path:
    """The file's path in FACE_DIR, downloaded first if it is not there."""
    path = face_dir() / weights.name
    if path.is_file():
        return path
    if offline():
        raise ModelLoadError(_missing(weights, path, "offline (HF_HUB_OFFLINE is set)"))
    try:
        download(weights.url, path, weights.max_bytes)
    except (OSError, urllib.error.URLError) as exc:
        raise ModelLoadError(_missing(weights, path, f"download failed: {exc}")) from exc
    return path


def missing_offline(needed: list[WeightsFile]) -> str | None:
    """Before any work: why a run that needs ``needed`` cannot get them (offline and not
    there yet), or None. Checked when a request is validated, so the user hears it at
    once, not as a failed job after the picture was made."""
    if not offline():
        return None
    for weights in needed:
        path = face_dir() / weights.name
        if not path.is_file():
            return _missing(weights, path, "offline (HF_HUB_OFFLINE is set)")
    return None


def _missing(weights: WeightsFile, path: Path, why: str) -> str:
    return f"{weights.name} is needed and {why}: download {weights.url} and put it at {path}"

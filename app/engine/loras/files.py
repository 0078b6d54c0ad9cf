"""The LoRA folder: its files, what each holds (the layers, whether they fit the loaded model),
and A1111's hashes of them, for the listings (/api/loras, /sdapi/v1/loras) and the infotext.

Files: ``.safetensors`` in kohya/A1111 format (``lora_unet_*``/``lora_te_*`` with
``lora_down``/``lora_up``/``alpha``) or diffusers/PEFT format (this project's ``finetune --mode lora``
output included). ``.pt``/``.ckpt`` are read with ``torch.load(weights_only=True)``: tensors only,
never code. A file that is not a LoRA, or whose layers do not fit the loaded model (SD 1.x's 768-wide
text encoder, SDXL's second text encoder...), is listed as skipped with the reason, like the
embeddings (app/engine/embeddings.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.models.files import HashCache, walk

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".ckpt")
UNTAGGABLE = re.compile(r"[:<>]")  # what a file name may not hold to be named in a tag
SHORT_HASH = 12  # hex digits in the infotext, as A1111's shorthash

@dataclass
class LoraInfo:
    name: str
    path: str  # absolute
    relpath: str  # inside the folder (what the APIs show)
    hash: str = ""  # A1111's: sha256 of a .safetensors file's tensor bytes (after the header), else of the file
    metadata: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def shorthash(self) -> str:
        return self.hash[:SHORT_HASH]

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.relpath, "hash": self.shorthash, "error": self.error}

    def to_a1111(self) -> dict:
        """``/sdapi/v1/loras``'s item (A1111: name, alias, path, metadata); the path inside the folder."""
        return {"name": self.name, "alias": self.metadata.get("ss_output_name") or self.name, "path": self.relpath,
                "metadata": self.metadata}


class LoraFileError(ValueError):
    """A file that cannot be used as a LoRA; the message says why."""


def lora_files(folder: str | os.PathLike | None) -> list[Path]:
    """The LoRA files under ``folder`` (subfolders too, as A1111), sorted; never a
    file reached by a symlink out of the folder (``app.models.files.walk``)."""
    if not folder:
        return []
    return walk(Path(folder).resolve(), lambda path: path.is_file() and path.suffix.lower() in SUFFIXES)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """The file's tensors and (safetensors) metadata. LoraFileError for a pickle that holds more than tensors."""
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), _safetensors_metadata(path)
    from app.models.loading import ModelLoadError, load_pickle

    try:
        data = load_pickle(path)  # weights_only: a file that would run code is refused unread
    except ModelLoadError as exc:
        raise LoraFileError(str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise LoraFileError(f"{path.name} is not a LoRA: it holds no tensors by name")
    return data, {}


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    metadata: dict = {}
    for key, value in raw.items():  # A1111 reads JSON values (ss_tag_frequency ...) as JSON
        if isinstance(value, str) and value[:1] in "{[":
            try:
                metadata[key] = json.loads(value)
                continue
            except ValueError:
                pass
        metadata[key] = value
    return metadata


def _shapes(path: Path) -> tuple[dict[str, tuple], dict]:
    """Key -> shape without reading the tensors where the format allows (safetensors)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        return shapes, _safetensors_metadata(path)
    tensors, metadata = read_tensors(path)
    return {k: tuple(v.shape) for k, v in tensors.items()}, metadata


def file_hash(path: str | os.PathLike) -> str:
    """A1111's LoRA hash (sd-webui-additional-networks' "addnet" hash, Civitai's AutoV3): the sha256
    of a .safetensors file's bytes after its JSON header; of the whole file for other formats."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if str(path).lower().endswith(".safetensors"):
            header = int.from_bytes(fh.read(8), "little")
            fh.seek(header + 8)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Keys of the formats read here, by the module they change and the part (down/up).
_KOHYA = re.compile(r"^lora_(unet|te|te1|te2)_(.+)\.(lora_down|lora_up)\.weight$")
_DIFFUSERS = re.compile(r"^(?:(unet|text_encoder|text_encoder_2|base_model\.model)\.)?(.+?)\."
                        r"(lora\.down|lora\.up|lora_A|lora_B|lora_linear_layer\.down|lora_linear_layer\.up)"
                        r"(?:\.default(?:_\d+)?)?\.weight$")
_LYCORIS = re.compile(r"\.(hada_w\d_[ab]|lokr_w\d(?:_[ab])?|oft_\w+|diff|w_norm|b_norm)$")
_COMPONENTS = {"unet": "unet", "te": "te", "te1": "te2", "te2": "te2", "text_encoder": "te",
               "text_encoder_2": "te2", "base_model.model": "unet", None: "unet"}
_DOWN = ("lora_down", "lora.down", "lora_A", "lora_linear_layer.down")


def lora_layers(shapes: dict[str, tuple]) -> dict[tuple[str, str], dict[str, tuple]]:
    """(component, flat module name) -> {"down": shape, "up": shape}; component is unet, te or te2
    (SDXL's second text encoder). Flat names are kohya's: dots as underscores, text-encoder
    names from ``text_model_``. LoraFileError when the file is no LoRA this server reads."""
    layers: dict[tuple[str, str], dict[str, tuple]] = {}
    lycoris = False
    for key, shape in shapes.items():
        kohya = _KOHYA.match(key)
        if kohya:
            part, module, role = kohya.groups()
            component = _COMPONENTS[part]
            if part == "te1":  # SDXL's first text encoder: the file as a whole is SDXL's
                component = "te2"
        else:
            plain = _DIFFUSERS.match(key)
            if not plain:
                lycoris = lycoris or bool(_LYCORIS.search(key))
                continue
            part, module, role = plain.groups()
            component = _COMPONENTS[part]
            module = module.replace(".", "_")
            if component != "unet" and not module.startswith("text_model_"):
                module = "text_model_" + module
        layers.setdefault((component, module), {})["down" if role in _DOWN else "up"] = shape
    if not layers:
        if lycoris:
            raise LoraFileError("a LyCORIS network (LoHa, LoKr...), not a plain LoRA: not supported")
        raise LoraFileError("not a LoRA: no lora_down/lora_up (kohya) or lora_A/lora_B (diffusers, PEFT) weights")
    if any(component == "te2" for component, _ in layers):
        raise LoraFileError("made for SDXL (it has weights for a second text encoder); this server runs SD 2.x "
                            "models")
    return layers


def model_shapes(pipe) -> dict[str, dict[str, tuple]]:
    """Each Linear/Conv layer of the UNet and the text encoder by flat (kohya) name: its weight's shape."""
    found: dict[str, dict[str, tuple]] = {"unet": {}, "te": {}}
    for component, module in (("unet", pipe.unet), ("te", pipe.text_encoder)):
        for name, sub in module.named_modules():
            weight = getattr(sub, "weight", None)
            if name.endswith(".base_layer") or weight is None or getattr(weight, "ndim", 0) not in (2, 4):
                continue
            name = name.replace(".base_layer", "").replace(".", "_")
            if component == "te" and not name.startswith("text_model_"):
                name = "text_model_" + name
            found[component][name] = tuple(weight.shape)
    return found


def fit_problem(layers: dict[tuple[str, str], dict[str, tuple]], shapes: dict[str, dict[str, tuple]]) -> str | None:
    """Why a LoRA's layers do not fit the model whose ``model_shapes`` these are, or None."""
    te_width = next((s[1] for n, s in shapes["te"].items() if n.endswith("self_attn_q_proj")), None)
    for (component, module), parts in sorted(layers.items()):
        if "down" not in parts or "up" not in parts:
            return f"its layer {module} has only a {'down' if 'down' in parts else 'up'} weight"
        base = shapes.get(component, {}).get(module)
        down, up = parts["down"], parts["up"]
        # SD 1.x: the text encoder and the cross-attention keys/values are 768 wide (SD 2.x: 1024).
        sd1 = down[1:2] == (768,) and (component == "te" or module.endswith(("attn2_to_k", "attn2_to_v")))
        if base is not None and len(base) == len(down) and base[1] == down[1] and base[0] == up[0]:
            continue
        if sd1 and te_width != 768:
            return f"made for SD 1.x (768-wide text encoder); this model's text encoder is {te_width} wide"
        if base is None:
            where = "text encoder" if component == "te" else "UNet"
            return f"made for another model: this model's {where} has no layer {module}"
        return (f"made for another model: its layer {module} maps {down[1]} to {up[0]} features; this "
                f"model's maps {base[1]} to {base[0]}")
    return None


# Cached while a file is unchanged: (path, size, mtime) -> its layers and metadata, or why it is no LoRA;
# and its hash, computed only when asked for (a folder of large files is not read through to list it).
_FACTS: dict[tuple[str, int, int], tuple[dict, dict] | str] = {}
_HASHES: dict[tuple[str, int, int], str] = {}


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    stat = os.stat(path)
    return str(path), stat.st_size, stat.st_mtime_ns


def _facts(path: Path) -> tuple[dict, dict]:
    """The file's LoRA layers and metadata."""
    key = _file_key(path)
    if key not in _FACTS:
        try:
            shapes, metadata = _shapes(path)
            _FACTS[key] = (lora_layers(shapes), metadata)
        except LoraFileError as exc:
            _FACTS[key] = str(exc)
        except Exception as exc:  # a broken file is reported, not fatal
            _FACTS[key] = f"unreadable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
    facts = _FACTS[key]
    if isinstance(facts, str):
        raise LoraFileError(facts)
    return facts


def hash_cache(path: str | Path | None) -> HashCache:
    """A cache file of A1111's LoRA hashes (``file_hash``), by path, size and mtime."""
    return HashCache(path, digest=lambda file: file_hash(file))


def lora_hash(info: LoraInfo, cache: HashCache | None = None) -> str:
    """The LoRA's hash (see LoraInfo.hash), read once per file version (``cache``: once per file
    version for as long as the cache file lasts); A1111 prefers the trainer's own."""
    if not info.hash:
        key = _file_key(info.path)
        if key not in _HASHES:
            own = str(info.metadata.get("sshs_model_hash") or "")
            _HASHES[key] = own or (cache.hash(Path(info.path)) if cache is not None else file_hash(info.path))
        info.hash = _HASHES[key]
    return info.hash


def scan(folder: str | os.PathLike | None, shapes: dict[str, dict[str, tuple]] | None = None,
         hashes: bool = False, cache: HashCache | None = None) -> list[LoraInfo]:
    """Every LoRA file of the folder, or why it cannot be used. ``shapes`` (``model_shapes`` of the
    loaded model) also checks that the layers fit; without it only the files themselves are checked.
    ``hashes``: with each usable file's hash (which reads the whole file once; ``cache`` keeps it)."""
    infos: list[LoraInfo] = []
    seen: dict[str, str] = {}
    root = Path(folder).resolve() if folder else None
    for path in lora_files(folder):
        assert root is not None
        rel = path.relative_to(root).as_posix()
        info = LoraInfo(path.stem, str(path), rel)
        try:
            if UNTAGGABLE.search(info.name):  # the picker would insert a tag the parser reads otherwise
                raise LoraFileError("its name holds ':', '<' or '>', which a <lora:name> tag cannot carry; "
                                    "rename the file")
            layers, info.metadata = _facts(path)
            problem = fit_problem(layers, shapes) if shapes is not None else None
            if problem:
                info.error = problem
            elif hashes:
                lora_hash(info, cache)
        except LoraFileError as exc:
            info.error = str(exc)
        if info.name in seen:
            info.error = f"another LoRA file has the same name ({seen[info.name]}); rename one"
        else:
            seen[info.name] = rel
        if info.error:
            logger.warning("LoRA %s skipped: %s", rel, info.error)
        infos.append(info)
    return infos


def by_name(infos: list[LoraInfo]) -> dict[str, LoraInfo]:
    """The listing by name; of two files with one name, the first (the other is skipped)."""
    found: dict[str, LoraInfo] = {}
    for info in infos:
        found.setdefault(info.name, info)
    return found


def lora_problem(name: str, infos: dict[str, LoraInfo]) -> str | None:
    """Why ``<lora:name>`` cannot be used with this listing (``by_name``), or None."""
    info = infos.get(name)
    if info is None:
        return f"unknown LoRA {name!r}: no such file in the LoRA folder (see /api/loras)"
    return f"the LoRA {name!r} ({info.relpath}) cannot be used: {info.error}" if info.error else None


def a1111_listing(infos: list[LoraInfo]) -> list[dict]:
    """``/sdapi/v1/loras``'s answer: the usable LoRAs."""
    return [info.to_a1111() for info in infos if not info.error]

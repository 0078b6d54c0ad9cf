"""LoRA networks from a folder, used in prompts with AUTOMATIC1111's tags:
``<lora:name>`` (weight 1), ``<lora:name:0.8>``, ``<lora:name:te:unet>``
(text-encoder and UNet weights apart, as A1111's ``te=``/``unet=``).

The tags are taken out of the prompt before it is encoded (A1111's extra
networks), and kept in the infotext's prompt with a ``Lora hashes`` entry, as
A1111 writes them. Tags in the negative prompt are refused: A1111 reads extra
networks from the prompt only and would encode them there as text.

Files: ``.safetensors`` in kohya/A1111 format (``lora_unet_*``/``lora_te_*``
with ``lora_down``/``lora_up``/``alpha``) or diffusers/PEFT format (this
project's ``finetune --mode lora`` output included). ``.pt``/``.ckpt`` are
read with ``torch.load(weights_only=True)``: tensors only, never code. A file
that is not a LoRA, or whose layers do not fit the loaded model (SD 1.x's
768-wide text encoder, SDXL's second text encoder...), is listed as skipped
with the reason, like the embeddings (app/engine/embeddings.py).

At run time each LoRA is loaded once into the pipeline as a PEFT adapter
(diffusers' ``load_lora_weights``, which converts kohya keys) and kept; each
job activates its own with ``set_adapters``, and a job without tags runs with
the adapters disabled, which is the plain model bit for bit (PEFT's disabled
layers call only the base layer).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine.base import Quoted
from app.models.files import HashCache, walk

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".ckpt")
UNTAGGABLE = re.compile(r"[:<>]")  # what a file name may not hold to be named in a tag
MAX_TAGS = 10  # LoRAs in one prompt
MAX_WEIGHT = 10.0  # |weight|; A1111 sets no bound, but far beyond this the image is noise or NaN
MAX_LOADED = 8  # adapters kept between jobs; the least recently used go first (a job's own stay)
SHORT_HASH = 12  # hex digits in the infotext, as A1111's shorthash

# A1111's extra-network syntax (modules/extra_networks.py, re_extra_net): <kind:args>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")  # A1111 reads <lyco:...> as <lora:...> since 1.5


def _extra_networks(prompt: str) -> list[re.Match]:
    """The tags, as A1111's pattern finds them. The search ends at the last ">": from a "<"
    with none after it, "[^>]+" scanned to the end of the text, once per "<" (quadratic)."""
    return list(_EXTRA_NETWORK.finditer(prompt, 0, prompt.rfind(">") + 1))


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


def split_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its extra-network tags, and its LoRA tags.
    ValueError with the reason for a tag this server cannot honour. The tags are
    counted before any is parsed, so a prompt of hundreds costs one scan."""
    matches = _extra_networks(prompt)
    if len(matches) > MAX_TAGS:
        raise ValueError(f"has {len(matches)} LoRA tags; the limit is {MAX_TAGS}")
    tags: list[LoraTag] = []
    for match in matches:
        kind, args = match.group(1), match.group(2)
        if kind.lower() not in LORA_KINDS:
            raise ValueError(f"{match.group(0)!r}: only <lora:name:weight> extra networks are supported here")
        tags.append(_parse_tag(match.group(0), args))
    names = [t.name for t in tags]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"the LoRA {name!r} is named twice; give it once with the weight you want")
    kept, last = [], 0
    for match in matches:
        kept.append(prompt[last:match.start()])
        last = match.end()
    return "".join(kept) + prompt[last:], tags


def _parse_tag(text: str, args: str) -> LoraTag:
    positional, named = [], {}
    for item in args.split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip()] = value
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValueError(f"{text!r}: the LoRA has no name; write <lora:name> or <lora:name:weight>")
    unknown = set(named) - {"te", "unet"}
    if unknown or len(positional) > 3:
        what = f"{sorted(unknown)[0]}=" if unknown else "a fourth value (dyn)"
        raise ValueError(f"{text!r}: {what} is not supported; write <lora:name:weight> or <lora:name:te:unet>")

    def weight(raw: str, what: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{text!r}: the {what} {raw.strip()!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
            raise ValueError(f"{text!r}: the {what} must be between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}")
        return value

    te = weight(positional[1], "weight") if len(positional) > 1 else 1.0
    te = weight(named["te"], "te weight") if "te" in named else te
    unet = weight(positional[2], "unet weight") if len(positional) > 2 else te
    unet = weight(named["unet"], "unet weight") if "unet" in named else unet
    return LoraTag(name, te, unet)


def has_extra_networks(prompt: str) -> bool:
    return bool(_extra_networks(prompt))


# --- files -------------------------------------------------------------------

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


def hashes_entry(tags: list[LoraTag], infos: dict[str, LoraInfo]) -> str:
    """The infotext's ``Lora hashes`` value, A1111's way: ``name: shorthash`` joined by ", ",
    the names without ':' or ','."""
    return ", ".join(f"{t.name.replace(':', '').replace(',', '')}: {lora_hash(infos[t.name])[:SHORT_HASH]}"
                     for t in tags)


# --- run time ----------------------------------------------------------------

@dataclass
class _Loaded:
    adapter: str
    key: tuple[str, int, int]


class LoraSet:
    """The LoRAs loaded into one pipeline (its UNet and text encoder, shared with the img2img and
    inpaint pipelines ``from_pipe`` makes), and which of them the current job uses."""

    def __init__(self, pipe, folder: str | None = None):
        self.pipe = pipe
        self.folder = folder
        self.shapes = model_shapes(pipe)  # before any adapter wraps a layer
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # by absolute path, least recently used first
        self._count = 0

    def activate(self, tags: list[LoraTag]) -> dict:
        """Make the job's LoRAs (and only those) active; the infotext entries they add.
        ValidationError naming the prompt for a LoRA that is missing or does not fit."""
        from app.engine.base import ValidationError

        if not tags:
            if self._loaded:
                self.pipe.disable_lora()  # the base layers alone: the plain model, bit for bit
            return {}
        if not self.folder:  # e.g. a Redis worker started without --lora-dir while the web lists its LORA_DIR
            raise ValidationError("prompt", tags[0].name, f"cannot use the LoRA {tags[0].name!r}: this model was "
                                  "loaded without a LoRA folder (--lora-dir; LORA_DIR in the web app)")
        infos = by_name(scan(self.folder, self.shapes))
        for tag in tags:
            problem = lora_problem(tag.name, infos)
            if problem:
                raise ValidationError("prompt", tag.name, problem)
        job = {infos[t.name].path for t in tags}
        adapters = [self._load(infos[t.name], keep=job) for t in tags]
        self.pipe.enable_lora()
        self.pipe.set_adapters(adapters, [{"unet": t.unet_weight, "text_encoder": t.te_weight}
                                          for t in tags])
        entry = hashes_entry(tags, infos)
        return {"Lora hashes": Quoted(entry)} if entry else {}

    def _load(self, info: LoraInfo, keep: set[str]) -> str:
        """The adapter of ``info``'s file, loaded unless it is already. To make room the least
        recently used adapters go, never one of ``keep`` (the paths of the job's other LoRAs):
        a job may use more LoRAs (MAX_TAGS) than are kept between jobs (MAX_LOADED)."""
        stat = os.stat(info.path)
        key = (info.path, stat.st_size, stat.st_mtime_ns)
        loaded = self._loaded.get(info.path)
        if loaded is not None and loaded.key == key:
            self._loaded.move_to_end(info.path)
            return loaded.adapter
        if loaded is not None:  # the file changed: load it again
            self._drop(info.path)
        spare = [path for path in self._loaded if path not in keep]  # least recently used first
        for path in spare[:max(0, len(self._loaded) + 1 - MAX_LOADED)]:
            self._drop(path)
        self._count += 1
        adapter = f"lora{self._count}"
        source: Any = info.path
        if not info.path.lower().endswith(".safetensors"):
            source, _ = read_tensors(info.path)  # weights_only: diffusers is never handed the pickle
        with _quiet_transformers():
            self.pipe.load_lora_weights(source, adapter_name=adapter)
        self._loaded[info.path] = _Loaded(adapter, key)
        logger.info("LoRA %s loaded as adapter %s", info.relpath, adapter)
        return adapter

    def _drop(self, path: str) -> None:
        loaded = self._loaded.pop(path)
        self.pipe.delete_adapters([loaded.adapter])


class _quiet_transformers:
    """transformers prints a load report listing every base weight as "missing" when a LoRA is
    injected into the text encoder; the weights are there. Quiet for the load only."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)

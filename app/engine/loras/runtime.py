"""The LoRAs of one pipeline at run time. Each is loaded once as a PEFT adapter (diffusers'
``load_lora_weights``, which converts kohya keys) and kept; each job activates its own with
``set_adapters``, and a job without tags runs with the adapters disabled, which is the plain model
bit for bit (PEFT's disabled layers call only the base layer)."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from app.engine.base import Quoted
from app.engine.loras.files import (
    SHORT_HASH,
    LoraInfo,
    by_name,
    lora_hash,
    lora_problem,
    model_shapes,
    read_tensors,
    scan,
)
from app.engine.loras.tags import LoraTag

logger = logging.getLogger(__name__)

MAX_LOADED = 8  # adapters kept between jobs; the least recently used go first (a job's own stay)


def hashes_entry(tags: list[LoraTag], infos: dict[str, LoraInfo]) -> str:
    """The infotext's ``Lora hashes`` value, A1111's way: ``name: shorthash`` joined by ", ",
    the names without ':' or ','."""
    return ", ".join(f"{t.name.replace(':', '').replace(',', '')}: {lora_hash(infos[t.name])[:SHORT_HASH]}"
                     for t in tags)


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


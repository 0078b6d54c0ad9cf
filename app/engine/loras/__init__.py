"""LoRA networks from a folder, used in prompts with AUTOMATIC1111's tags (``<lora:name:0.8>``).

The tags are taken out of the prompt before it is encoded (A1111's extra networks), and kept in the
infotext's prompt with a ``Lora hashes`` entry, as A1111 writes them. Tags in the negative prompt are
refused: A1111 reads extra networks from the prompt only and would encode them there as text.

One module per job: ``tags`` parses the prompt's tags (validation's part), ``files`` lists the LoRA
folder and hashes its files, ``runtime`` keeps the adapters loaded into a pipeline and activates each
job's. The public names of the three are here.
"""
from __future__ import annotations

from app.engine.loras.files import (
    SHORT_HASH,
    SUFFIXES,
    LoraFileError,
    LoraInfo,
    a1111_listing,
    by_name,
    file_hash,
    fit_problem,
    hash_cache,
    lora_files,
    lora_hash,
    lora_layers,
    lora_problem,
    model_shapes,
    read_tensors,
    scan,
)
from app.engine.loras.runtime import LoraSet, hashes_entry
from app.engine.loras.tags import LORA_KINDS, MAX_TAGS, MAX_WEIGHT, LoraTag, has_extra_networks, split_lora_tags

__all__ = [
    "LORA_KINDS", "MAX_TAGS", "MAX_WEIGHT", "SHORT_HASH", "SUFFIXES",
    "LoraFileError", "LoraInfo", "LoraSet", "LoraTag",
    "a1111_listing", "by_name", "file_hash", "fit_problem", "has_extra_networks", "hash_cache", "hashes_entry",
    "lora_files", "lora_hash", "lora_layers", "lora_problem", "model_shapes", "read_tensors", "scan",
    "split_lora_tags",
]

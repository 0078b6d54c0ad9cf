"""Textual-inversion embeddings from a folder, used by name in prompts as in
AUTOMATIC1111: ``embeddings/my-style.pt`` makes the word ``my-style`` stand
for its learned vectors.

Files are A1111's: ``.pt``/``.bin`` with ``string_to_param["*"]``, or
``.safetensors`` with ``emb_params`` (a diffusers one-key file also works).
``.pt`` files are read with ``torch.load(weights_only=True)``: tensors and
plain values only, never code. A file whose vectors do not fit the model's
text encoder (768 wide for SD 1.x, 1024 for SD 2.x) is skipped with the
reason. Loading goes through diffusers' ``load_textual_inversion`` (new
tokens ``name``, ``name_1`` ...), which the prompt encoder in prompts.py
expands with ``maybe_convert_prompt``, as diffusers' own encoder does.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.models.files import walk
from app.models.loading import UnsafeCheckpoint, load_pickle

logger = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")


@dataclass
class EmbeddingInfo:
    name: str
    path: str
    vectors: int = 0
    width: int = 0
    error: str | None = None

    def to_a1111(self) -> dict:
        return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": self.width,
                "vectors": self.vectors}


def read_embedding(path: str | os.PathLike) -> Any:
    """The (vectors, width) tensor of one embedding file; ValueError when the file holds none."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path))
    else:
        data = load_pickle(path)  # weights_only: a file that would run code is refused unread
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict) and "*" in data["string_to_param"]:
        tensor = data["string_to_param"]["*"]
    elif isinstance(data, dict) and "emb_params" in data:
        tensor = data["emb_params"]
    elif isinstance(data, dict) and len(data) == 1:
        tensor = next(iter(data.values()))
    else:
        tensor = data
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("no embedding vectors found (expected string_to_param or emb_params)")
    return tensor.reshape(-1, tensor.shape[-1]).detach().float()


def embedding_files(folder: str | os.PathLike | None) -> list[Path]:
    """The embedding files under ``folder`` (subfolders too, as A1111), sorted; never a
    file reached by a symlink out of the folder (``app.models.files.walk``)."""
    if not folder:
        return []
    return walk(Path(folder), lambda path: path.is_file() and path.suffix.lower() in SUFFIXES)


def scan(folder: str | os.PathLike | None, width: int | None = None) -> list[EmbeddingInfo]:
    """Every embedding file of the folder with its size, or why it cannot be used."""
    found = []
    for path in embedding_files(folder):
        info = EmbeddingInfo(path.stem, str(path))
        try:
            tensor = read_embedding(path)
            info.vectors, info.width = int(tensor.shape[0]), int(tensor.shape[1])
            if width is not None and info.width != width:
                info.error = f"vectors are {info.width} wide; this model's text encoder takes {width}"
        except UnsafeCheckpoint as exc:  # pickled code: refused, never run
            info.error = str(exc)[:300]
        except Exception as exc:  # a broken file is reported, not fatal
            info.error = f"unreadable: {exc}"[:200]
        found.append(info)
    return found


def install(pipe, folder: str | os.PathLike | None) -> list[EmbeddingInfo]:
    """Load the folder's usable embeddings into the pipeline's tokenizer and text encoder."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    infos = scan(folder, width)
    for info in infos:
        if info.error:
            logger.warning("embedding %s skipped: %s", info.path, info.error)
            continue
        if any(ch.isspace() for ch in info.name) or info.name.lower() in pipe.tokenizer.get_vocab():
            info.error = "its name is a word the tokenizer already knows, or holds a space; rename the file"
            continue
        tensor = read_embedding(info.path).to(pipe.text_encoder.dtype)
        pipe.load_textual_inversion(tensor, token=info.name, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    return infos


def unusable_embedding(prompt: str, infos: list[EmbeddingInfo]) -> EmbeddingInfo | None:
    """The first skipped embedding whose name the prompt uses as a word. A1111 reads
    such a word as plain text; here the prompt is refused instead, since its author
    meant the embedding (a name in the folder) and would get a different picture."""
    for info in infos:
        if info.error and re.search(rf"(?<![\w-]){re.escape(info.name)}(?![\w-])", prompt, re.IGNORECASE):
            return info
    return None


def a1111_listing(infos: list[EmbeddingInfo]) -> dict:
    """``/sdapi/v1/embeddings``'s answer."""
    return {"loaded": {i.name: i.to_a1111() for i in infos if not i.error},
            "skipped": {i.name: i.to_a1111() for i in infos if i.error}}

"""How a fine-tuned model is written so that other versions and tools read it
as we meant: the text encoder in the layout every transformers major version
loads, and LoRA adapters whose alpha survives the trip through a file."""
from __future__ import annotations

import json
from pathlib import Path

TEXT_MODEL_PREFIX = "text_model."


def prefix_text_encoder_keys(folder: str | Path) -> int:
    """Rewrite the ``*.safetensors`` of a saved ``CLIPTextModel`` with every
    key under ``text_model.``; return how many keys were renamed.

    transformers 5 saves ``CLIPTextModel`` without that prefix (its module
    tree lost the ``text_model`` level) and maps both layouts when loading.
    transformers 4 (still on many Colab images) loads by exact name: given
    the unprefixed file it finds none of its keys and silently keeps random
    weights. The prefixed layout is the one both load."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    renamed = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            keys = list(fh.keys())
            if all(k.startswith(TEXT_MODEL_PREFIX) for k in keys):
                continue
            tensors = {_prefixed(k): fh.get_tensor(k) for k in keys}
        renamed += sum(not k.startswith(TEXT_MODEL_PREFIX) for k in keys)
        metadata.setdefault("format", "pt")  # transformers 4 refuses a file without it
        save_file(tensors, str(path), metadata=metadata)
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded save: the index names every key too
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {_prefixed(k): v for k, v in data.get("weight_map", {}).items()}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return renamed


def _prefixed(key: str) -> str:
    return key if key.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + key

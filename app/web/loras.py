"""The LoRA folder as the web layer sees it: its listing, and the check that
every ``<lora:name>`` of a request names a usable file, before the job is
queued (the engine checks again when the job runs, app/engine/loras.py)."""
from __future__ import annotations

from flask import current_app

from app.engine.loras import LoraInfo, by_name, lora_problem, scan, split_lora_tags
from app.engine.types import GenerationRequest
from app.web.errors import ApiError


def lora_infos(hashes: bool = False) -> list[LoraInfo]:
    """The LORA_DIR listing (``hashes``: with each file's hash). With the engine in this process its
    layer shapes are checked too; with Redis workers only the files are (a LoRA for another model
    then fails its job, with the reason)."""
    engine = current_app.config.get("ENGINE")
    shapes = getattr(engine, "lora_shapes", None) if engine is not None else None
    return scan(current_app.config.get("LORA_DIR"), shapes, hashes=hashes)


def check_loras(gen: GenerationRequest) -> None:
    """400 naming the first LoRA of the prompt that is unknown or unusable."""
    tags = split_lora_tags(gen.prompt)[1]  # validated already
    if not tags:
        return
    infos = by_name(lora_infos())
    for tag in tags:
        problem = lora_problem(tag.name, infos)
        if problem:
            raise ApiError(400, f"prompt: {problem}", "prompt", tag.name)

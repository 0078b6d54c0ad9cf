"""The LoRA folder as the web layer sees it: its listing, and the check that
every ``<lora:name>`` of a request names a usable file, before the job is
queued. Only the files are checked here (their format, SDXL's layers): the
web layer does not know which model runs the job (a switch, Redis workers),
so the engine checks that the layers fit that model when the job runs
(app/engine/loras/), failing the job with the reason.

The folder is listed, its new files' headers read and hashed, in the slow-work
pool (app/web/slow.py), never on a request thread: a request answers from the
last listing when the folder (a Drive mount) is slow."""
from __future__ import annotations

from pathlib import Path

from flask import Flask, current_app

from app.engine.loras.files import LoraInfo, by_name, hash_cache, lora_problem, scan
from app.engine.loras.tags import split_lora_tags
from app.engine.types import GenerationRequest
from app.models.files import HashCache
from app.web.errors import ApiError
from app.web.services import services
from app.web.slow import read_slowly, slow_work

CACHE_FILE = "cache-lora.json"  # in the instance folder, next to the catalogue's cache.json


def lora_hashes_for(app: Flask) -> HashCache:
    return hash_cache(Path(app.instance_path) / CACHE_FILE)


def _read_name(hashes: bool) -> str:
    return "loras-hashed" if hashes else "loras"


def lora_infos(hashes: bool = False) -> list[LoraInfo]:
    """The LORA_DIR listing (``hashes``: with each file's hash, kept in the instance folder),
    read again in the slow-work pool; the last one known when that takes long."""
    folder, cache = current_app.config["LORA_DIR"], services().lora_hashes
    known = slow_work().results.get(_read_name(False), [])  # hashes pending: the plain listing meanwhile
    return read_slowly(_read_name(hashes), lambda: scan(folder, hashes=hashes, cache=cache), default=known)


def check_loras(gen: GenerationRequest) -> None:
    """400 naming the first LoRA of the prompt that is unknown or unusable. Names usable in
    the last listing are taken without reading the folder; others after reading it again."""
    tags = split_lora_tags(gen.prompt)[1]  # validated already
    if not tags or gen.disable_extra_networks:  # off: the tags name nothing that is loaded
        return
    if not current_app.config["LORA_DIR"]:
        raise ApiError(400, f"prompt: cannot use the LoRA {tags[0].name!r}: this server has no LoRA folder "
                       "(LORA_DIR)", "prompt", tags[0].name)
    infos = by_name(slow_work().results.get(_read_name(False), []))
    if any(lora_problem(tag.name, infos) for tag in tags):
        infos = by_name(lora_infos())
    for tag in tags:
        problem = lora_problem(tag.name, infos)
        if problem:
            raise ApiError(400, f"prompt: {problem}", "prompt", tag.name)

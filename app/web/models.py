"""The model catalogue and switching, as both APIs and the page use them.

One source for the rules: which names select a checkpoint or a VAE (A1111's:
title, name, short hash ...), who may switch (``ALLOW_MODEL_SWITCH``, and on a
public server the owner: ``app.web.auth.has_owner_rights``), and
what the current selection looks like. The views in ``api``, ``sdapi`` and
``pages`` only translate.

A switch is queued, not waited for: ``select`` records the new selection in
the job store (shared by every web app and worker) and returns; jobs
submitted from then on carry it, jobs already queued keep theirs, and an idle
worker loads it at once. ``/sdapi/v1/progress`` counts the pending load as a
job, so webuiapi's ``util_set_model`` + ``util_wait_for_ready`` wait for it.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from app.jobs.base import FAILED_TO_LOAD, LOADING, READY, ModelChoice
from app.models.loading import display_name
from app.models.registry import AUTOMATIC, NO_VAE, Catalogue, Checkpoint, Vae
from app.web.auth import has_owner_rights
from app.web.errors import ApiError
from app.web.service import backend
from app.web.services import services

logger = logging.getLogger(__name__)


def catalogue_for(app: Flask) -> Catalogue:
    """The app's catalogue (``create_app``), its folders listed and new files hashed from now on."""
    config, instance = app.config, Path(app.instance_path)
    catalogue = Catalogue(config["CHECKPOINT_DIR"], config["MODEL"], hub_models=tuple(config["MODELS"] or ()),
                          vae_dir=config["VAE_DIR"], cache_file=instance / "cache.json")
    # Nothing waits for them (pages and /sdapi/v1/sd-models show the hashes known; a 5 GB file takes
    # minutes, then it is cached in cache.json).
    threading.Thread(target=_list_and_hash, args=(catalogue,), name="t2i-catalogue", daemon=True).start()
    return catalogue


def _list_and_hash(catalogue: Catalogue) -> None:
    catalogue.checkpoints()
    catalogue.vaes()
    catalogue.hash_missing()


def catalogue() -> Catalogue:
    return services().catalogue


def switch_allowed(config: Any) -> bool | None:
    """The server's rule, whoever asks: True (everyone), False (no one), or None (the owner only).
    ALLOW_MODEL_SWITCH (a bool, parsed by the settings) decides when set; left None, a local server
    lets everyone switch and a PUBLIC one only its owner. Never with an ENGINE handed in (see ``refusal``)."""
    if config.get("ENGINE") is not None and not config.get("REDIS_URL"):
        return False
    value = config.get("ALLOW_MODEL_SWITCH")
    if value is None:
        return True if not config.get("PUBLIC") else None
    return bool(value)


def refusal() -> str | None:
    """Why this request may not switch models, or None when it may."""
    config = current_app.config
    rule = switch_allowed(config)
    if rule or (rule is None and has_owner_rights()):
        return None
    if config.get("ENGINE") is not None and not config.get("REDIS_URL"):
        # The engine handed in belongs to its caller (a notebook, a test), who keeps it: the
        # worker cannot free it, so a switch would keep two models in memory.
        return "model switching is off: this app runs the ENGINE it was handed (start it with MODEL to switch)"
    if rule is False:
        return "model switching is off on this server (ALLOW_MODEL_SWITCH is false)"
    who = ("logged in with the app's password" if config.get("ACCESS") == "people"
           else "logged in with the owner password, or in a browser on the machine that runs it")
    return (f"model switching is off on this public server except for its owner ({who}); "
            "ALLOW_MODEL_SWITCH=true would allow everyone")


def find_checkpoint(value: Any, field: str) -> Checkpoint:
    """The checkpoint ``value`` names; ApiError 400 naming it when unknown."""
    found = catalogue().find(value) if isinstance(value, str) else None
    if found is None:
        pending = " (files still being hashed can be named by title or name, not yet by hash)" \
            if catalogue().hashing() else ""
        raise ApiError(400, f"{field}: unknown model {value!r}; see /sdapi/v1/sd-models "
                            f"(POST /sdapi/v1/refresh-checkpoints after adding files){pending}", field, value)
    return found


def find_vae(value: Any, field: str) -> str | None:
    """The VAE path ``value`` names; None for "Automatic"/"None" (the model's own); 400 when unknown."""
    if value in (None, "", AUTOMATIC, NO_VAE):
        return None
    found = catalogue().find_vae(value) if isinstance(value, str) else None
    if found is None:
        raise ApiError(400, f"{field}: unknown VAE {value!r}; see /sdapi/v1/sd-vae", field, value)
    return found.filename


def choice_for(model: Any, vae: Any, field: str, vae_field: str, current: ModelChoice) -> ModelChoice:
    """The choice that ``model`` and ``vae`` (either None: keep ``current``'s) name, checked;
    403 when it differs from ``current`` and switching is not allowed."""
    checkpoint = find_checkpoint(model, field) if model is not None else entry(current)
    vae_path = find_vae(vae, vae_field) if vae is not None else current.vae
    found_vae = vae_entry(vae_path)
    chosen = ModelChoice(checkpoint.source, vae_path, checkpoint.hash, found_vae.hash if found_vae else None)
    if chosen != current:  # the hashes name the files, they do not choose them
        why = refusal()
        if why is not None:
            raise ApiError(403, f"{field if chosen.model != current.model else vae_field}: {why}",
                           field if chosen.model != current.model else vae_field,
                           model if chosen.model != current.model else vae)
    return chosen


def select(model: Any = None, vae: Any = None, field: str = "sd_model_checkpoint",
           vae_field: str = "sd_vae") -> ModelChoice:
    """Switch the model new jobs run on (checked as ``choice_for``); returns the selection."""
    current = backend().selection()
    chosen = choice_for(model, vae, field, vae_field, current)
    if chosen != current:
        backend().select(chosen)
    return chosen


def job_choice(model: Any, vae: Any = None, field: str = "override_settings.sd_model_checkpoint") -> ModelChoice | None:
    """A per-job model (A1111's ``override_settings``); None: the selection."""
    if model is None and vae is None:
        return None
    current = backend().selection()
    chosen = choice_for(model, vae, field, "override_settings.sd_vae", current)
    return None if chosen == current else chosen


def entry(choice: ModelChoice, hashed: bool = True) -> Checkpoint:
    """With the hash known now (null while the file is being hashed); ``hashed=False``: without
    starting the hashing of files not hashed yet."""
    return catalogue().by_source(choice.model, hashed=hashed)


def vae_entry(path: str | None) -> Vae | None:
    """With the hash known now: a request never reads a file to hash it."""
    return catalogue().vae_by_path(path)


def vae_name(path: str | None) -> str:
    """``sd_vae`` as A1111 shows it: the VAE's name, or "Automatic"."""
    found = vae_entry(path)
    return found.name if found is not None else AUTOMATIC


def model_name(checkpoint: Checkpoint) -> str:
    """The short name jobs and statuses give a model (the infotext's "Model: x", A1111's
    ``sd_model_name``): the file's, where the listing's ``model_name`` of ``sub/x`` is "sub_x"."""
    return display_name(checkpoint.source)


def loading() -> str | None:
    """The model being loaded (or about to be: selected, not yet loaded), else None."""
    status = backend().status()
    if status.state == LOADING:
        return status.name
    pending = backend().pending_switch(status)
    return model_name(entry(pending, hashed=False)) if pending is not None else None


def state(hashed: bool = False) -> dict:
    """The native API's view: the catalogue, the selection, what is loaded, and whether switching
    is open. ``hashed``: with every file's hash (/api/models); a page shows the ones known now."""
    status = backend().status()
    selected = backend().selection()
    current = entry(selected, hashed=hashed)
    return {
        "models": [{**c.a1111(), "name": c.name} for c in catalogue().checkpoints(hashed=hashed)],
        "vaes": [AUTOMATIC, NO_VAE] + [v.name for v in catalogue().vaes()],
        "selected": current.title, "selected_vae": vae_name(selected.vae),
        "loaded": status.name if status.state == READY else None, "state": status.state, "loading": loading(),
        "error": status.error if status.state == FAILED_TO_LOAD else None,
        "switch_allowed": refusal() is None, "switch_refused": refusal(),
    }


# How long the GPU worker, having loaded a model, waits for its file's hash (for the infotext)
# before it runs jobs without "Model hash". Loading the model read the file already.
HASH_WAIT = 600


def engine_hashes(engine: Any, cat: Catalogue) -> Any:
    """Give a loaded engine the short hashes of its files (infotext "Model hash", "VAE hash").
    In the GPU worker, after a load: it may wait for the hashing thread; a request never does."""
    if not cat.wait_hashed(HASH_WAIT):
        logger.warning("the model files are still being hashed: the infotext names no hash for now")
    if engine.model and os.path.isfile(engine.model):
        engine.model_hash = cat.by_source(engine.model).hash
    vae = cat.vae_by_path(engine.vae, hashed=True)
    engine.vae_hash = vae.hash if vae is not None else None
    return engine

"""The web's service layer: what every blueprint shares, so that no blueprint imports another
and none imports the app factory (``app/web/__init__.py``). Backend access, the request
fields the web takes, building and queueing a request, and a job as JSON."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from flask import Flask, current_app, request

from app.engine.controlnet import UNIT_IMAGES
from app.engine.dynamic_prompts import check_wildcards
from app.engine.prompt_lines import line_fields
from app.engine.types import IMAGE_FIELDS, GenerationRequest, ValidationError, field_names, floor_size
from app.jobs.base import Backend, ModelChoice
from app.jobs.job import DONE, Job, QueueFull
from app.web.auth import client_id, is_owner, people_store, person_id
from app.web.body import check_int_size, json_object
from app.web.controlnet import prepare_units
from app.web.errors import ApiError
from app.web.loras import check_loras
from app.web.people import PeopleError, QuotaExceeded
from app.web.services import services, services_of
from app.web.settings import engine_limits
from app.web.styles import styled_values
from app.web.timing import timing
from app.web.uploads import decode_init_image, decode_mask

# The request's fields as the web takes them: step strips are a CLI and notebook option;
# ``extras`` is set by the Extras routes (/api/extras), not sent as a job field.
WEB_FIELDS = tuple(name for name in field_names() if name not in ("save_steps", "extras"))


def backend() -> Backend:
    """The current app's backend."""
    return services().backend


def backend_of(app: Flask) -> Backend:
    return services_of(app).backend


def form_defaults() -> dict[str, Any]:
    """The form's starting values (the page, and /api/health for the page to
    correct them): the request type's defaults, and the model's native size
    once it is loaded (a guess before)."""
    status = backend().status()
    width, height = status.native_size or ((256, 256) if status.is_demo else (768, 768))
    defaults = {k: v for k, v in GenerationRequest.defaults().items() if k in WEB_FIELDS and v is not None}
    for free_text in ("negative_prompt", "seed"):  # the form starts them empty
        defaults.pop(free_text, None)
    return {**defaults, "width": width, "height": height}


@contextlib.contextmanager
def people_errors() -> Iterator[None]:
    """A PeopleError raised in the block, as the ApiError a client sees (its status, field and value)."""
    try:
        yield
    except PeopleError as exc:
        raise ApiError(exc.status, str(exc), exc.field, exc.value) from exc


@contextlib.contextmanager
def quota_charged(images: int) -> Iterator[None]:
    """A person's ``images`` counted against their daily quota for the block (given back if it
    raises); 429 naming "quota", with Retry-After (seconds to midnight UTC), when over it.
    The owner and password-mode clients have no quota."""
    store, who = people_store(), person_id()
    if store is None or who is None:
        yield
        return
    try:
        with people_errors():
            store.reserve(who, images)
    except QuotaExceeded as exc:
        raise ApiError(429, str(exc), "quota", exc.person.quota,
                       headers={"Retry-After": str(exc.retry_after)}) from exc
    try:
        yield
    except BaseException:
        store.release(who, images)  # nothing was queued
        raise


def build_request(values: dict, init_value=None, mask_value=None) -> GenerationRequest:
    """A validated GenerationRequest from already-named values (None: default);
    the init image and the inpainting mask as uploaded (base64, data URL or bytes)."""
    config = current_app.config
    values = {k: v for k, v in values.items() if v is not None}
    if "prompt" not in values:
        raise ValidationError("prompt", None, "is required")
    if "controlnet" in values:  # images decoded within the upload limits, models known (app/web/controlnet.py)
        values["controlnet"] = prepare_units(values["controlnet"])
    values = styled_values(values)  # before validation: the styled prompt is what runs and what is checked
    init = None
    if init_value is not None and init_value != "":
        init = decode_init_image(init_value, config)
        # img2img without a size: the init image's size, rounded down as the engine does.
        values.setdefault("width", floor_size(init.width))
        values.setdefault("height", floor_size(init.height))
    mask = None
    if mask_value is not None and mask_value != "":
        if init is None:
            raise ValidationError("mask", "mask", "needs an init image to inpaint")
        mask = decode_mask(mask_value, config)
    gen = GenerationRequest(init_image=init, mask=mask, **values).validate(engine_limits(config))
    check_loras(gen)  # every <lora:name> names a usable file, before anything is queued
    if not config["REDIS_URL"]:  # the workers' folder is theirs: with Redis they find a missing wildcard
        check_wildcards("prompt", gen.prompt, config["WILDCARD_DIR"])
        check_wildcards("negative_prompt", gen.negative_prompt, config["WILDCARD_DIR"])
    return gen


def build_line_requests(per_line: list[dict], text: str, field: str, init_value=None,
                        mask_value=None) -> list[GenerationRequest]:
    """"Prompts from file": every line's request built and checked before any is queued. A bad value a
    line set itself is refused naming ``field`` and the line; a bad value of the request, its own field."""
    requests = []
    for number, (values, own) in enumerate(zip(per_line, line_fields(text, field)), 1):
        try:
            requests.append(build_request(values, init_value, mask_value))
        except ValidationError as exc:
            if exc.field not in own:
                raise
            raise ApiError(400, f"{field}: line {number}: {exc.field}: {exc.message}", field, exc.value) from exc
    return requests


def enqueue(gen: GenerationRequest, model: ModelChoice | None = None) -> Job:
    """The one way a job is queued (the native and the A1111 routes): a person's images are
    counted against their daily quota here (``quota_charged``), given back if nothing was queued."""
    with quota_charged(gen.num_images):
        try:
            return backend().submit(gen, client_id(), model)
        except QueueFull as exc:
            raise ApiError(429 if exc.per_client else 503, str(exc), None, None,
                           headers={"Retry-After": "10"}) from exc


def image_url(job_id: str, n: int) -> str:
    return f"/images/{job_id}/{n}.png"


def is_mine(job: Job) -> bool:
    return job.client == client_id()


def sees_privately(job: Job) -> bool:
    """Its owner, and the owner of an ``ACCESS = "people"`` app, who sees every private gallery."""
    return is_mine(job) or is_owner()


def shows_contents(job: Job) -> bool:
    """Whose prompt, settings and images a client may see: its own jobs', and
    with ``GALLERY = "shared"`` everyone's finished ones (the gallery's)."""
    return sees_privately(job) or (job.state == DONE and current_app.config["GALLERY"] == "shared")


def job_json(job: Job) -> dict:
    """The job as the caller may see it: someone else's job shows only its
    place in the queue (no prompt, preview or images) unless shows_contents.
    Whose it is never shows, only whether it is the caller's."""
    body = _job_fields(job)
    body["mine"] = is_mine(job)
    body.update(timing(backend(), job))  # its, eta_seconds: the page's speed and time-left display
    if not shows_contents(job):
        body.update(params=None, images=[], preview_url=None, error=None, failure=None)
    return body


MODEL_PARAMS = ("sd_model", "sd_vae", "sd_model_hash", "sd_vae_hash")


def _job_fields(job: Job) -> dict:
    return {
        "id": job.id,
        "state": job.state,
        "position": job.position,
        "progress": {"step": job.progress.step, "total": job.progress.total, "fraction": job.progress.fraction},
        "preview_url": f"/api/jobs/{job.id}/preview.png" if job.has_preview else None,
        "params": _shown_params(job.params),
        "images": [{"url": image_url(job.id, im["n"]), "seed": im["seed"], "infotext": im["infotext"]}
                   for im in job.images],
        "partial": job.partial,  # the images are those of a run stopped early (cancelled or skipped)
        "error": job.error,
        "failure": job.failure.to_dict() if job.failure else None,  # why it failed, as data (docs/api.md)
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _shown_params(params: dict) -> dict:
    """The job's params without local paths (the owner's) and with ControlNet images left out (their size)."""
    shown = {k: v for k, v in params.items() if k not in MODEL_PARAMS}
    if shown.get("controlnet"):
        shown["controlnet"] = [{k: v for k, v in unit.items() if k not in UNIT_IMAGES} for unit in shown["controlnet"]]
    return shown


# --- request bodies -------------------------------------------------------------------

_TYPES = {f: GenerationRequest.__dataclass_fields__[f].type for f in WEB_FIELDS}


def job_values(extra: tuple[str, ...] = ()) -> tuple[dict, object, object]:
    """Fields from a JSON body or a multipart form; the init image and mask apart.
    ``extra``: a route's own fields besides the generation's (``xyz``)."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        values = {k: from_form(k, v) for k, v in request.form.items()}
        if "styles" in request.form:  # a list: one form field per style, as a multi-select sends them
            values["styles"] = [name.strip() for name in request.form.getlist("styles") if name.strip()]
        for name in IMAGE_FIELDS:
            upload = request.files.get(name)
            if upload is not None and upload.filename:
                values[name] = upload.read(current_app.config["MAX_UPLOAD_BYTES"] + 1)
    else:
        values = json_object(" or a form")
    for key in values:
        if key not in WEB_FIELDS and key not in extra:
            raise ApiError(400, f"{key}: unknown field; the fields are " + ", ".join(WEB_FIELDS), key, values[key])
    init, mask = values.pop("init_image", None), values.pop("mask", None)
    for name, value in (("init_image", init), ("mask", mask)):
        if isinstance(value, str) and not value.strip():
            # null means "no image", like null for any field; an empty string is a broken upload.
            raise ApiError(400, f"{name}: is empty; send a base64 string or a data URL, or leave it out",
                           name, value)
    return values, init, mask


def from_form(name: str, text: str):
    """Form fields are text: numbers are converted as the request type
    declares them; what does not convert is left as text for validation to name."""
    text = text.strip()
    if text == "":
        return None
    kind = str(_TYPES.get(name, ""))
    if kind.startswith("bool"):  # a checkbox sends "on"; anything else unknown is named by validation
        lowered = text.lower()
        if lowered in ("1", "true", "on", "yes"):
            return True
        return False if lowered in ("0", "false", "off", "no") else text
    try:
        if kind.startswith("int"):
            value = int(text)
            check_int_size(name, value)  # as in a JSON body (app/web/body.py)
            return value
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        return text
    return text


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """The query argument ``name`` as a whole number from ``low`` to ``high`` (``default`` when absent);
    a 400 names it otherwise."""
    raw = request.args.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: must be an integer", name, raw) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}: must be between {low} and {high}", name, value)
    return value


def page_args(default: int, most: int) -> tuple[int, str | None]:
    """A listing's page size (``limit``) and cursor (``before``: the id of the last job of the page
    before, newest first), both checked: a 400 names the bad one."""
    limit = int_arg("limit", default, 1, most)
    before = request.args.get("before") or None
    if before is not None and not is_job_id(before):
        raise ApiError(400, "before: must be a job id (32 hex digits)", "before", before)
    return limit, before


def is_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)

"""Extras jobs from the web (issue #24): the source image (an upload, or a
gallery image the caller may see) and A1111's extras fields made into a
request that is queued like a generation (same queue, same per-client
limits), for /api/extras, /api/upscale and /sdapi/v1/extra-*."""
from __future__ import annotations

from flask import current_app

from app.engine.extras import EXTRAS_DEFAULTS, check_extras_size, extras_values, source_prompts
from app.engine.types import GenerationRequest
from app.jobs.job import Job
from app.web.errors import ApiError
from app.web.service import backend, enqueue, shows_contents
from app.web.settings import engine_limits
from app.web.uploads import decode_init_image, png_info

# What a caller sends: A1111's extras fields (``source_infotext`` is read from the source, not sent).
EXTRAS_FIELDS = tuple(name for name in EXTRAS_DEFAULTS if name != "source_infotext")
SOURCE_FIELDS = ("image", "source_job", "source_image")


def gallery_source(job_id, n) -> tuple[bytes, str]:
    """A gallery image's PNG and infotext, if the caller may see it; else 404, as /images/ answers
    (whether someone else's image exists is theirs to know)."""
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ApiError(400, "source_image: must be the image's number in its job (0, 1 ...)", "source_image", n)
    job = backend().get(job_id) if isinstance(job_id, str) else None
    record = next((im for im in job.images if im["n"] == n), None) if job is not None else None
    if job is None or record is None or not shows_contents(job):  # mine, or shared and done
        raise ApiError(404, "source_job: no such gallery image", "source_job", f"{job_id}/{n}")
    png = backend().read_image(job.id, n)
    if png is None:
        raise ApiError(404, "source_job: the image is missing from the image folder", "source_job", f"{job_id}/{n}")
    return png, record["infotext"] or ""


def extras_request(values: dict) -> GenerationRequest:
    """A validated Extras request from A1111-named ``values`` plus ``image`` (base64 or a data URL)
    or ``source_job``/``source_image`` (a gallery image)."""
    config = current_app.config
    image_value, job_id, n = (values.get(name) for name in SOURCE_FIELDS)
    if job_id is not None and image_value not in (None, ""):
        raise ApiError(400, "image: send an image or a source_job, not both", "image", "image")
    extras = {k: v for k, v in values.items() if k in EXTRAS_FIELDS and v is not None}
    limits = engine_limits(config)

    def check_size(size: tuple[int, int]) -> None:  # from the header, before the pixels are decoded
        check_extras_size(size, extras_values(extras), limits)

    if job_id is not None:
        data, text = gallery_source(job_id, n)
        image = decode_init_image(data, config, field="source_job", fit=False, check_size=check_size)
    elif image_value in (None, ""):
        raise ApiError(400, "image: is required (a base64 string or a data URL), or name a gallery image with "
                            "source_job", "image", image_value)
    else:
        image = decode_init_image(image_value, config, field="image", fit=False, check_size=check_size)
        text = (png_info(image_value, config)[0] or "") if isinstance(image_value, str) else ""
    extras["source_infotext"] = text
    prompt, negative = source_prompts(text)
    return GenerationRequest(prompt=prompt, negative_prompt=negative, init_image=image,
                             extras=extras).validate(limits)


def queue_extras(gen: GenerationRequest) -> Job:
    """Queued on the worker's own model: an Extras job never makes a worker switch models."""
    return enqueue(gen, None)

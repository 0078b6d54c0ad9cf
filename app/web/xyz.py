"""The X/Y/Z plot on the web: ``POST /api/xyz`` (a generation's fields plus
``xyz``), ``GET /api/groups/<id>`` (its cells and, once they have all
finished, its grid), ``POST /api/groups/<id>/cancel``; and A1111's
``script_name: "x/y/z plot"`` for /sdapi/v1/txt2img and img2img (``sdapi_plot``).

A plot is queued as one group of ordinary jobs, one per cell (app/jobs/groups.py);
its grid becomes a gallery job of its own when the last cell ends.
"""
from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, current_app, jsonify

from app.engine.types import GenerationRequest, ValidationError
from app.engine.xyz import MAX_CELLS, SCRIPT_TITLE, Plot, make_plot
from app.jobs.base import ModelChoice
from app.jobs.job import QUEUED, RUNNING, Job, QueueFull
from app.web import models
from app.web.auth import client_id
from app.web.errors import ApiError
from app.web.loras import check_loras
from app.web.service import backend, build_request, job_json, job_values, quota_charged
from app.web.settings import engine_limits

bp = Blueprint("xyz", __name__, url_prefix="/api")

__all__ = ["SCRIPT_TITLE", "bp", "sdapi_plot"]

AXIS_KEYS = ("x", "y", "z")
OPTIONS = {"draw_legend": True, "include_lone_images": False, "include_sub_grids": False, "no_fixed_seeds": False,
           "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False, "margin_size": 0}


def max_cells() -> int:
    return int(current_app.config.get("XYZ_MAX_CELLS", MAX_CELLS))


def _flag(settings: dict, name: str, prefix: str) -> bool:
    value = settings.get(name, OPTIONS[name])
    if type(value) is int and value in (0, 1):  # clients that send A1111's checkboxes as 0/1
        value = bool(value)
    if not isinstance(value, bool):
        raise ApiError(400, f"{prefix}{name}: must be true or false", prefix + name, value)
    return value


def plan(base: GenerationRequest, settings: dict, prefix: str = "xyz.") -> Plot:
    """The plot of ``base`` that ``settings`` describe: ``x_type``/``x_values`` (and y, z; a type is an
    A1111 axis index or name, missing: Nothing) and A1111's options (``draw_legend`` ...)."""
    unknown = [k for k in settings if k not in OPTIONS and k not in {f"{a}_{w}" for a in AXIS_KEYS
                                                                     for w in ("type", "values")}]
    if unknown:
        raise ApiError(400, f"{prefix}{unknown[0]}: unknown field", prefix + unknown[0], settings[unknown[0]])
    if settings.get("x_type") in (None, 0, "Nothing") and settings.get("y_type") in (None, 0, "Nothing") \
            and settings.get("z_type") in (None, 0, "Nothing"):
        raise ApiError(400, f"{prefix}x_type: choose at least one axis", prefix + "x_type", settings.get("x_type"))
    axes = [(settings.get(f"{a}_type") if settings.get(f"{a}_type") is not None else 0,
             settings.get(f"{a}_values") if settings.get(f"{a}_values") is not None else "",
             f"{prefix}{a}_type", f"{prefix}{a}_values") for a in AXIS_KEYS]
    margin = settings.get("margin_size", 0)
    if isinstance(margin, float) and margin.is_integer():
        margin = int(margin)
    limits = engine_limits(current_app.config)
    return make_plot(base, axes, draw_legend=_flag(settings, "draw_legend", prefix),
                     include_lone_images=_flag(settings, "include_lone_images", prefix),
                     include_sub_grids=_flag(settings, "include_sub_grids", prefix),
                     no_fixed_seeds=_flag(settings, "no_fixed_seeds", prefix),
                     vary_seeds=tuple(_flag(settings, f"vary_seeds_{a}", prefix) for a in AXIS_KEYS),  # type: ignore
                     margin_size=margin, max_cells=max_cells(), validate=lambda r: r.validate(limits))


def queue_plot(plot: Plot, choice: ModelChoice | None) -> tuple[str, list[Job]]:
    """Queue the plot's cells as one group: a costly axis (the checkpoint) outermost, so the
    queue switches models as few times as it can (A1111 orders its loops the same way)."""
    choices: dict[str, ModelChoice | None] = {}
    axis_field = next((a.field for a in (plot.x, plot.y, plot.z) if a.kind.label == "Checkpoint name"), "")
    for cell in plot.cells:
        check_loras(cell.request)  # a Prompt S/R on a LoRA tag: every tag names a usable file
        if cell.checkpoint is not None and cell.checkpoint not in choices:
            try:
                choices[cell.checkpoint] = models.job_choice(cell.checkpoint, None, field=axis_field)
            except ApiError as exc:
                raise ApiError(exc.status, exc.message.replace("override_settings.sd_model_checkpoint", axis_field),
                               axis_field, cell.checkpoint) from exc
    ranks = {name: i for i, name in enumerate(choices)}
    ordered = sorted(plot.cells, key=lambda c: (ranks.get(c.checkpoint, 0) if c.checkpoint else 0, c.index))
    info = {**plot.grid_spec(), "order": [c.index for c in ordered]}
    cells = [(c.request, choices.get(c.checkpoint) if c.checkpoint else choice) for c in ordered]
    with quota_charged(len(cells)):
        try:
            return backend().submit_group(cells, client_id(), info)
        except QueueFull as exc:
            raise ApiError(429 if exc.per_client else 503, str(exc), None, None,
                           headers={"Retry-After": "10"}) from exc


def group_state(cells: list[Job], grid: Job | None) -> str:
    if grid is not None:
        return grid.state
    if any(job.state == RUNNING for job in cells):
        return RUNNING
    if any(job.state == QUEUED for job in cells):
        return QUEUED
    return "cancelled" if any(job.state == "cancelled" for job in cells) else "failed"


def group_json(group_id: str) -> dict:
    cells = backend().group_jobs(group_id, client_id())
    grid = backend().collect_group(group_id, client_id()) if cells else backend().get(group_id)
    if not cells and (grid is None or grid.client != client_id()):
        raise ApiError(404, "no such plot", "id", group_id)
    spec = (grid.params if grid is not None else cells[0].params).get("group", {}).get("grid", {})
    return {"id": group_id, "state": group_state(cells, grid), "shape": spec.get("shape"),
            "x_labels": spec.get("x_labels"), "y_labels": spec.get("y_labels"), "z_labels": spec.get("z_labels"),
            "cells": [job_json(job) for job in cells], "grid": job_json(grid) if grid is not None else None}


# --- routes --------------------------------------------------------------------------

@bp.post("/xyz")
def submit_plot():
    values, init, mask = job_values(extra=("xyz",))
    settings = values.pop("xyz", None)
    if isinstance(settings, str):  # a form field: JSON text
        try:
            settings = json.loads(settings)
        except ValueError:
            raise ApiError(400, "xyz: must be a JSON object", "xyz", settings) from None
    if not isinstance(settings, dict):
        raise ApiError(400, "xyz: must be an object with x_type, x_values ...", "xyz", settings)
    plot = plan(build_request(values, init, mask), settings)
    group_id, _ = queue_plot(plot, None)
    return jsonify({"ok": True, "group": group_json(group_id)}), 202


@bp.get("/groups/<group_id>")
def get_group(group_id: str):
    return jsonify({"ok": True, "group": group_json(group_id)})


@bp.post("/groups/<group_id>/cancel")
def cancel_group(group_id: str):
    if not backend().group_jobs(group_id, client_id()):
        raise ApiError(404, "no such plot", "id", group_id)
    backend().cancel_group(group_id, client_id())
    return jsonify({"ok": True, "group": group_json(group_id)})


# --- A1111's script ------------------------------------------------------------------

# script_args as A1111 1.10's run() takes them, after the axes' (type, values, dropdown) triples.
SCRIPT_OPTIONS = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
                  "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")


def settings_from_script_args(args: Any) -> dict:
    """A1111's ``script_args`` [x_type, x_values, x_values_dropdown, y_type, ..., z_values_dropdown,
    draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y,
    vary_seeds_z, margin_size, csv_mode] as ``plan``'s settings. A dropdown list, when not empty, gives
    the values (A1111 reads it for axes with choices unless csv_mode); else the text does."""
    if not isinstance(args, list) or len(args) < 2:
        raise ApiError(400, "script_args: must be a list: [x_type, x_values, x_values_dropdown, y_type, ...]",
                       "script_args", args)
    settings: dict = {}
    for i, axis in enumerate(AXIS_KEYS):
        kind, text, dropdown = (args[3 * i:3 * i + 3] + [None, None, None])[:3]
        settings[f"{axis}_type"] = kind
        settings[f"{axis}_values"] = dropdown if isinstance(dropdown, list) and dropdown else text
    for offset, name in enumerate(SCRIPT_OPTIONS):
        if len(args) > 9 + offset and args[9 + offset] is not None and name != "csv_mode":
            settings[name] = args[9 + offset]
    return settings


def renamed(exc: ValidationError) -> ApiError:
    """A plot error named as A1111's script_args position (``script_args[1]`` is x_values)."""
    name = exc.field.removeprefix("script_args.")
    positions = {f"{a}_{w}": 3 * i + j for i, a in enumerate(AXIS_KEYS) for j, w in enumerate(("type", "values"))}
    positions.update({n: 9 + i for i, n in enumerate(SCRIPT_OPTIONS)})
    where = f"script_args[{positions[name]}] ({name})" if name in positions else exc.field
    return ApiError(400, f"{where}: {exc.message}", where, exc.value)


def sdapi_plot(gen: GenerationRequest, body: dict, choice: ModelChoice | None, timeout: float
               ) -> tuple[Job, list[Job], bool]:
    """Queue the plot and wait for it as A1111's synchronous call does: the grid job, the cells, and
    whether A1111 would return the cells after the grid ("Include Sub Images")."""
    settings = settings_from_script_args(body.get("script_args"))
    try:
        plot = plan(gen, settings, prefix="script_args.")
    except ValidationError as exc:
        raise renamed(exc) from exc
    except ApiError as exc:
        if exc.field and exc.field.startswith("script_args."):
            raise renamed(ValidationError(exc.field, exc.value, exc.message.split(": ", 1)[-1])) from exc
        raise
    group_id, jobs = queue_plot(plot, choice)
    deadline = time.monotonic() + timeout
    for job in jobs:
        backend().wait(job.id, max(0.0, deadline - time.monotonic()))
    grid = None
    while grid is None and time.monotonic() < deadline:  # Redis: the cells' PNGs reach this disk shortly
        grid = backend().collect_group(group_id, client_id())
        if grid is None:
            cells = backend().group_jobs(group_id, client_id())
            if all(job.finished for job in cells) and not any(job.state == "done" for job in cells):
                break
            time.sleep(0.2)
    cells = backend().group_jobs(group_id, client_id())
    if grid is None:
        if any(not job.finished for job in cells):
            raise ApiError(504, f"the plot is still running after {timeout:g}s; follow it at /api/groups/{group_id}",
                           "group_id", group_id)
        errors = sorted({job.error for job in cells if job.error})
        raise ApiError(500 if not all(job.state == "cancelled" for job in cells) else 409,
                       "the plot made no image: " + ("; ".join(errors) or "every cell was cancelled"),
                       "group_id", group_id)
    return grid, cells, plot.include_lone_images

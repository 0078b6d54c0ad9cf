"""A1111's "Prompts from file or textbox" script: one job per non-empty line of a text.

A line is a prompt, or (starting with ``--``) options as the script reads them, e.g.
``--prompt "a cat, (fur:1.2)" --negative_prompt "blurry" --steps 10 --cfg_scale 5``: a
``--prompt`` or ``--negative_prompt`` value runs on over plain words up to the next ``--``
option, the others take one value each. A line's prompt joins the request's prompt with a space,
before it (``prompt_position`` "start", A1111's default) or after it ("end"); the negative prompt
likewise. Seeds as the script's two checkboxes: "iterate seed every line" gives line k the seed
``seed + k * images per line``; "use same random seed for all lines" gives every line the same seed;
with neither, every line keeps the request's seed (-1: each line its own random one).

Differences: a line starting with ``--`` that cannot be read (unknown option, missing value, an
option this server has no field for such as ``--sd_model``) is refused naming the line, where A1111
logs it and runs the whole line as a prompt. Lines are capped (MAX_PROMPT_LINES).
"""
from __future__ import annotations

import shlex
from typing import Any, Callable

from app.engine.fields import kind
from app.engine.types import ValidationError, described, draw_seed

MAX_PROMPT_LINES = 100  # jobs one request makes
SCRIPT_TITLE = "prompts from file or textbox"  # A1111's title in lower case, as /sdapi/v1/scripts lists it
POSITIONS = ("start", "end")


def _boolean(text: str) -> bool:
    return text == "true"  # A1111: anything else is false


# A1111's options (its script's ``prompt_tags``) -> our request field, read as the field's type; None:
# accepted and ignored (files and grids are not the server's to name from a request).
_OPTIONS: dict[str, str | None] = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "subseed": "subseed",
    "subseed_strength": "subseed_strength", "seed_resize_from_h": "seed_resize_from_h",
    "seed_resize_from_w": "seed_resize_from_w", "sampler_name": "scheduler", "batch_size": "batch_size",
    "n_iter": "n_iter", "steps": "steps", "cfg_scale": "guidance_scale", "width": "width", "height": "height",
    "restore_faces": "restore_faces", "tiling": "tiling",
    "outpath_samples": None, "outpath_grids": None, "prompt_for_display": None, "do_not_save_samples": None,
    "do_not_save_grid": None,
}
_COUNTS = ("batch_size", "n_iter")  # not request fields: a line's images (see line_values)


def _converter(name: str) -> Callable[[str], Any]:
    if name in _COUNTS:
        return int
    convert = kind(described()[name][0])
    return _boolean if convert is bool else convert


_REFUSED = {"sd_model": "one request runs on one model; send a request per model",
            "sampler_index": "use --sampler_name",
            "styles": "give the request's styles instead"}


def read_lines(text: Any, field: str = "prompt_txt") -> list[dict]:
    """Each non-empty line's options by our field names (``batch_size`` and ``n_iter`` kept apart);
    ValidationError naming ``field`` and the line."""
    if not isinstance(text, str):
        raise ValidationError(field, text, "must be text, one prompt or line of options a line")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValidationError(field, text, "has no prompt: write one prompt a line")
    if len(lines) > MAX_PROMPT_LINES:
        raise ValidationError(field, f"{len(lines)} lines", f"has {len(lines)} lines; the limit is {MAX_PROMPT_LINES}")
    return [_options(line, n, field) if line.startswith("--") else {"prompt": line}
            for n, line in enumerate(lines, 1)]


def line_fields(text: Any, field: str = "prompt_txt") -> list[set[str]]:
    """The request fields each line sets itself (a line's prompt joins the request's: always its own),
    so that an error in one of them can name the line rather than the request's field."""
    own = []
    for options in read_lines(text, field):
        fields = set(options) | {"prompt", "negative_prompt"}
        if fields & {"batch_size", "n_iter"}:
            fields.add("num_images")
        own.append(fields)
    return own


def _options(line: str, number: int, field: str) -> dict:
    def refuse(why: str) -> ValidationError:
        return ValidationError(field, line, f"line {number}: {why}")

    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise refuse(f"cannot be read ({exc})") from None
    found: dict = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise refuse(f"{arg!r} is not an option (options start with --)")
        tag = arg[2:]
        if pos + 1 >= len(args):
            raise refuse(f"{arg} has no value")
        if tag in _REFUSED:
            raise refuse(f"{arg} is not supported: {_REFUSED[tag]}")
        if tag not in _OPTIONS:
            raise refuse(f"{arg} is not an option; the options are --" + ", --".join(_OPTIONS))
        if tag in ("prompt", "negative_prompt"):  # runs on over words up to the next option, as A1111
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            found[tag] = " ".join(words)
            continue
        name = _OPTIONS[tag]
        if name is not None:
            convert = _converter(name)
            try:
                found[name] = convert(args[pos + 1])
            except ValueError:
                raise refuse(f"{arg} {args[pos + 1]!r} is not a {convert.__name__}") from None
        pos += 2
    return found


def line_values(base: dict, text: Any, *, iterate_seed: bool = False, same_seed: bool = False,
                position: str = "start", field: str = "prompt_txt") -> list[dict]:
    """The request values of each line's job: ``base`` (our field names; ``num_images`` is the images
    per line) with the line's options over it, prompts joined as the script joins them."""
    if position not in POSITIONS:
        raise ValidationError("prompt_position", position, "must be start or end")
    lines = read_lines(text, field)
    seed = base.get("seed")
    if (iterate_seed or same_seed) and (seed is None or seed == -1):
        seed = draw_seed()
    per_line = base.get("num_images") or 1
    out = []
    for k, options in enumerate(lines):
        values = {**base, "seed": seed}
        if iterate_seed and seed is not None and seed != -1:
            values["seed"] = seed + k * per_line
        batch, n_iter = options.pop("batch_size", None), options.pop("n_iter", None)
        if batch is not None or n_iter is not None:  # a line's own batch: its images, A1111's batch x iterations
            values["num_images"] = (batch or 1) * (n_iter or 1)
        for name in ("prompt", "negative_prompt"):
            own, common = options.pop(name, None), base.get(name) or ""
            if own:
                values[name] = f"{own} {common}" if common and position == "start" else (
                    f"{common} {own}" if common else own)
        values.update(options)
        out.append(values)
    return out

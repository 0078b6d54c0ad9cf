"""``<lora:...>`` tags in a prompt, AUTOMATIC1111's syntax: ``<lora:name>`` (weight 1),
``<lora:name:0.8>``, ``<lora:name:te:unet>`` (text-encoder and UNet weights apart, as A1111's
``te=``/``unet=``). Parsed here, before any file is read: validation refuses a tag this server
cannot honour, and the engine takes the tags out of the prompt before encoding it."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.engine.base import Limits, ValidationError

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

MAX_TAGS = 10  # LoRAs in one prompt
MAX_WEIGHT = 10.0  # |weight|; A1111 sets no bound, but far beyond this the image is noise or NaN

# A1111's extra-network syntax (modules/extra_networks.py, re_extra_net): <kind:args>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")  # A1111 reads <lyco:...> as <lora:...> since 1.5


def _extra_networks(prompt: str) -> list[re.Match]:
    """The tags, as A1111's pattern finds them. The search ends at the last ">": from a "<"
    with none after it, "[^>]+" scanned to the end of the text, once per "<" (quadratic)."""
    return list(_EXTRA_NETWORK.finditer(prompt, 0, prompt.rfind(">") + 1))


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


def split_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its extra-network tags, and its LoRA tags.
    ValueError with the reason for a tag this server cannot honour. The tags are
    counted before any is parsed, so a prompt of hundreds costs one scan."""
    matches = _extra_networks(prompt)
    if len(matches) > MAX_TAGS:
        raise ValueError(f"has {len(matches)} LoRA tags; the limit is {MAX_TAGS}")
    tags: list[LoraTag] = []
    for match in matches:
        kind, args = match.group(1), match.group(2)
        if kind.lower() not in LORA_KINDS:
            raise ValueError(f"{match.group(0)!r}: only <lora:name:weight> extra networks are supported here")
        tags.append(_parse_tag(match.group(0), args))
    names = [t.name for t in tags]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"the LoRA {name!r} is named twice; give it once with the weight you want")
    kept, last = [], 0
    for match in matches:
        kept.append(prompt[last:match.start()])
        last = match.end()
    return "".join(kept) + prompt[last:], tags


def _parse_tag(text: str, args: str) -> LoraTag:
    positional, named = [], {}
    for item in args.split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip()] = value
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValueError(f"{text!r}: the LoRA has no name; write <lora:name> or <lora:name:weight>")
    unknown = set(named) - {"te", "unet"}
    if unknown or len(positional) > 3:
        what = f"{sorted(unknown)[0]}=" if unknown else "a fourth value (dyn)"
        raise ValueError(f"{text!r}: {what} is not supported; write <lora:name:weight> or <lora:name:te:unet>")

    def weight(raw: str, what: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{text!r}: the {what} {raw.strip()!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
            raise ValueError(f"{text!r}: the {what} must be between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}")
        return value

    te = weight(positional[1], "weight") if len(positional) > 1 else 1.0
    te = weight(named["te"], "te weight") if "te" in named else te
    unet = weight(positional[2], "unet weight") if len(positional) > 2 else te
    unet = weight(named["unet"], "unet weight") if "unet" in named else unet
    return LoraTag(name, te, unet)


def has_extra_networks(prompt: str) -> bool:
    return bool(_extra_networks(prompt))



def check(request: GenerationRequest, limits: Limits) -> None:
    """The prompt's tags, which the engine takes out before the prompt's syntax is checked; the
    negative prompt's are refused (A1111 reads them from the prompt only)."""
    try:
        split_lora_tags(request.prompt)
    except ValueError as exc:
        raise ValidationError("prompt", request.prompt, str(exc)) from None
    if has_extra_networks(request.negative_prompt):
        raise ValidationError("negative_prompt", request.negative_prompt,
                              "<lora:...> tags work only in the prompt; move them there")

"""What the program knows of a request field besides its type and default, written once beside its
declaration: ``GenerationRequest``'s ``field(default=..., metadata=about(...))`` (app/engine/types.py).

From these facts the rest is derived, so a new simple field is a declaration and its feature's code:
the infotext's entry and its reading back (app/engine/metadata.py), the ``generate`` command's flag
(app/cli/generate.py), A1111's API and ``override_settings`` names (app/web/sdapi.py,
app/web/a1111_fields.py), the bounds validation and the page's and widgets' inputs read
(``FIELD_RANGES``), the converters of "prompts from file" (app/engine/prompt_lines.py) and the X/Y/Z
plot's plain axes (app/engine/xyz.py).
Fields with real special handling (images, masks, ControlNet units, hires sizes, styles) keep their own
code and give only what applies to them here.
"""
from __future__ import annotations

from dataclasses import Field, dataclass
from typing import Any, Callable

# How the infotext entry of a field with a ``label`` is written:
CHANGED = "changed"  # `label: value` when the value differs from the field's default (A1111's usual rule)
ELSEWHERE = "elsewhere"  # by the feature's own code (its conditions and place); only read back generically
# or a function of the request giving the value to write, None for no entry.
Entry = Callable[[Any], object]


@dataclass(frozen=True)
class About:
    label: str = ""  # A1111's infotext key; read back by the type of the field's default (see parse_value)
    write: str | Entry = CHANGED
    read: Callable[[str], dict] | None = None  # the fields an entry gives, where one entry holds several
    range: tuple[float, float] | None = None  # fixed bounds: validation, the page's and the widgets' min/max
    cli: str = ""  # the ``generate`` command's flag ("--s-churn"), made from these facts; "": none, or its own
    help: str = ""  # the flag's help
    choices: tuple = ()  # the values a text field takes (the flag's choices)
    api: str | bool = False  # A1111's txt2img/img2img body key, passed through as is (True: the same name)
    option: str = ""  # A1111's option (``override_settings`` key) that sets it per job
    xyz: str = ""  # the X/Y/Z plot axis (A1111's label, app/engine/xyz.py) whose values set it as they are


def about(**facts: Any) -> dict:
    """A dataclass field's ``metadata`` holding its facts."""
    return {"about": About(**facts)}


def facts(f: Field) -> About:
    return f.metadata.get("about") or About()


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def kind(f: Field) -> type:
    """The field's plain type (int, float, bool or str): its default's, or its annotation's first type where
    the default is None (``seed: int | None``)."""
    if f.default is not None:
        return type(f.default)
    return _KINDS.get(str(f.type).split("|")[0].strip(), type(None))


def parse_value(kind_: type, text: str) -> Any:
    """An infotext value read as a field of ``kind_``; None when it is not one (left out, as A1111 does)."""
    text = text.strip()
    if kind_ is bool:
        return {"true": True, "false": False}.get(text.lower())
    if kind_ is str:
        return text
    try:
        value = float(text)
    except ValueError:
        return None
    if kind_ is int:
        return int(value) if value.is_integer() else None
    return value


def entry_text(value: Any) -> object:
    """A value as the infotext writes it: floats as %g, True as "True"."""
    return f"{value:g}" if isinstance(value, float) else (str(value) if isinstance(value, bool) else value)


def size_pair(text: str | None) -> tuple[int | None, int | None]:
    """"512x768" -> (512, 768); anything else (None, None)."""
    parts = str(text or "").split("x")
    if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
        return int(parts[0]), int(parts[1])
    return None, None

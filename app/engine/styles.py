"""Prompt styles: named prompt and negative prompt presets in AUTOMATIC1111's
``styles.csv`` (columns ``name,prompt,negative_prompt``), applied as A1111
applies them: a style text holding ``{prompt}`` has it replaced by the
prompt; otherwise the style text is appended after ``", "``. Several styles
apply in order, each to the result of the one before.

``save_style`` and ``delete_style`` edit the file as A1111 would read it:
every other row and column kept, the whole file written to a temporary
file beside it and renamed over it, so a reader never sees half a file.
``check_style`` bounds what an editor (maybe a stranger on a public link)
can put there.

Spreadsheet formulas (OWASP's CSV injection): a cell beginning with
``= + - @``, a tab or a carriage return is a formula to Excel and LibreOffice,
so the file is written with a ``'`` before it (``-blurry`` is stored as
``'-blurry``), which a spreadsheet shows as text. On reading, a ``'`` is
removed only where it stands before one of those characters, after any
further quotes: a cell that is quotes then a formula character gets one
quote more on writing and one less on reading, so whatever was written reads
back exactly (``'=x`` is stored as ``''=x``). A1111 reads the file without
removing them: a style of ours beginning with those characters shows the
``'`` there; a hand-written ``'-x`` reads here as ``-x``."""
from __future__ import annotations

import csv
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app.engine.types import DEFAULT_LIMITS, Limits, ValidationError, check_text

PROMPT_PLACEHOLDER = "{prompt}"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list: what makes a spreadsheet cell a formula
COLUMNS = ("name", "prompt", "negative_prompt")  # A1111's header
MAX_STYLES = 500  # styles in the file (an edit that would add one more is refused)
# Styles one request may name. A1111's picker offers each style once and people pick a few;
# the bound keeps a hostile list short (each name is one pass over a prompt of up to the limit).
MAX_REQUEST_STYLES = 20
MAX_NAME_CHARS = 64
# Letters, digits and plain punctuation: a name is a URL path segment (/api/styles/<name>), a CSV cell
# and an <option>; no slashes, quotes, angle brackets or control characters, no space at either end.
_NAME = re.compile(r"[\w()\[\]&+!#:;@.,'-](?:[\w ()\[\]&+!#:;@.,'-]*[\w()\[\]&+!#:;@.,'-])?")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


class UnknownStyle(KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(name)

    def __str__(self) -> str:
        listed = ", ".join(self.known) if self.known else "none are defined"
        return f"unknown style {self.name!r} (styles: {listed})"


def load_styles(path: str | os.PathLike | None) -> dict[str, Style]:
    """The styles of a CSV file by name, in file order; {} when there is no file.
    A1111's header is ``name,prompt,negative_prompt``; a missing column is empty."""
    if path is None or not Path(path).is_file():
        return {}
    styles: dict[str, Style] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:  # A1111 writes a BOM-less UTF-8 file; Excel adds one
        for row in csv.DictReader(fh, skipinitialspace=True):
            row = unescape_row(row)
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def escape_cell(text: str) -> str:
    """The cell as written: a ``'`` before text that is quotes then a formula character."""
    return "'" + text if text.lstrip("'")[:1] in FORMULA_START else text


def unescape_cell(text: str) -> str:
    """The cell as read: escape_cell undone (the one ``'`` it adds is there only before such text)."""
    return text[1:] if text.startswith("'") and escape_cell(text) != text else text


def unescape_row(row: dict) -> dict:
    return {k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()}


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style applied to a prompt (A1111's ``merge_prompts``)."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def styled_length(style_text: str, prompt: str) -> int:
    """The length ``merge_prompt(style_text, prompt)`` would have, without building it."""
    count = style_text.count(PROMPT_PLACEHOLDER)
    if count:
        return len(style_text) + count * (len(prompt) - len(PROMPT_PLACEHOLDER))
    head, tail = prompt.strip(), style_text.strip()
    return len(head) + len(tail) + (2 if head and tail else 0)


def check_style_names(names: list[str]) -> None:
    """At most MAX_REQUEST_STYLES names, none twice (A1111 would apply a repeat again:
    with ``{prompt}`` in it that multiplies the prompt, never what anyone meant)."""
    if len(names) > MAX_REQUEST_STYLES:
        raise ValidationError("styles", names, f"{len(names)} names; the limit is {MAX_REQUEST_STYLES}")
    seen = set()
    for name in names:
        if name in seen:
            raise ValidationError("styles", name, f"{name!r} is named twice; each style applies once")
        seen.add(name)


def apply_styles(prompt: str, negative_prompt: str, names: list[str],
                 styles: dict[str, Style], max_chars: int | None = None) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles applied; UnknownStyle for a name not in ``styles``.
    With ``max_chars``, ValidationError naming the prompt whose styled length would pass it, raised
    before that prompt is built: a style holding ``{prompt}`` n times multiplies the prompt by n, so
    a few of them made strings of gigabytes before the length check after them could run."""
    check_style_names(names)
    texts = {"prompt": prompt, "negative_prompt": negative_prompt}
    for name in names:
        style = styles.get(name)
        if style is None:
            raise UnknownStyle(name, list(styles))
        for field, style_text in (("prompt", style.prompt), ("negative_prompt", style.negative_prompt)):
            size = styled_length(style_text, texts[field])
            if max_chars is not None and size > max_chars:
                raise ValidationError(field, names, f"would be {size} characters with the styles applied "
                                                    f"(at {name!r}); the limit is {max_chars}")
            texts[field] = merge_prompt(style_text, texts[field])
    return texts["prompt"], texts["negative_prompt"]


def check_style(style: Style, limits: Limits = DEFAULT_LIMITS) -> Style:
    """The style, or ValidationError naming the bad field: a name of at most
    MAX_NAME_CHARS letters, digits, spaces and plain punctuation; texts as a
    prompt's (check_text: length, control characters)."""
    name = style.name
    if not isinstance(name, str) or not name:
        raise ValidationError("name", name, "must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError("name", name, f"is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    if not _NAME.fullmatch(name):
        raise ValidationError("name", name, "may hold letters, digits, spaces (not at either end) and "
                                            "( ) [ ] & + ! # : ; @ . , ' - only")
    check_text("prompt", style.prompt, limits)
    check_text("negative_prompt", style.negative_prompt, limits)
    return style


class TooManyStyles(ValueError):
    pass


_lock = threading.Lock()  # one read-modify-write of the file at a time (the web app's threads)


def save_style(path: str | os.PathLike, style: Style) -> bool:
    """Add the style to the file, or replace the prompt and negative prompt of
    the one with its name (its other columns kept). True if it is new;
    TooManyStyles when the file already holds MAX_STYLES."""
    with _lock:
        header, rows = _read_rows(path)
        found = [row for row in rows if _row_name(row) == style.name]
        if not found and sum(1 for row in rows if _row_name(row)) >= MAX_STYLES:
            raise TooManyStyles(f"there are already {MAX_STYLES} styles; delete one first")
        if found:
            found[0].update(prompt=style.prompt, negative_prompt=style.negative_prompt)
            rows = [row for row in rows if row is found[0] or _row_name(row) != style.name]  # duplicates go
        else:
            rows.append({**dict.fromkeys(header, ""), **style.to_dict()})
        _write_rows(path, header, rows)
        return not found


def delete_style(path: str | os.PathLike, name: str) -> bool:
    """Remove the named style's rows; False if there was none."""
    with _lock:
        header, rows = _read_rows(path)
        kept = [row for row in rows if _row_name(row) != name]
        if len(kept) == len(rows):
            return False
        _write_rows(path, header, kept)
        return True


def _row_name(row: dict) -> str:
    return (row.get("name") or "").strip()


def _read_rows(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """The header (A1111's columns first if missing) and every row as read, blank-named ones included."""
    if not Path(path).is_file():
        return list(COLUMNS), []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        rows = [unescape_row({k: v for k, v in row.items() if k is not None}) for row in reader]  # cells past the header: dropped
        header = [name for name in (reader.fieldnames or []) if name]
    return [*header, *(c for c in COLUMNS if c not in header)], rows


def _write_rows(path: str | os.PathLike, header: list[str], rows: list[dict]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".styles-", suffix=".csv", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: escape_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

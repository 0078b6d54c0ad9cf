"""Prompt styles: named prompt and negative prompt presets in AUTOMATIC1111's
``styles.csv`` (columns ``name,prompt,negative_prompt``), applied as A1111
applies them: a style text holding ``{prompt}`` has it replaced by the
prompt; otherwise the style text is appended after ``", "``. Several styles
apply in order, each to the result of the one before."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

PROMPT_PLACEHOLDER = "{prompt}"


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
            name = (row.get("name") or "").strip()
            if name:
                styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style applied to a prompt (A1111's ``merge_prompts``)."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, names: list[str],
                 styles: dict[str, Style]) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles applied; UnknownStyle for a name not in ``styles``."""
    for name in names:
        style = styles.get(name)
        if style is None:
            raise UnknownStyle(name, list(styles))
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt

"""Dynamic prompts: the sd-dynamic-prompts extension's template syntax (its random mode), resolved
per image from the image's seed, before A1111's prompt parsing sees the text.

- ``{a|b|c}``: one option; ``{2$$a|b|c}``: two different options joined by ``", "``;
  ``{1-3$$a|b|c}``: one to three (``{-2$$...}`` up to two, ``{2-$$...}`` two or more);
  ``{2$$ and $$a|b|c}``: joined by `` and ``; ``{0.5::a|2::b}``: weighted (default 1).
  A count above the number of options takes them all.
- ``__name__``: one line of ``name.txt`` in the wildcard folder (``__folder/name__`` in a
  subfolder); blank lines and lines starting with ``#`` are skipped; a line may itself be a
  template. ``{2$$__name__}`` takes two different lines of the file, as the extension does.
- Options and lines nest; ``\\{`` ``\\}`` ``\\|`` are literal. A ``|`` inside ``[...]`` is A1111's
  alternation and does not split an option, so weights, ``<lora:...>`` tags, prompt editing and
  alternation keep working in what an option holds.

Each image of a batch draws with ``random.Random(its seed)`` (the extension's default: the
prompt follows the seed), so the same seed gives the same prompt. The extension leaves an unknown
wildcard in the text; here it is the request's error, naming the files there are (a typo would
otherwise reach the model as the words ``__nmae__``).

Bounded (each a ValidationError naming the field): nesting depth, options per variant, the
resolved text's length (the request's prompt limit), wildcard files read and their size; a
wildcard name that leaves the folder (``..``, an absolute path, a link out of it) is refused.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.engine.base import Limits, ValidationError
from app.engine.metadata import NEGATIVE_TEMPLATE_LABEL, TEMPLATE_LABEL

if TYPE_CHECKING:  # types.py's validation calls this module
    from app.engine.types import GenerationRequest

MAX_TEMPLATE_DEPTH = 8  # variants and wildcards inside one another
MAX_VARIANT_OPTIONS = 1000  # options of one {...}
MAX_TEMPLATE_STEPS = 20000  # options, wildcards and texts visited resolving one prompt
MAX_WILDCARD_FILES = 64  # distinct wildcard files one prompt may read
MAX_WILDCARD_BYTES = 1_000_000  # one wildcard file's size
WILDCARD_SUFFIX = ".txt"

_WILDCARD = re.compile(r"__([\w\-./]+?)__")
_QUANTITY = re.compile(r"\s*(\d*)\s*(?:(-)\s*(\d*))?\s*$")
_WEIGHT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*::")


def has_template(text: str) -> bool:
    """Whether ``text`` holds template syntax (a ``{`` or a ``__name__``): plain prompts pass untouched."""
    return "{" in text or "}" in text or _WILDCARD.search(text) is not None


# --- the parsed template: text, wildcards and variants ---
@dataclass
class Text:
    text: str


@dataclass
class Wildcard:
    name: str


@dataclass
class Variant:
    options: list[list]  # each option a sequence of nodes
    weights: list[float]
    low: int = 1
    high: int = 1
    separator: str = ", "


@dataclass
class _Parser:
    name: str  # the request field, for errors
    source: str
    pos: int = 0

    def fail(self, why: str) -> ValidationError:
        return ValidationError(self.name, self.source, why)

    def sequence(self, depth: int, in_variant: bool) -> list:
        """Nodes up to the end, or (in a variant) up to its next ``|`` or closing ``}``."""
        if depth > MAX_TEMPLATE_DEPTH:
            raise self.fail(f"has variants nested more than {MAX_TEMPLATE_DEPTH} deep")
        nodes: list = []
        text: list[str] = []
        square = 0  # A1111's [a|b] inside an option: its | is not the option's end
        src = self.source
        while self.pos < len(src):
            ch = src[self.pos]
            if ch == "\\" and self.pos + 1 < len(src) and src[self.pos + 1] in "{}|":
                text.append(src[self.pos + 1])
                self.pos += 2
                continue
            if ch == "{":
                self.pos += 1
                _flush(nodes, text)
                nodes.append(self.variant(depth + 1))
                continue
            if ch == "}":
                if in_variant:
                    break
                raise self.fail(f"has a '}}' at position {self.pos} that closes no '{{' (write \\}} for the character)")
            if in_variant and ch == "|" and square == 0:
                break
            if ch == "[":
                square += 1
            elif ch == "]" and square:
                square -= 1
            text.append(ch)
            self.pos += 1
        _flush(nodes, text)
        return nodes

    def variant(self, depth: int) -> Variant:
        start = self.pos - 1
        low = high = 1
        separator = ", "
        src = self.source
        head = src.find("$$", self.pos)
        stop = min((i for i in (src.find(c, self.pos) for c in "{}|") if i != -1), default=len(src))
        if head != -1 and head < stop:  # {n$$...}, {n-m$$...}, {n$$sep$$...}
            quantity = _QUANTITY.match(src, self.pos, head)
            if quantity is None:
                raise self.fail(f"has {src[self.pos:head + 2]!r} at position {self.pos}: a count before $$ is "
                                "a number or a range such as 1-3")
            lo, dash, hi = quantity.groups()
            low = int(lo) if lo else (1 if dash else 1)
            high = (int(hi) if hi else MAX_VARIANT_OPTIONS) if dash else low
            self.pos = head + 2
            second = src.find("$$", self.pos)
            if second != -1 and second < min((i for i in (src.find(c, self.pos) for c in "{}|") if i != -1),
                                              default=len(src)):
                separator = src[self.pos:second]
                self.pos = second + 2
        options: list[list] = []
        weights: list[float] = []
        while True:
            weight = _WEIGHT.match(src, self.pos)
            if weight:
                weights.append(float(weight.group(1)))
                self.pos = weight.end()
            else:
                weights.append(1.0)
            options.append(self.sequence(depth, in_variant=True))
            if len(options) > MAX_VARIANT_OPTIONS:
                raise self.fail(f"has a variant at position {start} with more than {MAX_VARIANT_OPTIONS} options")
            if self.pos >= len(src):
                raise self.fail(f"has a '{{' at position {start} that is never closed (write \\{{ for the character)")
            if src[self.pos] == "}":
                self.pos += 1
                break
            self.pos += 1  # the |
        if low > high:
            raise self.fail(f"has a variant at position {start} whose count range {low}-{high} is empty")
        return Variant(options, weights, low, high, separator)


def _flush(nodes: list, text: list[str]) -> None:
    """The gathered characters as text and wildcard nodes."""
    if not text:
        return
    joined = "".join(text)
    text.clear()
    at = 0
    for match in _WILDCARD.finditer(joined):
        if match.start() > at:
            nodes.append(Text(joined[at:match.start()]))
        nodes.append(Wildcard(match.group(1)))
        at = match.end()
    if at < len(joined):
        nodes.append(Text(joined[at:]))


def parse_template(name: str, text: str) -> list:
    """The template's nodes; ValidationError naming ``name`` for a syntax error or a bound passed."""
    parser = _Parser(name, text)
    return parser.sequence(0, in_variant=False)


def template_problem(name: str, text: str) -> None:
    """ValidationError if ``text`` is not a template this module can resolve (files aside)."""
    if has_template(text):
        parse_template(name, text)


# --- wildcard files ---
class WildcardFiles:
    """The wildcard folder: each file's usable lines, read once per resolving (files may change between
    jobs; a file is small). Names are checked to stay inside the folder."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder else None
        self._lines: dict[str, list[str]] = {}

    def names(self) -> list[str]:
        """Every wildcard's name (``folder/name`` for a subfolder's file), sorted."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p.relative_to(self.folder).with_suffix("").as_posix()
                      for p in self.folder.rglob("*" + WILDCARD_SUFFIX) if p.is_file())

    def lines(self, field_name: str, template: str, name: str) -> list[str]:
        if name in self._lines:
            return self._lines[name]
        if len(self._lines) >= MAX_WILDCARD_FILES:
            raise ValidationError(field_name, template, f"reads more than {MAX_WILDCARD_FILES} wildcard files")
        path = self._path(field_name, template, name)
        size = path.stat().st_size
        if size > MAX_WILDCARD_BYTES:
            raise ValidationError(field_name, template, f"wildcard __{name}__: its file is {size} bytes; "
                                                        f"the limit is {MAX_WILDCARD_BYTES}")
        raw = path.read_text(encoding="utf-8-sig", errors="replace")
        lines = [ln.strip() for ln in raw.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        self._lines[name] = lines
        return lines

    def _path(self, field_name: str, template: str, name: str) -> Path:
        def refuse(why: str) -> ValidationError:
            return ValidationError(field_name, template, f"wildcard __{name}__: {why}")

        parts = name.split("/")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise refuse("a name is a file name or folder/name inside the wildcard folder, without '..'")
        if self.folder is None:
            raise refuse("there is no wildcard folder (WILDCARD_DIR)")
        root = os.path.realpath(self.folder)
        path = Path(os.path.realpath(self.folder.joinpath(*parts[:-1], parts[-1] + WILDCARD_SUFFIX)))
        if os.path.commonpath([root, str(path)]) != root:
            raise refuse("its file is outside the wildcard folder")
        if not path.is_file():
            known = self.names()
            listed = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "") if known else "there are none"
            raise refuse(f"there is no {name}{WILDCARD_SUFFIX} in the wildcard folder (wildcards: {listed})")
        return path


# --- resolving ---
@dataclass
class _Resolver:
    name: str
    template: str
    files: WildcardFiles
    rng: random.Random
    max_chars: int
    steps: int = 0
    out: list[str] = field(default_factory=list)
    size: int = 0

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.max_chars:
            raise ValidationError(self.name, self.template, f"resolves to more than {self.max_chars} characters; "
                                                            f"the limit is {self.max_chars}")
        self.out.append(text)

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_TEMPLATE_STEPS:
            raise ValidationError(self.name, self.template, f"takes more than {MAX_TEMPLATE_STEPS} steps to resolve "
                                                            "(wildcards that include one another?)")

    def sequence(self, nodes: list, depth: int) -> None:
        if depth > MAX_TEMPLATE_DEPTH:
            raise ValidationError(self.name, self.template, f"has variants and wildcards nested more than "
                                                            f"{MAX_TEMPLATE_DEPTH} deep")
        for node in nodes:
            self.tick()
            if isinstance(node, Text):
                self.emit(node.text)
            elif isinstance(node, Wildcard):
                lines = self.files.lines(self.name, self.template, node.name)
                if lines:
                    self.line(node.name, self.rng.choice(lines), depth)
            else:
                self.variant(node, depth)

    def line(self, name: str, line: str, depth: int) -> None:
        """A wildcard file's line: itself a template."""
        if has_template(line):
            self.sequence(parse_template(f"{self.name} (wildcard __{name}__)", line), depth + 1)
        else:
            self.emit(line)

    def variant(self, node: Variant, depth: int) -> None:
        options: list = list(zip(node.options, node.weights))
        # {2$$__name__}: a variant of one wildcard picks among the file's lines
        if len(options) == 1 and len(options[0][0]) == 1 and isinstance(options[0][0][0], Wildcard):
            wildcard = options[0][0][0].name
            lines = self.files.lines(self.name, self.template, wildcard)
            options = [(("line", wildcard, ln), 1.0) for ln in lines]
        options = [(o, w) for o, w in options if w > 0]
        high = min(node.high, len(options))
        low = min(node.low, high)
        count = self.rng.randint(low, high) if high > low else low
        chosen = []
        for _ in range(count):  # weighted, without replacement
            pick = self.rng.choices(range(len(options)), weights=[w for _, w in options])[0]
            chosen.append(options.pop(pick)[0])
        for i, option in enumerate(chosen):
            if i:
                self.emit(node.separator)
            if isinstance(option, tuple):
                self.line(option[1], option[2], depth)
            else:
                self.sequence(option, depth + 1)


def resolve(name: str, template: str, seed: int, files: WildcardFiles, max_chars: int) -> str:
    """The template resolved with ``seed``'s draws; the text itself when it holds no template syntax."""
    if not has_template(template):
        return template
    resolver = _Resolver(name, template, files, random.Random(seed), max_chars)
    resolver.sequence(parse_template(name, template), 0)
    return "".join(resolver.out)


def check_wildcards(name: str, text: str, folder: str | os.PathLike | None) -> None:
    """ValidationError naming ``name`` for a wildcard the template names (in any option) whose file is not
    in the folder, is outside it or is too large: what a request can be refused for before it is queued
    (what the files' own lines name is found when the prompt is drawn)."""
    if not has_template(text):
        return
    files = WildcardFiles(folder)
    pending = list(parse_template(name, text))
    while pending:
        node = pending.pop()
        if isinstance(node, Wildcard):
            files.lines(name, text, node.name)
        elif isinstance(node, Variant):
            pending.extend(n for option in node.options for n in option)


def resolve_prompts(request: GenerationRequest, seeds: list[int], folder: str | os.PathLike | None,
                    limits: Limits) -> list[tuple[str, str]] | None:
    """Each image's (prompt, negative prompt), resolved from its seed; None when neither is a template.
    The one place templates are resolved (the engine calls it, so every way in gets it)."""
    if not (has_template(request.prompt) or has_template(request.negative_prompt)):
        return None
    files = WildcardFiles(folder)  # shared by the images: each file read once
    return [(resolve("prompt", request.prompt, seed, files, limits.max_prompt_chars),
             resolve("negative_prompt", request.negative_prompt, seed, files, limits.max_prompt_chars))
            for seed in seeds]


def template_entries(prompt: str, negative_prompt: str) -> dict[str, str]:
    """The extension's infotext lines for the templates that are templates (the resolved
    prompts are the infotext's prompt and negative prompt)."""
    entries = {}
    if has_template(prompt):
        entries[TEMPLATE_LABEL] = prompt
    if has_template(negative_prompt):
        entries[NEGATIVE_TEMPLATE_LABEL] = negative_prompt
    return entries

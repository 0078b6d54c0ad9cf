"""A1111 1.10's prompt editing and alternation, for one prompt.

Reproduces ``get_learned_conditioning_prompt_schedules`` of A1111's
``modules/prompt_parser.py`` (its lark grammar, parsed here by hand) with
``use_old_scheduling`` off:

- ``[from:to:when]`` is ``from`` up to step ``when`` and ``to`` after it;
  ``[to:when]`` adds ``to`` after ``when``; ``[from::when]`` drops ``from``.
- ``[a|b|c]`` picks ``a`` at step 1, ``b`` at step 2, ... (empty choices allowed).
- ``when`` written with a ``.`` is a fraction of the steps (``0.25``), else a
  step number. For the hires pass (``hires_steps`` given) the numbers count on
  from the first pass: a step ``n`` means ``n - steps`` and a fraction ``f``
  means ``(f - 1) * hires_steps``.
- Edits nest, at most ``MAX_PROMPT_NESTING`` brackets deep (deeper, the prompt
  is used as written; validation refuses it, ``bracket_depth``); emphasis ``(a:1.2)``, ``[a]`` and escapes stay as written, to be
  weighted later (``app.engine.prompts``).
- Outside any bracket, stray ``[ ] ( ) :`` are plain text. A prompt the grammar
  cannot read (a ``|`` outside an alternation, a lone ``\\`` at the end, an
  unclosed edit inside parentheses...) is used as written for every step.
- Where A1111's parser is ambiguous (stray brackets at the top level next to
  an edit, as in ``x [a:b:2]]``) its pick changes with Python's per-process
  string hashing (lark's Earley forest); here the edit always wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# lark's SIGNED_NUMBER between the last ":" and the closing "]", with the optional spaces around it.
# Written so that a digit belongs to one part only: "[0-9]+\.?[0-9]*" split a long run of digits
# every possible way before failing (20,000 digits with no "]": 14 s).
_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*]")
_PLAIN = re.compile(r"[^\\\[\]():|]+")
_SPECIAL = "[]():|"
_BRACKET = re.compile(r"\\.|[\[\]()]", re.S)  # an escaped character, or a bracket

# Bounds on the work one prompt makes (issue #22). Real prompts nest a few brackets
# deep and make a few distinct prompts; each bracket level costs a pass over the
# text inside it (here and in A1111's emphasis parser), each distinct prompt an encoding.
MAX_PROMPT_NESTING = 32
MAX_SCHEDULE_CHUNKS = 256  # distinct prompts one prompt's editing and alternation make over the steps


def bracket_depth(text: str) -> int:
    """How deep ``( )`` and ``[ ]`` nest, escapes left out; an unclosed bracket
    counts until the end (it closes there), a stray closer counts nothing."""
    depth = deepest = 0
    for match in _BRACKET.finditer(text):
        token = match.group()
        if token in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif token in ")]":
            depth = max(0, depth - 1)
    return deepest


@dataclass
class Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: list | None
    after: list
    when: str  # the number as written: a "." makes it a fraction


@dataclass
class Alternation:
    options: list[list]


class _Unreadable(Exception):
    """The text at this position does not fit the grammar."""


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.memo: dict[int, tuple[list, int] | None] = {}  # bracket position -> (nodes, end) or unreadable

    def top(self) -> list | None:
        """The whole text, or None when it is unreadable. Brackets that do not
        form a construct are literal text here (and only here)."""
        nodes: list = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in "([":
                try:
                    nodes.extend(self.bracket())
                    continue
                except _Unreadable:
                    nodes.append(ch)
                    self.pos += 1
            elif ch in "]):":
                nodes.append(ch)
                self.pos += 1
            elif ch == "|":
                return None
            else:
                try:
                    nodes.append(self.plain())
                except _Unreadable:
                    return None
        return nodes

    def prompt(self) -> list:
        """A run of text and balanced constructs, up to one of ``] ) : |`` or the end."""
        nodes: list = []
        while self.pos < len(self.text) and self.text[self.pos] not in "]):|":
            nodes.extend(self.bracket() if self.text[self.pos] in "([" else [self.plain()])
        return nodes

    def plain(self) -> str:
        """Text up to the next special character; a backslash keeps the character after it (not a newline)."""
        text, start = self.text, self.pos
        while self.pos < len(text) and text[self.pos] not in _SPECIAL:
            if text[self.pos] == "\\":
                if self.pos + 1 >= len(text) or text[self.pos + 1] == "\n":
                    raise _Unreadable
                self.pos += 2
            else:
                match = _PLAIN.match(text, self.pos)
                self.pos = match.end() if match else self.pos + 1
        return text[start:self.pos]

    def bracket(self) -> list:
        start = self.pos
        if start not in self.memo:
            try:
                nodes = self.round() if self.text[start] == "(" else self.square()
                self.memo[start] = (nodes, self.pos)
            except _Unreadable:
                self.memo[start] = None
        found = self.memo[start]
        if found is None:
            self.pos = start
            raise _Unreadable
        nodes, self.pos = found
        return nodes

    def expect(self, ch: str) -> None:
        if not self.text.startswith(ch, self.pos):
            raise _Unreadable
        self.pos += 1

    def round(self) -> list:
        """``(a)`` or ``(a:b)``, kept as written."""
        self.expect("(")
        nodes = ["(", *self.prompt()]
        if self.text.startswith(":", self.pos):
            self.pos += 1
            nodes += [":", *self.prompt()]
        self.expect(")")
        return [*nodes, ")"]

    def square(self) -> list:
        """``[a]`` (kept as written), an edit or an alternation."""
        self.expect("[")
        first = self.prompt()
        if self.text.startswith("]", self.pos):
            self.pos += 1
            return ["[", *first, "]"]
        if self.text.startswith("|", self.pos):
            options = [first]
            while self.text.startswith("|", self.pos):
                self.pos += 1
                options.append(self.prompt())
            self.expect("]")
            return [Alternation(options)]
        self.expect(":")
        when = self.when()
        if when is not None:
            return [Edit(None, first, when)]
        second = self.prompt()
        self.expect(":")
        when = self.when()
        if when is None:
            raise _Unreadable
        return [Edit(first, second, when)]

    def when(self) -> str | None:
        match = _WHEN.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group(1)


def _walk(nodes: list):
    for node in nodes:
        yield node
        if isinstance(node, Edit):
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, Alternation):
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list, step: int, when_step, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Edit):
            _render(node.before or [] if step <= when_step(node.when) else node.after, step, when_step, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, when_step, out)


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """``(end_at_step, prompt)`` pairs: the prompt to use up to and including
    each step, ending with the last step (``hires_steps`` on the hires pass).
    ValueError for a ``when`` too large to be a step (A1111 fails there too), or
    for more than MAX_SCHEDULE_CHUNKS distinct prompts."""
    if hires_steps is None:
        int_offset, fraction_offset, total = 0, 0.0, steps
    else:
        int_offset, fraction_offset, total = steps, 1.0, hires_steps
    # Deeper than the bound the parser (recursive) is not run: the text is used as written.
    nodes = _Parser(text).top() if bracket_depth(text) <= MAX_PROMPT_NESTING else None
    if nodes is None:
        return [(total, text)]

    def when_step(number: str) -> int:
        value = float(number)
        value = (value - fraction_offset) * total if "." in number else value - int_offset
        try:
            return min(total, int(value))
        except OverflowError:
            raise ValueError(f"the step {number!r} of a prompt edit is not a finite number") from None

    ends = {total}
    for node in _walk(nodes):
        if isinstance(node, Edit) and when_step(node.when) >= 1:
            ends.add(when_step(node.when))
        elif isinstance(node, Alternation):
            ends.update(range(1, total + 1))
    schedule = []
    distinct: set[str] = set()
    for end in sorted(ends):  # at most the steps: MAX_STEPS bounds the rendering
        out: list[str] = []
        _render(nodes, end, when_step, out)
        schedule.append((end, "".join(out)))
        distinct.add(schedule[-1][1])
        if len(distinct) > MAX_SCHEDULE_CHUNKS:
            raise ValueError(f"its prompt editing and alternation make more than {MAX_SCHEDULE_CHUNKS} different "
                             f"prompts over the {total} steps; the limit is {MAX_SCHEDULE_CHUNKS}")
    return schedule

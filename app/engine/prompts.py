"""AUTOMATIC1111's prompt syntax, with A1111's meaning, for SD 2.x.

- ``(a)`` weighs ``a`` by 1.1, ``[a]`` by 1/1.1, ``(a:1.5)`` by 1.5; nesting
  multiplies; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal; unbalanced
  brackets close at the end (A1111's ``parse_prompt_attention``).
- The word ``BREAK`` ends the current 75-token chunk.
- Prompts longer than 75 tokens are not cut: the tokens fill chunks of 75,
  each becomes BOS + 75 + EOS (then SD 2's pad id after the first EOS) = 77,
  is encoded on its own, and the chunks are concatenated along the sequence
  axis. A full chunk with a comma in its last 20 tokens moves the text after
  that comma to the next chunk (A1111's ``comma_padding_backtrack``).
- Weights are applied A1111's way ("Original" emphasis): each chunk's hidden
  states are multiplied by their tokens' weights, then rescaled so the chunk's
  mean is what it was before.
- Prompt editing ``[from:to:when]`` and alternation ``[a|b]`` give one
  prompt per stretch of steps (``app.engine.prompt_schedule``);
  ``encode_schedule`` encodes them as A1111's ``get_learned_conditioning``
  does: all of a prompt's scheduled texts form one batch, padded to the same
  number of chunks with empty chunks, and the emphasis mean is the batch's.
  The CFG denoiser picks the entry for each model call
  (``app.engine.sampling.cfg.cond_at``, A1111's ``reconstruct_cond_batch``).

Every prompt goes through this encoding (the engine runs no diffusers
pipeline); one with no weight, no BREAK and at most 75 tokens encodes to
exactly what diffusers' ``encode_prompt`` gives.

Why our own code and not a library: ``compel`` has its own syntax (``a++``,
``(a)1.2``) and its own weighting (down-weighting blends towards the empty
prompt, no mean restoring), so A1111 prompts give other images. ``sd_embed``
is not published on PyPI (git installs only) and its SD 1.5 helper does not
restore the mean either. diffusers' ``lpw_stable_diffusion`` community
pipeline has A1111's semantics but is fetched from the Hub at run time and
replaces the pipeline. The whole of A1111's behaviour is about 150 lines here.

The SD 2.1 text encoder in diffusers has 23 layers (OpenCLIP's penultimate
layer baked in) and applies the final layer norm, which is what A1111's
``FrozenOpenCLIPEmbedder(layer="penultimate")`` computes, so
``text_encoder(ids)[0]`` is the right hidden state for each chunk.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine.prompt_schedule import MAX_PROMPT_NESTING, bracket_depth, prompt_schedule

if TYPE_CHECKING:
    from torch import Tensor

CHUNK_LENGTH = 75  # tokens per chunk, without BOS and EOS
COMMA_PADDING_BACKTRACK = 20  # A1111's default
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MEAN_EPSILON = 1e-4  # relative size below which a mean is not restored (see _emphasize)

# The tokens of A1111's emphasis parser (modules/prompt_parser.py, re_attention).
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
# The whitespace around a BREAK is stripped apart: "\s*\bBREAK\b\s*" tried every start in a
# run of spaces and scanned the rest of it (quadratic: 20,000 spaces took 8 s).
_BREAK = re.compile(r"\bBREAK\b")


@dataclass
class Fragment:
    """A run of prompt text with one weight; ``is_break`` marks a BREAK."""

    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_prompt_attention(text: str) -> list[Fragment]:
    """Split a prompt into weighted fragments, as A1111 does. Adjacent
    fragments of equal weight are merged. ValueError for a weight that is
    not a number, such as ``(a:1.2.3)``.

    One difference from A1111: a BREAK inside brackets still breaks (A1111
    multiplies its marker weight and then treats it as the text "BREAK")."""
    res: list[Fragment] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for frag in res[start:]:
            if not frag.is_break:
                frag.weight *= multiplier

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append(Fragment(token[1:]))
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"{match.group(0).strip()!r} at position {match.start()}: the weight "
                                 f"{weight!r} is not a number") from None
            multiply_from(round_open.pop(), value)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            parts = _BREAK.split(token)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(Fragment("BREAK", is_break=True))
                    part = part.lstrip()
                res.append(Fragment(part.rstrip() if i < len(parts) - 1 else part))
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    if not res:
        res = [Fragment("")]
    merged = [res[0]]
    for frag in res[1:]:
        last = merged[-1]
        if not frag.is_break and not last.is_break and frag.weight == last.weight:
            last.text += frag.text
        else:
            merged.append(frag)
    return merged


def prompt_syntax_problem(text: str, steps: int | None = None, hires_steps: int | None = None) -> str | None:
    """Why ``text`` cannot be used, or None: what A1111 fails on, a weight
    that is not a number (``(a:1.2.3)``) or an edit step too large to be one.
    With ``steps`` the weights of every scheduled prompt are checked, else
    those of the text as written. Brackets nested deeper than MAX_PROMPT_NESTING
    are refused: each level costs a pass over the text inside it."""
    depth = bracket_depth(text)
    if depth > MAX_PROMPT_NESTING:
        return f"has brackets nested {depth} deep; the limit is {MAX_PROMPT_NESTING}"
    try:
        schedule = prompt_schedule(text, steps or 1, hires_steps)
        for prompt in {p for _, p in schedule} if steps else {text}:
            parse_prompt_attention(prompt)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class Chunk:
    """77 token ids (BOS, 75, EOS) and each token's weight."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def _special_ids(tokenizer) -> tuple[int, int, int]:
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return start, end, pad


_COMMA_IDS: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()


def _comma_id(tokenizer) -> int | None:
    """The id of ",</w>", looked up once per tokenizer: ``get_vocab()`` builds a dict of its
    49,408 tokens, 0.1-0.15 s of CPU a call, and an image tokenized four prompts (0.6 s an image
    on this machine's CPU, paid beside a GPU too). Added embedding tokens never change it."""
    try:
        if tokenizer not in _COMMA_IDS:
            _COMMA_IDS[tokenizer] = tokenizer.get_vocab().get(",</w>")
        return _COMMA_IDS[tokenizer]
    except TypeError:  # not weakly referenceable (a stand-in): look it up each time
        return tokenizer.get_vocab().get(",</w>")


def tokenize_chunks(tokenizer, fragments: list[Fragment],
                    comma_backtrack: int = COMMA_PADDING_BACKTRACK) -> list[Chunk]:
    """The fragments as 77-token chunks (A1111's ``tokenize_line``)."""
    start, end, _ = _special_ids(tokenizer)
    comma = _comma_id(tokenizer)
    texts = [f.text for f in fragments]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        fill = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [start] + chunk.tokens + [end] * fill + [end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * fill + [1.0]
        chunks.append(chunk)
        chunk = Chunk()
        last_comma = -1

    for tokens, frag in zip(tokenized, fragments):
        if frag.is_break:
            next_chunk()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (comma_backtrack and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved, moved_weights = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved, moved_weights
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(frag.weight)
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def _hidden_states(pipe, chunk: Chunk, clip_skip: int = 1) -> Tensor:
    """The text encoder's output (1, 77, dim) for a chunk, before weighting. ``clip_skip`` > 1 takes an
    earlier layer through the final layer norm, as A1111 does for SD 1.x's CLIP; SD 2.x's OpenCLIP
    (the tokenizer pads with "!", not EOS) has its layer fixed and A1111 ignores clip skip there."""
    import torch

    _, end, pad = _special_ids(pipe.tokenizer)
    ids = torch.tensor([list(chunk.tokens)], device=pipe._execution_device)
    if end != pad:  # SD 2: everything after the first EOS is the pad token, as the tokenizer pads
        first = chunk.tokens.index(end)
        ids[0, first + 1:] = pad
        return pipe.text_encoder(ids)[0]
    if clip_skip <= 1:
        return pipe.text_encoder(ids)[0]
    states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return pipe.text_encoder.text_model.final_layer_norm(states)


def _emphasize(zs: list[Tensor], chunks: list[Chunk], counts: list[int]) -> list[Tensor]:
    """A1111's "Original" emphasis on a batch of chunk encodings where ``zs[i]`` stands for ``counts[i]``
    identical rows: each row is multiplied by its tokens' weights, then all are rescaled so that the
    batch's mean is what it was."""
    import torch

    share = [n / sum(counts) for n in counts]

    def batch_mean(tensors: list[Tensor]) -> Tensor:
        return sum(s * t.mean() for s, t in zip(share, tensors))

    original_mean = batch_mean(zs)
    zs = [z * torch.tensor(c.multipliers, device=z.device, dtype=z.dtype).reshape(1, -1, 1)
          for z, c in zip(zs, chunks)]
    new_mean, scale = batch_mean(zs), batch_mean([z.abs() for z in zs])
    # A1111 rescales unconditionally. A mean near zero next to the values' size (an untrained final layer
    # norm, as in the demo model; not SD 2.1, whose layer norm bias gives a clear mean) makes the ratio
    # explode into inf/NaN images, so such a batch keeps its weighted values unscaled.
    if min(abs(float(original_mean)), abs(float(new_mean))) <= MEAN_EPSILON * float(scale):
        return zs
    return [z * (original_mean / new_mean) for z in zs]


def _empty_chunk(tokenizer) -> Chunk:
    return tokenize_chunks(tokenizer, [Fragment("")])[0]


def encode_weighted(pipe, fragments: list[Fragment], min_chunks: int = 1):
    """Hidden states (1, 77 * chunks, dim) of a parsed prompt, at least ``min_chunks`` chunks long."""
    import torch

    chunks = tokenize_chunks(pipe.tokenizer, fragments)
    chunks += [_empty_chunk(pipe.tokenizer)] * (min_chunks - len(chunks))
    with torch.no_grad():
        z = torch.cat([_emphasize([_hidden_states(pipe, c)], [c], [1])[0] for c in chunks], dim=1)
    return z.to(dtype=pipe.text_encoder.dtype, device=pipe._execution_device)


@dataclass
class ScheduledCond:
    """The conditioning (1, 77 * chunks, dim) to use up to and including step ``end_at_step``."""

    end_at_step: int
    cond: Tensor


def encode_schedule(pipe, text: str, steps: int, hires_steps: int | None = None,
                    min_chunks: int = 1, clip_skip: int = 1) -> list[ScheduledCond]:
    """A prompt's schedule (``prompt_schedule``) with each entry encoded as A1111's
    ``get_learned_conditioning`` encodes it: the entries are one batch, so all have as many chunks as the
    longest (filled with empty chunks) and share the emphasis rescaling. Each distinct text is encoded
    once. Beyond that, ``min_chunks`` pads with the empty prompt's encoding, as A1111's
    ``pad_cond_uncond`` option does. ValueError for a weight that is not a number."""
    import torch

    schedule = prompt_schedule(text, steps, hires_steps)
    texts = [prompt for _, prompt in schedule]
    distinct = list(dict.fromkeys(texts))
    counts = [texts.count(t) for t in distinct]
    tokenizer = pipe.tokenizer
    per_text = [tokenize_chunks(tokenizer, _with_embeddings(pipe, parse_prompt_attention(t))) for t in distinct]
    count = max(len(chunks) for chunks in per_text)
    empty = _empty_chunk(tokenizer)
    hidden: dict[tuple[int, ...], Tensor] = {}
    columns = []
    with torch.no_grad():
        for i in range(count):
            batch = [chunks[i] if i < len(chunks) else empty for chunks in per_text]
            for chunk in batch:
                if tuple(chunk.tokens) not in hidden:
                    hidden[tuple(chunk.tokens)] = _hidden_states(pipe, chunk, clip_skip)
            columns.append(_emphasize([hidden[tuple(c.tokens)] for c in batch], batch, counts))
        padding = [encode_weighted(pipe, [Fragment("")])] * (min_chunks - count) if min_chunks > count else []
    conds = {t: torch.cat([column[j] for column in columns], dim=1).to(dtype=pipe.text_encoder.dtype)
             for j, t in enumerate(distinct)}
    conds = {t: torch.cat([z, *padding], dim=1) for t, z in conds.items()}
    return [ScheduledCond(end, conds[prompt]) for end, prompt in schedule]


def _with_embeddings(pipe, fragments: list[Fragment]) -> list[Fragment]:
    """Multi-vector textual-inversion names written out as their tokens (``name name_1 ...``), as diffusers
    does. Once only: converting twice would turn ``name_1`` into ``name name_1_1``."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is None:
        return fragments
    return [f if f.is_break else Fragment(convert(f.text, pipe.tokenizer), f.weight) for f in fragments]

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
- The prompt and the negative prompt are padded to the same number of chunks
  with the empty prompt's encoding (A1111's ``pad_cond_uncond``), because the
  diffusers pipelines take one shape for both.

A prompt that needs none of this (no weight other than 1, no BREAK, at most
75 tokens) goes to diffusers as plain text, so it gives exactly the image it
gave before (``plain_text``).

Not supported, refused at validation with a message naming the field (see
``prompt_syntax_problem``): prompt editing ``[from:to:when]`` and alternation
``[a|b]``, which change the conditioning during sampling.

Why our own code and not a library: ``compel`` has its own syntax (``a++``,
``(a)1.2``) and its own weighting (down-weighting blends towards the empty
prompt, no mean restoring), so A1111 prompts give other images. ``sd_embed``
is not published on PyPI (git installs only) and its SD 1.5 helper does not
restore the mean either. diffusers' ``lpw_stable_diffusion`` community
pipeline has A1111's semantics but is fetched from the Hub at run time and
replaces the pipeline; we need embeddings for the pipelines we already use
(txt2img and img2img share weights via ``from_pipe``). The whole of A1111's
behaviour is about 150 lines here.

The SD 2.1 text encoder in diffusers has 23 layers (OpenCLIP's penultimate
layer baked in) and applies the final layer norm, which is what A1111's
``FrozenOpenCLIPEmbedder(layer="penultimate")`` computes, so
``text_encoder(ids)[0]`` is the right hidden state for each chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CHUNK_LENGTH = 75  # tokens per chunk, without BOS and EOS
COMMA_PADDING_BACKTRACK = 20  # A1111's default
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MEAN_EPSILON = 1e-4  # relative size below which a chunk's mean is not restored (see _encode_chunk)

# The tokens of A1111's emphasis parser (modules/prompt_parser.py, re_attention).
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_NUMBER = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")


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
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(Fragment("BREAK", is_break=True))
                res.append(Fragment(part))
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


def prompt_syntax_problem(text: str) -> str | None:
    """Why ``text`` cannot be used, or None. Refused: A1111's prompt editing
    (``[from:to:when]``, ``[to:when]``, ``[from::when]``) and alternation
    (``[a|b]``), which this server does not run; and unreadable weights."""
    stack: list[tuple[str, int, list[str]]] = []  # (bracket, position, top-level characters seen inside)
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "([":
            stack.append((ch, i, []))
        elif ch == "]" and stack and stack[-1][0] == "[":
            _, start, inner = stack.pop()
            content = "".join(inner)
            if "|" in content:
                return (f"alternation {text[start:i + 1]!r} at position {start} is not supported "
                        "(write one of the alternatives)")
            if ":" in content and _NUMBER.match(content.rsplit(":", 1)[1]):
                return (f"prompt editing {text[start:i + 1]!r} at position {start} is not supported "
                        "(write the prompt you want for the whole run)")
        elif ch == ")" and stack and stack[-1][0] == "(":
            stack.pop()
        elif stack:
            stack[-1][2].append(ch)
        i += 1
    try:
        parse_prompt_attention(text)
    except ValueError as exc:
        return str(exc)
    return None


def plain_text(fragments: list[Fragment]) -> str | None:
    """The prompt as plain text when it has no weights and no BREAK, else None."""
    if len(fragments) == 1 and not fragments[0].is_break and fragments[0].weight == 1.0:
        return fragments[0].text
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


def tokenize_chunks(tokenizer, fragments: list[Fragment],
                    comma_backtrack: int = COMMA_PADDING_BACKTRACK) -> list[Chunk]:
    """The fragments as 77-token chunks (A1111's ``tokenize_line``)."""
    start, end, _ = _special_ids(tokenizer)
    comma = tokenizer.get_vocab().get(",</w>")
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


def _encode_chunk(text_encoder, tokenizer, chunk: Chunk, device: Any):
    import torch

    _, end, pad = _special_ids(tokenizer)
    ids = list(chunk.tokens)
    if end != pad:  # SD 2: everything after the first EOS is the pad token, as the tokenizer pads
        first = ids.index(end)
        ids[first + 1:] = [pad] * (len(ids) - first - 1)
    z = text_encoder(torch.tensor([ids], device=device))[0]
    weights = torch.tensor(chunk.multipliers, device=device, dtype=z.dtype).reshape(1, -1, 1)
    original_mean = z.mean()
    z = z * weights
    new_mean, scale = z.mean(), z.abs().mean()
    # A1111 rescales unconditionally. A mean near zero next to the values' size (an untrained final layer
    # norm, as in the demo model; not SD 2.1, whose layer norm bias gives a clear mean) makes the ratio
    # explode into inf/NaN images, so such a chunk keeps its weighted values unscaled.
    if min(abs(float(original_mean)), abs(float(new_mean))) <= MEAN_EPSILON * float(scale):
        return z
    return z * (original_mean / new_mean)


def encode_weighted(pipe, fragments: list[Fragment], min_chunks: int = 1):
    """Hidden states (1, 77 * chunks, dim) of a parsed prompt, at least ``min_chunks`` chunks long."""
    import torch

    device = pipe._execution_device
    chunks = tokenize_chunks(pipe.tokenizer, fragments)
    chunks += [tokenize_chunks(pipe.tokenizer, [Fragment("")])[0]] * (min_chunks - len(chunks))
    with torch.no_grad():
        z = torch.cat([_encode_chunk(pipe.text_encoder, pipe.tokenizer, c, device) for c in chunks], dim=1)
    return z.to(dtype=pipe.text_encoder.dtype, device=device)


def chunk_count(tokenizer, fragments: list[Fragment]) -> int:
    return len(tokenize_chunks(tokenizer, fragments))


def _with_embeddings(pipe, fragments: list[Fragment]) -> list[Fragment]:
    """Multi-vector textual-inversion names written out as their tokens (``name name_1 ...``), as diffusers
    does. Once only: converting twice would turn ``name_1`` into ``name name_1_1``."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is None:
        return fragments
    return [f if f.is_break else Fragment(convert(f.text, pipe.tokenizer), f.weight) for f in fragments]


def _token_count(pipe, text: str) -> int:
    convert = getattr(pipe, "maybe_convert_prompt", None)
    text = convert(text, pipe.tokenizer) if convert is not None else text
    return len(pipe.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def prompt_inputs(pipe, prompt: str, negative_prompt: str) -> dict:
    """The pipeline's prompt arguments: ``prompt``/``negative_prompt`` text
    when neither needs A1111's encoding (the images are then exactly
    diffusers' own), else ``prompt_embeds``/``negative_prompt_embeds`` of the
    same length."""
    positive, negative = parse_prompt_attention(prompt), parse_prompt_attention(negative_prompt)
    texts = [plain_text(positive), plain_text(negative)]
    if all(t is not None and _token_count(pipe, t) <= CHUNK_LENGTH for t in texts):
        # diffusers writes out multi-vector embedding names itself: give it the text unconverted.
        return {"prompt": texts[0], "negative_prompt": texts[1] or None}
    positive, negative = _with_embeddings(pipe, positive), _with_embeddings(pipe, negative)
    count = max(chunk_count(pipe.tokenizer, positive), chunk_count(pipe.tokenizer, negative))
    return {"prompt_embeds": encode_weighted(pipe, positive, count),
            "negative_prompt_embeds": encode_weighted(pipe, negative, count)}

"""Token merging for Stable Diffusion (Bolya and Hoffman, 2023: "Token Merging for Fast Stable Diffusion";
the tomesd package), our own implementation of its published algorithm with tomesd's defaults:

- only the transformer blocks at the latent's full resolution (tomesd's ``max_downsample=1``: 9216
  tokens at 768, where self-attention costs the most) and only their self-attention (``merge_attn``;
  cross-attention and the MLP are left whole);
- per block call, bipartite soft matching with a random 2d stride: the tokens are cut into 2x2 cells,
  one token of each cell (drawn at random) is a destination, the rest are sources; each source is
  matched to its most similar destination (cosine similarity of the block's input), and the
  ``int(tokens * ratio)`` best-matched sources are averaged into their destinations;
- the merged tokens go through self-attention, and its output is copied back to every token merged.

The draws come from a CPU generator seeded from the job's first seed, so a job gives the same image on
any device and twice in a row. Nothing stays on the UNet: the hooks are removed when the job ends.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

RATIO_RANGE = (0.0, 0.75)  # tomesd's docs: above 0.75 the image falls apart
CELL = 2  # tomesd's sx = sy = 2


Merge = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _split_indices(h: int, w: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices (destinations, sources) of an h x w grid: one random destination per full 2x2 cell
    (no generator: the top-left one, tomesd's ``use_rand=False``); the rows and columns left over by an
    odd size are sources."""
    ch, cw = h // CELL, w // CELL
    pick = torch.zeros((ch, cw), dtype=torch.long) if generator is None \
        else torch.randint(CELL * CELL, (ch, cw), generator=generator)
    rows = torch.arange(ch)[:, None] * CELL + pick // CELL
    cols = torch.arange(cw)[None, :] * CELL + pick % CELL
    dst = (rows * w + cols).flatten()
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    is_dst[dst] = True
    return dst.sort().values, torch.arange(h * w)[~is_dst]


def bipartite_merge(metric: torch.Tensor, h: int, w: int, ratio: float,
                    generator: torch.Generator | None) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens ``metric`` (batch, h*w, channels), ToMe's random-2d bipartite matching.
    One partition for the whole batch, as tomesd."""
    batch, tokens, _ = metric.shape
    dst_idx, src_idx = (i.to(metric.device) for i in _split_indices(h, w, generator))
    r = min(int(tokens * ratio), src_idx.numel())
    if r <= 0:
        return _identity, _identity
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, src_idx] @ unit[:, dst_idx].transpose(-1, -2)  # (batch, sources, destinations)
        best, match = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        merged, kept = order[:, :r], order[:, r:]  # source positions (in src_idx) merged away / left alone
        target = match.gather(1, merged)  # the destination (position in dst_idx) each merged source joins

    def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, src_idx], x[:, dst_idx]
        dst = dst.scatter_reduce(1, target[..., None].expand(-1, -1, x.shape[-1]), take(src, merged),
                                 reduce="mean", include_self=True)
        return torch.cat([take(src, kept), dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept = kept.shape[1]
        unm, dst = x[:, :n_kept], x[:, n_kept:]
        out = x.new_empty(batch, tokens, x.shape[-1])
        out[:, dst_idx] = dst
        channels = x.shape[-1]
        src_pos = src_idx.expand(batch, -1)
        out.scatter_(1, src_pos.gather(1, kept)[..., None].expand(-1, -1, channels), unm)
        out.scatter_(1, src_pos.gather(1, merged)[..., None].expand(-1, -1, channels), take(dst, target))
        return out

    return merge, unmerge


class _State:
    def __init__(self, ratio: float, seed: int):
        self.ratio = ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.size = (0, 0)  # the latent's (h, w), from the UNet's conv_in
        self.pending: tuple[Merge, Merge] | None = None
        self.merged_calls = 0  # self-attention calls that ran on merged tokens (tests)


def _transformer_blocks(unet: Any) -> list[Any]:
    from diffusers.models.attention import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock) and not m.only_cross_attention]


@contextmanager
def token_merging(unet: Any, ratio: float, seed: int) -> Iterator[_State | None]:
    """The UNet with ToMe at ``ratio`` (0: as it is) for the length of the block."""
    if not ratio:
        yield None
        return
    state = _State(ratio, seed)

    def on_conv_in(_module: Any, args: tuple) -> None:
        state.size = tuple(args[0].shape[-2:])

    def on_block(_module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        h, w = state.size
        if x.ndim != 3 or x.shape[1] != h * w:  # only the full-resolution blocks (max_downsample 1)
            state.pending = None
            return
        state.pending = bipartite_merge(x, h, w, state.ratio, state.generator)

    def before_attn(_module: Any, args: tuple, kwargs: dict) -> Any:
        if state.pending is None:
            return None
        return (state.pending[0](args[0]),) + tuple(args[1:]), kwargs

    def after_attn(_module: Any, _args: Any, output: torch.Tensor) -> Any:
        if state.pending is None:
            return None
        unmerge = state.pending[1]
        state.pending = None
        state.merged_calls += 1
        return unmerge(output)

    handles = [unet.conv_in.register_forward_pre_hook(on_conv_in)]
    for block in _transformer_blocks(unet):
        handles.append(block.register_forward_pre_hook(on_block, with_kwargs=True))
        handles.append(block.attn1.register_forward_pre_hook(before_attn, with_kwargs=True))
        handles.append(block.attn1.register_forward_hook(after_attn))
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


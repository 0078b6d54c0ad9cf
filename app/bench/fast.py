"""The fast modes (issue #26; docs/speed.md) against the full run: the same request on one engine, each
mode's images interleaved with the full run's round by round, so drift hits all alike.

A mode is request fields joined by ``+``: ``deepcache=3``, ``tome=0.5``, ``steps=15``, ``sampler=UniPC``
(a scheduler name as the API takes it), e.g. ``deepcache=3+tome=0.5``; ``full`` is the request as it is
(always measured, first). Per mode: seconds per image (median), the median of the paired ratios to the
full run, this process's CPU seconds per image (steadier than the wall time on a shared CPU), the
largest and the mean difference of one channel of one pixel from the full run's image, and how many
times an image ran the UNet's middle block (the deep calls)."""
from __future__ import annotations

import statistics
import time
from typing import Any

from app.bench.config import BENCH_NOISE, NEGATIVE, PROMPT, BenchConfig, ModelSource, log
from app.models.devices import Placement

FAST_FIELDS = {"deepcache": ("deepcache_interval", int), "tome": ("tome_ratio", float), "steps": ("steps", int),
               "sampler": ("scheduler", str)}
DEFAULT_FAST_MODES = ("deepcache=2", "deepcache=3", "deepcache=5", "tome=0.5", "deepcache=3+tome=0.5", "steps=15",
                      "sampler=UniPC+steps=10")


def parse_fast_mode(spec: str) -> dict:
    """``deepcache=3+tome=0.5`` -> the request fields it sets; ValueError naming what is wrong."""
    if spec == "full":
        return {}
    fields: dict = {}
    for part in spec.split("+"):
        key, _, value = part.partition("=")
        if key.strip() not in FAST_FIELDS or not value.strip():
            raise ValueError(f"fast-modes: {part!r} is not one of " + ", ".join(f"{k}=..." for k in FAST_FIELDS))
        name, kind = FAST_FIELDS[key.strip()]
        try:
            fields[name] = kind(value.strip())
        except ValueError:
            raise ValueError(f"fast-modes: {part!r}: {value!r} is not a {kind.__name__}") from None
    return fields


def measure_fast_modes(cfg: BenchConfig, source: ModelSource, placement: Placement) -> tuple[list[dict], int]:
    """Rows per mode (``full`` first) and the image side."""
    import numpy as np

    from app.bench.paths import load_engine
    from app.engine.types import GenerationRequest

    engine = load_engine(source, placement)
    size = cfg.size or engine.default_size[0]
    specs = ("full",) + tuple(s for s in cfg.fast_modes if s != "full")
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                guidance_scale=cfg.guidance_scale, seed=cfg.seed, randn_source=BENCH_NOISE)
    requests = {spec: GenerationRequest(**{**base, **parse_fast_mode(spec)}).validate(engine.limits) for spec in specs}
    deep_calls = [0]
    handle = engine.pipe.unet.mid_block.register_forward_hook(lambda *_: deep_calls.__setitem__(0, deep_calls[0] + 1))
    seconds: dict[str, list[float]] = {spec: [] for spec in specs}
    cpu: dict[str, list[float]] = {spec: [] for spec in specs}  # this process's CPU time: steadier on a shared CPU
    images: dict[str, Any] = {}
    calls: dict[str, int] = {}
    try:
        for round_no in range(cfg.warmup + cfg.runs):
            shift = round_no % len(specs)
            for spec in specs[shift:] + specs[:shift]:
                deep_calls[0] = 0
                started, cpu_started = time.perf_counter(), time.process_time()
                image = engine.generate(requests[spec]).images[0]
                took, cpu_took = time.perf_counter() - started, time.process_time() - cpu_started
                images.setdefault(spec, image)
                calls[spec] = deep_calls[0]
                if round_no >= cfg.warmup:
                    seconds[spec].append(took)
                    cpu[spec].append(cpu_took)
            if round_no >= cfg.warmup:
                log(f"fast modes round {round_no + 1 - cfg.warmup}/{cfg.runs}: "
                    + ", ".join(f"{s} {seconds[s][-1]:.2f}s" for s in specs))
    finally:
        handle.remove()
    full = np.asarray(images["full"], dtype=np.int16)
    rows = []
    for spec in specs:
        diff = np.abs(np.asarray(images[spec], dtype=np.int16) - full)
        ratios = [a / b for a, b in zip(seconds[spec], seconds["full"])]
        rows.append({"mode": spec, "fields": parse_fast_mode(spec), "median_s": statistics.median(seconds[spec]),
                     "ratio": statistics.median(ratios), "cpu_s": statistics.median(cpu[spec]),
                     "max_pixel_diff": int(diff.max()),
                     "mean_pixel_diff": float(diff.mean()), "deep_calls": calls[spec],
                     "steps": requests[spec].steps})
    return rows, size


def fast_modes_markdown(rows: list[dict]) -> list[str]:
    lines = ["Fast modes (engine path, interleaved with the full run; pixel differences against the full run's "
             "image of the same seed, 0-255 per channel; deep calls: the UNet's middle block per image):", "",
             "| mode | steps | s/image median | time vs full (median of paired ratios) | CPU s/image median | "
             "max pixel diff | mean pixel diff | deep calls |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['steps']} | {row['median_s']:.3f} | {row['ratio']:.3f} "
                     f"| {row.get('cpu_s', float('nan')):.3f} | {row['max_pixel_diff']} "
                     f"| {row['mean_pixel_diff']:.2f} | {row['deep_calls']} |")
    lines.append("")
    return lines

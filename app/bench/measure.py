"""The measurements: every path timed in one process, interleaved; load time,
first image and peak memory per path, and the speedup options, each in a
fresh process (``app.bench.child``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.bench.child import run_child
from app.bench.config import BenchConfig, ModelSource, PathResult, log
from app.bench.http import HttpStack, http_unavailable_reason
from app.bench.paths import Runner, engine_runner, load_engine, plain_runner
from app.models.devices import Placement
from app.models.speedups import SPEEDUPS, parse_option


def measure_speed(cfg: BenchConfig, source: ModelSource, placement: Placement,
                  workdir: Path) -> tuple[dict[str, PathResult], int]:
    """Every path on one pipeline, interleaved; the order rotates each round.
    Returns the results and the image side used."""
    engine = load_engine(source, placement)
    size = cfg.size or engine.default_size[0]
    results = {name: PathResult(name) for name in cfg.paths}
    runners: dict[str, Runner] = {}
    http = None
    for name in cfg.paths:
        if name == "plain":
            runners[name] = plain_runner(engine.pipe, cfg, size)
        elif name == "engine":
            runners[name] = engine_runner(engine, cfg, size)
        else:  # http, sdapi: one server for both
            reason = http_unavailable_reason()
            if reason:
                results[name].skipped = reason
                continue
            http = http or HttpStack(engine, workdir, cfg.poll, cfg.slow_poll, cfg.preview_every, cfg.long_poll)
            runners[name] = http.runner(cfg, size, name)
    images: dict[str, Any] = {}
    order = [name for name in cfg.paths if name in runners]
    clock = ModelClock(engine.pipe)
    try:
        for round_no in range(cfg.warmup + cfg.runs):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                clock.take()
                sample, image = runners[name]()
                sample.model_seconds = clock.take()
                images.setdefault(name, image)
                if round_no >= cfg.warmup:
                    results[name].samples.append(sample)
            done = round_no + 1 - cfg.warmup
            if done > 0:
                log(f"round {done}/{cfg.runs}: " + ", ".join(
                    f"{n} {results[n].samples[-1].seconds:.3f}s" for n in order))
    finally:
        if http is not None:
            http.close()
    if "plain" in images:
        for name, image in images.items():
            results[name].max_pixel_diff = max_diff(images["plain"], image)
    return results, size


class ModelClock:
    """Adds up the time spent inside the model's own calls (text encoder, UNet, VAE decode), whichever
    path (and thread) makes them, so what a path does around the model is measured on its own: small,
    and far less noisy than the whole image. The plain path's minimal loop and the engine make the
    same calls. On CUDA the decode waits for the GPU (its result is read right after), so the
    asynchronous UNet work is counted inside too."""

    def __init__(self, pipe: Any):
        self.seconds = 0.0
        for module in (pipe.text_encoder, pipe.unet):
            module.register_forward_pre_hook(lambda *_: self._start())
            module.register_forward_hook(lambda *_: self._stop())
        decode = pipe.vae.decode

        def timed_decode(*args, **kwargs):
            self._start()
            try:
                out = decode(*args, **kwargs)
                if str(pipe._execution_device).startswith("cuda"):
                    import torch

                    torch.cuda.synchronize()
                return out
            finally:
                self._stop()

        pipe.vae.decode = timed_decode
        self._started: float | None = None

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _stop(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def max_diff(a: Any, b: Any) -> int:
    """The largest difference of one channel of one pixel between two PIL images (255 if sizes differ)."""
    import numpy as np

    if a.size != b.size:
        return 255
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.convert(a.mode), dtype=np.int16)).max())


def measure_memory(cfg: BenchConfig, source: ModelSource, workdir: Path, results: dict[str, PathResult]) -> None:
    """Load time, first-image time and peak memory of each path, each in a fresh process."""
    for name, result in results.items():
        if result.skipped:
            continue
        child = run_child(cfg, source, workdir, {"path": name})
        for key in ("import_s", "load_s", "first_image_s", "rss_before_load_mb", "rss_after_load_mb", "peak_rss_mb",
                    "peak_vram_mb"):
            setattr(result, key, child.get(key))


def measure_options(cfg: BenchConfig, source: ModelSource, workdir: Path, options: tuple[str, ...]) -> list[dict]:
    """Each option set in a fresh process on the plain path; 'sdpa' is the baseline."""
    rows: list[dict] = []
    for option in options:
        names = parse_option(option)
        if any(SPEEDUPS[n].cuda_only for n in names) and not cfg.device.startswith("cuda"):
            rows.append({"option": option, "skipped": "needs a CUDA GPU"})
            continue
        try:
            rows.append({"option": option, **run_child(cfg, source, workdir, {"option": option})})
        except RuntimeError as exc:
            rows.append({"option": option, "skipped": str(exc).splitlines()[-1][:300]})
    base = next((r for r in rows if r["option"] == "sdpa" and "median_s" in r), None)
    for row in rows:
        if base is not None and "median_s" in row:
            row["ratio"] = row["median_s"] / base["median_s"]
            row["max_pixel_diff"] = _image_diff(base["image"], row["image"])
    return rows


def _image_diff(a: str, b: str) -> int:
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        return max_diff(ia.convert("RGB"), ib.convert("RGB"))


def measure_modes(cfg: BenchConfig, source: ModelSource, workdir: Path) -> list[dict]:
    """Each engine mode in a fresh process: time and peak VRAM, uncapped and under each VRAM cap.
    A cap is ``torch.cuda.set_per_process_memory_fraction``: the allocator refuses beyond it as a
    smaller card would (it says nothing of that card's speed)."""
    rows: list[dict] = []
    for limit in (None, *cfg.vram_limits_gb):
        for mode in cfg.modes:
            task = {"mode": mode, "vram_limit_gb": limit}
            try:
                rows.append({**task, **run_child(cfg, source, workdir, task)})
            except RuntimeError as exc:
                rows.append({**task, "failed": str(exc).splitlines()[-1][:300]})
    return rows

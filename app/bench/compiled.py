"""The compiled UNet on the engine's own loop (issue #26), one start per process
(its command: ``python -m app.cli.bench_compiled --model sd21 --device cuda
--size 768 --steps 25 --cache-dir DIR``, which prints it as JSON): the first
image's seconds (eager, while the UNet compiles in the background) and the compile status then, the compile's
seconds and how long after the start it was ready, seconds per image eager
and compiled (interleaved runs, same seed), their max pixel difference, and
whether the timed runs compiled anything or fell back to eager. Run twice
with one DIR and fresh Inductor/Triton cache folders for a cold start and a
start from the compile cache (app/bench/gpu_check.sh, part ``compile``).
"""
from __future__ import annotations

import time
from typing import Any


def load(model: str, device: str, dtype: str) -> Any:
    from app.engine.engine import Engine, EngineOptions
    from app.models.devices import choose_placement

    if model == "sd21":  # the full architecture, random weights (app/models/sd21.py)
        from app.models.sd21 import build_sd21_pipeline

        placement = choose_placement(device, dtype)
        return Engine(build_sd21_pipeline(placement.device, placement.torch_dtype), "sd21", placement)
    return Engine.load(EngineOptions(model=model, device=device, dtype=dtype, compile="off"))


def measure(cache_dir: str, model: str = "demo", device: str = "auto", dtype: str = "auto", size: int = 768,
            steps: int = 25, runs: int = 3) -> dict:
    """One start: the first image while compiling, the compile, then ``runs`` interleaved pairs."""
    import numpy as np
    import torch._dynamo.utils

    from app.engine.types import GenerationRequest

    engine = load(model, device, dtype)
    request = GenerationRequest(prompt="a photograph of an astronaut riding a horse on the moon", width=size,
                                height=size, steps=steps, seed=1)
    started = time.perf_counter()
    engine.start_compile(cache_dir, ((size, size),))
    status_first = engine.compile_status
    first = engine.generate(request)
    first_seconds = time.perf_counter() - started
    engine.compiled.wait()
    ready_after = time.perf_counter() - started
    compiled_unet = engine.compiled
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager_calls = compiled_unet.calls["eager"]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    images: dict[str, Any] = {}
    for _ in range(runs):
        for kind in ("compiled", "eager"):
            engine.sampling.compiled = compiled_unet if kind == "compiled" else None
            run_started = time.perf_counter()
            images[kind] = engine.generate(request).images[0]
            times[kind].append(time.perf_counter() - run_started)
    engine.sampling.compiled = compiled_unet
    diff = np.abs(np.asarray(images["compiled"], dtype=np.int16) - np.asarray(images["eager"], dtype=np.int16))
    report = {
        "model": model, "device": engine.placement.device, "dtype": engine.placement.dtype, "size": size,
        "steps": steps, "status_at_start": status_first,
        "first_image_seconds": round(first_seconds, 3), "first_image_size": first.images[0].size,
        "compile_seconds": round(sum(compiled_unet.seconds.values()), 3), "ready_after_seconds": round(ready_after, 3),
        "compile_thread_cpu_seconds": round(sum(compiled_unet.cpu_seconds.values()), 3),
        "status": engine.compile_status, "errors": {s.name: e for s, e in compiled_unet.errors.items()},
        "eager_seconds": [round(t, 3) for t in times["eager"]],
        "compiled_seconds": [round(t, 3) for t in times["compiled"]],
        "speedup": round(min(times["eager"]) / min(times["compiled"]), 3) if runs else None,
        "max_pixel_difference": int(diff.max()) if runs else None,
        "new_graphs_in_runs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
        "eager_calls_in_runs": compiled_unet.calls["eager"] - eager_calls,
        "cache_files": [p.name for p in compiled_unet.cache.files()],
    }
    engine.close()
    return report


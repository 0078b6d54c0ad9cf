"""Speed and memory of our paths against plain diffusers, on the same weights.

    python -m app.bench                      # demo model, CPU or GPU, 25 steps
    python -m app.bench --short              # CI: tiny model, 64 px, 2 steps
    python -m app.bench --model sd21 --device cuda --size 768 --steps 25

Three paths run the same request on the same loaded pipeline:

* ``plain``:  the minimal loop of the engine's default algorithm (A1111's
  DPM++ 2M, Karras sigmas) on diffusers' components, nothing else of ours
  (``app.bench.paths.minimal_loop``); it makes the engine's pixels;
* ``engine``: ``app.engine.engine.Engine.generate`` on the same components;
* ``http``:   the web app (``create_app`` with that Engine injected) served on
  127.0.0.1; a client in its own process sends POST /api/jobs, then polls
  GET /api/jobs/<id> until done (see ``poll_interval``); the time is
  submit-to-done as that client sees it;
* ``sdapi``:  the same server's synchronous A1111 route, POST
  /sdapi/v1/txt2img, which answers when the image is done (no polling).

Timings come from one process with the paths interleaved run by run (the
order rotates each round), so drift and a neighbour's load hit every path
alike. Each overhead is the median of the per-round ratios path/plain.
Load time, first-image time and peak memory come from one fresh subprocess
per path (peak RSS: the process's ``VmHWM``; on CUDA also
``torch.cuda.max_memory_allocated``), so no path inherits another's memory.
On CUDA the speedup options of ``app.models.speedups`` are measured the same way,
each in its own subprocess on the plain path, against the ``sdpa`` default.
``--fast-modes`` times the fast modes (DeepCache, ToMe, fewer steps) against
the full run on the engine, with their pixel difference (``app.bench.fast``);
``--paths ''`` leaves the paths out.
"""
# The docstring above is the --help text. The package, by job:
#   config   settings, results, the model source every path loads
#   paths    loading, and one runner per path (plain, engine)
#   http     the web app served on 127.0.0.1 (http, sdapi) and its client process
#   measure  timings in one process, interleaved; child: one path or option in a fresh process
#   report   numbers from the samples, machine info, Markdown
# The command-line options live in app.cli.bench.
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from app.bench.child import child_main
from app.bench.config import GPU_OPTIONS, MODES, PATHS, BenchConfig, ModelSource, PathResult, Sample, log, prepare_model
from app.bench.fast import measure_fast_modes
from app.bench.http import HttpStack, client_main, http_unavailable_reason, poll_interval
from app.bench.measure import measure_memory, measure_modes, measure_options, measure_speed
from app.bench.paths import prepare_process
from app.bench.report import summarize, to_markdown, write_section

__all__ = ["GPU_OPTIONS", "MODES", "PATHS", "BenchConfig", "HttpStack", "ModelSource", "PathResult", "Sample", "child_main",
           "client_main", "http_unavailable_reason", "measure_memory", "measure_options", "measure_speed",
           "poll_interval", "run", "to_markdown", "write_section"]


def run(cfg: BenchConfig, workdir: Path | None = None) -> dict:
    """Run the benchmark and return the report (see ``to_markdown``)."""
    from app.models.devices import choose_placement

    if cfg.short:
        cfg = cfg.short_defaults
    prepare_process(cfg.threads)
    placement = choose_placement(cfg.device, cfg.dtype)
    cfg = replace(cfg, device=placement.device, dtype=placement.dtype)
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as tmp:
        workdir = Path(workdir or tmp)
        source = prepare_model(cfg.model, workdir)
        log(f"timing {', '.join(cfg.paths)} on {source.name} ({placement.device} {placement.dtype})")
        results: dict = {}
        size = cfg.size or 0
        if cfg.paths:
            results, size = measure_speed(cfg, source, placement, workdir)
        if cfg.memory and results:
            log("load time, first image and peak memory: one fresh process per path")
            measure_memory(cfg, source, workdir, results)
        fast_modes = None
        if cfg.fast_modes:
            log(f"fast modes against the full run: {', '.join(cfg.fast_modes)}")
            fast_modes, size = measure_fast_modes(cfg, source, placement)
        modes = None
        if cfg.modes:
            log(f"modes: {', '.join(cfg.modes)}" + (f"; also under VRAM caps {cfg.vram_limits_gb} GB" if cfg.vram_limits_gb else ""))
            modes = measure_modes(cfg, source, workdir)
        options, options_skipped = None, None
        wanted = cfg.options if cfg.options is not None else (GPU_OPTIONS if placement.device.startswith("cuda") else ())
        if wanted:
            log(f"speedup options: {', '.join(wanted)}")
            options = measure_options(cfg, source, workdir, tuple(wanted))
        elif cfg.options == ():
            options_skipped = "not requested (--options '')"
        else:
            options_skipped = ("skipped: no CUDA GPU here; run `python -m app.bench --model sd21 --device cuda "
                               "--size 768 --steps 25` on a GPU to measure them")
        report = summarize(cfg, source, placement, size, results, options, options_skipped)
        report["modes"] = modes
        report["fast_modes"] = fast_modes
        return report

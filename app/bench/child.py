"""Fresh-process measurements: load time, first image and peak memory of one
path or one speedup option, in ``python -m app.bench --child SPEC --child-out FILE``.

The parent sends the task as JSON on the command line; the child writes its
report as JSON to the file and exits without interpreter teardown.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from app.bench.config import PROJECT_ROOT, BenchConfig, ModelSource
from app.bench.http import HttpStack
from app.bench.paths import Runner, engine_runner, load_engine, load_plain, plain_runner, prepare_process
from app.models.speedups import apply_speedups, parse_option


def run_child(cfg: BenchConfig, source: ModelSource, workdir: Path, task: dict) -> dict:
    """Runs ``task`` (``{"path": name}``, ``{"option": option}`` or ``{"mode": mode, "vram_limit_gb": cap}``)
    in a fresh process; returns its report."""
    spec = {"cfg": asdict(cfg), "source": asdict(source), "task": task, "workdir": str(workdir)}
    out = workdir / f"child-{abs(hash(json.dumps(task, sort_keys=True)))}.json"
    cmd = [sys.executable, "-m", "app.bench", "--child", json.dumps(spec), "--child-out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(PROJECT_ROOT))
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"benchmark subprocess {task} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def child_main(spec: dict, out: str) -> None:
    """In a fresh process: load one path, time its first image, record peak memory."""
    cfg = BenchConfig(**{**spec["cfg"], **{k: tuple(spec["cfg"][k]) for k in ("paths", "modes", "vram_limits_gb")}})
    source = ModelSource(**spec["source"])
    workdir = Path(spec["workdir"])
    task = spec["task"]
    prepare_process(cfg.threads)
    import torch

    from app.models.devices import choose_placement

    placement = choose_placement(cfg.device, cfg.dtype)
    cuda = placement.device.startswith("cuda")
    # Imports are not model loading: take them (diffusers' lazy modules, Flask) off the clock.
    started = time.perf_counter()
    from diffusers import StableDiffusionPipeline  # noqa: F401

    import app.engine.engine as _engine  # noqa: F401

    if task.get("path") in ("http", "sdapi"):
        from app.web import create_app  # noqa: F401
    report: dict = {"import_s": time.perf_counter() - started, "rss_before_load_mb": rss_mb()}
    if cuda and task.get("vram_limit_gb"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, task["vram_limit_gb"] * 2**30 / total))
    started = time.perf_counter()
    run: Runner
    if "option" in task:
        names = parse_option(task["option"])
        pipe = load_plain(source, placement, on_cpu="cpu_offload" in names)
        pipe = apply_speedups(pipe, names, placement.device)
        size = cfg.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        run = plain_runner(pipe, cfg, size)
    elif "mode" in task:
        engine = load_engine(source, placement)
        run = engine_runner(engine, cfg, cfg.size or engine.default_size[0], task["mode"])
    elif task["path"] == "plain":
        pipe = load_plain(source, placement)
        run = plain_runner(pipe, cfg, cfg.size or pipe.unet.config.sample_size * pipe.vae_scale_factor)
    else:
        engine = load_engine(source, placement)
        size = cfg.size or engine.default_size[0]
        if task["path"] == "engine":
            run = engine_runner(engine, cfg, size)
        else:
            http = HttpStack(engine, workdir / "child-http", cfg.poll, cfg.slow_poll, cfg.preview_every,
                             cfg.long_poll)
            run = http.runner(cfg, size, task["path"])
    if cuda:
        torch.cuda.synchronize()
    report["load_s"] = time.perf_counter() - started
    report["rss_after_load_mb"] = rss_mb()
    if cuda:
        report["vram_after_load_mb"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    try:
        sample, image = run()
    except torch.OutOfMemoryError as exc:  # a mode under a VRAM cap: out of memory is the answer
        report.update(out_of_memory=str(exc).splitlines()[0][:200], peak_vram_mb=torch.cuda.max_memory_allocated() / 2**20)
        Path(out).write_text(json.dumps(report))
        os._exit(0)
    report["first_image_s"] = sample.seconds
    repeat = "option" in task or "mode" in task
    times = [run()[0].seconds for _ in range(max(1, cfg.option_runs) if repeat else 1)]
    if repeat:
        report["median_s"] = statistics.median(times)
        report["runs_s"] = times
        label = task["option"].replace("+", "_") if "option" in task else f"{task['mode']}-{task.get('vram_limit_gb')}"
        path = workdir / f"option-{label}.png"
        image.save(path)
        report["image"] = str(path)
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    report["peak_vram_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
    Path(out).write_text(json.dumps(report))
    os._exit(0)  # skip interpreter teardown (and the web app's worker thread)


def peak_rss_mb() -> float:
    """Peak RSS of this process. Linux keeps ``ru_maxrss`` across fork+exec,
    so a child would report its parent's peak; ``VmHWM`` belongs to the
    process's own memory map and starts afresh at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None

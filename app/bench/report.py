"""The report: numbers from the samples (``summarize``), the machine they
ran on, and the Markdown that ``--out FILE.md`` writes between its section markers."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path

from app.bench.config import BenchConfig, ModelSource, PathResult
from app.models.devices import Placement

SECTION_START = "<!-- bench:{name} -->"
SECTION_END = "<!-- /bench:{name} -->"


def summarize(cfg: BenchConfig, source: ModelSource, placement: Placement, size: int, results: dict[str, PathResult],
              options: list[dict] | None, options_skipped: str | None) -> dict:
    paths: dict[str, dict] = {}
    plain = results.get("plain")
    for name, r in results.items():
        entry = {k: v for k, v in asdict(r).items() if k not in ("samples", "name")}
        if r.samples:
            secs = [s.seconds for s in r.samples]
            entry["seconds"] = _stats(secs)
            entry["it_per_s"] = cfg.steps / statistics.median(secs)
            server = [s.server_seconds for s in r.samples if s.server_seconds is not None]
            if server:
                entry["server_seconds"] = _stats(server)
                entry["queue_seconds"] = _stats([s.queue_seconds for s in r.samples if s.queue_seconds is not None])
            outside = [s.seconds - s.model_seconds for s in r.samples if s.model_seconds is not None]
            if outside:
                entry["outside_model_seconds"] = _stats(outside)
            cpu = [s.cpu_seconds for s in r.samples if s.cpu_seconds is not None]
            if cpu:
                entry["cpu_seconds"] = _stats(cpu)
            if plain is not None and plain.samples:
                entry["ratio"] = _ratios([s.seconds for s in r.samples], [p.seconds for p in plain.samples])
                plain_cpu = [p.cpu_seconds for p in plain.samples if p.cpu_seconds is not None]
                if cpu and len(cpu) == len(plain_cpu):
                    entry["cpu_ratio"] = _ratios(cpu, plain_cpu)
        paths[name] = entry
    acceptance = {}
    for name, limit in (("engine", 1.02), ("http", 1.05), ("sdapi", 1.05)):
        ratio, cpu_ratio = paths.get(name, {}).get("ratio"), paths.get(name, {}).get("cpu_ratio")
        if ratio:
            acceptance[name] = {"overhead_pct": (ratio["paired_median"] - 1) * 100, "limit_pct": (limit - 1) * 100,
                                "ok": ratio["paired_median"] <= limit}
            path_outside = paths[name].get("outside_model_seconds")
            if path_outside and paths.get("plain", {}).get("seconds"):
                plain_outside = paths["plain"].get("outside_model_seconds", {}).get("median", 0.0)
                extra = path_outside["median"] - plain_outside
                acceptance[name].update(outside_pipeline_ms=extra * 1000,
                                        outside_pipeline_pct=extra / paths["plain"]["seconds"]["median"] * 100,
                                        outside_ok=extra / paths["plain"]["seconds"]["median"] <= limit - 1)
            if cpu_ratio:
                acceptance[name].update(cpu_overhead_pct=(cpu_ratio["paired_median"] - 1) * 100,
                                        cpu_ok=cpu_ratio["paired_median"] <= limit)
    return {"machine": machine_info(placement), "command": cfg.command, "config": asdict(cfg),
            "model": source.name, "device": placement.device, "dtype": placement.dtype, "size": size,
            "paths": paths, "acceptance": acceptance, "options": options, "options_skipped": options_skipped}


def _ratios(values: list[float], base: list[float]) -> dict:
    """Per-round ratios (neighbours in time, so drift cancels) and the ratio of medians."""
    pairs = [v / b for v, b in zip(values, base)]
    return {"paired_median": statistics.median(pairs), "min": min(pairs), "max": max(pairs),
            "of_medians": statistics.median(values) / statistics.median(base)}


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "q1": q[0], "q3": q[2], "min": ordered[0], "max": ordered[-1],
            "n": len(ordered), "runs": values}


def machine_info(placement: Placement) -> dict:
    import diffusers
    import torch
    import transformers

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if placement.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(placement.device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", {m.get('ram_gb')} GB RAM" if m.get("ram_gb") else "")
        + (f"; GPU {m['gpu']} ({m['gpu_memory_gb']} GB), CUDA {m['cuda']}" if m.get("gpu") else "; no GPU")
        + f". Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, transformers {m['transformers']}.",
        "",
        f"Model: {report['model']}, {report['device']} {report['dtype']}, {report['size']}x{report['size']}, "
        f"{cfg['steps']} steps, guidance {cfg['guidance_scale']}, DPM++ 2M, {cfg['runs']} timed runs per path "
        f"after {cfg['warmup']} warm-up round(s); "
        + ("the HTTP client long-polls (`GET /api/jobs/<id>?wait=60`, one request that answers when the job ends)"
           if cfg.get("long_poll") else
           f"the HTTP client polls every {cfg['poll'] * 1000:.0f} ms while "
           f"the job is queued, in its first step or past its last, and mid-run every half of the remaining "
           f"steps' expected time, at most {cfg['slow_poll'] * 1000:.0f} ms")
        + f" (client in its own process); web app PREVIEW_EVERY={cfg['preview_every']}.",
        "",
        "| path | s/image median (IQR; min-max) | it/s | wall time vs plain: median of paired ratios (min-max) | "
        "CPU s/image median | CPU time vs plain | outside the model calls, ms median | first image s | load s | "
        "peak RSS MB | peak VRAM MB | "
        "max pixel diff vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in report["paths"].items():
        if p.get("skipped"):
            lines.append(f"| {name} | skipped: {p['skipped']} |" + " |" * 11)
            continue
        s = p["seconds"]
        cpu = p.get("cpu_seconds")
        lines.append(
            f"| {name} | {s['median']:.3f} ({s['q1']:.3f}-{s['q3']:.3f}; {s['min']:.3f}-{s['max']:.3f}) "
            f"| {p['it_per_s']:.2f} | {_ratio_text(name, p.get('ratio'))} | {_fmt(cpu and cpu['median'], 3)} "
            f"| {_ratio_text(name, p.get('cpu_ratio'))} "
            f"| {_fmt(p.get('outside_model_seconds') and p['outside_model_seconds']['median'] * 1000, 1)} "
            f"| {_fmt(p.get('first_image_s'))} | {_fmt(p.get('load_s'))} "
            f"| {_fmt(p.get('peak_rss_mb'), 0)} | {_fmt(p.get('peak_vram_mb'), 0)} | {_fmt(p.get('max_pixel_diff'), 0)} |")
    lines.append("")
    for name, a in report["acceptance"].items():
        text = (f"- {name} overhead vs plain diffusers: wall time {a['overhead_pct']:+.2f}% "
                f"({'within' if a['ok'] else 'OVER'} the {a['limit_pct']:.0f}% budget)")
        if "cpu_overhead_pct" in a:
            text += (f"; CPU time {a['cpu_overhead_pct']:+.2f}% "
                     f"({'within' if a['cpu_ok'] else 'OVER'} the budget)")
        if "outside_pipeline_ms" in a:
            text += (f"; time outside the diffusers call, beyond plain's: {a['outside_pipeline_ms']:.1f} ms "
                     f"= {a['outside_pipeline_pct']:+.2f}% of a plain image "
                     f"({'within' if a['outside_ok'] else 'OVER'} the budget)")
        lines.append(text)
    http = report["paths"].get("http", {})
    if http.get("server_seconds"):
        lines.append(f"- http server side (job created -> finished): median {http['server_seconds']['median']:.3f} s; "
                     f"queue wait (created -> started) median {http['queue_seconds']['median'] * 1000:.0f} ms")
    lines.append("")
    if report.get("options"):
        lines += ["Speedup options (plain path, each in a fresh process; ratio against `sdpa`):", "",
                  "| option | s/image median | ratio vs sdpa | first image s | peak VRAM MB | peak RSS MB | "
                  "max pixel diff vs sdpa |", "|---|---|---|---|---|---|---|"]
        for row in report["options"]:
            if row.get("skipped"):
                lines.append(f"| {row['option']} | skipped: {row['skipped']} | | | | | |")
            else:
                lines.append(f"| {row['option']} | {row['median_s']:.3f} | {_fmt(row.get('ratio'), 3)} "
                             f"| {_fmt(row.get('first_image_s'))} | {_fmt(row.get('peak_vram_mb'), 0)} "
                             f"| {_fmt(row.get('peak_rss_mb'), 0)} | {_fmt(row.get('max_pixel_diff'), 0)} |")
        lines.append("")
    elif report.get("options_skipped"):
        lines += [f"Speedup options: {report['options_skipped']}", ""]
    if report.get("modes"):
        lines += ["Modes (engine path, each in a fresh process; a VRAM cap is "
                  "`torch.cuda.set_per_process_memory_fraction`, so the allocator refuses what a smaller card could not hold; "
                  "it does not emulate that card's speed):", "",
                  "| mode | VRAM cap GB | result | s/image median | first image s | VRAM after load MB | peak VRAM MB "
                  "(allocated) | peak VRAM MB (reserved) | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
        for row in report["modes"]:
            cap = _fmt(row.get("vram_limit_gb"), 0) if row.get("vram_limit_gb") else "none"
            result = (f"failed: {row['failed']}" if row.get("failed") else
                      f"out of memory: {row['out_of_memory']}" if row.get("out_of_memory") else "ok")
            lines.append(f"| {row['mode']} | {cap} | {result} | {_fmt(row.get('median_s'), 3)} | {_fmt(row.get('first_image_s'))} "
                         f"| {_fmt(row.get('vram_after_load_mb'), 0)} | {_fmt(row.get('peak_vram_mb'), 0)} "
                         f"| {_fmt(row.get('peak_vram_reserved_mb'), 0)} | {_fmt(row.get('peak_rss_mb'), 0)} |")
        lines.append("")
    if report.get("fast_modes"):
        from app.bench.fast import fast_modes_markdown

        lines += fast_modes_markdown(report["fast_modes"])
    return "\n".join(lines)


def _ratio_text(name: str, ratio: dict | None) -> str:
    if name == "plain":
        return "1 (baseline)"
    return f"{ratio['paired_median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})" if ratio else "-"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between the section's markers, or append the section."""
    start, end = SECTION_START.format(name=name), SECTION_END.format(name=name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")

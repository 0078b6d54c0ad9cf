"""Speed and memory of our paths against plain diffusers, on the same weights.

    python -m app.bench                      # demo model, CPU or GPU, 25 steps
    python -m app.bench --short              # CI: tiny model, 64 px, 2 steps
    python -m app.bench --model sd21 --device cuda --size 768 --steps 25

Three paths run the same request on the same loaded pipeline:

* ``plain``:  ``StableDiffusionPipeline.__call__``, nothing of ours;
* ``engine``: ``app.engine.engine.Engine.generate`` wrapping that pipeline;
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
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from app.models.speedups import SPEEDUPS, apply_speedups, parse_option

PATHS = ("plain", "engine", "http", "sdapi")
GPU_OPTIONS = ("sdpa", "no_sdpa", "channels_last", "fused_qkv", "channels_last+fused_qkv", "compile",
               "channels_last+fused_qkv+compile", "vae_tiling", "attention_slicing", "cpu_offload")
PROMPT = "a photograph of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"
SECTION_START = "<!-- bench:{name} -->"
SECTION_END = "<!-- /bench:{name} -->"


@dataclass
class BenchConfig:
    model: str = "demo"  # "demo", "sd21" (full architecture, random weights) or a diffusers folder
    steps: int = 25
    size: int | None = None  # None: the model's native size
    runs: int = 7
    warmup: int = 1
    paths: tuple[str, ...] = PATHS
    options: tuple[str, ...] | None = None  # None: GPU_OPTIONS on CUDA, none elsewhere
    option_runs: int = 3
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    guidance_scale: float = 7.5
    seed: int = 1
    poll: float = 0.01  # HTTP client: poll interval while the job may end any moment
    slow_poll: float = 0.5  # ... and mid-run (the web UI polls about every 500 ms)
    long_poll: bool = True  # HTTP client: GET /api/jobs/<id>?wait=60 (the API's long poll) instead of polling
    preview_every: int = 1  # the web app's PREVIEW_EVERY (its default: a live preview every step)
    memory: bool = True  # the fresh-subprocess measurements
    short: bool = False
    command: str = ""

    @property
    def short_defaults(self) -> "BenchConfig":
        return replace(self, model="demo", steps=2, size=64, runs=2, warmup=1, option_runs=1)


@dataclass
class Sample:
    """One timed image."""

    seconds: float
    cpu_seconds: float | None = None  # CPU time of the whole process (all threads) during the run
    pipeline_seconds: float | None = None  # time inside StableDiffusionPipeline.__call__
    server_seconds: float | None = None  # http: the job's created_at -> finished_at
    queue_seconds: float | None = None  # http: created_at -> started_at


@dataclass
class PathResult:
    name: str
    samples: list[Sample] = field(default_factory=list)
    load_s: float | None = None
    first_image_s: float | None = None
    import_s: float | None = None  # fresh process: importing torch, diffusers, the app
    rss_before_load_mb: float | None = None
    rss_after_load_mb: float | None = None
    peak_rss_mb: float | None = None
    peak_vram_mb: float | None = None
    skipped: str | None = None
    max_pixel_diff: int | None = None  # against plain's image of the same seed


# 1. the model, loaded the same way for every path --------------------------------------

@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" or "sd21"
    folder: str | None
    name: str


def prepare_model(model: str, workdir: Path) -> ModelSource:
    """Saves the demo model to a folder so every path loads the same files."""
    from app.models.sd21 import SD21_RANDOM_ID

    if model == "demo":
        from app.models.demo import save_demo_model

        return ModelSource("folder", str(save_demo_model(workdir / "demo")), "demo")
    if model == SD21_RANDOM_ID:
        return ModelSource("sd21", None, "sd21 (random weights)")
    if not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"model: expected demo, sd21 or a diffusers folder with model_index.json (got {model!r})")
    return ModelSource("folder", model, Path(model).name)


def load_plain(source: ModelSource, placement, on_cpu: bool = False):
    """A plain ``StableDiffusionPipeline``: nothing of ours but the tokenizer
    files of the random-weight SD 2.1."""
    device = "cpu" if on_cpu else placement.device
    if source.kind == "sd21":
        from app.models.sd21 import build_sd21_pipeline

        return build_sd21_pipeline(device, placement.torch_dtype)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(source.folder, safety_checker=None, requires_safety_checker=False,
                                                   dtype=placement.torch_dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_engine(source: ModelSource, placement):
    from app.engine.engine import Engine, EngineOptions

    if source.kind == "sd21":
        return Engine(load_plain(source, placement), "sd21", placement)
    return Engine.load(EngineOptions(model=source.folder, device=placement.device, dtype=placement.dtype))


# 2. one runner per path: each call makes one image and returns (Sample, PIL image) -------

Runner = Callable[[], tuple]


def plain_runner(pipe, cfg: BenchConfig, size: int) -> Runner:
    import torch

    def run():
        cpu, started = time.process_time(), time.perf_counter()
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=cfg.steps,
                     guidance_scale=cfg.guidance_scale, width=size, height=size,
                     generator=torch.Generator("cpu").manual_seed(cfg.seed)).images[0]
        return Sample(time.perf_counter() - started, time.process_time() - cpu), image

    return run


def engine_runner(engine, cfg: BenchConfig, size: int) -> Runner:
    from app.engine.types import GenerationRequest

    def run():
        cpu, started = time.process_time(), time.perf_counter()
        result = engine.generate(GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size,
                                                   steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                                                   seed=cfg.seed))
        return Sample(time.perf_counter() - started, time.process_time() - cpu), result.images[0]

    return run


class HttpStack:
    """The web app with an injected engine, served by werkzeug in a thread,
    and driven by a client in another process, as a browser or script would
    be: the client's own work (JSON, polling) then does not compete with the
    server for this process's interpreter lock, and ``process_time`` here
    counts the server's work only."""

    def __init__(self, engine, workdir: Path, poll: float, slow_poll: float = 0.5, preview_every: int = 1,
                 long_poll: bool = True):
        import logging

        from werkzeug.serving import make_server

        from app.web import create_app

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per poll
        side = max(engine.default_size[0], 1024)
        self.app = create_app({"ENGINE": engine, "INSTANCE": str(workdir / "instance"), "MAX_WIDTH": side,
                               "MAX_HEIGHT": side, "MAX_QUEUED_PER_CLIENT": 1000, "MAX_STEPS": 1000,
                               "PREVIEW_EVERY": preview_every})
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="bench-http", daemon=True)
        self._thread.start()
        self.client = subprocess.Popen(
            [sys.executable, "-m", "app.bench", "--client",
             json.dumps({"base": self.base, "poll": poll, "slow_poll": max(poll, slow_poll), "long_poll": long_poll})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
        self._ask({"kind": "ready"}, timeout=600)

    def _ask(self, message: dict, timeout: float = 3600) -> dict:
        self.client.stdin.write(json.dumps(message) + "\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"http: the benchmark client stopped (exit {self.client.poll()})")
        answer = json.loads(line)
        if answer.get("error"):
            raise RuntimeError(f"http: {answer['error']}")
        return answer

    def runner(self, cfg: BenchConfig, size: int, kind: str = "http") -> Runner:
        """``http``: the native job API with polling; ``sdapi``: the synchronous A1111 route."""
        if kind == "http":
            body = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale, seed=cfg.seed)
        else:
            body = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                        cfg_scale=cfg.guidance_scale, seed=cfg.seed, sampler_name="DPM++ 2M")

        def run():
            cpu = time.process_time()
            answer = self._ask({"kind": kind, "body": body})
            sample = Sample(answer["seconds"], time.process_time() - cpu)
            if kind == "http":
                job = answer["job"]
                sample.server_seconds = _span(job, "created_at", "finished_at")
                sample.queue_seconds = _span(job, "created_at", "started_at")
            return sample, _png(answer["png_b64"])

        return run

    def close(self) -> None:
        if self.client.poll() is None:
            self.client.stdin.close()
            self.client.wait(timeout=30)
        self.server.shutdown()
        worker = self.app.extensions.get("t2i_worker")
        if worker is not None and hasattr(worker, "stop"):
            worker.stop()


def _png(b64: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def poll_interval(job: dict, elapsed: float, poll: float, slow_poll: float) -> float:
    """Fast polls (``poll``) only where the job may end soon: while queued, in
    its first step and after its last one (VAE decode, saving). Mid-run sleep
    up to ``slow_poll``, but never past about half the time the remaining
    steps should take, so the end is not overshot. A 10 ms loop all along
    would itself eat a quarter of a core (4-5 ms of CPU per poll here)."""
    progress = job.get("progress") or {}
    step, total = progress.get("step", 0), progress.get("total", 0)
    if job["state"] != "running" or step < 1 or step >= total:
        return poll
    remaining = (total - step) * elapsed / step
    return min(slow_poll, max(poll, remaining / 2))


def client_main(spec: dict) -> None:
    """The benchmark's HTTP client (its own process): one JSON request per
    stdin line, one JSON answer per stdout line; times what a client sees."""
    import base64
    import urllib.request

    base, poll, slow_poll, long_poll = spec["base"], spec["poll"], spec["slow_poll"], spec.get("long_poll", False)

    def call(method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            raw = resp.read()
        return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw

    def answer(message: dict) -> dict:
        if message["kind"] == "ready":
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                state = call("GET", "/api/health").get("model_state")
                if state == "ready":
                    return {}
                if state == "failed":
                    return {"error": "the web app could not load the model"}
                time.sleep(0.05)
            return {"error": "the web app was not ready in time"}
        if message["kind"] == "sdapi":
            started = time.perf_counter()
            result = call("POST", "/sdapi/v1/txt2img", message["body"])
            return {"seconds": time.perf_counter() - started, "png_b64": result["images"][0]}
        started = time.perf_counter()
        job = call("POST", "/api/jobs", message["body"])["job"]
        while job["state"] in ("queued", "running"):
            if long_poll:  # one request that answers when the job ends, as an API client would
                job = call("GET", f"/api/jobs/{job['id']}?wait=60")["job"]
                continue
            time.sleep(poll_interval(job, time.perf_counter() - started, poll, slow_poll))
            job = call("GET", f"/api/jobs/{job['id']}")["job"]
        seconds = time.perf_counter() - started
        if job["state"] != "done":
            return {"error": f"job {job['id']} ended {job['state']}: {job.get('error')}"}
        png = call("GET", job["images"][0]["url"])  # after the clock: the image is fetched once the UI shows it
        return {"seconds": seconds, "job": job, "png_b64": base64.b64encode(png).decode()}

    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as exc:  # report to the parent rather than die silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _span(job: dict, start: str, end: str) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def http_unavailable_reason() -> str | None:
    try:
        from app.web import create_app  # noqa: F401
    except ImportError:
        return "the web app (app.create_app) is not in this checkout"
    return None


# 3. the measurements ---------------------------------------------------------------------

def measure_speed(cfg: BenchConfig, source: ModelSource, placement, workdir: Path) -> tuple[dict[str, PathResult], int]:
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
    images: dict[str, object] = {}
    order = [name for name in cfg.paths if name in runners]
    clock = PipelineClock(engine.pipe)
    try:
        for round_no in range(cfg.warmup + cfg.runs):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                clock.take()
                sample, image = runners[name]()
                sample.pipeline_seconds = clock.take()
                images.setdefault(name, image)
                if round_no >= cfg.warmup:
                    results[name].samples.append(sample)
            done = round_no + 1 - cfg.warmup
            if done > 0:
                _log(f"round {done}/{cfg.runs}: " + ", ".join(
                    f"{n} {results[n].samples[-1].seconds:.3f}s" for n in order))
    finally:
        if http is not None:
            http.close()
    if "plain" in images:
        for name, image in images.items():
            results[name].max_pixel_diff = _max_diff(images["plain"], image)
    return results, size


class PipelineClock:
    """Adds up the time spent inside the pipeline's ``__call__``, whichever
    path (and thread) calls it, so what a path does around the pipeline is
    measured on its own: small, and far less noisy than the whole image."""

    def __init__(self, pipe):
        base = type(pipe)
        clock = self
        self.seconds = 0.0

        def __call__(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return base.__call__(self, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - started

        pipe.__class__ = type(base.__name__, (base,), {"__call__": __call__})

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _max_diff(a, b) -> int:
    import numpy as np

    if a.size != b.size:
        return 255
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b.convert(a.mode), dtype=np.int16)).max())


def measure_memory(cfg: BenchConfig, source: ModelSource, workdir: Path, results: dict[str, PathResult]) -> None:
    """Load time, first-image time and peak memory of each path, each in a fresh process."""
    for name, result in results.items():
        if result.skipped:
            continue
        child = _run_child(cfg, source, workdir, {"path": name})
        for key in ("import_s", "load_s", "first_image_s", "rss_before_load_mb", "rss_after_load_mb", "peak_rss_mb",
                    "peak_vram_mb"):
            setattr(result, key, child.get(key))


def measure_options(cfg: BenchConfig, source: ModelSource, workdir: Path, options: tuple[str, ...]) -> list[dict]:
    """Each option set in a fresh process on the plain path; 'sdpa' is the baseline."""
    rows = []
    for option in options:
        names = parse_option(option)
        if any(SPEEDUPS[n].cuda_only for n in names) and not cfg.device.startswith("cuda"):
            rows.append({"option": option, "skipped": "needs a CUDA GPU"})
            continue
        try:
            rows.append({"option": option, **_run_child(cfg, source, workdir, {"option": option})})
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
        return _max_diff(ia.convert("RGB"), ib.convert("RGB"))


def _run_child(cfg: BenchConfig, source: ModelSource, workdir: Path, task: dict) -> dict:
    spec = {"cfg": asdict(cfg), "source": asdict(source), "task": task, "workdir": str(workdir)}
    out = workdir / f"child-{abs(hash(json.dumps(task, sort_keys=True)))}.json"
    cmd = [sys.executable, "-m", "app.bench", "--child", json.dumps(spec), "--child-out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"benchmark subprocess {task} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def child_main(spec: dict, out: str) -> None:
    """In a fresh process: load one path, time its first image, record peak memory."""
    cfg = BenchConfig(**{**spec["cfg"], "paths": tuple(spec["cfg"]["paths"])})
    source = ModelSource(**spec["source"])
    workdir = Path(spec["workdir"])
    task = spec["task"]
    _set_threads(cfg.threads)
    _quiet()
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
    report: dict = {"import_s": time.perf_counter() - started, "rss_before_load_mb": _rss_mb()}
    started = time.perf_counter()
    if "option" in task:
        names = parse_option(task["option"])
        pipe = load_plain(source, placement, on_cpu="cpu_offload" in names)
        pipe = apply_speedups(pipe, names, placement.device)
        size = cfg.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        run = plain_runner(pipe, cfg, size)
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
    report["rss_after_load_mb"] = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sample, image = run()
    report["first_image_s"] = sample.seconds
    times = [run()[0].seconds for _ in range(max(1, cfg.option_runs) if "option" in task else 1)]
    if "option" in task:
        report["median_s"] = statistics.median(times)
        report["runs_s"] = times
        path = workdir / f"option-{task['option'].replace('+', '_')}.png"
        image.save(path)
        report["image"] = str(path)
    report["peak_rss_mb"] = _peak_rss_mb()
    report["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    Path(out).write_text(json.dumps(report))
    os._exit(0)  # skip interpreter teardown (and the web app's worker thread)


def _peak_rss_mb() -> float:
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


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def _quiet() -> None:
    """No loading/saving progress bars in the benchmark's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# 4. the report ---------------------------------------------------------------------------

def summarize(cfg: BenchConfig, source: ModelSource, placement, size: int, results: dict[str, PathResult],
              options: list[dict] | None, options_skipped: str | None) -> dict:
    paths = {}
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
            outside = [s.seconds - s.pipeline_seconds for s in r.samples if s.pipeline_seconds is not None]
            if outside:
                entry["outside_pipeline_seconds"] = _stats(outside)
            cpu = [s.cpu_seconds for s in r.samples if s.cpu_seconds is not None]
            if cpu:
                entry["cpu_seconds"] = _stats(cpu)
            if plain is not None and plain.samples:
                entry["ratio"] = _ratios([s.seconds for s in r.samples], [p.seconds for p in plain.samples])
                if cpu and len(cpu) == len(plain.samples):
                    entry["cpu_ratio"] = _ratios(cpu, [p.cpu_seconds for p in plain.samples])
        paths[name] = entry
    acceptance = {}
    for name, limit in (("engine", 1.02), ("http", 1.05), ("sdapi", 1.05)):
        ratio, cpu_ratio = paths.get(name, {}).get("ratio"), paths.get(name, {}).get("cpu_ratio")
        if ratio:
            acceptance[name] = {"overhead_pct": (ratio["paired_median"] - 1) * 100, "limit_pct": (limit - 1) * 100,
                                "ok": ratio["paired_median"] <= limit}
            outside = paths[name].get("outside_pipeline_seconds")
            if outside and paths.get("plain", {}).get("seconds"):
                plain_outside = paths["plain"].get("outside_pipeline_seconds", {}).get("median", 0.0)
                extra = outside["median"] - plain_outside
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


def machine_info(placement) -> dict:
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
        "CPU s/image median | CPU time vs plain | outside the pipeline call, ms median | first image s | load s | peak RSS MB | peak VRAM MB | "
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
            f"| {_fmt(p.get('outside_pipeline_seconds') and p['outside_pipeline_seconds']['median'] * 1000, 1)} "
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
    return "\n".join(lines)


def _ratio_text(name: str, ratio: dict | None) -> str:
    if name == "plain":
        return "1 (baseline)"
    return f"{ratio['paired_median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})" if ratio else "-"


def _fmt(value, digits: int = 2) -> str:
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


def run(cfg: BenchConfig, workdir: Path | None = None) -> dict:
    """Run the benchmark and return the report (see ``to_markdown``)."""
    from app.models.devices import choose_placement

    if cfg.short:
        cfg = cfg.short_defaults
    _set_threads(cfg.threads)
    _quiet()
    placement = choose_placement(cfg.device, cfg.dtype)
    cfg = replace(cfg, device=placement.device, dtype=placement.dtype)
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as tmp:
        workdir = Path(workdir or tmp)
        source = prepare_model(cfg.model, workdir)
        _log(f"timing {', '.join(cfg.paths)} on {source.name} ({placement.device} {placement.dtype})")
        results, size = measure_speed(cfg, source, placement, workdir)
        if cfg.memory:
            _log("load time, first image and peak memory: one fresh process per path")
            measure_memory(cfg, source, workdir, results)
        options, options_skipped = None, None
        wanted = cfg.options if cfg.options is not None else (GPU_OPTIONS if placement.device.startswith("cuda") else ())
        if wanted:
            _log(f"speedup options: {', '.join(wanted)}")
            options = measure_options(cfg, source, workdir, tuple(wanted))
        elif cfg.options == ():
            options_skipped = "not requested (--options '')"
        else:
            options_skipped = ("skipped: no CUDA GPU here; run `python -m app.bench --model sd21 --device cuda "
                               "--size 768 --steps 25` on a GPU to measure them")
        return summarize(cfg, source, placement, size, results, options, options_skipped)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)

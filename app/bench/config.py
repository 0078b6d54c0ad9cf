"""What a benchmark run is: its settings, its results, and the model every path loads."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

PATHS = ("plain", "engine", "http", "sdapi")
GPU_OPTIONS = ("sdpa", "no_sdpa", "channels_last", "fused_qkv", "channels_last+fused_qkv", "compile",
               "channels_last+fused_qkv+compile", "vae_tiling", "attention_slicing", "cpu_offload")
# What the engine can be asked to do; each mode's peak VRAM is its own row. "inpaint": a
# centred square mask on the img2img gradient; "hires": the hires fix at 2x (1536 px from 768,
# latent upscaler); "upscale": txt2img, then the Lanczos upscale (CPU) to 2x; "controlnet": txt2img
# with two ControlNet units, two ControlNets made from the loaded UNet (from_unet: an SD 2.1 ControlNet
# in size), so the peak is the model plus two ControlNets, the T4 question of issue #25.
MODES = ("txt2img", "img2img", "inpaint", "hires", "upscale", "controlnet")
HIRES_SCALE = 2.0
PROMPT = "a photograph of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"
# The folder holding the ``app`` package: the benchmark's subprocesses run ``python -m app.bench`` from there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    modes: tuple[str, ...] = ()  # engine modes measured for peak VRAM, each in a fresh process (see MODES)
    vram_limits_gb: tuple[float, ...] = ()  # also run the modes under these per-process VRAM caps (a T4: 15)
    fast_modes: tuple[str, ...] = ()  # fast modes against the full run (app/bench/fast.py), e.g. "deepcache=3"
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
    model_seconds: float | None = None  # time inside the model calls (text encoder, UNet, VAE decode)
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


@dataclass(frozen=True)
class ModelSource:
    """The model, loaded the same way for every path."""

    kind: str  # "folder" or "sd21"
    folder: str | None
    name: str


# Every path makes the engine's default picture (A1111's DPM++ 2M, Automatic schedule = Karras) with the
# noise of a CPU generator, which the plain path draws in one line (app/bench/paths.py minimal_loop).
BENCH_NOISE = "CPU"


def prepare_model(model: str, workdir: Path) -> ModelSource:
    """Saves the demo model to a folder so every path loads the same files."""

    from app.models.sd21 import SD21_RANDOM_ID

    if model == "demo":
        from app.models.demo import save_demo_model

        folder = save_demo_model(workdir / "demo")
        return ModelSource("folder", str(folder), "demo")
    if model == SD21_RANDOM_ID:
        return ModelSource("sd21", None, "sd21 (random weights)")
    if not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"model: expected demo, sd21 or a diffusers folder with model_index.json (got {model!r})")
    return ModelSource("folder", model, Path(model).name)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)

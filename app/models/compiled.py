"""The UNet under ``torch.compile``, compiled in the background, its compile
artifacts kept between sessions.

- **Static shapes, a bounded set of them** (``dynamic=False``, at most
  ``MAX_SHAPES``): each (latent size, batch, prompt length) is its own graph,
  compiled once. Dynamic shapes would compile once for every size, but give
  slower kernels, and diffusers' UNet branches on sizes (upsampling checks), so
  they specialise anyway; CUDA graphs need static shapes too. The sampler, the
  steps, the seed and the prompt's words change no shape: the timestep is a
  tensor value, the conditioning keeps its 77 tokens a chunk.
- **Jobs never wait for a compile**: a shape not compiled yet runs eager and
  is queued for the one compiler thread, which compiles it on a dummy input of
  that shape. Dynamo is not made for two threads at once (its compile stance
  and caches are process-wide), so one lock lets one thread in: the compiler
  holds it through a compile, a job takes it only if free and otherwise runs
  eager. A job's call runs under the ``fail_on_recompile`` stance: whatever the
  compiled graph did not see (a LoRA's layers, seamless tiling's padding) runs
  eager instead of recompiling on the job's thread.
- **The cache survives restarts** (a fresh Colab runtime): PyTorch's cache
  artifacts (``torch.compiler.save_cache_artifacts``) are written after each
  compile to ``unet-<device>-torch<version>-<model>-<shape>.bin`` and all of a
  key's files are loaded before the first compile. On a GPU they hold the
  Triton kernels, so the next session skips code generation and kernel builds;
  on the CPU the C++ kernels are still built, and it gains less.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

COMPILE_CHOICES = ("off", "on", "auto")
MAX_SHAPES = 4  # below Dynamo's recompile limit (8): every shape keeps its graph
TOKENS = 77  # one CLIP chunk: the prompt length of nearly every job
# Dynamo is process-wide (its compile stance, its caches, code shared by every UNet): one thread in it at
# a time, whichever engine it works for (a model switch drops one while the next may start compiling).
_DYNAMO = threading.Lock()


def wants_compile(choice: str, device: str, cpu_offload: bool = False) -> bool:
    """Whether ``choice`` (off, on, auto) compiles on ``device``; auto: with CUDA only (the CPU and
    MPS gain little for minutes of compiling). ValueError naming a bad choice."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile: must be off, on or auto (got {choice!r})")
    if choice == "off":
        return False
    if cpu_offload:  # the offload hooks move the UNet between devices at every call
        if choice == "on":
            raise ValueError("compile: 'on' does not work with cpu_offload; use compile off or auto")
        return False
    return choice == "on" or device.startswith("cuda")


@dataclass(frozen=True)
class Shape:
    """What one compiled graph serves: the UNet's input latents and the conditioning (CFG's batch)."""

    sample: tuple[int, ...]
    cond: tuple[int, ...]

    @classmethod
    def of_image(cls, unet: Any, width: int, height: int, images: int = 1, factor: int = 8) -> "Shape":
        """One job's shape at ``width`` x ``height`` (``factor``: the VAE's): cond and uncond in one
        batch, one prompt chunk."""
        batch = 2 * images
        return cls((batch, unet.config.in_channels, height // factor, width // factor),
                   (batch, TOKENS, unet.config.cross_attention_dim))

    @property
    def name(self) -> str:
        return "-".join("x".join(map(str, dims)) for dims in (self.sample, self.cond))


def default_cache_dir() -> Path:
    """Where the cache goes when no folder is set (the web app's is in its instance folder)."""
    root = os.environ.get("T2I_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "text-to-image-generator")
    return Path(root) / "compile"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def device_name(device: str) -> str:
    """The GPU's model (compiled kernels are built for it), or the CPU's architecture."""
    import torch

    if device.startswith("cuda"):
        return _slug(torch.cuda.get_device_name(torch.device(device)))
    return _slug(f"{device.split(':')[0]}-{platform.machine()}")


def model_hash(unet: Any) -> str:
    """The UNet's architecture and dtype (the graph; its weights are the graph's inputs, so a
    fine-tune of the same architecture shares the cache)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    text = json.dumps(config, sort_keys=True, default=str) + str(unet.dtype)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_key(unet: Any, device: str) -> str:
    import torch

    return f"{device_name(device)}-torch{_slug(torch.__version__)}-{model_hash(unet)}"


class CompileCache:
    """A key's artifact files in ``folder``: one per compiled shape."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder, self.key = Path(folder), key

    def path(self, shape: Shape) -> Path:
        return self.folder / f"unet-{self.key}-{shape.name}.bin"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"unet-{self.key}-*.bin"))

    def load(self) -> int:
        """Hand every file of the key to PyTorch's caches; the number loaded."""
        import torch

        loaded = 0
        for path in self.files():
            try:
                if torch.compiler.load_cache_artifacts(path.read_bytes()) is not None:
                    loaded += 1
            except Exception:  # a torn or foreign file only costs a slower compile
                logger.warning("compile cache %s could not be loaded", path, exc_info=True)
        return loaded

    def save(self, shape: Shape) -> Path | None:
        """This process's artifacts so far (those loaded and used too), written atomically."""
        import torch

        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        path = self.path(shape)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(saved[0])
            os.replace(partial, path)
        except OSError:
            logger.warning("compile cache %s could not be written", path, exc_info=True)
            return None
        return path


class CompiledUNet:
    """Calls the UNet compiled where a graph for the inputs' shape is ready, else eager (and
    queues that shape). ``status``: compiling, compiled or failed."""

    def __init__(self, unet: Any, cache: CompileCache | None = None, max_shapes: int = MAX_SHAPES):
        import torch

        self.unet, self.cache, self.max_shapes = unet, cache, max_shapes
        self._compiled = torch.compile(unet, dynamic=False, fullgraph=True)
        self._state = threading.Lock()  # guards the sets below against the worker's and the compiler's threads
        self._asked: set[Shape] = set()  # queued, compiling or compiled
        self._ready: set[Shape] = set()
        self._pending = 0
        self._queue: queue.Queue[Shape | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._cache_loaded = False
        self.errors: dict[Shape, str] = {}
        self.seconds: dict[Shape, float] = {}  # each shape's compile (the warm-up call), for logs and tests
        self.cpu_seconds: dict[Shape, float] = {}  # ... and the compiler thread's CPU time in it
        self.calls: Counter = Counter()  # UNet calls run "compiled" and "eager"

    @property
    def status(self) -> str:
        with self._state:
            if self._pending:
                return "compiling"
            if self._ready:
                return "compiled"
            return "failed" if self.errors else "compiling"

    def ask(self, shape: Shape) -> None:
        """Compile ``shape`` in the background, unless asked before or the set is full."""
        with self._state:
            if self._stopped or shape in self._asked or len(self._asked) >= self.max_shapes:
                return
            self._asked.add(shape)
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="unet-compile", daemon=True)
                self._thread.start()
        self._queue.put(shape)

    def wait(self, timeout: float | None = None) -> bool:
        """Until nothing is queued or compiling (tests, benchmarks); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status == "compiling":
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @contextmanager
    def hooks_allowed(self, cancel: threading.Event | None = None,
                      waiting: Callable[[], None] | None = None) -> Iterator[bool]:
        """For a job that puts hooks on the UNet (ToMe, DeepCache): the compiler is kept out of Dynamo
        for the block's length, after a compile under way has ended. Dynamo does not guard on module
        hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a graph traced while a job's hooks
        are on would keep them and run for every later job. The job runs the eager UNet meanwhile (its
        compiled calls find Dynamo taken). ``waiting`` is called every quarter second meanwhile (the
        job's workers hear of a cancel through it). Yields False, holding nothing, when ``cancel`` is set
        while waiting: the caller puts no hook on and stops."""
        while not _DYNAMO.acquire(timeout=0.25):
            if waiting is not None:
                waiting()
            if cancel is not None and cancel.is_set():
                yield False
                return
        try:
            yield True
        finally:
            _DYNAMO.release()

    def stop(self) -> None:
        """No more compiles: the engine is being dropped. Waits for a compile under way, then drops
        Dynamo's compiled code (every entry counts towards its recompile limit, and the next model
        compiles its own)."""
        import torch

        with self._state:
            self._stopped = True
            started = self._thread is not None
        self._queue.put(None)
        if started:
            with _DYNAMO:
                torch._dynamo.reset()

    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
        shape = Shape(tuple(sample.shape), tuple(encoder_hidden_states.shape))
        if shape not in self._ready:
            self.ask(shape)
        elif _DYNAMO.acquire(blocking=False):  # else the compiler is in Dynamo: eager this once
            try:
                import torch

                with torch.compiler.set_stance("fail_on_recompile"):
                    out = self._compiled(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                         return_dict=False)[0]
                self.calls["compiled"] += 1
                return out
            except RuntimeError as exc:
                if "fail_on_recompile" not in str(exc):  # a guard failed (LoRA, tiling) is the expected one
                    # Anything else from the compiled graph (a compiler or kernel fault): this shape runs
                    # eager from now on, and this call too, rather than the job failing for it.
                    if "out of memory" in str(exc).lower():
                        raise
                    logger.warning("the compiled UNet failed for %s; it runs eager", shape.name, exc_info=True)
                    with self._state:
                        self._ready.discard(shape)
                        self.errors[shape] = str(exc) or type(exc).__name__
            finally:
                _DYNAMO.release()
        self.calls["eager"] += 1
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def _work(self) -> None:
        while True:
            shape = self._queue.get()
            if shape is None or self._stopped:
                return
            try:
                self._compile(shape)
            except Exception as exc:  # out of memory, a compiler bug: that shape stays eager
                logger.warning("compiling the UNet for %s failed; it runs eager", shape.name, exc_info=True)
                self.errors[shape] = str(exc) or type(exc).__name__
            finally:
                with self._state:
                    self._pending -= 1

    def _compile(self, shape: Shape) -> None:
        import torch

        param = next(self.unet.parameters())
        device, dtype = param.device, param.dtype
        with _DYNAMO:
            if self._stopped:
                return
            started, cpu = time.perf_counter(), time.thread_time()  # loading the cache counts
            if not self._cache_loaded and self.cache is not None:
                self._cache_loaded = True
                loaded = self.cache.load()
                if loaded:
                    logger.info("compile cache: %d file(s) of %s loaded", loaded, self.cache.key)
            # The jobs' call exactly: no_grad (a guard), float32 timesteps, contiguous inputs.
            with torch.no_grad():
                sample = torch.zeros(shape.sample, device=device, dtype=dtype)
                timestep = torch.full((shape.sample[0],), 500.0, device=device, dtype=torch.float32)
                cond = torch.zeros(shape.cond, device=device, dtype=dtype)
                self._compiled(sample, timestep, encoder_hidden_states=cond, return_dict=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[shape] = time.perf_counter() - started
            self.cpu_seconds[shape] = time.thread_time() - cpu  # this thread's own work (not the kernel builds)
            saved = self.cache.save(shape) if self.cache is not None else None
        logger.info("UNet compiled for %s in %.1f s%s", shape.name, self.seconds[shape],
                    f"; cache {saved}" if saved else "")
        with self._state:
            self._ready.add(shape)

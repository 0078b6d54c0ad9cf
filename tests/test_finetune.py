"""Fine-tuning on captioned images: data layouts and bad rows, training with
the demo model on the CPU, checkpoints and resume, and generating with the
result. Each test makes its own tiny dataset."""
from __future__ import annotations

import csv
import shutil
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from app.cli import main
from app.engine.types import ValidationError
from app.training.captions import (
    BAD_ROW,
    EMPTY_CAPTION,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    DatasetError,
    image_to_tensor,
    load_caption_data,
    load_image,
)
from app.training.checkpoints import list_checkpoints
from app.training.config import TrainConfig
from app.training.losslog import read_loss_csv
from app.training.trainer import Trainer
from helpers import make_images, write_csv


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    write_csv(folder / "captions.csv", make_images(folder))
    return folder


def config(data, out, **overrides) -> TrainConfig:
    """Small, fast and exact on the CPU: demo model, 64x64 images, fp32."""
    params = dict(data=str(data), out=str(out), model="demo", device="cpu", resolution=64, steps=6,
                  batch_size=2, grad_accum=2, lr=1e-3, checkpoint_every=3, keep_checkpoints=0, seed=3)
    params.update(overrides)
    return TrainConfig(**params)


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- data -------------------------------------------------------------------

def test_csv_rows_become_examples(data_dir):
    data = load_caption_data(data_dir)
    assert data.source == data_dir / "captions.csv"
    assert [e.image.name for e in data.examples] == ["red.png", "green.png", "blue.png", "yellow.png"]
    assert data.examples[0].caption == "a red square on a grey background"
    assert data.skips.total == 0


def test_flickr8k_captions_txt_with_images_folder(tmp_path):
    # Kaggle's Flickr8k: captions.txt (image,caption; 5 rows per image) beside Images/.
    rows = make_images(tmp_path / "Images")[:2]
    lines = ["image,caption"]
    for name, caption in rows:
        lines += [f"{name},{caption} number {i} ." for i in range(4)]
        lines.append(f'{name},"A dog, a cat , and a {name[:-4]} thing ."')
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_caption_data(tmp_path)
    assert len(data.examples) == 10 and data.num_images == 2
    assert data.examples[4].caption == "A dog, a cat , and a red thing ."
    assert data.examples[0].image == tmp_path / "Images" / "red.png"


def test_flickr8k_token_layout(tmp_path):
    rows = make_images(tmp_path / "Flicker8k_Dataset")[:2]
    lines = [f"{name}#{i}\t{caption}, take {i}" for name, caption in rows for i in range(5)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_caption_data(tmp_path)
    assert len(data.examples) == 10 and data.num_images == 2
    assert data.examples[6].caption == "a green square on a grey background, take 1"


def test_bad_rows_are_counted_skips(tmp_path):
    rows = make_images(tmp_path)
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a JPEG")
    good = (tmp_path / "red.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    rows += [("missing.png", "a photo that is not there"), ("green.png", "   "), ("garbage.jpg", "garbage"),
             ("truncated.png", "half a file")]
    write_csv(tmp_path / "captions.csv", rows)
    with open(tmp_path / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write("only-one-column\n")
    data = load_caption_data(tmp_path)
    assert len(data.examples) == 4
    assert dict(data.skips.counts) == {MISSING_IMAGE: 1, EMPTY_CAPTION: 1, UNREADABLE_IMAGE: 2, BAD_ROW: 1}
    assert (6, "missing.png", MISSING_IMAGE) in data.skips.rows  # line numbers count the header


def test_no_usable_rows_is_an_error_naming_the_file(tmp_path):
    make_images(tmp_path)
    write_csv(tmp_path / "captions.csv", [("red.png", ""), ("nope.png", "a cat")])
    with pytest.raises(DatasetError) as info:
        load_caption_data(tmp_path)
    assert str(tmp_path / "captions.csv") in str(info.value)
    assert "1 empty caption" in str(info.value) and "1 missing image" in str(info.value)


def test_unreadable_captions_file_is_an_error_naming_it(tmp_path):
    make_images(tmp_path)
    (tmp_path / "captions.csv").write_bytes(b"image,caption\nred.png,\xff\xfe broken\n")
    with pytest.raises(DatasetError, match="cannot read .*captions.csv"):
        load_caption_data(tmp_path)


def test_captions_file_must_be_found(tmp_path):
    make_images(tmp_path)
    with pytest.raises(DatasetError, match="no captions file"):
        load_caption_data(tmp_path)
    with pytest.raises(DatasetError, match="no such file: 'other.csv'"):
        load_caption_data(tmp_path, "other.csv")
    write_csv(tmp_path / "mine.tsv", [("red.png", "a red square")])
    assert len(load_caption_data(tmp_path, "mine.tsv").examples) == 1


def test_images_are_resized_and_centre_cropped(tmp_path):
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 50, 100))  # blue strip on the left quarter: cropped away
    image.save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 64)
    assert out.size == (64, 64)
    assert out.getpixel((1, 32))[0] > 200 and out.getpixel((1, 32))[2] < 50
    tensor = image_to_tensor(out)
    assert tensor.shape == (3, 64, 64) and tensor.min() >= -1 and tensor.max() <= 1


# -- options ----------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("lr", 0.0), ("steps", 0), ("resolution", 100), ("mode", "full"), ("mixed_precision", "fp8"),
    ("max_grad_norm", -1.0), ("grad_accum", 0), ("batch_size", 1.5),
])
def test_bad_options_name_the_field(tmp_path, field, value):
    with pytest.raises(ValidationError) as info:
        config(tmp_path, tmp_path / "out", **{field: value}).validate()
    assert info.value.field == field and info.value.value == value


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU of a given compute capability. Faked at torch.cuda, the outermost
    boundary: no GPU here. is_bf16_supported() says True as it does on a real T4 (7.5),
    where bf16 is only emulated."""
    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return install


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_auto_mixed_precision_picks_bf16_only_on_native_hardware(fake_gpu, capability, expected):
    from app.training.trainer import resolve_mixed_precision

    fake_gpu(capability)
    assert resolve_mixed_precision("auto", "cuda") == expected
    assert resolve_mixed_precision("auto", "cuda:1") == expected
    assert resolve_mixed_precision("auto", "cpu") is None


def test_engine_warns_when_bf16_is_asked_for_on_a_t4(fake_gpu, caplog):
    from app.models.devices import choose_placement

    fake_gpu((7, 5))
    assert choose_placement("cuda", "auto").dtype == "float16"  # the engine's own choice stays fp16
    assert choose_placement("cuda", "bf16").dtype == "bfloat16"  # asked for: given, with a warning
    assert "compute capability 7.5" in caplog.text and "emulated" in caplog.text
    caplog.clear()
    fake_gpu((8, 6))
    assert choose_placement("cuda", "bf16").dtype == "bfloat16"
    assert "emulated" not in caplog.text


def test_lora_without_peft_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ValidationError, match="pip install peft"):
        config(tmp_path, tmp_path / "out", mode="lora").validate()


# -- training ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step text-encoder run, checkpoints at 3 and 6."""
    root = tmp_path_factory.mktemp("finetune")
    write_csv(root / "data" / "captions.csv", make_images(root / "data"))
    cfg = config(root / "data", root / "out")
    return cfg, Trainer(cfg).train(progress=False)


def test_only_the_text_encoder_changes(trained):
    from diffusers import StableDiffusionPipeline

    from app.models.demo import build_demo_pipeline

    cfg, result = trained
    base = build_demo_pipeline()
    tuned = StableDiffusionPipeline.from_pretrained(cfg.out, local_files_only=True)
    assert same_weights(weights(tuned.unet), weights(base.unet))
    assert same_weights(weights(tuned.vae), weights(base.vae))
    base_te, tuned_te = weights(base.text_encoder), weights(tuned.text_encoder)
    assert base_te.keys() == tuned_te.keys()
    changed = [k for k in base_te if not torch.equal(base_te[k], tuned_te[k])]
    assert len(changed) > len(base_te) // 2
    # The saved text encoder is exactly the one the last step trained.
    last = load_file(str(result.checkpoints[-1] / "trainable.safetensors"))
    named = dict(tuned.text_encoder.named_parameters())
    assert last.keys() == named.keys()
    assert all(torch.equal(named[k], last[k]) for k in last)


def test_text_encoder_loads_from_the_output_folder(trained):
    from app.models.devices import Placement
    from app.models.loading import load_text_encoder

    cfg, result = trained
    loaded = dict(load_text_encoder(cfg.out, Placement("cpu", "float32")).named_parameters())
    last = load_file(str(result.checkpoints[-1] / "trainable.safetensors"))
    assert all(torch.equal(loaded[k], last[k]) for k in last)


def test_text_encoder_is_saved_in_the_layout_transformers_4_and_5_load(trained):
    from safetensors import safe_open
    from transformers import CLIPTextModel

    cfg, result = trained
    folder = result.out / "text_encoder"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        saved = set(fh.keys())
        assert fh.metadata()["format"] == "pt"  # transformers 4 refuses a file without it
    # transformers 4 loads by exact name, and its CLIPTextModel names every tensor text_model.<...>;
    # a key it does not know is dropped and a missing one stays random, silently.
    fresh = CLIPTextModel(CLIPTextModel.config_class.from_pretrained(folder))
    transformers4_names = {"text_model." + k for k in fresh.state_dict()}
    assert saved == transformers4_names
    # transformers 5 (installed here) loads the same file to the trained weights.
    loaded = CLIPTextModel.from_pretrained(folder).state_dict()
    last = load_file(str(result.checkpoints[-1] / "trainable.safetensors"))
    assert all(torch.equal(loaded[k], last[k]) for k in last)


def test_run_writes_log_plot_and_checkpoints(trained):
    cfg, result = trained
    out = result.out
    log = read_loss_csv(out / "loss.csv")
    assert [s.step for s in log] == [1, 2, 3, 4, 5, 6]
    assert all(0 < s.loss < 10 and s.lr == pytest.approx(1e-3) for s in log)
    assert [s.loss for s in log] == [s.loss for s in result.losses]
    with Image.open(out / "loss.png") as plot:
        assert plot.format == "PNG" and plot.size == (800, 400)
        assert len(plot.convert("RGB").getcolors(1 << 16)) > 2  # more than a blank frame
    assert [p.name for p in list_checkpoints(out)] == ["step-3", "step-6"]
    for name in ("trainable.safetensors", "optimizer.pt", "state.pt"):
        assert (out / "checkpoints" / "step-3" / name).is_file()
    assert (out / "model_index.json").is_file() and (out / "finetune.json").is_file()


def test_resume_gives_the_same_result_as_an_uninterrupted_run(trained, tmp_path):
    cfg, result = trained
    out = tmp_path / "out"

    def crash_at_5(log):
        if log.step == 5:
            raise RuntimeError("power cut")  # after the step-3 checkpoint, before step 6

    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(config(cfg.data, out)).train(on_step=crash_at_5, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-3"]
    resumed = Trainer(config(cfg.data, out, resume="latest")).train(progress=False)
    assert resumed.resumed_from == 3
    a = load_file(str(result.checkpoints[-1] / "trainable.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-6" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "loss.csv").read_text() == (result.out / "loss.csv").read_text()


class _RunsCode:
    """A pickle payload: unpickling it creates ``path`` (as a hostile state.pt could run anything)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_does_not_run_code_from_a_shared_checkpoint(trained, tmp_path):
    cfg, _ = trained
    out = tmp_path / "out"
    shutil.copytree(cfg.out + "/checkpoints/step-3", out / "checkpoints" / "step-3")
    state = torch.load(out / "checkpoints" / "step-3" / "state.pt", weights_only=True)  # our own file loads safely
    assert state["step"] == 3 and isinstance(state["rng_cpu"], torch.Tensor)
    marker = tmp_path / "pwned"
    state["losses"].append(_RunsCode(marker))
    torch.save(state, out / "checkpoints" / "step-3" / "state.pt")
    with pytest.raises(ValidationError, match="not a checkpoint this program wrote") as info:
        Trainer(config(cfg.data, out, resume="latest"))
    assert info.value.field == "resume"
    assert not marker.exists()
    torch.load(out / "checkpoints" / "step-3" / "state.pt", weights_only=False)  # the payload is real
    assert marker.exists()


def test_resume_must_use_the_same_batch_size(trained):
    cfg, _ = trained
    with pytest.raises(ValidationError, match="batch-size") as info:
        Trainer(config(cfg.data, cfg.out, resume="latest", steps=8, batch_size=1))
    assert info.value.value == 1
    with pytest.raises(ValidationError, match="raise --steps") as info:
        Trainer(config(cfg.data, cfg.out, resume="latest", steps=6))
    assert info.value.field == "steps"


def test_output_folder_is_not_overwritten_without_resume(trained):
    cfg, _ = trained
    with pytest.raises(ValidationError, match="--resume latest") as info:
        Trainer(config(cfg.data, cfg.out))
    assert info.value.field == "out"


def test_loss_goes_down_on_the_training_data(data_dir, tmp_path):
    # One fixed batch with fixed noise and timesteps: the untrained demo UNet
    # makes the noisy per-step loss useless for this comparison.
    cfg = config(data_dir, tmp_path / "out", overfit_batch=True, batch_size=4, grad_accum=1, steps=12,
                 checkpoint_every=0)
    result = Trainer(cfg).train(progress=False)
    losses = [s.loss for s in result.losses]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert result.eval_loss_after < result.eval_loss_before - 0.005


def test_image_that_goes_bad_mid_run_is_skipped(data_dir, tmp_path):
    trainer = Trainer(config(data_dir, tmp_path / "out", steps=2, batch_size=4, grad_accum=1, checkpoint_every=0))
    (data_dir / "green.png").write_bytes(b"overwritten after the start-up check")
    result = trainer.train(progress=False)
    assert len(result.losses) == 2 and result.skipped == 1
    with open(tmp_path / "out" / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["image"].endswith("green.png"), r["reason"]) for r in rows] == [(True, "unreadable during training")]


def test_bf16_mixed_precision_trains_and_saves_fp32(data_dir, tmp_path):
    from transformers import CLIPTextModel

    cfg = config(data_dir, tmp_path / "out", mixed_precision="bf16", steps=1, batch_size=1,
                 grad_accum=1, checkpoint_every=0)
    result = Trainer(cfg).train(progress=False)
    assert all(0 < s.loss < 10 for s in result.losses)
    saved = CLIPTextModel.from_pretrained(tmp_path / "out" / "text_encoder")
    assert saved.dtype == torch.float32


def test_lora_mode_trains_unet_adapters_only_and_keeps_alpha(data_dir, tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    from app.engine.engine import Engine, EngineOptions
    from app.engine.types import GenerationRequest
    from app.models.demo import build_demo_pipeline

    cfg = config(data_dir, tmp_path / "out", mode="lora", steps=2, batch_size=1, checkpoint_every=0,
                 lora_rank=4, lora_alpha=8.0)
    Trainer(cfg).train(progress=False)
    lora = load_file(str(tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors"))
    base = build_demo_pipeline()
    tuned = StableDiffusionPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    assert same_weights(weights(tuned.text_encoder), weights(base.text_encoder))
    assert same_weights(weights(tuned.vae), weights(base.vae))
    before, after = weights(base.unet), weights(tuned.unet)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    # alpha 8 on rank 4 is a scale of 2: the fused weight is W + 2 * up @ down, from the saved adapter file.
    assert {f"unet.{k[:-len('.weight')]}.lora.down.weight" for k in changed} <= lora.keys()
    for key in changed:
        stem = f"unet.{key[:-len('.weight')]}.lora"
        delta = lora[stem + ".up.weight"] @ lora[stem + ".down.weight"]
        assert delta.abs().max() > 1e-5
        torch.testing.assert_close(after[key], before[key] + 2 * delta, rtol=0, atol=1e-6)
    engine = Engine.load(EngineOptions(model=str(tmp_path / "out"), device="cpu"))
    image = engine.generate(GenerationRequest("a red square", width=64, height=64, steps=2, seed=1)).images[0]
    assert image.size == (64, 64)


# -- command line -----------------------------------------------------------

def test_cli_finetune_then_generate_with_the_result(tmp_path, capsys):
    data = tmp_path / "data"
    rows = make_images(data) + [("missing.png", "gone"), ("red.png", "")]
    write_csv(data / "captions.csv", rows)
    out = tmp_path / "tuned"
    code = main(["finetune", "--data", str(data), "--out", str(out), "--model", "demo", "--device", "cpu",
                 "--steps", "2", "--resolution", "64", "--lr", "1e-3", "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 2: 1 empty caption, 1 missing image" in err
    with open(out / "skipped.csv", newline="") as fh:
        assert [r["reason"] for r in csv.DictReader(fh)] == [MISSING_IMAGE, EMPTY_CAPTION]
    assert [p.name for p in list_checkpoints(out)] == ["step-1", "step-2"]

    common = ["--width", "64", "--height", "64", "--steps", "2", "--seed", "5", "--device", "cpu"]
    paths = {name: tmp_path / f"{name}.png" for name in ("model", "text_encoder", "base")}
    assert main(["generate", "a red square", "--model", str(out), "-o", str(paths["model"])] + common) == 0
    assert main(["generate", "a red square", "--model", "demo", "--text-encoder", str(out),
                 "-o", str(paths["text_encoder"])] + common) == 0
    assert main(["generate", "a red square", "--model", "demo", "-o", str(paths["base"])] + common) == 0
    pixels = {name: Image.open(path).convert("RGB").tobytes() for name, path in paths.items()}
    assert pixels["model"] == pixels["text_encoder"]  # the same weights by either route
    assert pixels["model"] != pixels["base"]  # and not the base model's


def test_cli_reports_bad_data_and_options(tmp_path, capsys):
    make_images(tmp_path / "data")
    write_csv(tmp_path / "data" / "captions.csv", [("nope.png", "a cat")])
    code = main(["finetune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--model", "demo"])
    err = capsys.readouterr().err
    assert code == 2 and "no usable rows" in err and "captions.csv" in err
    code = main(["finetune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--lr", "-1"])
    assert code == 2 and "lr: must be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

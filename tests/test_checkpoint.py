"""Single-file checkpoints: export to the original SD layout, load back with
a local config folder, and the errors a user sees when loading fails.

The Hub is the only thing faked, by being offline (HF_HUB_OFFLINE=1 from
conftest.py); diffusers itself runs for real.
"""
import json
import os
import re
import shutil

import pytest
import torch

from app.cli import main
from app.engine.engine import Engine
from app.models.checkpoint import export_single_file, original_key_map, original_state_dict
from app.models.devices import Placement
from app.models.loading import DEFAULT_MODEL_ID, ModelLoadError, load_pipeline

COMPONENTS = ("unet", "vae", "text_encoder")


def read_checkpoint(path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(expected, loaded):
    for name in COMPONENTS:
        a, b = getattr(expected, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]}"


@pytest.fixture(scope="module")
def original():
    """Demo architecture with seed-1 weights, unlike the seed-0 weights in
    ``demo_model_dir``: a component that diffusers took from the config
    folder instead of the checkpoint would not match."""
    from app.models.demo import build_demo_pipeline

    return build_demo_pipeline(seed=1)


@pytest.fixture(scope="module")
def exported(original, tmp_path_factory):
    """The original pipeline written as .safetensors and .ckpt, each with its
    configs-only folder beside it (``m.safetensors`` + ``m/``)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {suffix: export_single_file(original, folder / suffix.strip(".") / f"m{suffix}", config_folder=True)
            for suffix in (".safetensors", ".ckpt")}


def test_seed_1_weights_differ_from_the_config_folder(original, demo_model_dir):
    folder = load_pipeline(str(demo_model_dir))
    for name in COMPONENTS:
        a, b = getattr(original, name).state_dict(), getattr(folder, name).state_dict()
        assert not all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_export_writes_the_original_sd2_layout(exported, original, suffix):
    state = read_checkpoint(exported[suffix])
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "cond_stage_model"}
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape == (32, 4, 3, 3)  # conv_in
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in state  # upsampler after an attention
    assert state["first_stage_model.decoder.up.3.upsample.conv.weight"].shape == (32, 32, 3, 3)  # reversed
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)  # 1x1 conv
    layer = original.text_encoder.state_dict()
    qkv = state["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(qkv, torch.cat([layer[f"encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]))
    assert torch.equal(state["cond_stage_model.model.positional_embedding"],
                       layer["embeddings.position_embedding.weight"])
    unet_keys = len(original.unet.state_dict())
    assert sum(k.startswith("model.diffusion_model.") for k in state) == unet_keys
    assert all(v.dtype == torch.float32 for v in state.values())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("config_source", ["--config", "folder beside"])
def test_checkpoint_loads_bit_identical_and_draws_the_same_pixels(
        exported, original, demo_model_dir, small_request, suffix, config_source):
    path = exported[suffix]
    if config_source == "--config":  # a full diffusers folder holding other (seed-0) weights
        alone = path.parent.parent / f"alone{suffix}"
        shutil.copy(path, alone)
        loaded = load_pipeline(str(alone), config=str(demo_model_dir))
    else:  # the configs-only folder export wrote next to the file
        loaded = load_pipeline(str(path))
    assert_same_weights(original, loaded)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.tokenizer.pad_token == "!"
    assert loaded.unet.config.cross_attention_dim == 32

    cpu = Placement("cpu", "float32")
    expected = Engine(original, "original", cpu).generate(small_request(seed=5)).images[0]
    got = Engine(loaded, str(path), cpu).generate(small_request(seed=5)).images[0]
    assert got.tobytes() == expected.tobytes()


def test_half_export_saves_fp16(original, tmp_path):
    path = export_single_file(original, tmp_path / "half.safetensors", dtype=torch.float16)
    state = read_checkpoint(path)
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert os.path.getsize(path) < 0.6 * sum(v.numel() * 4 for v in state.values())


def test_export_refuses_other_suffixes(original, tmp_path):
    with pytest.raises(ValueError, match=r"output: must end in .safetensors or .ckpt \(got '.*model\.bin'\)"):
        export_single_file(original, tmp_path / "model.bin")
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_is_named():
    with pytest.raises(ModelLoadError, match=r"no such file or folder: '/no/such/model\.safetensors'"):
        load_pipeline("/no/such/model.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_corrupt_checkpoint_says_what_to_do(tmp_path, demo_model_dir, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(str(path), config=str(demo_model_dir))
    message = str(info.value)
    assert repr(str(path)) in message and "--config DIR" in message
    assert "\n" not in message


def test_config_of_another_architecture_says_what_to_do(exported, tmp_path):
    config = tmp_path / "other"
    shutil.copytree(exported[".safetensors"].with_suffix(""), config)
    unet_config = json.loads((config / "unet" / "config.json").read_text())
    unet_config["block_out_channels"] = [64, 128]
    (config / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(ModelLoadError, match=r"expected shape .*--config DIR"):
        load_pipeline(str(exported[".safetensors"]), config=str(config))


def test_checkpoint_without_config_offline_says_pass_config(exported, tmp_path):
    # No folder beside it: the configs would come from the Hub, which is offline here.
    alone = tmp_path / "alone.safetensors"
    shutil.copy(exported[".safetensors"], alone)
    with pytest.raises(ModelLoadError, match=r"could not load the checkpoint .*alone\.safetensors.*--config DIR"):
        load_pipeline(str(alone))


def test_hub_model_offline_gives_one_line_with_the_ways_out():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # set by conftest.py before anything imported huggingface_hub
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(DEFAULT_MODEL_ID)
    message = str(info.value)
    assert "\n" not in message
    assert DEFAULT_MODEL_ID in message and "--model PATH" in message and "--model demo" in message


def test_cli_generates_from_checkpoint_with_config(exported, original, demo_model_dir, small_request, tmp_path,
                                                   capsys):
    from PIL import Image

    out = tmp_path / "out.png"
    code = main(["generate", "x", "--model", str(exported[".ckpt"]), "--config", str(demo_model_dir),
                 "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64", "--seed", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    expected = Engine(original, "original", Placement("cpu", "float32")).generate(
        small_request(prompt="x", steps=2, seed=1)).images[0]
    assert Image.open(out).convert("RGB").tobytes() == expected.tobytes()
    assert re.search(r"Model: m(,|$)", Image.open(out).text["parameters"])


def test_cli_default_model_offline_exits_2_with_the_ways_out(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("T2I_MODEL", raising=False)
    code = main(["generate", "x", "--device", "cpu", "--steps", "2", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "--model PATH" in errors[0] and "--model demo" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_export_then_generate_matches_the_demo(engine, small_request, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "shared" / "demo.safetensors"
    assert main(["export", "--model", "demo", "--device", "cpu", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and (path.with_suffix("") / "model_index.json").is_file()
    assert main(["generate", "x", "--model", str(path), "--device", "cpu", "--steps", "2", "--width", "64",
                 "--height", "64", "--seed", "1", "-o", str(tmp_path / "x.png")]) == 0
    expected = engine.generate(small_request(prompt="x", seed=1)).images[0]
    assert Image.open(tmp_path / "x.png").convert("RGB").tobytes() == expected.tobytes()


def test_cli_export_bad_output_fails_before_loading(tmp_path, capsys):
    code = main(["export", "--model", "/no/such/model", "-o", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: output: must end in .safetensors or .ckpt (got" in err
    assert "no such file" not in err  # the output was checked first


def test_cli_export_keeps_another_models_folder(demo_model_dir, tmp_path, capsys):
    # demo_model_dir is a full diffusers folder: exporting to <it>.safetensors must not rewrite its configs.
    before = (demo_model_dir / "unet" / "config.json").read_bytes()
    output = str(demo_model_dir) + ".safetensors"
    code = main(["export", "--model", "/no/such/model", "-o", output])
    assert code == 2
    assert f"error: output: {str(demo_model_dir)!r} already holds a model's weights" in capsys.readouterr().err
    assert (demo_model_dir / "unet" / "config.json").read_bytes() == before
    assert not os.path.exists(output)


# The real SD 2.1 (768-v) architecture, from its unet/vae/text_encoder config.json.
SD21_UNET = dict(
    sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    upcast_attention=True, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD21_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD21_TEXT = dict(  # OpenCLIP ViT-H/14 without its last block: SD 2.x uses the penultimate layer
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


def sd21_models(device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return (UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD21_VAE),
                CLIPTextModel(CLIPTextConfig(**SD21_TEXT)))


def test_full_sd21_key_mapping_round_trips_through_diffusers():
    """On the meta device (names and shapes, no memory): every SD 2.1 weight
    gets a unique original key, diffusers recognises the file as SD 2.x, and
    diffusers' own converters map every key back to the same name and shape."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )

    unet, vae, text_encoder = sd21_models("meta")
    key_map = original_key_map(unet, vae, text_encoder)
    targets = [(key, slot) for key, _, slot in key_map.values()]
    assert len(set(targets)) == len(targets) == sum(len(m.state_dict()) for m in (unet, vae, text_encoder))

    state = original_state_dict(unet, vae, text_encoder)
    assert infer_diffusers_model_type(state) == "v2"
    assert state["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"].shape == (3072, 1024)
    assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" not in state
    # Names other tools key on (ComfyUI-style architecture detection); diffusers accepts an
    # upsampler at .1 or .2, the original layout puts it after the attention.
    for key, shape in {
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280),  # linear in SD 2.x
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
    }.items():
        assert state[key].shape == shape, key
    back = {
        unet: convert_ldm_unet_checkpoint(state, unet.config),
        vae: convert_ldm_vae_checkpoint(state, vae.config),
        text_encoder: {k.removeprefix("text_model."): v  # transformers >= 5.6 has no text_model. level
                       for k, v in convert_open_clip_checkpoint(text_encoder, state).items()},
    }
    for model, converted in back.items():
        expected = model.state_dict()
        assert converted.keys() == expected.keys(), type(model).__name__
        assert all(converted[k].shape == expected[k].shape for k in expected), type(model).__name__


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("T2I_FULL_SD21"), reason="2.6 GB file, 6 GB RAM, 2 min: T2I_FULL_SD21=1 runs it")
def test_full_sd21_export_and_load_bit_identical(tmp_path):
    """The real-size round trip (bf16 file, 2.6 GB), run on demand."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from app.models.checkpoint import write_config_folder
    from app.models.demo import SD21_SCHEDULER
    from app.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    unet, vae, text_encoder = sd21_models("cpu")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(),
                                   scheduler=DPMSolverMultistepScheduler.from_config(SD21_SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(dtype=torch.bfloat16)  # bf16 works on CPU; the file keeps it
    path = export_single_file(pipe, tmp_path / "sd21.safetensors")
    write_config_folder(pipe, tmp_path / "config")
    placement = Placement("cpu", "bfloat16")
    loaded = load_pipeline(str(path), placement, config=str(tmp_path / "config"))
    assert_same_weights(pipe, loaded)
    # The configs that shape the model came back too (drawing on top takes ~10 more minutes on 2 cores).
    def as_json(d):  # tuples -> lists, as config.json stores them
        return json.loads(json.dumps(d))

    assert as_json({k: loaded.unet.config[k] for k in SD21_UNET}) == as_json(SD21_UNET)
    assert as_json({k: loaded.vae.config[k] for k in SD21_VAE}) == as_json(SD21_VAE)
    assert {k: getattr(loaded.text_encoder.config, k) for k in SD21_TEXT} == SD21_TEXT

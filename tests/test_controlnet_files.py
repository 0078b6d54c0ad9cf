"""Single-file ControlNets (issue #25): the original layout, as ``thibaud/controlnet-sd21`` and Civitai
publish them, loads from the ControlNet folder offline, with the config beside it (``NAME.yaml``, as the
extension reads one) or the extension's SD 2.x / SD 1.x config picked from the weights.

The original-layout file is written from the demo ControlNet's weights by running diffusers' own
ldm-to-diffusers key mapping backwards (each original key tagged, converted, and the tags read back),
so the test's file has exactly the layout diffusers' converter reads."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from app.engine.controlnet import encode_png
from app.models.controlnet import CLDM_V15, CLDM_V21, _ldm_config, diffusers_config, original_config
from app.models.loading import ModelLoadError


def unit(**overrides) -> dict:
    image = Image.new("RGB", (64, 64), (20, 30, 40))
    ImageDraw.Draw(image).ellipse((8, 8, 52, 58), fill=(230, 200, 40))
    return {"image": encode_png(image), "module": "canny", "model": "demo-controlnet", **overrides}


def _ldm_keys(channels: int, mult: tuple[int, ...], attention_levels: set[int], blocks: int = 2) -> list[str]:
    """The state-dict keys of ControlNet's original ``cldm.ControlNet`` for an SD-shaped UNet."""
    def resnet(prefix: str, skip: bool) -> list[str]:
        names = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
        return [f"{prefix}.{n}.{p}" for n in names + (("skip_connection",) if skip else ()) for p in ("weight", "bias")]

    def transformer(prefix: str) -> list[str]:
        block = f"{prefix}.transformer_blocks.0"
        keys = [f"{prefix}.{n}.{p}" for n in ("norm", "proj_in", "proj_out") for p in ("weight", "bias")]
        for attn in ("attn1", "attn2"):
            keys += [f"{block}.{attn}.to_{x}.weight" for x in "qkv"] + [f"{block}.{attn}.to_out.0.{p}" for p in ("weight", "bias")]
        names = ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2")
        return keys + [f"{block}.{n}.{p}" for n in names for p in ("weight", "bias")]

    def pair(name: str) -> list[str]:
        return [f"{name}.weight", f"{name}.bias"]

    keys = [k for i in (0, 2) for k in pair(f"time_embed.{i}")]
    keys += [k for i in range(0, 16, 2) for k in pair(f"input_hint_block.{i}")]
    keys += pair("input_blocks.0.0") + pair("zero_convs.0.0")
    index, width = 1, channels
    for level, m in enumerate(mult):
        for _ in range(blocks):
            keys += resnet(f"input_blocks.{index}.0", width != channels * m)
            width = channels * m
            keys += transformer(f"input_blocks.{index}.1") if level in attention_levels else []
            keys += pair(f"zero_convs.{index}.0")
            index += 1
        if level != len(mult) - 1:
            keys += pair(f"input_blocks.{index}.0.op") + pair(f"zero_convs.{index}.0")
            index += 1
    keys += resnet("middle_block.0", False) + transformer("middle_block.1") + resnet("middle_block.2", False)
    return keys + pair("middle_block_out.0")


def original_layout(state: dict) -> dict:
    """The demo ControlNet's diffusers state dict in the original layout (``control_model.`` keys)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    keys = _ldm_keys(32, (1, 2), {1})
    converted = convert_controlnet_checkpoint({k: torch.tensor([float(i)]) for i, k in enumerate(keys)},
                                              {"layers_per_block": 2})
    assert set(converted) == set(state)  # every weight has its original key
    original = {int(tag.item()): name for name, tag in converted.items()}
    return {f"control_model.{key}": state[original[i]].contiguous() for i, key in enumerate(keys)}


def demo_yaml() -> dict:
    config = _ldm_config(32, True, {"num_head_channels": 16})  # the demo UNet: 32/64 channels, 16 per head
    for params in (config["model"]["params"]["control_stage_config"]["params"],
                   config["model"]["params"]["unet_config"]["params"]):
        params.update(model_channels=32, channel_mult=[1, 2], attention_resolutions=[2])
    return config


@pytest.fixture
def controlnet_folder(engine, tmp_path, monkeypatch):
    state = engine.controlnets.get("demo-controlnet").state_dict()
    save_file(original_layout(state), tmp_path / "tiny-canny.safetensors")
    (tmp_path / "tiny-canny.yaml").write_text(yaml.safe_dump(demo_yaml()))
    monkeypatch.setattr(engine.controlnets, "folder", str(tmp_path))
    yield tmp_path
    engine.controlnets.clear()


def test_an_original_layout_file_with_its_yaml_gives_the_same_picture(engine, small_request, controlnet_folder,
                                                                      monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from the Hub
    assert "tiny-canny" in engine.controlnets.names()
    demo = engine.generate(small_request(seed=3, controlnet=[unit()])).images[0]
    from_file = engine.generate(small_request(seed=3, controlnet=[unit(model="tiny-canny")])).images[0]
    plain = engine.generate(small_request(seed=3)).images[0]
    assert from_file.tobytes() == demo.tobytes()
    assert np.abs(np.asarray(from_file, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).max() > 0


def _header_only(path, width: int) -> None:
    """A file with just the key the config is picked from (a real SD 2.1 ControlNet is 1.4 GB)."""
    save_file({"control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
               torch.zeros(320, width, dtype=torch.float16)}, path)


def test_without_a_yaml_the_config_follows_the_weights(tmp_path):
    _header_only(tmp_path / "sd21.safetensors", 1024)
    _header_only(tmp_path / "sd15.safetensors", 768)
    assert original_config(tmp_path / "sd21.safetensors") is CLDM_V21
    assert original_config(tmp_path / "sd15.safetensors") is CLDM_V15
    # SD 2.1's ControlNet config is its UNet's (the project's copy of the real unet/config.json).
    from app.models.sd21 import UNET_CONFIG

    config = diffusers_config(CLDM_V21)
    for key in ("down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                "attention_head_dim", "use_linear_projection"):
        assert tuple(np.atleast_1d(config[key])) == tuple(np.atleast_1d(UNET_CONFIG[key])), key
    assert diffusers_config(CLDM_V15)["attention_head_dim"] == 8 and not diffusers_config(CLDM_V15)["use_linear_projection"]


def test_an_unknown_width_without_a_yaml_names_the_yaml_to_add(tmp_path):
    _header_only(tmp_path / "odd.safetensors", 512)
    with pytest.raises(ModelLoadError, match="odd.yaml"):
        original_config(tmp_path / "odd.safetensors")
    (tmp_path / "odd.yaml").write_text("model: {params: {}}\n")
    with pytest.raises(ModelLoadError, match="not a ControlNet config"):
        original_config(tmp_path / "odd.safetensors")

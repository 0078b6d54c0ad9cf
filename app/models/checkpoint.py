"""Write a diffusers Stable Diffusion 2.x pipeline as ONE original-layout
checkpoint (the CompVis/Stability LDM key names that A1111, ComfyUI and
diffusers' ``from_single_file`` read).

Keys: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.model.*`` (the OpenCLIP text encoder of SD 2.x, with q, k
and v concatenated into ``in_proj_weight``/``in_proj_bias``). This is the
inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_open_clip_checkpoint``, derived
from the model configs instead of hard-coding SD's four blocks, so the tiny
demo model and the full SD 2.1 model go through the same code.

SD 2.x uses the penultimate OpenCLIP layer, so the diffusers text encoder has
23 of OpenCLIP-H's 24 blocks and no ``text_projection``: those two are absent
from the file, as diffusers ignores them when it reads one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
SUFFIXES = (".safetensors", ".ckpt")

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.",
                "conv2.": "out_layers.3.", "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}
_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
_TEXT_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_TEXT_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
               "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


class UnsupportedKeyError(ValueError):
    """A weight this converter has no original-layout name for (not an SD 1.x/2.x model)."""


def _replace_prefix(rest: str, table: dict[str, str], what: str, key: str) -> str:
    for new, old in table.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    raise UnsupportedKeyError(f"{what}: no original-layout name for {key!r}")


def unet_key_map(keys, layers_per_block: int) -> dict[str, str]:
    """diffusers UNet key -> LDM key (without ``model.diffusion_model.``).

    LDM numbers the UNet as flat ``input_blocks``/``output_blocks``: each down
    block is ``layers_per_block`` (resnet, attention) pairs then a downsampler,
    each up block one more pair then the upsampler.
    """
    keys = list(keys)
    if not isinstance(layers_per_block, int):
        raise UnsupportedKeyError(f"unet: layers_per_block must be one int, got {layers_per_block!r}")
    per = layers_per_block + 1
    up_with_attention = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    mapping = {}
    for key in keys:
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            block, kind, layer, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            index = 1 + block * per + layer
            new = (f"input_blocks.{index}.0." + _replace_prefix(rest, _UNET_RESNET, "unet", key) if kind == "resnets"
                   else f"input_blocks.{index}.1.{rest}")
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m.group(1)) + 1) * per}.0.op.{m.group(2)}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            block, kind, layer, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            index = block * per + layer
            new = (f"output_blocks.{index}.0." + _replace_prefix(rest, _UNET_RESNET, "unet", key) if kind == "resnets"
                   else f"output_blocks.{index}.1.{rest}")
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            block = int(m.group(1))
            # The upsampler follows the attention when the block has one.
            slot = 2 if block in up_with_attention else 1
            new = f"output_blocks.{block * per + layers_per_block}.{slot}.{m.group(2)}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m.group(1))}." + _replace_prefix(m.group(2), _UNET_RESNET, "unet", key)
        elif key.startswith("mid_block.attentions.0."):
            new = "middle_block.1." + key[len("mid_block.attentions.0."):]
        else:
            new = _replace_prefix(key, _UNET_TOP, "unet", key)
        mapping[key] = new
    return mapping


def vae_key_map(keys, num_blocks: int) -> dict[str, str]:
    """diffusers VAE key -> LDM key (without ``first_stage_model.``).
    LDM numbers the decoder's up blocks in reverse."""
    mapping = {}
    for key in keys:
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.downsample.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{num_blocks - 1 - int(m.group(1))}.block.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{num_blocks - 1 - int(m.group(1))}.upsample.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m.group(1)}.mid.attn_1." + _replace_prefix(m.group(2), _VAE_ATTN, "vae", key)
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m.group(1)}.norm_out.{m.group(2)}"
        elif not re.match(r"((encoder|decoder)\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\.", key):
            raise UnsupportedKeyError(f"vae: no original-layout name for {key!r}")
        mapping[key] = new.replace(".conv_shortcut.", ".nin_shortcut.")
    return mapping


def text_encoder_key_map(keys) -> dict[str, tuple[str, int | None]]:
    """diffusers CLIPTextModel key -> (OpenCLIP key without ``cond_stage_model.model.``,
    slot in the q/k/v concatenation or None)."""
    mapping: dict[str, tuple[str, int | None]] = {}
    for key in keys:
        # transformers < 5.6 nests the model under ``text_model.``; newer versions do not.
        rest = key[len("text_model."):] if key.startswith("text_model.") else key
        if rest == "embeddings.position_ids":  # a buffer, not a weight
            continue
        if m := _QKV.match(rest):
            mapping[key] = (f"transformer.resblocks.{m.group(1)}.attn.in_proj_{m.group(3)}", "qkv".index(m.group(2)))
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", rest):
            layer = _replace_prefix(m.group(2), _TEXT_LAYER, "text_encoder", key)
            mapping[key] = (f"transformer.resblocks.{m.group(1)}.{layer}", None)
        elif rest in _TEXT_TOP:
            mapping[key] = (_TEXT_TOP[rest], None)
        else:
            raise UnsupportedKeyError(f"text_encoder: no original-layout name for {key!r}")
    return mapping


def original_key_map(unet, vae, text_encoder) -> dict[str, tuple[str, str, int | None]]:
    """``"<component>.<diffusers key>"`` -> (full original key, component, q/k/v slot).
    Works on models built on the meta device: only names are used."""
    result: dict[str, tuple[str, str, int | None]] = {}
    for key, new in unet_key_map(unet.state_dict().keys(), unet.config.layers_per_block).items():
        result[f"unet.{key}"] = (UNET_PREFIX + new, "unet", None)
    for key, new in vae_key_map(vae.state_dict().keys(), len(vae.config.up_block_types)).items():
        result[f"vae.{key}"] = (VAE_PREFIX + new, "vae", None)
    for key, (new, slot) in text_encoder_key_map(text_encoder.state_dict().keys()).items():
        result[f"text_encoder.{key}"] = (TEXT_PREFIX + new, "text_encoder", slot)
    return result


def original_state_dict(unet, vae, text_encoder, dtype=None) -> dict:
    """The three models' weights under original-layout names, on their own
    device (``meta`` too: tests check the full SD 2.1 layout without memory)."""
    import torch

    out: dict = {}
    qkv: dict[str, list] = {}
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text_encoder.state_dict()}
    for name, (new, component, slot) in original_key_map(unet, vae, text_encoder).items():
        tensor = states[component][name[len(component) + 1:]].detach()
        if slot is not None:
            qkv.setdefault(new, [None, None, None])[slot] = tensor
            continue
        if component == "vae" and ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # LDM's VAE attention uses 1x1 convolutions
        out[new] = tensor
    for new, parts in qkv.items():
        if any(p is None for p in parts):
            raise UnsupportedKeyError(f"text_encoder: {new} is missing one of q, k, v")
        out[new] = torch.cat(parts)
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


def export_single_file(pipe, path: str | os.PathLike, *, dtype=None, config_folder: bool = False) -> Path:
    """Write ``pipe``'s UNet, VAE and text encoder to ``path`` (``.safetensors``
    or ``.ckpt``, by suffix). ``dtype`` (e.g. ``torch.float16``) casts on the way;
    ``config_folder`` also writes the configs (no weights) to ``path`` without
    its suffix, where ``--model path`` finds them."""
    import torch

    path = Path(path)
    check_output(path, config_folder)
    suffix = path.suffix.lower()
    state = original_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, dtype=dtype)
    state = {k: v.to("cpu") for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")  # a crash never leaves a half-written checkpoint
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, tmp)
    os.replace(tmp, path)
    if config_folder:
        write_config_folder(pipe, path.with_suffix(""))
    return path


def check_output(path: str | os.PathLike, config_folder: bool = False) -> None:
    """ValueError naming the problem with an output path, before any work."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"output: must end in .safetensors or .ckpt (got {str(path)!r})")
    folder = path.with_suffix("")
    # Never overwrite the configs of another model that lives in that folder.
    if config_folder and folder.is_dir() and any(
            f.suffix in (".safetensors", ".bin", ".ckpt", ".pt") for f in folder.glob("*/*")):
        raise ValueError(f"output: {str(folder)!r} already holds a model's weights; choose another name "
                         "or pass --no-config-folder")


def write_config_folder(pipe, folder: str | os.PathLike) -> Path:
    """A diffusers folder with every config and the tokenizer but no weights:
    what ``from_single_file(..., config=folder)`` needs, in about 2 MB."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json
    pipe.unet.save_config(folder / "unet")
    pipe.vae.save_config(folder / "vae")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    return folder

"""The built-in ``demo`` model: a tiny, untrained SD 2.x-shaped pipeline.

It has the real structure (UNet, 4-level VAE with scale factor 8, CLIP text
encoder, the real CLIP BPE tokenizer, DPM-Solver++ with v-prediction) at a
fraction of the size, so every feature runs offline on a CPU in well under a
second. Its weights are random: images are coloured noise.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

DEMO_MODEL_ID = "demo"
DEMO_NOTICE = "Demo model: untrained random weights, so images are noise. Use --model for a real model."

_BPE_FILE = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
# SD 2.1's scheduler settings (scheduler/scheduler_config.json of the 768-v model).
SD21_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    timestep_spacing="leading",
)


def write_clip_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Turn OpenAI's BPE merges file into ``vocab.json`` + ``merges.txt``.

    This is the tokenizer of CLIP ViT-L and OpenCLIP ViT-H (SD 2.x) alike:
    256 byte tokens, the same with ``</w>``, the first 48,894 merges joined,
    then the two special tokens: 49,408 entries.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(_BPE_FILE, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",  # SD 2.x pads with "!" (id 0)
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable-character table shared by GPT-2 and CLIP.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The real CLIP tokenizer with SD 2.x's settings (pad token ``!``)."""
    from transformers import CLIPTokenizer

    folder = Path(cache_dir) if cache_dir else _default_cache() / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        # Write beside, then rename: several processes may build it at once.
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=folder.parent if folder.parent.exists() else None))
        write_clip_tokenizer_files(tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _default_cache() -> Path:
    root = os.environ.get("T2I_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "text-to-image-generator")
    return Path(root)


# Tiny configs, like diffusers' ``get_dummy_components``: SD 2.x in shape (linear
# projections, upcast attention, a 4-level VAE with factor 8), 256 px native.
DEMO_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,  # 32 latents x 8 = 256 px native size
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=32,
)
DEMO_VAE = dict(
    block_out_channels=(16, 32, 32, 32),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=16,
    layers_per_block=1,
    sample_size=256,
)
DEMO_TEXT_ENCODER = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
    hidden_size=32,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=32,
    hidden_act="gelu",
)


def build_demo_components(seed: int = 0) -> dict:
    """Tiny seeded components, like diffusers' ``get_dummy_components``."""
    from app.models.random_weights import build_components

    return build_components(DEMO_UNET, DEMO_VAE, DEMO_TEXT_ENCODER, SD21_SCHEDULER, seed=seed)


def build_demo_pipeline(seed: int = 0):
    from app.models.random_weights import build_pipeline

    return build_pipeline(build_demo_components(seed))


def save_demo_model(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the demo model as a normal diffusers folder (loads with ``--model FOLDER``)."""
    folder = Path(folder)
    build_demo_pipeline(seed).save_pretrained(folder)
    return folder

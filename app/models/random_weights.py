"""One builder for models with seeded random weights, made from configs: the
tiny demo model (``app.models.demo``) and the full SD 2.1 architecture
(``app.models.sd21``) differ only in the configs they pass."""
from __future__ import annotations

from typing import Any


def build_components(unet: dict, vae: dict, text_encoder: dict, scheduler: dict, *, device: str = "cpu",
                     dtype: Any = None, seed: int = 0) -> dict:
    """``StableDiffusionPipeline`` components: UNet, VAE and CLIP text encoder
    from their configs with weights seeded by ``seed`` (each model from the
    same seed, so one model's size never shifts another's weights), created
    directly on ``device``, the real CLIP tokenizer, and DPM-Solver++."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel

    from app.models.tokenizer import build_tokenizer

    dtype = dtype or torch.float32
    with torch.device(device):
        torch.manual_seed(seed)
        unet_model = UNet2DConditionModel(**unet)
        torch.manual_seed(seed)
        vae_model = AutoencoderKL(**vae)
        torch.manual_seed(seed)
        text_model = CLIPTextModel(CLIPTextConfig(**text_encoder))
    if dtype != torch.float32:
        # diffusers warns about casting with .to(); SD 2.x keeps no module in fp32, so it is safe.
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            unet_model, vae_model, text_model = unet_model.to(dtype), vae_model.to(dtype), text_model.to(dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    return {
        "unet": unet_model.eval(),
        "vae": vae_model.eval(),
        "text_encoder": text_model.eval(),
        "tokenizer": build_tokenizer(),
        "scheduler": DPMSolverMultistepScheduler.from_config(scheduler),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def build_pipeline(components: dict):
    """A ``StableDiffusionPipeline`` of ``components``, without progress bars."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe

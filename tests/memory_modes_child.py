"""Run by tests/test_memory_modes.py in a fresh process: build a seeded
random-weight model big enough that its weights dominate what the run adds,
run the modes named on the command line on one Engine, print JSON with the
RSS after imports (before the model), the peak RSS (VmHWM), each model's
weights (KiB), the images' sizes and the extra pipelines the engine made.

Usage: python tests/memory_modes_child.py DTYPE MODE[,MODE...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(name)


def main(dtype_name: str, modes: list[str]) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    # Everything any mode imports, imported by every run alike, so the baseline below is the same.
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline  # noqa: F401
    from PIL import Image

    import app.engine.hires  # noqa: F401
    import app.engine.inpaint  # noqa: F401
    from app.engine.engine import Engine
    from app.engine.types import GenerationRequest
    from app.engine.upscale import upscale
    from app.models.demo import DEMO_TEXT_ENCODER, DEMO_UNET, DEMO_VAE, SD21_SCHEDULER
    from app.models.devices import Placement
    from app.models.random_weights import build_components, build_pipeline

    dtype = getattr(torch, dtype_name)
    base_kb = status_kb("VmRSS")
    # The demo's shapes, wider: about 120 MB of weights in fp32 (the demo's are about 5 MB),
    # in the UNet and the text encoder alike, at the same tiny image sizes.
    unet = {**DEMO_UNET, "block_out_channels": (128, 256), "cross_attention_dim": 384, "attention_head_dim": (4, 8)}
    text = {**DEMO_TEXT_ENCODER, "hidden_size": 384, "intermediate_size": 1536, "projection_dim": 384}
    vae = {**DEMO_VAE, "block_out_channels": (32, 64, 128, 128), "norm_num_groups": 32}
    torch.set_default_dtype(dtype)  # made in their dtype: no float32 copy to cast (and to set the peak)
    try:
        pipe = build_pipeline(build_components(unet, vae, text, SD21_SCHEDULER))
    finally:
        torch.set_default_dtype(torch.float32)
    weights = {name: sum(p.numel() * p.element_size() for p in getattr(pipe, name).parameters()) // 1024
               for name in ("unet", "vae", "text_encoder")}
    engine = Engine(pipe, "memory-test", Placement("cpu", dtype_name))
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    init = Image.fromarray(np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                                     np.full((64, 64), 128, np.uint8)], axis=-1))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    common = dict(prompt="a lighthouse", width=64, height=64, steps=2, seed=3)
    requests = {
        "txt2img": GenerationRequest(**common),
        "img2img": GenerationRequest(**common, init_image=init, strength=0.6),
        "inpaint": GenerationRequest(**common, init_image=init, mask=mask),
        "outpaint": GenerationRequest(**{**common, "width": None, "height": None}, init_image=init, outpaint=16),
        "hires": GenerationRequest(**common, enable_hr=True, hr_scale=1.5, strength=0.6),
    }
    sizes = {}
    for mode in modes:
        if mode == "upscale":
            image = upscale(engine.generate(requests["txt2img"]).images[0], scale=2)
        else:
            image = engine.generate(requests[mode]).images[0]
        sizes[mode] = list(image.size)
    return {"base_kb": base_kb, "peak_kb": status_kb("VmHWM"), "weights_kb": weights, "sizes": sizes}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2].split(","))))

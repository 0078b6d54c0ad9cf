"""The notebooks' set-up step drops two library notices that printed red in
the Load and img2img cells (issue #27), where they are logged, and nothing
else: each runs in a fresh interpreter, once with the filter and once without."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# transformers' lazy module falls back to the PIL image processor without
# torchvision; diffusers' ModelMixin.to warns on a cast to a dtype.
TRIGGER = """
import logging, warnings
import torch, transformers
from diffusers import UNet2DConditionModel
transformers.CLIPImageProcessor  # noqa: the fallback notice, logged once per process
unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32,
                            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                            norm_num_groups=8, attention_head_dim=8)
unet.to(dtype=torch.float32)
logging.getLogger("diffusers.models.modeling_utils").warning("another diffusers warning")
"""


def run(quiet: bool) -> str:
    script = ("from app.notebook.setup import quiet_library_notices; quiet_library_notices()\n" if quiet else "") + TRIGGER
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is not None,
                    reason="with torchvision transformers has no fallback to announce")
def test_the_two_notices_are_dropped_and_other_warnings_still_show():
    loud = run(quiet=False)
    assert "requires torchvision" in loud and "should be kept in float32" in loud  # the trigger works
    quiet = run(quiet=True)
    assert "requires torchvision" not in quiet and "should be kept in float32" not in quiet
    assert "another diffusers warning" in quiet

"""fp16 loads ask the Hub for the repo's fp16 weights first and fall back to
its full weights. The Hub is faked at its outermost boundary: a Hugging Face
cache folder laid out as huggingface_hub writes it, read with HF_HUB_OFFLINE=1
(so no request leaves the machine); diffusers' own variant logic runs for real.
Each load runs in a child process because huggingface_hub reads its cache
location when it is imported."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
from app.models.devices import Placement
from app.models.loading import load_pipeline
pipe = load_pipeline(sys.argv[1], Placement("cpu", "float16"))
print("dtype", pipe.unet.dtype)
"""


def _fake_hub_repo(cache: Path, repo: str, variant: str | None) -> None:
    from app.models.demo import build_demo_pipeline

    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    build_demo_pipeline().save_pretrained(snapshot, variant=variant)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)


def _load(cache: Path, repo: str) -> str:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", LOAD, repo], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_fp16_variant_is_used_when_the_repo_has_one_else_the_full_weights(tmp_path):
    cache = tmp_path / "hub"
    _fake_hub_repo(cache, "t2i-test/with-fp16", "fp16")
    _fake_hub_repo(cache, "t2i-test/full-only", None)

    out = _load(cache, "t2i-test/with-fp16")
    assert "t2i-test/with-fp16: loaded its fp16 weights (variant fp16)" in out and "dtype torch.float16" in out

    out = _load(cache, "t2i-test/full-only")
    assert "t2i-test/full-only has no fp16 weights: loading its full weights and converting them to fp16" in out
    assert "t2i-test/full-only: loaded its full (fp32) weights" in out and "dtype torch.float16" in out

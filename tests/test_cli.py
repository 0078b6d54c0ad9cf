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
    assert sampler.parameters == {"cfg_scale": "7.5", "seed": "1", "steps": "4"}
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
        assert Image.open(tmp_path / f"lake-{n}.steps.gif").n_frames == 3  # steps 1, 2 of 2 + final
    assert "Negative prompt: fog" in Image.open(tmp_path / "lake-1.png").text["parameters"]


@pytest.mark.parametrize("args,message", [
    (["--width", "770"], "error: width: must be a multiple of 8 (got 770)"),
    (["--steps", "0"], "error: steps: must be between 1 and 150 (got 0)"),
    (["--scheduler", "nope"], "error: scheduler: is not one of"),
    (["--init-image", "/no/such.png"], "error: init_image: cannot read '/no/such.png'"),
    (["--dtype", "fp16", "--device", "cpu"], "error: dtype: fp16 is not supported on the CPU"),
    (["--model", "./missing-folder"], "error: model: no such file or folder: './missing-folder'"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, args, message):
    code = main(["generate", "x", "--model", "demo", *args, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()

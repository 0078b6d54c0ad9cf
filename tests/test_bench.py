"""The benchmark's short (CI) mode, so the script cannot rot.

These check what the report says and that its numbers are sane, never how
fast anything is: timings on a shared CI machine prove nothing.
"""
from __future__ import annotations

import json
import math

import pytest
from PIL import Image

import app.bench as bench
import app.cli.bench as cli_bench
from app.cli import main as app_main


def _has_web_app() -> bool:
    return bench.http_unavailable_reason() is None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One short run: plain, engine and (when the web app exists) http, with
    the fresh-process memory measurements. About a minute on 2 CPU cores."""
    paths = bench.PATHS if _has_web_app() else ("plain", "engine")
    cfg = bench.BenchConfig(short=True, paths=paths, threads=1, options=("sdpa", "channels_last+fused_qkv"),
                            modes=bench.MODES, command="python -m app.bench --short")
    return bench.run(cfg, workdir=tmp_path_factory.mktemp("bench"))


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_short_mode_times_every_path_on_the_same_weights(report):
    assert report["model"] == "demo" and report["size"] == 64 and report["config"]["steps"] == 2
    for name in ("plain", "engine"):
        path = report["paths"][name]
        assert path["seconds"]["n"] == 2
        assert _finite_positive(path["seconds"]["median"]) and _finite_positive(path["it_per_s"])
        assert path["seconds"]["min"] <= path["seconds"]["median"] <= path["seconds"]["max"]
        # Same weights, same seed, same scheduler: the engine's image is plain diffusers' image.
        assert path["max_pixel_diff"] == 0
        # The pipeline clock: time around the diffusers call is part of the image's time.
        outside = path["outside_model_seconds"]
        assert 0 <= outside["min"] and outside["max"] <= path["seconds"]["max"]
    ratio = report["paths"]["engine"]["ratio"]
    assert all(_finite_positive(ratio[k]) for k in ("paired_median", "min", "max", "of_medians"))
    assert ratio["min"] <= ratio["paired_median"] <= ratio["max"]
    assert report["acceptance"]["engine"]["limit_pct"] == pytest.approx(2.0)


@pytest.mark.slow
def test_short_mode_measures_load_first_image_and_peak_memory_per_process(report):
    for name in ("plain", "engine"):
        path = report["paths"][name]
        for key in ("load_s", "first_image_s", "peak_rss_mb", "rss_after_load_mb"):
            assert _finite_positive(path[key]), (name, key, path[key])
        # The peak can only be at or above what the process held after loading.
        assert path["peak_rss_mb"] >= path["rss_after_load_mb"] * 0.99
        assert path["peak_vram_mb"] is None  # CPU run


@pytest.mark.slow
@pytest.mark.parametrize("name", ["http", "sdapi"])
def test_short_mode_http_paths(report, name):
    if not _has_web_app():
        pytest.skip(bench.http_unavailable_reason())
    path = report["paths"][name]
    assert path["skipped"] is None
    assert _finite_positive(path["ratio"]["paired_median"]) and _finite_positive(path["cpu_ratio"]["paired_median"])
    assert path["max_pixel_diff"] == 0  # the PNG served is the engine's image, lossless
    assert _finite_positive(path["peak_rss_mb"]) and _finite_positive(path["first_image_s"])
    assert name in report["acceptance"]
    if name == "http":  # the job's own timestamps: server time within what the client saw
        assert 0 < path["server_seconds"]["median"] <= path["seconds"]["max"] + 0.05


@pytest.mark.slow
def test_speedup_options_run_in_their_own_process_against_sdpa(report):
    rows = {row["option"]: row for row in report["options"]}
    assert rows["sdpa"]["ratio"] == pytest.approx(1.0)
    fused = rows["channels_last+fused_qkv"]
    assert _finite_positive(fused["ratio"]) and _finite_positive(fused["median_s"])
    assert isinstance(fused["max_pixel_diff"], int)


@pytest.mark.slow
def test_each_mode_runs_in_its_own_process(report):
    rows = {row["mode"]: row for row in report["modes"]}
    assert set(rows) == {"txt2img", "img2img", "inpaint", "hires", "upscale", "controlnet"}
    for row in rows.values():
        assert row["vram_limit_gb"] is None and "failed" not in row and "out_of_memory" not in row
        assert _finite_positive(row["median_s"]) and _finite_positive(row["peak_rss_mb"])
    # Each mode made its own kind of image: the hires fix and the upscale at twice the size (64 -> 128).
    sizes = {mode: Image.open(row["image"]).size for mode, row in rows.items()}
    assert sizes == {"txt2img": (64, 64), "img2img": (64, 64), "inpaint": (64, 64), "hires": (128, 128),
                     "upscale": (128, 128), "controlnet": (64, 64)}
    from app.bench.paths import gradient_image

    with Image.open(rows["inpaint"]["image"]) as inpainted:  # the mask is the middle: the corners are kept
        inpainted = inpainted.convert("RGB")
    init = gradient_image(64)
    assert inpainted.getpixel((2, 2)) == init.getpixel((2, 2)) and inpainted.getpixel((32, 32)) != init.getpixel((32, 32))
    for mode in ("img2img", "inpaint", "hires", "upscale"):
        assert f"| {mode} | none | ok |" in bench.to_markdown(report)


@pytest.mark.slow
def test_report_renders_as_markdown_and_json(report, tmp_path):
    text = bench.to_markdown(report)
    assert "| plain |" in text and "| engine |" in text
    assert "engine overhead vs plain diffusers" in text
    assert "python -m app.bench --short" in text
    json.loads(json.dumps(report))  # JSON-serialisable as written by --out x.json


def test_markdown_section_is_replaced_in_place(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n", encoding="utf-8")
    bench.write_section(doc, "cpu-demo", "first")
    bench.write_section(doc, "cuda-sd21", "gpu")
    bench.write_section(doc, "cpu-demo", "second")
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert "second" in text and "first" not in text and "gpu" in text
    assert text.index("second") < text.index("gpu")  # the section kept its place


def test_gpu_options_are_skipped_with_a_reason_on_cpu(tmp_path):
    source = bench.ModelSource("folder", None, "demo")
    cfg = bench.BenchConfig(device="cpu")
    rows = bench.measure_options(cfg, source, tmp_path, ("compile", "cpu_offload"))
    assert rows == [{"option": "compile", "skipped": "needs a CUDA GPU"},
                    {"option": "cpu_offload", "skipped": "needs a CUDA GPU"}]


@pytest.mark.parametrize("argv, field", [
    (["--paths", "plain,ftp"], "paths"),
    (["--options", "channels_last+warp_drive"], "options"),
    (["--steps", "0"], "steps"),
    (["--size", "100"], "size"),
    (["--modes", "txt2img,outpaint-the-moon"], "modes"),
    (["--modes", "txt2img", "--vram-limit-gb", "fifteen"], "vram-limit-gb"),
    (["--vram-limit-gb", "15"], "vram-limit-gb"),
    (["--fast-modes", "deepcache=3+warp=9"], "fast-modes"),
    (["--fast-modes", "tome=half"], "fast-modes"),
])
def test_bad_arguments_name_the_option(argv, field, capsys):
    assert cli_bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:")


def test_fast_modes_are_timed_against_the_full_run(tmp_path):
    """Each fast mode next to the full run: the full run's own difference is 0, a mode's is not, and
    DeepCache runs the deep blocks fewer times."""
    cfg = bench.BenchConfig(short=True, paths=(), threads=1, options=(), memory=False,
                            fast_modes=("deepcache=2", "steps=1"), command="python -m app.bench --short")
    report = bench.run(cfg, workdir=tmp_path)
    rows = {row["mode"]: row for row in report["fast_modes"]}
    assert list(rows) == ["full", "deepcache=2", "steps=1"] and report["paths"] == {}
    assert rows["full"]["max_pixel_diff"] == 0 and rows["full"]["deep_calls"] == 2
    assert rows["deepcache=2"]["deep_calls"] == 1 and rows["deepcache=2"]["max_pixel_diff"] > 0
    assert rows["steps=1"]["steps"] == 1 and all(_finite_positive(row["median_s"]) for row in rows.values())
    assert "| deepcache=2 | 2 |" in bench.to_markdown(report)


def test_app_bench_subcommand_rebuilds_its_command_line(monkeypatch):
    """``python -m app bench`` gets parsed options only; the report's command line comes from them."""
    seen = {}

    def stop(args, argv):
        seen["argv"] = argv
        raise ValueError("stop: before running")

    monkeypatch.setattr(cli_bench, "config_from_args", stop)
    assert app_main(["bench", "--short", "--threads", "1", "--options", "", "--no-long-poll", "--out", "a.md"]) == 2
    assert seen["argv"] == ["--options", "", "--threads", "1", "--no-long-poll", "--short", "--out", "a.md"]

"""The notebook form, driven through its real ipywidgets (no kernel needed)."""
from __future__ import annotations

import io

from PIL import Image

from app.engine.metadata import read_parameters
from app.engine.types import SIZE_MULTIPLE, GenerationRequest
from app.notebook.widgets import GeneratorUI, Img2ImgUI, output_folder, uploaded_files


def test_button_generates_shows_progress_and_saves(engine, tmp_path):
    ui = GeneratorUI(engine, tmp_path, steps=3, width=64, height=64)
    ui.prompt.value = "a lighthouse"
    ui.seed.value = 7
    ui.button.click()

    assert len(ui.saved) == 1 and ui.saved[0].parent == tmp_path
    assert (ui.progress.value, ui.progress.max) == (3, 3)
    with Image.open(ui.saved[0]) as saved:
        assert saved.size == (64, 64)
        assert "Seed: 7" in read_parameters(saved)
    shown = Image.open(io.BytesIO(ui.image.value))
    assert shown.size == (64, 64)  # the final image replaced the step previews
    assert "Seed 7" in ui.status.value and not ui.button.disabled


def test_bad_value_is_reported_with_field_and_nothing_saved(engine, tmp_path):
    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    ui.prompt.value = "a lighthouse"
    ui.width.value = 100
    ui.button.click()

    assert ui.saved == [] and list(tmp_path.iterdir()) == []
    assert "width: must be a multiple of 8 (got 100)" in ui.status.value


def test_img2img_needs_a_picture_then_uses_the_last_result(engine, tmp_path):
    source = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    i2i = Img2ImgUI(engine, tmp_path, source=source, steps=4)
    i2i.prompt.value = "at night"
    i2i.button.click()
    assert "init_image" in i2i.status.value and i2i.saved == []

    source.prompt.value = "a lighthouse"
    source.button.click()
    i2i.use_last.click()
    i2i.button.click()

    assert len(i2i.saved) == 1 and i2i.saved[0] != source.saved[0]
    with Image.open(i2i.saved[0]) as saved:
        assert saved.size == (64, 64) and "Denoising strength: 0.75" in read_parameters(saved)


def test_form_starts_at_the_request_defaults_and_floors_picture_sizes(engine, tmp_path):
    defaults = GenerationRequest.defaults()
    i2i = Img2ImgUI(engine, tmp_path)
    assert (i2i.steps.value, i2i.guidance.value, i2i.scheduler.value, i2i.strength.value, i2i.save_steps.value) == (
        defaults["steps"], defaults["guidance_scale"], defaults["scheduler"], defaults["strength"], defaults["save_steps"])
    assert (i2i.width.value, i2i.height.value) == engine.default_size
    assert i2i.width.step == i2i.height.step == SIZE_MULTIPLE
    assert GeneratorUI(engine, tmp_path, steps=3, guidance=2.0).steps.value == 3

    i2i.set_init_image(Image.new("RGB", (203, 150)))
    assert (i2i.width.value, i2i.height.value) == (200, 144)


def test_output_folder_prefers_mounted_drive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_folder(None, drive_root=tmp_path / "no-drive") == tmp_path / "outputs"
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    assert output_folder("", drive_root=drive) == drive / "text-to-image"
    assert output_folder(tmp_path / "mine", drive_root=drive) == tmp_path / "mine"
    assert (drive / "text-to-image").is_dir()


def test_uploads_read_in_ipywidgets_7_and_8_shapes(engine, tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (80, 72), "red").save(png, format="PNG")
    v8 = ({"name": "a.png", "type": "image/png", "size": 3, "content": memoryview(png.getvalue())},)
    v7 = {"a.png": {"metadata": {"name": "a.png", "type": "image/png"}, "content": png.getvalue()}}
    assert uploaded_files(v8) == uploaded_files(v7) == [png.getvalue()]
    assert uploaded_files(()) == uploaded_files({}) == []

    i2i = Img2ImgUI(engine, tmp_path)
    i2i._on_upload({"new": v7})  # what Colab's ipywidgets 7 sends
    assert i2i.init_image is not None and (i2i.width.value, i2i.height.value) == (80, 72)

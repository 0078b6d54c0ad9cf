"""The notebook form, driven through its real ipywidgets (no kernel needed)."""
from __future__ import annotations

import base64
import dataclasses
import io

from PIL import Image

from app.engine.fields import about
from app.engine.metadata import read_parameters
from app.engine.types import SIZE_MULTIPLE, GenerationRequest, described
from app.notebook import widgets
from app.notebook.widgets import GeneratorUI, Img2ImgUI, InpaintUI, output_folder, uploaded_files


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


def _png_upload(image: Image.Image) -> tuple[dict, ...]:
    """What an ipywidgets 8 FileUpload holds after one upload (7's shape: see the test above)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return ({"name": "x.png", "type": "image/png", "size": len(buf.getvalue()), "content": memoryview(buf.getvalue())},)


def test_hires_fix_options_make_a_bigger_image_with_its_settings(engine, tmp_path):
    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    defaults = GenerationRequest.defaults()
    assert (ui.enable_hr.value, ui.hr_scale.value, ui.hr_upscaler.value, ui.hr_steps.value) == (
        defaults["enable_hr"], defaults["hr_scale"], defaults["hr_upscaler"], defaults["hr_second_pass_steps"])
    ui.prompt.value, ui.seed.value = "a lighthouse", 3
    ui.enable_hr.value, ui.hr_scale.value, ui.hr_upscaler.value = True, 1.5, "Lanczos"
    ui.hr_steps.value, ui.hr_strength.value = 3, 0.5
    ui.button.click()
    assert len(ui.saved) == 1, ui.status.value
    with Image.open(ui.saved[0]) as saved:
        text = read_parameters(saved)
        assert saved.size == (96, 96)
    for part in ("Hires upscale: 1.5", "Hires steps: 3", "Hires upscaler: Lanczos", "Denoising strength: 0.5"):
        assert part in text
    assert ui.enable_hr in _shown(ui.widget)
    # The image-to-image form shows no hires fix (as A1111's img2img tab) and its requests have none.
    i2i = Img2ImgUI(engine, tmp_path)
    i2i.enable_hr.value = True
    i2i.set_init_image(Image.new("RGB", (64, 64)))
    i2i.prompt.value = "x"
    assert i2i.enable_hr not in _shown(i2i.widget) and i2i.request().enable_hr is False


def _shown(widget) -> list:
    """Every widget inside ``widget``."""
    found = [widget]
    for child in getattr(widget, "children", ()):
        found.extend(_shown(child))
    return found


def test_upscale_saves_the_last_result_bigger_with_its_settings(engine, tmp_path):
    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    ui.upscale_button.click()
    assert ui.upscaled == [] and "Generate an image first" in ui.status.value
    ui.prompt.value, ui.seed.value = "a lighthouse", 5
    ui.button.click()
    ui.upscale_by.value = 3
    ui.upscale_button.click()
    (path,) = ui.upscaled
    assert path.parent == tmp_path and path != ui.saved[0]
    with Image.open(path) as big, Image.open(ui.saved[0]) as small:
        assert big.size == (192, 192)
        text = read_parameters(big)
        assert text.startswith(read_parameters(small))
    assert text.endswith("Postprocess upscale by: 3, Postprocess upscaler: Lanczos")
    assert Image.open(io.BytesIO(ui.image.value)).size == (192, 192)


def test_inpaint_form_needs_a_mask_and_repaints_only_the_masked_area(engine, tmp_path):
    inp = InpaintUI(engine, tmp_path, steps=3)
    defaults = GenerationRequest.defaults()
    assert (inp.mask_blur.value, inp.fill.value, inp.only_masked.value, inp.padding.value, inp.invert.value) == (
        defaults["mask_blur"], defaults["inpainting_fill"], defaults["inpaint_full_res"],
        defaults["inpaint_full_res_padding"], defaults["inpainting_mask_invert"])
    assert dict(inp.fill.options) == {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
    init = Image.new("RGB", (64, 64), (20, 120, 220))
    inp._on_upload({"new": _png_upload(init)})
    inp.prompt.value, inp.seed.value = "a red door", 4
    inp.button.click()
    assert inp.saved == [] and "mask: upload a mask" in inp.status.value

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    inp._on_mask_upload({"new": _png_upload(mask)})
    inp.mask_blur.value, inp.fill.value, inp.invert.value = 0, 2, True  # invert: the right half is repainted
    inp.button.click()
    assert len(inp.saved) == 1, inp.status.value
    with Image.open(inp.saved[0]) as saved:
        out = saved.convert("RGB")
        text = read_parameters(saved)
    assert "Mask blur: 0" in text and "Masked content: latent noise" in text and "Mask mode: Inpaint not masked" in text
    assert out.getpixel((8, 32)) == (20, 120, 220)  # kept: the (inverted) mask's black half
    assert out.getpixel((56, 32)) != (20, 120, 220)  # repainted
    assert "-inpaint-" in inp.saved[0].name


def test_controlnet_tab_sends_its_unit_and_the_picture_records_it(engine, tmp_path):
    """The ControlNet tab (issue #25): the upload turns the unit on; the request carries it as the
    native API's unit; the saved PNG's infotext names it; untouched, the request has none."""
    from app.engine.metadata import parse_infotext

    ui = GeneratorUI(engine, tmp_path, steps=2, width=64, height=64)
    assert ui.request().controlnet == [] and not ui.controlnet.enabled.value
    assert "demo-controlnet" in ui.controlnet.model.options and ("canny", "canny") in ui.controlnet.module.options
    assert ("softedge_hed", "hed") in ui.controlnet.module.options  # the extension's labels, its names as values

    square = Image.new("RGB", (64, 64), "black")
    square.paste((255, 255, 255), (16, 16, 48, 48))
    ui.controlnet._on_upload({"new": _png_upload(square)})  # the FileUpload's change after an upload
    assert ui.controlnet.enabled.value and ui.controlnet.preview.value
    ui.controlnet.model.value = "demo-controlnet"
    ui.controlnet.weight.value = 0.5
    ui.controlnet.guidance.value = (0.0, 0.5)
    ui.prompt.value = "a box"
    ui.seed.value = 3
    (unit,) = ui.request().controlnet
    assert (unit["module"], unit["model"], unit["weight"], unit["guidance_end"]) == ("canny", "demo-controlnet", 0.5, 0.5)
    assert Image.open(io.BytesIO(base64.b64decode(unit["image"]))).size == (64, 64)

    ui.button.click()
    assert len(ui.saved) == 1, ui.status.value
    with Image.open(ui.saved[0]) as saved:
        info = parse_infotext(read_parameters(saved))
    assert "Module: canny, Model: demo-controlnet" in info["ControlNet 0"] and "Weight: 0.5" in info["ControlNet 0"]

    # A bad unit is the status line's message naming the field, nothing saved.
    ui.controlnet.module.value = "none"
    ui.controlnet.model.options = ["None"]
    ui.button.click()
    assert "controlnet[0].model" in ui.status.value and len(ui.saved) == 1


def hover(widget) -> str:
    """A widget's hover text: ``tooltip`` in ipywidgets 8, ``description_tooltip`` in 7 (Colab's)."""
    return widget.tooltip if hasattr(widget, "tooltip") else widget.description_tooltip


def test_ngms_has_its_widget_from_its_facts_and_reaches_the_picture(engine, tmp_path):
    ui = InpaintUI(engine, tmp_path)  # the subclasses' forms have it too
    ngms = ui.advanced.inputs["s_min_uncond"]
    assert (type(ngms).__name__, ngms.description, ngms.min, ngms.max, ngms.value) == (
        "BoundedFloatText", "NGMS", 0, 15, 0)
    assert "negative guidance minimum sigma" in hover(ngms)
    assert ui.advanced.widget in ui.widget.children and ui.advanced.widget.selected_index is None  # closed
    # The other flagged fields: a choice is a Dropdown, a flag a Checkbox, a number bounded by its range.
    assert ui.advanced.inputs["randn_source"].options == ("GPU", "CPU", "NV")
    assert type(ui.advanced.inputs["tiling"]).__name__ == "Checkbox"
    assert (ui.advanced.inputs["clip_skip"].min, ui.advanced.inputs["clip_skip"].max) == (1, 12)

    t2i = GeneratorUI(engine, tmp_path, steps=3, width=64, height=64)
    t2i.prompt.value = "a lighthouse"
    t2i.advanced.inputs["s_min_uncond"].value = 99  # clamped to A1111's maximum, as the page's input
    t2i.advanced.inputs["eta_noise_seed_delta"].value = 31337
    assert (t2i.request().s_min_uncond, t2i.request().eta_noise_seed_delta) == (15, 31337)
    t2i.advanced.inputs["s_min_uncond"].value = 2
    t2i.button.click()
    with Image.open(t2i.saved[0]) as saved:
        text = read_parameters(saved)
    assert "NGMS: 2" in text  # (ENSD is written for the samplers it changes only, as A1111)


def test_a_new_field_with_facts_appears_with_no_widgets_edit(engine, tmp_path, monkeypatch):
    knob = dataclasses.field(default=3, metadata=about(label="Knob", range=(1, 9), cli="--knob", help="a new knob"))
    knob.name, knob.type = "knob", "int"
    monkeypatch.setattr(widgets, "described", lambda: {**described(), "knob": (knob, knob.metadata["about"])})

    ui = GeneratorUI(engine, tmp_path)
    widget = ui.advanced.inputs["knob"]
    assert (type(widget).__name__, widget.description, widget.min, widget.max, widget.value, hover(widget)) == (
        "BoundedIntText", "Knob", 1, 9, 3, "a new knob")
    widget.value = 5
    ui.prompt.value = "a lighthouse"
    assert ui.request().knob == 5

"""ControlNet as the A1111 extension's API clients use it (issue #25): the detected maps appended after
the images of /sdapi responses, the units' effective region masks and masks, and the input images
cropped for "only masked" inpainting. The demo model with demo-controlnet (see tests/test_controlnet.py)."""
import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from app.engine.controlnet import ActiveUnit, ControlSet, encode_png, fit
from app.engine.preprocessors import run_module
from app.engine.types import ValidationError


def control_image(size=(64, 64), colour=(230, 200, 40)) -> Image.Image:
    image = Image.new("RGB", size, (20, 30, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 8, size[1] // 8, size[0] * 3 // 4, size[1] - 6), fill=colour)
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=(250, 250, 250), width=3)
    return image


def half_mask(size=(64, 64), left=True) -> Image.Image:
    """White on the left half (or the right), black elsewhere."""
    mask = Image.new("RGB", size, (0, 0, 0))
    box = (0, 0, size[0] // 2, size[1]) if left else (size[0] // 2, 0, size[0], size[1])
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    return mask


def unit(**overrides) -> dict:
    values = {"image": encode_png(control_image()), "module": "canny", "model": "demo-controlnet"}
    values.update(overrides)
    return values


def decoded(data: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return im.convert("RGB")


def hint_image(control_set, index=0) -> np.ndarray:
    """The map a pass's sampler received, as 0..255 pixels."""
    hint = control_set.units[index].hint[0].permute(1, 2, 0).numpy()
    return np.round(hint * 255).astype(np.uint8)


def txt2img(client, args, **body):
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 3,
               "alwayson_scripts": {"controlnet": {"args": args}}, **body}
    return client.post("/sdapi/v1/txt2img", json=payload)


# --- 1. detected maps ----------------------------------------------------------------------

def test_the_maps_the_sampler_used_are_the_results(engine, small_request):
    result = engine.generate(small_request(controlnet=[unit(), unit(module="none", resize_mode="Just Resize")]))
    assert len(result.control_maps) == 2
    canny = fit(run_module("canny", control_image(), -1, -1, -1), "Crop and Resize", 64, 64)
    assert np.array_equal(np.asarray(result.control_maps[0]), np.asarray(canny))
    assert np.array_equal(np.asarray(result.control_maps[1]), np.asarray(control_image()))
    for i in range(2):  # what sampling used, not a second run of the preprocessor
        assert np.array_equal(hint_image(engine.last_control, i), np.asarray(result.control_maps[i]))


def test_a_hires_run_gives_each_unit_both_maps_hires_first(engine, small_request):
    result = engine.generate(small_request(enable_hr=True, hr_scale=1.5, strength=0.5,
                                           controlnet=[unit(hr_option="Low res only")]))
    # The extension fits (and shows) both passes' maps whatever hr_option.
    assert [m.size for m in result.control_maps] == [(96, 96), (64, 64)]


def test_sdapi_appends_the_maps_after_the_images(client):
    args = [{"enabled": True, "module": "canny", "model": "demo-controlnet", "image": b64(control_image())},
            {"enabled": False, "module": "none", "model": "demo-controlnet", "image": b64(control_image())},
            {"enabled": True, "module": "none", "model": "demo-controlnet", "image": b64(control_image()),
             "save_detected_map": False},
            {"enabled": True, "module": "none", "model": "demo-controlnet", "image": b64(control_image()),
             "resize_mode": "Just Resize"}]
    response = txt2img(client, args, batch_size=2)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    info = json.loads(body["info"])
    assert len(info["all_seeds"]) == 2 and len(body["images"]) == 2 + 2  # 2 pictures, then 2 maps
    maps = [decoded(x) for x in body["images"][2:]]
    canny = fit(run_module("canny", control_image(), -1, -1, -1), "Crop and Resize", 64, 64)
    assert np.array_equal(np.asarray(maps[0]), np.asarray(canny))
    assert np.array_equal(np.asarray(maps[1]), np.asarray(control_image()))
    # The extension's setting turns them off: per request, or for the server through /sdapi/v1/options.
    response = txt2img(client, args, override_settings={"control_net_no_detectmap": True})
    assert response.status_code == 200 and len(response.get_json()["images"]) == 1
    assert client.get("/sdapi/v1/options").get_json()["control_net_no_detectmap"] is False
    assert client.post("/sdapi/v1/options", json={"control_net_no_detectmap": True}).status_code == 200
    assert client.get("/sdapi/v1/options").get_json()["control_net_no_detectmap"] is True
    assert len(txt2img(client, args).get_json()["images"]) == 1
    bad = client.post("/sdapi/v1/options", json={"control_net_no_detectmap": "yes"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "control_net_no_detectmap"
    # The native API's job shows only the pictures.
    job = client.get("/api/jobs").get_json()["jobs"][0]
    assert len(job["images"]) == 1


def test_bad_override_is_400_before_anything_runs(client):
    response = txt2img(client, [unit()], override_settings={"control_net_no_detectmap": "no"})
    assert response.status_code == 400
    assert response.get_json()["field"] == "override_settings.control_net_no_detectmap"
    assert client.get("/api/jobs").get_json()["jobs"] == []


# --- 2. effective region masks and unit masks ----------------------------------------------

def test_residuals_are_zero_outside_the_effective_region(engine):
    model = engine.controlnets.get("demo-controlnet")
    hint = torch.rand(1, 3, 64, 64)
    region = torch.from_numpy(np.asarray(half_mask(), dtype=np.float32)[..., 0] / 255.0)[None, None]

    def residuals(mask):
        units = ControlSet([ActiveUnit(model, hint, 0.8, 0.0, 1.0, "Balanced", "none", mask)])
        x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0, 500.0])
        cond = torch.randn(2, 77, engine.pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            down, mid = units.residuals(x, t, cond, torch.tensor([True, False]))
        return down + [mid]

    whole, limited = residuals(None), residuals(region)
    for full, part in zip(whole, limited):
        width = full.shape[-1]
        if width >= 2:  # the mask's left half, resized bilinearly: exactly the left half of each residual
            assert part[..., width // 2:].abs().max() == 0
            torch.testing.assert_close(part[..., : width // 2], full[..., : width // 2])
            assert full[..., width // 2:].abs().max() > 0
        else:  # 1x1: the bilinear sample falls on the edge between the halves
            torch.testing.assert_close(part, full * 0.5)


def test_an_effective_region_mask_reaches_the_sampler(engine, small_request, monkeypatch):
    seen = []
    original = ControlSet.residuals

    def record(self, *args):
        out = original(self, *args)
        if out is not None:
            seen.append(out[0] + [out[1]])
        return out

    monkeypatch.setattr(ControlSet, "residuals", record)
    engine.generate(small_request(controlnet=[unit(effective_region_mask=encode_png(half_mask(left=False)))]))
    assert seen
    for residuals in seen:
        for r in residuals:
            if r.shape[-1] >= 2:
                assert r[..., : r.shape[-1] // 2].abs().max() == 0


def test_a_unit_mask_is_read_as_the_extension_reads_it(engine, small_request):
    # Not all black or all white: the mask is the input (the extension's "canvas scribble").
    scribble = engine.generate(small_request(controlnet=[unit(module="none", mask=encode_png(half_mask()))]))
    assert np.array_equal(np.asarray(scribble.control_maps[0]), np.asarray(half_mask()))
    # All white (or all black): the image itself.
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    plain = engine.generate(small_request(controlnet=[unit(module="none", mask=encode_png(white))]))
    assert np.array_equal(np.asarray(plain.control_maps[0]), np.asarray(control_image()))


@pytest.mark.parametrize("change,field", [
    ({"mask": encode_png(half_mask((32, 32)))}, "controlnet[0].mask"),  # not the image's size
    ({"image": None, "mask": encode_png(half_mask())}, "controlnet[0].mask"),  # the init image takes none
    ({"effective_region_mask": 5}, "controlnet[0].effective_region_mask"),
    ({"save_detected_map": "no"}, "controlnet[0].save_detected_map"),
    ({"inpaint_crop_input_image": 1}, "controlnet[0].inpaint_crop_input_image"),
])
def test_bad_masks_and_flags_name_the_field(small_request, change, field):
    with pytest.raises(ValidationError) as info:
        small_request(init_image=control_image(), controlnet=[unit(**change)]).validate()
    assert info.value.field == field


def test_sdapi_takes_the_extensions_mask_fields(client):
    base = {"enabled": True, "module": "none", "model": "demo-controlnet", "image": b64(control_image())}
    for extra in ({"mask_image": b64(half_mask())}, {"mask": b64(half_mask()), "mask_image": None},
                  {"image": {"image": b64(control_image()), "mask": b64(half_mask())}},
                  {"effective_region_mask": b64(half_mask())}):
        response = txt2img(client, [{**base, **extra}])
        assert response.status_code == 200, (extra.keys(), response.get_json())
        if "effective_region_mask" not in extra:  # the mask was the input: its map is the mask
            assert np.array_equal(np.asarray(decoded(response.get_json()["images"][1])), np.asarray(half_mask()))
    both = txt2img(client, [{**base, "mask": b64(half_mask()), "mask_image": b64(half_mask())}])
    assert both.status_code == 400 and both.get_json()["field"] == "controlnet[0].mask_image"
    small = txt2img(client, [{**base, "mask": b64(half_mask((32, 32)))}])
    assert small.status_code == 400 and small.get_json()["field"] == "controlnet[0].mask"


# --- 3. only-masked inpainting -------------------------------------------------------------

def only_masked(**overrides):
    """A 128x128 init image, its mask the square 40..72, inpainted "only masked" at 64x64 (mask blur 0,
    padding 8): the crop box is (32, 32, 80, 80), already square."""
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((40, 40, 71, 71), fill=255)
    return dict(init_image=control_image((128, 128), colour=(40, 200, 230)), mask=mask, inpaint_full_res=True,
                inpaint_full_res_padding=8, mask_blur=0, strength=0.6, **overrides)


def test_only_masked_inpainting_crops_the_units_input_to_the_crop_box(engine, small_request):
    own = control_image((128, 128))
    result = engine.generate(small_request(**only_masked(), controlnet=[
        unit(module="none", image=encode_png(own), resize_mode="Just Resize"),
        unit(module="none", image=None),  # the init image
        unit(module="none", image=encode_png(own), inpaint_crop_input_image=False)]))
    box = (32, 32, 80, 80)
    expected = [own.crop(box).resize((64, 64), Image.Resampling.LANCZOS),
                only_masked()["init_image"].crop(box).resize((64, 64), Image.Resampling.LANCZOS),
                fit(own, "Crop and Resize", 64, 64)]  # the whole image, as before
    for i, want in enumerate(expected):
        assert np.array_equal(hint_image(engine.last_control, i), np.asarray(want)), i
        assert np.array_equal(np.asarray(result.control_maps[i]), np.asarray(want)), i


def test_a_unit_image_of_another_size_is_fitted_to_the_init_image_first(engine, small_request):
    own = control_image((64, 96))  # "Crop and Resize" to 128x128 first, as the extension does, then cropped
    engine.generate(small_request(**only_masked(), controlnet=[unit(module="none", image=encode_png(own))]))
    want = fit(own, "Crop and Resize", 128, 128).crop((32, 32, 80, 80)).resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(hint_image(engine.last_control), np.asarray(want))


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()

"""Every bad parameter is refused before any work, with the field and value named."""
import pytest
from PIL import Image

from app.engine.types import GenerationRequest, Limits, ValidationError

BAD = [
    ("prompt", "", "must not be empty"),
    ("prompt", "   ", "must not be empty"),
    ("prompt", 42, "must be a string"),
    ("prompt", "x" * 5000, "limit is 4000"),
    ("negative_prompt", None, "must be a string"),
    ("width", 770, "multiple of 8"),
    ("width", 0, "between 64 and 2048"),
    ("width", 4096, "between 64 and 2048"),
    ("width", "768", "must be an integer"),
    ("width", 768.0, "must be an integer"),
    ("height", 100, "multiple of 8"),
    ("height", True, "must be an integer"),
    ("steps", 0, "between 1 and 150"),
    ("steps", 151, "between 1 and 150"),
    ("steps", 2.5, "must be an integer"),
    ("guidance_scale", -1, "between 0 and 30"),
    ("guidance_scale", float("nan"), "must be a number"),
    ("guidance_scale", "7", "must be a number"),
    ("seed", -2, "or -1 for random"),
    ("seed", 2**32, "or -1 for random"),
    ("seed", "1", "must be an integer"),
    ("scheduler", "DPM++ 9000", "is not one of DPM++ 2M"),
    ("scheduler", None, "is not one of"),
    ("num_images", 0, "between 1 and 8"),
    ("num_images", 9, "between 1 and 8"),
    ("strength", -0.1, "between 0 and 1"),
    ("strength", 1.5, "between 0 and 1"),
    ("eta", 2, "between 0 and 1"),
    ("randn_source", "TPU", "GPU, CPU, NV"),
    ("clip_skip", 0, "between 1 and 12"),
    ("init_image", "not an image", "must be an image"),
    ("save_steps", -1, "positive step interval"),
]


def validation_error(field: str, value) -> ValidationError:
    """The error validating a request whose ``field`` is ``value`` raises."""
    request = GenerationRequest(prompt="a fox")
    setattr(request, field, value)
    with pytest.raises(ValidationError) as err:
        request.validate()
    return err.value


@pytest.mark.parametrize("field,value,message", BAD, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD])
def test_bad_field_is_named_with_its_value(field, value, message):
    error = validation_error(field, value)
    assert error.field == field
    assert message in error.message
    # An image is named by its type, not dumped.
    shown = type(value).__name__ if field == "init_image" else value
    assert field in str(error) and repr(shown)[:20] in str(error)
    assert error.to_dict()["field"] == field


def test_pixel_limit_counts_both_sides():
    request = GenerationRequest(prompt="a fox", width=1024, height=1024)
    with pytest.raises(ValidationError, match="more than 65536 pixels"):
        request.validate(Limits(max_pixels=256 * 256))


def test_init_image_pixel_limit():
    request = GenerationRequest(prompt="a fox", init_image=Image.new("RGB", (300, 300)))
    with pytest.raises(ValidationError) as err:
        request.validate(Limits(max_pixels=256 * 256))
    assert err.value.field == "init_image" and "300x300" in str(err.value)


def test_img2img_always_runs_a1111s_step_and_unipc_needs_its_order():
    # A1111: t_enc = int(strength x steps), then t_enc + 1 sampler steps, so even strength 0.1 of 2 runs one.
    GenerationRequest(prompt="a fox", steps=2, strength=0.1, init_image=Image.new("RGB", (64, 64))).validate()
    request = GenerationRequest(prompt="a fox", steps=10, strength=0.2, scheduler="UniPC",
                                init_image=Image.new("RGB", (64, 64)))
    with pytest.raises(ValidationError) as err:
        request.validate()
    assert err.value.field == "strength" and "UniPC" in err.value.message


def test_good_request_is_normalised():
    request = GenerationRequest(prompt="a fox", seed=-1, scheduler="euler A").validate()
    assert request.seed is None  # -1 means random, as in A1111
    assert request.scheduler == "Euler a"


def test_engine_validates_the_size_it_picks(engine):
    # An init image too small for the limits fails on the derived width, before any step runs.
    request = GenerationRequest(prompt="a fox", init_image=Image.new("RGB", (40, 40)), steps=2, strength=1.0)
    with pytest.raises(ValidationError) as err:
        engine.generate(request, on_step=lambda s: pytest.fail("no step may run"))
    assert err.value.field == "width" and err.value.value == 40


TEXT_BAD = [
    ("prompt", "a\x00fox", "control character (U+0000) at position 1"),
    ("prompt", "a fox\x1b[31m", "control character (U+001B)"),
    ("negative_prompt", "blur\x7f", "control character (U+007F)"),
    ("prompt", "a\ud800fox", "lone surrogate (U+D800)"),
    ("negative_prompt", "\udfff", "lone surrogate (U+DFFF)"),
    ("prompt", "a fox\nNegative prompt: ugly", "must not contain 'Negative prompt:'"),
    ("negative_prompt", "blur, Negative prompt: x", "must not contain 'Negative prompt:'"),
]


@pytest.mark.parametrize("field,value,message", TEXT_BAD, ids=[f"{f}={v!r}"[:40] for f, v, _ in TEXT_BAD])
def test_prompts_the_png_cannot_carry_are_refused(field, value, message):
    error = validation_error(field, value)
    assert error.field == field and message in error.message


def test_tabs_newlines_and_other_scripts_are_fine():
    request = GenerationRequest(prompt="a fox\tin snow\r\nby night, 狐, \u2603", negative_prompt="blur\nnegative prompt")
    assert request.validate() is request

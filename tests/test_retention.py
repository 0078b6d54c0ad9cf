"""Retention and deleting: KEEP_IMAGES and KEEP_DAYS delete the oldest
finished jobs with their images (never a queued or running one), and
``DELETE /api/jobs/<id>`` deletes one. The backends' own cases are in the
contract (tests/test_backend_contract.py); these are what a user of the web
app sees: statuses, the error shape and the files on disk."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.jobs.job import Job
from app.jobs.retention import expired
from helpers import assert_error, backend_of, small_job, wait_for, wait_job


def finished_job(n: int, images: int, days_ago: float, now: datetime) -> Job:
    at = (now - timedelta(days=days_ago)).isoformat()
    return Job(id=f"{n:032x}", state="done" if images else "failed", client="me", params={},
               images=[{"n": i} for i in range(images)], created_at=at, finished_at=at)


def test_expired_takes_the_oldest_first_by_count_and_by_age():
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    newest_first = [finished_job(4, 2, 0.5, now), finished_job(3, 0, 1, now), finished_job(2, 2, 3, now),
                    finished_job(1, 1, 9, now)]
    ids = lambda jobs: [int(job.id, 16) for job in jobs]  # noqa: E731
    assert ids(expired(newest_first, keep_images=3, at=now)) == [1, 2]  # 2 + 0 images kept, the 2-image job is over
    assert ids(expired(newest_first, keep_images=4, at=now)) == [1]
    assert ids(expired(newest_first, keep_days=2, at=now)) == [1, 2]
    assert ids(expired(newest_first, keep_images=5, keep_days=7, at=now)) == [1]
    assert expired(newest_first, at=now) == []  # 0 and 0: keep everything
    fresh = [finished_job(5, 3, 0.001, now), *newest_first]  # finished 90 s ago: inside the grace
    assert ids(expired(fresh, keep_images=1, at=now)) == [1, 2, 3, 4]  # the fresh job stays, over the limit or not
    assert ids(expired(fresh, keep_images=1, at=now, grace=timedelta(0))) == [1, 2, 3, 4, 5]


def test_keep_images_deletes_the_oldest_jobs_and_their_files_after_each_job(make_app):

    app = make_app(KEEP_IMAGES=2)
    backend_of(app).keep_grace = timedelta(0)  # the fresh-result grace would keep all three for 10 minutes
    client = app.test_client()
    images = Path(app.instance_path) / "images"
    ids = []
    for seed in range(3):
        ids.append(client.post("/api/jobs", json=small_job(seed=seed)).get_json()["job"]["id"])
        assert wait_job(client, ids[-1])["state"] == "done"
    wait_for(lambda: not (images / ids[0]).exists(), 10, "the oldest job's images to be deleted")
    assert_error(client.get(f"/api/jobs/{ids[0]}"), 404, "id")
    assert_error(client.get(f"/images/{ids[0]}/0.png"), 404)
    assert [job["id"] for job in client.get("/api/jobs").get_json()["jobs"]] == ids[:0:-1]
    assert sorted(path.name for path in images.iterdir()) == sorted(ids[1:])


def test_delete_a_job_409_while_unfinished_404_when_unknown_200_when_finished(make_app):
    app = make_app(START_WORKER=False)  # nothing runs: the job stays queued until we run it
    client = app.test_client()
    backend = backend_of(app)
    job_id = client.post("/api/jobs", json=small_job()).get_json()["job"]["id"]

    body = assert_error(client.delete(f"/api/jobs/{job_id}"), 409, "id")
    assert body["error"] == "the job is queued: cancel it first, then delete it"
    assert_error(client.delete(f"/api/jobs/{'f' * 32}"), 404, "id")

    assert backend.worker.run_once()
    done = client.get(f"/api/jobs/{job_id}").get_json()["job"]
    image = Path(app.instance_path) / "images" / job_id / "0.png"
    assert done["state"] == "done" and image.is_file()
    response = client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 200 and response.get_json() == {"ok": True, "deleted": job_id}
    assert not image.parent.exists()
    assert_error(client.get(f"/api/jobs/{job_id}"), 404, "id")
    assert_error(client.get(done["images"][0]["url"]), 404)
    assert_error(client.delete(f"/api/jobs/{job_id}"), 404, "id")


def test_the_gallery_offers_a_delete_button_per_job(make_app):
    app = make_app()
    client = app.test_client()
    client.get("/")  # a browser: the page gives it its client id, so its jobs are its own
    job_id = client.post("/api/jobs", json=small_job()).get_json()["job"]["id"]
    wait_job(client, job_id)
    page = client.get("/gallery").get_data(as_text=True)
    assert f'data-delete-job="{job_id}"' in page and "onclick" not in page
    other = app.test_client().get("/gallery").get_data(as_text=True)  # another browser sees the image, not the button
    assert job_id in other and f'data-delete-job="{job_id}"' not in other


def test_a_fresh_result_outlives_a_small_keep_images(make_app):
    """A synchronous /sdapi call gets its images even when the job alone is over KEEP_IMAGES
    (retention deleted it as it finished: the caller got 504 'still queued')."""
    app = make_app(KEEP_IMAGES=1)
    client = app.test_client()
    for _ in range(2):
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "two foxes", "width": 64, "height": 64,
                                                         "steps": 2, "batch_size": 2})
        assert answer.status_code == 200, answer.get_json()
        assert len(answer.get_json()["images"]) == 2

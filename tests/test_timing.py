"""Speed and time left in the job JSON (app/web/timing.py): measured on
finished jobs of the same size, summed over the jobs ahead in the queue."""
from __future__ import annotations

import pytest

from helpers import run_job


@pytest.fixture
def app(make_app):
    return make_app(START_WORKER=False)


def submit(client, **params) -> dict:
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, **params}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job"]


def test_no_eta_before_any_job_has_finished(app, client):
    job = submit(client)
    assert job["eta_seconds"] is None and job["its"] is None


def test_queued_jobs_get_an_eta_that_adds_up_the_jobs_ahead(app, client):
    done = run_job(app, client, steps=4)
    assert done["its"] > 0 and done["eta_seconds"] is None
    # 40 steps: estimates well above the 0.1 s they are rounded to, even on a fast machine.
    first, second = submit(client, steps=40), submit(client, steps=40)
    jobs = {j["id"]: j for j in client.get("/api/jobs?state=queued").get_json()["jobs"]}
    eta1, eta2 = jobs[first["id"]]["eta_seconds"], jobs[second["id"]]["eta_seconds"]
    assert 0 < eta1 < eta2
    # Same size and steps: the second waits for the first, so about twice as long (rounding aside).
    assert eta2 == pytest.approx(2 * eta1, rel=0.05, abs=0.2)
    # A bigger size is estimated from the measured one, by pixels.
    big = submit(client, width=128, height=128, steps=40)
    assert client.get(f"/api/jobs/{big['id']}").get_json()["job"]["eta_seconds"] > eta2

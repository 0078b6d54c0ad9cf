"""GET /api/queue: the one answer the page's header, strip and jobs panel all show (issue #27),
so their numbers agree: the whole queue in run order, the caller's jobs, the counts and how
many jobs run before the caller's next one, all from one read of the backend."""
from __future__ import annotations

import pytest

from helpers import assert_error, backend_of, small_job


def as_client(app, name: str):
    """A test client that the server knows as ``name`` (an API key's hash names a client)."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {name}"}

    class Named:
        def get(self, url):
            return client.get(url, headers=headers)

        def submit(self, prompt):
            response = client.post("/api/jobs", json=small_job(prompt=prompt), headers=headers)
            assert response.status_code == 202, response.get_json()
            return response.get_json()["job"]["id"]

    return Named()


@pytest.fixture
def idle(make_app):
    """An app whose worker does not run: jobs stay queued until the test claims them."""
    return make_app(START_WORKER=False)


def test_the_queue_answer_counts_positions_and_the_callers_jobs(idle):
    alice, bob = as_client(idle, "alice"), as_client(idle, "bob")
    a1, a2 = alice.submit("alice one"), alice.submit("alice two")
    b1 = bob.submit("bob one")
    a3 = alice.submit("alice three")

    body = bob.get("/api/queue").get_json()
    assert (body["ok"], body["queued"], body["running"], body["ahead"]) == (True, 4, 0, 2)
    assert [(j["id"], j["state"], j["position"], j["mine"]) for j in body["jobs"]] == [
        (a1, "queued", 1, False), (a2, "queued", 2, False), (b1, "queued", 3, True), (a3, "queued", 4, False)]
    assert [j["id"] for j in body["mine"]] == [b1] and body["mine"][0]["params"]["prompt"] == "bob one"
    others = [j for j in body["jobs"] if not j["mine"]]
    assert all(j["params"] is None and j["preview_url"] is None and j["images"] == [] for j in others)

    # The first job runs, then ends: the counts, positions and "ahead" move together.
    store = backend_of(idle).store
    assert store.claim().id == a1
    body = bob.get("/api/queue").get_json()
    assert (body["queued"], body["running"], body["ahead"]) == (3, 1, 2)
    assert [(j["id"], j["state"], j["position"]) for j in body["jobs"]][:2] == [(a1, "running", None), (a2, "queued", 1)]
    store.finish(a1, [{"n": 0, "seed": 1, "infotext": "x"}])
    body = alice.get("/api/queue").get_json()
    assert (body["queued"], body["running"], body["ahead"]) == (3, 0, 0)
    # Alice's: her unfinished jobs in run order, then her finished ones.
    assert [(j["id"], j["state"], j["position"]) for j in body["mine"]] == [
        (a2, "queued", 1), (a3, "queued", 3), (a1, "done", None)]
    assert body["mine"][2]["images"][0]["url"] == f"/images/{a1}/0.png"
    # The header's count on other pages (/api/health) is the same.
    assert idle.test_client().get("/api/health").get_json()["queue"] == {"queued": 3, "running": 0}

    # ``limit`` caps the finished jobs only: unfinished ones always come.
    assert [j["id"] for j in alice.get("/api/queue?limit=0").get_json()["mine"]] == [a2, a3]
    assert bob.get("/api/queue").get_json()["ahead"] == 1  # with nobody running, one queued job first


def test_a_client_with_nothing_queued_has_nothing_ahead(idle):
    body = as_client(idle, "carol").get("/api/queue").get_json()
    assert body == {"ok": True, "queued": 0, "running": 0, "ahead": None, "jobs": [], "mine": []}


@pytest.mark.parametrize("limit", ["-1", "101", "ten"])
def test_a_bad_limit_is_named(idle, limit):
    assert_error(as_client(idle, "dave").get(f"/api/queue?limit={limit}"), 400, "limit")


def test_the_view_reads_the_queue_once_and_it_wins(idle, small_request):
    """A job that ends between the store's two reads shows as the queue read has it (still running),
    and one queued between them waits for the next view: nothing is counted twice or missed."""
    from app.jobs.base import JobStore

    store = backend_of(idle).store
    alice = as_client(idle, "alice")
    first = alice.submit("first")
    client = store.get(first).client
    assert store.claim().id == first
    reads = []
    real_list = type(store).list

    def list_then_change(self, *args, **kwargs):
        jobs = real_list(self, *args, **kwargs)
        if not reads:  # between the two reads: the running job ends, a new one is queued
            store.finish(first, [{"n": 0, "seed": 1, "infotext": "x"}])
            store.submit(small_request(prompt="second"), client)
        reads.append(kwargs)
        return jobs

    type(store).list = list_then_change
    try:
        view = JobStore.queue_view(store, client)
    finally:
        type(store).list = real_list
    assert len(reads) == 2
    assert [(j.id, j.state) for j in view.active] == [(first, "running")]
    assert [(j.id, j.state) for j in view.mine] == [(first, "running")]
    assert view.counts == {"queued": 0, "running": 1} and view.ahead is None

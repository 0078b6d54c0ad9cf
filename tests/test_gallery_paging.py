"""The gallery's paging parameters (issue #27): ``limit`` and the ``before`` cursor on
/gallery (which static/gallery.js follows on scroll) and /api/jobs, a 400 naming
the field for a bad value, the page size kept in the "Older" link."""
from __future__ import annotations

import pytest

from helpers import Page, assert_error, run_job


@pytest.fixture
def app(make_app):
    return make_app(START_WORKER=False)


@pytest.mark.parametrize("query, field", [
    ("limit=abc", "limit"), ("limit=0", "limit"), ("limit=101", "limit"), ("limit=-3", "limit"),
    ("before=../../etc", "before"), ("before=ABCDEF", "before"), ("before=" + "g" * 32, "before"),
])
def test_bad_paging_values_are_a_400_naming_the_field(client, query, field):
    assert_error(client.get(f"/gallery?{query}", headers={"Accept": "application/json"}), 400, field)
    if field == "before" or query != "limit=101":  # /api/jobs allows up to 200 a page
        assert_error(client.get(f"/api/jobs?{query}"), 400, field)
    assert_error(client.get("/api/jobs?limit=201"), 400, "limit")


def shown_prompts(html: str) -> list[str]:
    return [a["alt"] for a in Page(html).all("img") if a.get("src", "").startswith("/images/")]


def test_the_gallery_pages_by_limit_and_cursor(app, client):
    for n in range(5):
        run_job(app, client, prompt=f"picture {n}")
    html = client.get("/gallery?limit=2").get_data(as_text=True)
    assert shown_prompts(html) == ["picture 4", "picture 3"]
    older = Page(html).by_id["older"]["href"]
    assert "limit=2" in older  # the next page has the same size
    html = client.get(older).get_data(as_text=True)
    assert shown_prompts(html) == ["picture 2", "picture 1"]
    html = client.get(Page(html).by_id["older"]["href"]).get_data(as_text=True)
    assert shown_prompts(html) == ["picture 0"] and "older" not in Page(html).by_id
    # A well-formed id that names no job: an empty page, not an error.
    response = client.get("/gallery?before=" + "0" * 32)
    assert response.status_code == 200 and shown_prompts(response.get_data(as_text=True)) == []
    assert client.get("/api/jobs?before=" + "0" * 32).get_json()["jobs"] == []

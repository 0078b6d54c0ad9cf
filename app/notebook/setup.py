"""The notebooks' install step, run right after the cell that clones the
project: go to the project folder and pip-install only what the engine needs
and the runtime lacks.

Two kinds of packages are never installed or upgraded:

- torch: Colab's preinstalled CUDA build satisfies ``requirements.txt``, and
  a pip resolve that pulled in another torch would download gigabytes and
  could lose CUDA.
- Colab's front end (``FRONT_END``): ipywidgets, the notebook and Jupyter
  packages, IPython, tornado. Colab renders widgets with its own frontend,
  built for the ipywidgets it ships (7.7.1); an upgraded ipywidgets renders
  nothing there. The project's code supports what is installed instead
  (``requirements.txt`` asks only for ``ipywidgets>=7.7``).

Every install runs with a constraint file that pins the installed versions
of both kinds, so no dependency drags them up either. The cell says what was
installed and what was upgraded, from which version. ``requirements-no-deps.txt``
(spandrel) is installed after them with ``--no-deps``: it declares a torchvision
it does not need here (see that file).

Runs before the requirements are installed, so it imports only the standard
library and ``packaging`` (in Colab, and pip's own dependency everywhere).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement

from app.notebook.tunnel import in_colab

NO_DEPS = "requirements-no-deps.txt"  # installed after requirements.txt, without their dependencies
KEEP = ("torch",)  # never installed by the notebooks: keep the runtime's build
# What Colab's front end (widget rendering, the kernel, the notebook server) depends on.
FRONT_END = ("ipywidgets", "widgetsnbextension", "jupyterlab-widgets", "ipykernel", "ipython", "jupyter-client",
             "jupyter-core", "jupyter-server", "notebook", "jupyterlab", "nbformat", "traitlets", "tornado",
             "pyzmq", "google-colab")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@dataclass
class Plan:
    """What the install step will do with each requirement."""

    install: list[str] = field(default_factory=list)  # not installed yet
    upgrade: list[tuple[str, str]] = field(default_factory=list)  # (requirement, version installed now)
    kept: list[tuple[str, str]] = field(default_factory=list)  # front-end packages left as they are

    @property
    def to_pip(self) -> list[str]:
        return self.install + [requirement for requirement, _ in self.upgrade]

    def lines(self) -> list[str]:
        """What the cell prints."""
        if not self.to_pip and not self.kept:
            return ["All requirements are already installed."]
        out = []
        if self.install:
            out.append("Installing: " + ", ".join(self.install))
        if self.upgrade:
            out.append("Upgrading: " + ", ".join(f"{req} (was {old})" for req, old in self.upgrade))
        for req, old in self.kept:
            out.append(f"Keeping Colab's {Requirement(req).name} {old} (the notebook's front end needs it; "
                       f"the project asks for {req})")
        return out


def _requirements(path: str | os.PathLike) -> list[Requirement]:
    reqs = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            if req.marker and not req.marker.evaluate():
                continue
            reqs.append(req)
    return reqs


def plan_install(path: str | os.PathLike = "requirements.txt") -> Plan:
    """Sort the requirements in ``path`` into: satisfied (left out), to
    install, to upgrade, and front-end packages kept although they do not
    satisfy it. torch is left out whatever its version. Options lines
    (``-r``, ``-c``...) and requirements whose marker does not apply here
    are skipped."""
    plan = Plan()
    front_end = {canonical(name) for name in FRONT_END}
    for req in _requirements(path):
        if req.name in KEEP:
            continue
        have = installed_version(req.name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if have is None:
            plan.install.append(str(req))
        elif canonical(req.name) in front_end:
            plan.kept.append((str(req), have))
        else:
            plan.upgrade.append((str(req), have))
    return plan


def missing_requirements(path: str | os.PathLike = "requirements.txt") -> list[str]:
    """The requirements in ``path`` pip will be asked for (see plan_install)."""
    return plan_install(path).to_pip


def pinned() -> list[str]:
    """``name==version`` for torch and every installed front-end package: the
    constraint every install runs with."""
    pins = []
    for name in (*KEEP, *FRONT_END):
        have = installed_version(name)
        if have is not None:
            pins.append(f"{name}=={have}")
    return pins


def install_missing(path: str | os.PathLike = "requirements.txt", *, say: Callable[[str], None] = print,
                    run: Callable[..., object] = subprocess.run, no_deps: bool = False) -> list[str]:
    """pip-install what ``plan_install`` finds, with torch and the front end
    pinned so that nothing pulls in another build (``no_deps``: the packages
    alone). Says what it does and returns the requirements passed to pip
    (``run`` stands in for ``subprocess.run`` in tests)."""
    plan = plan_install(path)
    for line in plan.lines():
        say(line)
    if not plan.to_pip:
        return []
    constraint = os.path.join(tempfile.gettempdir(), "keep-torch.txt")
    with open(constraint, "w", encoding="utf-8") as f:
        f.write("".join(pin + "\n" for pin in pinned()))
    options = ["--no-deps"] if no_deps else []
    run([sys.executable, "-m", "pip", "install", "-q", *options, "-c", constraint, *plan.to_pip], check=True)
    return plan.to_pip


@dataclass
class Setup:
    """What the set-up cell leaves behind for the cells after it."""

    repo_dir: Path  # the project folder, now the working directory
    in_colab: bool
    installed: list[str] = field(default_factory=list)  # requirements pip was asked to install


# Library notices that print red in the notebooks' cells but ask nothing of a
# user there: (logger, words in the message). transformers falls back to the
# PIL image processors because the notebooks install no torchvision (on
# purpose: requirements-no-deps.txt); diffusers' ``ModelMixin.to`` warns on
# every cast to a dtype, even of a model with no fp32-only modules (it lists
# ``[]``), and the engine casts models to the chosen dtype. Other records from
# these loggers still show.
QUIETED = (
    ("transformers.utils.import_utils", "requires torchvision"),
    ("diffusers.models.modeling_utils", "should be kept in float32"),
)


class _Quiet(logging.Filter):
    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


def quiet_library_notices() -> None:
    """Drop the ``QUIETED`` records where they are logged (idempotent)."""
    for name, words in QUIETED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) and f.words == words for f in logger.filters):
            logger.addFilter(_Quiet(words))


def prepare(repo_dir: str | os.PathLike = ".", *, say: Callable[[str], None] = print,
            run: Callable[..., object] = subprocess.run) -> Setup:
    """Make ``repo_dir`` (the cloned or current project folder) the working
    directory and importable, then install its missing requirements."""
    folder = Path(repo_dir).resolve()
    os.chdir(folder)
    if str(folder) not in {os.path.abspath(entry) for entry in sys.path}:
        sys.path.insert(0, str(folder))
    quiet_library_notices()
    installed = install_missing(folder / "requirements.txt", say=say, run=run)
    if (folder / NO_DEPS).is_file() and missing_requirements(folder / NO_DEPS):
        installed += install_missing(folder / NO_DEPS, say=say, run=run, no_deps=True)
    return Setup(folder, in_colab(), installed)


__all__ = ["FRONT_END", "KEEP", "NO_DEPS", "Plan", "Setup", "install_missing", "missing_requirements", "pinned",
           "plan_install", "prepare", "quiet_library_notices"]

"""The notebooks' install step, run right after the cell that clones the
project: go to the project folder and pip-install only the requirements
that are missing.

torch is never installed or upgraded: Colab's preinstalled CUDA build
satisfies ``requirements.txt``, and a pip resolve that pulled in another
torch would download gigabytes and could lose CUDA. Other installs run with
a constraint that pins the torch already there.

Runs before the requirements are installed, so it imports only the standard
library and ``packaging`` (in Colab, and pip's own dependency everywhere).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement

from app.notebook.tunnel import in_colab

KEEP = ("torch",)  # never installed by the notebooks: keep the runtime's build


@dataclass
class Setup:
    """What the set-up cell leaves behind for the cells after it."""

    repo_dir: Path  # the project folder, now the working directory
    in_colab: bool
    installed: list[str] = field(default_factory=list)  # requirements pip was asked to install


def missing_requirements(path: str | os.PathLike = "requirements.txt") -> list[str]:
    """Requirements in ``path`` not already satisfied (torch excluded: keep
    Colab's CUDA build). Options lines (``-r``, ``-c``...) and requirements
    whose marker does not apply here are skipped."""
    missing = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            if req.name in KEEP or (req.marker and not req.marker.evaluate()):
                continue
            try:
                if req.specifier.contains(version(req.name), prereleases=True):
                    continue
            except PackageNotFoundError:
                pass
            missing.append(str(req))
    return missing


def install_missing(path: str | os.PathLike = "requirements.txt", *, say: Callable[[str], None] = print,
                    run: Callable[..., object] = subprocess.run) -> list[str]:
    """pip-install what ``missing_requirements`` finds, with the installed
    torch pinned so that nothing pulls in another build. Returns what was
    installed (``run`` stands in for ``subprocess.run`` in tests)."""
    to_install = missing_requirements(path)
    if not to_install:
        say("All requirements are already installed.")
        return []
    say("Installing: " + ", ".join(to_install))
    # The constraint pins the installed torch, so nothing pulls in another build.
    constraint = os.path.join(tempfile.gettempdir(), "keep-torch.txt")
    with open(constraint, "w", encoding="utf-8") as f:
        f.write(f"torch=={version('torch')}\n")
    run([sys.executable, "-m", "pip", "install", "-q", "-c", constraint, *to_install], check=True)
    return to_install


def prepare(repo_dir: str | os.PathLike = ".", *, say: Callable[[str], None] = print,
            run: Callable[..., object] = subprocess.run) -> Setup:
    """Make ``repo_dir`` (the cloned or current project folder) the working
    directory and importable, then install its missing requirements."""
    folder = Path(repo_dir).resolve()
    os.chdir(folder)
    if str(folder) not in {os.path.abspath(entry) for entry in sys.path}:
        sys.path.insert(0, str(folder))
    installed = install_missing(folder / "requirements.txt", say=say, run=run)
    return Setup(folder, in_colab(), installed)


__all__ = ["KEEP", "Setup", "install_missing", "missing_requirements", "prepare"]

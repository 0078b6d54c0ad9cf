"""Point the notebooks and README's Colab badges at the project's GitHub
repository (``python -m app notebooks --repo OWNER/NAME``): the notebooks'
``REPO_URL`` form field (used only when a notebook is opened without the
project around it) and every "Open in Colab" link."""
from __future__ import annotations

import json
import re
from pathlib import Path

NOTEBOOKS = ("text_to_image_generator.ipynb", "text_to_image_generator_app.ipynb")
REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
# The repository part of the links, whatever it is now (OWNER/REPO at first).
_COLAB_LINK = re.compile(r"(https://colab\.research\.google\.com/github/)[^/\s)\"']+/[^/\s)\"']+/blob/[^/\s)\"']+/")
_REPO_URL = re.compile(r'^(REPO_URL = ")[^"]*(")', re.M)


def check_repo(repo: str) -> str:
    """``repo`` if it looks like ``owner/name``; ValueError naming it otherwise."""
    repo = repo.strip().removeprefix("https://github.com/").removesuffix(".git").strip("/")
    if not REPO.match(repo) or repo.endswith((".", "/")):
        raise ValueError(f"repo: must look like OWNER/NAME (got {repo!r})")
    return repo


def _rewrite(text: str, repo: str, branch: str) -> str:
    text = _COLAB_LINK.sub(lambda m: f"{m.group(1)}{repo}/blob/{branch}/", text)
    return _REPO_URL.sub(lambda m: f"{m.group(1)}https://github.com/{repo}.git{m.group(2)}", text)


def set_repository(root: str | Path, repo: str, branch: str = "main") -> list[Path]:
    """Rewrite the notebooks and README.md under ``root`` for ``repo``;
    returns the files that changed."""
    repo = check_repo(repo)
    if not re.match(r"^[A-Za-z0-9._/-]+$", branch):
        raise ValueError(f"branch: not a branch name: {branch!r}")
    root = Path(root)
    changed = []
    for name in NOTEBOOKS:
        path = root / name
        nb = json.loads(path.read_text(encoding="utf-8"))
        before = json.dumps(nb)
        for cell in nb["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = _rewrite(source, repo, branch).splitlines(keepends=True)
        if json.dumps(nb) != before:
            # nbformat's own layout, so the diff shows only the changed lines.
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = _rewrite(text, repo, branch)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append(readme)
    return changed


__all__ = ["NOTEBOOKS", "check_repo", "set_repository"]

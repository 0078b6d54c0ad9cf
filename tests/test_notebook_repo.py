"""``python -m app notebooks --repo OWNER/NAME`` rewrites the notebooks'
REPO_URL and every "Open in Colab" link (notebooks and README), nothing else."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parent.parent
FILES = ("text_to_image_generator.ipynb", "text_to_image_generator_app.ipynb", "README.md")


@pytest.fixture
def checkout(tmp_path):
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_repo_is_written_into_both_notebooks_and_the_readme(checkout, capsys):
    originals = {name: (checkout / name).read_text() for name in FILES}

    assert main(["notebooks", "--repo", "alice/t2i-colab", "--root", str(checkout)]) == 0

    assert capsys.readouterr().out.count("updated ") == 3
    for name in FILES:
        text = (checkout / name).read_text()
        assert "github/OWNER/REPO" not in text and "github.com/OWNER/REPO" not in text, name
        # Only the repository changed, in the same file layout (a one-word diff).
        assert text.replace("alice/t2i-colab", "OWNER/REPO") == originals[name], name
    for name in FILES[:2]:
        nb = json.loads((checkout / name).read_text())
        params = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        assert 'REPO_URL = "https://github.com/alice/t2i-colab.git"  #@param {type:"string"}' in params
        badge = "".join(nb["cells"][0]["source"])
        assert f"https://colab.research.google.com/github/alice/t2i-colab/blob/main/{name}" in badge
    readme = (checkout / "README.md").read_text()
    assert "https://colab.research.google.com/github/alice/t2i-colab/blob/main/text_to_image_generator_app.ipynb" in readme

    # Again, for a fork on another branch; and once more changes nothing.
    assert main(["notebooks", "--repo", "https://github.com/bob/fork.git", "--branch", "dev", "--root", str(checkout)]) == 0
    assert "github/bob/fork/blob/dev/text_to_image_generator.ipynb" in (checkout / "README.md").read_text()
    capsys.readouterr()
    assert main(["notebooks", "--repo", "bob/fork", "--branch", "dev", "--root", str(checkout)]) == 0
    assert capsys.readouterr().out == "already up to date\n"


@pytest.mark.parametrize("bad", ["alice", "alice/", "a/b/c", "-x/y", "alice/t2i; rm -rf /"])
def test_bad_repo_is_refused_with_the_value(checkout, capsys, bad):
    before = {name: (checkout / name).read_text() for name in FILES}
    assert main(["notebooks", f"--repo={bad}", "--root", str(checkout)]) == 2
    assert "repo: must look like OWNER/NAME" in capsys.readouterr().err
    assert {name: (checkout / name).read_text() for name in FILES} == before

"""README's commands are the ones CI runs and users copy."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)  # one line each, to copy at once
    run, test = commands
    assert "python -m app generate" in run and "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_readme_lists_every_scheduler():
    from app.engine.schedulers import scheduler_names

    text = (ROOT / "README.md").read_text()
    missing = [name for name in scheduler_names() if name not in text]
    assert not missing


def test_requirements_do_not_pin_torch():
    # Colab ships torch; a pin would reinstall gigabytes there.
    req = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^torch\s*==", req, re.M)


def test_readme_documents_every_web_setting():
    from app.web.settings import SETTINGS

    text = (ROOT / "README.md").read_text()
    table = text.split("### Settings", 1)[1].split("\n## ", 1)[0]
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in table]
    assert not missing

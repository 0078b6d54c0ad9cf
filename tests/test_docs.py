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


def test_readme_limits_table_matches_the_code():
    """One table for the CLI's Limits() and the web server's defaults; it must say what the code does."""
    from app.engine.types import DEFAULT_LIMITS as cli
    from app.web.settings import DEFAULTS as web

    text = (ROOT / "README.md").read_text()
    table = text.split("### Limits (CLI and web server)", 1)[1].split("\n#", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert f"{cli.min_size} to {cli.max_width} px" in rows["width, height"] and cli.max_width == cli.max_height
    assert f"{cli.min_size} to {web['MAX_WIDTH']} px" in rows["width, height"]
    assert cli.max_pixels == cli.max_width * cli.max_height
    assert f"| {cli.max_width} x {cli.max_height} |" in rows["pixels per image (also the init image)"]
    assert f"1 to {cli.max_steps} | 1 to {web['MAX_STEPS']} (`MAX_STEPS`)" in rows["steps"]
    assert f"1 to {cli.max_images} | 1 to {web['MAX_IMAGES']} (`MAX_IMAGES`)" in rows["images per request"]
    assert f"{cli.max_prompt_chars} characters each | {web['MAX_PROMPT_CHARS']} characters" in rows["prompt, negative prompt"]
    assert f"0 to {cli.max_guidance:g} | 0 to {cli.max_guidance:g}" in rows["guidance (CFG scale)"]
    assert f"{web['MAX_UPLOAD_BYTES'] // 2**20} MB" in rows["init image upload"]
    side = int(web["MAX_UPLOAD_PIXELS"] ** 0.5)
    assert f"{side} x {side}" in rows["init image upload"] and side * side == web["MAX_UPLOAD_PIXELS"]
    assert f"{web['MAX_QUEUED_PER_CLIENT']} (`MAX_QUEUED_PER_CLIENT`)" in rows["unfinished jobs per client"]
    assert f"{web['MAX_QUEUE']} (`MAX_QUEUE`)" in rows["queued jobs in all"]


def test_security_settings_table_matches_the_code():
    from app.web.settings import DEFAULTS

    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", table, re.M)
    assert len(rows) >= 15

    def shown(value) -> str:
        if value is None or value == ():
            return "none"
        return ", ".join(value) if isinstance(value, tuple) else str(value)

    assert [(name, default.strip()) for name, default in rows] == [(name, shown(DEFAULTS[name])) for name, _ in rows]

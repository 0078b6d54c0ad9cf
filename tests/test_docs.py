"""README's commands are the ones users copy, docs/development.md's test
command the one CI runs; the reference in docs/ says what the code does, and
every link between them leads somewhere."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def section(path: Path, heading: str) -> str:
    return path.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", text, re.S)


def test_readme_is_short_and_sets_up_in_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    commands = bash_blocks(section(ROOT / "README.md", "## Set up"))
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)  # one line each, to copy at once
    install, run = commands
    assert "pip install -r requirements.txt" in install and run.startswith("python -m app serve")
    # The torch note comes before the install line it is about.
    assert readme.index("install the torch build") < readme.index(install)
    # Colab: the ngrok token is step 1, before the step that needs it.
    colab = section(ROOT / "README.md", "## Google Colab in five steps")
    assert re.search(r"^1\. \*\*Get an ngrok token", colab, re.M) and re.search(r"^5\. ", colab, re.M)


def test_ci_runs_the_documented_test_command():
    (test,) = bash_blocks(section(DOCS / "development.md", "## Test it"))
    assert "\n" not in test and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_cli_doc_lists_every_scheduler():
    from app.engine.schedulers import scheduler_names

    text = (DOCS / "cli.md").read_text()
    missing = [name for name in scheduler_names() if name not in text]
    assert not missing


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_in_the_docs_leads_to_a_file_and_heading():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken


def test_requirements_do_not_pin_torch():
    # Colab ships torch; a pin would reinstall gigabytes there.
    req = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^torch\s*==", req, re.M)


def test_settings_doc_documents_every_web_setting():
    from app.web.settings import SETTINGS

    table = section(DOCS / "settings.md", "## Settings")
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in table]
    assert not missing


def test_settings_doc_limits_table_matches_the_code():
    """One table for the CLI's Limits() and the web server's defaults; it must say what the code does."""
    from app.engine.types import DEFAULT_LIMITS as cli
    from app.web.settings import DEFAULTS as web

    table = section(DOCS / "settings.md", "## Limits (CLI and web server)")
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

"""docs/security.md's "Limits" table against the code: each row's value is the
setting's default or the constant's value, and every MAX_* and wait-slot setting
has a row, so the table cannot drift from what the server enforces (issue #22)."""
import ast
import importlib
import re
from pathlib import Path

from app.web.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def limit_rows() -> dict[str, object]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    return {name: ast.literal_eval(value)
            for name, value in re.findall(r"^\| `([\w.]+)` \| `([^`]+)` \|", section, re.M)}


def code_value(name: str) -> object:
    if name in DEFAULTS:
        return DEFAULTS[name]
    module, _, constant = name.rpartition(".")
    return getattr(importlib.import_module(module), constant)


def test_every_row_of_the_limits_table_is_the_codes_value():
    rows = limit_rows()
    assert len(rows) >= 20, rows
    wrong = {name: (value, code_value(name)) for name, value in rows.items() if code_value(name) != value}
    assert not wrong, f"docs/security.md says (table, code): {wrong}"


def test_every_limit_setting_has_a_row():
    wanted = {name for name in DEFAULTS if name.startswith("MAX_") or "WAIT_SLOTS" in name}
    assert wanted - set(limit_rows()) == set()

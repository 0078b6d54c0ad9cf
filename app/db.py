"""The SQLite job store (flaskr style: ``get_db``/``close_db``/``init_app``).

WAL mode lets the worker thread write while request threads read. Every
thread opens its own connection: sqlite3 connections are not shared.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    params TEXT NOT NULL,                   -- JSON of the request (no init image)
    images TEXT NOT NULL DEFAULT '[]',      -- JSON list of {"n", "seed", "infotext"}
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, state);
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    init_image BLOB NOT NULL                -- PNG, already checked and size-limited
);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """A new connection in WAL mode. Autocommit off: callers use ``with conn``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init_db(path: str | Path) -> None:
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.commit()
    finally:
        conn.close()


def get_db() -> sqlite3.Connection:
    """The request's connection, opened on first use and closed at teardown."""
    from flask import current_app, g

    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    from flask import g

    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app) -> None:
    import click

    init_db(app.config["DATABASE"])
    app.teardown_appcontext(close_db)

    @app.cli.command("init-db")
    def init_db_command():
        """Create the job tables (done on start anyway)."""
        init_db(app.config["DATABASE"])
        click.echo(f"Initialized {app.config['DATABASE']}")

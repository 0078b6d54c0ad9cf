"""The default backend: a SQLite job store and one worker thread."""
from app.jobs.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]

"""Google Drive for the notebooks: mount it, keep the model cache there, and
keep the web app's jobs and images there across Colab sessions.

The app's live SQLite database never sits on Drive. Drive is a FUSE mount
that uploads in the background: SQLite's locks do not hold on it, every
write is slow, and a Colab disconnect in the middle of a write leaves a torn
file. So the app runs on a local instance folder (``/content/t2i-instance``)
and ``InstanceSync`` copies it to ``MyDrive/text-to-image/instance``:

- the database with SQLite's online backup API (a consistent snapshot even
  while jobs are written) into a temporary file on Drive, renamed over
  ``jobs.sqlite`` only when complete, so Drive always holds a whole
  database, from the last sync or the one before;
- images (write-once files) the same way: a temporary name, then a rename;
  images already there are skipped;
- the small files that say who is who (``KEPT_FILES``: the session key and,
  with ``ACCESS = "people"``, ``people.json``) whenever they change, so after a
  new runtime browsers are still logged in and friends' links still work.

It syncs every few seconds when something changed (so within seconds of a
job ending), and at stop. At start, ``restore`` copies Drive's copy back to
an empty local folder, so yesterday's gallery is there again. Losing the
runtime loses at most the last interval's jobs.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from app.notebook.tunnel import in_colab
from app.web.private_files import write_private

logger = logging.getLogger(__name__)

MOUNT_POINT = "/content/drive"
DRIVE_DIR = "/content/drive/MyDrive"
SUBFOLDER = "text-to-image"
DATABASE = "jobs.sqlite"
IMAGES = "images"
# Rewritten whole (atomically) by the app; kept 0600 here. Drive's FUSE mount ignores modes:
# MyDrive is private to its owner, which is what keeps them there.
KEPT_FILES = ("secret_key", "people.json")


def mount_drive(drive_dir: str | os.PathLike = DRIVE_DIR, *, say: Callable[[str], None] = print) -> Path | None:
    """``drive_dir/text-to-image``, created, or None when there is no Drive.

    In Colab this mounts Google Drive first (Colab asks for permission once).
    Elsewhere ``drive_dir`` is used when it exists: headless runs point it at
    a folder that stands in for Drive."""
    root = Path(drive_dir)
    if in_colab() and not root.is_dir():
        from google.colab import drive  # only exists inside Colab

        drive.mount(MOUNT_POINT)
    if not root.is_dir():
        say(f"No Google Drive here ({root} does not exist): saving on this machine only.")
        return None
    folder = root / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_model_on(folder: Path, *, say: Callable[[str], None] = print) -> Path:
    """Keep the Hugging Face download cache on Drive: the next session loads
    the model from there instead of downloading it (about 5 GB) again. Call
    before anything imports huggingface_hub."""
    cache = folder / "hf-cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_CACHE"] = str(cache)
    # The compiled UNet's cache too (app/models/compiled.py): a new runtime skips most of the compile.
    os.environ.setdefault("T2I_COMPILE_CACHE_DIR", str(folder / "compile-cache"))
    say(f"Model cache: {cache}")
    return cache


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of ``source`` at ``target``, written beside it and
    renamed into place, so a reader (or a disconnect) never sees half of it."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # a single file: no -wal beside it on Drive
        finally:
            dst.close()
    finally:
        src.close()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)


def _copy_kept_files(source: Path, target: Path, only_missing: bool = False) -> int:
    """Copy ``KEPT_FILES`` that differ (app.web.private_files: 0600, whole or absent). Returns how many."""
    copied = 0
    for name in KEPT_FILES:
        path, dest = source / name, target / name
        if not path.is_file() or (dest.exists() and (only_missing or dest.read_bytes() == path.read_bytes())):
            continue
        write_private(dest, path.read_bytes())
        copied += 1
    return copied


def _copy_new_files(source: Path, target: Path) -> int:
    """Copy the files under ``source`` that ``target`` lacks (or has at
    another size); each through a temporary name. Returns how many."""
    copied = 0
    if not source.is_dir():
        return 0
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.suffix in (".partial", ".tmp"):  # not whole yet
            continue
        dest = target / path.relative_to(source)
        if dest.exists() and dest.stat().st_size == path.stat().st_size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        shutil.copyfile(path, partial)
        os.replace(partial, dest)
        copied += 1
    return copied


class InstanceSync:
    """Keeps ``drive`` (a folder on Drive) a copy of ``local`` (the app's
    instance folder): ``restore()`` once before the app starts, ``start()``
    for the background sync, ``stop()`` (a last sync) when done."""

    def __init__(self, local: str | os.PathLike, drive: str | os.PathLike, *, interval: float = 10.0):
        self.local, self.drive, self.interval = Path(local), Path(drive), interval
        self.last_error: str | None = None
        self._seen: tuple | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> int:
        """Copy Drive's database and images into an empty local folder.
        Returns the number of finished jobs restored (0 when there was
        nothing, or when the local folder already has a database)."""
        self.local.mkdir(parents=True, exist_ok=True)
        _copy_kept_files(self.drive, self.local, only_missing=True)
        saved, live = self.drive / DATABASE, self.local / DATABASE
        if live.exists() or not saved.exists():
            return 0
        _copy_database(saved, live)
        _copy_new_files(self.drive / IMAGES, self.local / IMAGES)
        with sqlite3.connect(live) as db:
            try:
                return int(db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0])
            except sqlite3.Error:
                return 0

    def _state(self) -> tuple:
        """What changes when a job is written: the database's files and the images."""
        stamps: list[object] = []
        for path in (self.local / DATABASE, self.local / (DATABASE + "-wal"), *(self.local / n for n in KEPT_FILES)):
            try:
                stat = path.stat()
                stamps.append((stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                stamps.append(None)
        images = self.local / IMAGES
        stamps.append(sum(1 for p in images.rglob("*") if p.is_file()) if images.is_dir() else 0)
        return tuple(stamps)

    def sync(self, force: bool = False) -> bool:
        """Copy to Drive if something changed since the last sync. Images go
        first, then the database that lists them. Returns whether it copied."""
        with self._lock:
            state = self._state()
            if not force and state == self._seen:
                return False
            if not (self.local / DATABASE).exists():
                return False
            self.drive.mkdir(parents=True, exist_ok=True)
            try:
                copied = _copy_new_files(self.local / IMAGES, self.drive / IMAGES)
                _copy_kept_files(self.local, self.drive)
                _copy_database(self.local / DATABASE, self.drive / DATABASE)
            except (OSError, sqlite3.Error) as exc:  # Drive gone or full: try again next time
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("Drive sync failed: %s", self.last_error)
                return False
            self._seen, self.last_error = state, None
            logger.info("Synced to Drive: database and %d new image files", copied)
            return True

    def start(self) -> "InstanceSync":
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="t2i-drive-sync", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.sync()

    def stop(self) -> bool:
        """Stop the background sync and sync one last time."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(self.interval + 30)
        return self.sync(force=True)


__all__ = ["DRIVE_DIR", "InstanceSync", "cache_model_on", "mount_drive"]

"""Google Drive for the app notebook: the live SQLite database stays local and
is copied to a folder standing in for Drive (Colab's mount cannot exist here;
everything after the mount is the real code)."""
from __future__ import annotations

import sqlite3
import threading

from app.notebook.drive import InstanceSync, cache_model_on, mount_drive


def _make_instance(folder, jobs: int):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "jobs.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT, state TEXT)")
    for n in range(jobs):
        db.execute("INSERT INTO jobs VALUES (?, 'done')", (f"job{n}",))
        (folder / "images" / f"job{n}").mkdir(exist_ok=True)
        (folder / "images" / f"job{n}" / "0.png").write_bytes(b"png" * (n + 1))
    db.commit()
    return db


def test_no_drive_outside_colab_says_so(tmp_path):
    said = []
    assert mount_drive(tmp_path / "nowhere", say=said.append) is None
    assert said == [f"No Google Drive here ({tmp_path / 'nowhere'} does not exist): saving on this machine only."]
    assert mount_drive(tmp_path) == tmp_path / "text-to-image" and (tmp_path / "text-to-image").is_dir()


def test_model_cache_goes_to_drive(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache = cache_model_on(tmp_path, say=lambda _line: None)
    import os

    assert os.environ["HF_HUB_CACHE"] == str(cache) == str(tmp_path / "hf-cache")


def test_sync_copies_a_whole_database_while_it_is_written_and_restores_it(tmp_path):
    local, drive = tmp_path / "vm1", tmp_path / "drive"
    db = _make_instance(local, 3)
    sync = InstanceSync(local, drive)
    stop = threading.Event()

    def writer():  # jobs keep being written during the syncs (WAL mode, like the app's store)
        n = 100
        while not stop.is_set():
            db2.execute("INSERT INTO jobs VALUES (?, 'done')", (f"w{n}",))
            db2.commit()
            n += 1

    db2 = sqlite3.connect(local / "jobs.sqlite", check_same_thread=False)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            assert sync.sync(force=True)
            with sqlite3.connect(drive / "jobs.sqlite") as copy:
                assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file on Drive
    finally:
        stop.set()
        thread.join()
    sync.sync()  # the writes after the last round
    assert not sync.sync()  # nothing changed since
    db.close()
    db2.close()
    assert sorted(p.name for p in drive.iterdir()) == ["images", "jobs.sqlite"]  # no -wal, no .partial
    assert (drive / "images" / "job2" / "0.png").read_bytes() == b"pngpngpng"

    # A new VM: an empty local folder gets Drive's copy back.
    fresh = InstanceSync(tmp_path / "vm2", drive)
    restored = fresh.restore()
    assert restored >= 3 and (tmp_path / "vm2" / "images" / "job1" / "0.png").read_bytes() == b"pngpng"
    assert fresh.restore() == 0  # a local database is never overwritten


def test_a_torn_copy_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    local, drive = tmp_path / "vm", tmp_path / "drive"
    _make_instance(local, 1).close()
    sync = InstanceSync(local, drive)
    assert sync.sync()
    good = (drive / "jobs.sqlite").read_bytes()

    _make_instance(local, 2).close()

    def disconnect(*_args, **_kwargs):  # Drive goes away in the middle of the copy
        raise OSError(107, "Transport endpoint is not connected")

    monkeypatch.setattr("app.notebook.drive.os.replace", disconnect)
    assert not sync.sync() and "Transport endpoint" in (sync.last_error or "")
    assert (drive / "jobs.sqlite").read_bytes() == good
    monkeypatch.undo()
    assert sync.sync()  # the next round catches up
    with sqlite3.connect(drive / "jobs.sqlite") as copy:
        assert copy.execute("SELECT count(*) FROM jobs").fetchone() == (3,)


def test_background_sync_and_last_sync_at_stop(tmp_path):
    local, drive = tmp_path / "vm", tmp_path / "drive"
    _make_instance(local, 1).close()
    sync = InstanceSync(local, drive, interval=0.05).start()
    _make_instance(local, 2).close()
    assert sync.stop()
    with sqlite3.connect(drive / "jobs.sqlite") as copy:
        assert copy.execute("SELECT count(*) FROM jobs").fetchone() == (3,)


def test_the_session_key_and_people_travel_with_drive(make_app, tmp_path):
    """A new Colab runtime (a fresh local folder restored from Drive): a friend's personal link and
    a logged-in browser still work, because secret_key and people.json were kept on Drive."""
    import stat

    local, drive, fresh = tmp_path / "vm", tmp_path / "drive", tmp_path / "vm2"
    settings = dict(ACCESS="people", PASSWORD="owner secret", START_WORKER=False)
    app = make_app(INSTANCE=str(local), **settings)
    created = app.test_client().post("/api/people", json={"name": "Alice"},
                                     headers={"Authorization": "Bearer owner secret"}).get_json()
    browser = app.test_client()
    browser.get(f"/login?token={created['token']}")
    assert InstanceSync(local, drive).sync(force=True)
    assert {p.name for p in drive.iterdir()} >= {"secret_key", "people.json", "jobs.sqlite"}

    InstanceSync(fresh, drive).restore()
    for name in ("secret_key", "people.json"):
        assert (fresh / name).read_bytes() == (local / name).read_bytes()
        assert stat.S_IMODE((fresh / name).stat().st_mode) == 0o600
    after = make_app(INSTANCE=str(fresh), **settings).test_client()
    after.set_cookie("session", browser.get_cookie("session").value)
    assert after.get("/api/jobs").status_code == 200
    assert after.get("/api/jobs", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 200

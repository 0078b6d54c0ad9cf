"""The model catalogue: the checkpoints and VAEs a server can switch to.

Checkpoints: the files (.safetensors, .ckpt) and diffusers folders (with
``model_index.json``) of the checkpoints folder, the Hub ids the owner
lists, and the startup model itself (``demo`` included). Each entry reads
as AUTOMATIC1111 lists it (``/sdapi/v1/sd-models``): ``title`` is
``"name.safetensors [0123456789]"``, ``hash`` the first 10 hex digits of
the file's SHA-256 (A1111's "short hash", ``modules/hashes.py``), ``name``
its path inside the folder. Folders and Hub ids have no file hash.

Hashing a 5 GB file takes seconds to minutes, so it happens in the
catalogue's one background thread, never on a caller's (a request's), and
hashes are cached by (path, size, mtime) in a JSON file, as A1111's
``cache.json``. Listing never follows a
symlink out of its folder. No Flask here.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app.models.demo import DEMO_MODEL_ID
from app.models.files import HashCache, walk
from app.models.loading import SINGLE_FILE_SUFFIXES, display_name, find_single_file_config

logger = logging.getLogger(__name__)

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC, NO_VAE = "Automatic", "None"  # A1111's sd_vae values for "the checkpoint's own VAE"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as A1111 lists it, plus ``source``: what the loader takes
    (a path, a Hub id or "demo")."""

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None
    name: str  # A1111's name: the path inside the folder (a file's with its suffix)
    source: str

    def a1111(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "source")}

    def aliases(self) -> set[str]:
        """What A1111 accepts for ``sd_model_checkpoint``: title, name, model name, short hash, sha256, path."""
        names = {self.title, self.name, self.model_name, self.filename, self.source}
        return names | ({self.hash, self.sha256} if self.hash and self.sha256 else set())


@dataclass(frozen=True)
class Vae:
    """One VAE file or folder: ``name`` is what ``sd_vae`` takes (A1111: the file name)."""

    name: str
    filename: str
    hash: str | None  # short hash (files only)

    def a1111(self) -> dict:
        return {"model_name": self.name, "filename": self.filename}


def _is_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES


def _is_vae(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model.*"))
    return path.suffix.lower() in VAE_SUFFIXES


class Catalogue:
    """The checkpoints and VAEs of one server. ``refresh_checkpoints()`` and
    ``refresh_vaes()`` read the folders again (A1111's refresh-checkpoints /
    refresh-vae); until then the lists are the ones read last.

    Listing reads no file and never waits for one to be hashed: a file whose hash
    is not cached is listed without one (title without ``[hash]``, hash null, as
    A1111 lists an unhashed model) until the catalogue's one hashing thread has
    read it. ``hashed=True`` (the A1111 listing, finding a model by name or hash)
    starts that thread for the files not hashed yet and answers at once: 40
    listings while a 5 GB file is read must not hold every server thread.
    ``wait_hashed()`` waits for it (the GPU worker naming a loaded model, tests).
    A file that cannot be read (a Drive mount's I/O error) stays listed without a hash."""

    def __init__(self, checkpoint_dir: str | Path | None, startup_model: str, hub_models: tuple[str, ...] = (),
                 vae_dir: str | Path | None = None, cache_file: str | Path | None = None):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.vae_dir = Path(vae_dir) if vae_dir else None
        self.startup_model = startup_model
        self.hub_models = tuple(hub_models)
        self.hashes = HashCache(cache_file)
        self._lock = threading.Lock()  # the lists; held only while listing, never while hashing
        self._hashing = threading.Condition()  # guards the two below
        self._hash_wanted = False  # another pass asked for (files listed since the last one began)
        self._hasher: threading.Thread | None = None  # the one hashing thread, while it runs
        self._checkpoints: list[Checkpoint] | None = None
        self._vaes: list[Vae] | None = None

    # --- checkpoints -------------------------------------------------------------------

    def checkpoints(self, hashed: bool = False) -> list[Checkpoint]:
        """The checkpoints with the hashes known; ``hashed``: also start hashing the others (no waiting)."""
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = self._read_checkpoints()
            entries = list(self._checkpoints)
        if hashed and any(c.sha256 is None and Path(c.source).is_file() for c in entries):
            self.hash_missing()
        return entries

    def refresh_checkpoints(self) -> None:
        # The folder is read outside the lock: while a slow mount is listed, readers keep the old list.
        checkpoints = self._read_checkpoints()
        with self._lock:
            self._checkpoints = checkpoints
        self.hash_missing()

    def refresh_vaes(self) -> None:
        vaes = self._read_vaes()
        with self._lock:
            self._vaes = vaes
        self.hash_missing()

    def hash_missing(self) -> None:
        """Start hashing the listed files whose hash is not known yet, in the background; returns at once."""
        with self._hashing:
            self._hash_wanted = True
            if self._hasher is None:
                self._hasher = threading.Thread(target=self._hash_loop, name="t2i-hasher", daemon=True)
                self._hasher.start()

    def hashing(self) -> bool:
        """Whether files are being hashed now (their entries have no hash yet)."""
        with self._hashing:
            return self._hasher is not None

    def wait_hashed(self, timeout: float | None = None) -> bool:
        """Hash the files not hashed yet and wait until they are; False if ``timeout`` passed first.
        Never on a request thread: a 5 GB file on Drive takes minutes."""
        self.checkpoints()
        self.vaes()  # listed first, so that the pass sees every file
        self.hash_missing()
        with self._hashing:
            return self._hashing.wait_for(lambda: self._hasher is None, timeout)

    def _hash_loop(self) -> None:
        while True:
            with self._hashing:
                if not self._hash_wanted:
                    self._hasher = None
                    self._hashing.notify_all()
                    return
                self._hash_wanted = False
            try:
                self._hash_pass()
            except Exception:  # the thread must end cleanly (waiters are told), whatever a file does
                logger.exception("hashing the model files failed")

    def _hash_pass(self) -> None:
        """Hash the listed files whose hash is not known yet (in the hashing thread, outside the lists' lock)."""
        with self._lock:
            checkpoints, vaes = list(self._checkpoints or []), list(self._vaes or [])
        for path in [c.source for c in checkpoints if c.sha256 is None] + \
                    [v.filename for v in vaes if v.hash is None]:
            sha = self._sha256(Path(path))
            if sha is None:
                continue
            with self._lock:  # each file's hash shows as soon as it is known; lists read again meanwhile keep theirs
                if self._checkpoints is not None:
                    self._checkpoints = [self._with_hash(c, sha if c.source == path else None)
                                         for c in self._checkpoints]
                if self._vaes is not None:
                    self._vaes = [replace(v, hash=sha[:10]) if v.hash is None and v.filename == path else v
                                  for v in self._vaes]

    def _sha256(self, path: Path, cached_only: bool = False) -> str | None:
        """A file's SHA-256; None for a folder, a Hub id or an unreadable file."""
        try:
            if not path.is_file():
                return None
            return self.hashes.cached(path) if cached_only else self.hashes.hash(path)
        except OSError as exc:  # e.g. EIO from a Drive mount: listed without a hash
            logger.warning("cannot hash %s: %s", path, exc)
            return None

    @staticmethod
    def _with_hash(c: Checkpoint, sha: str | None) -> Checkpoint:
        if c.sha256 is not None or sha is None:
            return c
        return replace(c, title=f"{c.name} [{sha[:10]}]", hash=sha[:10], sha256=sha)

    def _read_checkpoints(self) -> list[Checkpoint]:
        found: list[Checkpoint] = []
        root = self.checkpoint_dir
        for path in (walk(root, _is_checkpoint) if root else []):
            assert root is not None
            if path.is_dir() and any(path.with_name(path.name + s).is_file() for s in SINGLE_FILE_SUFFIXES):
                continue  # the config folder of the file beside it (``export --config-folder``), not a model
            found.append(self._entry(path, path.relative_to(root).as_posix()))
        for hub_id in self.hub_models:
            found.append(self._entry(None, hub_id))
        if not any(self.startup_model in c.aliases() or same_path(self.startup_model, c.source) for c in found):
            startup = Path(self.startup_model).expanduser()
            if self.startup_model != DEMO_MODEL_ID and startup.exists():
                found.insert(0, self._entry(startup, startup.name))
            else:
                found.insert(0, self._entry(None, self.startup_model))
        return found

    def _entry(self, path: Path | None, name: str) -> Checkpoint:
        """An entry, with its hash if cached (``hash_missing`` adds the others)."""
        model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0] if path is not None else \
            display_name(name)
        if path is None:  # a Hub id or "demo"
            return Checkpoint(name, display_name(name), None, None, name, None, name, name)
        if path.is_file():
            entry = Checkpoint(name, model_name, None, None, str(path), find_single_file_config(path), name, str(path))
            return self._with_hash(entry, self._sha256(path, cached_only=True))
        return Checkpoint(name, model_name, None, None, str(path), None, name, str(path))

    def find(self, wanted: str) -> Checkpoint | None:
        """The checkpoint ``wanted`` names (title, name, model name, short hash, sha256 or
        path), as A1111 matches ``sd_model_checkpoint``; a title whose hash part is
        stale still finds its file by name."""
        if not isinstance(wanted, str) or not wanted.strip():
            return None
        wanted = wanted.strip()
        entries = self.checkpoints(hashed=True)
        for c in entries:
            if wanted in c.aliases():
                return c
        bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else None
        return next((c for c in entries if bare and bare in (c.name, c.model_name)), None)

    def by_source(self, source: str, hashed: bool = True) -> Checkpoint:
        """The entry of a loaded model (a path, Hub id or "demo"); one made up when not listed.
        ``hashed=False``: as listed now, without starting the hashing thread."""
        for c in self.checkpoints(hashed=hashed):
            if same_path(source, c.source):
                return c
        return self._entry(None, source)

    # --- VAEs ------------------------------------------------------------------------------

    def vaes(self, hashed: bool = False) -> list[Vae]:
        with self._lock:
            if self._vaes is None:
                self._vaes = self._read_vaes()
            entries = list(self._vaes)
        if hashed and any(v.hash is None and Path(v.filename).is_file() for v in entries):
            self.hash_missing()
        return entries

    def _read_vaes(self) -> list[Vae]:
        root = self.vae_dir
        if root is None:
            return []
        vaes = []
        for path in walk(root, _is_vae):
            name = path.relative_to(root).as_posix()
            sha = self._sha256(path, cached_only=True)
            vaes.append(Vae(name, str(path), sha[:10] if sha else None))
        return vaes

    def find_vae(self, wanted: str) -> Vae | None:
        """A VAE by its name (as ``sd_vae`` gives it) or path; None for unknown."""
        for vae in self.vaes(hashed=True):
            if wanted in (vae.name, vae.filename, Path(vae.name).stem):
                return vae
        return None

    def vae_by_path(self, path: str | None, hashed: bool = False) -> Vae | None:
        """The VAE at ``path``, listed or not. ``hashed``: hash a file outside the VAE folder
        now if its hash is not cached (reads it: the GPU worker only, never a request)."""
        if not path:
            return None
        sha = None
        found = next((v for v in self.vaes(hashed=hashed) if same_path(path, v.filename)), None)
        if found is None:
            sha = self._sha256(Path(path), cached_only=not hashed)
        return found or Vae(Path(path).name, path, sha[:10] if sha else None)


def same_path(a: str, b: str) -> bool:
    """Whether two paths name one file or folder (relative, ~, links); Hub ids only when equal."""
    if a == b:
        return True
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False

"""The model catalogue: the checkpoints and VAEs a server can switch to.

Checkpoints: the files (.safetensors, .ckpt) and diffusers folders (with
``model_index.json``) of the checkpoints folder, the Hub ids the owner
lists, and the startup model itself (``demo`` included). Each entry reads
as AUTOMATIC1111 lists it (``/sdapi/v1/sd-models``): ``title`` is
``"name.safetensors [0123456789]"``, ``hash`` the first 10 hex digits of
the file's SHA-256 (A1111's "short hash", ``modules/hashes.py``), ``name``
its path inside the folder. Folders and Hub ids have no file hash.

Hashing a 5 GB file takes seconds, so hashes are cached by (path, size,
mtime) in a JSON file, as A1111's ``cache.json``. Listing never follows a
symlink out of its folder. No Flask here.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from app.models.demo import DEMO_MODEL_ID
from app.models.files import file_sha256, walk
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


class HashCache:
    """SHA-256 of files, kept in a JSON file by (path, size, mtime), as A1111's cache.json."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None and self.path.is_file():
                try:
                    self._entries = json.loads(self.path.read_text()).get("sha256", {})
                except (OSError, ValueError, AttributeError):
                    logger.warning("hash cache %s is unreadable; starting a new one", self.path)
        return self._entries

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        with self._lock:
            entry = self._load().get(key)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
                return entry["sha256"]
        digest = file_sha256(file)
        with self._lock:
            entries = self._load()
            entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest}
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"sha256": entries}, indent=1))
                    os.replace(tmp, self.path)
                except OSError as exc:
                    logger.warning("cannot write the hash cache %s: %s", self.path, exc)
        return digest


def _is_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES


def _is_vae(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model.*"))
    return path.suffix.lower() in VAE_SUFFIXES


class Catalogue:
    """The checkpoints and VAEs of one server. ``refresh()`` reads the folders
    again (A1111's refresh-checkpoints / refresh-vae); until then the lists
    are the ones read last."""

    def __init__(self, checkpoint_dir: str | Path | None, startup_model: str, hub_models: tuple[str, ...] = (),
                 vae_dir: str | Path | None = None, cache_file: str | Path | None = None):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.vae_dir = Path(vae_dir) if vae_dir else None
        self.startup_model = startup_model
        self.hub_models = tuple(hub_models)
        self.hashes = HashCache(cache_file)
        self._lock = threading.Lock()
        self._checkpoints: list[Checkpoint] | None = None
        self._vaes: list[Vae] | None = None

    # --- checkpoints -------------------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = self._read_checkpoints()
            return list(self._checkpoints)

    def refresh(self) -> None:
        with self._lock:
            self._checkpoints = self._read_checkpoints()
            self._vaes = self._read_vaes()

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
        if not any(self.startup_model in c.aliases() or _same_path(self.startup_model, c.source) for c in found):
            startup = Path(self.startup_model).expanduser()
            if self.startup_model != DEMO_MODEL_ID and startup.exists():
                found.insert(0, self._entry(startup, startup.name))
            else:
                found.insert(0, self._entry(None, self.startup_model))
        return found

    def _entry(self, path: Path | None, name: str) -> Checkpoint:
        model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0] if path is not None else \
            display_name(name)
        if path is None:  # a Hub id or "demo"
            return Checkpoint(name, display_name(name), None, None, name, None, name, name)
        if path.is_file():
            sha = self.hashes.sha256(path)
            config = find_single_file_config(path)
            return Checkpoint(f"{name} [{sha[:10]}]", model_name, sha[:10], sha, str(path), config, name, str(path))
        return Checkpoint(name, model_name, None, None, str(path), None, name, str(path))

    def find(self, wanted: str) -> Checkpoint | None:
        """The checkpoint ``wanted`` names (title, name, model name, short hash, sha256 or
        path), as A1111 matches ``sd_model_checkpoint``; a title whose hash part is
        stale still finds its file by name."""
        if not isinstance(wanted, str) or not wanted.strip():
            return None
        wanted = wanted.strip()
        entries = self.checkpoints()
        for c in entries:
            if wanted in c.aliases():
                return c
        bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else None
        return next((c for c in entries if bare and bare in (c.name, c.model_name)), None)

    def by_source(self, source: str) -> Checkpoint:
        """The entry of a loaded model (a path, Hub id or "demo"); one made up when not listed."""
        for c in self.checkpoints():
            if c.source == source or _same_path(source, c.source):
                return c
        return self._entry(None, source)

    # --- VAEs ------------------------------------------------------------------------------

    def vaes(self) -> list[Vae]:
        with self._lock:
            if self._vaes is None:
                self._vaes = self._read_vaes()
            return list(self._vaes)

    def _read_vaes(self) -> list[Vae]:
        root = self.vae_dir
        if root is None:
            return []
        vaes = []
        for path in walk(root, _is_vae):
            name = path.relative_to(root).as_posix()
            vaes.append(Vae(name, str(path), self.hashes.sha256(path)[:10] if path.is_file() else None))
        return vaes

    def find_vae(self, wanted: str) -> Vae | None:
        """A VAE by its name (as ``sd_vae`` gives it) or path; None for unknown."""
        for vae in self.vaes():
            if wanted in (vae.name, vae.filename, Path(vae.name).stem):
                return vae
        return None

    def vae_by_path(self, path: str | None) -> Vae | None:
        if not path:
            return None
        return next((v for v in self.vaes() if _same_path(path, v.filename)), None) or \
            Vae(Path(path).name, path, self.hashes.sha256(Path(path))[:10] if Path(path).is_file() else None)


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False

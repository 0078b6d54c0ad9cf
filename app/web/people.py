"""The people who may use an app with ``ACCESS = "people"``: each a name, a daily image quota and a
personal token, kept in ``<instance>/people.json`` (0600, written atomically).

Only a hash of each token is stored (sha256 of the random token, which is 32 bytes: no salt or slow
hash is needed against guessing), so the file grants nothing if read. The file is re-read when it
changes on disk, so ``python -m app people revoke`` takes effect in a running server at the next
request. Quota use is counted here too (images per UTC day, reserved at enqueue), so a restart or
deleting one's images does not give the quota back.

No Flask here: the CLI and the notebook use this store directly; app.web.auth and app.web.admin
are its web side.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from app.web.private_files import write_private

logger = logging.getLogger(__name__)

PEOPLE_FILE = "people.json"
DEFAULT_QUOTA = 50
MAX_QUOTA = 100_000
MAX_NAME_CHARS = 64
PERSON = "person:"  # client ids: "person:<id>"; the owner is OWNER
OWNER = "owner"


class PeopleError(ValueError):
    """Bad input for the store: ``field`` and ``value`` name it (the web answers 400 or 404)."""

    def __init__(self, message: str, field: str, value: object, status: int = 400):
        super().__init__(message)
        self.field, self.value, self.status = field, value, status


class QuotaExceeded(Exception):
    def __init__(self, person: "Person", wanted: int, retry_after: int):
        used = person.used_on(today())
        super().__init__(f"quota: {person.name} has used {used} of {person.quota} images today (UTC) and asked "
                         f"for {wanted} more; the quota renews at midnight UTC")
        self.person, self.wanted, self.retry_after = person, wanted, retry_after


@dataclass
class Person:
    id: str
    name: str
    quota: int
    token_hash: str
    created: str
    revoked: str | None = None
    used_day: str = ""  # the UTC day `used` counts
    used: int = 0

    @property
    def active(self) -> bool:
        return self.revoked is None

    def used_on(self, day: str) -> int:
        return self.used if self.used_day == day else 0

    def used_on_today(self) -> int:
        return self.used_on(today())

    def public(self) -> dict:
        """As the admin page and /api/people show it: never the token's hash."""
        return {"id": self.id, "name": self.name, "quota": self.quota, "used_today": self.used_on_today(),
                "created": self.created, "revoked": self.revoked, "active": self.active}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def today() -> str:
    return now_utc().date().isoformat()


def seconds_to_midnight() -> int:
    now = now_utc()
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), timezone.utc)
    return max(1, int((midnight - now).total_seconds()) + 1)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PeopleError("name: is required (text)", "name", name)
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise PeopleError(f"name: at most {MAX_NAME_CHARS} characters", "name", name)
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise PeopleError("name: must not contain control characters", "name", name)
    return name


def check_quota(quota: object) -> int:
    if isinstance(quota, str) and quota.strip().isdigit() and len(quota.strip()) <= 7:
        quota = int(quota.strip())  # a form field or a CLI argument
    if not isinstance(quota, int) or isinstance(quota, bool) or not 0 <= quota <= MAX_QUOTA:
        raise PeopleError(f"quota: must be a whole number of images per day, 0 to {MAX_QUOTA}", "quota", quota)
    return quota


class People:
    """``people.json``: read when it changed on disk, written whole under a lock (threads and,
    through ``flock``, other processes such as the CLI)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._people: dict[str, Person] = {}
        self._stamp: tuple | None = None
        self.broken = False  # the file exists but does not parse

    # --- file ---------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._people, self._stamp, self.broken = {}, None, False
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(Person)}
            people = [Person(**{k: v for k, v in entry.items() if k in known}) for entry in data["people"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Fail closed: nobody's token works until the file is fixed; the owner's password still does.
            logger.error("%s is not readable (%s): no personal link works until it is fixed", self.path, exc)
            self._people, self._stamp, self.broken = {}, stamp, True
            return
        self._people, self._stamp, self.broken = {p.id: p for p in people}, stamp, False

    def _write(self) -> None:
        text = json.dumps({"people": [asdict(p) for p in self._people.values()]}, indent=1)
        write_private(self.path, text.encode("utf-8"))
        self._stamp = None  # re-read (cheap) so the stamp is the written file's

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Person]]:
        """Read, change, write, holding the thread lock and the file lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            except ImportError:  # Windows: the thread lock only
                pass
            self._stamp = None
            self._read()
            if self.broken:  # writing would lose everyone in it
                raise PeopleError(f"{self.path.name}: the file is not readable; fix or remove it (see the log)",
                                  "people", str(self.path), status=503)
            yield self._people
            self._write()

    # --- reading ------------------------------------------------------------------------

    def all(self) -> list[Person]:
        with self._lock:
            self._read()
            return sorted(self._people.values(), key=lambda p: (p.created, p.id))

    def get(self, person_id: str) -> Person | None:
        with self._lock:
            self._read()
            return self._people.get(person_id)

    def by_token(self, token: str | None) -> Person | None:
        """The active person whose token this is, else None (compared in constant time)."""
        if not token:
            return None
        digest = hash_token(token)
        found = None
        for person in self.all():
            if hmac.compare_digest(person.token_hash, digest) and person.active:
                found = person
        return found

    # --- changing -----------------------------------------------------------------------

    def add(self, name: object, quota: object = DEFAULT_QUOTA) -> tuple[Person, str]:
        """A new person and their token (shown once: only its hash is kept)."""
        name, quota = check_name(name), check_quota(quota)
        token = secrets.token_urlsafe(32)
        with self._changing() as people:
            person_id = secrets.token_hex(4)
            while person_id in people:
                person_id = secrets.token_hex(4)
            person = Person(person_id, name, quota, hash_token(token), now_utc().isoformat(timespec="seconds"))
            people[person_id] = person
        return person, token

    def _find(self, people: dict[str, Person], person_id: str) -> Person:
        person = people.get(person_id)
        if person is None:
            raise PeopleError("id: no such person", "id", person_id, status=404)
        return person

    def revoke(self, person_id: str) -> Person:
        """The person's token and every session made with it stop working at their next request."""
        with self._changing() as people:
            person = self._find(people, person_id)
            if person.revoked is None:
                person.revoked = now_utc().isoformat(timespec="seconds")
        return person

    def set_quota(self, person_id: str, quota: object) -> Person:
        quota = check_quota(quota)
        with self._changing() as people:
            person = self._find(people, person_id)
            person.quota = quota
        return person

    def reserve(self, person_id: str, images: int) -> None:
        """Count ``images`` against today's quota, or raise QuotaExceeded (nothing counted)."""
        day = today()
        with self._changing() as people:
            person = self._find(people, person_id)
            used = person.used_on(day)
            if used + images > person.quota:
                raise QuotaExceeded(person, images, seconds_to_midnight())
            person.used_day, person.used = day, used + images

    def release(self, person_id: str, images: int) -> None:
        """Give back a reservation whose job was not queued after all (queue full, storage down)."""
        day = today()
        with self._changing() as people:
            person = people.get(person_id)
            if person is not None and person.used_day == day:
                person.used = max(0, person.used - images)


def session_tag(secret_key: str | bytes, person: Person) -> str:
    """What a person's session cookie holds besides their id: a tag of their token's hash, so a
    new token (or revoking) ends the sessions made with the old one."""
    key = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
    return hmac.new(key, person.token_hash.encode(), hashlib.sha256).hexdigest()[:32]

"""What one web app shares between its requests, in one typed container (InvokeAI's
``InvocationServices``): the backend, the model catalogue, the pools and counters, the caches.
``create_app`` builds it once and keeps it at ``app.extensions[KEY]``; everything else reaches it
through ``services()`` (in a request) or ``services_of(app)``, never by an extensions key of its
own. The web modules' types are named for the type checker only: they import this module."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from app.jobs.base import Backend
from app.models.files import HashCache
from app.models.registry import Catalogue

if TYPE_CHECKING:
    from app.web.people import People
    from app.web.slow import SlowWork
    from app.web.throttle import FailureThrottle
    from app.web.waiting import WaitSlots

KEY = "t2i"  # app.extensions[KEY] is the app's Services


@dataclass
class Services:
    backend: Backend  # the job queue and its workers (app.jobs): SQLite in-process, or Redis
    catalogue: Catalogue  # the checkpoints and VAEs the app offers (app/web/models.py)
    slow: "SlowWork"  # the pool for slow reads: folder listings, hashes (app/web/slow.py)
    wait_slots: "WaitSlots"  # the long-poll and synchronous-call slots (app/web/waiting.py)
    throttle: "FailureThrottle"  # failed logins and credentials, by address (app/web/auth.py)
    lora_hashes: HashCache  # the LoRA files' hashes, kept in the instance folder (app/web/loras.py)
    people: "People | None" = None  # the people of an ACCESS = "people" app (app/web/people.py)
    # A1111 options set by POST /sdapi/v1/options for the process's life (app/web/sdapi.py).
    sdapi_options: dict[str, Any] = field(default_factory=dict)
    # The styles file as last read: (its path, inode, mtime and size; its styles) (app/web/styles.py).
    styles: tuple | None = None


def services() -> Services:
    """The current app's services."""
    return services_of(current_app)


def services_of(app: Flask) -> Services:
    return app.extensions[KEY]

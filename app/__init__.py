"""Stable Diffusion 2.1 text-to-image generator.

Layers, each importing only from those below it:

- ``app.cli``: every ``python -m app`` / ``t2i`` command (the only argparse code)
- ``app.web``: the Flask app (pages, native API, A1111 API) over one ``Backend``
- ``app.notebook``, ``app.bench``, ``app.training``: notebooks, benchmark, fine-tuning
- ``app.jobs``: jobs, the ``Backend`` interface and its SQLite and Redis implementations
- ``app.engine``: request/result types, validation, ``Engine``, samplers, PNG metadata
- ``app.models``: loading (Hub, folder, single file, demo), devices, random-weight builders, export

``create_app`` is importable from here (notebooks and docs/web-app.md use
``from app import create_app``); Flask is imported only when it is called,
so ``python -m app generate`` never imports Flask.
"""
from __future__ import annotations

from typing import Any


def create_app(test_config: dict[str, Any] | None = None):
    """The web app; see ``app.web.create_app``."""
    from app.web import create_app as create

    return create(test_config)

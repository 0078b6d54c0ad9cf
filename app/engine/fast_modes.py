"""The fast modes' request checks (issue #26; docs/speed.md). The modes themselves:
DeepCache in app/engine/sampling/deepcache.py, ToMe in app/engine/tome.py."""
from __future__ import annotations

from typing import Any

from app.engine.base import Limits, ValidationError, check_int


def check(request: Any, limits: Limits) -> None:
    """What the ranges (given with the fields) leave: a whole interval, and not 1."""
    check_int("deepcache_interval", request.deepcache_interval)
    if request.deepcache_interval == 1:
        raise ValidationError("deepcache_interval", 1, "must be 0 (off) or 2 to 5: 1 would run every call in full")

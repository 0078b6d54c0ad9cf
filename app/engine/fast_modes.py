"""The fast modes' request checks (issue #26; docs/speed.md). The modes themselves:
DeepCache in app/engine/sampling/deepcache.py, ToMe in app/engine/tome.py."""
from __future__ import annotations

from typing import Any

from app.engine.base import Limits, ValidationError, check_int, check_range


def check(request: Any, limits: Limits) -> None:
    check_int("deepcache_interval", request.deepcache_interval)
    check_range("deepcache_interval", request.deepcache_interval)
    if request.deepcache_interval == 1:
        raise ValidationError("deepcache_interval", 1, "must be 0 (off) or 2 to 5: 1 would run every call in full")
    check_range("tome_ratio", request.tome_ratio)

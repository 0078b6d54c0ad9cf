"""Deprecated alias, kept for one release: Redis jobs queued before the
``app/`` restructure name their failure callback
``app.redis_queue.on_rq_failure``. Import from ``app.jobs.redis.store``."""
from app.jobs.redis.store import on_rq_failure

__all__ = ["on_rq_failure"]

"""The Redis backend: jobs in Redis, dispatched through RQ to GPU worker
processes (``python -m app worker``). Importing this package needs ``redis``
and ``rq``; the default backend does not."""
from app.jobs.redis.backend import RedisBackend
from app.jobs.redis.store import RedisJobStore

__all__ = ["RedisBackend", "RedisJobStore"]

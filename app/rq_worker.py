"""Deprecated alias, kept for one release: Redis jobs queued before the
``app/`` restructure name their task ``app.rq_worker.run_job``. Import from
``app.jobs.redis.worker``."""
from app.jobs.redis.worker import GPUWorker, run_job

__all__ = ["GPUWorker", "run_job"]

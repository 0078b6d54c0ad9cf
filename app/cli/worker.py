"""``python -m app worker --redis URL``: one GPU worker of the Redis queue.

Run one per GPU (on one machine or many); the web app, started with
``REDIS_URL`` set to the same server, queues the jobs. RQ is imported only
when a worker starts, so ``python -m app generate`` never needs it.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from app.cli.common import CLIError, add_model_options, engine_options, load_engine


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("worker", help="take jobs from a Redis queue on this GPU (web app with REDIS_URL)")
    p.add_argument("--redis", default=os.environ.get("T2I_REDIS_URL"),
                   help="Redis server of the queue, e.g. redis://10.0.0.5:6379/0 (default: $T2I_REDIS_URL)")
    p.add_argument("--queue", default=os.environ.get("T2I_REDIS_QUEUE", "t2i"),
                   help="queue name; the web app's REDIS_QUEUE (default: t2i)")
    p.add_argument("--name", help="worker name, recorded on its jobs (default: <host>-<pid>)")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between heartbeats; a job whose worker misses three is run again elsewhere (default: 10)")
    p.add_argument("--outage-seconds", type=float, default=60.0, metavar="SECONDS",
                   help="how long a running job waits for Redis to come back before it is stopped and queued "
                        "again, once Redis answers (default: 60)")
    p.add_argument("--preview-every", type=int, default=1, metavar="N",
                   help="send a live preview every N steps, 0 for none (default: 1)")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--max-jobs", type=int, help="quit after this many jobs")
    p.add_argument("--upscaler-dir", default=os.environ.get("T2I_UPSCALER_DIR"),
                   help="folder of upscaler models for hires fix: the web app's UPSCALER_DIR "
                        "(default: $T2I_UPSCALER_DIR, else models/upscalers)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from redis import Redis
    from redis.exceptions import RedisError

    from app.jobs.base import ModelChoice
    from app.jobs.engines import load_choice
    from app.jobs.redis.store import RedisJobStore
    from app.jobs.redis.worker import GPUWorker

    if not args.redis:
        raise CLIError("redis: give the queue's server with --redis redis://HOST:PORT/DB (or set T2I_REDIS_URL)")
    if args.heartbeat <= 0:
        raise CLIError(f"heartbeat: must be more than 0 seconds, not {args.heartbeat}")
    if args.outage_seconds <= 0:
        raise CLIError(f"outage-seconds: must be more than 0 seconds, not {args.outage_seconds}")
    try:
        connection = Redis.from_url(args.redis)
        connection.ping()
    except (RedisError, ValueError) as exc:
        raise CLIError(f"redis: cannot reach {args.redis} ({exc})") from exc
    from app.engine import upscalers

    upscalers.configure(args.upscaler_dir)  # the names the web app accepted must be found here too
    options = engine_options(args)
    startup = ModelChoice(options.model, options.vae)
    job_queue = RedisJobStore(connection, name=args.queue)
    worker = GPUWorker([job_queue.rq], connection=connection, name=args.name or f"{socket.gethostname()}-{os.getpid()}",
                       load_startup=lambda: _load_startup(args), startup=startup, job_queue=job_queue,
                       heartbeat=args.heartbeat, preview_every=args.preview_every, retry_seconds=args.outage_seconds,
                       load_model=lambda choice: load_choice(options, choice))
    if worker.engine is None:
        raise CLIError(f"model: {options.model!r} could not be loaded: {worker.slot.error}")
    print(f"worker {worker.name}: {worker.engine.model_name} loaded; taking jobs from queue {args.queue!r} on "
          f"{args.redis}", flush=True)
    worker.work(burst=args.burst, max_jobs=args.max_jobs, logging_level="INFO")
    # Stopped (SIGTERM: its job handed back) or done: its teardown has run and its state is in Redis.
    # What is left, the interpreter freeing torch and the model object by object, took 5 s on a busy
    # 2-core machine, which `docker compose stop` and the tests' teardowns waited for; the OS frees
    # the process's memory at once. So the process ends here, its output flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _load_startup(args: argparse.Namespace):
    """The worker's ``--model``, loaded (at start, and again after a switch back to it). No
    caller keeps it: the worker's slot holds the only reference, so a switch frees it."""
    engine = load_engine(args)
    if os.path.isfile(engine.model):  # A1111's "Model hash" (switched-to models bring theirs from the web app)
        from app.models.files import file_sha256

        engine.model_hash = file_sha256(Path(engine.model))[:10]
    return engine

"""``rtgw worker``: RQ's own worker (with its scheduler, which runs the retries) on the task
queue, counting what becomes of each task in Redis so the gateway's /metrics shows it."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import redis
from rq import Worker
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from gateway.settings import Settings
from gateway.tasks.base import QueueUnavailable
from gateway.tasks.queue import connect, rq_queue, stats_key
from gateway.tasks.signing import secret_key

log = logging.getLogger("rtgw.tasks")


class TaskWorker(Worker):
    """RQ's worker; after each attempt, counts its outcome (``succeeded``, ``retried`` or
    ``dead_lettered``) by task in ``rtgw:tasks:<queue>:stats``."""

    def handle_job_success(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        super().handle_job_success(job, queue, *args, **kwargs)
        self._count(job, "succeeded")

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        outcome = "retried" if job.should_retry else "dead_lettered"
        super().handle_job_failure(job, queue, *args, **kwargs)
        self._count(job, outcome)

    def _count(self, job: Job, outcome: str) -> None:
        try:
            self.connection.hincrby(stats_key(job.origin), f"{outcome}:{job.meta.get('task')}")
        except redis.RedisError as exc:
            log.warning("task outcome not counted: %s", exc)


def run_worker(settings: Settings, burst: bool = False) -> int:
    """Work the queue until stopped (SIGTERM or Ctrl-C: the running job finishes first)."""
    if settings.webhook_secret is not None:
        secret_key(settings.webhook_secret)  # a bad secret stops the worker, not each delivery
    sys.path.insert(0, os.getcwd())  # jobs name the application's modules, as `rq worker` does
    connection = connect(settings, socket_timeout=None)
    try:
        worker = TaskWorker(
            [rq_queue(settings, connection)], connection=connection, serializer=JSONSerializer
        )
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())
    except redis.ConnectionError as exc:  # at start; later RQ waits for Redis itself
        raise QueueUnavailable(f"Redis: {exc}") from None
    return 0

"""The task queue on Redis with RQ (``RTGW_REDIS_URL``, queue ``RTGW_TASK_QUEUE``): the slot
owner enqueues each source batch's tasks in atomic Redis calls of about ``CHUNK`` tasks, ``rtgw
worker`` runs them.

Keys, besides RQ's own (``rq:queue:<queue>``, ``rq:job:<queue>-...``, its registries):
``rtgw:tasks:<queue>:enqueued`` (a hash: the last position enqueued, per slot and stream) and
``rtgw:tasks:<queue>:stats`` (a hash: ``<outcome>:<task>`` counters the workers keep).

How a task becomes a job, and the one atomic call that writes a chunk of them: see
gateway/tasks/jobs.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from gateway.router import Work
from gateway.settings import Settings
from gateway.sources.base import SinkUnavailable, first_line
from gateway.tasks.base import QueueUnavailable, TaskStats
from gateway.tasks.jobs import JobWriter

log = logging.getLogger("rtgw.tasks")

SOCKET_TIMEOUT_S = 5.0
SAMPLE_TIMEOUT_S = 2.0
OUTCOMES = ("succeeded", "retried", "dead_lettered")
CHUNK = 250  # tasks per atomic Redis call (a source batch can hold a large transaction)


def connect(settings: Settings, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client whose calls fail within ``socket_timeout`` (None: a worker, whose blocking
    dequeue waits longer) when Redis does not answer."""
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=socket_timeout,
        socket_connect_timeout=SOCKET_TIMEOUT_S, health_check_interval=30,
    )


def rq_queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def stats_key(queue: str) -> str:
    return f"rtgw:tasks:{queue}:stats"


def chunks(batch: Sequence[Work]) -> Iterator[list[Work]]:
    """The batch in runs of about ``CHUNK`` works, one atomic Redis call each, in order; a
    change's tasks are never split (the mark moves past a change only with all of them)."""
    chunk: list[Work] = []
    for work in batch:
        if len(chunk) >= CHUNK and work.position != chunk[-1].position:
            yield chunk
            chunk = []
        chunk.append(work)
    if chunk:
        yield chunk


class RQTaskQueue:
    """The ``TaskQueue`` on Redis (see gateway/tasks/base.py for the contract)."""

    def __init__(self, settings: Settings) -> None:
        self._name = settings.queue_name
        self._redis = connect(settings)
        self._queue = rq_queue(settings, self._redis)
        self._writer = JobWriter(
            self._queue, settings.webhook_retry_s, f"rtgw:tasks:{self._name}:enqueued"
        )
        self._slot = settings.slot
        self._stream = f"{self._slot}/"
        self.stats = TaskStats()

    def started(self, stream: str) -> None:
        self._stream = f"{self._slot}/{stream}"  # two slots on one queue keep apart

    async def enqueue(self, batch: Sequence[Work]) -> None:
        """Each chunk's call is prepared here (Python work, which would hold the interpreter
        in a thread too) and made in a thread (the event loop serves clients meanwhile)."""
        counts = self.stats.enqueued
        for chunk in chunks(batch):
            call = self._writer.prepare(chunk, self._stream)
            try:
                skipped = await asyncio.to_thread(self._writer.send, call)
            except redis.RedisError as exc:
                raise SinkUnavailable(
                    f"the task queue (Redis) is unavailable: {first_line(exc)}"
                ) from None
            for work in chunk[skipped:]:
                counts[work.task.name] = counts.get(work.task.name, 0) + 1

    async def sample(self) -> None:
        try:
            async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                await asyncio.to_thread(self._sample)
        except (redis.RedisError, TimeoutError) as exc:
            log.debug("task stats not sampled: %s", first_line(exc))

    def _sample(self) -> None:
        queue = self._queue
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(stats_key(self._name))
            pipe.llen(queue.key)
            pipe.zcard(queue.scheduled_job_registry.key)
            pipe.zcard(queue.failed_job_registry.key)
            counters, waiting, retrying, dead = pipe.execute()
        stats = self.stats
        for outcome in OUTCOMES:
            getattr(stats, outcome).clear()
        for field, count in counters.items():
            outcome, _, task = field.decode().partition(":")
            if outcome in OUTCOMES:
                getattr(stats, outcome)[task] = int(count)
        stats.waiting, stats.retrying, stats.dead = waiting, retrying, dead

    async def close(self) -> None:
        await asyncio.to_thread(self._redis.close)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: str
    task: str
    key: str  # the idempotency key: the change id
    error: str  # the last line of the last attempt's error


def dead_letters(settings: Settings) -> list[DeadLetter]:
    """The queue's dead letters, oldest first. Raises ``QueueUnavailable``."""
    connection = connect(settings)
    registry = FailedJobRegistry(queue=rq_queue(settings, connection))
    try:
        jobs = Job.fetch_many(
            registry.get_job_ids(), connection=connection, serializer=JSONSerializer
        )
        found = []
        for job in jobs:
            if job is not None:
                lines = (job.exc_info or "").strip().splitlines()
                found.append(DeadLetter(job.id, str(job.meta.get("task", "?")),
                                        str(job.meta.get("key", "?")), lines[-1] if lines else ""))
    except redis.RedisError as exc:
        raise QueueUnavailable(f"Redis: {first_line(exc)}") from None
    return found


def replay(settings: Settings, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Queue the dead letters ``ids`` (every one when empty) again, for one more attempt each
    (its webhook-id and job id unchanged). Returns the ids replayed and those that were no
    dead letter. Raises ``QueueUnavailable``."""
    connection = connect(settings)
    registry = FailedJobRegistry(queue=rq_queue(settings, connection))
    replayed, unknown = [], []
    try:
        for each in ids or registry.get_job_ids():
            try:
                registry.requeue(each)
            except (InvalidJobOperation, NoSuchJobError):
                unknown.append(each)
                continue
            replayed.append(each)
    except redis.RedisError as exc:
        raise QueueUnavailable(f"Redis: {first_line(exc)}") from None
    return replayed, unknown

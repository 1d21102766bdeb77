"""The task queue on Redis with RQ (``RTGW_REDIS_URL``, queue ``RTGW_TASK_QUEUE``): the slot
owner enqueues each source batch's tasks in Redis transactions of ``CHUNK`` tasks, ``rtgw
worker`` runs them.

Keys, besides RQ's own (``rq:queue:<queue>``, ``rq:job:<queue>-...``, its registries):
``rtgw:tasks:<queue>:enqueued`` (a hash: the last position enqueued, per slot and stream) and
``rtgw:tasks:<queue>:stats`` (a hash: ``<outcome>:<task>`` counters the workers keep).

A job's id is ``<queue>-<change id>-<task digest>``: deterministic, so a task is the same job
on every attempt. Jobs and their arguments are JSON (RQ's JSON serializer): a job function is
called with one string, the change as JSON (gateway.router.change_body); a webhook delivery
(gateway.tasks.webhook.deliver) with the URL, the webhook-id and the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.queue import EnqueueData
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from gateway.encoding import dumps_text
from gateway.router import Work, change_body
from gateway.settings import Settings
from gateway.sources.base import SinkUnavailable, first_line
from gateway.tasks.base import QueueUnavailable, TaskStats

log = logging.getLogger("rtgw.tasks")

WEBHOOK_JOB = "gateway.tasks.webhook.deliver"
DEAD_LETTER_TTL_S = 30 * 24 * 3600  # how long RQ keeps a dead letter
JITTER = 0.2  # each retry delay is drawn from +-20% around the configured one
SOCKET_TIMEOUT_S = 5.0
SAMPLE_TIMEOUT_S = 2.0
OUTCOMES = ("succeeded", "retried", "dead_lettered")
CHUNK = 1000  # tasks per Redis transaction (a source batch can hold a large transaction)


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


def jittered(delays: Sequence[int], draw: Callable[[], float] = random.random) -> list[int]:
    """The retry delays of one job: each within ``JITTER`` of the configured one, so failures
    that came together do not retry together."""
    return [max(0, round(delay * (1 + JITTER * (2 * draw() - 1)))) for delay in delays]


def chunks(batch: Sequence[Work]) -> Iterator[list[Work]]:
    """The batch in runs of about ``CHUNK`` works, one Redis transaction each, in order; a
    change's tasks are never split (the mark moves past a change only with all of them)."""
    chunk: list[Work] = []
    for work in batch:
        if len(chunk) >= CHUNK and work.position != chunk[-1].position:
            yield chunk
            chunk = []
        chunk.append(work)
    if chunk:
        yield chunk


def job_id(queue: str, work: Work) -> str:
    change = work.payload.change.id
    digest = hashlib.blake2b(work.task.name.encode(), digest_size=6).hexdigest()
    return f"{queue}-{change.lsn:016X}-{change.seq:06d}-{digest}"


def webhook_body(work: Work) -> str:
    """A Standard Webhooks payload: ``{"type": "<channel>.<op>", "timestamp", "data"}``."""
    payload = work.payload
    return dumps_text({
        "type": f"{payload.channel.name}.{payload.op.lower()}",
        "timestamp": payload.change.commit_time,
        "data": change_body(payload),
    })


class RQTaskQueue:
    """The ``TaskQueue`` on Redis (see gateway/tasks/base.py for the contract)."""

    def __init__(self, settings: Settings) -> None:
        self._name = settings.queue_name
        self._delays = settings.webhook_retry_s
        self._redis = connect(settings)
        self._queue = rq_queue(settings, self._redis)
        self._mark = f"rtgw:tasks:{self._name}:enqueued"
        self._slot = settings.slot
        self._stream = f"{self._slot}/"
        self.stats = TaskStats()

    def started(self, stream: str) -> None:
        self._stream = f"{self._slot}/{stream}"  # two slots on one queue keep apart

    async def enqueue(self, batch: Sequence[Work]) -> None:
        try:
            enqueued = await asyncio.to_thread(self._enqueue, batch, self._stream)
        except redis.RedisError as exc:
            raise SinkUnavailable(
                f"the task queue (Redis) is unavailable: {first_line(exc)}"
            ) from None
        counts = self.stats.enqueued
        for work in enqueued:
            counts[work.task.name] = counts.get(work.task.name, 0) + 1

    def _enqueue(self, batch: Sequence[Work], stream: str) -> list[Work]:
        return [work for chunk in chunks(batch) for work in self._enqueue_chunk(chunk, stream)]

    def _enqueue_chunk(self, batch: Sequence[Work], stream: str) -> list[Work]:
        """In one transaction: the jobs of the works past the stream's mark, and the new mark.
        WATCH makes a concurrent enqueuer (a slot owner's successor) retry, not duplicate."""
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._mark)  # type: ignore[no-untyped-call]
                    done = pipe.hget(self._mark, stream)
                    after = -1 if done is None else int(done)
                    fresh = [work for work in batch if work.position > after]
                    if not fresh:
                        pipe.unwatch()
                        return []
                    pipe.multi()
                    self._queue.enqueue_many([self._job(work) for work in fresh], pipeline=pipe)
                    pipe.hset(self._mark, stream, max(work.position for work in fresh))
                    pipe.execute()
                    return fresh
                except redis.WatchError:
                    continue

    def _job(self, work: Work) -> EnqueueData:
        task, key = work.task, str(work.payload.change.id)
        args: tuple[str, ...]
        if task.job is not None:
            function, args = task.job.replace(":", "."), (dumps_text(change_body(work.payload)),)
        else:
            assert task.webhook is not None, "channels.py requires a job or a webhook"
            function, args = WEBHOOK_JOB, (task.webhook, key, webhook_body(work))
        return Queue.prepare_data(  # a description, or RQ writes the arguments out once more
            function, args, job_id=job_id(self._name, work), description=f"{task.name} {key}",
            meta={"task": task.name, "key": key},
            retry=Retry(len(self._delays), jittered(self._delays)) if self._delays else None,
            result_ttl=0, failure_ttl=DEAD_LETTER_TTL_S,
        )

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

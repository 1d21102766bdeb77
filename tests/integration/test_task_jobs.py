"""The jobs gateway/tasks/jobs.py writes in one Lua call, on real Redis: each is the job RQ's
own enqueue writes for the same task (field by field, read back by RQ), and a chunk replayed
over the stream's mark enqueues only the works past it. (That RQ's worker runs them, retries
them and keeps their dead letters: tests/integration/test_tasks.py.)"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from gateway.bus.memory import MemoryBus
from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import load_channels
from gateway.encoding import loads
from gateway.router import Router, Work
from gateway.settings import Settings
from gateway.tasks.jobs import DEAD_LETTER_TTL_S, JITTER, arguments, job_id
from gateway.tasks.queue import RQTaskQueue, rq_queue

CHANNELS = '''
[channels.orders]
table = "public.orders"
columns = ["id", "status"]

[channels.orders.tasks.receipt]
job = "myapp.jobs:send_receipt"

[channels.orders.tasks.partner]
webhook = "https://partner.example/hooks"
'''
COLUMNS = (Column("id", "int8"), Column("status", "text"))
DELAYS = (60, 300)


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"jobs_{secrets.token_hex(4)}"
    client = redis.Redis.from_url(redis_url)
    try:
        yield name
    finally:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)
        client.srem("rq:queues", f"rq:queue:{name}")
        client.close()


def works(tmp_path: Path, seqs: range) -> list[Work]:
    """Both tasks of each order inserted, at ``seqs`` in one transaction."""
    (tmp_path / "orders.toml").write_text(CHANNELS, encoding="utf-8")
    router = Router(load_channels(tmp_path), MemoryBus())
    found: list[Work] = []
    for seq in seqs:
        router.route(Change(
            ChangeId(0x2000, seq), "public", "orders", Op.INSERT, 1_700_000_000_000_000,
            COLUMNS, new={"id": seq, "status": "paid"},
        ), found)
    return found


def decoded(field: bytes, value: bytes) -> object:
    if field == b"data":
        return loads(zlib.decompress(value))
    if field == b"meta":
        return loads(value)
    return value


async def test_each_job_is_the_one_rq_enqueues_for_the_task(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, task_queue=queue, webhook_retry_s=DELAYS)
    tasks = RQTaskQueue(settings)
    tasks.started("s")
    batch = works(tmp_path, range(1, 3))
    try:
        await tasks.enqueue(batch)
    finally:
        await tasks.close()
    client = redis.Redis.from_url(redis_url)
    rq = rq_queue(settings, client)
    ours = [job_id(queue, work) for work in batch]
    for work, ours_id in zip(batch, ours, strict=True):
        function, args = arguments(work)
        key = str(work.payload.change.id)
        theirs = rq.enqueue_call(  # the same job, by RQ, under another id
            function, args=args, job_id=f"{ours_id}-rq", description=f"{work.task.name} {key}",
            meta={"task": work.task.name, "key": key}, retry=Retry(len(DELAYS), list(DELAYS)),
            result_ttl=0, failure_ttl=DEAD_LETTER_TTL_S,
        )
        mine, rqs = client.hgetall(Job.key_for(ours_id)), client.hgetall(theirs.key)
        assert mine.keys() == rqs.keys()
        stamped = {b"created_at", b"enqueued_at", b"retry_intervals"}
        assert {f: decoded(f, v) for f, v in mine.items() if f not in stamped} == {
            f: decoded(f, v) for f, v in rqs.items() if f not in stamped
        }
        job = Job.fetch(ours_id, connection=client, serializer=JSONSerializer)  # RQ reads it
        assert (job.func_name, list(job.args), job.kwargs) == (function, args, {})
        assert job.origin == queue and job.get_status() == "queued"
        assert job.retries_left == len(DELAYS) and job.enqueued_at is not None
        assert job.retry_intervals is not None and all(
            abs(got - want) <= want * JITTER + 1
            for got, want in zip(job.retry_intervals, DELAYS, strict=True)
        )
        if work.task.webhook is not None:
            assert job.args[1] == key  # the webhook-id: the change id
    assert {work.task.webhook is None for work in batch} == {True, False}
    queued = [i.decode() for i in client.lrange(rq.key, 0, -1)]
    assert queued == ours + [f"{i}-rq" for i in ours]  # ours first, in order
    assert client.sismember("rq:queues", rq.key)


async def test_a_replayed_batch_enqueues_only_what_is_past_the_mark(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, task_queue=queue)
    tasks = RQTaskQueue(settings)
    tasks.started("s")
    try:
        await tasks.enqueue(works(tmp_path, range(1, 4)))
        await tasks.enqueue(works(tmp_path, range(2, 6)))  # 2 and 3 again: after a crash
        await tasks.enqueue(works(tmp_path, range(1, 6)))  # all of it again
        tasks.started("another stream")  # its own mark
        await tasks.enqueue(works(tmp_path, range(1, 2)))
    finally:
        await tasks.close()
    client = redis.Redis.from_url(redis_url)
    queued = [i.decode() for i in client.lrange(f"rq:queue:{queue}", 0, -1)]
    expected = [job_id(queue, work) for work in works(tmp_path, range(1, 6))]
    assert queued == expected + expected[:2]  # the other stream's positions are its own
    assert tasks.stats.enqueued == {"orders.receipt": 6, "orders.partner": 6}

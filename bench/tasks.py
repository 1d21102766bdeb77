"""Tasks' cost on the stream: a transaction of orders streamed and routed with a job task on
every order (enqueued on Redis, one atomic call per about 250 tasks) against the same run
without tasks, in one invocation. No worker runs: this is the gateway's side only. Then the
enqueue alone: 10,000 tasks by the gateway's queue against RQ's own ``enqueue_many`` (Job
objects, one pipeline per chunk, no mark: what the gateway did before), in the same run.

    .venv/bin/python -m bench.tasks            # 100,000 orders, 3 rounds
    .venv/bin/python -m bench.tasks --short    # 20,000 orders, 1 round

Redis: RTGW_REDIS_URL (default the machine's, 127.0.0.1:6379); the run's keys carry a queue
name of its own and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import statistics
import time

import psycopg
import redis
from rq import Queue

from bench.cdc import REPO, _stream_100k
from bench.fanout import embedded_postgres
from gateway.bus.memory import MemoryBus
from gateway.changes import Change, ChangeId, Column, Op
from gateway.channels import ChannelSet, Task, load_channels
from gateway.router import Router, Work
from gateway.settings import Settings
from gateway.tasks.jobs import DEAD_LETTER_TTL_S, arguments, job_id
from gateway.tasks.queue import RQTaskQueue, chunks, rq_queue

ENQUEUED = 10_000  # tasks in the enqueue-only comparison


def with_a_task(channels: ChannelSet) -> ChannelSet:
    """The demo's channels, the orders channel with one job task for every insert."""
    task = Task("orders.bench", frozenset({Op.INSERT}), None, job="bench.jobs:noop")
    return ChannelSet(
        dataclasses.replace(c, tasks=(task,)) if c.name == "orders" else c for c in channels
    )


def orders(channels: ChannelSet, count: int) -> list[Work]:
    """The tasks of ``count`` inserted orders, as the router hands them on."""
    router, work = Router(channels, MemoryBus()), list[Work]()
    columns = (Column("id", "int8"), Column("customer_id", "int8"), Column("status", "text"),
               Column("total", "numeric"), Column("created_at", "timestamptz"))
    for seq in range(count):
        router.route(Change(
            ChangeId(0x1000, seq), "public", "orders", Op.INSERT, 1_764_460_800_000_000, columns,
            new={"id": seq, "customer_id": 1, "status": "pending", "total": "12.50",
                 "created_at": "2026-11-30 00:00:00+00"},
        ), work)
    return work


def rq_enqueue(queue: Queue, work: list[Work]) -> None:
    """RQ's own ``enqueue_many``, one pipeline per chunk (the mark left out)."""
    for chunk in chunks(work):
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many([
                Queue.prepare_data(
                    *arguments(each), job_id=f"{job_id(queue.name, each)}-rq",
                    description=each.task.name, meta={"task": each.task.name},
                    result_ttl=0, failure_ttl=DEAD_LETTER_TTL_S,
                ) for each in chunk
            ], pipeline=pipe)
            pipe.execute()


def enqueue_only(settings: Settings, channels: ChannelSet, rounds: int) -> tuple[float, float]:
    """Microseconds per task: the gateway's queue, RQ's own; medians of ``rounds``."""
    work = orders(channels, ENQUEUED)
    ours, theirs = [], []
    for _ in range(rounds):
        tasks = RQTaskQueue(settings)
        tasks.started(secrets.token_hex(4))
        started = time.perf_counter()
        asyncio.run(tasks.enqueue(work))
        ours.append(time.perf_counter() - started)
        asyncio.run(tasks.close())
        connection = redis.Redis.from_url(settings.redis_url)
        started = time.perf_counter()
        rq_enqueue(rq_queue(settings, connection), work)
        theirs.append(time.perf_counter() - started)
        connection.close()
    return (statistics.median(ours) / ENQUEUED * 1e6,
            statistics.median(theirs) / ENQUEUED * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="20,000 rows, 1 round")
    args = parser.parse_args()
    rows, rounds = (20_000, 1) if args.short else (100_000, 3)
    channels = with_a_task(load_channels(REPO / "channels"))
    queue = f"bench_{secrets.token_hex(4)}"
    settings = Settings(task_queue=queue)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with embedded_postgres() as pg:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO customers (name) VALUES ('bench')")

            async def tasked_run() -> float:
                tasks = RQTaskQueue(settings)
                tasks.started(secrets.token_hex(4))  # a fresh mark for each round
                try:
                    return await _stream_100k(pg, rows, channels=channels, enqueue=tasks.enqueue)
                finally:
                    await tasks.close()

            plain, tasked = [], []
            for _ in range(rounds):
                plain.append(asyncio.run(_stream_100k(pg, rows)))
                tasked.append(asyncio.run(tasked_run()))
            queued = client.llen(f"rq:queue:{queue}")
            ours, theirs = enqueue_only(settings, channels, rounds)
    finally:
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
        client.srem("rq:queues", f"rq:queue:{queue}")
    base, with_tasks = statistics.median(plain), statistics.median(tasked)
    print(f"tasks, {rows:,} orders in one transaction, a job task on each "
          f"(COMMIT -> all routed and enqueued, median of {rounds}):")
    print(f"  without tasks  {base:6.2f} s  {rows / base:9,.0f} changes/s")
    print(f"  with a task    {with_tasks:6.2f} s  {rows / with_tasks:9,.0f} changes/s")
    print(f"  ratio          {base / with_tasks:6.2f}x")
    print(f"  jobs enqueued: {queued:,} (expected {rows * rounds:,})")
    print(f"enqueue alone, {ENQUEUED:,} tasks (median of {rounds}):")
    print(f"  RQ's enqueue_many  {theirs:6.1f} us/task")
    print(f"  the gateway's      {ours:6.1f} us/task  ({theirs / ours:.1f}x faster)")


if __name__ == "__main__":
    main()

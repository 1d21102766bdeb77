"""Tasks' cost on the stream: a transaction of orders streamed and routed with a job task on
every order (enqueued on Redis, a transaction per source batch) against the same run
without tasks, in one invocation. No worker runs: this is the gateway's side only.

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

import psycopg
import redis

from bench.cdc import REPO, _stream_100k
from bench.fanout import embedded_postgres
from gateway.changes import Op
from gateway.channels import ChannelSet, Task, load_channels
from gateway.settings import Settings
from gateway.tasks.queue import RQTaskQueue


def with_a_task(channels: ChannelSet) -> ChannelSet:
    """The demo's channels, the orders channel with one job task for every insert."""
    task = Task("orders.bench", frozenset({Op.INSERT}), None, job="bench.jobs:noop")
    return ChannelSet(
        dataclasses.replace(c, tasks=(task,)) if c.name == "orders" else c for c in channels
    )


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


if __name__ == "__main__":
    main()

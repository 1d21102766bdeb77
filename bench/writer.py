"""Real Postgres commits at a requested rate: ``python -m bench.writer --dsn D --workload W``.

Each tick is one autocommit INSERT of the rows that are due (usually one). Every row carries
``ts=<clock_timestamp() as epoch seconds>`` in a text column the channel shows (``status`` of
``public.orders``, ``title`` of ``public.notifications``), so the load client can measure
receive time minus the row's write time with microsecond precision.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import psycopg

from bench.pacer import Pacer
from bench.procs import emit, pin, run, serve_pacer_commands

WRITER_CPU = 1
STAMP = "'ts=' || extract(epoch from clock_timestamp())::text"


def user_id(index: int) -> str:
    """The partition key (token ``sub``) of partitioned-workload user ``index``."""
    return f"00000000-0000-4000-8000-{index:012x}"


async def writer(dsn: str, workload: str, users: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT id FROM public.customers ORDER BY id LIMIT 1")
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                "INSERT INTO public.customers (name) VALUES ('bench') RETURNING id"
            )
            row = await cur.fetchone()
        assert row is not None
        customer = row[0]
        targets = itertools.cycle([user_id(i) for i in range(users)])

        async def fire(times: list[float]) -> None:
            if workload == "topic":
                await conn.execute(
                    "INSERT INTO public.orders (customer_id, status, total) "
                    f"SELECT %s, {STAMP}, 10.00 FROM generate_series(1, %s)",
                    (customer, len(times)),
                )
            else:
                await conn.execute(
                    "INSERT INTO public.notifications (user_id, title) "
                    f"SELECT u, {STAMP} FROM unnest(%s::uuid[]) AS u",
                    ([next(targets) for _ in times],),
                )

        pacer = Pacer(fire)
        pacing = asyncio.create_task(pacer.run())
        emit({"ready": True})
        try:
            await serve_pacer_commands(pacer)
        finally:
            pacing.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writer")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workload", choices=("topic", "partitioned"), default="topic")
    parser.add_argument("--users", type=int, default=1)
    args = parser.parse_args()
    pin(WRITER_CPU)
    run(writer(args.dsn, args.workload, args.users))


if __name__ == "__main__":
    main()

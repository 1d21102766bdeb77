"""Real Postgres commits at a requested rate: ``python -m bench.writer --dsn D --workload W``.

Each tick (5 ms or more apart) hands the rows that are due to a procedure of the session (in
``pg_temp``, so the database keeps nothing of it) that inserts them and commits every
``--rows-per-txn`` rows (default 1: single-row transactions, as an application's notifications
are), in one round trip: Postgres does the per-transaction work, the writer almost none (about
15 µs of Postgres CPU per single-row transaction against 55 µs, and a round trip each, for an
autocommit INSERT per row).
Every row carries ``ts=<clock_timestamp() as epoch seconds>`` in a text column the channel shows
(``status`` of ``public.orders``, ``title`` of ``public.notifications``), so the load client can
measure receive time minus the row's write time with microsecond precision.

Workloads: ``topic`` (every row an order), ``partitioned`` (every row a notification, round-robin
over ``--users``), ``mixed`` (every ``--topic-every``-th row an order, the others notifications
round-robin over the users; up to two INSERTs a tick). The writer outlives its database: a
failed INSERT (Postgres restarting) is counted in ``stats`` and the connection is made again, so
which rows were committed is for the database to say, not the writer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from typing import Any

import psycopg

from bench.pacer import Pacer
from bench.procs import emit, pin, run, serve_pacer_commands

WRITER_CPU = 1
STAMP = "'ts=' || extract(epoch from clock_timestamp())::text"
RETRY_S = 0.2  # after a failed CALL, before connecting again
WRITER_TICK_S = 0.005  # a CALL costs the writer about 100 µs: 200 a second, not 1,000
PROCEDURES = (
    f"""CREATE PROCEDURE pg_temp.bench_orders(customer bigint, count int, per_txn int)
    LANGUAGE plpgsql AS $$
    DECLARE done int := 0;
    BEGIN
      WHILE done < count LOOP
        INSERT INTO public.orders (customer_id, status, total)
          SELECT customer, {STAMP}, 10.00 FROM generate_series(1, least(per_txn, count - done));
        COMMIT;
        done := done + per_txn;
      END LOOP;
    END $$""",
    f"""CREATE PROCEDURE pg_temp.bench_notify(users uuid[], per_txn int) LANGUAGE plpgsql AS $$
    DECLARE first int := 1;
    BEGIN
      WHILE first <= cardinality(users) LOOP
        INSERT INTO public.notifications (user_id, title)
          SELECT u, {STAMP} FROM unnest(users[first:first + per_txn - 1]) AS u;
        COMMIT;
        first := first + per_txn;
      END LOOP;
    END $$""",
)
ORDERS = "CALL pg_temp.bench_orders(%s, %s, %s)"
NOTIFICATIONS = "CALL pg_temp.bench_notify(%s::uuid[], %s)"


def user_id(index: int) -> str:
    """The partition key (token ``sub``) of partitioned-workload user ``index``."""
    return f"00000000-0000-4000-8000-{index:012x}"


class Writer:
    """One connection, made again after a failure; the INSERTs of one workload."""

    def __init__(
        self, dsn: str, workload: str, users: int, topic_every: int, rows_per_txn: int = 1
    ) -> None:
        self.dsn, self.workload, self.rows_per_txn = dsn, workload, rows_per_txn
        self.topic_every = 1 if workload == "topic" else topic_every if workload == "mixed" else 0
        self.targets = itertools.cycle([user_id(i) for i in range(users)])
        self.rows = 0  # rows asked for so far (committed or not)
        self.failures = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._customer = 0

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
        for procedure in PROCEDURES:
            await conn.execute(procedure)
        cur = await conn.execute("SELECT id FROM public.customers ORDER BY id LIMIT 1")
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                "INSERT INTO public.customers (name) VALUES ('bench') RETURNING id"
            )
            row = await cur.fetchone()
        assert row is not None
        self._conn, self._customer = conn, row[0]
        return conn

    async def fire(self, times: list[float]) -> None:
        orders, users = 0, []
        for _ in times:
            self.rows += 1
            if self.topic_every and self.rows % self.topic_every == 0:
                orders += 1
            else:
                users.append(next(self.targets))
        try:
            conn = await self.connect()
            if orders:
                await conn.execute(ORDERS, (self._customer, orders, self.rows_per_txn))
            if users:
                await conn.execute(NOTIFICATIONS, (users, self.rows_per_txn))
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.failures += 1
            await self.close()
            await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


async def writer(dsn: str, workload: str, users: int, topic_every: int, per_txn: int) -> None:
    rows = Writer(dsn, workload, users, topic_every, per_txn)
    await rows.connect()
    pacer = Pacer(rows.fire, WRITER_TICK_S)
    pacing = asyncio.create_task(pacer.run())
    emit({"ready": True})
    try:
        await serve_pacer_commands(pacer, lambda: {"failures": rows.failures})
    finally:
        pacing.cancel()
        await rows.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writer")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workload", choices=("topic", "partitioned", "mixed"), default="topic")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--topic-every", type=int, default=100,
                        help="mixed: every k-th row is an order, the others notifications")
    parser.add_argument("--rows-per-txn", type=int, default=1,
                        help="rows per committed transaction (1: single-row transactions)")
    args = parser.parse_args()
    pin(WRITER_CPU)
    run(writer(args.dsn, args.workload, args.users, args.topic_every, args.rows_per_txn))


if __name__ == "__main__":
    main()

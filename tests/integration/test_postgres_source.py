"""The Postgres source on its own: persistence across restarts, reconnects, acknowledgements."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from gateway.changes import Change, Op
from gateway.sources.base import ChangeSink
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.sources.postgres.stream import parse_lsn
from tests.conftest import drop_slot

TABLES = (("public", "customers"), ("public", "orders"), ("public", "notifications"))


class Collector:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.arrived = asyncio.Event()

    async def __call__(self, batch: Sequence[Change]) -> None:
        self.changes.extend(batch)
        self.arrived.set()

    async def wait_for(self, count: int, wait_s: float = 15.0) -> list[Change]:
        deadline = time.monotonic() + wait_s
        while len(self.changes) < count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.changes)} of {count} changes arrived")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.changes


@contextlib.asynccontextmanager
async def streaming(source: PostgresSource, sink: ChangeSink) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(sink))
    deadline = time.monotonic() + 15
    while not source.streaming:
        assert not task.done(), task
        assert time.monotonic() < deadline, source.last_error
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def slot(pg: EmbeddedPostgres) -> Any:
    name = f"src_{secrets.token_hex(4)}"
    yield name
    drop_slot(pg.dsn, name)


def _config(pg: EmbeddedPostgres, slot: str, **extra: Any) -> PostgresSourceConfig:
    return PostgresSourceConfig(dsn=pg.dsn, slot=slot, publication="rtgw", tables=TABLES, **extra)


def _insert_customers(db: psycopg.Connection[Any], names: Sequence[str]) -> None:
    for name in names:  # one transaction each
        db.execute("INSERT INTO customers (name) VALUES (%s)", (name,))


def _names(changes: Sequence[Change]) -> list[str]:
    return [c.new["name"] for c in changes if c.table == "customers" and c.new is not None]


async def test_rows_committed_while_down_arrive_after_restart_in_order(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    prefix = secrets.token_hex(3)
    first = Collector()
    async with streaming(PostgresSource(_config(pg, slot)), first):
        _insert_customers(db, [f"{prefix}-before-{i}" for i in range(3)])
        await first.wait_for(3)
    assert _names(first.changes) == [f"{prefix}-before-{i}" for i in range(3)]

    # The gateway is down: these commits wait in the persistent slot.
    while_down = [f"{prefix}-down-{i}" for i in range(20)]
    _insert_customers(db, while_down)
    with db.transaction():
        db.execute("INSERT INTO customers (name) VALUES (%s)", (f"{prefix}-down-txn-a",))
        db.execute("INSERT INTO customers (name) VALUES (%s)", (f"{prefix}-down-txn-b",))

    second = Collector()
    async with streaming(PostgresSource(_config(pg, slot)), second):
        _insert_customers(db, [f"{prefix}-after"])
        await second.wait_for(23)
    expected = [*while_down, f"{prefix}-down-txn-a", f"{prefix}-down-txn-b", f"{prefix}-after"]
    # A clean stop confirmed everything it had handed on: nothing is replayed, nothing is lost.
    assert _names(second.changes) == expected
    ids = [c.id for c in second.changes]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    txn_a, txn_b = second.changes[20], second.changes[21]
    assert txn_a.id.lsn == txn_b.id.lsn and (txn_a.id.seq, txn_b.id.seq) == (0, 1)
    assert all(first.changes[-1].id < c.id for c in second.changes)


async def test_unconfirmed_changes_are_redelivered_with_the_same_ids(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    """A sink that never returns means the transaction was never confirmed: it comes again."""
    prefix = secrets.token_hex(3)
    blocked = asyncio.Event()
    seen: list[Change] = []

    async def stuck_sink(batch: Sequence[Change]) -> None:
        seen.extend(batch)
        blocked.set()
        await asyncio.Event().wait()  # never hands on

    async with streaming(PostgresSource(_config(pg, slot)), stuck_sink):
        _insert_customers(db, [f"{prefix}-x"])
        await asyncio.wait_for(blocked.wait(), 15)

    again = Collector()
    async with streaming(PostgresSource(_config(pg, slot)), again):
        await again.wait_for(1)
    assert _names(again.changes) == [f"{prefix}-x"]
    assert again.changes[0].id == seen[0].id


async def test_source_reconnects_after_its_connection_is_killed(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    prefix = secrets.token_hex(3)
    sink = Collector()
    source = PostgresSource(_config(pg, slot, backoff_initial_s=0.1))
    async with streaming(source, sink):
        _insert_customers(db, [f"{prefix}-1"])
        await sink.wait_for(1)
        killed = db.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NOT NULL",
            (slot,),
        ).fetchone()
        assert killed == (True,)
        _insert_customers(db, [f"{prefix}-2", f"{prefix}-3"])
        while len({c.id for c in sink.changes}) < 3:
            await sink.wait_for(len(sink.changes) + 1)
        assert source.streaming
    # At-least-once: what was not yet confirmed may come again, but only with the same id.
    unique = {c.id: c for c in sink.changes}
    assert _names(sorted(unique.values(), key=lambda c: c.id)) == [
        f"{prefix}-1", f"{prefix}-2", f"{prefix}-3",
    ]
    assert len(sink.changes) - len(unique) <= 1


async def test_keepalives_are_answered_and_an_idle_slot_is_confirmed(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    db.execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
    db.execute("SELECT pg_reload_conf()")
    try:
        sink = Collector()
        source = PostgresSource(_config(pg, slot, status_interval_s=0.5))
        async with streaming(source, sink):
            row = db.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            assert row is not None
            pid = row[0]
            # WAL that the publication does not cover: nothing to deliver, but it must not pin.
            db.execute("CREATE TEMP TABLE scratch AS SELECT generate_series(1, 1000) AS n")
            target = db.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert target is not None
            await asyncio.sleep(5)  # more than twice wal_sender_timeout
            state = db.execute(
                "SELECT active_pid, confirmed_flush_lsn::text FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            ).fetchone()
            assert state is not None
            assert state[0] == pid  # the same walsender: it never timed us out
            assert parse_lsn(state[1]) >= parse_lsn(target[0])
        assert sink.changes == []
    finally:
        db.execute("ALTER SYSTEM RESET wal_sender_timeout")
        db.execute("SELECT pg_reload_conf()")


async def test_truncate_and_types_arrive(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS typed (id int PRIMARY KEY, f float8, b bool, j jsonb, "
        "u uuid, ts timestamptz, d date, arr int[], txt text[], n numeric)"
    )
    db.execute("ALTER TABLE typed REPLICA IDENTITY FULL")
    db.execute("ALTER PUBLICATION rtgw ADD TABLE typed")
    try:
        sink = Collector()
        config = PostgresSourceConfig(dsn=pg.dsn, slot=slot, publication="rtgw",
                                      tables=(*TABLES, ("public", "typed")))
        async with streaming(PostgresSource(config), sink):
            db.execute(
                "INSERT INTO typed VALUES (1, 'NaN', true, '{\"a\": [1, null]}', "
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-05-06 07:08:09.5+02', "
                "'2024-02-29', '{{1,NULL},{3,4}}', '{\"a,b\",c}', 1e-20)"
            )
            db.execute("TRUNCATE typed")
            insert, truncate = await sink.wait_for(2)
        assert insert.new == {
            "id": 1, "f": "NaN", "b": True, "j": {"a": [1, None]},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ts": "2024-05-06T05:08:09.5+00:00",
            "d": "2024-02-29", "arr": [[1, None], [3, 4]], "txt": ["a,b", "c"],
            "n": "0.00000000000000000001",
        }
        assert truncate.op is Op.TRUNCATE and truncate.table == "typed"
        assert truncate.new is None and truncate.old is None
    finally:
        db.execute("ALTER PUBLICATION rtgw DROP TABLE typed")
        db.execute("DROP TABLE typed")


async def test_a_created_publication_publishes_stored_generated_columns(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any], slot: str
) -> None:
    db.execute("CREATE TABLE gen (id int PRIMARY KEY, n int, "
               "twice int GENERATED ALWAYS AS (n * 2) STORED)")
    publication = f"gen_{secrets.token_hex(3)}"
    try:
        sink = Collector()
        config = PostgresSourceConfig(dsn=pg.dsn, slot=slot, publication=publication,
                                      tables=(("public", "gen"),))
        async with streaming(PostgresSource(config), sink):
            db.execute("INSERT INTO gen (id, n) VALUES (1, 21)")
            (insert,) = await sink.wait_for(1)
        assert insert.new == {"id": 1, "n": 21, "twice": 42}
    finally:
        db.execute(f"DROP PUBLICATION IF EXISTS {publication}")
        db.execute("DROP TABLE gen")

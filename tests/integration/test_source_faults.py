"""Faults the source must survive: Postgres restarting, a slot invalidated for lack of WAL, a slot
held by another process, and a live-only (temporary) slot. Destructive tests run on a cluster of
their own, never on the session's."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_config
from gateway.settings import Settings
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig, provisioning
from gateway.sources.postgres.lag import LagSampler
from tests.conftest import (
    REPO,
    TEST_SECRET,
    connect,
    drop_slot,
    embedded_cluster,
    free_port,
    start_gateway,
    token,
)
from tests.integration.test_postgres_source import TABLES, Collector, _names, streaming


@pytest.fixture(scope="module")
def spare(pg: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """A second cluster that tests may stop, restart and starve of WAL."""
    with embedded_cluster("spare") as server:
        yield server


def _config(server: EmbeddedPostgres, slot: str, **extra: Any) -> PostgresSourceConfig:
    return PostgresSourceConfig(
        dsn=server.dsn, slot=slot, publication="rtgw", tables=TABLES, **extra
    )


async def _until(condition: Any, wait_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _insert(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (name) VALUES (%s)", (name,))


async def test_postgres_restart_reconnects_with_backoff_and_resumes_from_the_slot(
    spare: EmbeddedPostgres,
) -> None:
    slot = f"restart_{secrets.token_hex(4)}"
    sink = Collector()
    source = PostgresSource(_config(spare, slot, backoff_initial_s=0.1, backoff_max_s=0.5))
    try:
        async with streaming(source, sink):
            _insert(spare.dsn, "before-restart")
            await sink.wait_for(1)
            await asyncio.to_thread(spare.stop)
            await _until(lambda: not source.streaming, what="the source to notice")
            await _until(lambda: source.last_error is not None, what="last_error")
            assert source.last_error is not None
            assert source.last_error.split(":")[0] in {"database_unavailable",
                                                      "replication_failed"}
            await asyncio.to_thread(spare.start)
            _insert(spare.dsn, "after-restart")
            await _until(lambda: "after-restart" in _names(sink.changes), what="the new row")
            assert source.streaming and source.last_error is None
    finally:
        spare.start()
        drop_slot(spare.dsn, slot)
    unique = {c.id: c for c in sink.changes}
    assert _names(sorted(unique.values(), key=lambda c: c.id)) == ["before-restart",
                                                                    "after-restart"]


async def test_invalidated_slot_is_recreated_and_subscribers_get_a_gap(
    spare: EmbeddedPostgres,
) -> None:
    gateway = await start_gateway(spare.dsn)
    slot = gateway.settings.slot
    holder = psycopg.connect(spare.dsn)  # an open transaction pins the slot's restart_lsn
    try:
        with psycopg.connect(spare.dsn, autocommit=True) as db:
            found = db.execute("INSERT INTO customers (name) VALUES ('c') RETURNING id").fetchone()
            assert found is not None
            customer = found[0]
            async with connect(gateway.ws_url) as client:
                await client.auth(token())
                await client.subscribe("orders")
                db.execute("INSERT INTO orders (customer_id, status, total) "
                           "VALUES (%s, 'before', 1)", (customer,))
                (before,) = await client.events(1)
                assert before["change"]["new"]["status"] == "before"

                holder.execute("INSERT INTO orders (customer_id, status, total) "
                               "VALUES (%s, 'rolled-back', 1)", (customer,))
                # In a thread: the gateway on this loop must keep reading, or the walsender
                # blocks writing to it and the checkpoint waits for that walsender forever.
                row = await asyncio.to_thread(_starve_slot, db, slot)
                assert row == ("lost",)
                holder.rollback()

                gap = await client.recv(20)
                while gap["type"] != "gap":
                    gap = await client.recv(20)
                assert gap["topic"] == "orders" and gap["reason"].startswith("slot_invalidated")
                # Positions stay those of the database: the gap says how far they may be lost.
                assert gap["epoch"] == before["epoch"] and gap["offset"] >= before["offset"]

                db.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
                db.execute("SELECT pg_reload_conf()")
                db.execute("INSERT INTO orders (customer_id, status, total) "
                           "VALUES (%s, 'after', 1)", (customer,))
                (after,) = await client.events(1)
                assert after["change"]["new"]["status"] == "after"
                assert after["epoch"] == gap["epoch"] and after["offset"] > gap["offset"]
                async with connect(gateway.ws_url) as late:
                    await late.auth(token())
                    lost = await late.subscribe("orders", since={
                        "offset": before["offset"], "epoch": before["epoch"]})
                    assert lost["recovered"] is False
                    await late.send({"type": "unsubscribe", "topic": "orders"})
                    await late.recv()
                    refetched = await late.subscribe("orders", since={
                        "offset": gap["offset"], "epoch": gap["epoch"]})
                    assert refetched["recovered"] is True
                    assert [e["offset"] for e in await late.events(1)] == [after["offset"]]
                state = db.execute("SELECT wal_status FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (slot,)).fetchone()
                assert state is not None and state[0] != "lost"
    finally:
        holder.close()
        with psycopg.connect(spare.dsn, autocommit=True) as db:
            db.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            db.execute("SELECT pg_reload_conf()")
        await gateway.stop()
        drop_slot(spare.dsn, slot)


async def test_slot_dropped_behind_the_sources_back_is_recreated_with_a_gap(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot = f"gone_{secrets.token_hex(4)}"
    sink = Collector()
    gaps: list[str] = []
    source = PostgresSource(_config(pg, slot, backoff_initial_s=1.0))
    task = asyncio.create_task(source.run(sink, lambda _tables, why: gaps.append(why)))
    try:
        await _until(lambda: source.streaming, what="streaming")
        db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                   "WHERE slot_name = %s", (slot,))
        drop_slot(pg.dsn, slot)  # within the source's 1 s backoff
        await _until(lambda: bool(gaps), what="the gap")
        assert gaps[0].startswith("slot_missing: ")
        await _until(lambda: source.streaming, what="streaming again")
        db.execute("INSERT INTO customers (name) VALUES ('after-drop')")
        await _until(lambda: "after-drop" in _names(sink.changes), what="the new row")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        drop_slot(pg.dsn, slot)


def _starve_slot(db: psycopg.Connection[Any], slot: str) -> Any:
    """Write more WAL than max_slot_wal_keep_size lets the slot keep, then checkpoint."""
    db.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    db.execute("SELECT pg_reload_conf()")
    db.execute("CREATE TABLE IF NOT EXISTS wal_filler (n int)")  # not published
    for _ in range(3):
        db.execute("INSERT INTO wal_filler SELECT generate_series(1, 1000)")
        db.execute("SELECT pg_switch_wal()")
    db.execute("CHECKPOINT")
    return db.execute(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()


async def test_slot_held_by_another_process_is_retried_and_reported(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot = f"held_{secrets.token_hex(4)}"
    holder_sink, waiter_sink = Collector(), Collector()
    holder = PostgresSource(_config(pg, slot))
    waiter = PostgresSource(_config(pg, slot, backoff_initial_s=0.05, backoff_max_s=0.2))
    try:
        async with streaming(holder, holder_sink):
            task = asyncio.create_task(waiter.run(waiter_sink))
            try:
                await _until(lambda: waiter.last_error is not None, what="the refusal")
                assert waiter.last_error is not None
                assert waiter.last_error.startswith("slot_in_use: ")
                assert "is active for PID" in waiter.last_error
                assert "retrying with backoff" in waiter.last_error
                assert not waiter.streaming
            except BaseException:
                task.cancel()
                raise
        # The holder let go: the waiter takes the slot over on its next attempt.
        try:
            await _until(lambda: waiter.streaming, what="the waiter to take over")
            db.execute("INSERT INTO customers (name) VALUES ('taken-over')")
            await waiter_sink.wait_for(1)
            assert "taken-over" in _names(waiter_sink.changes)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        drop_slot(pg.dsn, slot)


async def test_temporary_slot_streams_reports_reconnect_gaps_and_leaves_nothing(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot = f"live_{secrets.token_hex(4)}"
    sink = Collector()
    gaps: list[tuple[Sequence[tuple[str, str]], str]] = []
    source = PostgresSource(_config(pg, slot, slot_mode="temporary", backoff_initial_s=0.05))
    task = asyncio.create_task(source.run(sink, lambda tables, why: gaps.append((tables, why))))
    try:
        await _until(lambda: source.streaming, what="streaming")
        row = db.execute("SELECT temporary FROM pg_replication_slots WHERE slot_name = %s",
                         (slot,)).fetchone()
        assert row == (True,)
        db.execute("INSERT INTO customers (name) VALUES ('live-1')")
        await sink.wait_for(1)
        assert gaps == []
        db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                   "WHERE slot_name = %s", (slot,))
        await _until(lambda: bool(gaps), what="the reconnect gap")
        assert gaps[0][0] == TABLES and gaps[0][1].startswith("live_only_reconnect")
        db.execute("INSERT INTO customers (name) VALUES ('live-2')")
        await _until(lambda: "live-2" in _names(sink.changes), what="live-2")
        await _until(lambda: source.lag_bytes is not None, what="a lag sample")
        assert source.lag_bytes is not None and source.lag_bytes >= 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _until(
        lambda: db.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone() == (0,),
        what="the temporary slot to disappear",
    )
    assert source.lag_bytes is None
    async with sampling(pg, slot) as sampler:  # the slot is gone: its lag is unknown
        await asyncio.sleep(0.3)
        assert sampler.lag_bytes is None


async def test_rtgw_slot_mode_temporary_reaches_the_gateways_source(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    gateway = await start_gateway(pg.dsn, slot_mode="temporary")
    try:
        row = db.execute("SELECT temporary FROM pg_replication_slots WHERE slot_name = %s",
                         (gateway.settings.slot,)).fetchone()
        assert row == (True,)
    finally:
        await gateway.stop()
    await _until(
        lambda: db.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                           (gateway.settings.slot,)).fetchone() == (0,),
        what="the temporary slot to disappear with the gateway",
    )


@contextlib.asynccontextmanager
async def sampling(pg: EmbeddedPostgres, slot: str) -> AsyncIterator[LagSampler]:
    sampler = LagSampler(pg.dsn, slot, interval_s=0.1)
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lag_bytes_counts_wal_the_slot_has_not_confirmed(
    pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> None:
    slot = f"lag_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
        await provisioning.ensure_slot(conn, slot, invalid=False, streamed=False)
    try:
        async with sampling(pg, slot) as sampler:
            db.execute("INSERT INTO customers (name) SELECT 'lag' FROM generate_series(1, 100)")
            await _until(lambda: (sampler.lag_bytes or 0) > 1000, what="the lag to grow")
            sink = Collector()
            source = PostgresSource(_config(pg, slot, status_interval_s=0.2, lag_interval_s=0.1))
            async with streaming(source, sink):
                await sink.wait_for(100)
                # The source samples its own slot's lag too, and sees it confirmed.
                await _until(lambda: all(lag is not None and lag <= 1000 for lag in
                                         (sampler.lag_bytes, source.lag_bytes)),
                             what="the slot to catch up")
    finally:
        drop_slot(pg.dsn, slot)


async def test_readyz_says_the_slot_is_held_by_another_process(pg: EmbeddedPostgres) -> None:
    slot = f"busy_{secrets.token_hex(4)}"
    settings = Settings(database_url=pg.dsn, jwt_secret=TEST_SECRET, channels=REPO / "channels",
                        port=free_port(), slot=slot)
    holder = PostgresSource(_config(pg, slot))
    try:
        async with streaming(holder, Collector()):
            server = uvicorn.Server(uvicorn_config(create_app(settings), settings, "warning"))
            task = asyncio.create_task(server.serve())
            try:
                async with httpx.AsyncClient() as http:
                    deadline = time.monotonic() + 15
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            answer = await http.get(f"http://127.0.0.1:{settings.port}/readyz")
                            if "slot_in_use" in answer.text:
                                break
                        assert time.monotonic() < deadline, "readyz never named the slot"
                        await asyncio.sleep(0.05)
                assert answer.status_code == 503
                body = answer.json()
                assert body["code"] == "not_ready"
                assert body["message"].startswith("the source is not streaming: slot_in_use: ")
                assert "is active for PID" in body["message"]
            finally:
                server.should_exit = True
                await task
    finally:
        drop_slot(pg.dsn, slot)

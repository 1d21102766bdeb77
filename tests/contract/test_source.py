"""The Source contract (``gateway/sources/base.py``), one set of tests over every source: the
Postgres source on a real logical slot, and the Supabase-upstream source against the fake
Supabase Realtime server (``tests/integration/fake_supabase.py``).

What a source cannot keep is a capability of its backend, stated here and tested as its
contract says: Supabase Realtime cannot replay, so it reports a gap where Postgres replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from gateway.changes import Change, Item, Published
from gateway.sources.base import Source
from gateway.sources.embedded import EmbeddedPostgres
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig
from gateway.sources.supabase import SupabaseSource, SupabaseSourceConfig
from tests.conftest import drop_slot, insert_statuses
from tests.integration.fake_supabase import service_key, start_fake_supabase

ORDERS = (("public", "orders"),)


@dataclass
class Backend:
    source: Source
    replays: bool  # the upstream keeps what was committed while the source was not running


@pytest.fixture(params=["postgres", "supabase"])
async def backend(
    request: pytest.FixtureRequest, pg: EmbeddedPostgres, db: psycopg.Connection[Any]
) -> AsyncIterator[Backend]:
    name = f"contract_{secrets.token_hex(4)}"
    if request.param == "postgres":
        config = PostgresSourceConfig(dsn=pg.dsn, slot=name, publication=name, tables=ORDERS)
        try:
            yield Backend(PostgresSource(config), replays=True)
        finally:
            drop_slot(pg.dsn, name)
            db.execute(f"DROP PUBLICATION IF EXISTS {name}")
        return
    key = service_key()
    fake = await start_fake_supabase(pg.dsn, key)
    config = SupabaseSourceConfig(url=fake.http_url, service_key=key, tables=ORDERS)
    try:
        yield Backend(SupabaseSource(config), replays=False)
    finally:
        await fake.stop()
        drop_slot(pg.dsn, fake.settings.slot)


@dataclass
class Recorder:
    """The sink, gap sink and keeper a source runs with: what it hears, in order."""

    heard: list[Item | str] = field(default_factory=list)  # items, "started", "caught_up", "gap"
    after: list[int] = field(default_factory=list)  # ``started``'s after, per session
    gaps: list[tuple[Sequence[tuple[str, str]], str]] = field(default_factory=list)

    async def sink(self, batch: Sequence[Item]) -> None:
        self.heard.extend(batch)

    def gap(self, tables: Sequence[tuple[str, str]], reason: str) -> None:
        self.heard.append("gap")
        self.gaps.append((tables, reason))

    def started(self, stream: str, after: int) -> None:
        self.heard.append("started")
        self.after.append(after)

    def caught_up(self) -> None:
        self.heard.append("caught_up")

    def oldest_needed(self) -> int | None:
        return None

    @property
    def items(self) -> list[Item]:
        return [item for item in self.heard if not isinstance(item, str)]

    def statuses(self) -> list[str]:
        return [item.new["status"] for item in self.items
                if isinstance(item, Change) and item.new is not None]


async def until(condition: Callable[[], bool], what: str, wait_s: float = 15.0) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(source: Source, recorder: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    """``source.run`` in a task, once it streams; cancelled (and awaited) on the way out."""
    task = asyncio.create_task(source.run(recorder.sink, recorder.gap, recorder))
    try:
        await until(lambda: source.streaming or task.done(), "the source to stream")
        assert not task.done(), task
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def customer(db: psycopg.Connection[Any]) -> int:
    row = db.execute("INSERT INTO customers (name) VALUES ('contract') RETURNING id").fetchone()
    assert row is not None
    return int(row[0])


async def test_changes_reach_the_sink_in_commit_order_with_increasing_positions(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    recorder, who = Recorder(), customer(db)
    async with running(backend.source, recorder):
        insert_statuses(db, who, "a", "b")
        with db.transaction():  # one transaction: statement order inside it
            insert_statuses(db, who, "c", "d")
        insert_statuses(db, who, "e")
        await until(lambda: len(recorder.statuses()) >= 5, "five changes")
    assert recorder.statuses() == ["a", "b", "c", "d", "e"]
    positions = [item.id.position for item in recorder.items]
    assert positions == sorted(set(positions))  # strictly increasing


async def test_the_keeper_hears_started_before_the_first_item_then_caught_up(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    recorder, who = Recorder(), customer(db)
    async with running(backend.source, recorder):
        await until(lambda: "caught_up" in recorder.heard, "caught_up")
        insert_statuses(db, who, "first")
        await until(lambda: bool(recorder.items), "the first change")
    assert recorder.heard[0] == "started" and recorder.heard.count("started") == 1
    assert recorder.heard.index("caught_up") < recorder.heard.index(recorder.items[0])
    assert recorder.items[0].id.position > recorder.after[0]


async def test_emit_comes_back_as_published_in_order_with_the_changes(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    recorder, who = Recorder(), customer(db)
    async with running(backend.source, recorder):
        insert_statuses(db, who, "before")
        await until(lambda: recorder.statuses() == ["before"], "the change before")
        await backend.source.emit(b'{"published": 1}')
        insert_statuses(db, who, "after")
        await until(lambda: len(recorder.items) >= 3, "the event and the change after")
    before, published, after = recorder.items
    assert isinstance(published, Published) and published.content == b'{"published": 1}'
    assert recorder.statuses() == ["before", "after"]
    assert before.id.position < published.id.position < after.id.position


async def test_events_emitted_together_come_back_together_in_order(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    recorder, who = Recorder(), customer(db)
    contents = [b'{"published": %d}' % n for n in range(5)]
    async with running(backend.source, recorder):
        insert_statuses(db, who, "before")
        await until(lambda: recorder.statuses() == ["before"], "the change before")
        await asyncio.gather(
            backend.source.emit(*contents[:3]), backend.source.emit(*contents[3:])
        )
        insert_statuses(db, who, "after")
        await until(lambda: len(recorder.items) >= 7, "the events and the change after")
    published = [item for item in recorder.items if isinstance(item, Published)]
    assert [item.content for item in published] == contents
    assert recorder.items[1:6] == published  # after the change before, before the one after
    positions = [item.id.position for item in recorder.items]
    assert positions == sorted(set(positions))


async def test_streaming_without_error_while_it_streams_and_cancel_ends_run(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    source, recorder = backend.source, Recorder()
    assert not source.streaming
    async with running(source, recorder) as task:
        assert source.streaming and source.last_error is None
        insert_statuses(db, customer(db), "live")
        await until(lambda: bool(recorder.items), "a change")
        assert source.streaming and source.last_error is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert task.done() and not source.streaming


async def test_what_was_committed_while_stopped_is_replayed_or_reported_as_a_gap(
    backend: Backend, db: psycopg.Connection[Any]
) -> None:
    source, recorder, who = backend.source, Recorder(), customer(db)
    async with running(source, recorder):
        insert_statuses(db, who, "first")
        await until(lambda: recorder.statuses() == ["first"], "the first change")
    insert_statuses(db, who, "while-stopped")
    async with running(source, recorder):
        insert_statuses(db, who, "again")
        await until(lambda: "again" in recorder.statuses(), "the change after the restart")
    positions = [item.id.position for item in recorder.items]
    assert positions == sorted(set(positions))
    if backend.replays:  # at-least-once: nothing is lost, so no gap
        assert recorder.statuses() == ["first", "while-stopped", "again"]
        assert recorder.gaps == []
    else:  # live only: what it missed may be lost (unless it was still in flight), and it says so
        assert recorder.statuses() in (["first", "again"], ["first", "while-stopped", "again"])
        ((tables, reason),) = recorder.gaps
        assert tuple(tables) == ORDERS and "cannot replay" in reason
        # Told once the second session is positioned to capture every later change.
        second = [i for i, heard in enumerate(recorder.heard) if heard == "started"][1]
        assert second < recorder.heard.index("gap") < recorder.heard.index(recorder.items[-1])

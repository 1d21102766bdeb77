"""Custom enrichers (``enricher = "module:function"``) in a real gateway on real Postgres: their
value joins the row; one that raises, times out or tries to write leaves the stream flowing and
the event marked, or held back with ``on_error = "drop"``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.sources.embedded import EmbeddedPostgres
from tests.conftest import Gateway, connect, drop_slot, insert_order, start_gateway, token
from tests.integration.test_enrichment import metric

MODULE = '''
import asyncio


async def badge(change, db):
    async with db.connection() as conn:
        cur = await conn.execute("SELECT 'badge-' || %s::text", (change.new["id"],))
        return (await cur.fetchone())[0]


async def boom(change, db):
    raise RuntimeError("the avatar service is down")


async def slow(change, db):
    await asyncio.sleep(3600)  # only its timeout can let the event go


async def writes(change, db):
    async with db.connection() as conn:
        await conn.execute("INSERT INTO customers (name) VALUES ('sneaky')")
'''

CHANNELS = '''
[channels.orders]
table = "public.orders"
scopes = ["orders:read"]
columns = ["id", "status"]

[channels.orders.enrich.badge]
enricher = "rtgw_test_enrichers:badge"

[channels.orders.enrich.boom]
enricher = "rtgw_test_enrichers:boom"

[channels.orders.enrich.slow]
enricher = "rtgw_test_enrichers:slow"
timeout_ms = 100

[channels.orders.enrich.writes]
enricher = "rtgw_test_enrichers:writes"

[channels.strict]
table = "public.orders"
scopes = ["orders:read"]
columns = ["id", "status"]
on_error = "drop"

[channels.strict.enrich.flaky]
enricher = "rtgw_test_enrichers:boom"
'''


@pytest.fixture
async def enriched(
    pg: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    (tmp_path / "rtgw_test_enrichers.py").write_text(MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    channels = tmp_path / "channels"
    channels.mkdir()
    (channels / "orders.toml").write_text(CHANNELS, encoding="utf-8")
    gateway = await start_gateway(pg.dsn, channels=channels)
    try:
        yield gateway
    finally:
        await gateway.stop()
        drop_slot(pg.dsn, gateway.settings.slot)


async def test_enrichers_add_values_and_failures_mark_the_event_without_stopping_it(
    enriched: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(enriched.ws_url) as client:
        await client.auth(token())
        await client.subscribe("orders")
        first, second = insert_order(db), insert_order(db)
        events = await client.events(2)  # 10 s at most each: the slow one did not hold them
    for event, order in zip(events, (first, second), strict=True):
        change = event["change"]
        assert change["new"]["id"] == order
        assert change["new"]["badge"] == f"badge-{order}"  # read through the read-only pool
        assert change["new"]["boom"] is None and change["new"]["slow"] is None
        assert change["enriched"] is False
        assert sorted(change["failed"]) == ["boom", "slow", "writes"]  # a write is refused
    assert db.execute("SELECT count(*) FROM customers WHERE name = 'sneaky'").fetchone() == (0,)
    # Counted: four enrichers (three of orders, one of strict) failed on each of two orders.
    assert await metric(enriched.http_url, "rtgw_enrich_failures_total") == 8


async def test_on_error_drop_holds_back_what_an_enricher_failed_on(
    enriched: Gateway, db: psycopg.Connection[Any]
) -> None:
    async with connect(enriched.ws_url) as strict, connect(enriched.ws_url) as marked:
        for client, channel in ((strict, "strict"), (marked, "orders")):
            await client.auth(token())
            await client.subscribe(channel)
        insert_order(db)
        [event] = await marked.events(1)  # the other channel's subscribers still get it
        assert event["change"]["enriched"] is False
        assert await strict.silent_for(0.5)
    assert await metric(enriched.http_url, "rtgw_enrich_dropped_total") == 1
